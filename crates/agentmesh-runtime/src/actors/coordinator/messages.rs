//! What the coordinator is told and answers, and how the node's services
//! hold it.

use crate::llm::Providers;
use std::collections::HashMap;
use std::sync::Arc;

use agentmesh_core::fairness::ClientRefusal;
use agentmesh_core::scheduling::WorkerState;
use agentmesh_core::task::{Status, TaskRecord};
use agentmesh_core::{AgentId, Membership, TaskId};
use agentmesh_proto::v1::SubtaskResult;
use agentmesh_registry::{Leadership, Registry};
use ractor::{ActorRef, RpcReplyPort};
use thiserror::Error;
use tokio::sync::oneshot;

use super::hub::RecordHub;
use super::writer::RefusedRecord;
use crate::node::config::CoordinatorConfig;
use crate::support::background::Background;
use crate::telemetry::TraceParent;
use crate::transport::{Backlog, BrokenLink, Router};

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
    /// Over what one client may hold (`--max-*-per-client`).
    #[error(transparent)]
    Client(#[from] ClientRefusal),
    #[error("task record could not be persisted: {0}")]
    NotPersisted(String),
    /// Retrying cannot help: the task's record, before any output, is
    /// already over its budget.
    #[error(
        "task record would be {bytes} bytes before any output, over the record budget of {budget} bytes (--max-record-bytes); make the inputs smaller"
    )]
    RecordTooLarge { bytes: usize, budget: usize },
    /// etcd refuses writes for lack of space (its NOSPACE alarm): no task
    /// is accepted until an operator frees space.
    #[error(
        "task refused: etcd is out of space and refuses writes ({0}); an operator must free \
         space (compact, defragment) and disarm the NOSPACE alarm"
    )]
    StoreFull(String),
    /// etcd cannot be reached: no task record can be written.
    #[error("task refused: etcd cannot be reached (this node could not refresh its lease); retry")]
    StoreUnreachable,
    /// Leadership changed hands between routing the request and handling
    /// it; the client retries and reaches the new leader.
    #[error("this coordinator is not the leader (any more); retry")]
    NotLeader,
    /// The submit's idempotency key was accepted in this term already,
    /// for `task`: the caller answers with that task (or refuses the
    /// submit when the documents differ) instead of creating another.
    #[error("idempotency key already used for task {task}")]
    Duplicate { task: TaskId, same_document: bool },
}

/// A task the coordinator has taken on; `durable` hears when its first
/// record is in the registry (or why it could not be written). Until then
/// nobody must be told the task was accepted.
#[derive(Debug)]
pub struct Accepted {
    pub id: TaskId,
    pub durable: oneshot::Receiver<Result<(), String>>,
    /// The store's space refusals (see `TaskStore::store_full`): a write
    /// refused for lack of space is retried for as long as that lasts, so
    /// the caller stops waiting once it starts.
    pub store_full: tokio::sync::watch::Receiver<Option<String>>,
}

impl Accepted {
    /// Waits until the task's first record is durable, or until etcd
    /// refuses writes for lack of space, whichever comes first.
    pub async fn durable(self) -> Result<TaskId, SubmitError> {
        let mut durable = self.durable;
        let mut full = self.store_full;
        let mut watching = true;
        let written = loop {
            tokio::select! {
                written = &mut durable => break written,
                refused = full.wait_for(Option::is_some), if watching => match refused {
                    Ok(reason) => {
                        return Err(SubmitError::StoreFull(reason.clone().unwrap_or_default()));
                    }
                    // Nobody reports refusals (an in-memory store).
                    Err(_) => watching = false,
                },
            }
        };
        match written {
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
        /// The Submit call's span: the task's later spans join its trace.
        trace: TraceParent,
        reply: RpcReplyPort<Result<Accepted, SubmitError>>,
    },
    /// Replies with the task's status after the call, or `None` when this
    /// coordinator does not own an unfinished task of that id.
    Cancel {
        task: TaskId,
        reason: String,
        reply: RpcReplyPort<Option<Status>>,
    },
    /// A result, and the span of its delivery.
    Result(SubtaskResult, TraceParent),
    DeliveryFailed {
        task: TaskId,
        subtask: usize,
        attempt: u32,
        error: String,
        /// The worker's node could not be reached at all (not merely busy).
        unreachable: bool,
        /// The agent's node does not (yet) see this coordinator leading:
        /// offered again after a backoff, without spending the retry
        /// budget (`DeliverError::sender_not_leader`).
        not_leader: bool,
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
    /// Publish an event: handed to the leader's event router, which
    /// answers once the event is durable.
    PublishEvent {
        draft: agentmesh_core::events::EventDraft,
        /// Who published it (see `agentmesh_core::events::Event::source`).
        source: String,
        reply: oneshot::Sender<Result<super::events::Published, super::events::PublishError>>,
    },
    /// What a request's planner answered, asked in `term` (see
    /// `thinking`).
    Thought {
        task: TaskId,
        term: i64,
        thought: super::thinking::Thought,
    },
    /// A handler's acknowledgement, its sender checked.
    EventAck(agentmesh_proto::v1::EventAck),
    /// The registry refused a task record for good (too large for etcd,
    /// say): its task is failed rather than its record retried.
    RecordRefused(RefusedRecord),
    /// This coordinator won the election: resume `tasks`, every unfinished
    /// record in the registry, and write fenced with `leadership`.
    Lead {
        leadership: Leadership,
        tasks: Vec<TaskRecord>,
    },
    /// A resumed task's record, with its takeover counted, is durable
    /// under `term`: its ready subtasks may be placed.
    Resumed {
        task: TaskId,
        term: i64,
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
    /// Owns the feeds into the actor.
    pub background: Background,
    /// The node's models, for the work that thinks.
    pub providers: Providers,
}

/// A running coordinator as the node's services see it: the actor, the hub
/// of its tasks' durable records, and whether it leads.
#[derive(Clone)]
pub struct CoordinatorHandle {
    pub id: AgentId,
    pub actor: ActorRef<CoordinatorMessage>,
    pub hub: RecordHub,
    /// `true` while it leads and has taken its tasks over.
    pub leading: tokio::sync::watch::Receiver<bool>,
}
