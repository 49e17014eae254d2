//! The index of ended tasks that [`crate::TaskStore::ended_tasks`] answers
//! from: each ended task's end time and record size, oldest end first.
//!
//! Both registries keep it in memory. etcd holds only the records: a key
//! per ended task in etcd would cost a put per terminal record, which on
//! the trivial shape raised etcd's CPU by a third and cut the cluster's
//! throughput by a fifth. The etcd registry rebuilds the index from a
//! listing of the records whenever it may have missed a write (see
//! `etcd/space.rs`); the listing a new leader reads anyway suffices.

use std::collections::{BTreeSet, HashMap};

use agentmesh_core::TaskId;
use agentmesh_core::task::TaskRecord;
use agentmesh_core::task::listing::idempotency_scope;

use crate::{EndedTask, EndedTasks, TaskKeys};

/// Ended tasks by id and by end time. A task is in it at most once: a
/// rewritten terminal record replaces its entry.
#[derive(Debug, Default)]
pub(crate) struct EndedIndex {
    by_id: HashMap<TaskId, Entry>,
    by_end: BTreeSet<(u64, TaskId)>,
}

/// What the index knows of one ended task.
#[derive(Debug, Clone)]
struct Entry {
    ended_ms: u64,
    bytes: u64,
    /// The store revision that wrote the record (0 where there is none).
    revision: i64,
    /// The keys beside the record that go with it.
    keys: TaskKeys,
}

impl TaskKeys {
    /// The keys a store keeps beside `record`.
    pub(crate) fn of(record: &TaskRecord) -> Self {
        Self {
            created_ms: record.created_ms,
            idempotency: record
                .idempotency_key
                .clone()
                .map(|key| (idempotency_scope(record), key)),
        }
    }
}

impl EndedIndex {
    /// Notes a record of `id` written at `revision`: an entry if it is
    /// `terminal`, none otherwise.
    pub(crate) fn note(
        &mut self,
        id: &TaskId,
        terminal: bool,
        ended_ms: u64,
        bytes: u64,
        revision: i64,
        keys: TaskKeys,
    ) {
        self.remove(id);
        if terminal {
            self.by_end.insert((ended_ms, id.clone()));
            self.by_id.insert(
                id.clone(),
                Entry {
                    ended_ms,
                    bytes,
                    revision,
                    keys,
                },
            );
        }
    }

    /// Forgets `id` (deleted, or no longer ended).
    pub(crate) fn remove(&mut self, id: &TaskId) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_end.remove(&(old.ended_ms, id.clone()));
        }
    }

    /// Replaces the index with `listed`, a listing of the store read at
    /// `revision`, keeping the entries written after that revision, which
    /// the listing could not see.
    pub(crate) fn replace(&mut self, listed: EndedIndex, revision: i64) {
        let newer: Vec<(TaskId, Entry)> = self
            .by_id
            .drain()
            .filter(|(_, entry)| entry.revision > revision)
            .collect();
        *self = listed;
        for (id, entry) in newer {
            self.note(
                &id,
                true,
                entry.ended_ms,
                entry.bytes,
                entry.revision,
                entry.keys,
            );
        }
    }

    /// How many tasks have ended, and the `limit` that ended first.
    pub(crate) fn oldest(&self, limit: usize) -> EndedTasks {
        EndedTasks {
            total: self.by_id.len(),
            oldest: self
                .by_end
                .iter()
                .take(limit)
                .map(|(ended_ms, id)| {
                    let entry = self.by_id.get(id);
                    EndedTask {
                        id: id.clone(),
                        ended_ms: *ended_ms,
                        bytes: entry.map_or(0, |e| e.bytes),
                        keys: entry.map(|e| e.keys.clone()).unwrap_or_default(),
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(index: &EndedIndex) -> Vec<(String, u64)> {
        index
            .oldest(usize::MAX)
            .oldest
            .into_iter()
            .map(|t| (t.id.to_string(), t.ended_ms))
            .collect()
    }

    #[test]
    fn lists_oldest_end_first_and_a_task_once() {
        let mut index = EndedIndex::default();
        index.note(&TaskId::new("b"), true, 20, 5, 1, TaskKeys::default());
        index.note(&TaskId::new("a"), true, 30, 7, 2, TaskKeys::default());
        index.note(&TaskId::new("c"), false, 10, 9, 3, TaskKeys::default());
        // A terminal record rewritten later replaces its entry.
        index.note(&TaskId::new("b"), true, 40, 6, 4, TaskKeys::default());
        assert_eq!(ids(&index), [("a".into(), 30), ("b".into(), 40)]);
        let two = index.oldest(1);
        assert_eq!(two.total, 2);
        assert_eq!(two.oldest[0].bytes, 7);
        index.remove(&TaskId::new("a"));
        index.remove(&TaskId::new("gone"));
        assert_eq!(ids(&index), [("b".into(), 40)]);
        // A record that is no longer terminal leaves the index.
        index.note(&TaskId::new("b"), false, 50, 6, 5, TaskKeys::default());
        assert_eq!(index.oldest(10).total, 0);
    }

    #[test]
    fn a_listing_replaces_the_index_but_not_writes_made_after_it() {
        let mut index = EndedIndex::default();
        index.note(&TaskId::new("stale"), true, 1, 1, 5, TaskKeys::default());
        index.note(&TaskId::new("new"), true, 9, 1, 11, TaskKeys::default());
        let mut listed = EndedIndex::default();
        listed.note(&TaskId::new("listed"), true, 3, 1, 0, TaskKeys::default());
        index.replace(listed, 10);
        assert_eq!(ids(&index), [("listed".into(), 3), ("new".into(), 9)]);
    }
}
