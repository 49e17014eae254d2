//! A result from before a coordinator restart is not applied after it,
//! and work that was done before it is not done again.
//!
//! The term (the leader's fence revision) is part of an attempt's identity
//! because a new leader may reuse the number of an attempt its predecessor
//! started but never wrote. This scenario makes that happen on purpose:
//! with etcd paused, the only coordinator applies the result of `first`
//! and starts attempt 1 of `second`, then dies before either is written.
//! Restarted with the same id, it leads again under a new term, runs
//! `first` again and starts `second` as attempt 1 once more — while the
//! worker of the old attempt 1 is still sending its result to
//! `coordinator-1`. That result must be ignored: `second` must end with
//! its new attempt's result (same term, attempt and worker). `zero`, which
//! ended and was written before the pause, must keep its one attempt.

use std::thread;
use std::time::Duration;

use serde_json::json;

use super::checks::{EndsSeen, ExactlyOnce, subtasks_of_json};
use super::{chaos_cluster, one_at_a_time};
use crate::support::eventually;

/// `zero` ends, durably, before etcd is paused.
const ZERO_MS: u64 = 100;
/// `first` is short: it ends while etcd is paused.
const FIRST_MS: u64 = 500;
/// `second` runs long enough that the old attempt's result arrives while
/// the restarted coordinator's attempt of it is running.
const SECOND_MS: u64 = 6000;
/// The chaos cadence: how long etcd stays paused before the coordinator is
/// killed. Longer than what is left of `first`, shorter than a lease.
const PAUSE: Duration = Duration::from_millis(1000);

#[test]
fn a_result_from_before_a_coordinator_restart_is_not_applied() {
    let _serial = one_at_a_time();
    let mut cluster = chaos_cluster().coordinators(1).workers(2, "sleep").start();
    let file = cluster.task_file(
        "three-naps.json",
        &json!({"name": "three-naps", "tasks": [
            {"id": "zero", "capability": "sleep", "input": {"ms": ZERO_MS}},
            {"id": "first", "capability": "sleep", "input": {"ms": FIRST_MS},
             "depends_on": ["zero"]},
            {"id": "second", "capability": "sleep", "input": {"ms": SECOND_MS},
             "depends_on": ["first"]},
        ]})
        .to_string(),
    );
    let id = cluster.submit(&file);
    let mut ends = EndsSeen::default();
    eventually("`first` to run", Duration::from_secs(10), || {
        let record = cluster.try_status(&id)?;
        ends.observe_subtasks(subtasks_of_json(&record), "task status");
        (record["subtasks"][1]["status"] == "running").then_some(())
    });

    // `first` ends and `second` starts while nothing can be written.
    cluster.etcd().pause();
    thread::sleep(PAUSE);
    cluster.kill("coordinator-1");
    cluster.etcd().resume();
    cluster.restart("coordinator-1");

    let done = eventually("the task to end", Duration::from_secs(60), || {
        let record = cluster.try_status(&id)?;
        ends.observe_subtasks(subtasks_of_json(&record), "task status");
        record["status"]
            .as_str()
            .is_some_and(|s| s != "running" && s != "pending")
            .then_some(record)
    });
    let applied = ExactlyOnce::check(subtasks_of_json(&done), &ends);
    println!(
        "CHAOS scenario=coordinator-restart zero_attempts={} first_attempts={} \
         second_attempts={} second_applied={} {}",
        done["subtasks"][0]["attempts"],
        done["subtasks"][1]["attempts"],
        done["subtasks"][2]["attempts"],
        done["subtasks"][2]["applied"],
        applied.fields()
    );

    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"slept_ms": SECOND_MS}), "{done}");
    assert_eq!(
        done["subtasks"][0]["attempts"], 1,
        "`zero` ended before the restart and must not run again: {done}"
    );
    // Whether the old leader's writes of `first`'s end and `second`'s
    // start land is a race this test cannot close: the requests it sent
    // before the kill sit in etcd's socket buffer and may be served when
    // etcd resumes. Either way the task must complete once, with every
    // applied result its subtask's latest attempt (`applied.assert_clean`);
    // the attempt-number reuse the term guards against happens when they
    // did not land (`second_attempts=1` in the CHAOS line).
    let first_attempts = done["subtasks"][1]["attempts"].as_u64();
    assert!(
        matches!(first_attempts, Some(1 | 2)),
        "`first` ran {first_attempts:?} times: {done}"
    );
    cluster.assert_no_panic();
    applied.assert_clean();
}
