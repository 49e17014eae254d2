//! The coordination memory: past (request, decomposition, quality)
//! triples, and the choice of one to reuse for a new request.
//!
//! # Similarity
//!
//! With an embedding provider, requests are compared by the cosine of
//! their embeddings. Without one, by the lexical similarity the reactive
//! cache uses ([`crate::reactive::CacheKey`]): the cosine of the two
//! requests' content-token counts (lowercased alphanumeric runs, stop words
//! dropped), and 0 unless both hold the same numbers in the same order, so
//! "count the words in 'a b'" never reuses the plan of "…in 'a b c'" when
//! the literals differ, and "calculate 2 + 2" never reuses "calculate 3 +
//! 3". Only triples whose quality reached the threshold are kept.

use serde::{Deserialize, Serialize};

use super::Decomposition;
use crate::TaskId;
use crate::reactive::CacheKey;

/// Triples kept unless the node says otherwise (`--request-memory-size`).
pub const DEFAULT_MEMORY_SIZE: usize = 256;
/// The similarity at or above which a past decomposition is reused
/// (`--request-memory-similarity`): high, as a reused plan runs as is.
pub const DEFAULT_SIMILARITY: f64 = 0.9;

/// One remembered triple.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEntry {
    /// The task that ran the decomposition; the entry's key.
    pub task: TaskId,
    pub request: String,
    pub decomposition: Decomposition,
    pub quality: f64,
    /// The provider that produced the decomposition.
    pub provider: String,
    pub created_ms: u64,
    /// The request's embedding, when an embedding provider made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

/// The lexical similarity of two requests, in `[0, 1]` (module doc).
pub fn lexical_similarity(a: &str, b: &str) -> f64 {
    CacheKey::new(a, None).similarity(&CacheKey::new(b, None))
}

/// Cosine of two embeddings in `[0, 1]`; 0 when their lengths differ.
pub fn embedding_similarity(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let key = |v: &[f32]| CacheKey::new("", None).with_embedding(v.to_vec());
    key(a).similarity(&key(b))
}

/// A remembered decomposition chosen for a new request.
#[derive(Debug, Clone, PartialEq)]
pub struct Recall<'a> {
    pub entry: &'a MemoryEntry,
    pub similarity: f64,
    /// `embedding` or `lexical`.
    pub by: &'static str,
}

/// The most similar entry at or above `threshold`: by embedding when the
/// request and the entry both have one, lexically otherwise. Ties go to
/// the newer entry.
pub fn best_match<'a>(
    request: &str,
    embedding: Option<&[f32]>,
    entries: &'a [MemoryEntry],
    threshold: f64,
) -> Option<Recall<'a>> {
    let mut best: Option<Recall<'a>> = None;
    for entry in entries {
        let (similarity, by) = match (embedding, entry.embedding.as_deref()) {
            (Some(a), Some(b)) if a.len() == b.len() => (embedding_similarity(a, b), "embedding"),
            _ => (lexical_similarity(request, &entry.request), "lexical"),
        };
        if similarity < threshold {
            continue;
        }
        let better = best.as_ref().is_none_or(|b| {
            similarity > b.similarity
                || (similarity == b.similarity && entry.created_ms > b.entry.created_ms)
        });
        if better {
            best = Some(Recall {
                entry,
                similarity,
                by,
            });
        }
    }
    best
}

/// Whether a finished request's triple is worth keeping: its score
/// reached the threshold, so reusing it repeats a good plan.
pub fn worth_remembering(quality: f64, threshold: f64) -> bool {
    quality >= threshold
}

/// The tasks of the entries to evict so at most `max` remain: the oldest.
pub fn evictions(entries: &[MemoryEntry], max: usize) -> Vec<TaskId> {
    if entries.len() <= max {
        return Vec::new();
    }
    let mut by_age: Vec<&MemoryEntry> = entries.iter().collect();
    by_age.sort_by_key(|e| (e.created_ms, e.task.as_str().to_owned()));
    by_age
        .into_iter()
        .take(entries.len() - max)
        .map(|e| e.task.clone())
        .collect()
}
