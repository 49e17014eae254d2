//! The leader of three coordinators SIGKILLed under load: a standby takes
//! over and resumes every task the dead leader owned.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::checks::{ExactlyOnce, subtasks_of};
use super::load::{Load, drive};
use super::{WORKER_CAPABILITIES, chaos_cluster, one_at_a_time};
use crate::support::eventually;

const TASKS: usize = 300;
const NEW_LEADER_WITHIN: Duration = Duration::from_secs(15);

#[test]
fn the_leader_sigkilled_with_two_standbys() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let cluster = chaos_cluster()
        .coordinators(3)
        .workers(3, WORKER_CAPABILITIES)
        .start();
    let first_leader = eventually(
        "a coordinator leader among the three",
        Duration::from_secs(15),
        || cluster.leader(),
    );
    let load = Load::failover(TASKS, Duration::from_secs(90), Duration::from_secs(45));
    let (progress, driver) = drive(cluster.coordinator_endpoints(), load);
    progress.wait_for_a_third_accepted(TASKS);
    let accepted_before_kill = progress.accepted.load(Ordering::SeqCst);
    let killed_at = cluster.kill(&first_leader);
    let killed_instant = Instant::now();
    let new_leader = eventually(
        "another coordinator to become leader",
        NEW_LEADER_WITHIN,
        || cluster.leader().filter(|l| *l != first_leader),
    );
    let failover = killed_instant.elapsed();
    let summary = driver.join().expect("the driver panicked");

    // First dispatch after the kill of a subtask of a task accepted before.
    let resumed_ms: Option<i64> = summary
        .accepted
        .iter()
        .filter(|a| a.accepted_ms < killed_at)
        .filter_map(|a| summary.records.get(&a.id))
        .flat_map(|r| &r.subtasks)
        .filter(|s| s.started_unix_ms > killed_at)
        .map(|s| s.started_unix_ms as i64 - killed_at as i64)
        .min();
    let applied = ExactlyOnce::check(
        summary.records.values().flat_map(subtasks_of),
        &summary.ends,
    );
    println!(
        "CHAOS scenario=leader-kill {} {} killed_leader={first_leader} new_leader={new_leader} \
         accepted_before_kill={accepted_before_kill} new_leader_seen_ms={} \
         first_resumed_dispatch_ms={} wall_s={:.1}",
        summary.fields(),
        applied.fields(),
        failover.as_millis(),
        resumed_ms.map_or("n/a".to_owned(), |ms| ms.to_string()),
        started.elapsed().as_secs_f64()
    );

    summary.assert_all_completed();
    cluster.assert_no_panic();
    assert!(
        resumed_ms.is_some(),
        "no subtask of the {accepted_before_kill} tasks accepted before the leader died was \
         dispatched after its death"
    );
    applied.assert_clean();
}
