//! Secure by default: each module tries one forgery or misuse against a
//! real cluster on real etcd, asserts it is refused with a precise error,
//! and that an honest task still completes with the right value.

use crate::support::cluster::Cluster;

mod etcd;
mod fault_injection;
mod http_get;
mod mtls;
mod tokens;

/// The honest task every test runs beside its forgeries: `2 + 3`.
pub const HONEST_SUM: &str = r#"{"name": "sum", "tasks": [
    {"id": "a", "capability": "math.eval", "input": {"expr": "2 + 3"}}]}"#;

/// Submits [`HONEST_SUM`] and asserts it completes with 5, and that no
/// node panicked.
pub fn assert_honest_sum(cluster: &Cluster) {
    let file = cluster.task_file("honest-sum.json", HONEST_SUM);
    let record = cluster.submit_wait(&file);
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(
        record["result"],
        serde_json::json!({"value": 5}),
        "{record}"
    );
    cluster.assert_no_panic();
}
