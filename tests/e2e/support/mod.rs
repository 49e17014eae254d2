//! The harness shared by every end-to-end test module.
//!
//! Everything here is plain blocking `std` code: tests are ordinary `#[test]`
//! functions that spawn real processes (an `etcd`, `agentmesh` nodes, the
//! `agentmesh` CLI) and wait for them by polling with a deadline, never by
//! sleeping a fixed time.
//!
//! * [`eventually`] / [`eventually_ok`]: poll a probe until it succeeds.
//! * [`Etcd`]: a real single-member etcd on loopback, killed on drop. A
//!   missing etcd binary is a test FAILURE (run `scripts/install-deps`), never
//!   a skip.
//! * [`Process`]: a spawned child, killed on drop, whose stdout/stderr lines
//!   are captured in memory and in `<scratch dir>/<name>.log`.
//! * [`run_cli`] / [`start_node`]: the `agentmesh` binary as a CLI and as
//!   one node on its own.
//! * [`cluster::Cluster`]: etcd and `agentmesh node` processes, built with
//!   [`cluster::Cluster::builder`]; [`netns::NetnsPair`] puts one behind a
//!   network partition.
//! * [`grpc`]: the few gRPC calls tests make directly.
//!
//! Scratch directories live under cargo's `CARGO_TARGET_TMPDIR`
//! (`target/tmp`). They are deleted when the owner is dropped, except when the
//! test is panicking: then the logs are kept, and their path and tail are
//! printed to stderr (which the test runner shows for failed tests).

use std::ffi::OsStr;
use std::fmt::{self, Debug};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod cluster;
pub mod etcd_auth;
pub mod grpc;
#[path = "../../../crates/agentmesh-llm/tests/support/local_model.rs"]
pub mod model;

pub mod netns;
pub mod tls;

pub use cluster::start_node;

/// How often [`eventually`] and the other waits poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How long [`Etcd`] waits for `/health` before giving up.
pub const ETCD_HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node may take to print its `listening on` line.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of [`run_cli`].
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of log shown in panic messages.
const TAIL_LINES: usize = 40;
/// Attempts to start etcd on fresh ports (the first try plus 3 retries).
const ETCD_START_ATTEMPTS: usize = 4;

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Calls `probe` every [`POLL_INTERVAL`] until it returns `Some`, and returns
/// that value. The probe always runs at least once. Panics with
/// `"timed out after {timeout:?} waiting for {what}"` when `timeout` elapses.
pub fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    match poll_until(timeout, &mut probe) {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Like [`eventually`] for a fallible probe: returns the first `Ok`, and on
/// timeout panics with the message of [`eventually`] followed by
/// `"; last error: {err:?}"`.
pub fn eventually_ok<T, E: Debug>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, E>,
) -> T {
    let mut last_error = None;
    let found = poll_until(timeout, || match probe() {
        Ok(value) => Some(value),
        Err(err) => {
            last_error = Some(err);
            None
        }
    });
    match found {
        Some(value) => value,
        None => panic!(
            "timed out after {timeout:?} waiting for {what}; last error: {:?}",
            last_error.expect("the probe ran at least once")
        ),
    }
}

/// The polling loop behind every wait: `None` on timeout.
fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read,
/// released). Another process can still grab it; [`Etcd`] retries for that.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports: all listeners are held until every port is known.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .expect("local_addr of a bound listener")
                .port()
        })
        .collect()
}

/// Locks a mutex, ignoring poisoning (a panicking test must still be able to
/// clean up and print logs).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The last `n` lines of `lines`, joined with newlines.
fn tail_of(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of a text file (or a note saying why it is unreadable).
fn file_tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            tail_of(&lines, n)
        }
        Err(err) => format!("<cannot read {}: {err}>", path.display()),
    }
}

/// A file-name-safe version of `name`.
fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "process".to_owned()
    } else {
        cleaned
    }
}

