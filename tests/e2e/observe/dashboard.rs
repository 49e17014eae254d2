//! The live dashboard in a real browser: headless Chromium (the Debian
//! package) driven by playwright-core (both installed by
//! `scripts/install-browser`) against a coordinator of a TLS cluster with
//! client tokens on real etcd. `tests/e2e/support/dashboard.mjs` signs in
//! with a token, finds a task with a hostile name shown as text, sees a
//! task submitted while it watches appear, its DAG drawn with every
//! subtask and dependency while its slow step runs, and the task turn
//! completed without a reload. A worker's port answers with a pointer to
//! the coordinators.
//!
//! `AGENTMESH_DASHBOARD_SCREENSHOT=docs/dashboard.png` also copies the
//! screenshot of the running task there (how docs/dashboard.png is made).

use std::path::Path;
use std::time::Duration;

use crate::support::cluster::Cluster;
use crate::support::{Process, free_port, http_get, repo_root, required_tool, scratch_dir, tls};

/// The browser script's whole run, from launch to the task's end.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// A name that would run script if it were ever parsed as markup.
const XSS_NAME: &str = "<img src=x onerror=\"window.__xss=1\">";

/// Four subtasks, four dependencies; `slow` keeps the task running long
/// enough for the page to see it running.
const DAG_NAME: &str = "dashboard-dag";
const DAG_NODES: usize = 4;
const DAG_EDGES: usize = 4;
const DAG: &str = "name: dashboard-dag
pattern: coordinator_worker
strategy: parallel
tasks:
  - id: fetch
    capability: math.eval
    input: { expr: \"20 + 1\" }
  - id: slow
    capability: sleep
    depends_on: [fetch]
    input: { ms: 4000 }
  - id: quick
    capability: math.eval
    depends_on: [fetch]
    input: { expr: \"2 * 21\" }
  - id: join
    capability: text.word_count
    depends_on: [slow, quick]
    input: { text: \"done and dusted\" }
";

/// `GET path` on `addr` with `token` as bearer: the status and body.
fn get_as(addr: &str, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the dashboard");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    (status, body.to_owned())
}

#[test]
fn the_dashboard_shows_a_task_running_then_completed_in_a_real_browser() {
    // Every tool found before anything starts: a missing one fails at once.
    let node = required_tool("node", "scripts/install-browser");
    let chromium = Path::new("/usr/bin/chromium");
    assert!(
        chromium.is_file(),
        "/usr/bin/chromium is missing: run scripts/install-browser (Debian package chromium); \
         this test fails, never skips, without a browser"
    );
    let playwright = repo_root().join(".tools/browser/node_modules/playwright-core");
    assert!(
        playwright.join("package.json").is_file(),
        "playwright-core is missing from {}: run scripts/install-browser",
        playwright.display()
    );

    let dir = scratch_dir("dashboard");
    let (tokens_file, tokens) = tls::tokens_file(dir.path(), &[("submit", "alice")]);
    let tokens_path = tokens_file.to_string_lossy().into_owned();
    let alice = &tokens[0].1;
    let coordinator_http = format!("127.0.0.1:{}", free_port());
    let worker_http = format!("127.0.0.1:{}", free_port());
    let cluster = Cluster::builder()
        .coordinators(1)
        .coordinator_args(&[
            "--metrics-listen",
            &coordinator_http,
            "--token-file",
            &tokens_path,
        ])
        .worker_args(&["--metrics-listen", &worker_http])
        .worker("worker-1", "math.eval,sleep,text.word_count")
        .start();
    cluster.node("coordinator-1").process.wait_for_line(
        &format!("metrics served at http://{coordinator_http}/metrics"),
        Duration::from_secs(15),
    );
    cluster.node("worker-1").process.wait_for_line(
        &format!("metrics served at http://{worker_http}/metrics"),
        Duration::from_secs(15),
    );

    // Without a browser: the worker points to the coordinators, and the
    // coordinator's data needs a token, the page does not.
    let (status, body) = http_get(&worker_http, "/").expect("GET / on the worker");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("served by coordinators"), "{body}");
    let (status, body) = http_get(&coordinator_http, "/").expect("GET / on the coordinator");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<script src=\"/dashboard.js\""), "{body}");
    let (status, body) = http_get(&coordinator_http, "/api/tasks").expect("GET /api/tasks");
    assert_eq!(status, 401, "{body}");
    let admin = &tls::shared_tokens().admin;

    let hostile = cluster.task_file(
        "hostile.yaml",
        &format!(
            "name: '{XSS_NAME}'\ntasks:\n  - id: a\n    capability: math.eval\n    input: {{ expr: \"1 + 1\" }}\n"
        ),
    );
    let record = cluster.submit_wait(&hostile);
    assert_eq!(record["status"], "completed", "{record}");
    let hostile_id = record["task_id"].as_str().expect("a task id");

    // A submit token's list holds its own tasks only, as `task list`'s;
    // the admin's holds the hostile task.
    let (status, body) = get_as(&coordinator_http, "/api/tasks", alice);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"tasks\":[]"), "{body}");
    let (status, body) = get_as(
        &coordinator_http,
        &format!("/api/tasks/{hostile_id}"),
        alice,
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = get_as(&coordinator_http, "/api/tasks", admin);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(hostile_id), "{body}");

    let screenshot = dir.path().join("dashboard.png");
    let screenshot_arg = screenshot.to_string_lossy().into_owned();
    let nodes = DAG_NODES.to_string();
    let edges = DAG_EDGES.to_string();
    let script = repo_root().join("tests/e2e/support/dashboard.mjs");
    let url = format!("http://{coordinator_http}/");
    let started = std::time::Instant::now();
    let browser = Process::spawn(
        "dashboard-browser",
        &node,
        &[script.as_os_str()],
        &[
            ("PLAYWRIGHT_CORE", &playwright.to_string_lossy()),
            ("DASHBOARD_URL", &url),
            ("DASHBOARD_TOKEN", admin),
            ("XSS_NAME", XSS_NAME),
            ("DAG_NAME", DAG_NAME),
            ("DAG_NODES", &nodes),
            ("DAG_EDGES", &edges),
            ("SCREENSHOT", &screenshot_arg),
        ],
    );
    // Submitted only once the page watches, so it sees the task start.
    browser.wait_for_line("dashboard: signed in", SCRIPT_TIMEOUT);
    let file = cluster.task_file("dag.yaml", DAG);
    let task = cluster.submit(&file);
    let status = browser.wait_exit(SCRIPT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "the browser script ran over {SCRIPT_TIMEOUT:?}: {}",
            browser.log_tail(40)
        )
    });
    let output = browser.output_lines().join("\n");
    assert!(
        status.success(),
        "the browser script failed ({status}):\n{output}"
    );
    assert!(
        output.contains(&format!("dashboard: listed {task}")),
        "the page listed another task than {task}:\n{output}"
    );
    for line in [
        "dashboard: running with 4 nodes, 4 edges",
        "dashboard: completed without a reload",
        "dashboard: ok",
    ] {
        assert!(output.contains(line), "missing {line:?}:\n{output}");
    }
    eprintln!("browser script took {:?}", started.elapsed());
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    if let Some(target) = std::env::var_os("AGENTMESH_DASHBOARD_SCREENSHOT") {
        let target = repo_root().join(target);
        std::fs::copy(&screenshot, &target)
            .unwrap_or_else(|e| panic!("copy the screenshot to {}: {e}", target.display()));
    }
    cluster.assert_no_panic();
}
