//! The load driver of the chaos scenarios: submits tasks whose results are
//! unique and checked (task `i` sleeps, then computes `nap + i`), retrying
//! each submit across the coordinator endpoints until a submit window
//! closes, and polls every accepted task until it ends. It runs on its own
//! thread with its own tokio runtime while the test thread breaks things.
//!
//! Every record it reads — each poll, and the final pass that asks every
//! endpoint again — is also handed to [`EndsSeen`], which checks that a
//! subtask's end never changes once seen.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use agentmesh_proto::v1 as pb;
use futures::stream::{self, StreamExt};
use pb::task_service_client::TaskServiceClient;
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::checks::{EndsSeen, first};
use crate::support::cluster::now_ms;
use crate::support::eventually;
use crate::support::grpc::{CALL_TIMEOUT, authorized, connect};

/// One Submit call, connection included; past it the outcome is unknown.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Cadence of the poll loop: a pause between two rounds of `Get` over the
/// unfinished tasks.
const POLL_ROUND: Duration = Duration::from_millis(400);

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
// The load driver
// ---------------------------------------------------------------------------

/// What the driver submits and how.
#[derive(Clone, Debug)]
pub struct Load {
    pub tasks: usize,
    pub nap_ms: u64,
    /// Submits started per second (at most `in_flight` at once).
    pub rate: f64,
    pub in_flight: usize,
    /// Task `i` goes first to endpoint `i % n`; otherwise to the endpoint
    /// that answered last.
    pub round_robin: bool,
    /// Submits are retried until this long after the start.
    pub submit_window: Duration,
    /// Tasks are polled until this long after the last submit ended.
    pub settle: Duration,
}

impl Load {
    /// The load of the fail-over scenarios: `tasks` naps of 500 ms, 20
    /// submits a second round-robin over every coordinator, 32 in flight.
    pub fn failover(tasks: usize, submit_window: Duration, settle: Duration) -> Self {
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
pub struct Progress {
    pub accepted: AtomicUsize,
    pub terminal: AtomicUsize,
    /// Set when the driver has returned its summary.
    pub finished: AtomicBool,
}

impl Progress {
    /// Waits (60 s at most) until a third of `tasks` are accepted, or the
    /// driver has given up.
    pub fn wait_for_a_third_accepted(&self, tasks: usize) {
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
pub struct AcceptedTask {
    pub index: usize,
    pub id: String,
    /// Epoch ms when Submit returned the id.
    pub accepted_ms: u64,
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
    /// Every record read, checked as it comes.
    ends: Mutex<EndsSeen>,
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
pub struct Summary {
    tasks: usize,
    pub accepted: Vec<AcceptedTask>,
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
    pub records: HashMap<String, pb::TaskRecord>,
    /// Subtask ends as first seen, and every later read that contradicts
    /// one.
    pub ends: EndsSeen,
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
    pub fn fields(&self) -> String {
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
    pub fn assert_all_completed(&self) {
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
pub fn drive(endpoints: Vec<String>, load: Load) -> (Arc<Progress>, JoinHandle<Summary>) {
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
                ends: Mutex::new(EndsSeen::default()),
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
        summary.ends = std::mem::take(&mut *self.ends.lock().unwrap());
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
            ..Default::default()
        };
        let mut client = TaskServiceClient::new(channel);
        let call = client.submit(authorized(request));
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
            let call = client.get(authorized(request));
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(record)) => {
                    let record = record.into_inner();
                    let source = &self.endpoints.urls[endpoint];
                    self.ends.lock().unwrap().observe(&record, source);
                    return Some(record);
                }
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
                let again = tokio::time::timeout(CALL_TIMEOUT, client.get(authorized(request)))
                    .await
                    .ok()?
                    .ok()?
                    .into_inner();
                let result = |r: &pb::TaskRecord| {
                    serde_json::from_str::<Value>(&r.result_json).unwrap_or(Value::Null)
                };
                let url = &self.endpoints.urls[endpoint];
                self.ends.lock().unwrap().observe(&again, url);
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

fn is_terminal(status: pb::TaskStatus) -> bool {
    matches!(
        status,
        pb::TaskStatus::Completed | pb::TaskStatus::Failed | pb::TaskStatus::Cancelled
    )
}