/// The repository's root: scripts, examples and deployment files are
/// found from here.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh scratch directory under cargo's `target/tmp` (system temp dir as a
/// fallback), named after `prefix`.
pub fn scratch_dir(prefix: &str) -> TempDir {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&base).unwrap_or_else(|e| panic!("cannot create {}: {e}", base.display()));
    tempfile::Builder::new()
        .prefix(&format!("{}-", sanitize(prefix)))
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("cannot create a scratch dir in {}: {e}", base.display()))
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Removes inherited environment variables whose name starts with one of
/// `prefixes` (so a developer's shell cannot change what a test does).
fn remove_inherited_env(cmd: &mut Command, prefixes: &[&str], keep_prefix: Option<&str>) {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        let drop = prefixes.iter().any(|p| name.starts_with(p))
            && !keep_prefix.is_some_and(|keep| name.starts_with(keep));
        if drop {
            cmd.env_remove(&key);
        }
    }
}

/// One HTTP/1.0 request over a raw TCP connection to `addr` ("host:port").
/// Returns the status code and the body. Short timeouts: meant for loopback.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<(u16, String)> {
    let socket: SocketAddr = addr.parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad address {addr:?}: {e}"),
        )
    })?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP response: {head:?}"),
            )
        })?;
    Ok((status, body.to_owned()))
}

/// `GET path` on `addr`; see [`http_request`].
pub fn http_get(addr: &str, path: &str) -> io::Result<(u16, String)> {
    http_request(addr, "GET", path, None)
}

/// The value of the series `series` (name and labels, exactly as
/// exposed) in a scrape of a node's `--metrics-listen` address `addr`;
/// `None` while it is absent or the scrape fails.
pub fn scraped(addr: &str, series: &str) -> Option<f64> {
    let (status, body) = http_get(addr, "/metrics").ok()?;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a metric's value is a number"))
}

// ---------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------

/// The first executable `name` in a directory of `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| is_executable_file(path))
}

/// `name` on `PATH`; panics naming `installer`, the script that installs
/// it (a test that needs a tool fails without it, never skips).
pub fn required_tool(name: &str, installer: &str) -> PathBuf {
    on_path(name)
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: run {installer} (scripts/test does)"))
}

/// The etcd binary: `$AGENTMESH_TEST_ETCD` if set, else `etcd` on `PATH`,
/// else `/usr/bin/etcd` or `/usr/local/bin/etcd`. Panics (the test fails, it
/// is never skipped) when none exists.
pub fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("AGENTMESH_TEST_ETCD").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            is_executable_file(&path),
            "AGENTMESH_TEST_ETCD={} is not an executable file; point it at an etcd binary \
             or unset it and run `scripts/install-deps`",
            path.display()
        );
        return path;
    }
    let fallbacks = [
        PathBuf::from("/usr/bin/etcd"),
        PathBuf::from("/usr/local/bin/etcd"),
    ];
    on_path("etcd")
        .into_iter()
        .chain(fallbacks)
        .find(|p| is_executable_file(p))
        .unwrap_or_else(|| {
            panic!(
                "etcd not found (looked at $AGENTMESH_TEST_ETCD, PATH, /usr/bin/etcd, \
             /usr/local/bin/etcd). End-to-end tests need a real etcd: run `scripts/install-deps` \
             (or set AGENTMESH_TEST_ETCD=/path/to/etcd). Tests fail, never skip, without etcd."
            )
        })
}

/// Why one launch of etcd did not become healthy.
enum EtcdStartError {
    /// The process died before it was healthy (typically: a port was taken).
    Exited(ExitStatus),
    /// Still running but not healthy within [`ETCD_HEALTH_TIMEOUT`].
    NotHealthy(String),
}

/// A real single-member etcd on loopback, with its data dir and log
/// (`etcd.log`) in a scratch dir. Killed (SIGKILL) on drop.
///
/// [`Etcd::start_secure`] starts it with TLS (certificates made by the
/// test) and authentication on: nodes then need [`Etcd::node_flags`], and
/// tests reach it with [`Etcd::root_client`]. `/health` is then served on
/// a plain-HTTP metrics listener, so [`Etcd::health`] works either way.
pub struct Etcd {
    binary: PathBuf,
    /// `None` only during drop.
    dir: Option<TempDir>,
    root: PathBuf,
    log_path: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// The plain-HTTP `/health` listener of a secure etcd.
    metrics_port: u16,
    /// TLS and authentication, for [`Etcd::start_secure`].
    auth: Option<Box<etcd_auth::EtcdAuth>>,
    child: Mutex<Option<Child>>,
    startup_time: Mutex<Duration>,
    /// Flags added to every launch, after the harness's own.
    extra_args: Vec<String>,
}

