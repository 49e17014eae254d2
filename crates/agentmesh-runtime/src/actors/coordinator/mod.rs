//! The coordinator actor: owns every unfinished task it accepted, places
//! ready subtasks on workers, applies their results and persists each
//! change of a task record.
//!
//! ```text
//! TaskService ──Submit/Cancel (call)──▶ Coordinator (actor)
//! registry membership watch ──cast──▶      │  ready queue (bounded) → WorkerPool::select
//! worker results (mailbox) ──cast──▶       │──subtask.assign──▶ Router ──▶ worker
//!                                          └──record changes──▶ RecordWriter ──▶ registry
//!                                  Retention (per term) ──delete ended──▶ registry
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

mod deadlines;
pub mod events;
mod hub;
mod idempotency;
pub mod leadership;
mod messages;
mod pools;
mod reactive;
mod recovery;
mod request_memory;
pub mod retention;
mod schedule;
mod thinking;
mod writer;

use crate::llm::Providers;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::breaker::Blame;
use agentmesh_core::task::record::{Applied, AppliedResult, StoppedAttempt};
use agentmesh_core::task::{BudgetError, Status, TaskRecord};
use agentmesh_core::{AgentId, Membership, TaskId};
use agentmesh_proto::v1::{Envelope, EventAck, SubtaskCancel, SubtaskResult, subtask_result};
use agentmesh_registry::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, info, warn};

pub use hub::{EarlyWatch, RecordHub, Subscription};
pub use messages::{
    Accepted, CoordinatorArguments, CoordinatorHandle, CoordinatorMessage, SubmitError,
};
use pools::Pools;
use schedule::ReadyQueue;
pub use writer::RecordWriter;
use writer::RefusedRecord;

use crate::convert;
use crate::metrics::{self, RefusalReason};
use crate::node::config::CoordinatorConfig;
use crate::support::clock::now_ms;
use crate::support::feeds;
use crate::telemetry::{self, TraceParent};
use crate::transport::{self, Backlog, DeliverError, Inbound, Inbox, Kind, Router};

/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(200);
/// How often recorded reputations are read into worker scores.
const REPUTATION_REFRESH: Duration = Duration::from_secs(5);
/// How long a coordinator that stops leading waits for its queued records.
const WRITER_FINISH_TIMEOUT: Duration = Duration::from_secs(10);

