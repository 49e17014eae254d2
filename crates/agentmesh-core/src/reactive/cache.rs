//! The response cache: answers a request like one already answered,
//! without any work, when the two are similar enough.
//!
//! # Similarity
//!
//! Lexical by default: the cosine of the two requests' token-count
//! vectors, over their content tokens (the [`tokens`] of the request minus
//! a short list of [`STOPWORDS`], so "the capital of France" and "the
//! capital of Spain" share one content token of two, not four of five).
//! Question words stay: "why is X" is not "what is X". When both the
//! entry and the lookup carry an embedding of the same dimension, the
//! cosine of the embeddings is used instead, so an embedding provider can
//! be plugged in without changing the cache.
//!
//! Similar wording is not the same question when the details differ, so
//! two guards must be equal before similarity is even computed:
//!
//! - the request's literals, every token holding a digit, in order ("what
//!   is 2 + 3" never answers "what is 2 + 4");
//! - the caller's `guard`: for a tool-routed request, the tool and its
//!   extracted input, so "count words: a b c" never answers "count words:
//!   a b d".
//!
//! A lookup hits when the best similarity is at least the threshold (0.8
//! by default, the guide's confidence). The similarity is the hit's
//! confidence.
//!
//! # Bounds
//!
//! Entries live `ttl_ms` from insertion; at most `max_entries` entries and
//! `max_bytes` bytes (request, response as JSON, guard and embedding) are
//! kept. An insertion first drops expired entries, then the least recently
//! used, until the new entry fits; an entry larger than `max_bytes` alone is
//! refused. Lookups scan every entry, so `max_entries` also bounds their
//! cost. Time comes in as `now_ms`; nothing here reads a clock.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::text::tokens;

/// Words that say little about what a request asks.
pub const STOPWORDS: [&str; 28] = [
    "a", "an", "the", "is", "are", "was", "were", "be", "of", "in", "on", "at", "to", "for", "and",
    "or", "please", "me", "i", "you", "can", "could", "would", "will", "it", "this", "that", "s",
];

/// Similarity at or above which a cached answer is used.
pub const DEFAULT_THRESHOLD: f64 = 0.8;

/// The cache's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CachePolicy {
    pub ttl_ms: u64,
    pub max_entries: usize,
    pub max_bytes: usize,
    /// Longest embedding accepted with an entry or a lookup.
    pub max_embedding_dims: usize,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            // Five minutes: long enough for a burst of repeats, short
            // enough that an answer from a tool whose data moves (http.get)
            // is not served for long.
            ttl_ms: 5 * 60 * 1000,
            // A full scan of 1024 small entries stays well under a
            // millisecond.
            max_entries: 1024,
            max_bytes: 16 * 1024 * 1024,
            max_embedding_dims: 4096,
        }
    }
}

/// A request as the cache compares it.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheKey {
    /// Content tokens with their counts, sorted by token.
    counts: Vec<(String, u32)>,
    norm: f64,
    /// Tokens holding a digit, in order.
    literals: Vec<String>,
    guard: Option<String>,
    embedding: Option<Vec<f32>>,
    bytes: usize,
}

impl CacheKey {
    /// The key of `request`; `guard` must be equal for a hit (the routed
    /// tool and input, see the module doc).
    pub fn new(request: &str, guard: Option<String>) -> Self {
        let mut literals = Vec::new();
        let mut content: Vec<String> = Vec::new();
        for token in tokens(request) {
            if token.chars().any(|c| c.is_ascii_digit()) {
                literals.push(token);
            } else if !STOPWORDS.contains(&token.as_str()) {
                content.push(token);
            }
        }
        content.sort_unstable();
        let mut counts: Vec<(String, u32)> = Vec::new();
        for token in content {
            match counts.last_mut() {
                Some((last, n)) if *last == token => *n += 1,
                _ => counts.push((token, 1)),
            }
        }
        let norm = counts
            .iter()
            .map(|(_, n)| f64::from(*n).powi(2))
            .sum::<f64>()
            .sqrt();
        let bytes = request.len() + guard.as_ref().map_or(0, String::len);
        Self {
            counts,
            norm,
            literals,
            guard,
            embedding: None,
            bytes,
        }
    }