impl Etcd {
    /// [`Etcd::start`] with extra flags, e.g. a small
    /// `--quota-backend-bytes`.
    pub fn start_with(extra_args: &[&str]) -> Etcd {
        Self::start_inner(extra_args.iter().map(|a| (*a).to_owned()).collect(), false)
    }

    /// [`Etcd::start`] with TLS on its client port (a CA and a server
    /// certificate for 127.0.0.1 made now) and authentication on (root
    /// and the roles made by `agentmesh etcd-setup`).
    pub fn start_secure() -> Etcd {
        Self::start_secure_with(&[])
    }

    /// [`Etcd::start_secure`] with extra flags.
    pub fn start_secure_with(extra_args: &[&str]) -> Etcd {
        Self::start_inner(extra_args.iter().map(|a| (*a).to_owned()).collect(), true)
    }

    /// Starts etcd on two free ports and waits (up to 20 s) until
    /// `GET /health` reports healthy. If etcd exits early (a port was taken
    /// meanwhile), retries on new ports up to 3 times. Panics with the tail of
    /// the etcd log when it cannot start.
    pub fn start() -> Etcd {
        Self::start_inner(Vec::new(), false)
    }

    fn start_inner(extra_args: Vec<String>, secure: bool) -> Etcd {
        let binary = etcd_binary();
        let dir = scratch_dir("etcd");
        let root = dir.path().to_path_buf();
        let auth = secure.then(|| Box::new(etcd_auth::EtcdAuth::new(&root, &[])));
        let mut etcd = Etcd {
            binary,
            log_path: root.join("etcd.log"),
            root,
            dir: Some(dir),
            client_port: 0,
            peer_port: 0,
            metrics_port: 0,
            auth,
            child: Mutex::new(None),
            startup_time: Mutex::new(Duration::ZERO),
            extra_args,
        };
        let mut failures = Vec::new();
        for attempt in 1..=ETCD_START_ATTEMPTS {
            let ports = free_ports(3);
            etcd.client_port = ports[0];
            etcd.peer_port = ports[1];
            etcd.metrics_port = ports[2];
            // A failed attempt may have written member data for other ports.
            let _ = fs::remove_dir_all(etcd.data_dir());
            match etcd.launch(&format!("start attempt {attempt}")) {
                Ok(()) => {
                    if let Some(auth) = &etcd.auth {
                        auth.setup(&etcd.client_url(), &[], run_cli_setup);
                    }
                    return etcd;
                }
                Err(EtcdStartError::Exited(status)) => failures.push(format!(
                    "attempt {attempt} (client port {}, peer port {}) exited early: {status}",
                    etcd.client_port, etcd.peer_port
                )),
                Err(EtcdStartError::NotHealthy(last)) => etcd.fail(&format!(
                    "etcd did not become healthy within {ETCD_HEALTH_TIMEOUT:?} ({last})"
                )),
            }
        }
        etcd.fail(&format!("etcd could not start: {}", failures.join("; ")))
    }

