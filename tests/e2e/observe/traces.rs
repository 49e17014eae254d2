//! Traces and logs of a real cluster.
//!
//! The trace test runs a real OTLP/gRPC receiver (a grpcio server built on
//! the `opentelemetry-proto` definitions, tests/e2e/support/otlp_receiver.py,
//! installed by scripts/install-otlp-receiver) and checks that one task
//! submitted with a given `traceparent` is one trace, with spans from the
//! CLI, both coordinators (the follower forwards the submit to the leader)
//! and the worker, each parent link pointing at a span of the same trace;
//! and that a hierarchical task (coordinator, strategic, tactical and
//! operational processes) and a consensus round (three peers) are each
//! one trace whose parent links run through every level and peer.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::cluster::{Cluster, NodeSpec};
use crate::support::{Process, eventually, repo_root, run_cli_with};

/// The trace the CLI is told to continue.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
/// A trace its caller chose not to sample (flags `00`).
const UNSAMPLED_TRACE_ID: &str = "5ce0e9a56015fec5aadfa328ae398115";
/// A sampled trace submitted after the unsampled one.
const LATER_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// Time for spans to arrive: nodes send theirs in batches every 5 s.
const SPANS_TIMEOUT: Duration = Duration::from_secs(30);

/// The receiver's python, installed by scripts/install-otlp-receiver; a
/// failed install fails the test.
fn receiver_python() -> PathBuf {
    let script = repo_root().join("scripts/install-otlp-receiver");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed (the trace test needs python3 with venv and pip): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("the python path").trim())
}

/// A running OTLP receiver and its endpoint URL.
fn start_receiver() -> (Process, String) {
    let python = receiver_python();
    let script = repo_root().join("tests/e2e/support/otlp_receiver.py");
    let receiver = Process::spawn(
        "otlp-receiver",
        &python,
        &[script.as_os_str(), "0".as_ref()],
        &[],
    );
    let line = receiver.wait_for_stdout_line("listening on", Duration::from_secs(20));
    let addr = line.trim().trim_start_matches("listening on ").to_owned();
    (receiver, format!("http://{addr}"))
}

fn named<'a>(spans: &'a [Value], name: &str, instance: &str) -> Option<&'a Value> {
    spans
        .iter()
        .find(|span| span["name"] == name && span["instance_id"] == instance)
}

