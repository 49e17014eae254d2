//! The durable records of the tasks this coordinator owns, and who in this
//! process watches them.
//!
//! The record writer publishes every record here once it is durable. A
//! `Watch` of an owned task is then served from memory — no etcd read, no
//! etcd watch — which is what keeps a watch per task affordable at
//! thousands of tasks per second. Tasks this node does not own are watched
//! through the registry, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentmesh_core::TaskId;
use agentmesh_core::task::TaskRecord;
use tokio::sync::mpsc;

/// Records one watcher may fall behind before it is dropped; a dropped
/// watcher goes on from the registry's watch, so it skips nothing.
pub const WATCHER_BACKLOG: usize = 64;

#[derive(Clone, Default)]
pub struct RecordHub {
    tasks: Arc<Mutex<HashMap<TaskId, Entry>>>,
}

struct Entry {
    latest: Arc<TaskRecord>,
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
    /// Announces a durable record. Once a task ends, the hub forgets it: its
    /// record is in the registry for anyone who asks later.
    pub fn publish(&self, record: Arc<TaskRecord>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let terminal = record.status.is_terminal();
        let entry = tasks.entry(record.id.clone()).or_insert_with(|| Entry {
            latest: record.clone(),
            watchers: Vec::new(),
        });
        if record.revision < entry.latest.revision {
            return;
        }
        entry.latest = record.clone();
        entry
            .watchers
            .retain(|watcher| watcher.try_send(record.clone()).is_ok());
        if terminal {
            tasks.remove(&record.id);
        }
    }

    /// The latest durable record of a task this coordinator owns, if it
    /// still runs.
    pub fn latest(&self, id: &TaskId) -> Option<Arc<TaskRecord>> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.get(id).map(|entry| entry.latest.clone())
    }

    /// Follows an owned, unfinished task; `None` when this coordinator does
    /// not own it or it has ended.
    pub fn subscribe(&self, id: &TaskId) -> Option<Subscription> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let entry = tasks.get_mut(id)?;
        let (sender, changes) = mpsc::channel(WATCHER_BACKLOG);
        entry.watchers.push(sender);
        Some(Subscription {
            latest: entry.latest.clone(),
            changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_core::task::{Status, TaskFile};

    use super::*;

    fn record(revision: u64, status: Status) -> Arc<TaskRecord> {
        let file: TaskFile = serde_json::from_str(
            r#"{"name":"t","tasks":[{"id":"a","capability":"sleep","input":{}}]}"#,
        )
        .unwrap();
        let mut record = TaskRecord::new(TaskId::new("t1"), file, 0);
        record.revision = revision;
        record.status = status;
        Arc::new(record)
    }

    #[test]
    fn watchers_get_each_change_and_the_hub_forgets_ended_tasks() {
        let hub = RecordHub::default();
        hub.publish(record(1, Status::Pending));
        let mut subscription = hub.subscribe(&TaskId::new("t1")).unwrap();
        assert_eq!(subscription.latest.revision, 1);
        hub.publish(record(2, Status::Running));
        hub.publish(record(1, Status::Pending)); // stale: ignored
        hub.publish(record(3, Status::Completed));
        let revisions: Vec<u64> = std::iter::from_fn(|| subscription.changes.try_recv().ok())
            .map(|r| r.revision)
            .collect();
        assert_eq!(revisions, vec![2, 3]);
        assert!(hub.latest(&TaskId::new("t1")).is_none());
        assert!(hub.subscribe(&TaskId::new("t1")).is_none());
    }

    #[test]
    fn a_watcher_that_falls_behind_is_dropped_not_waited_for() {
        let hub = RecordHub::default();
        hub.publish(record(1, Status::Running));
        let mut subscription = hub.subscribe(&TaskId::new("t1")).unwrap();
        for revision in 2..(WATCHER_BACKLOG as u64 + 10) {
            hub.publish(record(revision, Status::Running));
        }
        let received = std::iter::from_fn(|| subscription.changes.try_recv().ok()).count();
        assert_eq!(received, WATCHER_BACKLOG);
        // The channel is closed: the watcher knows to go on elsewhere.
        assert!(matches!(
            subscription.changes.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
