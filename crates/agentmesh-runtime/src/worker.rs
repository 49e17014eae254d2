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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agentmesh_core::AgentId;
use agentmesh_proto::v1::{
    Envelope, SubtaskAssignment, SubtaskCancel, SubtaskResult, subtask_result,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::mailbox::{self, DeliverError, LocalMailbox, Router, kind};
use crate::tools::{ToolBox, ToolError};

/// One attempt of one subtask.
type AttemptKey = (String, String, u32);

#[derive(Debug)]
pub enum WorkerMessage {
    Assign {
        coordinator: AgentId,
        assignment: SubtaskAssignment,
    },
    Cancel(SubtaskCancel),
    Finished(AttemptKey),
}

pub struct WorkerArguments {
    pub id: AgentId,
    pub tools: ToolBox,
    pub router: Arc<Router>,
    pub max_concurrency: u32,
    /// Attempts running now; read by the node to publish the worker's load.
    pub load: Arc<AtomicU32>,
}

pub struct WorkerState {
    id: AgentId,
    tools: ToolBox,
    router: Arc<Router>,
    max_concurrency: u32,
    load: Arc<AtomicU32>,
    running: HashMap<AttemptKey, AbortHandle>,
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
            tools: args.tools,
            router: args.router,
            max_concurrency: args.max_concurrency,
            load: args.load,
            running: HashMap::new(),
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
            } => state.start(myself, coordinator, assignment),
            WorkerMessage::Cancel(cancel) => {
                let key = (cancel.task_id, cancel.subtask_id, cancel.attempt);
                if let Some(handle) = state.running.remove(&key) {
                    debug!(task_id = %key.0, subtask = %key.1, attempt = key.2, "cancelling attempt");
                    handle.abort();
                }
            }
            WorkerMessage::Finished(key) => {
                state.running.remove(&key);
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
        for handle in state.running.values() {
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
    ) {
        let key = (
            assignment.task_id.clone(),
            assignment.subtask_id.clone(),
            assignment.attempt,
        );
        let refusal = if self.running.len() >= self.max_concurrency as usize {
            Some(format!(
                "worker '{}' is at its max concurrency of {}",
                self.id, self.max_concurrency
            ))
        } else if !self.tools.has(&assignment.capability) {
            Some(format!(
                "worker '{}' does not offer capability '{}'",
                self.id, assignment.capability
            ))
        } else {
            None
        };
        let router = self.router.clone();
        let id = self.id.clone();
        if let Some(error) = refusal {
            tokio::spawn(async move {
                let result = result_of(&id, &assignment, Err(error), Duration::ZERO);
                report(&router, &id, &coordinator, result).await;
            });
            return;
        }
        let tools = self.tools.clone();
        let finished = key.clone();
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let outcome = run(&tools, &assignment).await;
            let result = result_of(&id, &assignment, outcome, started.elapsed());
            // Bookkeeping first, so the slot is free before the coordinator
            // can hand it out again.
            let _ = myself.cast(WorkerMessage::Finished(finished));
            report(&router, &id, &coordinator, result).await;
        });
        self.running.insert(key, handle.abort_handle());
    }
}

async fn run(tools: &ToolBox, assignment: &SubtaskAssignment) -> Result<String, String> {
    let tool = tools
        .get(&assignment.capability)
        .ok_or_else(|| format!("no tool '{}'", assignment.capability))?;
    let input = serde_json::from_str(&assignment.input_json)
        .map_err(|e| format!("input is not valid JSON: {e}"))?;
    let call = tool.call(input);
    let outcome = if assignment.timeout_ms > 0 {
        let limit = Duration::from_millis(assignment.timeout_ms);
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(ToolError::Failed(format!(
                "timed out after {} ms",
                assignment.timeout_ms
            )))
        })
    } else {
        call.await
    };
    let output = outcome.map_err(|e| e.to_string())?;
    serde_json::to_string(&output).map_err(|e| format!("output is not serializable: {e}"))
}

fn result_of(
    worker: &AgentId,
    assignment: &SubtaskAssignment,
    outcome: Result<String, String>,
    elapsed: Duration,
) -> SubtaskResult {
    SubtaskResult {
        task_id: assignment.task_id.clone(),
        subtask_id: assignment.subtask_id.clone(),
        attempt: assignment.attempt,
        worker_id: worker.to_string(),
        outcome: Some(match outcome {
            Ok(output) => subtask_result::Outcome::OutputJson(output),
            Err(error) => subtask_result::Outcome::Error(error),
        }),
        elapsed_us: elapsed.as_micros() as u64,
    }
}

async fn report(router: &Router, from: &AgentId, coordinator: &AgentId, result: SubtaskResult) {
    let envelope = mailbox::envelope(from, coordinator, kind::SUBTASK_RESULT, result);
    if let Err(error) = router.send(envelope).await {
        // Nothing re-sends it: the attempt stays running at the coordinator
        // until this worker leaves the cluster or the task times out.
        warn!(%error, coordinator = %coordinator, "could not report subtask result");
    }
}

/// The worker's entry in its node's mailbox.
pub struct WorkerMailbox(pub ActorRef<WorkerMessage>);

impl LocalMailbox for WorkerMailbox {
    fn deliver(&self, envelope: Envelope) -> Result<(), DeliverError> {
        let message = match envelope.kind.as_str() {
            kind::SUBTASK_ASSIGN => WorkerMessage::Assign {
                coordinator: AgentId::new(envelope.from.clone()),
                assignment: mailbox::decode(&envelope)?,
            },
            kind::SUBTASK_CANCEL => WorkerMessage::Cancel(mailbox::decode(&envelope)?),
            _ => {
                return Err(mailbox::unknown_kind(
                    &envelope,
                    &[kind::SUBTASK_ASSIGN, kind::SUBTASK_CANCEL],
                ));
            }
        };
        self.0
            .cast(message)
            .map_err(|_| DeliverError::Stopped(AgentId::new(envelope.to)))
    }
}
