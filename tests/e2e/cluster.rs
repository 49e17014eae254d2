//! End-to-end tests of a real cluster: a real etcd, and `agentmesh node`
//! processes (one coordinator, three workers with different capabilities)
//! talking gRPC on 127.0.0.1, driven through the `agentmesh` CLI.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::cluster::{Cluster, ClusterBuilder};
use crate::support::grpc::{runtime, serving_status};
use crate::support::{eventually, run_cli};

/// Lease TTL of the test nodes; short so failure detection is quick.
const TTL_SECS: u64 = 3;

/// A coordinator and three workers: words (text.word_count, sleep), maths
/// (math.eval, sleep) and query (json.query, math.eval, sleep).
fn four_nodes() -> ClusterBuilder {
    Cluster::builder()
        .coordinators(1)
        .worker("worker-words", "text.word_count,sleep")
        .worker("worker-maths", "math.eval,sleep")
        .worker("worker-query", "json.query,math.eval,sleep")
        .lease_ttl(TTL_SECS)
}

/// Submits a one-subtask `sleep` of `ms` and waits until a worker runs it;
/// returns the task id and that worker's id.
fn start_nap(cluster: &Cluster, ms: u64) -> (String, String) {
    let nap = cluster.task_file(
        "nap.yaml",
        &format!(
            "name: nap\ntasks:\n  - id: nap\n    capability: sleep\n    input: {{ ms: {ms} }}\n"
        ),
    );
    let id = cluster.submit(&nap);
    let runner = eventually(
        "the nap to start on a worker",
        Duration::from_secs(10),
        || {
            cluster.status(&id)["subtasks"][0]["worker"]
                .as_str()
                .map(str::to_owned)
        },
    );
    (id, runner)
}

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn sequential_and_parallel_tasks_run_across_processes() {
    let cluster = four_nodes().start();

    let agents = cluster.agents();
    let ids: Vec<&str> = agents.iter().filter_map(|a| a["id"].as_str()).collect();
    for id in [
        "coordinator-1",
        "worker-words",
        "worker-maths",
        "worker-query",
    ] {
        assert!(ids.contains(&id), "agents lists {ids:?}, missing {id}");
    }
    let words = agents.iter().find(|a| a["id"] == "worker-words").unwrap();
    assert_eq!(words["role"], "worker");
    assert_eq!(words["capabilities"], json!(["text.word_count", "sleep"]));
    assert_eq!(words["breaker"], "closed", "{words}");
    let table = run_cli(&["agents", "--endpoint", cluster.endpoint()]);
    assert!(
        table.success() && table.stdout.contains("worker-query"),
        "{table}"
    );

    let parallel = cluster.submit_wait(&example("average-word-count.yaml"));
    assert_eq!(parallel["status"], "completed", "{parallel}");
    assert_eq!(parallel["result"], json!({"value": 5}));
    let word_subtasks: Vec<&Value> = parallel["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .collect();
    for s in word_subtasks {
        assert_eq!(
            s["worker"], "worker-words",
            "word counts must run where the capability is"
        );
    }

    let sequential = cluster.submit_wait(&example("sequential-pipeline.yaml"));
    assert_eq!(sequential["status"], "completed", "{sequential}");
    assert_eq!(sequential["result"], json!({"value": 11}));
    let finished: Vec<u64> = sequential["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["attempts"].as_u64().unwrap())
        .collect();
    assert_eq!(finished, vec![1, 1, 1, 1]);

    let fanout = cluster.submit_wait(&example("parallel-fanout.json"));
    assert_eq!(fanout["result"], json!({"value": 1098}), "{fanout}");

    // The load generator against the cluster: every result checked, a
    // one-line JSON report.
    let bench = run_cli(&[
        "bench",
        "--endpoint",
        cluster.endpoint(),
        "--shape",
        "fanout",
        "--tasks",
        "40",
        "--concurrency",
        "8",
        "--warmup",
        "0",
        "--no-progress",
    ]);
    assert!(bench.success(), "{bench}");
    let report = bench.json();
    assert_eq!(
        (&report["system"], &report["completed"], &report["errors"]),
        (&json!("agentmesh"), &json!(40), &json!(0)),
        "{report}"
    );
    assert!(
        report["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );

    // A task whose tool fails ends failed, with the cause, and exit code 1.
    let bad_maths = cluster.task_file(
        "div.json",
        r#"{"name":"div","tasks":[{"id":"d","capability":"math.eval","input":{"expr":"1 / 0"}}]}"#,
    );
    let out = run_cli(&[
        "submit",
        "--endpoint",
        cluster.endpoint(),
        &bad_maths,
        "--wait",
    ]);
    assert_eq!(out.code(), Some(1), "{out}");
    let failed = out.json();
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("division by zero"),
        "{failed}"
    );

    cluster.assert_no_panic();
}

#[test]
fn bad_input_is_refused_precisely_while_a_long_task_completes() {
    let cluster = four_nodes()
        .coordinator_args(&["--max-task-bytes", "4096", "--max-queued-subtasks", "2"])
        .start();

    let long = cluster.task_file(
        "long.yaml",
        "name: long\ntasks:\n  - id: nap\n    capability: sleep\n    input: { ms: 2500 }\n  - id: after\n    capability: math.eval\n    input: { expr: \"{{nap.slept_ms}} / 100\" }\n    depends_on: [nap]\n",
    );
    let long_id = cluster.submit(&long);
    assert_eq!(cluster.status(&long_id)["status"], "running");

    let oversize = format!(
        r#"{{"name":"big","tasks":[{{"id":"a","capability":"math.eval","input":{{"expr":"1","pad":"{}"}}}}]}}"#,
        "x".repeat(5000)
    );
    let oversize_message = format!(
        "task file is {} bytes, over the limit of 4096 bytes [InvalidArgument]",
        oversize.len()
    );
    let cases = [
        (
            "unknown-capability.json",
            r#"{"name":"t","tasks":[{"id":"a","capability":"text.translate"}]}"#.to_owned(),
            "tasks[0].capability: no live worker offers capability 'text.translate' (available: json.query, math.eval, sleep, text.word_count) [FailedPrecondition]",
        ),
        (
            "cycle.json",
            r#"{"name":"t","tasks":[{"id":"a","capability":"sleep","depends_on":["b"]},{"id":"b","capability":"sleep","depends_on":["a"]}]}"#.to_owned(),
            "dependency cycle: ",
        ),
        (
            "unknown-dependency.json",
            r#"{"name":"t","tasks":[{"id":"a","capability":"sleep","depends_on":["ghost"]}]}"#.to_owned(),
            "tasks[0].depends_on: unknown task id 'ghost' [InvalidArgument]",
        ),
        (
            "reference.json",
            r#"{"name":"t","tasks":[{"id":"a","capability":"math.eval","input":{"expr":"1"}},{"id":"b","capability":"math.eval","input":{"expr":"{{a.value}} + 1"}}]}"#.to_owned(),
            "tasks[1].input.expr: reference {{a.value}} names task 'a', which is not a dependency of 'b' (add it to depends_on) [InvalidArgument]",
        ),
        (
            "oversize.json",
            oversize,
            oversize_message.as_str(),
        ),
        (
            "typo.yaml",
            "name: t\ntasks:\n  - id: a\n    capability: sleep\n    inptu: {}\n".to_owned(),
            "unknown field `inptu`",
        ),
    ];
    for (name, content, expected) in &cases {
        let path = cluster.task_file(name, content);
        let out = run_cli(&["submit", "--endpoint", cluster.endpoint(), &path]);
        assert_eq!(out.code(), Some(2), "{name} must be refused: {out}");
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout: {out}");
        assert!(
            out.stderr.contains(expected),
            "{name}: expected `{expected}` in:\n{out}"
        );
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{name}: one-line reason: {out}"
        );
    }

    // A task wider than the coordinator's queue can never fit: refused at
    // once, not retried.
    let wide = cluster.task_file(
        "wide.json",
        r#"{"name":"wide","tasks":[{"id":"a","capability":"sleep","input":{"ms":1}},{"id":"b","capability":"sleep","input":{"ms":1}},{"id":"c","capability":"sleep","input":{"ms":1}}]}"#,
    );
    let out = run_cli(&["submit", "--endpoint", cluster.endpoint(), &wide]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert_eq!(
        out.stderr.trim(),
        "error: task has 3 subtasks ready at once, more than the coordinator's queue limit of 2 (--max-queued-subtasks) [FailedPrecondition]",
        "{out}"
    );

    // The long task was not disturbed.
    let done = cluster.wait_ended(&long_id, Duration::from_secs(20));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"value": 25}));

    let missing = run_cli(&[
        "task",
        "status",
        "no-such-task",
        "--endpoint",
        cluster.endpoint(),
    ]);
    assert_eq!(missing.code(), Some(2));
    assert!(
        missing
            .stderr
            .contains("no task 'no-such-task': never submitted")
            && missing.stderr.contains("[NotFound]"),
        "{missing}"
    );
    cluster.assert_no_panic();
}

