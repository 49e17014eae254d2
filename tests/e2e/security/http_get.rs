//! `http.get` as a server-side request forgery: a worker allowed to fetch
//! from one local test server, and tasks that try to reach further — etcd's
//! client port on the same host, a second request smuggled with CR/LF in
//! the path, a name (`localhost`) that resolves to a loopback address.
//! Each must fail naming why, the test server must see no request it was
//! not meant to, and an honest fetch must return the server's body.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::cluster::{Cluster, NodeSpec};

/// How long one `http.get` task may take: the tool's own limit is 10 s.
const TASK_TIMEOUT: Duration = Duration::from_secs(60);

/// What the test server answers every request with.
const BODY: &str = "hello from the test server";

/// A plain HTTP/1.1 server on 127.0.0.1 that answers every request with
/// [`BODY`] and counts the requests it reads (every request head, so a
/// second request smuggled into one connection counts too). Stopped and
/// joined on drop.
struct TestServer {
    port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
        let port = listener.local_addr().expect("local addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counted, stopping) = (requests.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream, &counted);
                }
            }
        });
        Self {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one connection's request heads (a second one pipelined behind the
/// first included, for a short while) and answers the first.
fn serve(mut stream: TcpStream, requests: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    while read.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => read.extend_from_slice(&buf[..n]),
        }
        if read.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let heads = read.windows(4).filter(|w| w == b"\r\n\r\n").count();
    requests.fetch_add(heads, Ordering::SeqCst);
    if heads > 0 {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
            BODY.len()
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// A coordinator and one worker offering `http.get` (and `math.eval`),
/// allowed to fetch from the test server by address and by the name
/// `localhost`, with `extra` worker flags.
fn cluster(server: &TestServer, extra: &[&str]) -> Cluster {
    let allow = format!("127.0.0.1:{0},localhost:{0}", server.port);
    let mut args = vec!["--http-allow", allow.as_str()];
    args.extend_from_slice(extra);
    Cluster::builder()
        .coordinators(1)
        .node(NodeSpec::worker("worker-http", "http.get,math.eval").args(&args))
        .start()
}

/// Submits one `http.get` of `url` and returns the final record.
fn fetch(cluster: &Cluster, name: &str, url: &str) -> Value {
    let task = json!({
        "name": name,
        "tasks": [{ "id": "get", "capability": "http.get", "input": { "url": url } }],
    });
    let file = cluster.task_file(&format!("{name}.json"), &task.to_string());
    let id = cluster.submit(&file);
    cluster.wait_ended(&id, TASK_TIMEOUT)
}

/// The subtask's error, asserting the task failed after one attempt (a
/// refusal is the task's fault and never retried elsewhere).
fn refusal(record: &Value) -> String {
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["subtasks"][0]["attempts"], 1, "retried: {record}");
    record["subtasks"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The honest fetch: completes with the test server's body.
fn assert_served(cluster: &Cluster, name: &str, url: &str) {
    let record = fetch(cluster, name, url);
    assert_eq!(record["status"], "completed", "{record}");
    let output = &record["subtasks"][0]["output"];
    assert_eq!(output["status"], 200, "{record}");
    assert_eq!(output["body"], BODY, "{record}");
}

#[test]
fn http_get_reaches_the_allowed_port_only_and_smuggles_nothing() {
    let server = TestServer::start();
    let cluster = cluster(&server, &[]);
    let etcd = cluster.etcd().client_addr();

    // etcd's client port on the same host, by address and by a redirect-free
    // name: the allow-list opens the test server's port, not the machine.
    let record = fetch(&cluster, "etcd", &format!("http://{etcd}/v3/kv/range"));
    let error = refusal(&record);
    assert!(
        error.contains(&format!(
            "http://{etcd} is not in this node's http allow-list"
        )),
        "{error}"
    );
    assert_eq!(server.requests(), 0);

    // CR/LF in the path would end the request line and start a second
    // request on the same connection.
    let smuggled = format!(
        "http://127.0.0.1:{}/a HTTP/1.1\r\nHost: x\r\n\r\nPUT /v3/kv/put HTTP/1.1\r\n\r\n",
        server.port
    );
    let error = refusal(&fetch(&cluster, "smuggle", &smuggled));
    assert!(
        error.contains("url must not contain whitespace or control characters"),
        "{error}"
    );
    assert_eq!(server.requests(), 0, "a refused url reached the server");

    // The honest fetch: one request, the server's body.
    assert_served(
        &cluster,
        "honest",
        &format!("http://127.0.0.1:{}/", server.port),
    );
    assert_eq!(server.requests(), 1, "exactly the honest request arrived");
    cluster.assert_no_panic();
}

#[test]
fn a_name_resolving_to_loopback_is_refused_unless_private_addresses_are_allowed() {
    let server = TestServer::start();
    let url = format!("http://localhost:{}/", server.port);

    let strict = cluster(&server, &[]);
    let error = refusal(&fetch(&strict, "localhost", &url));
    assert!(
        error.contains(&format!("GET {url} refused: localhost resolves to ")),
        "{error}"
    );
    assert!(
        error.contains(
            "a loopback address; private addresses are refused unless --http-allow-private"
        ),
        "{error}"
    );
    assert_eq!(server.requests(), 0, "the refused name was connected to");
    // The same worker still serves the address its allow-list names.
    assert_served(
        &strict,
        "by-address",
        &format!("http://127.0.0.1:{}/", server.port),
    );
    assert_eq!(server.requests(), 1);
    drop(strict);

    let permissive = cluster(&server, &["--http-allow-private"]);
    assert_served(&permissive, "localhost-allowed", &url);
    assert_eq!(server.requests(), 2);
    permissive.assert_no_panic();
}
