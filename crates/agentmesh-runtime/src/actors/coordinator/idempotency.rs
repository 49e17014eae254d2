//! The idempotency keys of the tasks this leader accepted in its term.
//!
//! A submit with a key is looked up in the store before it reaches the
//! coordinator (`TaskApi`), but the key is written with the task's first
//! record, so two submits with one key that arrive together would both
//! miss it there. The coordinator handles submits one at a time and
//! checks them against the keys it accepted, which closes that gap. A
//! previous leader's keys are all in the store: its writes were fenced, so
//! none can land after this term began.

use std::collections::{HashMap, VecDeque};

use agentmesh_core::task::TaskRecord;
use agentmesh_core::task::listing::{IdempotencyKey, idempotency_scope};
use agentmesh_core::{ClientId, TaskId};

/// Keys remembered at most. Older keys are forgotten first; by then their
/// records have long been written, and the store answers for them.
const MAX_KEYS: usize = 16_384;

/// The task a key was accepted for, and its document's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub task: TaskId,
    pub document_sha256: Option<String>,
}

#[derive(Debug, Default)]
pub struct RecentKeys {
    term: i64,
    known: HashMap<(ClientId, IdempotencyKey), Known>,
    order: VecDeque<(ClientId, IdempotencyKey)>,
}

impl RecentKeys {
    /// The task accepted in `term` under `record`'s key, if any.
    pub fn find(&mut self, term: i64, record: &TaskRecord) -> Option<Known> {
        self.enter(term);
        let key = record.idempotency_key.clone()?;
        self.known.get(&(idempotency_scope(record), key)).cloned()
    }

    /// Notes that `record` was accepted in `term`.
    pub fn accepted(&mut self, term: i64, record: &TaskRecord) {
        self.enter(term);
        let Some(key) = record.idempotency_key.clone() else {
            return;
        };
        if self.order.len() >= MAX_KEYS
            && let Some(oldest) = self.order.pop_front()
        {
            self.known.remove(&oldest);
        }
        let scoped = (idempotency_scope(record), key);
        self.order.push_back(scoped.clone());
        self.known.insert(
            scoped,
            Known {
                task: record.id.clone(),
                document_sha256: record.document_sha256.clone(),
            },
        );
    }

    /// Another term's keys may name tasks deleted since: start afresh.
    fn enter(&mut self, term: i64) {
        if term != self.term {
            self.known.clear();
            self.order.clear();
            self.term = term;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_core::task::TaskFile;

    fn keyed(id: &str, client: &str, key: &str) -> TaskRecord {
        let file: TaskFile = serde_json::from_str(
            r#"{"name":"t","tasks":[{"id":"a","capability":"echo","input":{}}]}"#,
        )
        .unwrap();
        let mut record = TaskRecord::new(TaskId::new(id), file, 0);
        record.client = Some(ClientId::parse(client).unwrap());
        record.idempotency_key = IdempotencyKey::parse(key).unwrap();
        record
    }

    #[test]
    fn a_key_is_found_in_its_scope_and_term_only() {
        let mut keys = RecentKeys::default();
        keys.accepted(7, &keyed("first", "alice", "k"));
        assert_eq!(
            keys.find(7, &keyed("again", "alice", "k")).map(|k| k.task),
            Some(TaskId::new("first"))
        );
        assert_eq!(keys.find(7, &keyed("bobs", "bob", "k")), None);
        assert_eq!(keys.find(7, &keyed("none", "alice", "")), None);
        assert_eq!(keys.find(8, &keyed("again", "alice", "k")), None);
    }
}