#[test]
fn one_task_is_one_trace_across_the_client_both_coordinators_and_the_worker() {
    let (receiver, otlp) = start_receiver();
    let cluster = Cluster::builder()
        .coordinators(2)
        .coordinator_args(&["--otlp-endpoint", &otlp, "--log-format", "json"])
        .worker_args(&["--otlp-endpoint", &otlp])
        .worker("worker-1", "math.eval")
        .start();
    let leader = eventually("a leader", Duration::from_secs(20), || cluster.leader());
    let follower = cluster
        .running(crate::support::cluster::Role::Coordinator)
        .into_iter()
        .find(|node| node.id != leader)
        .expect("a follower");
    let task = cluster.task_file(
        "sum.yaml",
        "name: traced\ntasks:\n  - id: sum\n    capability: math.eval\n    input: { expr: \"1 + 2\" }\n",
    );
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    let out = run_cli_with(
        &[
            "submit",
            "--endpoint",
            &follower.endpoint,
            &task,
            "--wait",
            "--otlp-endpoint",
            &otlp,
            "--verbose",
        ],
        &crate::support::cli_env(&[("TRACEPARENT", traceparent.as_str())]),
        Duration::from_secs(60),
    );
    assert!(out.success(), "submit failed: {out}");
    assert!(
        out.stderr.contains(&format!("trace id: {TRACE_ID}")),
        "--verbose prints the trace id: {out}"
    );
    let record = out.json();
    let task_id = record["task_id"].as_str().expect("a task id").to_owned();

    let worker = "worker-1";
    let expected: Vec<(&str, &str)> = vec![
        ("agentmesh submit", ""),
        ("Submit", &follower.id),
        ("forward", &follower.id),
        ("Submit", &leader),
        ("validation", &leader),
        ("coordinator.accept", &leader),
        ("record.write", &leader),
        ("placement", &leader),
        ("deliver subtask.assign", worker),
        ("tool.call", worker),
        ("subtask.return", worker),
        ("deliver subtask.result", &leader),
        ("subtask.result", &leader),
    ];
    let spans = wait_for_spans(&receiver, TRACE_ID, &expected);

    // One trace: every parent is the given one or a span of the trace.
    let ids: HashSet<&str> = spans
        .iter()
        .map(|span| span["span_id"].as_str().unwrap())
        .collect();
    for span in &spans {
        let parent = span["parent_span_id"].as_str().unwrap();
        assert!(
            parent == PARENT_SPAN_ID || ids.contains(parent),
            "span {span} has a parent outside the trace"
        );
    }
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .map(|span| (span["span_id"].as_str().unwrap(), span))
        .collect();
    let parent_of = |span: &Value| -> Value {
        by_id
            .get(span["parent_span_id"].as_str().unwrap())
            .map(|parent| (*parent).clone())
            .unwrap_or(Value::Null)
    };

    // Client → follower → leader.
    let client = spans
        .iter()
        .find(|span| span["name"] == "agentmesh submit")
        .unwrap();
    assert_eq!(client["service_name"], "agentmesh-cli");
    assert_eq!(client["parent_span_id"], PARENT_SPAN_ID);
    let follower_submit = named(&spans, "Submit", &follower.id).unwrap();
    assert_eq!(parent_of(follower_submit)["name"], "agentmesh submit");
    let leader_submit = named(&spans, "Submit", &leader).unwrap();
    assert_eq!(parent_of(leader_submit)["name"], "forward");
    assert_eq!(leader_submit["attributes"]["task.id"], task_id.as_str());

    // Leader → worker → leader, through envelopes.
    let tool_call = named(&spans, "tool.call", worker).unwrap();
    let delivery = parent_of(tool_call);
    assert_eq!(delivery["name"], "deliver subtask.assign");
    let placement = parent_of(&delivery);
    assert_eq!(placement["name"], "placement");
    assert_eq!(placement["instance_id"], leader.as_str());
    assert_eq!(parent_of(&placement)["name"], "Submit");
    let attributes = &tool_call["attributes"];
    assert_eq!(attributes["task.id"], task_id.as_str());
    assert_eq!(attributes["subtask.id"], "sum");
    assert_eq!(attributes["agent.id"], worker);
    assert!(
        attributes["attempt"] == 1 || attributes["attempt"] == "1",
        "{attributes}"
    );
    let result = named(&spans, "subtask.result", &leader).unwrap();
    assert_eq!(parent_of(result)["name"], "deliver subtask.result");
    assert_eq!(parent_of(&parent_of(result))["name"], "subtask.return");
    assert_eq!(result["attributes"]["task.id"], task_id.as_str());
    let instances: HashSet<&str> = spans
        .iter()
        .filter_map(|span| span["instance_id"].as_str())
        .collect();
    assert!(
        instances.contains(leader.as_str()) && instances.contains(worker),
        "{instances:?}"
    );

    // The leader logs JSON lines, and the task's lines lead to its trace.
    let lines = cluster.node(&leader).process.stderr_lines();
    let mut traced = false;
    for line in lines.iter().filter(|line| line.starts_with('{')) {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"));
        for key in ["timestamp", "level", "target", "message", "fields"] {
            assert!(entry.get(key).is_some(), "no {key} in {line}");
        }
        traced |= entry["trace_id"] == TRACE_ID && entry["span_id"].is_string();
    }
    assert!(
        lines.iter().any(|line| line.starts_with('{')),
        "no JSON lines: {lines:?}"
    );
    assert!(traced, "no log line carries the task's trace id: {lines:?}");

    // A caller that decided not to sample is obeyed on every hop: a task
    // submitted under an unsampled traceparent leaves no span anywhere,
    // while the sampled task submitted after it arrives whole (each process
    // exports in order, so the first task's spans would have come first).
    let submit_under = |traceparent: &str| {
        let out = run_cli_with(
            &[
                "submit",
                "--endpoint",
                &follower.endpoint,
                &task,
                "--wait",
                "--otlp-endpoint",
                &otlp,
            ],
            &crate::support::cli_env(&[("TRACEPARENT", traceparent)]),
            Duration::from_secs(60),
        );
        assert!(out.success(), "submit failed: {out}");
    };
    submit_under(&format!("00-{UNSAMPLED_TRACE_ID}-{PARENT_SPAN_ID}-00"));
    submit_under(&format!("00-{LATER_TRACE_ID}-{PARENT_SPAN_ID}-01"));
    wait_for_spans(&receiver, LATER_TRACE_ID, &expected);
    let unsampled: Vec<String> = receiver
        .stdout_lines()
        .into_iter()
        .filter(|line| line.contains(UNSAMPLED_TRACE_ID))
        .collect();
    assert!(
        unsampled.is_empty(),
        "spans of an unsampled trace were exported: {unsampled:?}"
    );
    cluster.assert_no_panic();
}

