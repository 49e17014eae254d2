//! Chaos tests: a real etcd and `agentmesh node` processes under load while
//! workers, the coordinator leader, etcd or the network fail.
//!
//! Every scenario drives tasks whose results are unique and checked (task
//! `i` sleeps, then computes `nap + i`) and asserts that, whatever broke:
//!
//! * every task is accepted within the submit window (submits are retried
//!   across the coordinator endpoints), every accepted task ends (none
//!   lost), completed, with the right result;
//! * a finished task stays finished: asked again at the end, every
//!   coordinator reports the same status and result, and no subtask of it
//!   started after the client first saw it end;
//! * no process panicked, killed ones included;
//! * no subtask result was applied twice: every coordinator logs, at DEBUG,
//!   `result applied task_id=.. subtask=.. attempt=.. term=..` for each
//!   result it applies; across all coordinators' logs each `(task, subtask,
//!   term, attempt)` appears at most once, and each subtask of a completed
//!   task at least once. (The term — the leader's fence revision — is part
//!   of an attempt's identity: a new leader may reuse an attempt number
//!   whose record the old leader never managed to write, and results of an
//!   old term are stale.)
//!
//! Scenarios: (a) a random worker SIGKILLed every 2 s and replaced; (b) the
//! leader of three coordinators SIGKILLed; (c) etcd down for 10 s; (d) a
//! worker cut off by iptables rules in its own network namespace, then
//! healed (needs root, `ip` from iproute2 and `iptables`; skipped with a
//! `SKIPPED:` line when the kernel has no namespace, veth or netfilter
//! support, failed when a binary is missing).
//!
//! Each scenario prints one `CHAOS scenario=...` summary line on stdout
//! (`cargo test --test chaos -- --nocapture --test-threads 1` shows them).
//! Chaos cadences (the kill interval, the etcd outage) are sleeps; every
//! other wait polls with a deadline.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentmesh_proto::v1 as pb;
use futures::stream::{self, StreamExt};
use pb::cluster_service_client::ClusterServiceClient;
use pb::task_service_client::TaskServiceClient;
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use support::netns::NetnsPair;
use support::{
    Etcd, NODE_START_TIMEOUT, Node, Process, Stream, agentmesh_bin, etcd_binary, eventually,
    start_node_with_env,
};

/// Lease TTL of every node: failure detection within about 2 s.
const LEASE_TTL: &str = "2";
/// Coordinators log each applied result at DEBUG.
const COORDINATOR_LOG: &str = "info,agentmesh_runtime::actors::coordinator=debug";
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
const WORKER_CONCURRENCY: &str = "16";

/// One Submit call, connection included; past it the outcome is unknown.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(20);
const GET_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two rounds of `Get` over the unfinished tasks.
const POLL_ROUND: Duration = Duration::from_millis(400);

/// The scenarios load a 2-core machine on their own: under `cargo test`
/// they run one at a time whatever `--test-threads` says (nextest runs each
/// in its own process, limited by its `e2e` test group).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A small xorshift generator: which worker dies next need not be secure.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Rng(seed | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
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

/// Task `index`: a nap, then `nap.slept_ms + index`; its result is
/// `{"value": nap_ms + index}`, different for every task.
fn task_document(index: usize, nap_ms: u64) -> String {
    json!({
        "name": format!("chaos-{index}"),
        "tasks": [
            {"id": "nap", "capability": "sleep", "input": {"ms": nap_ms}},
            {
                "id": "calc",
                "capability": "math.eval",
                "input": {"expr": format!("{{{{nap.slept_ms}}}} + {index}")},
                "depends_on": ["nap"],
            },
        ],
    })
    .to_string()
}

/// `None` when `record` (completed) holds the result task `index` must
/// have; otherwise what is wrong with it.
fn check_result(record: &pb::TaskRecord, index: usize, nap_ms: u64) -> Option<String> {
    let expected = (nap_ms + index as u64) as f64;
    let result: Value = serde_json::from_str(&record.result_json).unwrap_or(Value::Null);
    if result["value"].as_f64() != Some(expected) {
        return Some(format!(
            "task {} (chaos-{index}): result {} , expected {{\"value\": {expected}}}",
            record.task_id, record.result_json
        ));
    }
    let nap = record.subtasks.iter().find(|s| s.id == "nap");
    let slept = nap
        .and_then(|s| serde_json::from_str::<Value>(&s.output_json).ok())
        .and_then(|v| v["slept_ms"].as_u64());
    if slept != Some(nap_ms) {
        return Some(format!(
            "task {} (chaos-{index}): nap output {:?}, expected slept_ms {nap_ms}",
            record.task_id,
            nap.map(|s| &s.output_json)
        ));
    }
    None
}

// ---------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------

fn coordinator_args(id: &str) -> Vec<&str> {
    let mut args = vec!["--id", id, "--lease-ttl", LEASE_TTL];
    args.extend_from_slice(&COORDINATOR_FLAGS);
    args
}

fn worker_args(id: &str) -> [&str; 8] {
    [
        "--id",
        id,
        "--capabilities",
        WORKER_CAPABILITIES,
        "--max-concurrency",
        WORKER_CONCURRENCY,
        "--lease-ttl",
        LEASE_TTL,
    ]
}

/// `ListAgents` on one node, fresh connection, short timeouts.
fn list_agents(rt: &Runtime, endpoint: &str) -> Result<Vec<pb::AgentInfo>, String> {
    rt.block_on(async {
        let channel = connect(endpoint).await?;
        let reply = tokio::time::timeout(
            GET_TIMEOUT,
            ClusterServiceClient::new(channel).list_agents(pb::ListAgentsRequest {}),
        )
        .await
        .map_err(|_| format!("ListAgents on {endpoint} timed out"))?
        .map_err(|s| format!("ListAgents on {endpoint}: {s}"))?;
        Ok(reply.into_inner().agents)
    })
}

/// The gRPC health of a whole node (`Serving`, `NotServing`...).
fn serving_status(rt: &Runtime, endpoint: &str) -> Option<String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    rt.block_on(async {
        let channel = connect(endpoint).await.ok()?;
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let reply = tokio::time::timeout(GET_TIMEOUT, HealthClient::new(channel).check(request))
            .await
            .ok()?
            .ok()?
            .into_inner();
        Some(format!("{:?}", reply.status()))
    })
}

async fn connect(endpoint: &str) -> Result<Channel, String> {
    let target = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("bad endpoint {endpoint}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, target.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(format!("cannot connect to {endpoint}: {e}")),
        Err(_) => Err(format!("connecting to {endpoint} timed out")),
    }
}

/// etcd, coordinators and workers on loopback. Every process ever started
/// stays here (killed ones too) so its log can be checked at the end.
struct Cluster {
    etcd: Etcd,
    coordinators: Vec<Node>,
    workers: Vec<Node>,
    /// Names of SIGKILLed processes.
    killed: HashSet<String>,
    rt: Runtime,
    workers_started: usize,
}

