//! A real Prometheus (the Debian package, installed by
//! `scripts/install-deps`) scrapes a coordinator and a worker started with
//! `--metrics-listen` every second; after tasks ran, its HTTP API answers
//! with the number of completed tasks, and both scrapes pass
//! `promtool check metrics` (names, units, `_total` counters, histograms).
//! Every query of the Grafana dashboard in `deploy/grafana/` is accepted by
//! that Prometheus and names only metrics the nodes export.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::cluster::Cluster;
use crate::support::{
    Process, eventually, free_port, http_get, repo_root, required_tool, scraped, scratch_dir,
};

/// Tasks run before Prometheus is asked.
const TASKS: usize = 3;
/// Prometheus starts, scrapes twice and answers within this.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// `name` from the Debian package prometheus.
fn tool(name: &str) -> PathBuf {
    required_tool(name, "scripts/install-deps (Debian package prometheus)")
}

/// `promtool check metrics` on `text`; panics with its findings.
fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(text.as_bytes()).expect("feed promtool");
    }
    let out = child.wait_with_output().expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check metrics on the {what}'s scrape failed:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The scrape of `addr` as `curl` (and promtool) would read it.
fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    body
}

/// `query` percent-encoded for a URL's query string.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the single-sample answer to `query`, `None` while there
/// is none (Prometheus not up yet, nothing scraped yet).
fn query(prometheus: &str, query: &str) -> Option<f64> {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", encode(query)),
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let answer: Value = serde_json::from_str(&body).ok()?;
    let result = answer["data"]["result"].as_array()?;
    let sample = result.first()?;
    sample["value"][1].as_str()?.parse().ok()
}

/// The dashboard shipped for Grafana, relative to the workspace root.
const GRAFANA_DASHBOARD: &str = "deploy/grafana/agentmesh.json";

/// Every panel query of the Grafana dashboard, with its variables replaced
/// by what Grafana would put there.
fn dashboard_queries() -> Vec<String> {
    let path = repo_root().join(GRAFANA_DASHBOARD);
    let text = std::fs::read_to_string(&path).expect("read the Grafana dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the Grafana dashboard is JSON");
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| {
            target["expr"]
                .as_str()
                .expect("every target has an expr")
                .replace("$job", ".*")
                .replace("$__rate_interval", "1m")
        })
        .collect();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    queries
}

/// The metric family names in a scrape (`# TYPE name kind` lines).
fn families(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect()
}

/// The operator's guide, whose reference tables name every metric.
const METRICS_REFERENCE: &str = "docs/operations.md";

/// Metric names in the reference tables (rows starting ``| `agentmesh_``).
fn documented(reference: &str) -> impl Iterator<Item = &str> {
    reference.lines().filter_map(|line| {
        let name = line.strip_prefix("| `")?.split('`').next()?;
        name.starts_with("agentmesh_").then_some(name)
    })
}

/// `agentmesh_*` names in `query`, histogram suffixes taken off.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("agentmesh_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

/// Prometheus's verdict on `query`: `Ok` when it parses and evaluates.
fn evaluates(prometheus: &str, query: &str) -> Result<(), String> {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", encode(query)),
    )
    .map_err(|e| e.to_string())?;
    let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status == 200 && answer["status"] == "success" {
        Ok(())
    } else {
        Err(format!("{status}: {body}"))
    }
}

fn start_prometheus(dir: &Path, targets: &[(&str, &str)]) -> (Process, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let jobs: String = targets
        .iter()
        .map(|(job, addr)| {
            format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n")
        })
        .collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}"
        ),
    )
    .expect("write prometheus.yml");
    let data = dir.join("data");
    let process = Process::spawn(
        "prometheus",
        tool("prometheus"),
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address={listen}"),
        ],
        &[],
    );
    (process, listen)
}

