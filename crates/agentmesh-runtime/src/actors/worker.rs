//! The worker actor: runs subtasks with its tools, at most
//! `max_concurrency` at once, and reports each result to the coordinator
//! that assigned it.
//!
//! ```text
//! Worker (actor) ── spawns one tokio task per running attempt
//!    ▲  subtask.assign / subtask.cancel            │ subtask.result
//!    └──────────── Router ◀── AgentMailbox ◀───────┴──▶ Router ──▶ coordinator
//! ```
//!
//! Tool calls run outside the actor so a slow tool never delays the
//! mailbox; cancelling an attempt aborts its task, which drops the tool's
//! future.
//!
//! An attempt the worker will not run to its end — it is at its limit, or
//! draining for shutdown — goes back to the coordinator as *handed back*,
//! which places it elsewhere without counting a failure. A result the
//! coordinator cannot be reached for is sent again with backoff.
//!
//! Every tool runs through [`ToolBox::run`], so its output is capped at
//! `--max-output-bytes` as it is serialized and a panicking tool is an
//! internal error rather than an attempt that never answers. A failure
//! carries its [`Blame`]: the task's input, or the worker itself; only the
//! latter counts against the worker's breaker.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agentmesh_core::breaker::Blame;
use agentmesh_core::events::{HandlerAction, HandlerSpec, render_template, tool_input};
use agentmesh_core::{AgentId, AttemptId};
use agentmesh_proto::v1::{
    Envelope, EventAck, EventDelivery, SubtaskAssignment, SubtaskCancel, SubtaskResult,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::AbortHandle;
use tracing::{Instrument, debug, info, warn};

use super::authority::Authority;
use super::report::report;
use crate::actors::coordinator::events::{MAX_HANDLER_DOCUMENT_BYTES, event_of, handler_for};
use crate::actors::faults::Faults;
use crate::convert::{self, subtask_result as result_of};
use crate::metrics::{self, RefusalReason};
use crate::telemetry::{self, TraceParent};
use crate::tools::{ToolBox, ToolError};
use crate::transport::{self, Backlog, DeliverError, Inbound, Inbox, Kind, Router};

#[derive(Debug)]
pub enum WorkerMessage {
    Assign {
        coordinator: AgentId,
        assignment: SubtaskAssignment,
        /// The assignment's delivery, which the tool call continues.
        trace: TraceParent,
    },
    /// A cancellation, from `from`: only the agent that assigned the
    /// attempt may cancel it.
    Cancel {
        from: AgentId,
        cancel: SubtaskCancel,
    },
    Finished(AttemptId),
    /// An event for one of this agent's handlers, from the leader.
    Event {
        from: AgentId,
        delivery: EventDelivery,
    },
    /// A handler run ended.
    EventFinished,
    /// Stop taking new attempts (they are handed back); running ones go on.
    /// Replies with the number still running.
    Drain(RpcReplyPort<usize>),
    /// Abort every running attempt and hand it back; replies once the
    /// coordinators have been told (or could not be reached).
    HandBack(RpcReplyPort<()>),
}

pub struct WorkerArguments {
    pub id: AgentId,
    pub tools: ToolBox,
    pub router: Arc<Router>,
    pub max_concurrency: u32,
    /// Attempts running now; read by the node to publish the worker's load.
    pub load: Arc<AtomicU32>,
    /// Shared with the worker's mailbox entry.
    pub backlog: Arc<Backlog>,
    /// Misbehaviour injected on purpose (tests only; empty by default).
    pub faults: Faults,
    /// The event handlers this agent declared (`--event-handler`).
    pub handlers: Vec<HandlerSpec>,
}

pub struct WorkerState {
    id: AgentId,
    backlog: Arc<Backlog>,
    tools: ToolBox,
    router: Arc<Router>,
    max_concurrency: u32,
    load: Arc<AtomicU32>,
    /// Running attempts and the coordinator each one reports to.
    running: HashMap<AttemptId, (AbortHandle, AgentId)>,
    draining: bool,
    faults: Arc<Faults>,
    handlers: Vec<HandlerSpec>,
    /// Handler runs in progress; at most `max_concurrency`.
    events_running: u32,
}

#[derive(Debug, Default)]
pub struct Worker;

impl Actor for Worker {
    type Msg = WorkerMessage;
    type State = WorkerState;
    type Arguments = WorkerArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WorkerArguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(WorkerState {
            id: args.id,
            backlog: args.backlog,
            tools: args.tools,
            router: args.router,
            max_concurrency: args.max_concurrency,
            load: args.load,
            running: HashMap::new(),
            draining: false,
            faults: Arc::new(args.faults),
            handlers: args.handlers,
            events_running: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMessage::Assign {
                coordinator,
                assignment,
                trace,
            } => {
                state.backlog.leave();
                state.start(myself, coordinator, assignment, trace)
            }
            WorkerMessage::Cancel { from, cancel } => {
                state.backlog.leave();
                let attempt = convert::cancelled_attempt(&cancel);
                match state.running.get(&attempt) {
                    Some((_, assigner)) if *assigner != from => {
                        warn!(
                            %attempt,
                            claimed = %from,
                            assigned_by = %assigner,
                            "ignored a cancel from an agent that did not assign the attempt"
                        );
                        metrics::refused_envelope(
                            Kind::SubtaskCancel.as_str(),
                            RefusalReason::NotOwner,
                        );
                    }
                    Some(_) => {
                        if let Some((handle, _)) = state.running.remove(&attempt) {
                            debug!(%attempt, "cancelling attempt");
                            handle.abort();
                        }
                    }
                    None => {}
                }
            }
            WorkerMessage::Finished(key) => {
                state.running.remove(&key);
            }
            WorkerMessage::Event { from, delivery } => {
                state.backlog.leave();
                state.handle_event(myself, from, delivery);
            }
            WorkerMessage::EventFinished => {
                state.events_running = state.events_running.saturating_sub(1);
            }
            WorkerMessage::Drain(reply) => {
                state.draining = true;
                let _ = reply.send(state.running.len());
            }
            WorkerMessage::HandBack(reply) => {
                let reports = state.hand_back_all();
                tokio::spawn(async move {
                    futures::future::join_all(reports).await;
                    let _ = reply.send(());
                });
            }
        }
        state
            .load
            .store(state.running.len() as u32, Ordering::Relaxed);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for (handle, _) in state.running.values() {
            handle.abort();
        }
        Ok(())
    }
}

impl WorkerState {
    fn start(
        &mut self,
        myself: ActorRef<WorkerMessage>,
        coordinator: AgentId,
        assignment: SubtaskAssignment,
        trace: TraceParent,
    ) {
        let key = convert::assigned_attempt(&assignment);
        let span = telemetry::child_of(
            &trace,
            crate::span!(
                "tool.call",
                task.id = %assignment.task_id,
                subtask.id = %assignment.subtask_id,
                attempt = assignment.attempt,
                agent.id = %self.id,
                capability = %assignment.capability,
            ),
        );
        let router = self.router.clone();
        let id = self.id.clone();
        let hand_back = if self.draining {
            Some(format!("worker '{}' is draining", self.id))
        } else if self.running.len() >= self.max_concurrency as usize {
            Some(format!(
                "worker '{}' is at its max concurrency of {}",
                self.id, self.max_concurrency
            ))
        } else {
            None
        };
        if let Some(reason) = hand_back {
            let result = handed_back(&id, &assignment, reason);
            tokio::spawn(
                async move { report(&router, &id, &coordinator, result).await }.instrument(span),
            );
            return;
        }
        if !self.tools.has(&assignment.capability) {
            let error = format!(
                "worker '{}' does not offer capability '{}'",
                self.id, assignment.capability
            );
            tokio::spawn(
                async move {
                    // A stale registration placed it here; another worker
                    // may offer it.
                    let result = convert::failed_result(
                        &id,
                        &assignment,
                        error,
                        Blame::Worker,
                        Duration::ZERO,
                    );
                    report(&router, &id, &coordinator, result).await;
                }
                .instrument(span),
            );
            return;
        }
        let tools = self.tools.clone();
        let faults = self.faults.clone();
        let finished = key.clone();
        let reports_to = coordinator.clone();
        let handle = tokio::spawn(
            async move {
                let started = Instant::now();
                let outcome = run_with_faults(&tools, &assignment, &faults).await;
                let result = convert::tool_result(&id, &assignment, outcome, started.elapsed());
                // Bookkeeping first, so the slot is free before the
                // coordinator can hand it out again.
                let _ = myself.cast(WorkerMessage::Finished(finished));
                report(&router, &id, &coordinator, result).await;
            }
            .instrument(span),
        );
        self.running
            .insert(key, (handle.abort_handle(), reports_to));
    }

    /// Runs the handler `delivery` names and acknowledges to `leader`:
    /// a `tool:` handler after its tool answered, a `task:` handler with
    /// its task file filled in, for the leader to submit.
    fn handle_event(
        &mut self,
        myself: ActorRef<WorkerMessage>,
        leader: AgentId,
        delivery: EventDelivery,
    ) {
        let mut ack = EventAck {
            event_id: delivery.event_id.clone(),
            subscription: delivery.subscription.clone(),
            attempt: delivery.attempt,
            agent: self.id.to_string(),
            ..Default::default()
        };
        let action = handler_for(&self.handlers, &delivery);
        let refusal = if action.is_none() {
            Some(format!(
                "agent '{}' declares no handler '{}' for type '{}'",
                self.id, delivery.subscription, delivery.r#type
            ))
        } else if self.draining {
            Some(format!("agent '{}' is draining", self.id))
        } else if self.events_running >= self.max_concurrency.max(1) {
            Some(format!(
                "agent '{}' is running {} event handlers, its max concurrency",
                self.id, self.events_running
            ))
        } else {
            None
        };
        let router = self.router.clone();
        let id = self.id.clone();
        if let Some(error) = refusal {
            ack.error = error;
            let envelope = transport::envelope(&id, &leader, Kind::EventAck, ack);
            transport::tell(&router, envelope);
            return;
        }
        let Some(action) = action else { return };
        self.events_running += 1;
        let tools = self.tools.clone();
        tokio::spawn(async move {
            let event = event_of(&delivery);
            match action {
                HandlerAction::Tool(capability) => {
                    match tools.run(&capability, tool_input(&event)).await {
                        Ok(_) => ack.ok = true,
                        Err(error) => ack.error = format!("tool '{capability}' failed: {error}"),
                    }
                }
                HandlerAction::Task(path) => match read_template(&path).await {
                    Ok(template) => {
                        ack.ok = true;
                        ack.task_document = render_template(&template, &event);
                    }
                    Err(error) => ack.error = error,
                },
            }
            let _ = myself.cast(WorkerMessage::EventFinished);
            info!(
                event_id = %ack.event_id,
                subscription = %ack.subscription,
                attempt = ack.attempt,
                ok = ack.ok,
                error = %ack.error,
                "event handler ran"
            );
            let envelope = transport::envelope(&id, &leader, Kind::EventAck, ack);
            if let Err(error) = router.send(envelope).await {
                // The leader's ack timeout sends the event again.
                debug!(%error, "event ack not delivered");
            }
        });
    }

    /// Aborts every running attempt; the returned futures tell each
    /// attempt's coordinator that it was handed back.
    fn hand_back_all(&mut self) -> Vec<impl std::future::Future<Output = ()> + use<>> {
        self.running
            .drain()
            .map(|(attempt, (handle, coordinator))| {
                handle.abort();
                let assignment = convert::bare_assignment(&attempt);
                let reason = format!(
                    "worker '{}' stopped before the attempt finished (drain grace period over)",
                    self.id
                );
                let result = handed_back(&self.id, &assignment, reason);
                let router = self.router.clone();
                let id = self.id.clone();
                async move { report(&router, &id, &coordinator, result).await }
            })
            .collect()
    }
}

fn handed_back(worker: &AgentId, assignment: &SubtaskAssignment, reason: String) -> SubtaskResult {
    SubtaskResult {
        handed_back: true,
        ..result_of(worker, assignment, Err(reason), Duration::ZERO)
    }
}

/// A `task:` handler's task file, bounded before it is read whole.
async fn read_template(path: &str) -> Result<String, String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let refuse = |why: String| format!("task file '{path}' of the handler: {why}");
        let meta = std::fs::metadata(&path).map_err(|e| refuse(e.to_string()))?;
        if meta.len() > MAX_HANDLER_DOCUMENT_BYTES as u64 {
            return Err(refuse(format!(
                "{} bytes, over the limit of {MAX_HANDLER_DOCUMENT_BYTES}",
                meta.len()
            )));
        }
        std::fs::read_to_string(&path).map_err(|e| refuse(e.to_string()))
    })
    .await
    .map_err(|e| format!("reading the handler's task file failed: {e}"))?
}

