//! Persists task records in batches.
//!
//! Every change of a record is queued here; the writer keeps the newest
//! revision of each task and writes many tasks in one registry
//! transaction. Up to `write_concurrency` transactions are in flight at
//! once, so a change never waits for a whole etcd round trip of unrelated
//! work — but a task is never in two at once, so its revisions land in
//! order. Under load many changes share one write; when idle a change is
//! written at once. Acknowledgements fire only after the write succeeded,
//! so a client told "accepted" can rely on the record.
//!
//! A writer belongs to one term of leadership: every transaction is fenced
//! with it, and a failed write is retried for as long as the term stands —
//! an etcd outage delays records, it does not drop them. Once the term is
//! over, what is still unwritten is given up: the next leader resumes each
//! task from its last durable record.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::TaskId;
use agentmesh_core::task::TaskRecord;
use agentmesh_registry::{Leadership, RegistryError, TaskStore};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::warn;

use super::hub::RecordHub;

/// Changes waiting to be written; a full queue makes the coordinator wait,
/// which is the back-pressure that keeps memory bounded.
const QUEUE: usize = 4096;
/// First pause after a failed write; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

pub type WriteAck = oneshot::Sender<Result<(), String>>;

struct Write {
    record: Arc<TaskRecord>,
    ack: Option<WriteAck>,
}

pub struct RecordWriter {
    queue: mpsc::Sender<Write>,
    task: JoinHandle<()>,
}

impl RecordWriter {
    /// Writes fenced with `leadership`: `batch` records at most per
    /// transaction, `concurrency` transactions in flight at most.
    pub fn spawn(
        registry: Arc<dyn TaskStore>,
        leadership: Leadership,
        batch: usize,
        concurrency: usize,
        hub: RecordHub,
    ) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(
            registry,
            leadership,
            rx,
            batch.max(1),
            concurrency.max(1),
            hub,
        ));
        Self { queue, task }
    }

    /// Takes no more records and resolves once every queued one is written
    /// (or given up with the term), or after `timeout`, when what is left
    /// is abandoned.
    pub async fn finish(self, timeout: Duration) {
        drop(self.queue);
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            warn!(
                ?timeout,
                "record writer did not finish in time; abandoning its queue"
            );
            task.abort();
        }
    }

    /// Queues a record; `ack` hears when it is durable.
    pub async fn write(&self, record: Arc<TaskRecord>, ack: Option<WriteAck>) {
        if let Err(mpsc::error::SendError(write)) = self.queue.send(Write { record, ack }).await
            && let Some(ack) = write.ack
        {
            let _ = ack.send(Err("record writer has stopped".into()));
        }
    }
}

/// Which records go into the next transaction: the newest record of each
/// waiting task, oldest waiting first, skipping tasks with a write in
/// flight (their newer record waits for that write to end).
#[derive(Default)]
struct WritePlan {
    waiting: HashMap<TaskId, (Arc<TaskRecord>, Vec<WriteAck>)>,
    order: VecDeque<TaskId>,
    busy: HashSet<TaskId>,
}

/// One transaction's records and the acknowledgements it settles.
struct Batch {
    records: Vec<Arc<TaskRecord>>,
    acks: Vec<WriteAck>,
}

impl WritePlan {
    fn add(&mut self, write: Write) {
        let id = write.record.id.clone();
        match self.waiting.get_mut(&id) {
            Some((record, acks)) => {
                if write.record.revision > record.revision {
                    *record = write.record;
                }
                acks.extend(write.ack);
            }
            None => {
                self.order.push_back(id.clone());
                self.waiting
                    .insert(id, (write.record, write.ack.into_iter().collect()));
            }
        }
    }

    fn next_batch(&mut self, max: usize) -> Option<Batch> {
        let mut batch = Batch {
            records: Vec::new(),
            acks: Vec::new(),
        };
        let mut skipped = VecDeque::new();
        while batch.records.len() < max
            && let Some(id) = self.order.pop_front()
        {
            if self.busy.contains(&id) {
                skipped.push_back(id);
                continue;
            }
            if let Some((record, acks)) = self.waiting.remove(&id) {
                batch.records.push(record);
                batch.acks.extend(acks);
                self.busy.insert(id);
            }
        }
        skipped.append(&mut self.order);
        self.order = skipped;
        (!batch.records.is_empty()).then_some(batch)
    }

    fn finished(&mut self, records: &[Arc<TaskRecord>]) {
        for record in records {
            self.busy.remove(&record.id);
        }
    }

    fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.busy.is_empty()
    }
}

async fn run(
    registry: Arc<dyn TaskStore>,
    leadership: Leadership,
    mut rx: mpsc::Receiver<Write>,
    batch: usize,
    concurrency: usize,
    hub: RecordHub,
) {
    let mut plan = WritePlan::default();
    let mut in_flight = JoinSet::new();
    let mut incoming = Vec::with_capacity(batch);
    let mut open = true;
    while open || !plan.is_idle() {
        while in_flight.len() < concurrency
            && let Some(next) = plan.next_batch(batch)
        {
            let registry = registry.clone();
            let leadership = leadership.clone();
            in_flight.spawn(async move {
                let outcome = write_with_retry(registry.as_ref(), &leadership, &next.records).await;
                (next, outcome)
            });
        }
        tokio::select! {
            received = rx.recv_many(&mut incoming, batch), if open => {
                if received == 0 {
                    open = false;
                }
                incoming.drain(..).for_each(|write| plan.add(write));
            }
            Some(done) = in_flight.join_next() => {
                let Ok((batch, outcome)) = done else { continue };
                plan.finished(&batch.records);
                if outcome.is_ok() {
                    for record in &batch.records {
                        hub.publish(record.clone());
                    }
                }
                for ack in batch.acks {
                    let _ = ack.send(outcome.clone());
                }
            }
        }
    }
}

/// Writes one batch, retrying with backoff while the term stands.
async fn write_with_retry(
    registry: &dyn TaskStore,
    leadership: &Leadership,
    records: &[Arc<TaskRecord>],
) -> Result<(), String> {
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 1u32;
    loop {
        let error = match registry.put_tasks_fenced(records, &leadership.fence).await {
            Ok(()) => return Ok(()),
            Err(error @ (RegistryError::Closed | RegistryError::NotLeader { .. })) => {
                return Err(error.to_string());
            }
            Err(error) => error,
        };
        if !leadership.is_held() {
            warn!(%error, records = records.len(), attempt, "leadership lost: giving up on task record write");
            return Err(format!("{error}; leadership was lost meanwhile"));
        }
        warn!(%error, records = records.len(), attempt, "task record write failed, retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = leadership.lost() => {}
        }
        delay = (delay * 2).min(MAX_RETRY_DELAY);
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_core::task::TaskFile;

    use super::*;

    fn write(
        id: &str,
        revision: u64,
        ack: bool,
    ) -> (Write, Option<oneshot::Receiver<Result<(), String>>>) {
        let file: TaskFile = serde_json::from_str(
            r#"{"name":"t","tasks":[{"id":"a","capability":"sleep","input":{}}]}"#,
        )
        .unwrap();
        let mut record = TaskRecord::new(TaskId::new(id), file, 0);
        record.revision = revision;
        let (sender, receiver) = oneshot::channel();
        let write = Write {
            record: Arc::new(record),
            ack: ack.then_some(sender),
        };
        (write, ack.then_some(receiver))
    }

    fn ids(batch: &Batch) -> Vec<(String, u64)> {
        batch
            .records
            .iter()
            .map(|r| (r.id.to_string(), r.revision))
            .collect()
    }

    #[test]
    fn a_batch_holds_the_newest_record_of_each_task_oldest_first() {
        let mut plan = WritePlan::default();
        for (id, revision) in [("a", 1), ("b", 1), ("a", 3), ("a", 2), ("c", 1)] {
            plan.add(write(id, revision, true).0);
        }
        let batch = plan.next_batch(2).unwrap();
        assert_eq!(ids(&batch), [("a".into(), 3), ("b".into(), 1)]);
        assert_eq!(batch.acks.len(), 4);
        assert_eq!(ids(&plan.next_batch(64).unwrap()), [("c".into(), 1)]);
        assert!(plan.next_batch(64).is_none());
    }

    #[test]
    fn a_task_is_never_in_two_writes_at_once() {
        let mut plan = WritePlan::default();
        plan.add(write("a", 1, false).0);
        let first = plan.next_batch(64).unwrap();
        plan.add(write("a", 2, false).0);
        plan.add(write("b", 1, false).0);
        // "a" waits for its write in flight; "b" goes ahead.
        assert_eq!(ids(&plan.next_batch(64).unwrap()), [("b".into(), 1)]);
        assert!(plan.next_batch(64).is_none());
        plan.finished(&first.records);
        assert_eq!(ids(&plan.next_batch(64).unwrap()), [("a".into(), 2)]);
        assert!(!plan.is_idle());
    }
}
