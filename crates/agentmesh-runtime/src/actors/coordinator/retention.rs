//! Retention: the leader deletes the records of ended tasks once they are
//! older than `--task-retention`, or beyond the newest
//! `--max-ended-tasks`, oldest first.
//!
//! Every record stays in etcd until something deletes it, and etcd's
//! database is bounded (`--quota-backend-bytes`, 2 GiB by default): without
//! retention a busy cluster fills it and etcd then refuses every write. So
//! one sweeper runs per term of leadership, beside the record writer, and
//! its deletes are fenced with the term like every write of the leader: a
//! deposed leader deletes nothing.
//!
//! Each sweep is bounded: at most [`MAX_BATCHES`] rounds, each one read of
//! the [`BATCH`] oldest ended tasks from the store's index (never a record)
//! and one fenced delete of those that are due. A backlog larger than that
//! is worked off over the following sweeps.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_registry::{EndedTask, EndedTasks, Fence, Leadership, RegistryError, TaskStore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::hub::RecordHub;
use crate::support::clock::now_ms;

/// Ended tasks read, and at most deleted, per round of a sweep.
pub const BATCH: usize = 256;
/// Rounds per sweep: at most `BATCH * MAX_BATCHES` deletes per sweep.
pub const MAX_BATCHES: usize = 8;
/// Time between two sweeps.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What is kept of ended tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// How long an ended task's record is kept after it ended.
    pub keep_for: Duration,
    /// Ended task records kept at most; the oldest go first beyond it.
    pub max_ended: usize,
}

/// The tasks among `ended` (oldest first) that are due for deletion at
/// `now_ms`: those beyond the newest `max_ended` of `ended.total`, and those
/// that ended `keep_for` ago or longer.
pub fn due(ended: &EndedTasks, policy: &RetentionPolicy, now_ms: u64) -> Vec<EndedTask> {
    let over = ended.total.saturating_sub(policy.max_ended);
    let keep_ms = u64::try_from(policy.keep_for.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms.saturating_sub(keep_ms);
    ended
        .oldest
        .iter()
        .enumerate()
        // Oldest first: once one is neither over the cap nor expired, no
        // later one is.
        .take_while(|(i, task)| *i < over || (keep_ms <= now_ms && task.ended_ms <= cutoff))
        .map(|(_, task)| task.clone())
        .collect()
}

/// The sweeper of one term; stops when dropped.
pub struct Retention {
    task: JoinHandle<()>,
}

impl Retention {
    /// Sweeps every [`SWEEP_INTERVAL`] while `leadership` stands; what it
    /// deletes is forgotten by `hub` too.
    pub fn spawn(
        store: Arc<dyn TaskStore>,
        leadership: Leadership,
        policy: RetentionPolicy,
        hub: RecordHub,
    ) -> Self {
        Self {
            task: tokio::spawn(run(store, leadership, policy, hub)),
        }
    }
}

impl Drop for Retention {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    store: Arc<dyn TaskStore>,
    leadership: Leadership,
    policy: RetentionPolicy,
    hub: RecordHub,
) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = leadership.lost() => return,
        }
        match sweep(store.as_ref(), &leadership.fence, &policy, now_ms(), &hub).await {
            Ok((0, _)) => {}
            Ok((deleted, bytes)) => info!(
                deleted,
                bytes,
                keep_for = ?policy.keep_for,
                max_ended = policy.max_ended,
                "deleted ended task records after retention"
            ),
            Err(RegistryError::NotLeader { .. } | RegistryError::Closed) => return,
            Err(error) => warn!(%error, "retention sweep failed; trying again next sweep"),
        }
    }
}

/// One bounded sweep: deletes what is due, oldest first; returns the tasks
/// deleted and the bytes of their records.
pub async fn sweep(
    store: &dyn TaskStore,
    fence: &Fence,
    policy: &RetentionPolicy,
    now_ms: u64,
    hub: &RecordHub,
) -> Result<(usize, u64), RegistryError> {
    let (mut deleted, mut bytes) = (0, 0);
    for _ in 0..MAX_BATCHES {
        let ended = store.ended_tasks(BATCH).await?;
        let due = due(&ended, policy, now_ms);
        if due.is_empty() {
            break;
        }
        store.delete_tasks_fenced(&due, fence).await?;
        hub.forget_ended(due.iter().map(|t| &t.id));
        deleted += due.len();
        bytes += due.iter().map(|t| t.bytes).sum::<u64>();
        debug!(deleted = due.len(), total = ended.total, "retention round");
        if due.len() < BATCH {
            break;
        }
    }
    Ok((deleted, bytes))
}

