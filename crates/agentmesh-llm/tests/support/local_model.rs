//! A real language model for the tests that need one (this crate's, and the
//! end-to-end tests, which include this file): SmolLM2-135M-Instruct
//! served by llama.cpp's own OpenAI-compatible server (the `xllamacpp`
//! wheel), both installed by `scripts/install-model` and started on a free
//! loopback port. A missing Python, a failed install or a server that does
//! not come up fails the test: it never skips.
//!
//! A 135M model's judgement is not what a test checks, only structure: what
//! it answered parsed and validated, or the fallback that followed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long the server may take to print its port, and then to load.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The model the server serves; llama.cpp answers to any name.
pub const MODEL: &str = "smollm2";

/// The model server, killed when dropped (it also exits when its stdin
/// closes, so a test that dies takes it along).
pub struct LocalModel {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
}

impl LocalModel {
    /// Installs (if needed) and starts the model; returns once `/health`
    /// answers 200.
    pub fn start() -> LocalModel {
        let (python, gguf) = install();
        let script = repo_root().join("crates/agentmesh-llm/tests/support/llm_server.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(&gguf)
            .arg("0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_line, line) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = first_line.send(lines.next());
            // Drained so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match line.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => panic!("the model server exited before printing its address"),
            Err(_) => panic!("the model server printed no address within {START_TIMEOUT:?}"),
        };
        let port = line
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the model server: {line:?}"));
        let model = LocalModel {
            child,
            _stdin: stdin,
            port,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !model.healthy() {
            assert!(
                Instant::now() < deadline,
                "the model server on port {port} was not healthy within {START_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
        model
    }

    /// `http://127.0.0.1:PORT/v1`, what `--llm-base-url` takes.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The `--llm-*` flags that point a node at this model.
    pub fn node_args(&self) -> Vec<String> {
        [
            "--llm-base-url",
            &self.base_url(),
            "--llm-model",
            MODEL,
            "--llm-backend",
            "llama.cpp",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
    }
}

impl Drop for LocalModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository: both crates that include this file are `crates/NAME`.
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (python, gguf) from `scripts/install-model`: its last two lines.
fn install() -> (String, String) {
    let output = Command::new(repo_root().join("scripts/install-model"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run scripts/install-model");
    assert!(
        output.status.success(),
        "scripts/install-model failed ({}); see its message above",
        output.status
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    match lines[..] {
        [.., python, gguf] => (python.to_owned(), gguf.to_owned()),
        _ => panic!("scripts/install-model printed {stdout:?}, not the python and GGUF paths"),
    }
}
