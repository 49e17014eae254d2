//! The one place that builds gRPC channels and servers.
//!
//! Every outgoing connection — mailbox links between nodes, forwarding to
//! the leader, the CLI client, the load generator — is made by [`lazy`] or
//! [`connect`], and every server starts from [`server`] and [`incoming`].
//! TLS, authentication and trace propagation are added here, once.
//!
//! Both ends send HTTP/2 keep-alive PINGs, so a peer that froze or vanished
//! is found out while a stream to it is open; the server also closes
//! connections with nothing in flight and holds a bounded number of them
//! (see [`super::accept`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint, Server};
use tower_layer::{Identity, Stack};

pub use super::accept::ConnectionStats;
use super::accept::{self, Conn, TrackRequestsLayer};
use super::tls::NodeTls;
use crate::node::config::ConnectionConfig;

/// How long connecting may take when the caller does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Interval of a client channel's HTTP/2 PINGs while it has streams open.
/// Short enough that a client waiting on a frozen node gives up within
/// half a minute, long enough to cost nothing.
pub const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long a client waits for the answer to a PING before it drops the
/// connection and fails its streams.
pub const CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelError {
    #[error("bad endpoint '{endpoint}': {message}")]
    BadEndpoint { endpoint: String, message: String },
    /// An `https://` endpoint without TLS configured: refused rather than
    /// silently spoken to in plaintext.
    #[error(
        "endpoint '{0}' asks for TLS (https://), but no CA is configured to check it \
         (--ca or AGENTMESH_CA)"
    )]
    TlsNotConfigured(String),
    /// An `http://` endpoint of another node while this node speaks TLS:
    /// an endpoint from the registry must not downgrade a link.
    #[error("endpoint '{0}' is plaintext (http://), but this node speaks TLS to other nodes")]
    PlaintextRefused(String),
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
}

/// How a channel protects its connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Security {
    /// Plain HTTP/2: `agentmesh local`, and nodes started with
    /// `--insecure`.
    #[default]
    Plaintext,
    /// Between nodes: mutual TLS with the node's own certificate (reloaded
    /// when its files change), the peer checked against the cluster CA.
    Node(NodeTls),
    /// A client of the API: the server checked against a CA and the host
    /// name; no client certificate.
    Client(ClientTls),
}

/// A client's TLS configuration (see [`Security::Client`]).
#[derive(Debug, Clone)]
pub struct ClientTls(pub Arc<rustls::ClientConfig>);

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Security {
    fn is_tls(&self) -> bool {
        !matches!(self, Security::Plaintext)
    }

    /// The node's own TLS, which its server uses; `None` unless
    /// [`Security::Node`].
    pub fn node_tls(&self) -> Option<NodeTls> {
        match self {
            Security::Node(tls) => Some(tls.clone()),
            _ => None,
        }
    }
}

/// The URI of an endpoint: a bare `host:port` gets `https://` with TLS
/// and `http://` without. A client's `http://` endpoint is spoken to in
/// plaintext as asked; a node's links never are (see
/// [`ChannelError::PlaintextRefused`]).
pub fn uri(endpoint: &str, security: &Security) -> Result<String, ChannelError> {
    let uri = match endpoint.split_once("://") {
        None if security.is_tls() => format!("https://{endpoint}"),
        None => format!("http://{endpoint}"),
        Some(("http", _)) if matches!(security, Security::Node(_)) => {
            return Err(ChannelError::PlaintextRefused(endpoint.to_owned()));
        }
        Some(("https", _)) if !security.is_tls() => {
            return Err(ChannelError::TlsNotConfigured(endpoint.to_owned()));
        }
        Some(("http" | "https", _)) => endpoint.to_owned(),
        Some((scheme, _)) => {
            return Err(ChannelError::BadEndpoint {
                endpoint: endpoint.to_owned(),
                message: format!("unknown scheme '{scheme}' (expected http, https or HOST:PORT)"),
            });
        }
    };
    Ok(uri)
}

