//! Placing ready subtasks on workers, round-robin between the clients that
//! submitted them, and retries with backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::fairness::{ClientRefusal, FairQueue};
use agentmesh_core::retry::exhausted_message;
use agentmesh_core::task::record::Applied;
use agentmesh_core::task::{Status, TaskRecord};
use agentmesh_core::{ClientId, TaskId};
use agentmesh_proto::v1::{Envelope, SubtaskAssignment};
use ractor::ActorRef;
use tracing::{Instrument, debug, warn};

use super::{CoordinatorMessage, CoordinatorState};
use crate::metrics;
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
/// How often the queue depth is published: often enough for an
/// autoscaler scraping every 15 s, cheap at any queue length.
const QUEUE_DEPTH_PERIOD_MS: u64 = 1_000;

/// nothing of clients.
#[derive(Debug, Default)]
pub(super) struct ReadyQueue {
    /// Entries not yet filed under their client.
    arrived: Vec<(TaskId, usize)>,
    /// `Arc` so handing a client around a pass costs no allocation.
    fair: FairQueue<Arc<ClientId>, (TaskId, usize)>,
    /// Every unfinished task that has had an entry: its client and its
    /// entries in `fair`.
    owners: HashMap<TaskId, Owner>,
    /// Unfinished tasks per client (those of `owners`); the key is the one
    /// `Arc` of each client.
    active: HashMap<Arc<ClientId>, usize>,
}

#[derive(Debug)]
struct Owner {
    client: Arc<ClientId>,
    queued: usize,
}

impl ReadyQueue {
    pub(super) fn extend(&mut self, entries: impl IntoIterator<Item = (TaskId, usize)>) {
        self.arrived.extend(entries);
    }

    pub(super) fn len(&self) -> usize {
        self.arrived.len() + self.fair.len()
    }

