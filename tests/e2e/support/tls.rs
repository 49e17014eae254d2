//! The test cluster's CA, certificates and client token: every node the
//! harness starts runs with mutual TLS and a tokens file unless its
//! arguments say `--insecure`, and every CLI the harness runs trusts the CA
//! (`AGENTMESH_CA`) and sends an admin token (`AGENTMESH_TOKEN`).
//!
//! The certificates are made with `agentmesh certs`, once a day per build:
//! tests run as many processes at once, so the directory is made aside and
//! renamed into place (a rename of a directory is atomic; the loser of a
//! race uses the winner's).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{CLI_TIMEOUT, run_command, scratch_dir};

/// The files of one certificate and its CA.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The shared tokens file (one admin token) and that token.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub file: PathBuf,
    pub admin: String,
}

/// [`shared`]'s tokens.
pub fn shared_tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let dir = shared().ca.parent().expect("a directory").to_owned();
        Tokens {
            file: dir.join("tokens"),
            admin: std::fs::read_to_string(dir.join("admin.token"))
                .expect("the harness's admin token")
                .trim()
                .to_owned(),
        }
    })
}

impl Certs {
    /// `--tls-ca CA --tls-cert CERT --tls-key KEY`.
    pub fn node_args(&self) -> Vec<String> {
        [
            ("--tls-ca", &self.ca),
            ("--tls-cert", &self.cert),
            ("--tls-key", &self.key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.to_string_lossy().into_owned()])
        .collect()
    }
}

/// The shared test CA and a node certificate that speaks for every agent
/// (`*`), valid for localhost and 127.0.0.1.
pub fn shared() -> &'static Certs {
    static SHARED: OnceLock<Certs> = OnceLock::new();
    SHARED.get_or_init(|| {
        let base = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let day = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            / 86_400;
        // The name changes with what the directory holds (v2: tokens too).
        let dir = base.join(format!("e2e-credentials-v2-{day}"));
        if !dir.join("admin.token").exists() {
            let aside = scratch_dir("certs");
            issue_into(aside.path(), "node", "*", &["localhost", "127.0.0.1"]);
            make_admin_token(aside.path());
            let made = aside.keep();
            // Fails if another test process got there first: use theirs.
            if std::fs::rename(&made, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&made);
            }
        }
        certs_in(&dir, "node")
    })
}

/// A certificate named `name` for `agents` (comma-separated ids or
/// prefixes with `*`) and `hosts`, signed by the CA in `dir` (made there if
/// there is none): for netns clusters, and for nodes that must speak for
/// fewer agents than the shared certificate.
pub fn issue_into(dir: &Path, name: &str, agents: &str, hosts: &[&str]) -> Certs {
    let dir_arg = dir.to_string_lossy().into_owned();
    let hosts = hosts.join(",");
    let out = run_command(
        super::agentmesh_bin(),
        &[
            "certs",
            dir_arg.as_str(),
            "--name",
            name,
            "--agent",
            agents,
            "--host",
            hosts.as_str(),
        ],
        &[],
        CLI_TIMEOUT,
    );
    assert!(out.success(), "agentmesh certs failed: {out}");
    certs_in(dir, name)
}

/// Copies the shared CA into `dir`, so certificates issued there chain to
/// it.
pub fn copy_shared_ca(dir: &Path) {
    let shared = shared();
    let from = shared.ca.parent().expect("the CA lives in a directory");
    std::fs::create_dir_all(dir).expect("certificate directory");
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(from.join(file), dir.join(file))
            .unwrap_or_else(|e| panic!("cannot copy {file}: {e}"));
    }
}

/// `admin.token` and a `tokens` file that grants it the admin role.
fn make_admin_token(dir: &Path) {
    let out = run_command(
        super::agentmesh_bin(),
        &["token", "new", "--role", "admin", "--subject", "harness"],
        &[],
        CLI_TIMEOUT,
    );
    assert!(out.success(), "agentmesh token new failed: {out}");
    let mut lines = out.stdout.lines();
    let (token, line) = (lines.next(), lines.next());
    let (Some(token), Some(line)) = (token, line) else {
        panic!("agentmesh token new printed no token and line: {out}");
    };
    std::fs::write(dir.join("admin.token"), token).expect("write admin.token");
    std::fs::write(dir.join("tokens"), format!("{line}\n")).expect("write tokens");
}

/// A tokens file in `dir` granting each `(role, subject)` a new token, and
/// the tokens by subject, plus the harness's admin token (so the harness's
/// own CLI calls still work against nodes that use this file).
pub fn tokens_file(dir: &Path, grants: &[(&str, &str)]) -> (PathBuf, Vec<(String, String)>) {
    let mut lines =
        vec![std::fs::read_to_string(&shared_tokens().file).expect("the harness's tokens file")];
    let mut tokens = Vec::new();
    for (role, subject) in grants {
        let out = run_command(
            super::agentmesh_bin(),
            &["token", "new", "--role", role, "--subject", subject],
            &[],
            CLI_TIMEOUT,
        );
        assert!(out.success(), "agentmesh token new failed: {out}");
        let mut printed = out.stdout.lines();
        let token = printed.next().expect("a token").to_owned();
        lines.push(format!("{}\n", printed.next().expect("a tokens-file line")));
        tokens.push(((*subject).to_owned(), token));
    }
    let file = dir.join("tokens");
    std::fs::write(&file, lines.concat()).expect("write the tokens file");
    (file, tokens)
}

fn certs_in(dir: &Path, name: &str) -> Certs {
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}
