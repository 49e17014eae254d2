//! TLS and authentication for the harness's etcd ([`super::Etcd::start_secure`]):
//! a CA and certificates made at start with `rcgen`, etcd's root user, and
//! one etcd user per node, made with `agentmesh etcd-setup` so that every
//! secure cluster also exercises the setup command.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::{CliOutput, lock};

/// Time `agentmesh etcd-setup` may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A CA and the files of the certificates it issued, in one directory.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM), for `--etcd-ca` and etcd's
    /// `--trusted-ca-file`.
    pub ca_file: PathBuf,
}

impl Pki {
    /// A new CA, its certificate written to `dir/ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        let ca_file = dir.join("ca.pem");
        write(&ca_file, &ca.pem());
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_file,
        }
    }

    /// A certificate with CN `cn`, for `ips` and `localhost`, good for
    /// both ends of TLS; returns the certificate and key files
    /// (`NAME.pem`, `NAME-key.pem`).
    pub fn issue(&self, name: &str, cn: &str, ips: &[IpAddr]) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("certificate key");
        let cert = params.signed_by(&key, &self.ca).expect("sign certificate");
        let cert_file = self.dir.join(format!("{name}.pem"));
        let key_file = self.dir.join(format!("{name}-key.pem"));
        write(&cert_file, &cert.pem());
        write(&key_file, &key.serialize_pem());
        (cert_file, key_file)
    }
}

/// What a secure etcd needs beside its flags: its certificates, root's
/// password, and the users made so far.
pub struct EtcdAuth {
    pub pki: Pki,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub root_password_file: PathBuf,
    root_password: String,
    users_dir: PathBuf,
    users: Mutex<HashSet<String>>,
}

impl EtcdAuth {
    /// Certificates for 127.0.0.1 (and `ips`) and a root password, under
    /// `dir`.
    pub fn new(dir: &Path, ips: &[IpAddr]) -> EtcdAuth {
        let pki = Pki::new(&dir.join("pki"), "agentmesh e2e CA");
        let mut all_ips = vec![IpAddr::from([127, 0, 0, 1])];
        all_ips.extend_from_slice(ips);
        let (server_cert, server_key) = pki.issue("etcd-server", "etcd", &all_ips);
        let users_dir = dir.join("users");
        fs::create_dir_all(&users_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", users_dir.display()));
        let root_password = random_secret();
        let root_password_file = users_dir.join("root.password");
        write(&root_password_file, &format!("{root_password}\n"));
        EtcdAuth {
            pki,
            server_cert,
            server_key,
            root_password_file,
            root_password,
            users_dir,
            users: Mutex::new(HashSet::new()),
        }
    }

    /// etcd's `root` password.
    pub fn root_password(&self) -> &str {
        &self.root_password
    }

    /// The password file of node user `id` (made by [`EtcdAuth::setup`]).
    pub fn password_file(&self, id: &str) -> PathBuf {
        self.users_dir
            .join(format!("{}.password", super::sanitize(id)))
    }

    /// `agentmesh etcd-setup` for the `(id, role)` nodes not made yet (all
    /// of them, and authentication turned on, when `nodes` is empty and
    /// nothing was made); `run` runs the CLI with the given arguments
    /// where etcd can be reached. Panics when it fails.
    pub fn setup(&self, url: &str, nodes: &[(&str, &str)], run: impl Fn(&[&str]) -> CliOutput) {
        let mut made = lock(&self.users);
        let missing: Vec<&(&str, &str)> =
            nodes.iter().filter(|(id, _)| !made.contains(*id)).collect();
        if missing.is_empty() && !nodes.is_empty() {
            return;
        }
        let specs: Vec<String> = missing
            .iter()
            .map(|(id, role)| {
                let file = self.password_file(id);
                write(&file, &format!("{}\n", random_secret()));
                format!("{id}:{role}:{}", file.display())
            })
            .collect();
        let ca = self.pki.ca_file.to_string_lossy().into_owned();
        let root = self.root_password_file.to_string_lossy().into_owned();
        let mut args = vec![
            "etcd-setup",
            "--etcd",
            url,
            "--etcd-ca",
            &ca,
            "--root-password-file",
            &root,
        ];
        for spec in &specs {
            args.extend(["--node", spec.as_str()]);
        }
        let out = run(&args);
        assert!(out.success(), "agentmesh etcd-setup failed: {out}");
        made.extend(missing.iter().map(|(id, _)| (*id).to_owned()));
    }

    /// The node flags of user `id`: the CA, the user and its password file.
    pub fn node_flags(&self, id: &str) -> Vec<String> {
        vec![
            "--etcd-ca".to_owned(),
            self.pki.ca_file.to_string_lossy().into_owned(),
            "--etcd-user".to_owned(),
            id.to_owned(),
            "--etcd-password-file".to_owned(),
            self.password_file(id).to_string_lossy().into_owned(),
        ]
    }
}

/// 32 hex digits from the process's random hasher keys: unguessable
/// enough for a test's passwords, without another dependency.
pub fn random_secret() -> String {
    (0..2)
        .map(|i| {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u64(i);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
