//! TLS for every connection a node makes or takes: mutual TLS between
//! nodes, server-authenticated TLS for clients.
//!
//! # Identities
//!
//! A cluster has one CA. Each node's certificate, signed by it, names the
//! agents the node may speak for as URI subject alternative names,
//! `spiffe://agentmesh/agent/<agent-id>`; a trailing `*` names every id
//! with that prefix (`spiffe://agentmesh/agent/worker-*`, so one
//! certificate can serve a pool of workers). A node refuses to start with a
//! certificate that does not name its own agents, and a mailbox refuses an
//! envelope whose `from` the connection's certificate does not name
//! ([`PeerIdentity::speaks_for`]).
//!
//! # Verification
//!
//! A node's server asks every client for a certificate but does not
//! require one: CLI clients authenticate with bearer tokens, and only
//! connections that present a certificate chaining to the cluster CA get a
//! [`PeerIdentity`] (the mailbox refuses the rest). A node connecting to
//! another node checks that the server's certificate chains to the cluster
//! CA and names agents, not the host name it dialled: nodes dial the
//! addresses they advertise in etcd (pod IPs), which certificates made
//! ahead of time cannot list. Clients of the API ([`client_config`]) check
//! the host name as usual.
//!
//! # Reloading
//!
//! The CA, certificate and key are read from files, and read again when
//! any of them changes ([`NodeTls::spawn_reloader`]): new connections use
//! the new material, open ones keep theirs. A change that does not load
//! (a half-written file, a key that does not match) keeps the old material
//! and logs a WARN until the files are whole again.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use agentmesh_core::AgentId;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use thiserror::Error;
use tracing::{info, warn};

use crate::support::background::Background;

/// The prefix of the URI SANs that name a node's agents.
pub const AGENT_URI_PREFIX: &str = "spiffe://agentmesh/agent/";

/// How often the files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The protocol every connection speaks: gRPC is HTTP/2.
const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} '{path}': {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} '{path}' holds no {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{what} '{path}' is not valid PEM: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("certificate '{path}' names no agent (no URI SAN starting {AGENT_URI_PREFIX})")]
    NoIdentity { path: PathBuf },
    #[error("certificate '{path}' does not name agent '{agent}' (it names {names})")]
    NotOurs {
        path: PathBuf,
        agent: AgentId,
        names: String,
    },
    #[error("TLS setup failed: {0}")]
    Config(String),
}

/// Where a node's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate (PEM): what every peer must chain to.
    pub ca: PathBuf,
    /// This node's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// This node's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The agents a certificate names: exact ids, and prefixes (from a trailing
/// `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    names: Vec<String>,
}

impl PeerIdentity {
    /// The identity named by a certificate's URI SANs; `None` if it names
    /// no agent (or does not parse).
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Option<Self> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let san = parsed.subject_alternative_name().ok()??;
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => {
                    uri.strip_prefix(AGENT_URI_PREFIX).map(str::to_owned)
                }
                _ => None,
            })
            .filter(|name| !name.is_empty())
            .collect();
        (!names.is_empty()).then_some(Self { names })
    }

    /// Whether this identity may speak for `agent`.
    pub fn speaks_for(&self, agent: &AgentId) -> bool {
        self.names.iter().any(|name| match name.strip_suffix('*') {
            Some(prefix) => agent.as_str().starts_with(prefix),
            None => name == agent.as_str(),
        })
    }

    /// The names, as written in the certificate, for messages.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.names.join(","))
    }
}

/// The loaded material and the configurations built from it.
struct Loaded {
    server: Arc<ServerConfig>,
    node_client: Arc<ClientConfig>,
    identity: PeerIdentity,
    stamp: Vec<Option<SystemTime>>,
}

/// A node's TLS: its server and client configurations, reloaded when the
/// files change. Cheap to clone.
#[derive(Clone)]
pub struct NodeTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    loaded: RwLock<Arc<Loaded>>,
    /// The last reload error, logged once per distinct error.
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls")
            .field("files", &self.inner.files)
            .field("identity", &self.identity())
            .finish()
    }
}

