//! Class 8: errors a task's own input causes must not trip the breakers of
//! the workers that ran it. Eighteen tasks computing `1/0`, spread over
//! three workers, are six input errors each, past the default of five
//! failures that open a breaker; afterwards every breaker is still closed
//! and an honest task runs at once rather than after the 10 s cool-down.

use std::time::{Duration, Instant};

use super::{HONEST_TASK_TIMEOUT, assert_survived, capped};
use crate::support::cluster::Cluster;

/// Tasks of `1/0` submitted; the figure.
const DIVISIONS: usize = 18;

/// The default breaker cool-down (`--breaker-cool-down-ms`): an honest task
/// that had to wait for a breaker would take at least this long.
const COOL_DOWN: Duration = Duration::from_secs(10);

const WORKERS: usize = 3;

fn task(cluster: &Cluster, name: &str, expr: &str) -> String {
    let file = cluster.task_file(
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\ntasks:\n  - id: a\n    capability: math.eval\n    input: {{ expr: \"{expr}\" }}\n"
        ),
    );
    cluster.submit(&file)
}

#[test]
fn input_errors_do_not_open_worker_breakers() {
    let cluster = capped()
        .coordinators(1)
        .workers(WORKERS, "math.eval")
        .start();

    let divisions: Vec<String> = (0..DIVISIONS)
        .map(|n| task(&cluster, &format!("divide-{n}"), "1/0"))
        .collect();
    let mut ran_on = std::collections::BTreeSet::new();
    for id in &divisions {
        let record = cluster.wait_ended(id, HONEST_TASK_TIMEOUT);
        assert_eq!(record["status"], "failed", "{record}");
        let error = record["subtasks"][0]["error"].as_str().unwrap_or_default();
        assert!(error.contains("division by zero"), "{record}");
        assert_eq!(
            record["subtasks"][0]["attempts"], 1,
            "an input error was retried: {record}"
        );
        ran_on.insert(record["subtasks"][0]["worker"].to_string());
    }

    let breakers: Vec<(String, String)> = cluster
        .agents()
        .iter()
        .filter(|a| a["role"] == "worker")
        .map(|a| {
            (
                a["id"].as_str().unwrap_or_default().to_owned(),
                a["breaker"].as_str().unwrap_or("closed").to_owned(),
            )
        })
        .collect();
    assert_eq!(breakers.len(), WORKERS, "{breakers:?}");
    assert!(
        breakers.iter().all(|(_, state)| state == "closed"),
        "input errors tripped worker breakers: {breakers:?}"
    );

    let started = Instant::now();
    let honest = task(&cluster, "honest", "2+3");
    let record = cluster.wait_ended(&honest, HONEST_TASK_TIMEOUT);
    let waited = started.elapsed();
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["result"]["value"], 5, "{record}");
    let elapsed_ms = record["elapsed_ms"].as_u64().unwrap_or(u64::MAX);
    assert!(
        Duration::from_millis(elapsed_ms) < COOL_DOWN / 2,
        "the honest task took {elapsed_ms} ms: it waited for a breaker"
    );

    let peak = assert_survived(&cluster);
    eprintln!(
        "HOSTILE breakers: {DIVISIONS} tasks of 1/0 on {} of {WORKERS} workers, breakers {breakers:?}; \
         honest task ran in {elapsed_ms} ms ({waited:?} submit to seen ended); largest node peak RSS {peak} KiB",
        ran_on.len()
    );
}
