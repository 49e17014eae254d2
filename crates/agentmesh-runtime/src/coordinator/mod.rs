//! The coordinator actor: owns every unfinished task it accepted, places
//! ready subtasks on workers, applies their results and persists each
//! change of a task record.
//!
//! ```text
//! TaskService ──Submit/Cancel (call)──▶ Coordinator (actor)
//! registry membership watch ──cast──▶      │  ready queue (bounded) → WorkerPool::select
//! worker results (mailbox) ──cast──▶       │──subtask.assign──▶ Router ──▶ worker
//!                                          └──record changes──▶ RecordWriter ──▶ registry
//! ```
//!
//! All decisions are made by the pure state machine of
//! `agentmesh_core::task::TaskRecord` and by `WorkerPool`; this actor only
//! feeds them events and carries out what they decide.
//!
//! Only the elected leader owns tasks (see [`leadership`]): on
//! [`CoordinatorMessage::Lead`] it takes over every unfinished record from
//! the registry, and on [`CoordinatorMessage::Relinquish`] it forgets them
//! all, for the next leader to resume from their last durable records.

mod hub;
pub mod leadership;
mod pools;
mod writer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::retry::exhausted_message;
use agentmesh_core::scheduling::WorkerState;
use agentmesh_core::task::record::{Applied, StoppedAttempt};
use agentmesh_core::task::{Status, TaskRecord};
use agentmesh_core::{AgentId, Membership, TaskId};
use agentmesh_proto::v1::{
    Envelope, SubtaskAssignment, SubtaskCancel, SubtaskResult, subtask_result,
};
use agentmesh_registry::Leadership;
use agentmesh_registry::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

pub use hub::{EarlyWatch, RecordHub, Subscription};
use pools::Pools;
pub use writer::RecordWriter;

use crate::clock::now_ms;
use crate::config::{ATTEMPT_GRACE, CoordinatorConfig};
use crate::feeds;
use crate::mailbox::{self, Backlog, BrokenLink, DeliverError, LocalMailbox, Router, kind};

/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(200);
/// How often recorded reputations are read into worker scores.
const REPUTATION_REFRESH: Duration = Duration::from_secs(5);
/// How long a coordinator that stops leading waits for its queued records.
const WRITER_FINISH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubmitError {
    #[error(
        "coordinator queue is full: {queued} subtasks waiting and {ready} more from this task would exceed the limit of {limit}; retry later"
    )]
    QueueFull {
        queued: usize,
        ready: usize,
        limit: usize,
    },
    /// Retrying cannot help: the task alone is wider than the queue.
    #[error(
        "task has {ready} subtasks ready at once, more than the coordinator's queue limit of {limit} (--max-queued-subtasks)"
    )]
    TooWide { ready: usize, limit: usize },
    #[error("coordinator is at its limit of {limit} unfinished tasks; retry later")]
    TooManyTasks { limit: usize },
    #[error("task record could not be persisted: {0}")]
    NotPersisted(String),
    /// Leadership changed hands between routing the request and handling
    /// it; the client retries and reaches the new leader.
    #[error("this coordinator is not the leader (any more); retry")]
    NotLeader,
}

/// A task the coordinator has taken on; `durable` hears when its first
/// record is in the registry (or why it could not be written). Until then
/// nobody must be told the task was accepted.
#[derive(Debug)]
pub struct Accepted {
    pub id: TaskId,
    pub durable: oneshot::Receiver<Result<(), String>>,
}

impl Accepted {
    /// Waits until the task's first record is durable.
    pub async fn durable(self) -> Result<TaskId, SubmitError> {
        match self.durable.await {
            Ok(Ok(())) => Ok(self.id),
            Ok(Err(error)) => Err(SubmitError::NotPersisted(error)),
            Err(_) => Err(SubmitError::NotPersisted(
                "record writer has stopped".into(),
            )),
        }
    }
}

