//! The durable records of the tasks this coordinator owns, and who in this
//! process watches them.
//!
//! The record writer publishes every record here once it is durable. A
//! `Watch` of an owned task is then served from memory — no etcd read, no
//! etcd watch — which is what keeps a watch per task affordable at
//! thousands of tasks per second. Tasks this node does not own are watched
//! through the registry, as before.
//!
//! Ended tasks stay a little while: a client that watches right after
//! submitting often asks after a short task has already finished, and that
//! answer should not cost an etcd read either. They are bounded in count
//! ([`RECENTLY_ENDED`]) and in bytes (`--ended-cache-bytes`), the oldest
//! ended first out; an evicted task is read from the registry, like any
//! task this node does not own.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use agentmesh_core::TaskId;
use agentmesh_core::task::TaskRecord;
use tokio::sync::mpsc;

/// Records one watcher may fall behind before it is dropped; a dropped
/// watcher goes on from the registry's watch, so it skips nothing.
pub const WATCHER_BACKLOG: usize = 64;

/// Ended tasks whose final record is kept in memory, newest first out last.
pub const RECENTLY_ENDED: usize = 4096;

#[derive(Clone)]
pub struct RecordHub {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<TaskId, Entry>,
    /// Ended tasks still in `tasks`, oldest first.
    ended: VecDeque<TaskId>,
    /// The stored size of the ended tasks' records in `tasks`.
    ended_bytes: usize,
    /// The most `ended_bytes` may reach before the oldest is evicted.
    max_ended_bytes: usize,
    /// Watchers waiting for a task's first durable record.
    early: HashMap<TaskId, mpsc::Sender<Arc<TaskRecord>>>,
}

struct Entry {
    latest: Arc<TaskRecord>,
    /// `latest`'s size as stored.
    bytes: usize,
    watchers: Vec<mpsc::Sender<Arc<TaskRecord>>>,
}

/// An owned task's latest durable record and the changes that follow it.
/// The channel closes after the terminal record, or early when the watcher
/// fell too far behind.
pub struct Subscription {
    pub latest: Arc<TaskRecord>,
    pub changes: mpsc::Receiver<Arc<TaskRecord>>,
}

