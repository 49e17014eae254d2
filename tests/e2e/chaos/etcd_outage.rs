//! etcd stopped for 10 s under load: nodes report NOT_SERVING, keep what
//! they have, and recover by themselves once etcd is back.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::checks::{ExactlyOnce, subtasks_of};
use super::load::{Load, drive};
use super::{WORKER_CAPABILITIES, chaos_cluster, one_at_a_time};
use crate::support::eventually;
use crate::support::grpc::{runtime, serving_status};

const TASKS: usize = 300;
/// The chaos cadence: how long etcd stays down.
const OUTAGE: Duration = Duration::from_secs(10);

#[test]
fn etcd_down_for_10s_mid_load() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let cluster = chaos_cluster()
        .coordinators(2)
        .workers(3, WORKER_CAPABILITIES)
        .start();
    let load = Load::failover(TASKS, Duration::from_secs(100), Duration::from_secs(60));
    let (progress, driver) = drive(cluster.coordinator_endpoints(), load);
    progress.wait_for_a_third_accepted(TASKS);
    let accepted_before = progress.accepted.load(Ordering::SeqCst);
    cluster.etcd().stop();
    let stopped_at = Instant::now();
    thread::sleep(OUTAGE);
    let accepted_during = progress.accepted.load(Ordering::SeqCst) - accepted_before;
    cluster.etcd().restart();
    let restarted_at = Instant::now();

    // The nodes recover by themselves: every node serves again and every
    // agent is listed again by every coordinator.
    let rt = runtime();
    for node in cluster.nodes() {
        eventually(
            &format!("{} to report SERVING after etcd's return", node.id),
            Duration::from_secs(30),
            || (serving_status(&rt, &node.endpoint).as_deref() == Some("Serving")).then_some(()),
        );
    }
    let ids: Vec<String> = cluster.nodes().map(|n| n.id.clone()).collect();
    cluster.wait_listed(&ids, Duration::from_secs(30));
    let recovered = restarted_at.elapsed();
    let summary = driver.join().expect("the driver panicked");

    let applied = ExactlyOnce::check(
        summary.records.values().flat_map(subtasks_of),
        &summary.ends,
    );
    println!(
        "CHAOS scenario=etcd-outage {} {} outage_ms={} accepted_before_outage={accepted_before} \
         accepted_during_outage={accepted_during} etcd_restart_ms={} all_registered_after_ms={} \
         wall_s={:.1}",
        summary.fields(),
        applied.fields(),
        (restarted_at - stopped_at).as_millis(),
        cluster.etcd().startup_time().as_millis(),
        recovered.as_millis(),
        started.elapsed().as_secs_f64()
    );

    summary.assert_all_completed();
    cluster.assert_no_panic();
    applied.assert_clean();
}