    /// Every queued entry, in no particular order.
    pub(super) fn entries(&self) -> impl Iterator<Item = &(TaskId, usize)> {
        self.arrived.iter().chain(self.fair.iter())
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Forgets an ended task: its client, and its entries still queued (a
    /// cancelled or failed task's), which no longer count against any
    /// limit.
    pub(super) fn task_ended(&mut self, id: &TaskId) {
        let Some(owner) = self.owners.remove(id) else {
            return;
        };
        if owner.queued > 0 {
            self.fair.retain_of(&owner.client, |(task, _)| task != id);
        }
        if let Some(count) = self.active.get_mut(&owner.client) {
            *count -= 1;
            if *count == 0 {
                self.active.remove(&owner.client);
            }
        }
    }

    /// Files the entries that arrived under their tasks' clients.
    fn settle(&mut self, tasks: &HashMap<TaskId, TaskRecord>) {
        for (id, index) in std::mem::take(&mut self.arrived) {
            if !self.owners.contains_key(&id) {
                let Some(record) = tasks.get(&id) else {
                    continue;
                };
                let named = record.client.clone().unwrap_or_else(ClientId::unnamed);
                let client = match self.active.get_key_value(&named) {
                    Some((client, _)) => client.clone(),
                    None => Arc::new(named),
                };
                *self.active.entry(client.clone()).or_default() += 1;
                self.owners.insert(id.clone(), Owner { client, queued: 0 });
            }
            self.push(id, index, false);
        }
    }

    /// Queues an entry of a known task, last or (a retry) first among its
    /// client's.
    fn push(&mut self, id: TaskId, index: usize, front: bool) {
        let Some(owner) = self.owners.get_mut(&id) else {
            return;
        };
        owner.queued += 1;
        let client = owner.client.clone();
        if front {
            self.fair.push_front(client, (id, index));
        } else {
            self.fair.push_back(client, (id, index));
        }
    }

    /// The next entry of the pass (see [`FairQueue::next`]).
    fn next(&mut self) -> Option<(TaskId, usize)> {
        let entry = self.fair.next()?;
        if let Some(owner) = self.owners.get_mut(&entry.0) {
            owner.queued -= 1;
        }
        Some(entry)
    }

    /// Gives the entry [`ReadyQueue::next`] returned back.
    fn defer(&mut self, entry: (TaskId, usize)) {
        if let Some(owner) = self.owners.get_mut(&entry.0) {
            owner.queued += 1;
        }
        self.fair.defer(entry);
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
        let client = record.client.clone().unwrap_or_else(ClientId::unnamed);
        let queued = self.queue.fair.len_of(&client);
        let active = self.queue.active.get(&client).copied().unwrap_or(0);
        self.config
            .client_limits
            .check(&client, queued, active, ready)
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
            metrics::attempt_retried();
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

    /// Excuses a subtask's attempt from its retry budget: it ended through
    /// no fault of the subtask or its agent (see `TaskRecord::excuse`).
    pub(super) fn excuse(&mut self, id: &TaskId, subtask: usize, attempt: u32) {
        if let Some(record) = self.tasks.get_mut(id) {
            record.excuse(subtask, attempt);
        }
    }

    /// Publishes how many subtasks wait for a worker, per capability (the
    /// ready queue and the retries in backoff), at most once per
    /// [`QUEUE_DEPTH_PERIOD_MS`]: the signal worker pools scale on. A
    /// follower's queue is empty, so it publishes zeros.
    pub(super) fn publish_queue_depth(&mut self, now: u64) {
        if now < self.queue_published_ms + QUEUE_DEPTH_PERIOD_MS {
            return;
        }
        self.queue_published_ms = now;
        let waiting = self.queue.entries().chain(self.backoff.values().flatten());
        let mut depths: BTreeMap<&str, usize> = BTreeMap::new();
        for (task, index) in waiting {
            if let Some(subtask) = self.tasks.get(task).and_then(|r| r.subtasks.get(*index)) {
                *depths.entry(subtask.capability.as_str()).or_default() += 1;
            }
        }
        let depths = depths
            .into_iter()
            .map(|(capability, n)| (capability.to_owned(), n))
            .collect();
        metrics::set_queued(&depths);
        // Placements are the leader's: a follower's pool places nothing,
        // so it publishes no worker at all rather than a second view.
        let leading = self.writer.is_some();
        metrics::set_workers(self.pool.agents().filter(|_| leading).map(|worker| {
            metrics::WorkerView {
                agent: worker.id.as_str(),
                in_flight: worker.in_flight,
                breaker: worker.breaker_state(),
            }
        }));
    }

    /// Moves retries whose backoff has passed to the front of their
    /// clients' queues.
    pub(super) fn release_backoffs(&mut self, now: u64) {
        let later = self.backoff.split_off(&(now + 1));
        let due = std::mem::replace(&mut self.backoff, later);
        for (_, subtasks) in due.into_iter().rev() {
            for (id, index) in subtasks.into_iter().rev() {
                self.queue.push(id, index, true);
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
            let Some((id, index)) = self.queue.next() else {
                break;
            };
            let Some(record) = self.tasks.get_mut(&id) else {
                continue;
            };
            if record.subtasks[index].status != Status::Pending {
                continue;
            }
            let capability = &record.subtasks[index].capability;
            let Some(worker) = self
                .pool
                .for_subtask(record.pattern, capability)
                .select(capability, now_ms())
            else {
                self.queue.defer((id, index));
                continue;
            };
            self.queue.fair.placed();
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
            if record.subtasks[index].attempts == 0 {
                let waited = now.saturating_sub(ready_since(record, index));
                metrics::queue_wait(
                    &record.subtasks[index].capability,
                    Duration::from_millis(waited),
                );
            }
            metrics::attempt_started();
            let attempt = record.start_attempt(index, self.term, worker.clone(), now);
            self.pool.acquire(&worker, now);
            let subtask = &record.subtasks[index];
            // The assignment's envelope, record write and send continue
            // the task's trace from here.
            let span = crate::span!(
                "placement",
                task.id = %id,
                subtask.id = %subtask.id,
                attempt,
                agent.id = %worker,
                capability = %subtask.capability,
            );
            if !span.is_none()
                && let Some(trace) = self.traces.get(&id)
            {
                trace.adopt(&span);
            }

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
            let envelope = span.in_scope(|| {
                transport::envelope(&self.id, &worker, Kind::SubtaskAssign, assignment)
            });
            self.finish_change(&id).instrument(span.clone()).await;
            span.in_scope(|| {
                dispatch(
                    self.router.clone(),
                    myself.clone(),
                    envelope,
                    id,
                    index,
                    attempt,
                )
            });
        }
        self.queue.fair.end_pass();
    }
}

/// When subtask `index` of `record` became ready: when its last
/// dependency finished, or when the task was accepted.
fn ready_since(record: &TaskRecord, index: usize) -> u64 {
    record.subtasks[index]
        .depends_on
        .iter()
        .filter_map(|dep| record.position(dep))
        .filter_map(|i| record.subtasks[i].finished_ms)
        .max()
        .unwrap_or(record.created_ms)
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
                not_leader: error.sender_not_leader(),
                error: error.to_string(),
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use agentmesh_core::task::{TaskLimits, parse_and_validate};

    use super::*;

    fn task(id: &str, client: Option<&str>, width: usize) -> TaskRecord {
        let tasks: Vec<String> = (0..width)
            .map(|i| format!(r#"{{"id":"s{i}","capability":"sleep","input":{{"ms":1}}}}"#))
            .collect();
        let document = format!(r#"{{"name":"t","tasks":[{}]}}"#, tasks.join(","));
        let file =
            parse_and_validate(&document, &TaskLimits::default(), &|_| true, &Vec::new).unwrap();
        let mut record = TaskRecord::new(TaskId::new(id), file, 0);
        record.client = client.map(|c| ClientId::parse(c).unwrap());
        record
    }

    fn take(queue: &mut ReadyQueue, n: usize) -> Vec<String> {
        let mut taken = Vec::new();
        queue.fair.begin_pass();
        while taken.len() < n {
            let Some((id, index)) = queue.next() else {
                break;
            };
            queue.fair.placed();
            taken.push(format!("{id}/{index}"));
        }
        queue.fair.end_pass();
        taken
    }

    #[test]
    fn clients_come_from_the_records_and_ended_tasks_leave_no_trace() {
        let tasks: HashMap<TaskId, TaskRecord> = [
            task("a1", Some("a"), 3),
            task("a2", Some("a"), 2),
            task("b1", Some("b"), 1),
            task("old", None, 1),
        ]
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
        let mut queue = ReadyQueue::default();
        for id in ["a1", "a2", "b1", "old"] {
            let ready = tasks[&TaskId::new(id)].ready();
            queue.extend(ready.into_iter().map(|i| (TaskId::new(id), i)));
        }
        assert_eq!(queue.len(), 7);
        queue.settle(&tasks);
        assert_eq!(queue.fair.len_of(&ClientId::parse("a").unwrap()), 5);
        assert_eq!(queue.active[&ClientId::parse("a").unwrap()], 2);
        assert_eq!(queue.active[&ClientId::unnamed()], 1);
        assert_eq!(take(&mut queue, 3), ["a1/0", "b1/0", "old/0"]);

        // a1 is cancelled with two subtasks queued: they stop counting.
        queue.task_ended(&TaskId::new("a1"));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.active[&ClientId::parse("a").unwrap()], 1);
        assert_eq!(take(&mut queue, 9), ["a2/0", "a2/1"]);
        for id in ["a2", "b1", "old"] {
            queue.task_ended(&TaskId::new(id));
        }
        assert!(queue.active.is_empty() && queue.owners.is_empty());
    }
}