#[derive(Debug)]
pub enum CoordinatorMessage {
    Submit {
        record: TaskRecord,
        reply: RpcReplyPort<Result<Accepted, SubmitError>>,
    },
    /// Replies with the task's status after the call, or `None` when this
    /// coordinator does not own an unfinished task of that id.
    Cancel {
        task: TaskId,
        reason: String,
        reply: RpcReplyPort<Option<Status>>,
    },
    Result(SubtaskResult),
    DeliveryFailed {
        task: TaskId,
        subtask: usize,
        attempt: u32,
        error: String,
        /// The worker's node could not be reached at all (not merely busy).
        unreachable: bool,
    },
    Membership(Arc<Membership>),
    /// The connection to another node failed: attempts running there may
    /// be lost with it.
    LinkBroken(BrokenLink),
    /// Every agent's recorded reputation, refreshed periodically.
    Reputations(HashMap<AgentId, f64>),
    /// The scheduler's view of every worker, for `agents`.
    Workers(RpcReplyPort<Vec<WorkerState>>),
    Tick,
    /// This coordinator won the election: resume `tasks`, every unfinished
    /// record in the registry, and write fenced with `leadership`.
    Lead {
        leadership: Leadership,
        tasks: Vec<TaskRecord>,
    },
    /// Leadership is over: forget every task. With `done`, the caller is
    /// stepping down and hears once the records already queued are written.
    Relinquish {
        done: Option<RpcReplyPort<()>>,
    },
}

pub struct CoordinatorArguments {
    pub id: AgentId,
    pub registry: Arc<dyn Registry>,
    pub router: Arc<Router>,
    pub config: CoordinatorConfig,
    /// Where durable record changes are announced in this process.
    pub hub: RecordHub,
    /// Shared with the coordinator's mailbox entry.
    pub backlog: Arc<Backlog>,
}

pub struct CoordinatorState {
    id: AgentId,
    backlog: Arc<Backlog>,
    router: Arc<Router>,
    registry: Arc<dyn Registry>,
    hub: RecordHub,
    /// Present while this coordinator leads; its writer is fenced with the
    /// term's leadership.
    writer: Option<RecordWriter>,
    /// The current term (the fence revision); assignments carry it and
    /// results of other terms are stale.
    term: i64,
    config: CoordinatorConfig,
    /// Unfinished tasks this coordinator owns.
    tasks: HashMap<TaskId, TaskRecord>,
    /// Subtasks ready to run, waiting for a worker with room.
    queue: VecDeque<(TaskId, usize)>,
    /// Subtasks to retry, by the time their backoff ends.
    backoff: BTreeMap<u64, Vec<(TaskId, usize)>>,
    /// For timers that wake the actor when a backoff ends.
    myself: ActorRef<CoordinatorMessage>,
    pool: Pools,
    /// The latest membership, to start a fresh pool from.
    membership: Arc<Membership>,
}

#[derive(Debug, Default)]
pub struct Coordinator;

