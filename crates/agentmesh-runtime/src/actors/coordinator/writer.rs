//! Persists task records in batches.
//!
//! Every change of a record is queued here; the writer keeps the newest
//! revision of each task and writes many tasks in one registry
//! transaction, as many as fit in `batch` records and `batch_bytes` bytes
//! (etcd refuses a request over its `--max-request-bytes`). Up to
//! `write_concurrency` transactions are in flight at once, so a change
//! never waits for a whole etcd round trip of unrelated work — but a task
//! is never in two at once, so its revisions land in order. Under load
//! many changes share one write; when idle a change is written at once.
//! Acknowledgements fire only after the write succeeded, so a client told
//! "accepted" can rely on the record.
//!
//! A writer belongs to one term of leadership: every transaction is fenced
//! with it, and a write that failed for a reason a retry may fix (etcd
//! unreachable, slow, out of space) is retried for as long as the term
//! stands — an etcd outage delays records, it does not drop them. Once the
//! term is over, what is still unwritten is given up: the next leader
//! resumes each task from its last durable record.
//!
//! A write the registry refuses for good ([`RegistryError::is_transient`]
//! is false: a record too large for etcd, say) is not retried. A batch of
//! several records is split in halves and each half written on its own,
//! so the good records of a batch still land and only the bad record is
//! left; that one is acknowledged with the error and reported through
//! `on_refused`, for the coordinator to fail its task. One bad record
//! never holds up another task's writes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_core::TaskId;
use agentmesh_core::task::TaskRecord;
use agentmesh_registry::{Leadership, RegistryError, TaskStore};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::warn;

use super::hub::RecordHub;
use crate::metrics::{self, WriteErrorKind};

/// Changes waiting to be written; a full queue makes the coordinator wait,
/// which is the back-pressure that keeps memory bounded.
const QUEUE: usize = 4096;
/// First pause after a failed write; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

pub type WriteAck = oneshot::Sender<Result<(), String>>;

/// A record the registry refused for good, as the writer reports it.
#[derive(Debug, Clone)]
pub struct RefusedRecord {
    pub record: Arc<TaskRecord>,
    /// Its size as stored.
    pub bytes: usize,
    /// Why, as the registry said.
    pub error: String,
}

/// Called once for each record the registry refused for good.
pub type OnRefused = Arc<dyn Fn(RefusedRecord) + Send + Sync>;

/// How much one transaction and the writer as a whole may take on.
#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    /// Records per transaction.
    pub batch: usize,
    /// Bytes of records per transaction; a record larger than this goes
    /// alone.
    pub batch_bytes: usize,
    /// Transactions in flight.
    pub concurrency: usize,
}

struct Write {
    record: Arc<TaskRecord>,
    /// The record's size as stored, measured by the coordinator.
    bytes: usize,
    ack: Option<WriteAck>,
}

pub struct RecordWriter {
    queue: mpsc::Sender<Write>,
    task: JoinHandle<()>,
}

impl RecordWriter {
    /// Writes fenced with `leadership` within `limits`; a record refused
    /// for good is reported to `on_refused`.
    pub fn spawn(
        registry: Arc<dyn TaskStore>,
        leadership: Leadership,
        limits: WriterLimits,
        hub: RecordHub,
        on_refused: OnRefused,
    ) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let limits = WriterLimits {
            batch: limits.batch.max(1),
            batch_bytes: limits.batch_bytes.max(1),
            concurrency: limits.concurrency.max(1),
        };
        let task = tokio::spawn(run(registry, leadership, rx, limits, hub, on_refused));
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

    /// Queues a record of `bytes` (as stored); `ack` hears when it is
    /// durable.
    pub async fn write(&self, record: Arc<TaskRecord>, bytes: usize, ack: Option<WriteAck>) {
        let write = Write { record, bytes, ack };
        if let Err(mpsc::error::SendError(write)) = self.queue.send(write).await
            && let Some(ack) = write.ack
        {
            let _ = ack.send(Err("record writer has stopped".into()));
        }
    }
}

/// The newest record of one task and everyone waiting for it.
struct Pending {
    record: Arc<TaskRecord>,
    bytes: usize,
    acks: Vec<WriteAck>,
}

/// Which records go into the next transaction: the newest record of each
/// waiting task, oldest waiting first, skipping tasks with a write in
/// flight (their newer record waits for that write to end).
#[derive(Default)]
struct WritePlan {
    waiting: HashMap<TaskId, Pending>,
    order: VecDeque<TaskId>,
    busy: HashSet<TaskId>,
}