impl PartialEq for NodeTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl NodeTls {
    /// Loads the files; fails naming the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let loaded = load(&files)?;
        Ok(Self {
            inner: Arc::new(Inner {
                files,
                loaded: RwLock::new(Arc::new(loaded)),
                last_error: Mutex::new(None),
            }),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        self.inner
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server configuration for new connections.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// The client configuration for new connections to other nodes.
    pub fn node_client_config(&self) -> Arc<ClientConfig> {
        self.current().node_client.clone()
    }

    /// The agents this node's certificate names.
    pub fn identity(&self) -> PeerIdentity {
        self.current().identity.clone()
    }

    /// Fails unless this node's certificate names every one of `agents`.
    pub fn check_speaks_for<'a>(
        &self,
        agents: impl IntoIterator<Item = &'a AgentId>,
    ) -> Result<(), TlsError> {
        let identity = self.identity();
        for agent in agents {
            if !identity.speaks_for(agent) {
                return Err(TlsError::NotOurs {
                    path: self.inner.files.cert.clone(),
                    agent: agent.clone(),
                    names: identity.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Reads the files again if any changed; `Ok(true)` if new material
    /// was loaded. On error the old material stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let files = &self.inner.files;
        if stamp(files) == self.current().stamp {
            return Ok(false);
        }
        let loaded = load(files)?;
        *self.inner.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        Ok(true)
    }

    /// Checks the files every `interval` until the node stops, loading
    /// what changed; see the module documentation.
    pub fn spawn_reloader(&self, interval: Duration, background: &Background) {
        let tls = self.clone();
        let stop = background.shutdown_signal();
        background.spawn("tls reloader", async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = stop.cancelled() => return,
                }
                let outcome = tls.reload_if_changed();
                let mut last = tls
                    .inner
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok(false) => {}
                    Ok(true) => {
                        *last = None;
                        info!(
                            cert = %tls.inner.files.cert.display(),
                            identity = %tls.identity(),
                            "loaded new TLS material; new connections use it"
                        );
                    }
                    Err(error) => {
                        let message = error.to_string();
                        if last.as_deref() != Some(message.as_str()) {
                            warn!(%error, "new TLS material does not load; keeping the old");
                            *last = Some(message);
                        }
                    }
                }
            }
        });
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The modification times of the three files (`None` for a file that
/// cannot be read): what a reload compares.
fn stamp(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file, in order.
pub fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "certificate",
        });
    }
    Ok(certs)
}

/// The roots of a CA file.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates("CA certificate", path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "CA certificate",
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    // Stamped before reading: a change during the read is seen next time.
    let stamp = stamp(files);
    let roots = Arc::new(read_roots(&files.ca)?);
    let certs = read_certificates("certificate", &files.cert)?;
    let key_pem = read("private key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    let identity = PeerIdentity::of_certificate(&certs[0]).ok_or_else(|| TlsError::NoIdentity {
        path: files.cert.clone(),
    })?;
    let provider = provider();
    let config_error = |e: rustls::Error| TlsError::Config(e.to_string());

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| {
            TlsError::Config(format!(
                "certificate '{}' and key '{}' do not go together: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];

    let mut node_client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterVerifier { roots, provider }))
        .with_client_auth_cert(certs, key)
        .map_err(config_error)?;
    node_client.alpn_protocols = vec![ALPN_H2.to_vec()];

    Ok(Loaded {
        server: Arc::new(server),
        node_client: Arc::new(node_client),
        identity,
        stamp,
    })
}

/// The client configuration of an API client (the CLI): the server's
/// certificate must chain to `ca` and name the host dialled; no client
/// certificate (clients authenticate with tokens).
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(read_roots(ca)?);
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Verifies a node's server certificate: it chains to the cluster CA and
/// names agents; the host name is not checked (see the module
/// documentation).
#[derive(Debug)]
struct ClusterVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ClusterVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if PeerIdentity::of_certificate(end_entity).is_none() {
            return Err(rustls::Error::General(format!(
                "the node's certificate names no agent (no URI SAN starting {AGENT_URI_PREFIX})"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a CA and a certificate naming `agents` into `dir`.
    fn issue(dir: &Path, agents: &[&str]) -> TlsFiles {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        for agent in agents {
            params.subject_alt_names.push(rcgen::SanType::URI(
                format!("{AGENT_URI_PREFIX}{agent}").try_into().unwrap(),
            ));
        }
        let cert = params.signed_by(&key, &issuer).unwrap();
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
        };
        std::fs::write(&files.ca, ca_cert.pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "agentmesh-tls-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_certificate_speaks_for_the_ids_and_prefixes_it_names() {
        let dir = scratch();
        let tls = NodeTls::load(issue(&dir, &["coordinator-1", "worker-*"])).unwrap();
        let identity = tls.identity();
        assert!(identity.speaks_for(&AgentId::new("coordinator-1")));
        assert!(identity.speaks_for(&AgentId::new("worker-7")));
        assert!(!identity.speaks_for(&AgentId::new("coordinator-10")));
        assert!(!identity.speaks_for(&AgentId::new("peer-1")));
        assert!(tls.check_speaks_for([&AgentId::new("worker-2")]).is_ok());
        let refused = tls
            .check_speaks_for([&AgentId::new("peer-1")])
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("does not name agent 'peer-1'"),
            "{refused}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_certificate_that_names_no_agent_is_refused() {
        let dir = scratch();
        let error = NodeTls::load(issue(&dir, &[])).unwrap_err();
        assert!(matches!(error, TlsError::NoIdentity { .. }), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn changed_files_are_reloaded_and_a_bad_change_keeps_the_old_material() {
        let dir = scratch();
        let files = issue(&dir, &["worker-1"]);
        let tls = NodeTls::load(files.clone()).unwrap();
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed");

        // A half-written key: the old material stays.
        std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&files.key)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(tls.reload_if_changed().is_err());
        assert!(tls.identity().speaks_for(&AgentId::new("worker-1")));

        // A whole new set: loaded.
        issue(&dir, &["worker-2"]);
        for path in [&files.ca, &files.cert, &files.key] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(later + Duration::from_secs(5))
                .unwrap();
        }
        assert!(tls.reload_if_changed().unwrap());
        assert!(tls.identity().speaks_for(&AgentId::new("worker-2")));
        assert!(!tls.identity().speaks_for(&AgentId::new("worker-1")));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_node_never_dials_another_node_in_plaintext() {
        let dir = scratch();
        let tls = NodeTls::load(issue(&dir, &["worker-1"])).unwrap();
        let node = crate::transport::channel::Security::Node(tls);
        assert_eq!(
            crate::transport::channel::uri("http://10.0.0.1:7700", &node),
            Err(crate::transport::channel::ChannelError::PlaintextRefused(
                "http://10.0.0.1:7700".into()
            ))
        );
        assert_eq!(
            crate::transport::channel::uri("10.0.0.1:7700", &node).unwrap(),
            "https://10.0.0.1:7700"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