    /// The same key with an embedding of the request.
    pub fn with_embedding(mut self, embedding: Vec<f32>) -> Self {
        self.bytes += embedding.len() * std::mem::size_of::<f32>();
        self.embedding = Some(embedding);
        self
    }

    /// Cosine similarity to `other`, in `[0, 1]`; 0 when the guards or
    /// literals differ. Two keys without content tokens are similar only
    /// when everything else is equal.
    pub fn similarity(&self, other: &CacheKey) -> f64 {
        if self.guard != other.guard || self.literals != other.literals {
            return 0.0;
        }
        if let (Some(a), Some(b)) = (&self.embedding, &other.embedding)
            && a.len() == b.len()
            && !a.is_empty()
        {
            return embedding_cosine(a, b);
        }
        // Equal counts are exactly 1, not a rounded 0.99…, so a threshold
        // of 1 still answers a repeat.
        if self.counts == other.counts {
            return 1.0;
        }
        if self.counts.is_empty() || other.counts.is_empty() {
            return 0.0;
        }
        // Both sorted: one merge pass.
        let (mut i, mut j, mut dot) = (0, 0, 0.0);
        while i < self.counts.len() && j < other.counts.len() {
            match self.counts[i].0.cmp(&other.counts[j].0) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    dot += f64::from(self.counts[i].1) * f64::from(other.counts[j].1);
                    i += 1;
                    j += 1;
                }
            }
        }
        (dot / (self.norm * other.norm)).clamp(0.0, 1.0)
    }
}

fn embedding_cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 || !dot.is_finite() {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())).clamp(0.0, 1.0)
}

#[derive(Debug, Clone)]
struct Entry {
    key: CacheKey,
    response: Value,
    bytes: usize,
    inserted_ms: u64,
    used_ms: u64,
}

/// A cached answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheHit {
    pub response: Value,
    /// The similarity of the request to the cached one.
    pub confidence: f64,
}

/// What the cache has done, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheCounters {
    pub hits: u64,
    pub misses: u64,
    pub insertions: u64,
    /// Dropped because their TTL passed.
    pub expired: u64,
    /// Dropped to make room.
    pub evicted: u64,
    /// Not cached: larger than `max_bytes` alone, or an embedding over
    /// `max_embedding_dims`.
    pub refused: u64,
}

/// The cache of one coordinator.
#[derive(Debug, Clone, Default)]
pub struct ResponseCache {
    policy: CachePolicy,
    entries: Vec<Entry>,
    bytes: usize,
    counters: CacheCounters,
}

