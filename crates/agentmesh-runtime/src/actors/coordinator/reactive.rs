//! The leader's response cache for reactive tasks (`pattern: reactive`).
//!
//! A reactive task that completes leaves its answer here, keyed by its
//! request and guarded by the tool and input it was routed to (see
//! `core::reactive::cache`). A later reactive submit whose request is
//! similar enough, at its own `threshold`, is answered at once: its record
//! is completed with the cached output and says so (`answered_by: cache`,
//! the similarity and the task whose answer it reuses), and no subtask is
//! queued. A submit with `cache: false` neither reads nor fills it.
//!
//! The cache lives in the leader's memory only: a new leader starts with
//! an empty one, and answers are recomputed once. What a client was told
//! stays readable: a cached answer is a task with a durable record like
//! any other.

use agentmesh_core::TaskId;
use agentmesh_core::reactive::{AnswerPath, CacheKey, CachePolicy, ResponseCache};
use agentmesh_core::task::{Status, TaskRecord};
use serde_json::{Value, json};

use crate::metrics;

pub struct Cache {
    cache: ResponseCache,
}

impl Cache {
    pub fn new(policy: CachePolicy) -> Self {
        Self {
            cache: ResponseCache::new(policy),
        }
    }

    /// `record` completed from the cache, when it is a reactive task that
    /// may use it and a similar enough answer is there.
    pub fn answer(&mut self, record: &TaskRecord, now_ms: u64) -> Option<TaskRecord> {
        let reactive = record.reactive.as_ref().filter(|r| r.cache)?;
        let key = CacheKey::new(&reactive.request, record.reactive_guard());
        let before = self.cache.counters();
        let hit = self.cache.get(&key, reactive.threshold, now_ms);
        self.publish(before);
        let hit = hit?;
        let source = TaskId::new(hit.response["task"].as_str().unwrap_or_default());
        let output = hit.response.get("output").cloned().unwrap_or(Value::Null);
        let mut answered = record.clone();
        answered.answer_from_cache(output, hit.confidence, source, now_ms);
        metrics::reactive_answered(AnswerPath::Cache.as_str());
        Some(answered)
    }

    /// Keeps the answer of `record`, an ended task, when it is a reactive
    /// task that completed by running its tool and may fill the cache.
    pub fn remember(&mut self, record: &TaskRecord, now_ms: u64) {
        let Some(reactive) = &record.reactive else {
            return;
        };
        if record.status != Status::Completed || reactive.answered_by == AnswerPath::Cache {
            return;
        }
        metrics::reactive_answered(reactive.answered_by.as_str());
        if !reactive.cache {
            return;
        }
        let Some(output) = record.subtasks.first().and_then(|s| s.output.clone()) else {
            return;
        };
        let key = CacheKey::new(&reactive.request, record.reactive_guard());
        let before = self.cache.counters();
        self.cache.insert(
            key,
            json!({"task": record.id.as_str(), "output": output}),
            now_ms,
        );
        self.publish(before);
    }

    fn publish(&self, before: agentmesh_core::reactive::CacheCounters) {
        metrics::reactive_cache(
            before,
            self.cache.counters(),
            self.cache.len(),
            self.cache.bytes(),
        );
    }
}