impl RecordHub {
    /// A hub that keeps ended tasks' final records up to `max_ended_bytes`
    /// of them (as stored) and [`RECENTLY_ENDED`] in number.
    pub fn new(max_ended_bytes: usize) -> Self {
        let inner = Inner {
            max_ended_bytes,
            ..Inner::default()
        };
        Self {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    /// Announces a durable record of `bytes` (as stored). An ended task's
    /// watchers are released and its final record kept for a while; then
    /// the registry has it.
    pub fn publish(&self, record: Arc<TaskRecord>, bytes: usize) {
        let mut inner = self.lock();
        let terminal = record.status.is_terminal();
        match inner.tasks.get_mut(&record.id) {
            Some(entry) => {
                if record.revision < entry.latest.revision || entry.latest.status.is_terminal() {
                    return;
                }
                entry.latest = record.clone();
                entry.bytes = bytes;
                entry
                    .watchers
                    .retain(|watcher| watcher.try_send(record.clone()).is_ok());
                if terminal {
                    entry.watchers.clear();
                }
            }
            None => {
                let entry = Entry {
                    latest: record.clone(),
                    bytes,
                    watchers: Vec::new(),
                };
                inner.tasks.insert(record.id.clone(), entry);
            }
        }
        if let Some(early) = inner.early.remove(&record.id)
            && early.try_send(record.clone()).is_ok()
            && !terminal
            && let Some(entry) = inner.tasks.get_mut(&record.id)
        {
            entry.watchers.push(early);
        }
        if terminal {
            inner.ended.push_back(record.id.clone());
            inner.ended_bytes += bytes;
            while inner.ended.len() > RECENTLY_ENDED || inner.ended_bytes > inner.max_ended_bytes {
                let Some(oldest) = inner.ended.pop_front() else {
                    break;
                };
                if let Some(entry) = inner.tasks.remove(&oldest) {
                    inner.ended_bytes -= entry.bytes;
                }
            }
        }
    }

    /// The latest durable record of a task this coordinator owns, while it
    /// runs and for a while after it ended.
    pub fn latest(&self, id: &TaskId) -> Option<Arc<TaskRecord>> {
        self.lock().tasks.get(id).map(|entry| entry.latest.clone())
    }

    /// Follows an owned task; `None` when this coordinator does not know
    /// it. The subscription of an ended task holds its final record and a
    /// closed channel.
    pub fn subscribe(&self, id: &TaskId) -> Option<Subscription> {
        let mut inner = self.lock();
        let entry = inner.tasks.get_mut(id)?;
        let (sender, changes) = mpsc::channel(WATCHER_BACKLOG);
        if !entry.latest.status.is_terminal() {
            entry.watchers.push(sender);
        }
        Some(Subscription {
            latest: entry.latest.clone(),
            changes,
        })
    }

    /// Follows a task from its first durable record on, for a caller that
    /// knows the id before the coordinator has written anything.
    pub fn follow_new(&self, id: &TaskId) -> EarlyWatch {
        let (sender, changes) = mpsc::channel(WATCHER_BACKLOG);
        self.lock().early.insert(id.clone(), sender);
        EarlyWatch {
            hub: self.clone(),
            id: id.clone(),
            changes,
        }
    }

    /// Forgets every task that has not ended, when this coordinator stops
    /// leading: their watchers' channels close, and they go on from the
    /// registry, where the next leader's records appear. Ended tasks stay:
    /// their final records are facts whoever leads.
    pub fn forget_unfinished(&self) {
        let mut inner = self.lock();
        inner
            .tasks
            .retain(|_, entry| entry.latest.status.is_terminal());
        inner.early.clear();
    }

    /// Forgets ended tasks that retention deleted from the registry, so
    /// this coordinator answers for them as every other node does: not
    /// found. Unfinished tasks are left alone.
    pub fn forget_ended<'a>(&self, ids: impl IntoIterator<Item = &'a TaskId>) {
        let mut inner = self.lock();
        let mut forgotten = std::collections::HashSet::new();
        for id in ids {
            if inner
                .tasks
                .get(id)
                .is_some_and(|entry| entry.latest.status.is_terminal())
            {
                inner.tasks.remove(id);
                forgotten.insert(id.clone());
            }
        }
        if !forgotten.is_empty() {
            inner.ended.retain(|id| !forgotten.contains(id));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records of a task from its first durable one; the channel closes after
/// the terminal record, or early when the watcher fell behind.
pub struct EarlyWatch {
    hub: RecordHub,
    id: TaskId,
    pub changes: mpsc::Receiver<Arc<TaskRecord>>,
}

impl Drop for EarlyWatch {
    /// A task that was refused never publishes; forget its watcher.
    fn drop(&mut self) {
        self.hub.lock().early.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_core::task::{Status, TaskFile};

    use super::*;

    /// A hub as large as a test can fill.
    fn hub() -> RecordHub {
        RecordHub::new(usize::MAX)
    }

    fn publish(hub: &RecordHub, record: Arc<TaskRecord>) {
        let bytes = record.encoded_len();
        hub.publish(record, bytes);
    }

    fn record(id: &str, revision: u64, status: Status) -> Arc<TaskRecord> {
        let file: TaskFile = serde_json::from_str(
            r#"{"name":"t","tasks":[{"id":"a","capability":"sleep","input":{}}]}"#,
        )
        .unwrap();
        let mut record = TaskRecord::new(TaskId::new(id), file, 0);
        record.revision = revision;
        record.status = status;
        Arc::new(record)
    }

    #[test]
    fn watchers_get_each_change_and_ended_tasks_are_kept_a_while() {
        let hub = hub();
        publish(&hub, record("t1", 1, Status::Pending));
        let mut subscription = hub.subscribe(&TaskId::new("t1")).unwrap();
        assert_eq!(subscription.latest.revision, 1);
        publish(&hub, record("t1", 2, Status::Running));
        publish(&hub, record("t1", 1, Status::Pending)); // stale: ignored
        publish(&hub, record("t1", 3, Status::Completed));
        let revisions: Vec<u64> = std::iter::from_fn(|| subscription.changes.try_recv().ok())
            .map(|r| r.revision)
            .collect();
        assert_eq!(revisions, vec![2, 3]);
        // A watch after the end still gets the final record, from memory.
        let late = hub.subscribe(&TaskId::new("t1")).unwrap();
        assert_eq!(late.latest.status, Status::Completed);
        // Until enough later tasks have ended.
        for n in 0..RECENTLY_ENDED {
            publish(&hub, record(&format!("other-{n}"), 1, Status::Failed));
        }
        assert!(hub.latest(&TaskId::new("t1")).is_none());
        assert!(hub.latest(&TaskId::new("other-1")).is_some());
    }

    #[test]
    fn an_early_watcher_sees_the_first_record_and_what_follows() {
        let hub = hub();
        let mut early = hub.follow_new(&TaskId::new("t1"));
        publish(&hub, record("t1", 1, Status::Running));
        publish(&hub, record("t1", 2, Status::Completed));
        let revisions: Vec<u64> = std::iter::from_fn(|| early.changes.try_recv().ok())
            .map(|r| r.revision)
            .collect();
        assert_eq!(revisions, vec![1, 2]);
        // Dropped before any record: nothing is left behind.
        drop(hub.follow_new(&TaskId::new("refused")));
        assert!(hub.lock().early.is_empty());
    }

    #[test]
    fn forgetting_unfinished_tasks_closes_their_watchers_and_keeps_ended_ones() {
        let hub = hub();
        publish(&hub, record("running", 1, Status::Running));
        publish(&hub, record("done", 2, Status::Completed));
        let mut watcher = hub.subscribe(&TaskId::new("running")).unwrap();
        let early = hub.follow_new(&TaskId::new("new"));
        hub.forget_unfinished();
        assert!(watcher.changes.try_recv().is_err());
        assert!(watcher.changes.is_closed());
        assert!(early.changes.is_closed());
        assert!(hub.latest(&TaskId::new("running")).is_none());
        assert!(hub.latest(&TaskId::new("done")).is_some());
    }

    #[test]
    fn a_watcher_that_falls_behind_is_dropped_not_waited_for() {
        let hub = hub();
        publish(&hub, record("t1", 1, Status::Running));
        let mut subscription = hub.subscribe(&TaskId::new("t1")).unwrap();
        for revision in 2..(WATCHER_BACKLOG as u64 + 10) {
            publish(&hub, record("t1", revision, Status::Running));
        }
        let received = std::iter::from_fn(|| subscription.changes.try_recv().ok()).count();
        assert_eq!(received, WATCHER_BACKLOG);
        // The channel is closed: the watcher knows to go on elsewhere.
        assert!(matches!(
            subscription.changes.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn ended_tasks_are_evicted_oldest_first_once_their_bytes_exceed_the_bound() {
        let one = record("t0", 2, Status::Completed).encoded_len();
        // Room for three ended records, not four.
        let hub = RecordHub::new(3 * one + one / 2);
        publish(&hub, record("running", 1, Status::Running));
        for n in 0..4 {
            publish(&hub, record(&format!("t{n}"), 2, Status::Completed));
        }
        assert!(
            hub.latest(&TaskId::new("t0")).is_none(),
            "the oldest is evicted"
        );
        for n in 1..4 {
            assert!(hub.latest(&TaskId::new(format!("t{n}"))).is_some());
        }
        // A running task is not the cache's to evict.
        assert!(hub.latest(&TaskId::new("running")).is_some());
        assert!(hub.lock().ended_bytes <= 3 * one + one / 2);
        // A record larger than the whole bound is not kept at all.
        let small = RecordHub::new(one / 2);
        publish(&small, record("t", 2, Status::Failed));
        assert!(small.latest(&TaskId::new("t")).is_none());
        assert_eq!(small.lock().ended_bytes, 0);
    }
}
