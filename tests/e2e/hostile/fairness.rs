//! Class 9: one client starving the others. Client A fills the cluster
//! with tasks of 1,024 naps each, up to its per-client queue limit; its
//! next task is refused with RESOURCE_EXHAUSTED naming that limit, while
//! client B still submits, and B's one-subtask task is placed ahead of A's
//! backlog (round-robin between clients) instead of behind it (FIFO).

use std::time::Instant;

use serde_json::Value;

use super::{HONEST_TASK_TIMEOUT, assert_survived, capped};
use crate::support::cluster::Cluster;
use crate::support::{CLI_TIMEOUT, CliOutput, run_cli_with, scratch_dir, tls};

/// Subtasks in each of A's tasks: the most one task may have.
const SUBTASKS: usize = 1024;
/// A's tasks: four of 1,024 fill the default per-client queue limit
/// (4,096).
const A_TASKS: usize = 4;
/// Each nap. Long enough that A's backlog takes minutes to drain on the
/// one worker's four slots, so "B ended while A's backlog was queued" is
/// not a race.
const NAP_MS: u64 = 100;
/// The worker's `--max-concurrency` (the node's default).
const SLOTS: u64 = 4;

fn naps(name: &str, count: usize) -> String {
    let tasks: Vec<Value> = (0..count)
        .map(|i| serde_json::json!({"id": format!("nap{i}"), "capability": "sleep", "input": {"ms": NAP_MS}}))
        .collect();
    serde_json::json!({"name": name, "tasks": tasks}).to_string()
}

/// The clients, each with a submit token of its own: the coordinator
/// names a client by its token's subject.
struct Clients {
    _dir: tempfile::TempDir,
    file: String,
    tokens: Vec<(String, String)>,
}

impl Clients {
    fn new() -> Self {
        let dir = scratch_dir("fairness-tokens");
        let (file, tokens) = tls::tokens_file(
            dir.path(),
            &[("submit", "client-a"), ("submit", "client-b")],
        );
        Self {
            _dir: dir,
            file: file.to_string_lossy().into_owned(),
            tokens,
        }
    }

    fn token(&self, client: &str) -> &str {
        &self
            .tokens
            .iter()
            .find(|(c, _)| c == client)
            .expect("a client")
            .1
    }

    /// `submit ARGS` as `client`.
    fn submit(&self, cluster: &Cluster, client: &str, file: &str) -> CliOutput {
        run_cli_with(
            &["submit", "--endpoint", cluster.endpoint(), file],
            &[("AGENTMESH_TOKEN", self.token(client))],
            CLI_TIMEOUT,
        )
    }
}

fn submit_as(cluster: &Cluster, clients: &Clients, client: &str, file: &str) -> String {
    let out = clients.submit(cluster, client, file);
    assert!(out.success(), "{client} could not submit {file}: {out}");
    out.stdout.trim().to_owned()
}

/// Subtasks of the tasks `ids` still waiting for a worker.
fn pending(cluster: &Cluster, ids: &[String]) -> usize {
    ids.iter()
        .map(|id| {
            let record = cluster.status(id);
            record["subtasks"].as_array().map_or(0, |subtasks| {
                subtasks.iter().filter(|s| s["status"] == "pending").count()
            })
        })
        .sum()
}

#[test]
fn one_clients_backlog_neither_locks_out_nor_delays_another() {
    let clients = Clients::new();
    let token_file = ["--token-file", clients.file.as_str()];
    let cluster = capped()
        .coordinators(1)
        .coordinator_args(&token_file)
        .worker_args(&token_file)
        .worker("worker-1", "sleep")
        .start();
    let a_file = cluster.task_file("a.json", &naps("a-backlog", SUBTASKS));
    let a_ids: Vec<String> = (0..A_TASKS)
        .map(|_| submit_as(&cluster, &clients, "client-a", &a_file))
        .collect();

    // A is at its share of the queue: refused, naming the limit...
    let started = Instant::now();
    let refused = clients.submit(&cluster, "client-a", &a_file);
    let refused_in = started.elapsed();
    assert!(
        !refused.success(),
        "client A went over its queue limit: {refused}"
    );
    for expected in [
        "ResourceExhausted",
        "client 'client-a'",
        "per-client limit of 4096 (--max-queued-subtasks-per-client)",
    ] {
        assert!(
            refused.stderr.contains(expected),
            "the refusal does not say {expected:?}: {}",
            refused.stderr
        );
    }

    // ...while B still submits, and is not queued behind A's backlog.
    let queued_ahead = pending(&cluster, &a_ids);
    let b_file = cluster.task_file("b.json", &naps("b-small", 1));
    let b = submit_as(&cluster, &clients, "client-b", &b_file);
    let b_record = cluster.wait_ended(&b, HONEST_TASK_TIMEOUT);
    assert_eq!(b_record["status"], "completed", "{b_record}");
    let b_wait_ms = b_record["elapsed_ms"].as_u64().unwrap_or(0);
    let a_left = pending(&cluster, &a_ids);
    assert!(
        a_left >= 2 * SUBTASKS,
        "client B's task ended only after A's backlog drained to {a_left} queued subtasks (of {queued_ahead} when B submitted)"
    );

    for id in &a_ids {
        let out = cluster.cli(&["task", "cancel", id, "--endpoint", cluster.endpoint()]);
        assert!(out.success(), "cancel {id}: {out}");
    }
    // A's cancelled backlog no longer counts against it.
    let again = submit_as(&cluster, &clients, "client-a", &b_file);
    let again = cluster.wait_ended(&again, HONEST_TASK_TIMEOUT);
    assert_eq!(again["status"], "completed", "{again}");
    let peak = assert_survived(&cluster);
    // What B would have waited in one FIFO queue: every subtask ahead of
    // it, four at a time.
    let fifo_ms = queued_ahead as u64 * NAP_MS / SLOTS;
    eprintln!(
        "HOSTILE fairness: client B's one-subtask task took {b_wait_ms} ms with {queued_ahead} of client A's {NAP_MS} ms naps queued ahead of it on {SLOTS} slots (FIFO: ~{fifo_ms} ms, behind all of them); {a_left} of A's still queued when B ended; A's fifth task refused in {refused_in:?} naming --max-queued-subtasks-per-client; largest node peak RSS {peak} KiB"
    );
}