#[test]
fn a_killed_worker_leaves_within_ttl_and_its_subtask_runs_elsewhere() {
    let cluster = four_nodes().start();
    let (id, victim) = start_nap(&cluster, 1500);
    let killed_at = Instant::now();
    cluster.kill(&victim);

    eventually(
        "the killed worker to leave the registry",
        Duration::from_secs(TTL_SECS + 5),
        || (!cluster.agent_ids().contains(&victim)).then_some(()),
    );
    let detection = killed_at.elapsed();
    assert!(
        detection <= Duration::from_secs(TTL_SECS + 2),
        "worker left after {detection:?}, limit is TTL + 2 s"
    );
    eprintln!("killed worker left the registry after {detection:?} (ttl {TTL_SECS} s)");

    let done = eventually(
        "the nap to finish elsewhere",
        Duration::from_secs(20),
        || {
            let record = cluster.status(&id);
            (record["status"] == "completed").then_some(record)
        },
    );
    let subtask = &done["subtasks"][0];
    assert_eq!(subtask["attempts"], 2, "{done}");
    assert_ne!(subtask["worker"], victim.as_str(), "{done}");
    assert_eq!(done["result"], json!({"slept_ms": 1500}));
    cluster.assert_no_panic();
}

#[test]
fn a_worker_stopped_with_sigterm_finishes_its_subtask_before_leaving() {
    let cluster = four_nodes().start();
    let (id, runner) = start_nap(&cluster, 4000);
    // Placed is not yet running: a worker that drains before the
    // assignment reaches it hands it back, rightly. Signal once its
    // published load says it runs the nap.
    eventually(
        "the nap to run on its worker",
        Duration::from_secs(10),
        || {
            cluster
                .agents()
                .iter()
                .any(|a| a["id"] == runner.as_str() && a["load"] == 1)
                .then_some(())
        },
    );
    let worker = cluster.node(&runner);
    worker.process.signal("TERM");

    let status = worker
        .process
        .wait_exit(Duration::from_secs(15))
        .expect("the worker to exit after draining");
    assert!(status.success(), "worker exited with {status}");
    let done = eventually("the nap to finish", Duration::from_secs(10), || {
        let record = cluster.status(&id);
        (record["status"] == "completed").then_some(record)
    });
    // Drained, not abandoned: the same worker finished it, once.
    assert_eq!(done["subtasks"][0]["attempts"], 1, "{done}");
    assert_eq!(done["subtasks"][0]["worker"], runner.as_str(), "{done}");
    assert!(
        !cluster.agent_ids().contains(&runner),
        "a drained worker deregisters"
    );
    cluster.assert_no_panic();
}