impl Actor for Coordinator {
    type Msg = CoordinatorMessage;
    type State = CoordinatorState;
    type Arguments = CoordinatorArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CoordinatorArguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let membership = args.registry.membership();
        let view = membership.borrow().clone();
        let pool = Pools::new(&args.config, &view);
        feeds::follow(membership, myself.clone(), CoordinatorMessage::Membership);
        let mut broken = args.router.broken_links();
        let events = myself.clone();
        tokio::spawn(async move {
            loop {
                match broken.recv().await {
                    Ok(link) => {
                        if events.cast(CoordinatorMessage::LinkBroken(link)).is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let registry = args.registry.clone();
        let events = myself.clone();
        tokio::spawn(async move {
            let policy = agentmesh_core::reputation::ReputationPolicy::default();
            let mut interval = tokio::time::interval(REPUTATION_REFRESH);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                let Ok(scores) = crate::reputation::mean_scores(registry.as_ref(), &policy).await
                else {
                    continue;
                };
                if events
                    .cast(CoordinatorMessage::Reputations(scores))
                    .is_err()
                {
                    break;
                }
            }
        });
        feeds::every(TICK, myself.clone(), || CoordinatorMessage::Tick);
        Ok(CoordinatorState {
            id: args.id,
            backlog: args.backlog,
            router: args.router,
            registry: args.registry,
            hub: args.hub,
            writer: None,
            term: 0,
            config: args.config,
            tasks: HashMap::new(),
            queue: VecDeque::new(),
            backoff: BTreeMap::new(),
            myself: myself.clone(),
            pool,
            membership: view,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CoordinatorMessage::Submit { record, reply } => state.submit(record, reply).await,
            CoordinatorMessage::Cancel {
                task,
                reason,
                reply,
            } => {
                let status = state.cancel(&task, reason).await;
                let _ = reply.send(status);
            }
            CoordinatorMessage::Result(result) => {
                state.backlog.leave();
                state.apply_result(result).await
            }
            CoordinatorMessage::DeliveryFailed {
                task,
                subtask,
                attempt,
                error,
                unreachable,
            } => {
                if unreachable {
                    state.trip_worker_of(&task, subtask);
                }
                state.retry(&task, subtask, attempt, error).await
            }
            CoordinatorMessage::Membership(view) => state.membership_changed(&view).await,
            CoordinatorMessage::LinkBroken(link) => state.link_broken(link).await,
            CoordinatorMessage::Reputations(scores) => {
                for agent in state.membership.agents.keys() {
                    state.pool.set_reputation(agent, scores.get(agent).copied());
                }
            }
            CoordinatorMessage::Workers(reply) => {
                let _ = reply.send(state.pool.agents().cloned().collect());
            }
            CoordinatorMessage::Tick => state.check_deadlines().await,
            CoordinatorMessage::Lead { leadership, tasks } => state.lead(leadership, tasks).await,
            CoordinatorMessage::Relinquish { done } => {
                state.relinquish().await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
        state.schedule(&myself).await;
        Ok(())
    }
}

impl CoordinatorState {
    /// Takes over as leader: every unfinished task is resumed from its
    /// durable record — completed subtasks stay done, running ones start
    /// again (a restart, outside their retry budget) — and owned from now
    /// on. Resumed work is never refused for lack of room: it was accepted
    /// before, so the queue bounds may be exceeded until it drains.
    async fn lead(&mut self, leadership: Leadership, tasks: Vec<TaskRecord>) {
        if self.writer.is_some() {
            self.relinquish().await;
        }
        let fence = leadership.fence.revision;
        self.term = fence;
        self.writer = Some(RecordWriter::spawn(
            self.registry.clone(),
            leadership,
            self.config.write_batch,
            self.config.write_concurrency,
            self.hub.clone(),
        ));
        let now = now_ms();
        let resumed = tasks.len();
        let mut restarted = 0;
        for mut record in tasks {
            let running = record
                .subtasks
                .iter()
                .filter(|s| s.status == Status::Running)
                .count();
            restarted += running;
            let ready = record.resume("the coordinator leader changed; started again", now);
            let id = record.id.clone();
            self.queue
                .extend(ready.into_iter().map(|i| (id.clone(), i)));
            if running > 0 {
                self.tasks.insert(id.clone(), record);
                self.finish_change(&id).await;
            } else {
                // Unchanged and durable as it is.
                self.hub.publish(Arc::new(record.clone()));
                self.tasks.insert(id, record);
            }
        }
        info!(
            fence,
            tasks = resumed,
            restarted_subtasks = restarted,
            at_ms = now,
            "coordinator leadership won: resuming unfinished tasks"
        );
    }

    /// Stops leading: forgets every task, its queue and its placements.
    /// Waits for the records already handed to the writer (written, or
    /// refused by the fence) before the hub forgets, so no record of the
    /// old term lands in the hub afterwards.
    async fn relinquish(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        let dropped = self.tasks.len();
        self.tasks.clear();
        self.queue.clear();
        self.backoff.clear();
        self.pool = Pools::new(&self.config, &self.membership);
        writer.finish(WRITER_FINISH_TIMEOUT).await;
        self.hub.forget_unfinished();
        info!(
            tasks = dropped,
            "no longer the coordinator leader: tasks left to the next leader"
        );
    }

    async fn submit(
        &mut self,
        record: TaskRecord,
        reply: RpcReplyPort<Result<Accepted, SubmitError>>,
    ) {
        if self.writer.is_none() {
            let _ = reply.send(Err(SubmitError::NotLeader));
            return;
        }
        if self.tasks.len() >= self.config.max_active_tasks {
            let _ = reply.send(Err(SubmitError::TooManyTasks {
                limit: self.config.max_active_tasks,
            }));
            return;
        }
        let ready = record.ready();
        let limit = self.config.max_queued_subtasks;
        if ready.len() > limit {
            let _ = reply.send(Err(SubmitError::TooWide {
                ready: ready.len(),
                limit,
            }));
            return;
        }
        if self.queue.len() + ready.len() > limit {
            let _ = reply.send(Err(SubmitError::QueueFull {
                queued: self.queue.len(),
                ready: ready.len(),
                limit,
            }));
            return;
        }
        let id = record.id.clone();
        info!(task_id = %id, name = %record.name, subtasks = record.subtasks.len(), "task accepted");
        let (ack, durable) = oneshot::channel();
        if let Some(writer) = &self.writer {
            writer.write(Arc::new(record.clone()), Some(ack)).await;
        }
        self.queue
            .extend(ready.into_iter().map(|i| (id.clone(), i)));
        self.tasks.insert(id.clone(), record);
        // The caller waits for durability, not the actor.
        let _ = reply.send(Ok(Accepted { id, durable }));
    }

    async fn cancel(&mut self, id: &TaskId, reason: String) -> Option<Status> {
        let record = self.tasks.get_mut(id)?;
        let stopped = record.cancel(reason, now_ms());
        info!(task_id = %id, "task cancelled");
        self.stop_attempts(id, stopped);
        self.finish_change(id).await
    }

    async fn apply_result(&mut self, result: SubtaskResult) {
        let id = TaskId::new(result.task_id.clone());
        if result.term != self.term {
            debug!(task_id = %id, subtask = %result.subtask_id, attempt = result.attempt, term = result.term, "ignoring result of an earlier term");
            return;
        }
        let Some(record) = self.tasks.get_mut(&id) else {
            debug!(task_id = %id, "result for a task that is no longer active");
            return;
        };
        let Some(index) = record.position(&result.subtask_id) else {
            warn!(task_id = %id, subtask = %result.subtask_id, "result for an unknown subtask");
            return;
        };
        if result.handed_back {
            // Not a verdict on the subtask or the worker: place it
            // elsewhere, without spending the retry budget.
            record.excuse(index, result.attempt);
            let reason = match result.outcome {
                Some(subtask_result::Outcome::Error(reason)) => reason,
                _ => format!("worker '{}' handed the attempt back", result.worker_id),
            };
            self.retry(&id, index, result.attempt, reason).await;
            return;
        }
        let now = now_ms();
        let worker = AgentId::new(result.worker_id.clone());
        let (applied, stopped, success) = match result.outcome {
            Some(subtask_result::Outcome::OutputJson(json)) => match serde_json::from_str(&json) {
                Ok(output) => (
                    record.complete(index, result.attempt, output, now),
                    Vec::new(),
                    true,
                ),
                Err(e) => {
                    let (applied, stopped) = record.fail(
                        index,
                        result.attempt,
                        format!("worker returned invalid JSON: {e}"),
                        now,
                    );
                    (applied, stopped, false)
                }
            },
            Some(subtask_result::Outcome::Error(error)) => {
                let (applied, stopped) = record.fail(index, result.attempt, error, now);
                (applied, stopped, false)
            }
            None => {
                let (applied, stopped) = record.fail(
                    index,
                    result.attempt,
                    "worker sent a result without outcome".into(),
                    now,
                );
                (applied, stopped, false)
            }
        };
        if applied == Applied::Stale {
            debug!(task_id = %id, subtask = %result.subtask_id, attempt = result.attempt, "ignoring stale result");
            return;
        }
        debug!(task_id = %id, subtask = %result.subtask_id, attempt = result.attempt, term = result.term, "result applied");
        if !result.consensus_json.is_empty() {
            // How the peers agreed, kept with the output it explains.
            record.subtasks[index].consensus = serde_json::from_str(&result.consensus_json).ok();
        }
        self.pool.release(&worker, Some(success), now);
        let completed_id = result.subtask_id;
        let newly_ready: Vec<usize> = record
            .ready()
            .into_iter()
            .filter(|&i| record.subtasks[i].depends_on.contains(&completed_id))
            .collect();
        self.queue
            .extend(newly_ready.into_iter().map(|i| (id.clone(), i)));
        self.stop_attempts(&id, stopped);
        self.finish_change(&id).await;
    }

    /// Starts the subtask again elsewhere after a backoff, or fails the task
    /// once the retry budget is spent, naming every worker tried.
    async fn retry(&mut self, id: &TaskId, subtask: usize, attempt: u32, error: String) {
        let Some(record) = self.tasks.get_mut(id) else {
            return;
        };
        let worker = record.subtasks[subtask].worker.clone();
        let now = now_ms();
        if !self.config.retry.allows(record.budgeted_attempts(subtask)) {
            let s = &record.subtasks[subtask];
            let message = exhausted_message(&s.id, attempt, &s.tried, &error);
            let (applied, stopped) = record.fail(subtask, attempt, message, now);
            if applied == Applied::Changed {
                worker.iter().for_each(|w| self.pool.release(w, None, now));
                self.stop_attempts(id, stopped);
                self.finish_change(id).await;
            }
            return;
        }
        if record.requeue(subtask, attempt, error.clone(), now) == Applied::Changed {
            let delay = self.config.retry.delay_ms(attempt, crate::random::unit());
            warn!(task_id = %id, subtask = %record.subtasks[subtask].id, attempt, %error, delay_ms = delay, "re-dispatching subtask");
            worker.iter().for_each(|w| self.pool.release(w, None, now));
            self.backoff
                .entry(now + delay)
                .or_default()
                .push((id.clone(), subtask));
            let wake = self.myself.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let _ = wake.cast(CoordinatorMessage::Tick);
            });
            self.finish_change(id).await;
        }
    }

    /// Moves retries whose backoff has passed to the front of the queue.
    fn release_backoffs(&mut self, now: u64) {
        let later = self.backoff.split_off(&(now + 1));
        let due = std::mem::replace(&mut self.backoff, later);
        for (_, subtasks) in due.into_iter().rev() {
            for entry in subtasks.into_iter().rev() {
                self.queue.push_front(entry);
            }
        }
    }

    async fn membership_changed(&mut self, view: &Arc<Membership>) {
        self.membership = view.clone();
        let gone = self.pool.sync(view);
        if gone.is_empty() {
            return;
        }
        let lost = self.running_on(|worker| gone.contains(worker));
        for (task, subtask, attempt, worker) in lost {
            self.retry(
                &task,
                subtask,
                attempt,
                format!("worker '{worker}' left the cluster"),
            )
            .await;
        }
    }

    /// Starts again elsewhere every attempt running on a node whose
    /// connection failed — typically a killed process, noticed long before
    /// its lease runs out. Should the node be alive after all, its late
    /// results are stale and ignored.
    async fn link_broken(&mut self, link: BrokenLink) {
        let workers: Vec<&AgentId> = self
            .membership
            .agents
            .values()
            .filter(|agent| agent.endpoint == link.endpoint)
            .map(|agent| &agent.id)
            .collect();
        if workers.is_empty() {
            return;
        }
        let now = now_ms();
        let workers: Vec<AgentId> = workers.into_iter().cloned().collect();
        for worker in &workers {
            self.pool.trip(worker, now);
        }
        let lost = self.running_on(|worker| workers.contains(worker));
        warn!(
            endpoint = %link.endpoint,
            reason = %link.reason,
            workers = workers.len(),
            attempts = lost.len(),
            "link to a node broke: its workers sit out a cool-down, their attempts start elsewhere"
        );
        for (task, subtask, attempt, worker) in lost {
            let reason = format!(
                "connection to worker '{worker}' at {} failed: {}",
                link.endpoint, link.reason
            );
            self.retry(&task, subtask, attempt, reason).await;
        }
    }

    /// Takes the worker of a subtask's current attempt out of placement
    /// for a breaker cool-down: it could not be reached.
    fn trip_worker_of(&mut self, task: &TaskId, subtask: usize) {
        let worker = self
            .tasks
            .get(task)
            .and_then(|record| record.subtasks[subtask].worker.clone());
        if let Some(worker) = worker {
            warn!(worker = %worker, "worker unreachable: out of placement for a cool-down");
            self.pool.trip(&worker, now_ms());
        }
    }

    /// The running attempts on the workers `on` selects.
    fn running_on(&self, on: impl Fn(&AgentId) -> bool) -> Vec<(TaskId, usize, u32, AgentId)> {
        self.tasks
            .values()
            .flat_map(|record| {
                record.subtasks.iter().enumerate().filter_map(|(i, s)| {
                    let worker = s.worker.as_ref()?;
                    (s.status == Status::Running && on(worker))
                        .then(|| (record.id.clone(), i, s.attempts, worker.clone()))
                })
            })
            .collect()
    }

    /// Ends tasks past their time limit, and starts again elsewhere the
    /// attempts that went too long without a result.
    async fn check_deadlines(&mut self) {
        let now = now_ms();
        let expired: Vec<(TaskId, u64)> = self
            .tasks
            .values()
            .filter_map(|r| {
                let timeout = r.timeout_ms?;
                (now >= r.created_ms + timeout).then(|| (r.id.clone(), timeout))
            })
            .collect();
        for (id, timeout) in expired {
            if let Some(record) = self.tasks.get_mut(&id) {
                let stopped = record.time_out(format!("task timed out after {timeout} ms"), now);
                self.stop_attempts(&id, stopped);
                self.finish_change(&id).await;
            }
        }
        let default_limit = self.config.attempt_timeout.as_millis() as u64;
        let overdue: Vec<(TaskId, usize, u32, AgentId, u64)> = self
            .tasks
            .values()
            .flat_map(|record| {
                record
                    .subtasks
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, s)| {
                        let limit = s
                            .timeout_ms
                            .map_or(default_limit, |t| t + ATTEMPT_GRACE.as_millis() as u64);
                        let started = s.started_ms?;
                        let worker = s.worker.clone()?;
                        (s.status == Status::Running && now >= started + limit)
                            .then(|| (record.id.clone(), i, s.attempts, worker, limit))
                    })
            })
            .collect();
        for (task, subtask, attempt, worker, limit) in overdue {
            self.send_cancel(
                &task,
                subtask,
                attempt,
                &worker,
                "no result in time; started elsewhere",
            );
            let reason = format!("no result from worker '{worker}' within {limit} ms");
            self.retry(&task, subtask, attempt, reason).await;
        }
    }

    /// Persists the task's record; forgets the task once it has ended.
    async fn finish_change(&mut self, id: &TaskId) -> Option<Status> {
        let record = self.tasks.get(id)?;
        let status = record.status;
        if let Some(writer) = &self.writer {
            writer.write(Arc::new(record.clone()), None).await;
        }
        if status.is_terminal() {
            info!(task_id = %id, %status, "task finished");
            self.tasks.remove(id);
        }
        Some(status)
    }

    fn stop_attempts(&mut self, id: &TaskId, stopped: Vec<StoppedAttempt>) {
        let reason = match self.tasks.get(id) {
            Some(record) => record.error.clone().unwrap_or_default(),
            None => return,
        };
        for stop in stopped {
            self.pool.release(&stop.worker, None, now_ms());
            self.send_cancel(id, stop.subtask, stop.attempt, &stop.worker, &reason);
        }
    }

    /// Tells a worker to stop an attempt; best effort, off the actor.
    fn send_cancel(
        &self,
        id: &TaskId,
        subtask: usize,
        attempt: u32,
        worker: &AgentId,
        reason: &str,
    ) {
        let Some(record) = self.tasks.get(id) else {
            return;
        };
        let cancel = SubtaskCancel {
            task_id: id.to_string(),
            subtask_id: record.subtasks[subtask].id.clone(),
            attempt,
            reason: reason.to_owned(),
        };
        let envelope = mailbox::envelope(&self.id, worker, kind::SUBTASK_CANCEL, cancel);
        mailbox::tell(&self.router, envelope);
    }

    /// Places every ready subtask that has a worker with room; the rest keep
    /// their place in the queue.
    async fn schedule(&mut self, myself: &ActorRef<CoordinatorMessage>) {
        self.release_backoffs(now_ms());
        let mut waiting = VecDeque::new();
        while let Some((id, index)) = self.queue.pop_front() {
            let Some(record) = self.tasks.get_mut(&id) else {
                continue;
            };
            if record.subtasks[index].status != Status::Pending {
                continue;
            }
            let Some(worker) = self
                .pool
                .for_pattern(record.pattern)
                .select(&record.subtasks[index].capability, now_ms())
            else {
                waiting.push_back((id, index));
                continue;
            };
            let now = now_ms();
            let input = match record.resolved_input(index) {
                Ok(input) => input,
                Err(error) => {
                    let stopped = record.fail_unstarted(index, error.to_string(), now);
                    self.stop_attempts(&id, stopped);
                    self.finish_change(&id).await;
                    continue;
                }
            };
            let attempt = record.start_attempt(index, worker.clone(), now);
            self.pool.acquire(&worker, now);
            let subtask = &record.subtasks[index];
            let assignment = SubtaskAssignment {
                task_id: id.to_string(),
                subtask_id: subtask.id.clone(),
                attempt,
                capability: subtask.capability.clone(),
                input_json: input.to_string(),
                timeout_ms: subtask.timeout_ms.unwrap_or(0),
                term: self.term,
                redundancy: record.redundancy,
                consensus: record.consensus.clone().unwrap_or_default(),
            };
            debug!(task_id = %id, subtask = %subtask.id, attempt, term = self.term, worker = %worker, "dispatching");
            let envelope = mailbox::envelope(&self.id, &worker, kind::SUBTASK_ASSIGN, assignment);
            self.finish_change(&id).await;
            dispatch(
                self.router.clone(),
                myself.clone(),
                envelope,
                id,
                index,
                attempt,
            );
        }
        self.queue = waiting;
    }
}

/// Sends an assignment without holding up the actor; a failed delivery
/// comes back as a message so the subtask is retried elsewhere.
fn dispatch(
    router: Arc<Router>,
    coordinator: ActorRef<CoordinatorMessage>,
    envelope: Envelope,
    task: TaskId,
    subtask: usize,
    attempt: u32,
) {
    tokio::spawn(async move {
        if let Err(error) = router.send(envelope).await {
            let _ = coordinator.cast(CoordinatorMessage::DeliveryFailed {
                task,
                subtask,
                attempt,
                unreachable: matches!(error, DeliverError::Unreachable { .. }),
                error: error.to_string(),
            });
        }
    });
}

/// The coordinator's entry in its node's mailbox; `Backlog` bounds the
/// results waiting for the actor.
pub struct CoordinatorMailbox(pub ActorRef<CoordinatorMessage>, pub Arc<Backlog>);

impl LocalMailbox for CoordinatorMailbox {
    fn deliver(&self, envelope: Envelope) -> Result<(), DeliverError> {
        if envelope.kind != kind::SUBTASK_RESULT {
            return Err(mailbox::unknown_kind(&envelope, &[kind::SUBTASK_RESULT]));
        }
        let result = mailbox::decode(&envelope)?;
        self.1.enter(&envelope.to)?;
        self.0
            .cast(CoordinatorMessage::Result(result))
            .map_err(|_| {
                self.1.leave();
                DeliverError::Stopped(AgentId::new(envelope.to))
            })
    }
}
