//! Hostile input: each module submits one class of input an unprivileged
//! client can send (valid gRPC calls only, files under the size limit) to a
//! real multi-process cluster on real etcd, every node under a memory cap,
//! and asserts that the client gets a clear error, no node exits, every
//! node's peak RSS stays under [`RSS_BOUND_KIB`], and an honest task
//! submitted alongside still completes.

mod breakers;
mod connections;
mod etcd;
mod fairness;
mod json_query;
mod outputs;
mod records;
mod references;
mod small;
mod yaml;

use std::time::Duration;

use crate::support::cluster::{Cluster, ClusterBuilder};

/// The address-space cap every node of a hostile-input cluster runs under
/// (`prlimit --as`). Generous for an idle node (its threads' stacks and
/// allocator arenas are reserved address space), small next to what the
/// inputs here would allocate unchecked.
pub const MEMORY_CAP_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The peak resident set size every node must stay under.
pub const RSS_BOUND_KIB: u64 = 256 * 1024;

/// How long an honest task may take while a hostile one is handled.
pub const HONEST_TASK_TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster builder whose every node runs under [`MEMORY_CAP_BYTES`].
pub fn capped() -> ClusterBuilder {
    Cluster::builder().memory_cap(MEMORY_CAP_BYTES)
}

/// Submits a one-subtask `math.eval` task named `name` to the cluster's
/// endpoint: the honest task each hostile test expects to complete.
pub fn submit_honest(cluster: &Cluster, name: &str) -> String {
    let file = cluster.task_file(
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\ntasks:\n  - id: a\n    capability: math.eval\n    input: {{ expr: \"2+3\" }}\n"
        ),
    );
    cluster.submit(&file)
}

/// Waits until task `id` ends and panics unless it completed.
pub fn assert_completes(cluster: &Cluster, id: &str) {
    let status = cluster.wait_ended(id, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
}

/// Panics unless every node started is still running and its peak RSS is
/// under [`RSS_BOUND_KIB`]; returns the largest peak, for the report.
pub fn assert_survived(cluster: &Cluster) -> u64 {
    let mut largest = 0;
    for node in cluster.nodes() {
        assert!(
            node.process.is_running(),
            "node {} exited:\n{}",
            node.id,
            node.process.log_tail(40)
        );
        let peak = node.process.peak_rss_kib().unwrap_or(0);
        assert!(
            peak < RSS_BOUND_KIB,
            "node {} peaked at {peak} KiB RSS, over the {RSS_BOUND_KIB} KiB bound",
            node.id
        );
        largest = largest.max(peak);
    }
    cluster.assert_no_panic();
    largest
}
