//! Classes 1 and 2: YAML that costs far more to parse than its size. An
//! alias bomb (`&a`/`*a` nested nine deep, each level ten times the last)
//! and a document of nothing but nested flow sequences are refused while
//! parsing, naming the limit, and the coordinator keeps serving.

use std::time::Instant;

use super::{HONEST_TASK_TIMEOUT, assert_survived, capped, submit_honest};

/// A billion-laughs document: level `i` is a sequence of ten aliases of
/// level `i - 1`, so the last level expands to 10^9 strings, in ~1 KB.
fn alias_bomb() -> String {
    let mut doc = String::from(
        "name: bomb\ntasks:\n  - id: a\n    capability: math.eval\n    input:\n      expr: \"1+1\"\n      l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for level in 1..=9 {
        let aliases = vec![format!("*l{}", level - 1); 10].join(", ");
        doc.push_str(&format!("      l{level}: &l{level} [{aliases}]\n"));
    }
    doc
}

/// 200 KB of `[`: a nesting depth no task needs.
fn deep_nesting() -> String {
    format!("name: deep\ntasks: {}", "[".repeat(200 * 1024))
}

#[test]
fn yaml_alias_bombs_and_deep_nesting_are_refused_while_parsing() {
    let cluster = capped()
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .start();
    let before = submit_honest(&cluster, "honest");

    let bomb = cluster.task_file("bomb.yaml", &alias_bomb());
    let started = Instant::now();
    let refused = cluster.cli(&["submit", "--endpoint", cluster.endpoint(), &bomb]);
    assert!(
        !refused.success(),
        "an alias bomb was accepted: {}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains("alias"),
        "the refusal does not name the alias limit: {}",
        refused.stderr
    );

    let deep = cluster.task_file("deep.yaml", &deep_nesting());
    let refused = cluster.cli(&["submit", "--endpoint", cluster.endpoint(), &deep]);
    assert!(
        !refused.success(),
        "200 KB of nesting was accepted: {}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains("nest"),
        "the refusal does not name the nesting limit: {}",
        refused.stderr
    );
    let refusals = started.elapsed();

    let status = cluster.wait_ended(&before, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let after = submit_honest(&cluster, "honest");
    let status = cluster.wait_ended(&after, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");

    let peak = assert_survived(&cluster);
    eprintln!("HOSTILE yaml: both refused in {refusals:?}; largest node peak RSS {peak} KiB");
}
