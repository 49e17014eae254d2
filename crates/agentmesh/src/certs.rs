//! `agentmesh certs`: a development CA and node certificates, so a cluster
//! on one machine (or a test) runs with mutual TLS from its first start.
//!
//! The CA is made once per directory and reused: running the command again
//! issues new node certificates signed by the same CA, which is how a
//! rotation is rehearsed. Production clusters bring their own CA (see
//! `docs/security.md`); the certificates only need the URI SANs that name
//! each node's agents.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use agentmesh_runtime::transport::tls::AGENT_URI_PREFIX;
use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// File names inside the output directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

/// What `agentmesh certs` writes.
#[derive(Debug)]
pub struct Issued {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Whether the CA was made now (rather than reused).
    pub new_ca: bool,
}

/// Makes (or reuses) the CA in `dir` and issues the certificate `name`
/// for `agents` (ids, or prefixes ending in `*`), valid for `hosts` (DNS
/// names or IP addresses that clients dial) and `days` days.
pub fn issue(
    dir: &Path,
    name: &str,
    agents: &[String],
    hosts: &[String],
    days: u32,
) -> anyhow::Result<Issued> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (ca_path, ca_key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let new_ca = !ca_path.exists();
    if new_ca {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name_of("agentmesh development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, days.max(365));
        let cert = params.self_signed(&key)?;
        write(&ca_path, &cert.pem(), false)?;
        write(&ca_key_path, &key.serialize_pem(), true)?;
    }
    let ca_pem = read(&ca_path)?;
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)
        .with_context(|| format!("{} is not a private key", ca_key_path.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("{} is not a CA certificate", ca_path.display()))?;

    let mut params = CertificateParams::default();
    params.distinguished_name = name_of(&format!("agentmesh node {name}"));
    for agent in agents {
        params.subject_alt_names.push(SanType::URI(
            format!("{AGENT_URI_PREFIX}{agent}").try_into()?,
        ));
    }
    for host in hosts {
        params.subject_alt_names.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.as_str().try_into()?),
        });
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok(Issued {
        ca: ca_path,
        cert: cert_path,
        key: key_path,
        new_ca,
    })
}

fn name_of(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Valid from an hour ago (clock skew between machines) for `days`.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// node that reloads its files never reads half of one; keys are readable
/// by their owner only.
fn write(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    let temporary = path.with_extension("pem.tmp");
    std::fs::write(&temporary, contents)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}