/// The spans of `trace_id`, once every `(name, instance)` of `expected`
/// is among them (an empty instance: any).
fn wait_for_spans(receiver: &Process, trace_id: &str, expected: &[(&str, &str)]) -> Vec<Value> {
    eventually("every span of the task's trace", SPANS_TIMEOUT, || {
        let spans: Vec<Value> = receiver
            .stdout_lines()
            .iter()
            .filter(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str::<Value>(line).expect("a span as JSON"))
            .filter(|span| span["trace_id"] == trace_id)
            .collect();
        expected
            .iter()
            .all(|(name, instance)| {
                spans.iter().any(|span| {
                    span["name"] == *name
                        && (instance.is_empty() || span["instance_id"] == *instance)
                })
            })
            .then_some(spans)
    })
}

/// `(name, instance)` of `span` and of each of its ancestors, root first;
/// panics on a parent outside the trace other than `root_parent`.
fn ancestry(spans: &[Value], span: &Value, root_parent: &str) -> Vec<(String, String)> {
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .map(|span| (span["span_id"].as_str().unwrap(), span))
        .collect();
    let mut chain = Vec::new();
    let mut current = span;
    loop {
        chain.push((
            current["name"].as_str().unwrap_or_default().to_owned(),
            current["instance_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
        let parent = current["parent_span_id"].as_str().unwrap();
        match by_id.get(parent) {
            Some(next) => current = next,
            None => {
                assert_eq!(
                    parent, root_parent,
                    "{current} has a parent outside the trace"
                );
                break;
            }
        }
        assert!(chain.len() < 200, "a parent loop: {chain:?}");
    }
    chain.reverse();
    chain
}

/// Whether `chain` passes through `steps` in this order (other spans may
/// come between).
fn passes_through(chain: &[(String, String)], steps: &[(&str, &str)]) -> bool {
    let mut rest = chain.iter();
    steps.iter().all(|(name, instance)| {
        rest.any(|(n, i)| n == name && (instance.is_empty() || i == instance))
    })
}

/// Submits `file` on `cluster` continuing `trace_id`, and returns the task
/// id.
fn submit_traced(cluster: &Cluster, otlp: &str, file: &str, trace_id: &str) -> String {
    let traceparent = format!("00-{trace_id}-{PARENT_SPAN_ID}-01");
    let out = run_cli_with(
        &[
            "submit",
            "--endpoint",
            cluster.endpoint(),
            file,
            "--wait",
            "--otlp-endpoint",
            otlp,
        ],
        &crate::support::cli_env(&[("TRACEPARENT", traceparent.as_str())]),
        Duration::from_secs(60),
    );
    assert!(out.success(), "submit failed: {out}");
    let record = out.json();
    assert_eq!(record["status"], "completed", "{record}");
    record["task_id"].as_str().expect("a task id").to_owned()
}

/// The coordinator's `subtask.result` span for `task_id`, whose ancestry
/// runs back through every hop of the task.
fn final_result<'a>(spans: &'a [Value], task_id: &str) -> &'a Value {
    spans
        .iter()
        .find(|span| span["name"] == "subtask.result" && span["attributes"]["task.id"] == task_id)
        .expect("the coordinator's subtask.result span")
}

#[test]
fn hierarchy_levels_and_peer_rounds_continue_the_task_trace() {
    let (receiver, otlp) = start_receiver();
    let traced = ["--otlp-endpoint", otlp.as_str()];
    let mut builder = Cluster::builder()
        .coordinators(1)
        .coordinator_args(&traced)
        .node(NodeSpec::level("strategic-1", "strategic").args(&traced))
        .node(NodeSpec::level("tactical-1", "tactical").args(&traced))
        .node(NodeSpec::level("operational-1", "operational").args(&traced));
    for peer in ["peer-1", "peer-2", "peer-3"] {
        builder = builder.node(NodeSpec::peer(peer, "math.eval").args(&traced));
    }
    let cluster = builder.start();
    let coordinator = eventually("a leader", Duration::from_secs(20), || cluster.leader());
    let coordinator = coordinator.as_str();

    // Strategic → tactical → operational and back, in one trace.
    let hierarchical = cluster.task_file(
        "levels.yaml",
        "name: levels\npattern: hierarchical\nobjectives:\n  - id: sum\n    description: add\n    \
         tasks:\n      - id: add\n        capability: math.eval\n        input: { expr: \"1 + 2\" }\n",
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4701";
    let task_id = submit_traced(&cluster, &otlp, &hierarchical, trace);
    let (s, t, o) = ("strategic-1", "tactical-1", "operational-1");
    let path = [
        ("agentmesh submit", ""),
        ("Submit", coordinator),
        ("placement", coordinator),
        ("deliver subtask.assign", s),
        ("hierarchy.plan", s),
        ("hierarchy.directive", s),
        ("deliver hierarchy.message", t),
        ("hierarchy.objective", t),
        ("hierarchy.dispatch", t),
        ("deliver subtask.assign", o),
        ("tool.call", o),
        ("subtask.return", o),
        ("deliver subtask.result", t),
        ("hierarchy.result", t),
        ("hierarchy.report", t),
        ("deliver hierarchy.message", s),
        ("hierarchy.assess", s),
        ("subtask.return", s),
        ("deliver subtask.result", coordinator),
        ("subtask.result", coordinator),
    ];
    let spans = wait_for_spans(&receiver, trace, &path);
    let chain = ancestry(&spans, final_result(&spans, &task_id), PARENT_SPAN_ID);
    assert!(passes_through(&chain, &path), "{chain:#?}");
    let plan = spans
        .iter()
        .find(|span| span["name"] == "hierarchy.plan")
        .unwrap();
    assert_eq!(plan["attributes"]["task.id"], task_id.as_str());
    assert_eq!(plan["attributes"]["agent.id"], s);
    let dispatch = spans
        .iter()
        .find(|span| span["name"] == "hierarchy.dispatch")
        .unwrap();
    assert_eq!(dispatch["attributes"]["subtask.id"], "sum/add");
    assert_eq!(dispatch["attributes"]["agent.id"], o);

    // A consensus round: proposal, bids, seats and the vote, one trace.
    let consensus = cluster.task_file(
        "round.yaml",
        "name: round\npattern: peer_consensus\nredundancy: 3\ntasks:\n  - id: triple\n    \
         capability: math.eval\n    input: { expr: \"2 * 3\" }\n",
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4702";
    let task_id = submit_traced(&cluster, &otlp, &consensus, trace);
    let mut expected = vec![
        ("peer.propose", ""),
        ("peer.award", ""),
        ("peer.vote", ""),
        ("subtask.result", coordinator),
    ];
    for peer in ["peer-1", "peer-2", "peer-3"] {
        expected.extend([("peer.bid", peer), ("tool.call", peer)]);
    }
    let spans = wait_for_spans(&receiver, trace, &expected);
    let chain = ancestry(&spans, final_result(&spans, &task_id), PARENT_SPAN_ID);
    let proposer = chain
        .iter()
        .find(|(name, _)| name == "peer.propose")
        .map(|(_, instance)| instance.clone())
        .unwrap_or_else(|| panic!("no peer.propose in {chain:#?}"));
    let p = proposer.as_str();
    assert!(
        passes_through(
            &chain,
            &[
                ("Submit", coordinator),
                ("placement", coordinator),
                ("deliver subtask.assign", p),
                ("peer.propose", p),
                ("peer.vote", p),
                ("subtask.return", p),
                ("deliver subtask.result", coordinator),
                ("subtask.result", coordinator),
            ]
        ),
        "{chain:#?}"
    );
    // Every peer bid and ran a seat inside the same trace.
    for peer in ["peer-1", "peer-2", "peer-3"] {
        for name in ["peer.bid", "tool.call"] {
            let span = spans
                .iter()
                .find(|span| span["name"] == name && span["instance_id"] == peer)
                .unwrap_or_else(|| panic!("no {name} span from {peer}"));
            let chain = ancestry(&spans, span, PARENT_SPAN_ID);
            assert!(
                passes_through(&chain, &[("peer.propose", p), (name, peer)]),
                "{chain:#?}"
            );
        }
    }
    let bid = spans
        .iter()
        .find(|span| span["name"] == "peer.bid")
        .unwrap();
    assert_eq!(bid["attributes"]["task.id"], task_id.as_str());
    let award = ancestry(
        &spans,
        spans
            .iter()
            .find(|span| span["name"] == "tool.call")
            .unwrap(),
        PARENT_SPAN_ID,
    );
    assert!(
        passes_through(&award, &[("peer.propose", p), ("peer.award", p)]),
        "{award:#?}"
    );
    cluster.assert_no_panic();
}

#[test]
fn logs_on_a_pipe_have_no_colour_codes_and_json_lines_parse() {
    // NO_COLOR empty counts as unset: only the pipe keeps colour out.
    let text = run_cli_with(
        &["local"],
        &[("RUST_LOG", "info"), ("NO_COLOR", "")],
        Duration::from_secs(60),
    );
    assert!(text.success(), "{text}");
    assert!(
        text.stderr.contains("task accepted"),
        "INFO lines on stderr: {text}"
    );
    assert!(!text.stderr.contains('\u{1b}'), "escape codes: {text}");

    let json = run_cli_with(
        &["--log-format", "json", "local"],
        &[("RUST_LOG", "info")],
        Duration::from_secs(60),
    );
    assert!(json.success(), "{json}");
    let lines: Vec<&str> = json.stderr.lines().collect();
    assert!(!lines.is_empty(), "{json}");
    for line in lines {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"));
        assert!(
            entry["timestamp"].is_string() && entry["level"].is_string(),
            "{line}"
        );
        assert!(
            entry["target"].is_string() && entry["message"].is_string(),
            "{line}"
        );
        assert!(entry["fields"].is_object(), "{line}");
    }

    // A normal run says nothing but the result.
    let quiet = run_cli_with(&["local"], &[("RUST_LOG", "warn")], Duration::from_secs(60));
    assert!(quiet.success(), "{quiet}");
    assert_eq!(quiet.stderr.trim(), "", "{quiet}");
}