/// One transaction's records and the acknowledgements they settle.
#[derive(Default)]
struct Batch {
    entries: Vec<Pending>,
    bytes: usize,
}

impl Batch {
    fn records(&self) -> Vec<Arc<TaskRecord>> {
        self.entries.iter().map(|e| e.record.clone()).collect()
    }

    /// Two batches of half the records each (the first half in the first).
    fn split(mut self) -> (Batch, Batch) {
        let second: Vec<Pending> = self.entries.split_off(self.entries.len() / 2);
        let batch = |entries: Vec<Pending>| Batch {
            bytes: entries.iter().map(|e| e.bytes).sum(),
            entries,
        };
        (batch(self.entries), batch(second))
    }
}

impl WritePlan {
    fn add(&mut self, write: Write) {
        let id = write.record.id.clone();
        match self.waiting.get_mut(&id) {
            Some(pending) => {
                if write.record.revision > pending.record.revision {
                    pending.record = write.record;
                    pending.bytes = write.bytes;
                }
                pending.acks.extend(write.ack);
            }
            None => {
                self.order.push_back(id.clone());
                let pending = Pending {
                    record: write.record,
                    bytes: write.bytes,
                    acks: write.ack.into_iter().collect(),
                };
                self.waiting.insert(id, pending);
            }
        }
    }

    /// The next transaction: at most `max` records and `max_bytes` bytes,
    /// but never empty while a record waits, however large it is.
    fn next_batch(&mut self, max: usize, max_bytes: usize) -> Option<Batch> {
        let mut batch = Batch::default();
        let mut skipped = VecDeque::new();
        while batch.entries.len() < max
            && let Some(id) = self.order.pop_front()
        {
            if self.busy.contains(&id) {
                skipped.push_back(id);
                continue;
            }
            let fits = self
                .waiting
                .get(&id)
                .is_none_or(|p| batch.entries.is_empty() || batch.bytes + p.bytes <= max_bytes);
            if !fits {
                // First in the next transaction.
                self.order.push_front(id);
                break;
            }
            if let Some(pending) = self.waiting.remove(&id) {
                batch.bytes += pending.bytes;
                batch.entries.push(pending);
                self.busy.insert(id);
            }
        }
        skipped.append(&mut self.order);
        self.order = skipped;
        (!batch.entries.is_empty()).then_some(batch)
    }

    fn finished(&mut self, batch: &Batch) {
        for entry in &batch.entries {
            self.busy.remove(&entry.record.id);
        }
    }

    fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.busy.is_empty()
    }
}

/// Why a batch was not written.
#[derive(Debug, Clone)]
struct WriteFailure {
    message: String,
    /// The registry refused the records themselves: writing them again
    /// cannot succeed.
    permanent: bool,
}

async fn run(
    registry: Arc<dyn TaskStore>,
    leadership: Leadership,
    mut rx: mpsc::Receiver<Write>,
    limits: WriterLimits,
    hub: RecordHub,
    on_refused: OnRefused,
) {
    let mut plan = WritePlan::default();
    // Halves of refused batches, written before anything new: their
    // tasks stay busy meanwhile, so their later records wait for them.
    let mut halves: VecDeque<Batch> = VecDeque::new();
    let mut in_flight = JoinSet::new();
    let mut incoming = Vec::with_capacity(limits.batch);
    let mut open = true;
    while open || !plan.is_idle() {
        while in_flight.len() < limits.concurrency
            && let Some(next) = halves
                .pop_front()
                .or_else(|| plan.next_batch(limits.batch, limits.batch_bytes))
        {
            let registry = registry.clone();
            let leadership = leadership.clone();
            in_flight.spawn(async move {
                let outcome =
                    write_with_retry(registry.as_ref(), &leadership, &next.records()).await;
                (next, outcome)
            });
        }
        tokio::select! {
            received = rx.recv_many(&mut incoming, limits.batch), if open => {
                if received == 0 {
                    open = false;
                }
                incoming.drain(..).for_each(|write| plan.add(write));
            }
            Some(done) = in_flight.join_next() => {
                let Ok((batch, outcome)) = done else { continue };
                match outcome {
                    Err(failure) if failure.permanent && batch.entries.len() > 1 => {
                        warn!(error = %failure.message, records = batch.entries.len(), bytes = batch.bytes, "task record batch refused: writing it in halves");
                        let (first, second) = batch.split();
                        halves.push_back(first);
                        halves.push_back(second);
                    }
                    outcome => {
                        plan.finished(&batch);
                        settle(batch, outcome, &hub, &on_refused);
                    }
                }
            }
        }
    }
}