    /// `http://127.0.0.1:PORT` (`https://` when secure), the URL to pass
    /// to `--etcd`.
    pub fn client_url(&self) -> String {
        let scheme = if self.auth.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr())
    }

    /// TLS and authentication of a [`Etcd::start_secure`] etcd.
    pub fn auth(&self) -> Option<&etcd_auth::EtcdAuth> {
        self.auth.as_deref()
    }

    /// The `agentmesh node` flags node `id` of `role` (`worker`...) needs
    /// to reach this etcd: none for a plain one; for a secure one the CA
    /// and an etcd user of its own, made now if it was not yet.
    pub fn node_flags(&self, id: &str, role: &str) -> Vec<String> {
        match &self.auth {
            None => Vec::new(),
            Some(auth) => {
                auth.setup(&self.client_url(), &[(id, role)], run_cli_setup);
                auth.node_flags(id)
            }
        }
    }

    /// Makes the etcd users of several nodes at once (one
    /// `agentmesh etcd-setup`); nothing for a plain etcd.
    pub fn make_node_users(&self, nodes: &[(&str, &str)]) {
        if let Some(auth) = &self.auth
            && !nodes.is_empty()
        {
            auth.setup(&self.client_url(), nodes, run_cli_setup);
        }
    }

    /// A client with etcd's full rights: root over TLS on a secure etcd,
    /// anonymous on a plain one.
    pub async fn root_client(&self) -> Result<etcd_client::Client, String> {
        let url = self.client_url();
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(grpc::CONNECT_TIMEOUT)
            .with_timeout(grpc::CALL_TIMEOUT);
        if let Some(auth) = &self.auth {
            let ca = fs::read(&auth.pki.ca_file).map_err(|e| format!("read the CA: {e}"))?;
            options = options
                .with_tls(
                    etcd_client::TlsOptions::new()
                        .ca_certificate(etcd_client::Certificate::from_pem(ca)),
                )
                .with_user("root", auth.root_password());
        }
        etcd_client::Client::connect([url.as_str()], Some(options))
            .await
            .map_err(|e| format!("connect to {url}: {e}"))
    }

    /// `127.0.0.1:PORT` of the client listener.
    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PORT` of the peer listener.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The last `n` lines of the etcd log (all launches, each introduced by a
    /// `=== harness:` line).
    pub fn log_tail(&self, n: usize) -> String {
        file_tail(&self.log_path, n)
    }

    /// How long the last (re)start took until `/health` was healthy.
    pub fn startup_time(&self) -> Duration {
        *lock(&self.startup_time)
    }

    /// PID of the running etcd, `None` when stopped or exited.
    pub fn pid(&self) -> Option<u32> {
        let mut child = lock(&self.child);
        let child = child.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// `Ok(body)` when `GET /health` answers 200 with `"health":"true"`
    /// (on the metrics listener of a secure etcd, which is plain HTTP).
    pub fn health(&self) -> Result<String, String> {
        let addr = if self.auth.is_some() {
            format!("127.0.0.1:{}", self.metrics_port)
        } else {
            self.client_addr()
        };
        match http_get(&addr, "/health") {
            Ok((200, body)) if body.contains(r#""health":"true""#) => Ok(body),
            Ok((status, body)) => Err(format!("unhealthy: HTTP {status} {}", body.trim())),
            Err(err) => Err(format!("GET /health on {addr}: {err}")),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.health().is_ok()
    }

    /// SIGSTOPs etcd: it keeps its sockets but answers nothing — a stalled
    /// disk or a paused VM as its clients see it — until [`Etcd::resume`].
    pub fn pause(&self) {
        let pid = self
            .pid()
            .unwrap_or_else(|| self.fail("cannot pause etcd: not running"));
        send_signal(pid, "STOP");
    }

    /// SIGCONTs etcd after [`Etcd::pause`].
    pub fn resume(&self) {
        let pid = self
            .pid()
            .unwrap_or_else(|| self.fail("cannot resume etcd: not running"));
        send_signal(pid, "CONT");
    }

    /// Whether `key` exists, asked with a fresh client.
    pub fn has_key(&self, key: &str) -> Result<bool, String> {
        let url = self.client_url();
        grpc::runtime().block_on(async {
            let mut client = self.root_client().await?;
            let reply = client
                .get(key, Some(etcd_client::GetOptions::new().with_count_only()))
                .await
                .map_err(|e| format!("get {key} from {url}: {e}"))?;
            Ok(reply.count() > 0)
        })
    }

    /// SIGKILLs etcd and reaps it. The data dir is kept for [`Etcd::restart`].
    /// Does nothing when already stopped.
    pub fn stop(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops etcd if running, then starts it again on the SAME ports and data
    /// dir and waits until healthy (the client URL does not change). Retries
    /// up to 3 times if it exits early (a port briefly taken by someone else).
    pub fn restart(&self) {
        self.stop();
        let mut failures = Vec::new();
        for attempt in 1..=ETCD_START_ATTEMPTS {
            match self.launch(&format!("restart attempt {attempt}")) {
                Ok(()) => return,
                Err(EtcdStartError::Exited(status)) => {
                    failures.push(format!("attempt {attempt} exited early: {status}"))
                }
                Err(EtcdStartError::NotHealthy(last)) => self.fail(&format!(
                    "restarted etcd did not become healthy within {ETCD_HEALTH_TIMEOUT:?} ({last})"
                )),
            }
        }
        self.fail(&format!(
            "etcd could not restart on {}: {}",
            self.client_url(),
            failures.join("; ")
        ))
    }

    fn args(&self) -> Vec<String> {
        let client = self.client_url();
        let peer = self.peer_url();
        let name = "harness";
        vec![
            format!("--name={name}"),
            format!("--data-dir={}", self.data_dir().display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={name}={peer}"),
            "--initial-cluster-state=new".to_owned(),
            // A single loopback member: shorter raft timers make the first
            // election (and so startup and restart) faster.
            "--heartbeat-interval=50".to_owned(),
            "--election-timeout=500".to_owned(),
            // Valid for etcd 3.4 (where capnslog is the default) and 3.5+.
            "--logger=zap".to_owned(),
            "--log-outputs=stderr".to_owned(),
            "--log-level=warn".to_owned(),
            // As docs/guarantees.md requires of production etcd: history
            // older than a minute is compacted every minute.
            "--auto-compaction-mode=periodic".to_owned(),
            "--auto-compaction-retention=1m".to_owned(),
        ]
        .into_iter()
        .chain(self.auth.iter().flat_map(|auth| {
            [
                format!("--cert-file={}", auth.server_cert.display()),
                format!("--key-file={}", auth.server_key.display()),
                format!(
                    "--listen-metrics-urls=http://127.0.0.1:{}",
                    self.metrics_port
                ),
                // Test passwords are random: the cheapest bcrypt keeps each
                // user made and each login from costing ~50 ms of CPU.
                "--bcrypt-cost=4".to_owned(),
            ]
        }))
        .chain(self.extra_args.iter().cloned())
        .collect()
    }

    /// Spawns etcd (output appended to `etcd.log`) and waits until healthy.
    fn launch(&self, label: &str) -> Result<(), EtcdStartError> {
        let args = self.args();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path.display()));
        let _ = writeln!(
            log,
            "=== harness: {label}: {} {}",
            self.binary.display(),
            args.join(" ")
        );
        let stderr = log.try_clone().expect("clone etcd log file handle");
        let mut cmd = Command::new(&self.binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        // etcd reads its flags from ETCD_* variables too.
        remove_inherited_env(&mut cmd, &["ETCD_"], None);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcd ({}): {e}", self.binary.display()));
        *lock(&self.child) = Some(child);

        let deadline = started + ETCD_HEALTH_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status() {
                lock(&self.child).take();
                return Err(EtcdStartError::Exited(status));
            }
            let health = self.health();
            // Check again that *our* etcd is still alive: a healthy answer
            // could come from someone else's server on a port we lost.
            if let Some(status) = self.exit_status() {
                lock(&self.child).take();
                return Err(EtcdStartError::Exited(status));
            }
            match health {
                Ok(_) => {
                    *lock(&self.startup_time) = started.elapsed();
                    return Ok(());
                }
                Err(last) if Instant::now() >= deadline => {
                    return Err(EtcdStartError::NotHealthy(last));
                }
                Err(_) => thread::sleep(POLL_INTERVAL),
            }
        }
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        lock(&self.child)
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n--- etcd log {} (last {TAIL_LINES} lines) ---\n{}",
            self.log_path.display(),
            self.log_tail(TAIL_LINES)
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.dir.take()
            && thread::panicking()
        {
            // Keep the log (not the data: the WAL alone is 64 MB).
            let _ = fs::remove_dir_all(self.data_dir());
            let kept = dir.keep();
            eprintln!(
                "--- etcd {} log kept at {} (last {TAIL_LINES} lines) ---\n{}",
                self.client_url(),
                kept.join("etcd.log").display(),
                self.log_tail(TAIL_LINES)
            );
        }
    }
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd")
            .field("client_url", &self.client_url())
            .field("peer_url", &self.peer_url())
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Which output stream a captured line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Lines captured from a child, and the log file they are copied to (one lock
/// for both keeps the file in the same order as memory).
struct Captured {
    lines: Vec<(Stream, String)>,
    log: File,
}

struct Output {
    captured: Mutex<Captured>,
    /// Streams not yet at end-of-file.
    open_streams: AtomicUsize,
}

impl Output {
    fn push(&self, stream: Stream, line: String) {
        let mut captured = lock(&self.captured);
        let _ = writeln!(captured.log, "{line}");
        captured.lines.push((stream, line));
    }
}

/// A spawned child process, SIGKILLed (and reaped) on drop.
///
/// Its stdout and stderr are read line by line by two background threads into
/// a shared in-memory buffer and into `<scratch dir>/<name>.log`. All methods
/// take `&self`.
///
/// Environment: inherited, minus `AGENTMESH_*` variables (except
/// `AGENTMESH_TEST_*`) so the developer's shell cannot change a test; then
/// `RUST_BACKTRACE=1`, `RUST_LOG=info` and `NO_COLOR=1` unless `envs` sets
/// them; then `envs`. Stdin is `/dev/null`.
pub struct Process {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    output: Arc<Output>,
    log_path: PathBuf,
    /// `None` only during drop.
    dir: Option<TempDir>,
}

impl Process {
    /// Spawns `program args...`; panics if it cannot be started.
    ///
    /// With no arguments, spell the type: `&[] as &[&str]`.
    pub fn spawn(
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[impl AsRef<OsStr>],
        envs: &[(&str, &str)],
    ) -> Process {
        let program = program.as_ref();
        let dir = scratch_dir(name);
        let log_path = dir.path().join(format!("{}.log", sanitize(name)));
        let mut log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let shown_args: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let _ = writeln!(
            log,
            "=== harness: {name}: {} {}",
            program.to_string_lossy(),
            shown_args.join(" ")
        );

        let mut child = harness_command(program, args, envs)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.to_string_lossy()));

        let output = Arc::new(Output {
            captured: Mutex::new(Captured {
                lines: Vec::new(),
                log,
            }),
            open_streams: AtomicUsize::new(2),
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_line_reader(name, Stream::Stdout, stdout, Arc::clone(&output));
        spawn_line_reader(name, Stream::Stderr, stderr, Arc::clone(&output));

        Process {
            name: name.to_owned(),
            pid: child.id(),
            child: Mutex::new(child),
            output,
            log_path,
            dir: Some(dir),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `<scratch dir>/<name>.log`: a header line, then every captured line.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Every line captured so far, stdout and stderr interleaved in arrival
    /// order, without the line terminator.
    pub fn output_lines(&self) -> Vec<String> {
        self.lines_where(|_| true)
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines_where(|s| s == Stream::Stdout)
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines_where(|s| s == Stream::Stderr)
    }

    fn lines_where(&self, keep: impl Fn(Stream) -> bool) -> Vec<String> {
        lock(&self.output.captured)
            .lines
            .iter()
            .filter(|(stream, _)| keep(*stream))
            .map(|(_, line)| line.clone())
            .collect()
    }

    /// The last `n` captured lines (both streams), newline-separated.
    pub fn log_tail(&self, n: usize) -> String {
        tail_of(&self.output_lines(), n)
    }

    /// Waits for the first captured line (stdout or stderr) containing
    /// `needle` and returns it. Panics on timeout, or as soon as the process
    /// has closed its output without printing it; both messages include the
    /// log tail.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line_where(
            &format!("a line containing {needle:?}"),
            timeout,
            |_, line| line.contains(needle),
        )
    }

    /// [`Process::wait_for_line`] restricted to stdout.
    pub fn wait_for_stdout_line(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line_where(
            &format!("a stdout line containing {needle:?}"),
            timeout,
            |stream, line| stream == Stream::Stdout && line.contains(needle),
        )
    }

    /// Waits for the first captured line for which `matches(stream, line)`
    /// holds; `what` describes it in panic messages.
    pub fn wait_for_line_where(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(Stream, &str) -> bool,
    ) -> String {
        let mut scanned = 0;
        let mut closed_without_it = false;
        let found = poll_until(timeout, || {
            // Read the EOF flag first: lines seen after it are complete.
            let closed = self.output.open_streams.load(Ordering::SeqCst) == 0;
            let captured = lock(&self.output.captured);
            if let Some((_, line)) = captured.lines[scanned..]
                .iter()
                .find(|(s, l)| matches(*s, l))
            {
                return Some(line.clone());
            }
            scanned = captured.lines.len();
            closed_without_it = closed;
            closed.then(String::new)
        });
        match found {
            Some(line) if !closed_without_it => line,
            Some(_) => {
                let status = self.wait_exit(Duration::from_secs(5));
                self.fail(&format!(
                    "{} closed its output without printing {what} (exit status: {})",
                    self.name,
                    status.map_or_else(|| "still running".to_owned(), |s| s.to_string())
                ))
            }
            None => self.fail(&format!(
                "timed out after {timeout:?} waiting for {} to print {what}",
                self.name
            )),
        }
    }

    /// Fails if any captured line contains `panicked at`.
    pub fn assert_no_panic(&self) {
        let panics: Vec<String> = self
            .output_lines()
            .into_iter()
            .filter(|l| l.contains("panicked at"))
            .collect();
        if !panics.is_empty() {
            self.fail(&format!("{} panicked:\n{}", self.name, panics.join("\n")));
        }
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    /// Peak resident set size in KiB (`VmHWM` in `/proc/PID/status`), while
    /// the process has not been reaped.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// Polls until the process exits; `None` if still running after `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.try_status())
    }

    /// SIGKILLs the process (if still running) and reaps it.
    pub fn kill(&self) -> ExitStatus {
        let mut child = lock(&self.child);
        let _ = child.kill();
        child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for {} after kill: {e}", self.name))
    }

    /// Sends a signal by name ("TERM", "INT", "HUP", "STOP", ...) with
    /// `kill -s SIG PID`. Panics if the process has already exited.
    pub fn signal(&self, sig: &str) {
        // Holding the lock keeps the child unreaped, so the PID is still ours.
        let mut child = lock(&self.child);
        if let Ok(Some(status)) = child.try_wait() {
            drop(child);
            self.fail(&format!(
                "cannot send SIG{sig} to {}: already exited ({status})",
                self.name
            ));
        }
        send_signal(self.pid, sig);
    }

    /// Panics with `msg`, followed by the process's last lines of output.
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n--- {} (pid {}) output, last {TAIL_LINES} lines; full log at {} ---\n{}",
            self.name,
            self.pid,
            self.log_path.display(),
            self.log_tail(TAIL_LINES)
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        {
            let mut child = lock(&self.child);
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(dir) = self.dir.take()
            && thread::panicking()
        {
            let _ = dir.keep();
            eprintln!(
                "--- {} (pid {}) log kept at {} (last {TAIL_LINES} lines) ---\n{}",
                self.name,
                self.pid,
                self.log_path.display(),
                self.log_tail(TAIL_LINES)
            );
        }
    }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("log_path", &self.log_path)
            .finish_non_exhaustive()
    }
}