impl Cluster {
    /// etcd, `coordinators` coordinators (`coordinator-1`...) and `workers`
    /// workers (`worker-1`...), all registered.
    fn start(coordinators: usize, workers: usize) -> Cluster {
        let etcd = Etcd::start();
        let mut cluster = Cluster {
            etcd,
            coordinators: Vec::new(),
            workers: Vec::new(),
            killed: HashSet::new(),
            rt: runtime(),
            workers_started: 0,
        };
        let url = cluster.etcd.client_url();
        for n in 1..=coordinators {
            let id = format!("coordinator-{n}");
            let node = start_node_with_env(
                &id,
                &url,
                "coordinator",
                &coordinator_args(&id),
                &[("RUST_LOG", COORDINATOR_LOG)],
            );
            cluster.coordinators.push(node);
        }
        for _ in 0..workers {
            cluster.add_worker();
        }
        let ids: Vec<String> = cluster
            .coordinators
            .iter()
            .chain(&cluster.workers)
            .map(|n| n.process.name().to_owned())
            .collect();
        cluster.wait_listed(&ids, Duration::from_secs(20));
        cluster
    }

    /// Starts a worker with a fresh id and port; returns its id.
    fn add_worker(&mut self) -> String {
        self.workers_started += 1;
        let id = format!("worker-{}", self.workers_started);
        let node = start_node_with_env(
            &id,
            &self.etcd.client_url(),
            "worker",
            &worker_args(&id),
            &[],
        );
        self.workers.push(node);
        id
    }

    /// SIGKILLs the node named `name`; returns the epoch ms just before.
    fn kill(&mut self, name: &str) -> u64 {
        let node = self
            .coordinators
            .iter()
            .chain(&self.workers)
            .find(|n| n.process.name() == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        let at = now_ms();
        node.process.kill();
        self.killed.insert(name.to_owned());
        at
    }

    fn live_workers(&self) -> Vec<String> {
        self.workers
            .iter()
            .map(|n| n.process.name().to_owned())
            .filter(|name| !self.killed.contains(name))
            .collect()
    }

    fn live_coordinators(&self) -> Vec<&Node> {
        self.coordinators
            .iter()
            .filter(|n| !self.killed.contains(n.process.name()))
            .collect()
    }

    fn coordinator_endpoints(&self) -> Vec<String> {
        self.coordinators
            .iter()
            .map(|n| n.endpoint.clone())
            .collect()
    }

    fn coordinator_processes(&self) -> Vec<&Process> {
        self.coordinators.iter().map(|n| &n.process).collect()
    }

    /// Agent ids `endpoint` lists.
    fn listed_by(&self, endpoint: &str) -> Result<HashSet<String>, String> {
        Ok(list_agents(&self.rt, endpoint)?
            .into_iter()
            .map(|a| a.id)
            .collect())
    }

    /// Waits until every live coordinator lists all of `ids`.
    fn wait_listed(&self, ids: &[String], timeout: Duration) {
        eventually(
            &format!("every live coordinator to list {ids:?}"),
            timeout,
            || {
                self.live_coordinators()
                    .iter()
                    .all(|c| {
                        self.listed_by(&c.endpoint)
                            .is_ok_and(|listed| ids.iter().all(|id| listed.contains(id)))
                    })
                    .then_some(())
            },
        );
    }

    /// The live coordinator that `ListAgents` marks as the leader.
    fn leader(&self) -> Option<String> {
        let live = self.live_coordinators();
        let live_ids: HashSet<&str> = live.iter().map(|n| n.process.name()).collect();
        live.iter()
            .filter_map(|node| list_agents(&self.rt, &node.endpoint).ok())
            .flatten()
            .find(|agent| agent.leader && live_ids.contains(agent.id.as_str()))
            .map(|agent| agent.id)
    }

    fn assert_no_panic(&self) {
        for node in self.coordinators.iter().chain(&self.workers) {
            node.process.assert_no_panic();
        }
    }
}

// ---------------------------------------------------------------------------
// The load driver
// ---------------------------------------------------------------------------

/// What the driver submits and how.
#[derive(Clone, Debug)]
struct Load {
    tasks: usize,
    nap_ms: u64,
    /// Submits started per second (at most `in_flight` at once).
    rate: f64,
    in_flight: usize,
    /// Task `i` goes first to endpoint `i % n`; otherwise to the endpoint
    /// that answered last.
    round_robin: bool,
    /// Submits are retried until this long after the start.
    submit_window: Duration,
    /// Tasks are polled until this long after the last submit ended.
    settle: Duration,
}

impl Load {
    /// The load of the fail-over scenarios: `tasks` naps of 500 ms, 20
    /// submits a second round-robin over every coordinator, 32 in flight.
    fn failover(tasks: usize, submit_window: Duration, settle: Duration) -> Self {
        Self {
            tasks,
            nap_ms: 500,
            rate: 20.0,
            in_flight: 32,
            round_robin: true,
            submit_window,
            settle,
        }
    }
}

/// Shared with the test thread while the driver runs.
#[derive(Default)]
struct Progress {
    accepted: AtomicUsize,
    terminal: AtomicUsize,
    /// Set when the driver has returned its summary.
    finished: AtomicBool,
}

impl Progress {
    /// Waits (60 s at most) until a third of `tasks` are accepted, or the
    /// driver has given up.
    fn wait_for_a_third_accepted(&self, tasks: usize) {
        eventually(
            "a third of the tasks to be accepted",
            Duration::from_secs(60),
            || {
                (self.accepted.load(Ordering::SeqCst) >= tasks / 3
                    || self.finished.load(Ordering::SeqCst))
                .then_some(())
            },
        );
    }
}

#[derive(Clone, Debug)]
struct AcceptedTask {
    index: usize,
    id: String,
    /// Epoch ms when Submit returned the id.
    accepted_ms: u64,
}

/// Why one Submit attempt did not return an id.
#[derive(Debug)]
enum Refusal {
    /// RESOURCE_EXHAUSTED: wait this long, same endpoint.
    Busy(Duration),
    /// The task was certainly not created (connection refused, a refusal).
    Definite(String),
    /// The task may or may not exist (a broken call, a timeout, an
    /// internal or unavailable answer).
    Ambiguous(String),
    /// The test is wrong (INVALID_ARGUMENT).
    Fatal(String),
}

fn classify(status: &Status) -> Refusal {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::ResourceExhausted => {
            let hinted = status
                .metadata()
                .get("retry-after-ms")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(500);
            Refusal::Busy(Duration::from_millis(hinted.clamp(10, 5_000)))
        }
        Code::InvalidArgument => Refusal::Fatal(message),
        Code::FailedPrecondition
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated => Refusal::Definite(message),
        // A transport error before the request went out.
        Code::Unavailable
            if status.message().contains("tcp connect error")
                || status.message().contains("onnection refused") =>
        {
            Refusal::Definite(message)
        }
        _ => Refusal::Ambiguous(message),
    }
}

/// One cached connection per coordinator endpoint, dropped after errors.
struct Endpoints {
    urls: Vec<String>,
    channels: Mutex<Vec<Option<Channel>>>,
}

impl Endpoints {
    fn new(urls: Vec<String>) -> Self {
        let channels = Mutex::new(vec![None; urls.len()]);
        Endpoints { urls, channels }
    }

    fn len(&self) -> usize {
        self.urls.len()
    }

    async fn channel(&self, i: usize) -> Result<Channel, String> {
        if let Some(channel) = self.channels.lock().unwrap()[i].clone() {
            return Ok(channel);
        }
        let channel = connect(&self.urls[i]).await?;
        self.channels.lock().unwrap()[i] = Some(channel.clone());
        Ok(channel)
    }