#[test]
fn the_load_generator_runs_an_embedded_cluster_without_etcd() {
    let bench = run_cli(&[
        "bench",
        "--shape",
        "sleep",
        "--tasks",
        "200",
        "--concurrency",
        "50",
        "--no-progress",
    ]);
    assert!(bench.success(), "{bench}");
    let report = bench.json();
    assert_eq!(report["completed"], 200, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(
        report["notes"].as_str().unwrap().contains("embedded"),
        "{report}"
    );
}

#[test]
fn a_node_reports_not_serving_while_etcd_is_down_and_recovers_by_itself() {
    let cluster = Cluster::builder().coordinators(1).lease_ttl(2).start();
    let node = cluster.node("coordinator-1");
    let rt = runtime();
    let status = || serving_status(&rt, &node.endpoint);
    assert_eq!(status().as_deref(), Some("Serving"));

    cluster.etcd().stop();
    eventually(
        "NOT_SERVING while etcd is down",
        Duration::from_secs(15),
        || (status().as_deref() == Some("NotServing")).then_some(()),
    );
    cluster.etcd().restart();
    eventually(
        "SERVING again once etcd is back",
        Duration::from_secs(20),
        || (status().as_deref() == Some("Serving")).then_some(()),
    );
    // Recovered without a restart: the node is registered again.
    let agents = run_cli(&["agents", "--endpoint", &node.endpoint, "--json"]);
    assert!(agents.stdout.contains("coordinator-1"), "{agents}");
    cluster.assert_no_panic();
}

/// Two coordinators: the second is a standby that forwards what only the
/// leader may do. On SIGTERM the leader resigns, so the standby takes over
/// long before the leader's 30 s lease would have run out, and resumes the
/// task that was running.
#[test]
fn a_standby_coordinator_forwards_submits_and_takes_over_when_the_leader_stops() {
    // coordinator-1 leads before coordinator-2 starts; the standby lists the
    // worker once started.
    let cluster = Cluster::builder()
        .coordinators(2)
        .worker("worker-1", "sleep")
        .lease_ttl(30)
        .start();
    let first = cluster.node("coordinator-1");
    let second = cluster.node("coordinator-2");
    assert_eq!(cluster.leader().as_deref(), Some("coordinator-1"));

    // Submitted to the standby, which forwards it to the leader.
    let nap = cluster.task_file(
        "nap.yaml",
        "name: nap\ntasks:\n  - id: nap\n    capability: sleep\n    input: { ms: 1500 }\n",
    );
    let out = run_cli(&["submit", "--endpoint", &second.endpoint, &nap]);
    assert!(out.success(), "{out}");
    let id = out.stdout.trim().to_owned();
    let status_at_second = || {
        let out = run_cli(&["task", "status", &id, "--endpoint", &second.endpoint]);
        out.success().then(|| out.json())
    };
    eventually("the nap to run", Duration::from_secs(10), || {
        (status_at_second()?["status"] == "running").then_some(())
    });

    first.process.signal("TERM");
    let exit = first
        .process
        .wait_exit(Duration::from_secs(20))
        .expect("the leader to exit");
    assert!(exit.success(), "the leader exited with {exit}");
    // Well inside the 30 s lease: only a resign explains it.
    eventually("coordinator-2 to lead", Duration::from_secs(10), || {
        (cluster.leader().as_deref() == Some("coordinator-2")).then_some(())
    });
    // Asked of coordinator-2, the only coordinator left.
    let done = cluster.wait_ended(&id, Duration::from_secs(20));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"slept_ms": 1500}));
    assert_eq!(
        done["subtasks"][0]["attempts"], 2,
        "the new leader started the running attempt again: {done}"
    );
    cluster.assert_no_panic();
}