#[cfg(test)]
mod tests {
    use agentmesh_core::task::{Status, TaskFile, TaskRecord};
    use agentmesh_core::{AgentId, TaskId};
    use agentmesh_registry::{Election, MemoryRegistry};

    use super::*;

    fn ended(ms: &[u64], total: usize) -> EndedTasks {
        EndedTasks {
            total,
            oldest: ms
                .iter()
                .map(|&ended_ms| EndedTask {
                    id: TaskId::new(format!("t{ended_ms}")),
                    ended_ms,
                    bytes: 10,
                    keys: Default::default(),
                })
                .collect(),
        }
    }

    fn policy(keep_ms: u64, max_ended: usize) -> RetentionPolicy {
        RetentionPolicy {
            keep_for: Duration::from_millis(keep_ms),
            max_ended,
        }
    }

    fn ms(tasks: &[EndedTask]) -> Vec<u64> {
        tasks.iter().map(|t| t.ended_ms).collect()
    }

    #[test]
    fn expired_tasks_are_due_oldest_first() {
        let listed = ended(&[100, 200, 300], 3);
        assert_eq!(ms(&due(&listed, &policy(50, 10), 260)), [100, 200]);
        assert_eq!(ms(&due(&listed, &policy(50, 10), 100)), Vec::<u64>::new());
        // A window longer than the clock has run expires nothing.
        assert!(due(&listed, &policy(1_000, 10), 300).is_empty());
    }

    #[test]
    fn tasks_beyond_the_cap_are_due_however_young() {
        let listed = ended(&[100, 200, 300], 1_002);
        // Two over the cap of 1,000: the two oldest go, the third stays.
        assert_eq!(ms(&due(&listed, &policy(u64::MAX, 1_000), 300)), [100, 200]);
        let listed = ended(&[100, 200], 2);
        assert!(due(&listed, &policy(u64::MAX, 2), 300).is_empty());
    }

    fn record(id: &str, status: Status, updated_ms: u64) -> Arc<TaskRecord> {
        let file: TaskFile = serde_json::from_str(
            r#"{"name":"t","tasks":[{"id":"a","capability":"echo","input":{}}]}"#,
        )
        .unwrap();
        let mut record = TaskRecord::new(TaskId::new(id), file, 0);
        record.status = status;
        record.updated_ms = updated_ms;
        Arc::new(record)
    }

    #[tokio::test]
    async fn a_sweep_deletes_what_is_due_and_keeps_the_rest() {
        let store = MemoryRegistry::new();
        let records: Vec<Arc<TaskRecord>> = (1..=5u64)
            .map(|i| record(&format!("t{i}"), Status::Completed, i * 1_000))
            .chain([record("running", Status::Running, 0)])
            .collect();
        store.put_tasks(&records).await.unwrap();
        let leadership = store.campaign(&AgentId::new("c")).await.unwrap();

        // Expired at 3.5 s: t1..t3 (ended at 1, 2 and 3 s, kept 0.5 s).
        let hub = RecordHub::new(usize::MAX);
        for record in &records {
            hub.publish(record.clone(), record.encoded_len());
        }
        let (deleted, bytes) = sweep(&store, &leadership.fence, &policy(500, 100), 3_500, &hub)
            .await
            .unwrap();
        assert_eq!(deleted, 3);
        assert!(bytes > 0);
        assert!(
            hub.latest(&TaskId::new("t1")).is_none(),
            "the hub forgets it too"
        );
        assert!(hub.latest(&TaskId::new("t4")).is_some());
        // Over a cap of one: t4 goes, t5 stays.
        let (deleted, _) = sweep(&store, &leadership.fence, &policy(u64::MAX, 1), 3_500, &hub)
            .await
            .unwrap();
        assert_eq!(deleted, 1);
        for (id, kept) in [
            ("t1", false),
            ("t4", false),
            ("t5", true),
            ("running", true),
        ] {
            assert_eq!(
                store.get_task(&TaskId::new(id)).await.unwrap().is_some(),
                kept,
                "{id}"
            );
        }

        store.resign(&leadership).await.unwrap();
        let refused = sweep(&store, &leadership.fence, &policy(0, 1), 9_000, &hub).await;
        assert!(matches!(refused, Err(RegistryError::NotLeader { .. })));
    }
}
