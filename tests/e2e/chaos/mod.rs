//! Chaos tests: a real etcd and `agentmesh node` processes under load while
//! workers, the coordinator leader, etcd or the network fail.
//!
//! Every scenario drives tasks whose results are unique and checked (task
//! `i` sleeps, then computes `nap + i`; see [`load`]) and asserts that,
//! whatever broke:
//!
//! * every task is accepted within the submit window (submits are retried
//!   across the coordinator endpoints), every accepted task ends (none
//!   lost), completed, with the right result;
//! * a finished task stays finished: asked again at the end, every
//!   coordinator reports the same status and result, and no subtask of it
//!   started after the client first saw it end;
//! * no process panicked, killed ones included;
//! * each subtask had exactly one result applied, its latest attempt's, and
//!   its end never changed once seen — read from the task records, which
//!   name the term, attempt and worker of the applied result (see
//!   [`checks`]). The term — the leader's fence revision — is part of an
//!   attempt's identity: a new leader may reuse an attempt number whose
//!   record the old leader never managed to write, and results of an old
//!   term are stale.
//!
//! Scenarios: a random worker SIGKILLed every 2 s and replaced
//! ([`workers_killed`]); the leader of three coordinators SIGKILLed
//! ([`leader_killed`]); the only coordinator killed while etcd is paused
//! and restarted, so that an old term's result arrives ([`earlier_term`]);
//! etcd down for 10 s ([`etcd_outage`]); a worker cut
//! off by iptables rules in its own network namespace, then healed
//! ([`partition`]: needs root, `ip` from iproute2 and `iptables`; skipped
//! with a `SKIPPED:` line when the kernel has no namespace, veth or
//! netfilter support, failed when a binary is missing).
//!
//! Each scenario prints one `CHAOS scenario=...` summary line on stdout
//! (`cargo nextest run -p agentmesh --test e2e --no-capture chaos::` shows
//! them). Chaos cadences (the kill interval, the etcd outage) are named
//! constants the test sleeps for; every other wait polls with a deadline.

use std::sync::{Mutex, MutexGuard};

use crate::support::cluster::{Cluster, ClusterBuilder};

mod checks;
mod earlier_term;
mod etcd_outage;
mod leader_killed;
mod load;
mod partition;
mod workers_killed;

/// Lease TTL of every node: failure detection within about 2 s.
const LEASE_TTL: u64 = 2;
/// A retry budget the chaos itself cannot exhaust, with short backoffs.
const COORDINATOR_FLAGS: [&str; 6] = [
    "--max-attempts",
    "20",
    "--retry-base-ms",
    "50",
    "--retry-max-ms",
    "500",
];
const WORKER_CAPABILITIES: &str = "sleep,math.eval";
const WORKER_FLAGS: [&str; 2] = ["--max-concurrency", "16"];

/// The scenarios load a 2-core machine on their own: under `cargo test`
/// they run one at a time whatever `--test-threads` says (nextest runs each
/// in its own process, limited by its `e2e` test group).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The nodes of every scenario, without their number: coordinators with
/// [`COORDINATOR_FLAGS`], workers offering [`WORKER_CAPABILITIES`] with
/// [`WORKER_FLAGS`], everyone with a [`LEASE_TTL`] lease.
fn chaos_cluster() -> ClusterBuilder {
    Cluster::builder()
        .coordinator_args(&COORDINATOR_FLAGS)
        .worker_args(&WORKER_FLAGS)
        .lease_ttl(LEASE_TTL)
}

/// `min/median/max` of `samples` in ms, or `n/a`.
fn spread(samples: &[i64]) -> String {
    if samples.is_empty() {
        return "n/a".to_owned();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    format!(
        "{}/{}/{}",
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    )
}