pub struct CoordinatorState {
    id: AgentId,
    backlog: Arc<Backlog>,
    router: Arc<Router>,
    registry: Arc<dyn Registry>,
    hub: RecordHub,
    /// Present while this coordinator leads; its writer is fenced with the
    /// term's leadership.
    writer: Option<RecordWriter>,
    /// Present while this coordinator leads: deletes ended tasks' records
    /// after retention, fenced with the term.
    retention: Option<retention::Retention>,
    /// The current term (the fence revision); assignments carry it and
    /// results of other terms are stale.
    term: i64,
    config: CoordinatorConfig,
    /// Unfinished tasks this coordinator owns.
    tasks: HashMap<TaskId, TaskRecord>,
    /// The trace of each unfinished task submitted here while tracing is
    /// on (empty otherwise): the Submit call's span, which the task's
    /// placements, results and record writes continue long after Submit
    /// returned. In memory only: a task resumed by another leader starts
    /// a trace of its own there.
    traces: HashMap<TaskId, TraceParent>,
    /// Subtasks ready to run, waiting for a worker with room, per client.
    queue: ReadyQueue,
    /// Subtasks to retry, by the time their backoff ends.
    backoff: BTreeMap<u64, Vec<(TaskId, usize)>>,
    /// When the queue depth was last published (`agentmesh_subtasks_queued`).
    queue_published_ms: u64,
    /// For timers that wake the actor when a backoff ends.
    myself: ActorRef<CoordinatorMessage>,
    pool: Pools,
    /// The latest membership, to start a fresh pool from.
    membership: Arc<Membership>,
    /// Idempotency keys of the tasks accepted in this term.
    recent_keys: idempotency::RecentKeys,
    /// The node's models: asked off the actor (a call spawned and its
    /// answer sent back as a message), never awaited in a handler.
    providers: Providers,
    /// Requests whose planner was asked in this term (see [`thinking`]).
    thinking: HashSet<TaskId>,
    /// Present while this coordinator leads: routes events to handlers
    /// (docs/events.md).
    events: Option<events::EventRouterHandle>,
    /// Answers of reactive tasks, for their repeats (see [`reactive`]).
    cache: reactive::Cache,
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
        let background = &args.background;
        feeds::follow(
            background,
            membership,
            myself.clone(),
            CoordinatorMessage::Membership,
        );
        feeds::broadcast(
            background,
            args.router.broken_links(),
            myself.clone(),
            CoordinatorMessage::LinkBroken,
        );
        let registry = args.registry.clone();
        let events = myself.clone();
        background.spawn("reputation refresh", async move {
            let policy = agentmesh_core::reputation::ReputationPolicy::default();
            let mut interval = tokio::time::interval(REPUTATION_REFRESH);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                let Ok(scores) =
                    crate::support::reputation::scores(registry.as_ref(), &policy).await
                else {
                    continue;
                };
                metrics::set_reputations(&scores);
                let means = crate::support::reputation::means(&scores);
                if events.cast(CoordinatorMessage::Reputations(means)).is_err() {
                    break;
                }
            }
        });
        feeds::every(background, TICK, myself.clone(), || {
            CoordinatorMessage::Tick
        });
        let cache = reactive::Cache::new(args.config.response_cache);
        Ok(CoordinatorState {
            id: args.id,
            backlog: args.backlog,
            router: args.router,
            registry: args.registry,
            hub: args.hub,
            writer: None,
            retention: None,
            term: 0,
            config: args.config,
            tasks: HashMap::new(),
            traces: HashMap::new(),
            queue: ReadyQueue::default(),
            backoff: BTreeMap::new(),
            queue_published_ms: 0,
            myself: myself.clone(),
            pool,
            membership: view,
            recent_keys: Default::default(),
            providers: args.providers,
            thinking: HashSet::new(),
            events: None,
            cache,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CoordinatorMessage::Submit {
                record,
                trace,
                reply,
            } => {
                let span = telemetry::child_of(
                    &trace,
                    crate::span!("coordinator.accept", task.id = %record.id, agent.id = %state.id),
                );
                state.submit(record, trace, reply).instrument(span).await
            }
            CoordinatorMessage::Cancel {
                task,
                reason,
                reply,
            } => {
                let status = state.cancel(&task, reason).await;
                let _ = reply.send(status);
            }
            CoordinatorMessage::Result(result, trace) => {
                state.backlog.leave();
                let span = telemetry::child_of(
                    &trace,
                    crate::span!(
                        "subtask.result",
                        task.id = %result.task_id,
                        subtask.id = %result.subtask_id,
                        attempt = result.attempt,
                        agent.id = %result.worker_id,
                    ),
                );
                state.apply_result(result).instrument(span).await
            }
            CoordinatorMessage::DeliveryFailed {
                task,
                subtask,
                attempt,
                error,
                unreachable,
                not_leader,
            } => {
                if unreachable {
                    state.trip_worker_of(&task, subtask);
                }
                if not_leader {
                    // A verdict on the election view of the agent's node,
                    // not on the subtask or the agent: this coordinator
                    // leads (or will learn soon that it does not).
                    state.excuse(&task, subtask, attempt);
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
            CoordinatorMessage::Tick => {
                state.check_deadlines().await;
                state.publish_queue_depth(now_ms());
            }
            CoordinatorMessage::RecordRefused(refused) => state.record_refused(refused).await,
            CoordinatorMessage::PublishEvent {
                draft,
                source,
                reply,
            } => match &state.events {
                Some(events) => events.send(events::Command::Publish {
                    draft,
                    source,
                    reply: Some(reply),
                }),
                None => {
                    let _ = reply.send(Err(events::PublishError::NotLeader));
                }
            },
            CoordinatorMessage::EventAck(ack) => {
                state.backlog.leave();
                match &state.events {
                    Some(events) => events.send(events::Command::Ack(ack)),
                    None => {
                        debug!(event_id = %ack.event_id, "event ack while not leading: ignored")
                    }
                }
            }
            CoordinatorMessage::Thought {
                task,
                term,
                thought,
            } => state.thought(task, term, thought).await,
            CoordinatorMessage::Lead { leadership, tasks } => state.lead(leadership, tasks).await,
            CoordinatorMessage::Resumed { task, term } => state.resumed(&task, term),
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
    async fn submit(
        &mut self,
        record: TaskRecord,
        trace: TraceParent,
        reply: RpcReplyPort<Result<Accepted, SubmitError>>,
    ) {
        if self.writer.is_none() {
            let _ = reply.send(Err(SubmitError::NotLeader));
            return;
        }
        if let Some(known) = self.recent_keys.find(self.term, &record) {
            let _ = reply.send(Err(SubmitError::Duplicate {
                task: known.task,
                same_document: known.document_sha256 == record.document_sha256,
            }));
            return;
        }
        // Refused before anything is accepted: a record that cannot be
        // written would leave the client waiting until its deadline.
        if let Some(reason) = self.registry.store_full().borrow().clone() {
            let _ = reply.send(Err(SubmitError::StoreFull(reason)));
            return;
        }
        if !*self.registry.store_reachable().borrow() {
            let _ = reply.send(Err(SubmitError::StoreUnreachable));
            return;
        }
        // A record that is over its budget before any output could never
        // be written, let alone grow.
        let bytes = record.encoded_len();
        if let Err(BudgetError::RecordTooLarge { bytes, budget }) =
            self.config.records.check_record(bytes)
        {
            let _ = reply.send(Err(SubmitError::RecordTooLarge { bytes, budget }));
            return;
        }
        // A repeat of a reactive request is answered here, before any
        // work is queued: its one record write (the answer, final) is all
        // that stands between the submit and the reply.
        if let Some(answered) = self.cache.answer(&record, now_ms()) {
            self.accept_answered(answered, trace, reply).await;
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
        if let Err(refusal) = self.check_client(&record, ready.len()) {
            let _ = reply.send(Err(refusal.into()));
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
        self.recent_keys.accepted(self.term, &record);
        info!(task_id = %id, name = %record.name, subtasks = record.subtasks.len(), "task accepted");
        metrics::task_submitted(record.pattern);
        let (ack, durable) = oneshot::channel();
        if let Some(writer) = &self.writer {
            writer
                .write(Arc::new(record.clone()), bytes, Some(ack))
                .instrument(crate::span!("record.write", task.id = %id, bytes))
                .await;
        }
        if trace.is_some() {
            self.traces.insert(id.clone(), trace);
        }
        self.queue
            .extend(ready.into_iter().map(|i| (id.clone(), i)));
        self.tasks.insert(id.clone(), record);
        // The caller waits for durability, not the actor.
        let _ = reply.send(Ok(Accepted {
            id,
            durable,
            store_full: self.registry.store_full(),
        }));
    }

    /// Accepts a task answered at submit (from the response cache): its
    /// record is final, so it is written once and never queued.
    async fn accept_answered(
        &mut self,
        record: TaskRecord,
        trace: TraceParent,
        reply: RpcReplyPort<Result<Accepted, SubmitError>>,
    ) {
        let id = record.id.clone();
        let bytes = record.encoded_len();
        if let Err(BudgetError::RecordTooLarge { bytes, budget }) =
            self.config.records.check_record(bytes)
        {
            let _ = reply.send(Err(SubmitError::RecordTooLarge { bytes, budget }));
            return;
        }
        self.recent_keys.accepted(self.term, &record);
        info!(task_id = %id, name = %record.name, "task answered from the response cache");
        metrics::task_submitted(record.pattern);
        metrics::task_finished(record.pattern, record.status);
        let (ack, durable) = oneshot::channel();
        if let Some(writer) = &self.writer {
            let span =
                telemetry::child_of(&trace, crate::span!("record.write", task.id = %id, bytes));
            writer
                .write(Arc::new(record), bytes, Some(ack))
                .instrument(span)
                .await;
        }
        let _ = reply.send(Ok(Accepted {
            id,
            durable,
            store_full: self.registry.store_full(),
        }));
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
        let worker = AgentId::new(result.worker_id.clone());
        if let Some(assigned) = record.assigned_elsewhere(index, result.attempt, &worker) {
            warn!(
                task_id = %id,
                subtask = %result.subtask_id,
                attempt = result.attempt,
                claimed = %worker,
                assigned = %assigned,
                "ignored a result from a worker the attempt was not given to"
            );
            metrics::refused_envelope(Kind::SubtaskResult.as_str(), RefusalReason::NotOwner);
            return;
        }
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
        let subtask = &record.subtasks[index];
        if subtask.attempts == result.attempt
            && let Some(started) = subtask.started_ms
        {
            // The current attempt: dispatch to result, as this
            // coordinator saw it.
            let elapsed = Duration::from_millis(now.saturating_sub(started));
            metrics::subtask_duration(&subtask.capability, elapsed);
        }
        let by = AppliedResult {
            term: result.term,
            attempt: result.attempt,
            worker: worker.clone(),
        };
        let blame = convert::blame(&result);
        let (applied, stopped, success) = match checked_outcome(&self.config, &result) {
            Ok(output) => {
                emit(
                    self.events.as_ref(),
                    &self.config,
                    &output,
                    &id,
                    &result.subtask_id,
                );
                (
                    record.complete(index, by, output, now),
                    Vec::new(),
                    Some(true),
                )
            }
            Err(error) if blame == Some(Blame::Worker) => {
                // The worker's fault: its breaker counts it, and another
                // worker may succeed (docs/guarantees.md, "Whose fault").
                self.pool.fault(&worker, now);
                self.retry(&id, index, result.attempt, error).await;
                return;
            }
            Err(error) => {
                let (applied, stopped) = record.fail(index, by, error, now);
                // The task's own input failed it: no verdict on the worker.
                let verdict = (blame != Some(Blame::Task)).then_some(false);
                (applied, stopped, verdict)
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
        self.pool.release(&worker, success, now);
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

    /// Persists the task's record; forgets the task once it has ended. A
    /// record over its budget is never written: its task fails, and the
    /// record, shrunk to fit, says why.
    async fn finish_change(&mut self, id: &TaskId) -> Option<Status> {
        let record = self.tasks.get_mut(id)?;
        let mut bytes = record.encoded_len();
        if self.config.records.check_record(bytes).is_err() {
            let stopped = record.fail_over_budget(bytes, &self.config.records, now_ms());
            warn!(task_id = %id, bytes, budget = self.config.records.max_record_bytes, "task record over its budget: task failed");
            bytes = record.encoded_len();
            self.stop_attempts(id, stopped);
        }
        let record = self.tasks.get(id)?;
        let status = record.status;
        let pattern = record.pattern;
        if let Some(writer) = &self.writer {
            let span = crate::span!("record.write", task.id = %id, bytes, status = %status);
            if !span.is_none() && tracing::Span::current().is_none() {
                self.trace_of(id).adopt(&span);
            }
            writer
                .write(Arc::new(record.clone()), bytes, None)
                .instrument(span)
                .await;
        }
        if status.is_terminal() {
            self.cache.remember(record, now_ms());
            request_memory::remember(
                self.router.background(),
                &self.registry,
                &self.providers,
                record,
                self.config.requests.memory_size,
                now_ms(),
            );
            info!(task_id = %id, %status, "task finished");
            metrics::task_finished(pattern, status);
            self.tasks.remove(id);
            self.traces.remove(id);
            self.thinking.remove(id);
            self.queue.task_ended(id);
        } else {
            self.think(id);
        }
        Some(status)
    }

    /// The trace task `id` continues; none when tracing is off or the task
    /// was not submitted here.
    fn trace_of(&self, id: &TaskId) -> TraceParent {
        self.traces.get(id).cloned().unwrap_or_default()
    }

    /// The registry refused a record of this task for good: the task fails
    /// with the reason, and its record, stripped to a skeleton, is written
    /// instead. A refused final record is stripped the same way; a
    /// skeleton refused in turn is left (the task's last durable record
    /// stands, and a later leader fails it the same way).
    async fn record_refused(&mut self, refused: RefusedRecord) {
        let id = refused.record.id.clone();
        let reason = format!(
            "task record of {} bytes could not be written: {}",
            refused.bytes, refused.error
        );
        if let Some(record) = self.tasks.get_mut(&id) {
            let stopped = record.fail_unwritable(&reason, now_ms());
            warn!(task_id = %id, bytes = refused.bytes, error = %refused.error, "task record refused by the registry: task failed");
            self.stop_attempts(&id, stopped);
            self.finish_change(&id).await;
            return;
        }
        if !refused.record.status.is_terminal() || refused.record.is_stripped() {
            warn!(task_id = %id, error = %refused.error, "task record refused by the registry; not this coordinator's to fail");
            return;
        }
        let mut record = (*refused.record).clone();
        record.fail_unwritable(&reason, now_ms());
        let bytes = record.encoded_len();
        warn!(task_id = %id, bytes = refused.bytes, error = %refused.error, "final task record refused by the registry: writing it stripped");
        if let Some(writer) = &self.writer {
            writer.write(Arc::new(record), bytes, None).await;
        }
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
            // Attempts this coordinator tracks were all started in its
            // term: those of earlier terms are restarted on takeover.
            term: self.term,
        };
        let envelope = transport::envelope(&self.id, worker, Kind::SubtaskCancel, cancel);
        transport::tell(&self.router, envelope);
    }
}

/// Publishes the events a subtask's output asks for (its `emit` field),
/// all or none; a refused emit is logged and does not fail the subtask.
fn emit(
    events: Option<&events::EventRouterHandle>,
    config: &CoordinatorConfig,
    output: &serde_json::Value,
    task: &TaskId,
    subtask: &str,
) {
    let Some(events) = events else { return };
    match agentmesh_core::events::emits_of(output, &config.events.limits) {
        Ok(drafts) => {
            for draft in drafts {
                events.send(events::Command::Publish {
                    draft,
                    source: format!("task:{task}/{subtask}"),
                    reply: None,
                });
            }
        }
        Err(error) => {
            warn!(task_id = %task, subtask, %error, "events emitted by a subtask refused");
        }
    }
}

/// The output a worker reported, or why it is not applied: an error
/// of the tool, or an output over the per-subtask cap, which is
/// refused before it is parsed.
fn checked_outcome(
    config: &CoordinatorConfig,
    result: &SubtaskResult,
) -> Result<serde_json::Value, String> {
    if let Some(subtask_result::Outcome::OutputJson(json)) = &result.outcome {
        config
            .records
            .check_output(&result.subtask_id, json.len())
            .map_err(|e| e.to_string())?;
    }
    convert::outcome(result, "worker")
}

/// What the coordinator accepts from its mailbox: results.
#[derive(Debug)]
pub struct CoordinatorInbox;

impl Inbox for CoordinatorInbox {
    type Message = CoordinatorMessage;

    fn accepts(&self) -> &'static [Kind] {
        &[Kind::SubtaskResult, Kind::EventAck]
    }

    /// A result speaks for the worker it names: the envelope must come
    /// from that worker (whose certificate the mailbox has checked), or it
    /// is refused with `PERMISSION_DENIED`.
    fn decode(
        &self,
        kind: Kind,
        envelope: Envelope,
    ) -> Result<Inbound<CoordinatorMessage>, DeliverError> {
        if kind == Kind::EventAck {
            // An ack speaks for the agent it names, like a result.
            let ack: EventAck = transport::decode(&envelope)?;
            if ack.agent != envelope.from {
                return Err(DeliverError::ForgedSender {
                    claimed: AgentId::new(ack.agent),
                    authenticated: envelope.from,
                });
            }
            return Ok(Inbound::Message(CoordinatorMessage::EventAck(ack)));
        }
        let result: SubtaskResult = transport::decode(&envelope)?;
        if result.worker_id != envelope.from {
            // The mailbox logs and counts the refusal, with the identity
            // the sender's certificate carries.
            debug!(
                claimed = %result.worker_id,
                authenticated = %envelope.from,
                task_id = %result.task_id,
                subtask = %result.subtask_id,
                "refused a result in the name of another worker"
            );
            return Err(DeliverError::ForgedSender {
                claimed: AgentId::new(result.worker_id),
                authenticated: envelope.from,
            });
        }
        Ok(Inbound::Message(CoordinatorMessage::Result(
            result,
            TraceParent::from_map(&envelope.trace_context),
        )))
    }
}
