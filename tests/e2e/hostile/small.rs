//! Class 13, through the real CLI: a key given twice inside `input` is
//! refused naming the key and where (it used to be accepted, the last
//! value silently winning); an integer above 2^53 in `math.eval` fails
//! the task saying it cannot be represented exactly (it used to be
//! rounded); a 1,024-task dependency cycle is refused in a message under
//! 1 KB (it used to be 14 KB, over other clients' metadata limits).

use std::time::Instant;

use super::{HONEST_TASK_TIMEOUT, assert_survived, capped, submit_honest};
use crate::support::cluster::Cluster;

/// What a refusal may weigh, as `agentmesh_core::task::message::MAX_ERROR_BYTES`.
const MAX_ERROR_BYTES: usize = 1024;

fn refused(cluster: &Cluster, name: &str, content: &str) -> String {
    let file = cluster.task_file(name, content);
    let out = cluster.cli(&["submit", "--endpoint", cluster.endpoint(), &file]);
    assert!(!out.success(), "{name} was accepted: {}", out.stdout);
    out.stderr
}

#[test]
fn duplicate_keys_inexact_integers_and_long_cycles() {
    let cluster = capped()
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .start();
    let before = submit_honest(&cluster, "before");
    let started = Instant::now();

    let json = refused(
        &cluster,
        "dup.json",
        "{\"name\":\"dup\",\"tasks\":[{\"id\":\"a\",\"capability\":\"math.eval\",\n\"input\":{\"expr\":\"1\",\"expr\":\"2\"}}]}",
    );
    assert!(
        json.contains("duplicate key 'expr' in tasks[0].input at line 2"),
        "{json}"
    );
    let yaml = refused(
        &cluster,
        "dup.yaml",
        "name: dup\ntasks:\n  - id: a\n    capability: math.eval\n    input:\n      expr: \"1\"\n      expr: \"2\"\n",
    );
    assert!(yaml.contains("duplicate key 'expr' at line 7"), "{yaml}");

    let n = 1024;
    let tasks: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"t{i}","capability":"math.eval","depends_on":["t{}"]}}"#,
                (i + 1) % n
            )
        })
        .collect();
    let cycle = refused(
        &cluster,
        "cycle.json",
        &format!(r#"{{"name":"cycle","tasks":[{}]}}"#, tasks.join(",")),
    );
    assert!(cycle.contains("dependency cycle: 1024 tasks, "), "{cycle}");
    assert!(cycle.contains("… 1020 more"), "{cycle}");
    assert!(
        cycle.len() < MAX_ERROR_BYTES,
        "{} bytes: {cycle}",
        cycle.len()
    );
    let refusals = started.elapsed();

    let big = cluster.task_file(
        "big.yaml",
        "name: big\ntasks:\n  - id: a\n    capability: math.eval\n    input: { expr: \"9007199254740993 - 9007199254740992\" }\n",
    );
    let out = cluster.cli(&["submit", "--endpoint", cluster.endpoint(), &big, "--wait"]);
    assert_eq!(out.code(), Some(1), "{out}");
    let failed = out.json();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("integer '9007199254740993' at position 0 is above 2^53"),
        "{failed}"
    );

    let status = cluster.wait_ended(&before, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let after = submit_honest(&cluster, "after");
    let status = cluster.wait_ended(&after, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let peak = assert_survived(&cluster);
    eprintln!(
        "HOSTILE small: duplicate keys (JSON, YAML) and a 1,024-task cycle refused in {refusals:?}, \
         the cycle in {} bytes; 2^53 + 1 failed as inexact; largest node peak RSS {peak} KiB",
        cycle.len()
    );
}