    fn forget(&self, i: usize) {
        self.channels.lock().unwrap()[i] = None;
    }
}

/// Counters the submit and poll loops share.
struct Driver {
    load: Load,
    endpoints: Endpoints,
    progress: Arc<Progress>,
    started: Instant,
    /// Endpoint that accepted last (for `round_robin == false`).
    preferred: AtomicUsize,
    /// Accepted tasks not yet handed to the poller.
    fresh: Mutex<Vec<AcceptedTask>>,
    submits_done: AtomicBool,
    refusals: Mutex<BTreeMap<String, usize>>,
    samples: Mutex<Vec<String>>,
    ambiguous_attempts: AtomicUsize,
    get_errors: AtomicUsize,
}

/// What the final pass of [`Driver::recheck`] found.
#[derive(Debug, Default)]
struct Recheck {
    answered: usize,
    diverged: Vec<String>,
    rerun_after_end: Vec<String>,
}

enum Submitted {
    Accepted(AcceptedTask),
    /// Never accepted before the submit window closed; whether any attempt
    /// was ambiguous.
    NotAccepted {
        ambiguous: bool,
    },
    Fatal(String),
}

/// What a driver run found.
#[derive(Debug, Default)]
struct Summary {
    tasks: usize,
    accepted: Vec<AcceptedTask>,
    /// Submit attempts that ended ambiguously: each may have created a
    /// task nobody will look at. Not an error.
    unconfirmed: usize,
    /// Tasks never accepted within the submit window.
    not_accepted: usize,
    /// ... of which some attempt was ambiguous.
    not_accepted_ambiguous: usize,
    fatal: Vec<String>,
    refusals: BTreeMap<String, usize>,
    error_samples: Vec<String>,
    get_errors: usize,
    /// Latest record of every accepted task that was seen at least once.
    records: HashMap<String, pb::TaskRecord>,
    completed: usize,
    failed: Vec<String>,
    cancelled: Vec<String>,
    /// Accepted but not terminal by the deadline.
    lost: Vec<String>,
    /// Completed with a wrong result.
    wrong: Vec<String>,
    /// Terminal tasks that a coordinator, asked again at the end, reports
    /// with another status or result than the one first seen.
    diverged: Vec<String>,
    /// Terminal tasks some subtask of which started after the client
    /// first saw the task end.
    rerun_after_end: Vec<String>,
    /// `Get`s of that final pass that were answered.
    rechecked: usize,
    submit_elapsed: Duration,
    elapsed: Duration,
}

impl Summary {
    /// `key=value` pairs common to every scenario's CHAOS line.
    fn fields(&self) -> String {
        let refusals: Vec<String> = self
            .refusals
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        format!(
            "tasks={} accepted={} completed={} failed={} cancelled={} lost={} wrong={} \
             diverged={} rerun_after_end={} rechecked={} unconfirmed={} not_accepted={} get_errors={} refusals={} \
             submit_s={:.1} total_s={:.1}",
            self.tasks,
            self.accepted.len(),
            self.completed,
            self.failed.len(),
            self.cancelled.len(),
            self.lost.len(),
            self.wrong.len(),
            self.diverged.len(),
            self.rerun_after_end.len(),
            self.rechecked,
            self.unconfirmed,
            self.not_accepted,
            self.get_errors,
            if refusals.is_empty() {
                "none".to_owned()
            } else {
                refusals.join(",")
            },
            self.submit_elapsed.as_secs_f64(),
            self.elapsed.as_secs_f64(),
        )
    }

    /// The assertions every scenario shares about the tasks themselves.
    fn assert_all_completed(&self) {
        assert!(
            self.fatal.is_empty(),
            "the cluster refused a task document as invalid (a test bug):\n  {}",
            first(&self.fatal)
        );
        assert_eq!(
            self.not_accepted,
            0,
            "{} of {} tasks were never accepted within the submit window ({} of them after an \
             ambiguous error); refusals {:?}; last errors:\n  {}",
            self.not_accepted,
            self.tasks,
            self.not_accepted_ambiguous,
            self.refusals,
            first(&self.error_samples)
        );
        assert!(
            self.lost.is_empty(),
            "{} accepted tasks never ended (lost):\n  {}",
            self.lost.len(),
            first(&self.lost)
        );
        assert!(
            self.wrong.is_empty(),
            "{} tasks completed with a wrong result:\n  {}",
            self.wrong.len(),
            first(&self.wrong)
        );
        assert!(
            self.diverged.is_empty(),
            "{} finished tasks are reported differently when asked again at the end:\n  {}",
            self.diverged.len(),
            first(&self.diverged)
        );
        assert!(
            self.rerun_after_end.is_empty(),
            "{} tasks were reported finished and then ran again (an end reported before it was \
             durable):\n  {}",
            self.rerun_after_end.len(),
            first(&self.rerun_after_end)
        );
        assert!(
            self.failed.is_empty(),
            "{} tasks failed:\n  {}",
            self.failed.len(),
            first(&self.failed)
        );
        assert!(
            self.cancelled.is_empty(),
            "{} tasks were cancelled though nobody cancelled them:\n  {}",
            self.cancelled.len(),
            first(&self.cancelled)
        );
        assert_eq!(self.completed, self.tasks, "{}", self.fields());
    }
}

/// Runs the driver on its own thread (with its own tokio runtime).
fn drive(endpoints: Vec<String>, load: Load) -> (Arc<Progress>, JoinHandle<Summary>) {
    let progress = Arc::new(Progress::default());
    let shared = progress.clone();
    let handle = thread::Builder::new()
        .name("chaos-driver".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("driver runtime");
            let driver = Arc::new(Driver {
                load,
                endpoints: Endpoints::new(endpoints),
                progress: shared.clone(),
                started: Instant::now(),
                preferred: AtomicUsize::new(0),
                fresh: Mutex::new(Vec::new()),
                submits_done: AtomicBool::new(false),
                refusals: Mutex::new(BTreeMap::new()),
                samples: Mutex::new(Vec::new()),
                ambiguous_attempts: AtomicUsize::new(0),
                get_errors: AtomicUsize::new(0),
            });
            let summary = rt.block_on(driver.run());
            shared.finished.store(true, Ordering::SeqCst);
            summary
        })
        .expect("spawn the driver thread");
    (progress, handle)
}

