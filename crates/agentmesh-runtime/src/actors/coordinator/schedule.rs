//! Placing ready subtasks on workers, round-robin between the clients that
//! submitted them, and retries with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::fairness::{ClientRefusal, FairQueue};
use agentmesh_core::retry::exhausted_message;
use agentmesh_core::task::record::Applied;
use agentmesh_core::task::{Status, TaskRecord};
use agentmesh_core::{ClientId, TaskId};
use agentmesh_proto::v1::{Envelope, SubtaskAssignment};
use ractor::ActorRef;
use tracing::{debug, warn};

use super::{CoordinatorMessage, CoordinatorState};
use crate::support::clock::now_ms;
use crate::transport::{self, DeliverError, Kind, Router};

/// Subtasks ready to run, waiting for a worker with room: one FIFO per
/// client, served in turn ([`FairQueue`]), and what each client holds, for
/// its limits.
///
/// Entries come in by task id alone ([`ReadyQueue::extend`]); the client
/// is looked up in the task's record when the next scheduling pass starts
/// ([`ReadyQueue::settle`]), which every message the coordinator handles
/// ends with. So code that takes tasks on (submit, resume) needs to know
/// nothing of clients.
#[derive(Debug, Default)]
pub(super) struct ReadyQueue {
    /// Entries not yet filed under their client.
    arrived: Vec<(TaskId, usize)>,
    /// `Arc` so handing a client around a pass costs no allocation.
    fair: FairQueue<Arc<ClientId>, (TaskId, usize)>,
    /// The client of every unfinished task that has had an entry.
    owners: HashMap<TaskId, Arc<ClientId>>,
    /// Unfinished tasks per client (those of `owners`).
    active: HashMap<Arc<ClientId>, usize>,
}

impl ReadyQueue {
    pub(super) fn extend(&mut self, entries: impl IntoIterator<Item = (TaskId, usize)>) {
        self.arrived.extend(entries);
    }

    pub(super) fn len(&self) -> usize {
        self.arrived.len() + self.fair.len()
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Forgets an ended task's client.
    pub(super) fn task_ended(&mut self, id: &TaskId) {
        let Some(client) = self.owners.remove(id) else {
            return;
        };
        if let Some(count) = self.active.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                self.active.remove(&client);
            }
        }
    }

    /// Files the entries that arrived under their tasks' clients.
    fn settle(&mut self, tasks: &HashMap<TaskId, TaskRecord>) {
        for (id, index) in self.arrived.drain(..) {
            let client = match self.owners.get(&id) {
                Some(client) => client.clone(),
                None => {
                    let Some(record) = tasks.get(&id) else {
                        continue;
                    };
                    let client = Arc::new(record.client.clone().unwrap_or_else(ClientId::unnamed));
                    *self.active.entry(client.clone()).or_default() += 1;
                    self.owners.insert(id.clone(), client.clone());
                    client
                }
            };
            self.fair.push_back(client, (id, index));
        }
    }

    /// Puts a retry back first in its client's queue.
    fn push_front(&mut self, id: TaskId, index: usize) {
        if let Some(client) = self.owners.get(&id) {
            self.fair.push_front(client.clone(), (id, index));
        }
    }
}

impl CoordinatorState {
    /// Whether `record`'s client may submit it: refused over the client's
    /// share of the queue or of unfinished tasks (see
    /// [`agentmesh_core::fairness::ClientLimits`]). Called with nothing
    /// unsettled: the previous message's pass filed every entry.
    pub(super) fn check_client(
        &self,
        record: &TaskRecord,
        ready: usize,
    ) -> Result<(), ClientRefusal> {
        let unnamed;
        let client = match &record.client {
            Some(client) => client,
            None => {
                unnamed = ClientId::unnamed();
                &unnamed
            }
        };
        let queue = &self.queue;
        let queued = queue.fair.len_of(client);
        let active = queue.active.get(client).copied().unwrap_or(0);
        self.config
            .client_limits
            .check(client, queued, active, ready)
    }

    /// Starts the subtask again elsewhere after a backoff, or fails the task
    /// once the retry budget is spent, naming every worker tried.
    pub(super) async fn retry(&mut self, id: &TaskId, subtask: usize, attempt: u32, error: String) {
        let Some(record) = self.tasks.get_mut(id) else {
            return;
        };
        let worker = record.subtasks[subtask].worker.clone();
        let now = now_ms();
        if !self.config.retry.allows(record.budgeted_attempts(subtask)) {
            let s = &record.subtasks[subtask];
            let message = exhausted_message(&s.id, attempt, &s.tried, &error);
            let (applied, stopped) = record.give_up(subtask, attempt, message, now);
            if applied == Applied::Changed {
                worker.iter().for_each(|w| self.pool.release(w, None, now));
                self.stop_attempts(id, stopped);
                self.finish_change(id).await;
            }
            return;
        }
        if record.requeue(subtask, attempt, error.clone(), now) == Applied::Changed {
            let delay = self.config.retry.delay_ms(attempt, &mut rand::rng());
            warn!(task_id = %id, subtask = %record.subtasks[subtask].id, attempt, %error, delay_ms = delay, "re-dispatching subtask");
            worker.iter().for_each(|w| self.pool.release(w, None, now));
            self.backoff
                .entry(now + delay)
                .or_default()
                .push((id.clone(), subtask));
            let wake = self.myself.clone();
            self.router.background().spawn("retry backoff", async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let _ = wake.cast(CoordinatorMessage::Tick);
            });
            self.finish_change(id).await;
        }
    }

    /// Moves retries whose backoff has passed to the front of their
    /// clients' queues.
    pub(super) fn release_backoffs(&mut self, now: u64) {
        let later = self.backoff.split_off(&(now + 1));
        let due = std::mem::replace(&mut self.backoff, later);
        for (_, subtasks) in due.into_iter().rev() {
            for (id, index) in subtasks.into_iter().rev() {
                self.queue.push_front(id, index);
            }
        }
    }

    /// Places ready subtasks on workers with room, taking the clients in
    /// turn; the rest keep their place in their clients' queues. Stops as
    /// soon as no worker has room, so a long backlog costs nothing while
    /// the cluster is full.
    pub(super) async fn schedule(&mut self, myself: &ActorRef<CoordinatorMessage>) {
        self.queue.settle(&self.tasks);
        self.release_backoffs(now_ms());
        if self.queue.fair.is_empty() {
            return;
        }
        self.queue.fair.begin_pass();
        while self.pool.has_room(now_ms()) {
            let Some((id, index)) = self.queue.fair.next() else {
                break;
            };
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
                self.queue.fair.defer((id, index));
                continue;
            };
            self.queue.fair.placed();
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
            let attempt = record.start_attempt(index, self.term, worker.clone(), now);
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
            let envelope = transport::envelope(&self.id, &worker, Kind::SubtaskAssign, assignment);
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
        self.queue.fair.end_pass();
    }
}

fn dispatch(
    router: Arc<Router>,
    coordinator: ActorRef<CoordinatorMessage>,
    envelope: Envelope,
    task: TaskId,
    subtask: usize,
    attempt: u32,
) {
    let sender = router.clone();
    router.background().spawn("dispatch", async move {
        if let Err(error) = sender.send(envelope).await {
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