/// Announces a written batch, or reports why it was not written.
fn settle(
    batch: Batch,
    outcome: Result<(), WriteFailure>,
    hub: &RecordHub,
    on_refused: &OnRefused,
) {
    for entry in batch.entries {
        match &outcome {
            Ok(()) => hub.publish(entry.record.clone(), entry.bytes),
            Err(failure) if failure.permanent => {
                warn!(task_id = %entry.record.id, revision = entry.record.revision, bytes = entry.bytes, error = %failure.message, "task record refused by the registry: not retried");
                on_refused(RefusedRecord {
                    record: entry.record.clone(),
                    bytes: entry.bytes,
                    error: failure.message.clone(),
                });
            }
            Err(_) => {}
        }
        let result = outcome.as_ref().map(|_| ()).map_err(|f| f.message.clone());
        for ack in entry.acks {
            let _ = ack.send(result.clone());
        }
    }
}

/// Writes one batch, retrying with backoff while the term stands and the
/// failure is one a retry may fix.
async fn write_with_retry(
    registry: &dyn TaskStore,
    leadership: &Leadership,
    records: &[Arc<TaskRecord>],
) -> Result<(), WriteFailure> {
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 1u32;
    loop {
        let started = Instant::now();
        let written = registry.put_tasks_fenced(records, &leadership.fence).await;
        let kind = written.as_ref().err().map(|error| match error {
            RegistryError::Closed | RegistryError::NotLeader { .. } => WriteErrorKind::Fenced,
            error if !error.is_transient() => WriteErrorKind::Permanent,
            _ => WriteErrorKind::Transient,
        });
        metrics::record_write(records.len(), started.elapsed(), kind);
        let error = match written {
            Ok(()) => return Ok(()),
            Err(error @ (RegistryError::Closed | RegistryError::NotLeader { .. })) => {
                return Err(WriteFailure {
                    message: error.to_string(),
                    permanent: false,
                });
            }
            Err(error) if !error.is_transient() => {
                return Err(WriteFailure {
                    message: error.to_string(),
                    permanent: true,
                });
            }
            Err(error) => error,
        };
        if !leadership.is_held() {
            warn!(%error, records = records.len(), attempt, "leadership lost: giving up on task record write");
            return Err(WriteFailure {
                message: format!("{error}; leadership was lost meanwhile"),
                permanent: false,
            });
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
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use agentmesh_core::task::TaskFile;
    use agentmesh_registry::{EndedTask, EndedTasks, Fence, TaskWatch};
    use async_trait::async_trait;
    use tokio::sync::watch;

    use super::*;

    fn record(id: &str, revision: u64, pad: usize) -> Arc<TaskRecord> {
        let file: TaskFile = serde_json::from_str(&format!(
            r#"{{"name":"t","tasks":[{{"id":"a","capability":"sleep","input":{{"pad":"{}"}}}}]}}"#,
            "p".repeat(pad)
        ))
        .unwrap();
        let mut record = TaskRecord::new(TaskId::new(id), file, 0);
        record.revision = revision;
        Arc::new(record)
    }

    fn write(
        id: &str,
        revision: u64,
        ack: bool,
    ) -> (Write, Option<oneshot::Receiver<Result<(), String>>>) {
        sized_write(id, revision, 0, ack)
    }

    fn sized_write(
        id: &str,
        revision: u64,
        pad: usize,
        ack: bool,
    ) -> (Write, Option<oneshot::Receiver<Result<(), String>>>) {
        let record = record(id, revision, pad);
        let (sender, receiver) = oneshot::channel();
        let write = Write {
            bytes: record.encoded_len(),
            record,
            ack: ack.then_some(sender),
        };
        (write, ack.then_some(receiver))
    }

    fn ids(batch: &Batch) -> Vec<(String, u64)> {
        batch
            .entries
            .iter()
            .map(|e| (e.record.id.to_string(), e.record.revision))
            .collect()
    }

    #[test]
    fn a_batch_holds_the_newest_record_of_each_task_oldest_first() {
        let mut plan = WritePlan::default();
        for (id, revision) in [("a", 1), ("b", 1), ("a", 3), ("a", 2), ("c", 1)] {
            plan.add(write(id, revision, true).0);
        }
        let batch = plan.next_batch(2, usize::MAX).unwrap();
        assert_eq!(ids(&batch), [("a".into(), 3), ("b".into(), 1)]);
        let acks: usize = batch.entries.iter().map(|e| e.acks.len()).sum();
        assert_eq!(acks, 4);
        assert_eq!(
            ids(&plan.next_batch(64, usize::MAX).unwrap()),
            [("c".into(), 1)]
        );
        assert!(plan.next_batch(64, usize::MAX).is_none());
    }

    #[test]
    fn a_task_is_never_in_two_writes_at_once() {
        let mut plan = WritePlan::default();
        plan.add(write("a", 1, false).0);
        let first = plan.next_batch(64, usize::MAX).unwrap();
        plan.add(write("a", 2, false).0);
        plan.add(write("b", 1, false).0);
        // "a" waits for its write in flight; "b" goes ahead.
        assert_eq!(
            ids(&plan.next_batch(64, usize::MAX).unwrap()),
            [("b".into(), 1)]
        );
        assert!(plan.next_batch(64, usize::MAX).is_none());
        plan.finished(&first);
        assert_eq!(
            ids(&plan.next_batch(64, usize::MAX).unwrap()),
            [("a".into(), 2)]
        );
        assert!(!plan.is_idle());
    }

    #[test]
    fn a_batch_stays_within_its_bytes_and_a_larger_record_goes_alone() {
        let mut plan = WritePlan::default();
        plan.add(sized_write("a", 1, 400, false).0);
        plan.add(sized_write("b", 1, 400, false).0);
        plan.add(sized_write("huge", 1, 5_000, false).0);
        plan.add(sized_write("c", 1, 400, false).0);
        // Room for two small records, not three.
        let small = record("a", 1, 400).encoded_len();
        let max_bytes = 2 * small + small / 2;
        let first = plan.next_batch(64, max_bytes).unwrap();
        assert_eq!(ids(&first), [("a".into(), 1), ("b".into(), 1)]);
        assert!(first.bytes <= max_bytes);
        let second = plan.next_batch(64, max_bytes).unwrap();
        assert_eq!(ids(&second), [("huge".into(), 1)]);
        assert_eq!(
            ids(&plan.next_batch(64, max_bytes).unwrap()),
            [("c".into(), 1)]
        );
    }

    /// A task store that refuses, like etcd, any transaction over
    /// `max_request_bytes`, and fails the first `outages` calls as if etcd
    /// were out of reach.
    struct Store {
        max_request_bytes: usize,
        outages: AtomicUsize,
        calls: AtomicUsize,
        written: Mutex<Vec<(TaskId, u64)>>,
    }

    impl Store {
        fn new(max_request_bytes: usize, outages: usize) -> Arc<Self> {
            Arc::new(Self {
                max_request_bytes,
                outages: AtomicUsize::new(outages),
                calls: AtomicUsize::new(0),
                written: Mutex::new(Vec::new()),
            })
        }

        fn written(&self) -> Vec<String> {
            let mut ids: Vec<String> = self
                .written
                .lock()
                .unwrap()
                .iter()
                .map(|(id, _)| id.to_string())
                .collect();
            ids.sort();
            ids
        }
    }

    #[async_trait]
    impl TaskStore for Store {
        async fn put_tasks(&self, records: &[Arc<TaskRecord>]) -> Result<(), RegistryError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self
                .outages
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(RegistryError::Unavailable("etcd is down".into()));
            }
            let bytes: usize = records.iter().map(|r| r.encoded_len()).sum();
            if bytes > self.max_request_bytes {
                return Err(RegistryError::Refused(format!(
                    "put of {} task records failed: etcdserver: request is too large",
                    records.len()
                )));
            }
            let mut written = self.written.lock().unwrap();
            written.extend(records.iter().map(|r| (r.id.clone(), r.revision)));
            Ok(())
        }

        async fn put_tasks_fenced(
            &self,
            records: &[Arc<TaskRecord>],
            _fence: &Fence,
        ) -> Result<(), RegistryError> {
            self.put_tasks(records).await
        }

        async fn get_task(&self, _id: &TaskId) -> Result<Option<TaskRecord>, RegistryError> {
            Ok(None)
        }

        async fn watch_task(&self, _id: &TaskId) -> Result<TaskWatch, RegistryError> {
            Err(RegistryError::Closed)
        }

        async fn unfinished_tasks(&self) -> Result<Vec<TaskRecord>, RegistryError> {
            Ok(Vec::new())
        }

        async fn list_tasks(
            &self,
            _query: &agentmesh_core::task::listing::TaskQuery,
        ) -> Result<agentmesh_core::task::listing::TaskPage, RegistryError> {
            unreachable!("the writer does not list")
        }

        async fn task_for_idempotency_key(
            &self,
            _scope: &agentmesh_core::ClientId,
            _key: &agentmesh_core::task::listing::IdempotencyKey,
        ) -> Result<Option<TaskId>, RegistryError> {
            unreachable!("the writer does not look up keys")
        }

        async fn ended_tasks(&self, _limit: usize) -> Result<EndedTasks, RegistryError> {
            Ok(EndedTasks::default())
        }

        async fn delete_tasks_fenced(
            &self,
            _tasks: &[EndedTask],
            _fence: &Fence,
        ) -> Result<(), RegistryError> {
            Ok(())
        }

        fn store_full(&self) -> watch::Receiver<Option<String>> {
            watch::channel(None).1
        }
    }

    fn leadership() -> (Leadership, watch::Sender<bool>) {
        let (held, receiver) = watch::channel(true);
        let leadership = Leadership {
            candidate: agentmesh_core::AgentId::new("coordinator"),
            fence: Fence {
                key: "leader".into(),
                revision: 1,
                lease: 1,
            },
            held: receiver,
        };
        (leadership, held)
    }

    fn spawn(
        store: Arc<Store>,
        batch_bytes: usize,
    ) -> (
        RecordWriter,
        RecordHub,
        Arc<Mutex<Vec<RefusedRecord>>>,
        watch::Sender<bool>,
    ) {
        let (leadership, held) = leadership();
        let hub = RecordHub::new(usize::MAX);
        let refused = Arc::new(Mutex::new(Vec::new()));
        let report = refused.clone();
        let writer = RecordWriter::spawn(
            store,
            leadership,
            WriterLimits {
                batch: 64,
                batch_bytes,
                concurrency: 1,
            },
            hub.clone(),
            Arc::new(move |r| report.lock().unwrap().push(r)),
        );
        (writer, hub, refused, held)
    }

    #[tokio::test]
    async fn a_refused_record_fails_alone_and_the_rest_of_its_batch_is_written() {
        // Room for every record but "huge" (the writer's batch bound is
        // set too high on purpose, so they share one transaction).
        let store = Store::new(3_000, 0);
        let (writer, hub, refused, _held) = spawn(store.clone(), usize::MAX);
        let mut acks = Vec::new();
        for (id, pad) in [("a", 10), ("b", 10), ("huge", 5_000), ("c", 10), ("d", 10)] {
            let (sender, receiver) = oneshot::channel();
            let record = record(id, 1, pad);
            writer
                .write(record.clone(), record.encoded_len(), Some(sender))
                .await;
            acks.push((id, receiver));
        }
        for (id, ack) in acks {
            let outcome = ack.await.unwrap();
            if id == "huge" {
                let error = outcome.unwrap_err();
                assert!(error.contains("request is too large"), "{error}");
            } else {
                assert_eq!(outcome, Ok(()), "{id}");
            }
        }
        assert_eq!(store.written(), ["a", "b", "c", "d"]);
        assert!(hub.latest(&TaskId::new("c")).is_some());
        assert!(hub.latest(&TaskId::new("huge")).is_none());
        let refused = refused.lock().unwrap().clone();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].record.id, TaskId::new("huge"));
        assert!(refused[0].bytes > 5_000);

        // The writer is not wedged: a later record goes through at once.
        let (sender, receiver) = oneshot::channel();
        let later = record("later", 1, 10);
        writer
            .write(later.clone(), later.encoded_len(), Some(sender))
            .await;
        assert_eq!(receiver.await.unwrap(), Ok(()));
        writer.finish(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn transient_failures_are_retried_while_the_term_stands() {
        let store = Store::new(usize::MAX, 2);
        let (writer, _hub, refused, _held) = spawn(store.clone(), usize::MAX);
        let (sender, receiver) = oneshot::channel();
        let record = record("a", 1, 10);
        writer
            .write(record.clone(), record.encoded_len(), Some(sender))
            .await;
        assert_eq!(receiver.await.unwrap(), Ok(()));
        assert_eq!(store.calls.load(Ordering::SeqCst), 3);
        assert!(refused.lock().unwrap().is_empty());
        writer.finish(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_transient_failure_is_given_up_once_the_term_is_over() {
        let store = Store::new(usize::MAX, usize::MAX);
        let (writer, _hub, refused, held) = spawn(store.clone(), usize::MAX);
        let (sender, receiver) = oneshot::channel();
        let record = record("a", 1, 10);
        writer
            .write(record.clone(), record.encoded_len(), Some(sender))
            .await;
        // Retrying: polled with a deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.calls.load(Ordering::SeqCst) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "no retry");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        held.send_replace(false);
        let error = receiver.await.unwrap().unwrap_err();
        assert!(error.contains("leadership was lost"), "{error}");
        // Not the record's fault: nobody is told to fail its task.
        assert!(refused.lock().unwrap().is_empty());
        writer.finish(Duration::from_secs(5)).await;
    }
}