/// [`run`], misbehaving as `faults` say.
async fn run_with_faults(
    tools: &ToolBox,
    assignment: &SubtaskAssignment,
    faults: &Faults,
) -> Result<String, ToolError> {
    if faults.is_empty() {
        return run(tools, assignment).await;
    }
    tokio::time::sleep(faults.delay()).await;
    if faults.fails() {
        // Stands for a broken worker, so the breaker sees it.
        return Err(ToolError::Internal(
            "injected fault: the attempt failed on purpose (--fault fail)".into(),
        ));
    }
    let output = run(tools, assignment).await?;
    match serde_json::from_str(&output) {
        Ok(value) => Ok(faults.corrupt(value).to_string()),
        Err(_) => Ok(output),
    }
}

/// Runs the assignment's tool within the subtask's own time limit. A
/// time-out is the task's: it chose the limit, and the same work would
/// take as long elsewhere (a worker that hangs is caught by the
/// coordinator's attempt timeout instead).
async fn run(tools: &ToolBox, assignment: &SubtaskAssignment) -> Result<String, ToolError> {
    let input = serde_json::from_str(&assignment.input_json)
        .map_err(|e| ToolError::InvalidInput(format!("input is not valid JSON: {e}")))?;
    let call = tools.run(&assignment.capability, input);
    if assignment.timeout_ms == 0 {
        return call.await;
    }
    let limit = Duration::from_millis(assignment.timeout_ms);
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(ToolError::Failed(format!(
            "timed out after {} ms",
            assignment.timeout_ms
        )))
    })
}

