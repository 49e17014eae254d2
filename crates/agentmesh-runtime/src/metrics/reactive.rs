//! Metrics of the reactive fast path (`pattern: reactive`):
//!
//! ```text
//! agentmesh_reactive_cache_hits_total          lookups answered from the response cache (leader)
//! agentmesh_reactive_cache_misses_total        lookups that found nothing similar enough (leader)
//! agentmesh_reactive_cache_evictions_total     entries dropped for room or because their TTL passed
//! agentmesh_reactive_cache_entries             entries held (leader)
//! agentmesh_reactive_cache_bytes               bytes held, as counted against the cache's bound
//! agentmesh_reactive_answers_total{path}       reactive requests answered, by cache, keyword or provider, or refused
//! agentmesh_reactive_provider_breaker          the provider fallback's breaker: 0 closed, 1 half-open, 2 open
//! ```

use agentmesh_core::breaker::BreakerState;
use agentmesh_core::reactive::CacheCounters;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::activity::breaker_value;

/// `path` of `agentmesh_reactive_answers_total` for a refused request.
pub const REFUSED: &str = "refused";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathLabels {
    /// `cache`, `keyword`, `provider` or `refused`: a fixed set.
    path: &'static str,
}

#[derive(Debug, Default)]
pub struct Reactive {
    hits: Counter,
    misses: Counter,
    evictions: Counter,
    entries: Gauge,
    bytes: Gauge,
    answers: Family<PathLabels, Counter>,
    breaker: Gauge,
}

impl Reactive {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "agentmesh_reactive_cache_hits",
            "Reactive requests answered from the leader's response cache",
            metrics.hits.clone(),
        );
        registry.register(
            "agentmesh_reactive_cache_misses",
            "Reactive cache lookups that found no answer similar enough",
            metrics.misses.clone(),
        );
        registry.register(
            "agentmesh_reactive_cache_evictions",
            "Response cache entries dropped to make room or because their TTL passed",
            metrics.evictions.clone(),
        );
        registry.register(
            "agentmesh_reactive_cache_entries",
            "Entries in the leader's response cache",
            metrics.entries.clone(),
        );
        registry.register(
            "agentmesh_reactive_cache_bytes",
            "Bytes held by the leader's response cache, as counted against its bound",
            metrics.bytes.clone(),
        );
        registry.register(
            "agentmesh_reactive_answers",
            "Reactive requests answered, by path: cache, keyword, provider, or refused at submit",
            metrics.answers.clone(),
        );
        registry.register(
            "agentmesh_reactive_provider_breaker",
            "The breaker around the reactive provider fallback: 0 closed, 1 half-open, 2 open",
            metrics.breaker.clone(),
        );
        metrics
    }

    /// Adds what the cache did since `before`, and sets its size.
    pub fn cache(&self, before: CacheCounters, now: CacheCounters, entries: usize, bytes: usize) {
        self.hits.inc_by(now.hits.saturating_sub(before.hits));
        self.misses.inc_by(now.misses.saturating_sub(before.misses));
        let dropped = |c: CacheCounters| c.evicted + c.expired;
        self.evictions
            .inc_by(dropped(now).saturating_sub(dropped(before)));
        self.entries.set(entries as i64);
        self.bytes.set(bytes as i64);
    }

    pub fn answered(&self, path: &'static str) {
        self.answers.get_or_create(&PathLabels { path }).inc();
    }

    pub fn provider_breaker(&self, state: BreakerState) {
        self.breaker.set(breaker_value(state));
    }
}