impl ResponseCache {
    pub fn new(policy: CachePolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    pub fn counters(&self) -> CacheCounters {
        self.counters
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held, as counted against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The most similar live entry at or above `threshold`, counted as a
    /// hit (and marked used) or a miss. Expired entries never answer. A
    /// lookup embedding longer than `max_embedding_dims` is ignored.
    pub fn get(&mut self, key: &CacheKey, threshold: f64, now_ms: u64) -> Option<CacheHit> {
        let ttl = self.policy.ttl_ms;
        let oversized = key
            .embedding
            .as_ref()
            .is_some_and(|e| e.len() > self.policy.max_embedding_dims);
        let mut best: Option<(usize, f64)> = None;
        if !oversized {
            for (i, entry) in self.entries.iter().enumerate() {
                if now_ms.saturating_sub(entry.inserted_ms) >= ttl {
                    continue;
                }
                let similarity = entry.key.similarity(key);
                if similarity >= threshold && best.is_none_or(|(_, b)| similarity > b) {
                    best = Some((i, similarity));
                }
            }
        }
        match best {
            Some((i, confidence)) => {
                self.counters.hits += 1;
                let entry = &mut self.entries[i];
                entry.used_ms = now_ms;
                Some(CacheHit {
                    response: entry.response.clone(),
                    confidence,
                })
            }
            None => {
                self.counters.misses += 1;
                None
            }
        }
    }

    /// Caches `response` for `key`, replacing an entry for an equal key.
    /// Returns whether it was kept.
    pub fn insert(&mut self, key: CacheKey, response: Value, now_ms: u64) -> bool {
        let response_bytes = serde_json::to_vec(&response).map_or(usize::MAX, |v| v.len());
        let bytes = key.bytes.saturating_add(response_bytes);
        if bytes > self.policy.max_bytes
            || self.policy.max_entries == 0
            || key
                .embedding
                .as_ref()
                .is_some_and(|e| e.len() > self.policy.max_embedding_dims)
        {
            self.counters.refused += 1;
            return false;
        }
        if let Some(i) = self.entries.iter().position(|e| e.key == key) {
            let old = self.entries.swap_remove(i);
            self.bytes -= old.bytes;
        }
        self.drop_expired(now_ms);
        while self.entries.len() >= self.policy.max_entries
            || self.bytes + bytes > self.policy.max_bytes
        {
            let Some(lru) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used_ms)
                .map(|(i, _)| i)
            else {
                break;
            };
            let old = self.entries.swap_remove(lru);
            self.bytes -= old.bytes;
            self.counters.evicted += 1;
        }
        self.bytes += bytes;
        self.entries.push(Entry {
            key,
            response,
            bytes,
            inserted_ms: now_ms,
            used_ms: now_ms,
        });
        self.counters.insertions += 1;
        true
    }

    /// Drops every entry whose TTL has passed.
    pub fn drop_expired(&mut self, now_ms: u64) {
        let ttl = self.policy.ttl_ms;
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|e| {
            let live = now_ms.saturating_sub(e.inserted_ms) < ttl;
            if !live {
                freed += e.bytes;
            }
            live
        });
        self.bytes -= freed;
        self.counters.expired += (before - self.entries.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn key(request: &str) -> CacheKey {
        CacheKey::new(request, None)
    }

    #[test]
    fn similarity_is_cosine_over_content_tokens() {
        let a = key("What is the capital of France?");
        assert_eq!(a.similarity(&key("what is the capital of france")), 1.0);
        // {what, capital, france} vs {what, capital, spain}: 2 of 3.
        let spain = a.similarity(&key("What is the capital of Spain?"));
        assert!((spain - 2.0 / 3.0).abs() < 1e-9, "{spain}");
        // Reworded with stopwords only.
        assert_eq!(
            a.similarity(&key("please, what's the capital of France")),
            1.0
        );
    }

    #[test]
    fn literals_and_guards_must_be_equal() {
        assert_eq!(key("what is 2 + 3").similarity(&key("what is 2 + 4")), 0.0);
        assert_eq!(
            key("what is 2 + 3").similarity(&key("What is 2 + 3 ?")),
            1.0
        );
        let a = CacheKey::new("count words: a b c", Some("x".into()));
        let b = CacheKey::new("count words: a b c", Some("y".into()));
        assert_eq!(a.similarity(&b), 0.0);
    }

    #[test]
    fn embeddings_replace_lexical_similarity_when_both_have_one() {
        let a = key("hello").with_embedding(vec![1.0, 0.0]);
        let b = key("goodbye").with_embedding(vec![1.0, 0.0]);
        assert_eq!(a.similarity(&b), 1.0);
        let c = key("hello").with_embedding(vec![0.0, 1.0]);
        assert_eq!(a.similarity(&c), 0.0);
        // Dimensions differ: lexical.
        assert_eq!(a.similarity(&key("hello").with_embedding(vec![1.0])), 1.0);
    }

    #[test]
    fn hits_at_the_threshold_and_counts_hits_and_misses() {
        let mut cache = ResponseCache::new(CachePolicy::default());
        assert!(cache.insert(key("what is the capital of france"), json!("Paris"), 0));
        let hit = cache
            .get(&key("What is the capital of France?"), DEFAULT_THRESHOLD, 1)
            .unwrap();
        assert_eq!(hit.response, json!("Paris"));
        assert_eq!(hit.confidence, 1.0);
        assert!(
            cache
                .get(&key("what is the capital of spain"), DEFAULT_THRESHOLD, 2)
                .is_none()
        );
        // 2/3 similar: a hit at a lower threshold.
        assert!(
            cache
                .get(&key("what is the capital of spain"), 0.6, 3)
                .is_some()
        );
        let c = cache.counters();
        assert_eq!((c.hits, c.misses, c.insertions), (2, 1, 1));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let mut cache = ResponseCache::new(CachePolicy {
            ttl_ms: 100,
            ..CachePolicy::default()
        });
        cache.insert(key("ping"), json!(1), 0);
        assert!(cache.get(&key("ping"), 0.8, 99).is_some());
        assert!(cache.get(&key("ping"), 0.8, 100).is_none());
        cache.drop_expired(100);
        assert_eq!(
            (cache.len(), cache.bytes(), cache.counters().expired),
            (0, 0, 1)
        );
    }

    #[test]
    fn the_least_recently_used_entry_makes_room() {
        let mut cache = ResponseCache::new(CachePolicy {
            max_entries: 2,
            ..CachePolicy::default()
        });
        cache.insert(key("alpha"), json!(1), 0);
        cache.insert(key("beta"), json!(2), 1);
        cache.get(&key("alpha"), 0.8, 2);
        cache.insert(key("gamma"), json!(3), 3);
        assert!(cache.get(&key("alpha"), 0.8, 4).is_some());
        assert!(
            cache.get(&key("beta"), 0.8, 4).is_none(),
            "beta was least recently used"
        );
        assert_eq!(cache.counters().evicted, 1);
    }

    #[test]
    fn bytes_are_bounded_and_an_oversized_entry_is_refused() {
        let mut cache = ResponseCache::new(CachePolicy {
            max_bytes: 64,
            ..CachePolicy::default()
        });
        assert!(!cache.insert(key("big"), json!("x".repeat(100)), 0));
        assert_eq!(cache.counters().refused, 1);
        assert!(cache.insert(key("one"), json!("x".repeat(30)), 1));
        assert!(cache.insert(key("two"), json!("y".repeat(30)), 2));
        assert_eq!(cache.len(), 1, "the second pushed the first out");
        assert!(cache.bytes() <= 64);
    }

    #[test]
    fn an_equal_key_replaces_its_entry() {
        let mut cache = ResponseCache::new(CachePolicy::default());
        cache.insert(key("ping"), json!(1), 0);
        cache.insert(key("ping"), json!(2), 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&key("ping"), 0.8, 2).unwrap().response, json!(2));
    }

    proptest! {
        #[test]
        fn similarity_is_symmetric_bounded_and_one_on_itself(a in "[a-z0-9 ]{0,40}", b in "[a-z0-9 ]{0,40}") {
            let (ka, kb) = (key(&a), key(&b));
            let s = ka.similarity(&kb);
            prop_assert!((0.0..=1.0).contains(&s));
            prop_assert!((s - kb.similarity(&ka)).abs() < 1e-12);
            prop_assert_eq!(ka.similarity(&ka), 1.0);
        }

        #[test]
        fn the_cache_stays_within_its_bounds(ops in prop::collection::vec(("[a-e]{1,3}", 0usize..50, 0u64..10), 1..100)) {
            let policy = CachePolicy { ttl_ms: 20, max_entries: 4, max_bytes: 120, ..CachePolicy::default() };
            let mut cache = ResponseCache::new(policy);
            let mut now = 0;
            for (request, size, step) in ops {
                now += step;
                cache.insert(key(&request), json!("z".repeat(size)), now);
                prop_assert!(cache.len() <= 4);
                prop_assert!(cache.bytes() <= 120);
                if let Some(hit) = cache.get(&key(&request), 0.8, now) {
                    prop_assert!(hit.confidence >= 0.8);
                }
            }
        }
    }
}