/// What a worker accepts from its mailbox: assignments and cancellations,
/// only from agents that hand out work to workers (the leader coordinator,
/// peers leading a consensus round, tactical levels); see [`Authority`].
/// The mailbox has already checked that the sender is who it says.
#[derive(Debug)]
pub struct WorkerInbox {
    authority: Authority,
}

impl WorkerInbox {
    pub fn new(authority: Authority) -> Self {
        Self { authority }
    }
}

impl Inbox for WorkerInbox {
    type Message = WorkerMessage;

    fn accepts(&self) -> &'static [Kind] {
        &[Kind::SubtaskAssign, Kind::SubtaskCancel, Kind::EventDeliver]
    }

    fn decode(
        &self,
        kind: Kind,
        envelope: Envelope,
    ) -> Result<Inbound<WorkerMessage>, DeliverError> {
        let sender = AgentId::new(envelope.from.as_str());
        if kind == Kind::EventDeliver {
            // Only the leader coordinator routes events (docs/events.md).
            self.authority.leader_only(&sender, kind)?;
            return Ok(Inbound::Message(WorkerMessage::Event {
                from: sender,
                delivery: transport::decode(&envelope)?,
            }));
        }
        self.authority.assigner(&sender, kind)?;
        Ok(Inbound::Message(match kind {
            Kind::SubtaskAssign => WorkerMessage::Assign {
                assignment: transport::decode(&envelope)?,
                coordinator: sender,
                trace: TraceParent::from_map(&envelope.trace_context),
            },
            _ => WorkerMessage::Cancel {
                from: sender,
                cancel: transport::decode(&envelope)?,
            },
        }))
    }
}