/// `kill -s SIG PID`; panics if it fails.
fn send_signal(pid: u32, sig: &str) {
    match Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`kill -s {sig} {pid}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("cannot run `kill -s {sig} {pid}`: {e}"),
    }
}

/// `program args...` with stdin from /dev/null, stdout and stderr piped, and
/// the environment rules described on [`Process`].
fn harness_command(program: &OsStr, args: &[impl AsRef<OsStr>], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    remove_inherited_env(&mut cmd, &["AGENTMESH_"], Some("AGENTMESH_TEST_"));
    for (key, default) in [
        ("RUST_BACKTRACE", "1"),
        ("RUST_LOG", "info"),
        ("NO_COLOR", "1"),
    ] {
        if !envs.iter().any(|(k, _)| *k == key) {
            cmd.env(key, default);
        }
    }
    cmd.envs(envs.iter().copied());
    cmd
}

/// Reads `source` line by line (lossy UTF-8, terminator stripped) into
/// `output` until end-of-file, then marks the stream closed.
fn spawn_line_reader(
    name: &str,
    stream: Stream,
    source: impl Read + Send + 'static,
    output: Arc<Output>,
) {
    let thread_name = format!(
        "{name}-{}",
        if stream == Stream::Stdout {
            "stdout"
        } else {
            "stderr"
        }
    );
    thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let mut reader = BufReader::new(source);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        output.push(stream, line.trim_end_matches(['\n', '\r']).to_owned());
                    }
                }
            }
            output.open_streams.fetch_sub(1, Ordering::SeqCst);
        })
        .expect("spawn output reader thread");
}

// ---------------------------------------------------------------------------
// Commands run to completion
// ---------------------------------------------------------------------------

/// Result of a command run to completion by [`run_cli`] / [`run_command`].
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Exit code; `None` when killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Stdout parsed as JSON; panics (showing both streams) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Path of the `agentmesh` binary built by cargo for these tests.
pub fn agentmesh_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agentmesh"))
}

/// `agentmesh etcd-setup ARGS...` on this machine.
fn run_cli_setup(args: &[&str]) -> CliOutput {
    run_cli_with(args, &[], etcd_auth::SETUP_TIMEOUT)
}

/// Runs `agentmesh ARGS...` to completion (60 s timeout: killed, then panic).
pub fn run_cli(args: &[&str]) -> CliOutput {
    run_cli_with(args, &[], CLI_TIMEOUT)
}

/// [`run_cli`] with extra environment variables and a custom timeout.
pub fn run_cli_with(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> CliOutput {
    run_command(agentmesh_bin(), args, &cli_env(envs), timeout)
}

/// `envs` and, unless they say otherwise, `AGENTMESH_CA` of the test CA
/// and `AGENTMESH_TOKEN` of the harness's admin token: what every CLI the
/// harness runs gets.
pub fn cli_env<'a>(envs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = envs.to_vec();
    let has = |key: &str| envs.iter().any(|(k, _)| *k == key);
    if !has("AGENTMESH_CA") {
        let ca = tls::shared().ca.to_str().expect("a UTF-8 path");
        all.push(("AGENTMESH_CA", ca));
    }
    if !has("AGENTMESH_TOKEN") && !has("AGENTMESH_TOKEN_FILE") {
        all.push(("AGENTMESH_TOKEN", tls::shared_tokens().admin.as_str()));
    }
    all
}

/// Runs any program to completion with the environment rules of
/// [`Process`], capturing stdout and stderr. On timeout the program is
/// SIGKILLed and the call panics with what it printed.
pub fn run_command(
    program: impl AsRef<OsStr>,
    args: &[impl AsRef<OsStr>],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> CliOutput {
    run_command_in(None, program, args, envs, timeout)
}

/// `agentmesh ARGS` run from `dir`, as a user types it there (relative
/// paths in the arguments resolve against `dir`).
pub fn run_cli_in(dir: &Path, args: &[&str], timeout: Duration) -> CliOutput {
    run_command_in(Some(dir), agentmesh_bin(), args, &cli_env(&[]), timeout)
}

fn run_command_in(
    dir: Option<&Path>,
    program: impl AsRef<OsStr>,
    args: &[impl AsRef<OsStr>],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> CliOutput {
    let program = program.as_ref();
    let shown = format!(
        "{} {}",
        program.to_string_lossy(),
        args.iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut command = harness_command(program, args, envs);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{shown}`: {e}"));
    let stdout = read_all_in_background(child.stdout.take().expect("piped stdout"));
    let stderr = read_all_in_background(child.stderr.take().expect("piped stderr"));

    let status = poll_until(timeout, || child.try_wait().ok().flatten());
    let timed_out = status.is_none();
    let status = match status {
        Some(status) => status,
        None => {
            let _ = child.kill();
            child
                .wait()
                .unwrap_or_else(|e| panic!("waiting for `{shown}` after kill: {e}"))
        }
    };
    // Output is complete at EOF; a grandchild holding the pipes must not hang us.
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(5))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|_| "<output still open 5 s after exit>".to_owned())
    };
    let output = CliOutput {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    };
    if timed_out {
        panic!("`{shown}` did not finish within {timeout:?}; killed.\n{output}");
    }
    output
}

fn read_all_in_background(mut source: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = source.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    rx
}
