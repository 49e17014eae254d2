//! Scaling on queue depth: the leader coordinator publishes how many
//! subtasks wait for a worker, per capability
//! (`agentmesh_subtasks_queued`), which the chart's KEDA `ScaledObject` and
//! external-metric HPA read. It rises while work waits and is back at zero
//! once the work has run.

use std::time::Duration;

use crate::support::cluster::{Cluster, NodeSpec};
use crate::support::{eventually, free_port, scraped};

const SLEEP_QUEUED: &str = "agentmesh_subtasks_queued{capability=\"sleep\"}";

#[test]
fn the_leader_publishes_how_many_subtasks_wait_per_capability() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let cluster = Cluster::builder()
        .coordinators(1)
        .coordinator_args(&["--metrics-listen", &metrics])
        .node(NodeSpec::worker("worker-1", "sleep").args(&["--max-concurrency", "1"]))
        .start();
    // Six naps on one worker that runs one at a time: five wait.
    let naps: String = (1..=6)
        .map(|n| format!("  - id: nap{n}\n    capability: sleep\n    input: {{ ms: 700 }}\n"))
        .collect();
    let file = cluster.task_file("naps.yaml", &format!("name: naps\ntasks:\n{naps}"));
    let id = cluster.submit(&file);

    let waiting = eventually("naps waiting in the queue", Duration::from_secs(20), || {
        scraped(&metrics, SLEEP_QUEUED).filter(|depth| *depth >= 2.0)
    });
    assert!(waiting <= 5.0, "at most five naps wait: {waiting}");

    let done = cluster.wait_ended(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    eventually("the queue to read empty", Duration::from_secs(10), || {
        scraped(&metrics, SLEEP_QUEUED).filter(|depth| *depth == 0.0)
    });
    cluster.assert_no_panic();
}