#[test]
fn prometheus_scrapes_the_cluster_and_counts_completed_tasks() {
    // Both found before anything starts: a missing tool fails at once.
    tool("prometheus");
    tool("promtool");
    let coordinator_metrics = format!("127.0.0.1:{}", free_port());
    let worker_metrics = format!("127.0.0.1:{}", free_port());
    let cluster = Cluster::builder()
        .coordinators(1)
        .coordinator_args(&["--metrics-listen", &coordinator_metrics])
        .worker_args(&["--metrics-listen", &worker_metrics])
        .worker("worker-1", "math.eval")
        .start();
    for (node, addr) in [
        ("coordinator-1", &coordinator_metrics),
        ("worker-1", &worker_metrics),
    ] {
        cluster.node(node).process.wait_for_line(
            &format!("metrics served at http://{addr}/metrics"),
            SCRAPE_TIMEOUT,
        );
    }

    let file = cluster.task_file(
        "eval.yaml",
        "name: eval\ntasks:\n  - id: a\n    capability: math.eval\n    input: { expr: \"2+3\" }\n",
    );
    for _ in 0..TASKS {
        let record = cluster.submit_wait(&file);
        assert_eq!(record["status"], "completed", "{record}");
    }

    // The coordinator's own count, before Prometheus is involved.
    let text = scrape(&coordinator_metrics);
    let completed = format!(
        "agentmesh_tasks_finished_total{{pattern=\"coordinator_worker\",status=\"completed\"}} {TASKS}"
    );
    assert!(
        text.lines().any(|l| l == completed),
        "no {completed:?} in\n{text}"
    );
    for series in [
        "agentmesh_coordinator_leader 1",
        "agentmesh_subtask_duration_seconds_count{capability=\"math.eval\"}",
        "agentmesh_subtask_queue_wait_seconds_count{capability=\"math.eval\"}",
        "agentmesh_record_write_duration_seconds_count",
        "agentmesh_etcd_request_duration_seconds_count{method=\"KV/Txn\"}",
    ] {
        assert!(text.contains(series), "no {series:?} in\n{text}");
    }
    // Published with the queue depth, once a second.
    let breaker = eventually("worker-1's breaker state", SCRAPE_TIMEOUT, || {
        scraped(
            &coordinator_metrics,
            r#"agentmesh_worker_breaker_state{agent="worker-1"}"#,
        )
    });
    assert_eq!(breaker, 0.0, "closed");
    promtool_check("coordinator", &text);
    let worker_text = scrape(&worker_metrics);
    assert!(
        worker_text.contains("agentmesh_mailbox_backlog{agent=\"worker-1\"} 0"),
        "{worker_text}"
    );
    promtool_check("worker", &worker_text);

    let dir = scratch_dir("prometheus");
    let (prometheus, api) = start_prometheus(
        dir.path(),
        &[
            ("coordinator", &coordinator_metrics),
            ("worker", &worker_metrics),
        ],
    );
    let total = eventually(
        "Prometheus reports the completed tasks",
        PROMETHEUS_TIMEOUT,
        || {
            query(
                &api,
                r#"sum(agentmesh_tasks_finished_total{status="completed"})"#,
            )
            .filter(|n| *n >= TASKS as f64)
        },
    );
    assert_eq!(total, TASKS as f64);
    // Both targets are scraped: the worker's series come through too.
    let up = eventually("both targets up", PROMETHEUS_TIMEOUT, || {
        query(&api, "sum(up)").filter(|n| *n >= 2.0)
    });
    assert_eq!(up, 2.0);
    let backlog = eventually("the worker's backlog series", PROMETHEUS_TIMEOUT, || {
        query(&api, r#"count(agentmesh_mailbox_backlog{job="worker"})"#)
    });
    assert_eq!(backlog, 1.0);

    // The Grafana dashboard: every query evaluates, every metric is
    // exported or (a family with no series yet is not in a scrape) documented.
    let reference = std::fs::read_to_string(repo_root().join(METRICS_REFERENCE))
        .expect("read the metrics reference");
    let exported: Vec<&str> = families(&text)
        .into_iter()
        .chain(families(&worker_text))
        .chain(documented(&reference))
        .collect();
    for query in dashboard_queries() {
        for name in metric_names(&query) {
            // OpenMetrics declares counters without `_total`.
            let family = name.strip_suffix("_total").unwrap_or(&name);
            assert!(
                exported.contains(&family) || exported.contains(&name.as_str()),
                "the Grafana dashboard queries {name}, which no node exports and {METRICS_REFERENCE} does not name: {query}"
            );
        }
        if let Err(error) = evaluates(&api, &query) {
            panic!("Prometheus refuses the Grafana dashboard's query {query}: {error}");
        }
    }
    drop(prometheus);
    cluster.assert_no_panic();
}
