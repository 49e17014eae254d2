//! Class 3: `{{id.field}}` references that amplify. A string splicing one
//! 64 KB output a thousand times would be a 64 MB input built in the
//! coordinator; forty subtasks of a thousand lookups each into a 64 KB
//! output cloned that output 40,000 times (2.6 GB of copying) on the
//! coordinator's actor.
//! Now the size of a resolved input is computed before it is built and
//! the task fails naming the limit, lookups borrow the output, an input
//! with more references than `max_input_references` is refused at submit,
//! and a task failed on resolution stays failed under the next leader.

use std::time::{Duration, Instant};

use super::{HONEST_TASK_TIMEOUT, assert_survived, capped, submit_honest};
use crate::support::eventually;

/// 64 KB, under `max_input_bytes` (256 KB) as written, and small enough
/// that `a`'s output (the string twice: `matches` and `first`) stays under
/// the 256 KiB output cap and the storm's record under its 1 MiB budget.
const BIG: usize = 64 * 1024;

/// `a` puts a 64 KB string and a small number into its output
/// (`json.query` of `$` gives `{"matches": [{"a": big, "b": 1}]}`).
fn big_output_task() -> String {
    format!(
        r#"{{"id":"a","capability":"json.query","input":{{"path":"$","document":{{"a":"{}","b":1}}}}}}"#,
        "x".repeat(BIG)
    )
}

/// `b` splices the 64 KB string 1,000 times: 64 MB once resolved.
fn splice_bomb() -> String {
    let expr = "{{a.matches.0.a}}".repeat(1000);
    format!(
        r#"{{"name":"splice-bomb","tasks":[{},{{"id":"b","capability":"math.eval","depends_on":["a"],"input":{{"expr":"{expr}"}}}}]}}"#,
        big_output_task()
    )
}

/// Forty subtasks of 1,000 lookups of the small field next to the 64 KB
/// one; each computes 1,000 (a sum of ones).
fn lookup_storm() -> String {
    let expr = vec!["{{a.matches.0.b}}"; 1000].join("+");
    let mut tasks = vec![big_output_task()];
    for i in 0..40 {
        tasks.push(format!(
            r#"{{"id":"sum{i}","capability":"math.eval","depends_on":["a"],"input":{{"expr":"{expr}"}}}}"#
        ));
    }
    format!(r#"{{"name":"lookup-storm","tasks":[{}]}}"#, tasks.join(","))
}

#[test]
fn a_splice_bomb_fails_its_task_and_a_lookup_storm_does_not_stall_the_coordinator() {
    let cluster = capped()
        .coordinators(2)
        .workers(2, "math.eval,json.query")
        .start();
    let before = submit_honest(&cluster, "before");

    // The bomb: accepted (its input is small as written), then failed
    // when `b` would start, naming the subtask, the size and the limit.
    let bomb = cluster.task_file("bomb.json", &splice_bomb());
    let started = Instant::now();
    let bomb_id = cluster.submit(&bomb);
    let failed = cluster.wait_ended(&bomb_id, HONEST_TASK_TIMEOUT);
    let bomb_time = started.elapsed();
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("subtask 'b'") && error.contains("max_input_bytes = 262144"),
        "the failure does not name the subtask and the limit: {error}"
    );
    assert!(error.contains("would resolve to 65536"), "{error}");

    // Too many references in one input: refused at submit.
    let expr = vec!["{{a.value}}"; 20_000].join("+");
    let many = cluster.task_file(
        "many.json",
        &format!(
            r#"{{"name":"many","tasks":[{{"id":"a","capability":"math.eval","input":{{"expr":"1"}}}},{{"id":"b","capability":"math.eval","depends_on":["a"],"input":{{"expr":"{expr}"}}}}]}}"#
        ),
    );
    let refused = cluster.cli(&["submit", "--endpoint", cluster.endpoint(), &many]);
    assert!(!refused.success(), "20,000 references were accepted");
    assert!(
        refused
            .stderr
            .contains("holds 20000 references, over the limit max_input_references = 1024"),
        "{}",
        refused.stderr
    );

    // The storm, and an honest submit answered while it runs.
    let storm = cluster.task_file("storm.json", &lookup_storm());
    let started = Instant::now();
    let storm_id = cluster.submit(&storm);
    let during = submit_honest(&cluster, "during");
    let answered = started.elapsed();
    let status = cluster.wait_ended(&during, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let storm_done = cluster.wait_ended(&storm_id, HONEST_TASK_TIMEOUT);
    let storm_time = started.elapsed();
    assert_eq!(storm_done["status"], "completed", "{storm_done}");
    assert_eq!(
        storm_done["result"]["sum39"]["value"], 1000,
        "{}",
        storm_done["result"]
    );

    let status = cluster.wait_ended(&before, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let peak = assert_survived(&cluster);

    // The failed bomb is durable as failed: the next leader does not
    // resume it, and survives.
    let leader = cluster.leader().expect("a leader");
    cluster.kill(&leader);
    let next = eventually(
        "another coordinator to lead",
        Duration::from_secs(30),
        || cluster.leader().filter(|l| *l != leader),
    );
    let after = submit_honest(&cluster, "after");
    let status = cluster.wait_ended(&after, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let still = cluster.status(&bomb_id);
    assert_eq!(still["status"], "failed", "{still}");
    assert!(cluster.node(&next).process.is_running());
    cluster.assert_no_panic();

    eprintln!(
        "HOSTILE references: splice bomb (64 KB x 1000) failed in {bomb_time:?}; 20,000 references refused at submit; \
         lookup storm (40 x 1000 lookups of a 64 KB output) completed in {storm_time:?}, an honest submit answered in {answered:?}; \
         largest node peak RSS {peak} KiB; the next leader kept the bomb failed"
    );
}
