//! Event routing on the leader coordinator (docs/events.md).
//!
//! ```text
//! agentmesh_events_published_total                 events accepted (clients and task emits)
//! agentmesh_event_deliveries_total{outcome}        delivery attempts that ended: ok, failed, timeout, lost
//! agentmesh_event_retries_total                    attempts scheduled again after a failure
//! agentmesh_event_dead_letters_total               deliveries that ran out of attempts
//! agentmesh_event_dead_letters_trimmed_total       oldest dead letters deleted past --max-dead-letters
//! agentmesh_events_unhandled_total{type}           events no live handler took, by type
//! ```
//!
//! `outcome` is a fixed set; `type` is bounded like capabilities: at most
//! [`MAX_CAPABILITY_LABELS`] types get a series, the rest share `other`.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::MAX_CAPABILITY_LABELS;

/// How a delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The handler acknowledged success.
    Ok,
    /// The handler answered with an error, or the envelope was refused.
    Failed,
    /// No acknowledgement within `--event-ack-timeout`.
    Timeout,
    /// The agent holding the attempt left the cluster.
    Lost,
}

impl DeliveryOutcome {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Ok => "ok",
            DeliveryOutcome::Failed => "failed",
            DeliveryOutcome::Timeout => "timeout",
            DeliveryOutcome::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TypeLabels {
    r#type: String,
}

pub(super) struct EventMetrics {
    published: Counter,
    deliveries: Family<OutcomeLabels, Counter>,
    retries: Counter,
    dead: Counter,
    trimmed: Counter,
    unhandled: Family<TypeLabels, Counter>,
    unhandled_types: Mutex<HashSet<String>>,
}

impl EventMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let published = Counter::default();
        registry.register(
            "agentmesh_events_published",
            "Events the leader accepted, from clients and from task outputs",
            published.clone(),
        );
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "agentmesh_event_deliveries",
            "Event delivery attempts that ended, by outcome (ok, failed, timeout, lost)",
            deliveries.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "agentmesh_event_retries",
            "Event deliveries scheduled again after a failed attempt",
            retries.clone(),
        );
        let dead = Counter::default();
        registry.register(
            "agentmesh_event_dead_letters",
            "Event deliveries that ran out of attempts and went to the dead-letter list",
            dead.clone(),
        );
        let trimmed = Counter::default();
        registry.register(
            "agentmesh_event_dead_letters_trimmed",
            "Oldest dead letters deleted because the list was past --max-dead-letters",
            trimmed.clone(),
        );
        let unhandled = Family::<TypeLabels, Counter>::default();
        registry.register(
            "agentmesh_events_unhandled",
            "Events no live handler took, by event type (types past the label bound share \
             'other')",
            unhandled.clone(),
        );
        Self {
            published,
            deliveries,
            retries,
            dead,
            trimmed,
            unhandled,
            unhandled_types: Mutex::new(HashSet::new()),
        }
    }

    pub(super) fn published(&self) {
        self.published.inc();
    }

    pub(super) fn delivered(&self, outcome: DeliveryOutcome) {
        self.deliveries
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub(super) fn retried(&self) {
        self.retries.inc();
    }

    pub(super) fn dead_lettered(&self) {
        self.dead.inc();
    }

    pub(super) fn dead_letters_trimmed(&self, count: usize) {
        self.trimmed
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    pub(super) fn unhandled(&self, event_type: &str) {
        let mut known = self
            .unhandled_types
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let label = if known.contains(event_type) {
            event_type
        } else if known.len() < MAX_CAPABILITY_LABELS {
            known.insert(event_type.to_owned());
            event_type
        } else {
            "other"
        };
        self.unhandled
            .get_or_create(&TypeLabels {
                r#type: label.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Format, Metrics};
    use super::*;

    #[test]
    fn unhandled_types_are_bounded_and_outcomes_counted() {
        let metrics = Metrics::new();
        for n in 0..MAX_CAPABILITY_LABELS + 3 {
            metrics.events.unhandled(&format!("t{n}"));
        }
        metrics.events.delivered(DeliveryOutcome::Timeout);
        let text = metrics.encode(Format::Prometheus);
        let series = text
            .lines()
            .filter(|l| l.starts_with("agentmesh_events_unhandled_total{"))
            .count();
        assert_eq!(series, MAX_CAPABILITY_LABELS + 1, "{text}");
        assert!(text.contains("agentmesh_events_unhandled_total{type=\"other\"} 3"));
        assert!(text.contains("agentmesh_event_deliveries_total{outcome=\"timeout\"} 1"));
    }
}
