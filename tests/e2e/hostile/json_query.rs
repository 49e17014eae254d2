//! Class 4: `json.query` paths whose matches multiply. A union of eight
//! wildcards over arrays of four selects each element twice, so every
//! segment multiplies the node list by 32: over nested arrays six deep the
//! path would select 32^6 (10^9) nodes, each a clone, gigabytes from a few
//! kilobytes of task file. The query must stop at its match limit with a
//! clear error, and no worker may exit under its memory cap, though a retry
//! would move the task from one worker to the next.

use std::time::Instant;

use serde_json::{Value, json};

use super::{HONEST_TASK_TIMEOUT, assert_survived, capped, submit_honest};

/// Arrays of `width` elements nested `depth` deep, `leaf` at the bottom.
fn nested(depth: usize, width: usize, leaf: &Value) -> Value {
    (0..depth).fold(leaf.clone(), |inner, _| Value::Array(vec![inner; width]))
}

/// A task of one `json.query` subtask: `$` then `depth` unions of eight
/// wildcards.
fn multiplying_query(name: &str, document: Value, depth: usize) -> String {
    let path = format!("${}", "[*,*,*,*,*,*,*,*]".repeat(depth));
    json!({
        "name": name,
        "tasks": [{
            "id": "q",
            "capability": "json.query",
            "input": { "document": document, "path": path },
        }],
    })
    .to_string()
}

#[test]
fn multiplying_json_queries_stop_at_the_match_limit() {
    let cluster = capped()
        .coordinators(1)
        .workers(3, "math.eval,json.query")
        .start();
    let before = submit_honest(&cluster, "honest");

    // 4^5 leaves of a 2-byte string: about 5 KB; 32^5 (3.4 * 10^7) matches.
    let small = multiplying_query("query-5kb", nested(5, 4, &json!("ab")), 5);
    // 4^6 leaves of a 6-byte string: about 40 KB; 32^6 (10^9) matches of
    // eight bytes of JSON each.
    let large = multiplying_query("query-40kb", nested(6, 4, &json!("abcdef")), 6);
    let mut report = Vec::new();
    for (name, task) in [("5kb", small), ("40kb", large)] {
        let file = cluster.task_file(&format!("query-{name}.json"), &task);
        let started = Instant::now();
        let id = cluster.submit(&file);
        let record = cluster.wait_ended(&id, HONEST_TASK_TIMEOUT);
        let took = started.elapsed();
        assert_eq!(record["status"], "failed", "{record}");
        let error = record["subtasks"][0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("nodes, the match limit"),
            "the failure does not name the limit: {error}"
        );
        assert_eq!(
            record["subtasks"][0]["attempts"], 1,
            "a query over its limit was retried: {record}"
        );
        report.push(format!("{} B task refused in {took:?}", task.len()));
    }

    let status = cluster.wait_ended(&before, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let after = submit_honest(&cluster, "honest");
    let status = cluster.wait_ended(&after, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");

    let peak = assert_survived(&cluster);
    eprintln!(
        "HOSTILE json_query: {}; no worker exited; largest node peak RSS {peak} KiB",
        report.join(", ")
    );
}