impl Driver {
    async fn run(self: Arc<Self>) -> Summary {
        let poller = tokio::spawn(self.clone().poll_all());
        let load = self.load.clone();
        let outcomes: Vec<Submitted> = stream::iter(0..load.tasks)
            .map(|index| {
                let driver = self.clone();
                async move {
                    let due = driver.started + Duration::from_secs_f64(index as f64 / load.rate);
                    tokio::time::sleep_until(due.into()).await;
                    driver.submit(index).await
                }
            })
            .buffer_unordered(load.in_flight)
            .collect()
            .await;
        let submit_elapsed = self.started.elapsed();
        self.submits_done.store(true, Ordering::SeqCst);
        let (polled, seen_terminal) = poller.await.expect("the poll loop panicked");

        let mut summary = Summary {
            tasks: load.tasks,
            submit_elapsed,
            unconfirmed: self.ambiguous_attempts.load(Ordering::SeqCst),
            refusals: self.refusals.lock().unwrap().clone(),
            error_samples: self.samples.lock().unwrap().clone(),
            get_errors: self.get_errors.load(Ordering::SeqCst),
            ..Summary::default()
        };
        for outcome in outcomes {
            match outcome {
                Submitted::Accepted(task) => summary.accepted.push(task),
                Submitted::NotAccepted { ambiguous } => {
                    summary.not_accepted += 1;
                    summary.not_accepted_ambiguous += usize::from(ambiguous);
                }
                Submitted::Fatal(message) => summary.fatal.push(message),
            }
        }
        summary.accepted.sort_by_key(|a| a.index);
        let recheck = self.recheck(&polled, &seen_terminal).await;
        summary.diverged = recheck.diverged;
        summary.rerun_after_end = recheck.rerun_after_end;
        summary.rechecked = recheck.answered;
        summary.records = polled;
        for task in &summary.accepted {
            let Some(record) = summary.records.get(&task.id) else {
                summary.lost.push(format!(
                    "{} (chaos-{}): never seen by Get",
                    task.id, task.index
                ));
                continue;
            };
            let line = || {
                format!(
                    "{} (chaos-{}): {:?} {}",
                    task.id,
                    task.index,
                    record.status(),
                    record.error
                )
            };
            match record.status() {
                pb::TaskStatus::Completed => {
                    summary.completed += 1;
                    if let Some(wrong) = check_result(record, task.index, load.nap_ms) {
                        summary.wrong.push(wrong);
                    }
                }
                pb::TaskStatus::Failed => summary.failed.push(line()),
                pb::TaskStatus::Cancelled => summary.cancelled.push(line()),
                _ => summary.lost.push(line()),
            }
        }
        summary.elapsed = self.started.elapsed();
        summary
    }

    fn note(&self, refusal: &Refusal) {
        let (kind, message) = match refusal {
            Refusal::Busy(_) => ("busy", None),
            Refusal::Definite(m) => ("definite", Some(m)),
            Refusal::Ambiguous(m) => ("ambiguous", Some(m)),
            Refusal::Fatal(m) => ("fatal", Some(m)),
        };
        *self
            .refusals
            .lock()
            .unwrap()
            .entry(kind.to_owned())
            .or_default() += 1;
        if let Some(message) = message {
            let mut samples = self.samples.lock().unwrap();
            if !samples.contains(message) {
                samples.push(message.clone());
                if samples.len() > 8 {
                    samples.remove(0);
                }
            }
        }
    }