/// The endpoint every channel is built from: TCP_NODELAY (multi-frame
/// HTTP/2 writes otherwise stall on delayed ACKs, ~40 ms), a connect
/// timeout, and keep-alive PINGs while streams are open (idle channels do
/// not ping: the server closes them after its idle timeout and they
/// reconnect on next use).
///
/// Returns the connector that runs TLS on it, if it is TLS. tonic is then
/// given the endpoint's `http://` form: the handshake is the connector's,
/// and a tonic built with TLS of its own (etcd-client's `tls-ring` turns
/// it on in this workspace, for TLS to etcd) refuses an `https://` URI
/// that has no tonic TLS configuration.
fn endpoint(
    address: &str,
    connect_timeout: Duration,
    security: &Security,
) -> Result<(Endpoint, Option<TlsConnector>), ChannelError> {
    let uri = uri(address, security)?;
    let (uri, tls) = match uri.strip_prefix("https://") {
        Some(rest) if security.is_tls() => (
            format!("http://{rest}"),
            Some(TlsConnector {
                security: security.clone(),
            }),
        ),
        _ => (uri, None),
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| ChannelError::BadEndpoint {
        endpoint: address.to_owned(),
        message: e.to_string(),
    })?;
    Ok((
        endpoint
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            .http2_keep_alive_interval(CLIENT_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(CLIENT_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(false),
        tls,
    ))
}

/// A channel that connects on first use and reconnects after a failure.
pub fn lazy(
    address: &str,
    connect_timeout: Duration,
    security: &Security,
) -> Result<Channel, ChannelError> {
    let (endpoint, tls) = endpoint(address, connect_timeout, security)?;
    Ok(match tls {
        None => endpoint.connect_lazy(),
        Some(connector) => endpoint.connect_with_connector_lazy(connector),
    })
}

/// A channel connected now; fails if `address` cannot be reached.
pub async fn connect(
    address: &str,
    connect_timeout: Duration,
    security: &Security,
) -> Result<Channel, ChannelError> {
    let (endpoint, tls) = endpoint(address, connect_timeout, security)?;
    let connected = match tls {
        None => endpoint.connect().await,
        Some(connector) => endpoint.connect_with_connector(connector).await,
    };
    connected.map_err(|e| ChannelError::Connect {
        endpoint: address.to_owned(),
        message: std::error::Error::source(&e)
            .map_or_else(|| e.to_string(), |source| format!("{e}: {source}")),
    })
}

/// Connects TCP and runs the TLS handshake, with the configuration current
/// at the time of connecting (a node's reloads take effect on the next
/// connection).
#[derive(Clone)]
struct TlsConnector {
    security: Security,
}

impl TlsConnector {
    fn config(&self) -> Arc<rustls::ClientConfig> {
        match &self.security {
            Security::Node(tls) => tls.node_client_config(),
            Security::Client(tls) => tls.0.clone(),
            Security::Plaintext => unreachable!("a TlsConnector is only made for TLS"),
        }
    }
}

impl tonic::codegen::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::other(format!("no host in '{uri}'")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone())
                .map_err(|e| io::Error::other(format!("bad server name '{host}': {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// The server every node serves its services on: HTTP/2 keep-alive PINGs
/// at `config`'s interval (a peer that does not answer within the timeout
/// is disconnected) and every request counted on its connection for the
/// idle timeout. Serve it on [`incoming`].
pub fn server(config: &ConnectionConfig) -> Server<Stack<TrackRequestsLayer, Identity>> {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .layer(TrackRequestsLayer)
}

/// Connections accepted from `listener` within `config`'s connection limit
/// and idle timeout, with TCP_NODELAY; an accept loop that backs off at
/// the file-descriptor limit instead of spinning. `stats` counts what it
/// does.
pub fn incoming(
    listener: TcpListener,
    config: &ConnectionConfig,
    stats: Arc<ConnectionStats>,
    tls: Option<NodeTls>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    accept::incoming(listener, config, stats, tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_gets_the_scheme_of_its_security() {
        let plain = Security::Plaintext;
        assert_eq!(
            uri("127.0.0.1:7700", &plain).unwrap(),
            "http://127.0.0.1:7700"
        );
        assert_eq!(uri("http://node:80", &plain).unwrap(), "http://node:80");
        let tls = Security::Client(ClientTls(Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        )));
        assert_eq!(uri("node:7700", &tls).unwrap(), "https://node:7700");
        assert_eq!(uri("https://node:7700", &tls).unwrap(), "https://node:7700");
        assert_eq!(uri("http://node:7700", &tls).unwrap(), "http://node:7700");
    }

    #[test]
    fn https_without_tls_is_refused_rather_than_spoken_in_plaintext() {
        let error = lazy(
            "https://node:443",
            DEFAULT_CONNECT_TIMEOUT,
            &Security::Plaintext,
        )
        .unwrap_err();
        assert_eq!(
            error,
            ChannelError::TlsNotConfigured("https://node:443".into())
        );
        assert!(error.to_string().contains("AGENTMESH_CA"), "{error}");
        assert!(matches!(
            uri("ftp://node:21", &Security::Plaintext),
            Err(ChannelError::BadEndpoint { .. })
        ));
    }
}
