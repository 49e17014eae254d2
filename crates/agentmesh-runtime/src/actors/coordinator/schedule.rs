//! Placing ready subtasks on workers, and retries with backoff.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::TaskId;
use agentmesh_core::retry::exhausted_message;
use agentmesh_core::task::Status;
use agentmesh_core::task::record::Applied;
use agentmesh_proto::v1::{Envelope, SubtaskAssignment};
use ractor::ActorRef;
use tracing::{debug, warn};

use super::{CoordinatorMessage, CoordinatorState};
use crate::support::clock::now_ms;
use crate::transport::{self, DeliverError, Kind, Router};

impl CoordinatorState {
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

    /// Moves retries whose backoff has passed to the front of the queue.
    pub(super) fn release_backoffs(&mut self, now: u64) {
        let later = self.backoff.split_off(&(now + 1));
        let due = std::mem::replace(&mut self.backoff, later);
        for (_, subtasks) in due.into_iter().rev() {
            for entry in subtasks.into_iter().rev() {
                self.queue.push_front(entry);
            }
        }
    }

    /// Places every ready subtask that has a worker with room; the rest keep
    /// their place in the queue.
    pub(super) async fn schedule(&mut self, myself: &ActorRef<CoordinatorMessage>) {
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
            // Within the task limits, computed before the input is built:
            // a reference that would blow up fails this task, not the node.
            let input = match record.resolved_input(index, (&self.config.limits).into()) {
                Ok(input) => input,
                Err(error) => {
                    warn!(task_id = %id, subtask = %record.subtasks[index].id, %error, "subtask input could not be resolved");
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
        self.queue = waiting;
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