    /// Submits task `index` until it is accepted or the window closes.
    async fn submit(&self, index: usize) -> Submitted {
        let document = task_document(index, self.load.nap_ms);
        let n = self.endpoints.len();
        let mut endpoint = if self.load.round_robin {
            index % n
        } else {
            self.preferred.load(Ordering::Relaxed) % n
        };
        let deadline = self.started + self.load.submit_window;
        let mut ambiguous = false;
        let mut pause = Duration::from_millis(100);
        loop {
            if Instant::now() >= deadline {
                return Submitted::NotAccepted { ambiguous };
            }
            match self.try_submit(endpoint, &document).await {
                Ok(id) => {
                    self.preferred.store(endpoint, Ordering::Relaxed);
                    let task = AcceptedTask {
                        index,
                        id,
                        accepted_ms: now_ms(),
                    };
                    self.progress.accepted.fetch_add(1, Ordering::SeqCst);
                    self.fresh.lock().unwrap().push(task.clone());
                    return Submitted::Accepted(task);
                }
                Err(refusal) => {
                    self.note(&refusal);
                    match refusal {
                        Refusal::Busy(after) => tokio::time::sleep(after).await,
                        Refusal::Fatal(message) => return Submitted::Fatal(message),
                        Refusal::Definite(_) | Refusal::Ambiguous(_) => {
                            if matches!(refusal, Refusal::Ambiguous(_)) {
                                ambiguous = true;
                                self.ambiguous_attempts.fetch_add(1, Ordering::SeqCst);
                            }
                            endpoint = (endpoint + 1) % n;
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            }
        }
    }

    async fn try_submit(&self, endpoint: usize, document: &str) -> Result<String, Refusal> {
        // A connection that cannot be made carries no request.
        let channel = self
            .endpoints
            .channel(endpoint)
            .await
            .map_err(Refusal::Definite)?;
        let request = pb::SubmitRequest {
            document: document.to_owned(),
            wait: false,
        };
        let mut client = TaskServiceClient::new(channel);
        let call = client.submit(request);
        match tokio::time::timeout(SUBMIT_TIMEOUT, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner().task_id),
            Ok(Err(status)) => {
                let refusal = classify(&status);
                if matches!(refusal, Refusal::Ambiguous(_) | Refusal::Definite(_)) {
                    self.endpoints.forget(endpoint);
                }
                Err(refusal)
            }
            Err(_) => {
                self.endpoints.forget(endpoint);
                Err(Refusal::Ambiguous(format!(
                    "Submit to {} timed out after {SUBMIT_TIMEOUT:?}",
                    self.endpoints.urls[endpoint]
                )))
            }
        }
    }

    /// The record of `id` from the first endpoint that has it.
    async fn get(&self, id: &str, first: usize) -> Option<pb::TaskRecord> {
        let n = self.endpoints.len();
        for k in 0..n {
            let endpoint = (first + k) % n;
            let Ok(channel) = self.endpoints.channel(endpoint).await else {
                self.get_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let request = pb::GetTaskRequest {
                task_id: id.to_owned(),
            };
            let mut client = TaskServiceClient::new(channel);
            let call = client.get(request);
            match tokio::time::timeout(GET_TIMEOUT, call).await {
                Ok(Ok(record)) => return Some(record.into_inner()),
                Ok(Err(status)) if status.code() == Code::NotFound => {}
                Ok(Err(_)) | Err(_) => {
                    self.endpoints.forget(endpoint);
                }
            }
            self.get_errors.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// Asks every endpoint again for every terminal task: a finished task
    /// must stay finished, with the same result, whoever answers; and no
    /// subtask of it may have started after the client first saw it end
    /// (an end reported before it was durable, then run again).
    async fn recheck(
        &self,
        records: &HashMap<String, pb::TaskRecord>,
        seen_terminal: &HashMap<String, u64>,
    ) -> Recheck {
        let pairs: Vec<(&pb::TaskRecord, usize)> = records
            .values()
            .filter(|r| is_terminal(r.status()))
            .flat_map(|r| (0..self.endpoints.len()).map(move |e| (r, e)))
            .collect();
        let answers: Vec<Option<(Option<String>, Option<String>)>> = stream::iter(pairs)
            .map(|(first, endpoint)| async move {
                let channel = self.endpoints.channel(endpoint).await.ok()?;
                let request = pb::GetTaskRequest {
                    task_id: first.task_id.clone(),
                };
                let mut client = TaskServiceClient::new(channel);
                let again = tokio::time::timeout(GET_TIMEOUT, client.get(request))
                    .await
                    .ok()?
                    .ok()?
                    .into_inner();
                let result = |r: &pb::TaskRecord| {
                    serde_json::from_str::<Value>(&r.result_json).unwrap_or(Value::Null)
                };
                let url = &self.endpoints.urls[endpoint];
                let diverged = (again.status() != first.status()
                    || result(&again) != result(first))
                .then(|| {
                    format!(
                        "task {}: first seen {:?} {}, then {url} says {:?} {}",
                        first.task_id,
                        first.status(),
                        first.result_json,
                        again.status(),
                        again.result_json
                    )
                });
                let seen = seen_terminal
                    .get(&first.task_id)
                    .copied()
                    .unwrap_or(u64::MAX);
                let rerun = again
                    .subtasks
                    .iter()
                    .filter(|s| s.started_unix_ms > seen)
                    .map(|s| {
                        format!(
                            "task {}: seen {:?} at {seen} ms, yet per {url} subtask '{}' \
                             attempt {} started {} ms later",
                            first.task_id,
                            first.status(),
                            s.id,
                            s.attempts,
                            s.started_unix_ms - seen
                        )
                    })
                    .next();
                Some((diverged, rerun))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut recheck = Recheck::default();
        for (diverged, rerun) in answers.into_iter().flatten() {
            recheck.answered += 1;
            recheck.diverged.extend(diverged);
            recheck.rerun_after_end.extend(rerun);
        }
        recheck
    }

    /// Polls every accepted task until all are terminal, or until `settle`
    /// after the last submit ended. Returns the latest record of each.
    async fn poll_all(self: Arc<Self>) -> (HashMap<String, pb::TaskRecord>, HashMap<String, u64>) {
        let mut records: HashMap<String, pb::TaskRecord> = HashMap::new();
        let mut seen_terminal: HashMap<String, u64> = HashMap::new();
        let mut pending: Vec<String> = Vec::new();
        let mut terminal = 0;
        let mut settle_deadline: Option<Instant> = None;
        let mut round = 0usize;
        loop {
            pending.extend(self.fresh.lock().unwrap().drain(..).map(|t| t.id));
            if self.submits_done.load(Ordering::SeqCst) {
                // Tasks accepted just before the flag was set are in `fresh`.
                pending.extend(self.fresh.lock().unwrap().drain(..).map(|t| t.id));
                if pending.is_empty() {
                    break;
                }
                let deadline =
                    *settle_deadline.get_or_insert_with(|| Instant::now() + self.load.settle);
                if Instant::now() >= deadline {
                    break;
                }
            }
            round += 1;
            let polled: Vec<(String, Option<pb::TaskRecord>)> = stream::iter(pending.clone())
                .map(|id| {
                    let driver = self.clone();
                    async move {
                        let record = driver.get(&id, round).await;
                        (id, record)
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            for (id, record) in polled {
                if let Some(record) = record {
                    if is_terminal(record.status()) {
                        pending.retain(|p| *p != id);
                        terminal += 1;
                        seen_terminal.insert(id.clone(), now_ms());
                    }
                    records.insert(id, record);
                }
            }
            self.progress.terminal.store(terminal, Ordering::SeqCst);
            tokio::time::sleep(POLL_ROUND).await;
        }
        (records, seen_terminal)
    }
}

/// The first five entries of a failure list, one per line, for messages.
fn first(list: &[String]) -> String {
    list.iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ")
}

fn is_terminal(status: pb::TaskStatus) -> bool {
    matches!(
        status,
        pb::TaskStatus::Completed | pb::TaskStatus::Failed | pb::TaskStatus::Cancelled
    )
}

// ---------------------------------------------------------------------------
// "result applied" lines
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Applied {
    task_id: String,
    subtask: String,
    term: i64,
    attempt: u32,
}

/// Every `result applied task_id=.. subtask=.. attempt=..` line of
/// `process`, and the lines that say `result applied` without those fields.
fn applied_lines(process: &Process) -> (Vec<Applied>, Vec<String>) {
    const MESSAGE: &str = "result applied";
    let mut applied = Vec::new();
    let mut malformed = Vec::new();
    for line in process.output_lines() {
        let Some(at) = line.find(MESSAGE) else {
            continue;
        };
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for token in line[at + MESSAGE.len()..].split_whitespace() {
            if let Some((key, value)) = token.split_once('=') {
                fields.insert(key, value.trim_matches('"'));
            }
        }
        let attempt = fields.get("attempt").and_then(|a| a.parse::<u32>().ok());
        let term = fields.get("term").and_then(|t| t.parse::<i64>().ok());
        match (fields.get("task_id"), fields.get("subtask"), attempt, term) {
            (Some(task_id), Some(subtask), Some(attempt), Some(term)) => applied.push(Applied {
                task_id: (*task_id).to_owned(),
                subtask: (*subtask).to_owned(),
                term,
                attempt,
            }),
            _ => malformed.push(line.clone()),
        }
    }
    (applied, malformed)
}

/// What the coordinators' `result applied` lines say.
#[derive(Debug, Default)]
struct AppliedCheck {
    lines: usize,
    /// `(task, subtask, attempt)` applied more than once: `key × count`.
    duplicates: Vec<String>,
    /// With a single coordinator: `(task, subtask)` applied more than once,
    /// whatever the attempts.
    subtask_twice: Vec<String>,
    /// Subtasks of completed tasks with no line.
    missing: Vec<String>,
    malformed: Vec<String>,
}

impl AppliedCheck {
    /// Reads all `coordinators`' logs. `expect` lists `(task id, subtask
    /// ids)` of completed tasks that must each have a line; log lines can
    /// trail the records a little, so missing ones are waited for (10 s).
    /// `one_coordinator`: only one coordinator ever applied results, so a
    /// subtask may be applied once at most, whatever the attempt.
    fn run(
        coordinators: &[&Process],
        expect: &[(String, Vec<String>)],
        one_coordinator: bool,
    ) -> AppliedCheck {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let check = Self::once(coordinators, expect, one_coordinator);
            if check.missing.is_empty() || Instant::now() >= deadline {
                return check;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn once(
        coordinators: &[&Process],
        expect: &[(String, Vec<String>)],
        one_coordinator: bool,
    ) -> AppliedCheck {
        let mut check = AppliedCheck::default();
        let mut counts: BTreeMap<Applied, usize> = BTreeMap::new();
        let mut per_subtask: BTreeMap<(String, String), Vec<u32>> = BTreeMap::new();
        for process in coordinators {
            let (applied, malformed) = applied_lines(process);
            check.lines += applied.len();
            check.malformed.extend(malformed);
            for a in applied {
                per_subtask
                    .entry((a.task_id.clone(), a.subtask.clone()))
                    .or_default()
                    .push(a.attempt);
                *counts.entry(a).or_default() += 1;
            }
        }
        check.duplicates = counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(a, n)| {
                format!(
                    "task_id={} subtask={} term={} attempt={} applied {n} times",
                    a.task_id, a.subtask, a.term, a.attempt
                )
            })
            .collect();
        if one_coordinator {
            check.subtask_twice = per_subtask
                .iter()
                .filter(|(_, attempts)| attempts.len() > 1)
                .map(|((task, subtask), attempts)| {
                    format!("task_id={task} subtask={subtask} applied for attempts {attempts:?}")
                })
                .collect();
        }
        for (task, subtasks) in expect {
            for subtask in subtasks {
                if !per_subtask.contains_key(&(task.clone(), subtask.clone())) {
                    check
                        .missing
                        .push(format!("task_id={task} subtask={subtask}"));
                }
            }
        }
        check
    }

    fn fields(&self) -> String {
        format!(
            "applied_lines={} duplicate_applied={} subtask_applied_twice={} missing_applied={}",
            self.lines,
            self.duplicates.len(),
            self.subtask_twice.len(),
            self.missing.len()
        )
    }

    fn assert_clean(&self) {
        assert!(
            self.malformed.is_empty(),
            "`result applied` lines without task_id=, subtask=, attempt= and term=:\n  {}",
            first(&self.malformed)
        );
        assert!(
            self.duplicates.is_empty(),
            "subtask results applied twice (same task, subtask, term and attempt):\n  {}",
            first(&self.duplicates)
        );
        assert!(
            self.subtask_twice.is_empty(),
            "with a single coordinator, subtasks had more than one result applied:\n  {}",
            first(&self.subtask_twice)
        );
        assert!(
            self.missing.is_empty(),
            "{} subtasks of completed tasks have no `result applied` line in any coordinator's \
             log (coordinators must log `result applied task_id=.. subtask=.. attempt=..` at \
             DEBUG under {COORDINATOR_LOG}):\n  {}",
            self.missing.len(),
            first(&self.missing)
        );
    }
}

/// Epoch ms of a tracing timestamp such as `2026-01-02T03:04:05.123456Z`.
fn parse_utc_ms(stamp: &str) -> Option<u64> {
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.splitn(3, ':');
    let h: i64 = hms.next()?.parse().ok()?;
    let mi: i64 = hms.next()?.parse().ok()?;
    let sec: f64 = hms.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + h * 3_600 + mi * 60) as f64 + sec) * 1_000.0;
    u64::try_from(ms.round() as i64).ok()
}

#[test]
fn tracing_timestamps_parse_to_epoch_ms() {
    assert_eq!(
        parse_utc_ms("2026-11-24T06:38:52.596709Z"),
        Some(1_795_502_332_597)
    );
    assert_eq!(
        parse_utc_ms("2000-02-29T23:59:59.999Z"),
        Some(951_868_799_999)
    );
    assert_eq!(parse_utc_ms("INFO"), None);
}

/// When each attempt was dispatched, from the coordinators' DEBUG
/// `dispatching task_id=.. subtask=.. attempt=.. worker=..` lines:
/// `(task, subtask, attempt) -> (worker, epoch ms)`. Empty when the
/// coordinators do not log them.
fn dispatch_times(coordinators: &[&Process]) -> HashMap<Applied, (String, u64)> {
    const MESSAGE: &str = "dispatching ";
    let mut times = HashMap::new();
    for process in coordinators {
        for line in process.output_lines() {
            let Some(at) = line.find(MESSAGE) else {
                continue;
            };
            let fields: HashMap<&str, &str> = line[at + MESSAGE.len()..]
                .split_whitespace()
                .filter_map(|t| t.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            let stamp = line.split_whitespace().next().and_then(parse_utc_ms);
            let attempt = fields.get("attempt").and_then(|a| a.parse().ok());
            if let (Some(task), Some(subtask), Some(attempt), Some(worker), Some(stamp)) = (
                fields.get("task_id"),
                fields.get("subtask"),
                attempt,
                fields.get("worker"),
                stamp,
            ) {
                // Worker kills have one coordinator, so one term.
                let key = Applied {
                    task_id: (*task).to_owned(),
                    subtask: (*subtask).to_owned(),
                    term: 0,
                    attempt,
                };
                times.insert(key, ((*worker).to_owned(), stamp));
            }
        }
    }
    times
}

/// `(task id, subtask ids)` of every completed task in `summary`.
fn completed_subtasks(summary: &Summary) -> Vec<(String, Vec<String>)> {
    summary
        .records
        .values()
        .filter(|r| r.status() == pb::TaskStatus::Completed)
        .map(|r| {
            (
                r.task_id.clone(),
                r.subtasks.iter().map(|s| s.id.clone()).collect(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// (a) workers SIGKILLed every 2 s
// ---------------------------------------------------------------------------

#[test]
fn random_worker_sigkill_every_2s() {
    let _serial = one_at_a_time();
    const TASKS: usize = 500;
    const MAX_KILLS: usize = 25;
    const KILL_EVERY: Duration = Duration::from_secs(2);
    let started = Instant::now();
    let mut cluster = Cluster::start(1, 4);
    let load = Load {
        tasks: TASKS,
        nap_ms: 500,
        rate: 25.0,
        in_flight: 32,
        round_robin: false,
        submit_window: Duration::from_secs(90),
        settle: Duration::from_secs(45),
    };
    let (progress, driver) = drive(cluster.coordinator_endpoints(), load);

    let mut rng = Rng::new();
    let mut kills: Vec<(String, u64)> = Vec::new();
    while kills.len() < MAX_KILLS {
        thread::sleep(KILL_EVERY);
        let all_ended = progress.accepted.load(Ordering::SeqCst) == TASKS
            && progress.terminal.load(Ordering::SeqCst) == TASKS;
        if all_ended || progress.finished.load(Ordering::SeqCst) {
            break;
        }
        let live = cluster.live_workers();
        let victim = live[rng.below(live.len())].clone();
        let at = cluster.kill(&victim);
        kills.push((victim, at));
        cluster.add_worker();
    }
    let summary = driver.join().expect("the driver panicked");

    // Worker SIGKILL -> re-dispatch. With the coordinator's DEBUG
    // `dispatching` lines: for every attempt sent to a victim before its
    // kill at K and followed by another attempt, the next attempt's
    // dispatch - K (`redispatch`), and the start of the subtask's last
    // attempt - K (`final_start`); attempts sent to a victim after its
    // death are counted (`sent_to_dead`). Without those lines: subtasks whose
    // second-to-last worker is the victim, last attempt's start - K.
    let dispatched = dispatch_times(&cluster.coordinator_processes());
    let killed_at: HashMap<&str, u64> = kills.iter().map(|(w, k)| (w.as_str(), *k)).collect();
    let mut redispatch_ms: Vec<i64> = Vec::new();
    let mut final_start_ms: Vec<i64> = Vec::new();
    let mut sent_to_dead = 0usize;
    for record in summary.records.values() {
        for s in &record.subtasks {
            if dispatched.is_empty() {
                let tried = &s.workers_tried;
                if let [.., victim, last] = tried.as_slice()
                    && victim != last
                    && let Some(k) = killed_at.get(victim.as_str())
                    && s.started_unix_ms > 0
                {
                    redispatch_ms.push(s.started_unix_ms as i64 - *k as i64);
                }
                continue;
            }
            let key = |attempt: u32| Applied {
                task_id: record.task_id.clone(),
                subtask: s.id.clone(),
                term: 0,
                attempt,
            };
            for attempt in 1..=s.attempts {
                let Some((worker, sent)) = dispatched.get(&key(attempt)) else {
                    continue;
                };
                let Some(&k) = killed_at.get(worker.as_str()) else {
                    continue;
                };
                if *sent >= k {
                    sent_to_dead += 1;
                } else if attempt < s.attempts {
                    if let Some((_, next)) = dispatched.get(&key(attempt + 1)) {
                        redispatch_ms.push(*next as i64 - k as i64);
                    }
                    final_start_ms.push(s.started_unix_ms as i64 - k as i64);
                }
            }
        }
    }
    let applied = AppliedCheck::run(
        &cluster.coordinator_processes(),
        &completed_subtasks(&summary),
        true,
    );
    println!(
        "CHAOS scenario=worker-kill {} {} kills={} running_on_killed={} \
         redispatch_ms(min/median/max)={} final_start_ms(min/median/max)={} \
         attempts_sent_to_dead_workers={sent_to_dead} wall_s={:.1}",
        summary.fields(),
        applied.fields(),
        kills.len(),
        redispatch_ms.len(),
        spread(&redispatch_ms),
        spread(&final_start_ms),
        started.elapsed().as_secs_f64()
    );

    summary.assert_all_completed();
    cluster.assert_no_panic();
    assert!(
        !kills.is_empty(),
        "the load ended before the first kill: the chaos tested nothing"
    );
    assert!(
        !redispatch_ms.is_empty(),
        "{} workers were killed but no subtask was re-dispatched after a kill",
        kills.len()
    );
    applied.assert_clean();
}

// ---------------------------------------------------------------------------
// (b) the leader coordinator SIGKILLed, two standbys
// ---------------------------------------------------------------------------

#[test]
fn leader_coordinator_sigkill_with_two_standbys() {
    let _serial = one_at_a_time();
    const TASKS: usize = 300;
    const NEW_LEADER_WITHIN: Duration = Duration::from_secs(15);
    let started = Instant::now();
    let mut cluster = Cluster::start(3, 3);
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
    let applied = AppliedCheck::run(
        &cluster.coordinator_processes(),
        &completed_subtasks(&summary),
        false,
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

// ---------------------------------------------------------------------------
// (c) etcd down for 10 s under load
// ---------------------------------------------------------------------------

#[test]
fn etcd_down_for_10s_mid_load() {
    let _serial = one_at_a_time();
    const TASKS: usize = 300;
    const OUTAGE: Duration = Duration::from_secs(10);
    let started = Instant::now();
    let cluster = Cluster::start(2, 3);
    let load = Load::failover(TASKS, Duration::from_secs(100), Duration::from_secs(60));
    let (progress, driver) = drive(cluster.coordinator_endpoints(), load);
    progress.wait_for_a_third_accepted(TASKS);
    let accepted_before = progress.accepted.load(Ordering::SeqCst);
    cluster.etcd.stop();
    let stopped_at = Instant::now();
    thread::sleep(OUTAGE);
    let accepted_during = progress.accepted.load(Ordering::SeqCst) - accepted_before;
    cluster.etcd.restart();
    let restarted_at = Instant::now();

    // The nodes recover by themselves: every node serves again and every
    // agent is listed again by every coordinator.
    let nodes: Vec<&Node> = cluster
        .coordinators
        .iter()
        .chain(&cluster.workers)
        .collect();
    for node in &nodes {
        eventually(
            &format!(
                "{} to report SERVING after etcd's return",
                node.process.name()
            ),
            Duration::from_secs(30),
            || {
                (serving_status(&cluster.rt, &node.endpoint).as_deref() == Some("Serving"))
                    .then_some(())
            },
        );
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.process.name().to_owned()).collect();
    cluster.wait_listed(&ids, Duration::from_secs(30));
    let recovered = restarted_at.elapsed();
    let summary = driver.join().expect("the driver panicked");

    let applied = AppliedCheck::run(
        &cluster.coordinator_processes(),
        &completed_subtasks(&summary),
        false,
    );
    println!(
        "CHAOS scenario=etcd-outage {} {} outage_ms={} accepted_before_outage={accepted_before} \
         accepted_during_outage={accepted_during} etcd_restart_ms={} all_registered_after_ms={} \
         wall_s={:.1}",
        summary.fields(),
        applied.fields(),
        (restarted_at - stopped_at).as_millis(),
        cluster.etcd.startup_time().as_millis(),
        recovered.as_millis(),
        started.elapsed().as_secs_f64()
    );

    summary.assert_all_completed();
    cluster.assert_no_panic();
    applied.assert_clean();
}

// ---------------------------------------------------------------------------
// (d) a worker cut off by a network partition, then healed
// ---------------------------------------------------------------------------

/// `ip netns exec NS agentmesh ARGS...` to completion.
fn cli_in(net: &NetnsPair, ns: &str, args: &[&str]) -> support::CliOutput {
    net.run_in_with(ns, agentmesh_bin(), args, Duration::from_secs(30))
}

/// An `agentmesh node` inside `ns`, bound to `addr` (a fixed port: the
/// namespace is the test's own); waits for its `listening on` line.
fn node_in(
    net: &NetnsPair,
    ns: &str,
    name: &str,
    addr: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Process {
    let mut all = vec!["node", "--listen", addr, "--advertise", addr];
    all.extend_from_slice(args);
    let process = net.spawn_in(ns, name, agentmesh_bin(), &all, envs);
    process.wait_for_line_where(
        "a stdout line `listening on ADDR`",
        NODE_START_TIMEOUT,
        |stream, line| stream == Stream::Stdout && line.trim_start().starts_with("listening on "),
    );
    process
}

#[test]
fn worker_isolated_by_netns_partition_then_healed() {
    let _serial = one_at_a_time();
    const BENCH_TASKS: usize = 600;
    const PIN_MS: u64 = 6000;
    let started = Instant::now();
    // Declared first, dropped last: every process inside is gone by then.
    let net = match NetnsPair::create("chaos") {
        Ok(net) => net,
        Err(reason) => {
            println!("CHAOS scenario=netns-partition SKIPPED: {reason}");
            println!("SKIPPED: {reason}");
            return;
        }
    };
    let scratch = tempfile::tempdir().expect("scratch dir");
    let (a, b) = (net.a.clone(), net.b.clone());
    let etcd_url = format!("http://{}:2379", net.addr_a);
    let etcd_args: Vec<OsString> = vec![
        "--name=chaos".into(),
        format!("--data-dir={}", scratch.path().join("etcd").display()).into(),
        format!("--listen-client-urls={etcd_url}").into(),
        format!("--advertise-client-urls={etcd_url}").into(),
        "--listen-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-cluster=chaos=http://127.0.0.1:2380".into(),
        "--initial-cluster-state=new".into(),
        "--heartbeat-interval=50".into(),
        "--election-timeout=500".into(),
        "--logger=zap".into(),
        "--log-outputs=stderr".into(),
    ];
    let etcd = net.spawn_in(&a, "etcd-in-a", etcd_binary(), &etcd_args, &[]);
    etcd.wait_for_line_where(
        "etcd serving client traffic",
        Duration::from_secs(20),
        |_, line| {
            line.contains("serving client traffic")
                || line.contains("ready to serve client requests")
        },
    );

    let coordinator_addr = format!("{}:7700", net.addr_a);
    let coordinator_url = format!("http://{coordinator_addr}");
    let mut coordinator_flags = vec![
        "--role",
        "coordinator",
        "--etcd",
        &etcd_url,
        "--id",
        "coordinator-1",
        "--lease-ttl",
        LEASE_TTL,
    ];
    coordinator_flags.extend_from_slice(&COORDINATOR_FLAGS);
    let coordinator = node_in(
        &net,
        &a,
        "coordinator-1",
        &coordinator_addr,
        &coordinator_flags,
        &[("RUST_LOG", COORDINATOR_LOG)],
    );
    let worker_flags = |id: &'static str| {
        let mut flags = vec!["--role", "worker", "--etcd", etcd_url.as_str()];
        flags.extend_from_slice(&worker_args(id));
        flags
    };
    let worker_a = node_in(
        &net,
        &a,
        "worker-a",
        &format!("{}:7701", net.addr_a),
        &worker_flags("worker-a"),
        &[],
    );
    let worker_b = node_in(
        &net,
        &b,
        "worker-b",
        &format!("{}:7702", net.addr_b),
        &worker_flags("worker-b"),
        &[],
    );
    let listed = || -> Result<Vec<String>, String> {
        let out = cli_in(
            &net,
            &a,
            &["agents", "--endpoint", &coordinator_url, "--json"],
        );
        if !out.success() {
            return Err(out.to_string());
        }
        Ok(out
            .json()
            .as_array()
            .map(|agents| {
                agents
                    .iter()
                    .filter_map(|a| a["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    };
    eventually(
        "coordinator-1, worker-a and worker-b to be listed",
        Duration::from_secs(20),
        || {
            listed().ok().filter(|ids| {
                ["coordinator-1", "worker-a", "worker-b"]
                    .iter()
                    .all(|id| ids.iter().any(|l| l == id))
            })
        },
    );

    // Load from inside A: the bench checks every result itself.
    let tasks = BENCH_TASKS.to_string();
    let bench = net.spawn_in(
        &a,
        "bench-in-a",
        agentmesh_bin(),
        &[
            "bench",
            "--endpoint",
            &coordinator_url,
            "--shape",
            "sleep",
            "--tasks",
            &tasks,
            "--concurrency",
            "32",
            "--rate",
            "30",
            "--warmup",
            "0",
            "--time-limit",
            "120",
            "--no-progress",
        ],
        &[],
    );

    // Long naps until one runs on worker-b, so the partition cuts off a
    // running subtask.
    let pin_file = scratch.path().join("pin.json");
    std::fs::write(
        &pin_file,
        json!({"name": "pin", "tasks": [{"id": "nap", "capability": "sleep", "input": {"ms": PIN_MS}}]})
            .to_string(),
    )
    .expect("write the pin task");
    let pin_path = pin_file.to_string_lossy().into_owned();
    let status = |id: &str| -> Option<Value> {
        let out = cli_in(
            &net,
            &a,
            &["task", "status", id, "--endpoint", &coordinator_url],
        );
        out.success().then(|| out.json())
    };
    let mut pins: Vec<String> = Vec::new();
    let mut pinned_on_b: Option<String> = None;
    for _ in 0..12 {
        let out = cli_in(
            &net,
            &a,
            &["submit", "--endpoint", &coordinator_url, &pin_path],
        );
        assert!(out.success(), "submitting a pin task failed:\n{out}");
        let id = out.stdout.trim().to_owned();
        pins.push(id.clone());
        let worker = eventually(
            "the pin task to start on a worker",
            Duration::from_secs(10),
            || status(&id).and_then(|r| r["subtasks"][0]["worker"].as_str().map(str::to_owned)),
        );
        if worker == "worker-b" {
            pinned_on_b = Some(id);
            break;
        }
    }
    let pinned_on_b = pinned_on_b.expect("none of 12 pin tasks was placed on worker-b");

    // Partition B from A (rules inside B only), then wait for the
    // coordinator to drop worker-b.
    net.partition_b_from_a();
    let partitioned_at = Instant::now();
    eventually(
        "the coordinator to drop the partitioned worker-b",
        Duration::from_secs(20),
        || {
            listed()
                .ok()
                .filter(|ids| !ids.iter().any(|id| id == "worker-b"))
        },
    );
    let dropped_after = partitioned_at.elapsed();
    net.heal();
    let healed_at = Instant::now();
    eventually(
        "worker-b to register again after the heal",
        Duration::from_secs(60),
        || {
            listed()
                .ok()
                .filter(|ids| ids.iter().any(|id| id == "worker-b"))
        },
    );
    let back_after = healed_at.elapsed();

    let exit = bench
        .wait_exit(Duration::from_secs(150))
        .expect("the bench to end within its time limit");
    let report: Value = bench
        .stdout_lines()
        .iter()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("completed").is_some())
        })
        .unwrap_or_else(|| {
            panic!(
                "no JSON report from the bench (exit {exit}):\n{}",
                bench.log_tail(40)
            )
        });

    let mut pin_records = Vec::new();
    for id in &pins {
        let record = eventually("the pin task to end", Duration::from_secs(60), || {
            status(id).filter(|r| r["status"] != "running" && r["status"] != "pending")
        });
        pin_records.push(record);
    }
    let pin_b = pin_records
        .iter()
        .find(|r| r["task_id"] == pinned_on_b.as_str())
        .expect("the record of the pin on worker-b");
    // worker-b keeps running the cut-off nap and delivers its result once
    // healed: the coordinator must ignore it. Wait (bounded) to see it.
    let late_result_seen = (0..75).any(|_| {
        let seen = coordinator.output_lines().iter().any(|l| {
            l.contains(pinned_on_b.as_str())
                && (l.contains("stale") || l.contains("no longer active"))
        });
        if !seen {
            thread::sleep(Duration::from_millis(200));
        }
        seen
    });
    let expect: Vec<(String, Vec<String>)> = pin_records
        .iter()
        .filter(|r| r["status"] == "completed")
        .filter_map(|r| {
            r["task_id"]
                .as_str()
                .map(|id| (id.to_owned(), vec!["nap".to_owned()]))
        })
        .collect();
    let applied = AppliedCheck::run(&[&coordinator], &expect, true);
    println!(
        "CHAOS scenario=netns-partition bench_tasks={BENCH_TASKS} bench_completed={} \
         bench_errors={} bench_p99_ms={} pins={} pin_b_attempts={} pin_b_workers={} \
         late_result_seen={late_result_seen} partition_to_dropped_ms={} heal_to_registered_ms={} \
         {} wall_s={:.1}",
        report["completed"],
        report["errors"],
        report["latency_ms"]["p99"],
        pins.len(),
        pin_b["subtasks"][0]["attempts"],
        pin_b["subtasks"][0]["workers_tried"],
        dropped_after.as_millis(),
        back_after.as_millis(),
        applied.fields(),
        started.elapsed().as_secs_f64()
    );

    assert_eq!(
        (&report["completed"], &report["errors"]),
        (&json!(BENCH_TASKS), &json!(0)),
        "bench report: {report}"
    );
    assert!(exit.success(), "the bench exited with {exit}: {report}");
    let mut wrong_pins = String::new();
    for record in &pin_records {
        if record["status"] != "completed" || record["result"] != json!({"slept_ms": PIN_MS}) {
            let _ = writeln!(wrong_pins, "{record}");
        }
    }
    assert!(
        wrong_pins.is_empty(),
        "pin tasks did not complete correctly:\n{wrong_pins}"
    );
    assert!(
        worker_b.is_running(),
        "worker-b must survive the partition:\n{}",
        worker_b.log_tail(40)
    );
    for process in [&etcd, &coordinator, &worker_a, &worker_b, &bench] {
        process.assert_no_panic();
    }
    applied.assert_clean();
}
