//! The node's Prometheus metrics: one registry per process (one process is
//! one node; `agentmesh local` counts all its agents together), counters
//! other modules bump through the functions below, and an HTTP endpoint
//! that serves them (`--metrics-listen`, see [`serve`]).
//!
//! ```text
//! agentmesh_envelopes_refused_total{kind,reason}   envelopes refused because of who sent them
//! agentmesh_links_refused_total{reason}            inbound link streams refused before any envelope
//! agentmesh_requests_refused_total{service,reason} client API calls refused by authentication
//! agentmesh_subtasks_queued{capability}            subtasks ready and waiting for a worker (leader)
//! ```
//!
//! and what the node does: tasks, subtasks, workers, mailboxes, links,
//! record writes, etcd requests, leadership and consensus (see
//! [`activity`] for the list; `docs/operations.md` describes each).
//!
//! Every label takes values from a small fixed set, whatever a peer or a
//! client sends: a hostile envelope kind is counted as `other`, so nobody
//! can grow the registry by inventing label values. Capabilities are
//! the exception: they are named by the cluster's own registrations and
//! validated at submit, and at most [`MAX_CAPABILITY_LABELS`] of them get
//! a series of their own (the rest share `other`).
//!
//! A refusal is counted once. An envelope refused with a
//! [`DeliverError`](crate::transport::DeliverError) is counted by the
//! mailbox service, which maps it with
//! [`DeliverError::refusal`](crate::transport::DeliverError::refusal);
//! call [`refused_envelope`] only for a refusal the mailbox never sees (an
//! agent that takes an envelope and then ignores it because of its
//! sender).
//!
//! Adding a metric: a field of [`Metrics`], registered in
//! [`Metrics::new`], and a function here that bumps it, so that callers
//! need neither the registry nor label types.

pub mod activity;
pub mod events;
pub mod reactive;
pub mod serve;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use activity::Activity;
pub use activity::{
    MAX_AGENT_LABELS, MAX_REPUTATION_SERIES, RoundOutcome, WorkerView, WriteErrorKind,
    breaker_value,
};
use agentmesh_core::task::{Pattern, Status};
use prometheus_client::metrics::gauge::Gauge as GaugeHandle;
use std::time::Duration;

use crate::transport::Kind;

/// Why an envelope was refused, as the `reason` label of
/// `agentmesh_envelopes_refused_total`. The label values are stable:
/// dashboards and alerts name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// Its `from` is not an agent the sending peer's certificate names, or
    /// it is a bid, replica or result in another agent's name.
    ForgedSender,
    /// The sender's role may not send that kind (a worker assigning work).
    NotAllowed,
    /// An assignment or cancel from a coordinator that does not lead.
    NotLeader,
    /// A directive, report or result from someone other than the agent
    /// the work belongs to.
    NotOwner,
    /// The connection presented no certificate of the cluster.
    Unauthenticated,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 5] = [
        RefusalReason::ForgedSender,
        RefusalReason::NotAllowed,
        RefusalReason::NotLeader,
        RefusalReason::NotOwner,
        RefusalReason::Unauthenticated,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::ForgedSender => "forged_sender",
            RefusalReason::NotAllowed => "not_allowed",
            RefusalReason::NotLeader => "not_leader",
            RefusalReason::NotOwner => "not_owner",
            RefusalReason::Unauthenticated => "unauthenticated",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for RefusalReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// `reason` of `agentmesh_requests_refused_total`: no valid bearer token.
pub const REQUEST_UNAUTHENTICATED: &str = "unauthenticated";
/// `reason` of `agentmesh_requests_refused_total`: the token's role does
/// not allow the call.
pub const REQUEST_PERMISSION_DENIED: &str = "permission_denied";

/// The `kind` label of an envelope kind as received: the kind's wire name
/// when it is one agents exchange, `other` for anything else.
pub fn kind_label(kind: &str) -> &'static str {
    Kind::parse(kind).map_or("other", Kind::as_str)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EnvelopeLabels {
    kind: &'static str,
    reason: RefusalReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LinkLabels {
    reason: RefusalReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CapabilityLabels {
    capability: String,
}

/// Capabilities with a queue-depth series of their own; others are
/// summed under `other`.
pub const MAX_CAPABILITY_LABELS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    service: &'static str,
    reason: &'static str,
}

/// Every metric of a node and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    envelopes_refused: Family<EnvelopeLabels, Counter>,
    links_refused: Family<LinkLabels, Counter>,
    requests_refused: Family<RequestLabels, Counter>,
    subtasks_queued: Family<CapabilityLabels, Gauge>,
    /// The capabilities `subtasks_queued` has a series for, so one whose
    /// queue emptied is set to zero rather than left at its last value.
    queued_capabilities: Mutex<BTreeSet<String>>,
    activity: Activity,
    events: events::EventMetrics,
    reactive: reactive::Reactive,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero. The process has one
    /// ([`global`]); tests make their own.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let envelopes_refused = Family::<EnvelopeLabels, Counter>::default();
        // Counters are registered without `_total`; the encoders add it.
        registry.register(
            "agentmesh_envelopes_refused",
            "Envelopes refused because of who sent them, by envelope kind and reason",
            envelopes_refused.clone(),
        );
        let links_refused = Family::<LinkLabels, Counter>::default();
        registry.register(
            "agentmesh_links_refused",
            "Inbound link streams refused before any envelope was read, by reason",
            links_refused.clone(),
        );
        let requests_refused = Family::<RequestLabels, Counter>::default();
        registry.register(
            "agentmesh_requests_refused",
            "Client API calls refused by authentication or authorization, by gRPC service and \
             reason",
            requests_refused.clone(),
        );
        let subtasks_queued = Family::<CapabilityLabels, Gauge>::default();
        registry.register(
            "agentmesh_subtasks_queued",
            "Subtasks ready to run and waiting for a worker, by capability; the leader \
             coordinator's view (others report none), the signal to scale worker pools on",
            subtasks_queued.clone(),
        );
        let activity = Activity::register(&mut registry);
        let events = events::EventMetrics::register(&mut registry);
        let reactive = reactive::Reactive::register(&mut registry);
        Self {
            registry,
            envelopes_refused,
            links_refused,
            requests_refused,
            subtasks_queued,
            queued_capabilities: Mutex::new(BTreeSet::new()),
            activity,
            events,
            reactive,
        }
    }

    /// Sets the queue depth of every capability in `queued`; those with a
    /// series and not in `queued` go to zero.
    pub fn set_queued(&self, queued: &BTreeMap<String, usize>) {
        let mut known = self
            .queued_capabilities
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut depths: BTreeMap<String, i64> = known.iter().map(|c| (c.clone(), 0)).collect();
        for (capability, count) in queued {
            let label = if known.contains(capability) || known.len() < MAX_CAPABILITY_LABELS {
                known.insert(capability.clone());
                capability.clone()
            } else {
                "other".to_owned()
            };
            *depths.entry(label).or_default() += i64::try_from(*count).unwrap_or(i64::MAX);
        }
        for (capability, depth) in depths {
            self.subtasks_queued
                .get_or_create(&CapabilityLabels { capability })
                .set(depth);
        }
    }

    /// Counts an envelope of `kind` (as received) refused for `reason`.
    pub fn refused_envelope(&self, kind: &str, reason: RefusalReason) {
        self.envelopes_refused
            .get_or_create(&EnvelopeLabels {
                kind: kind_label(kind),
                reason,
            })
            .inc();
    }

    /// Counts an inbound link stream refused for `reason`.
    pub fn refused_link(&self, reason: RefusalReason) {
        self.links_refused
            .get_or_create(&LinkLabels { reason })
            .inc();
    }

    /// Counts a client call to `service` refused for `reason`.
    pub fn refused_request(&self, service: &'static str, reason: &'static str) {
        self.requests_refused
            .get_or_create(&RequestLabels { service, reason })
            .inc();
    }

    /// Every metric in `format`, ready to serve.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing into a String fails only if an encoder does, and ours
        // encode nothing that can.
        let _ = match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        };
        out
    }
}

/// The text formats a scrape may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, what Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for everything else (`curl`,
    /// `promtool check metrics`).
    Prometheus,
}

impl Format {
    /// OpenMetrics when `accept` (an HTTP `Accept` header) names it, the
    /// Prometheus text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// Publishes the leader's queue depth per capability (see
/// [`Metrics::set_queued`]).
pub fn set_queued(queued: &BTreeMap<String, usize>) {
    global().set_queued(queued);
}

/// Counts an envelope refused because of who sent it: `kind` as received
/// (anything but a known kind is counted as `other`), and why. Counted
/// once per refusal; see the module documentation for who counts what.
pub fn refused_envelope(kind: &str, reason: RefusalReason) {
    global().refused_envelope(kind, reason);
}

/// Counts an inbound link stream refused before any of its envelopes was
/// read (a connection without a cluster certificate).
pub fn refused_link(reason: RefusalReason) {
    global().refused_link(reason);
}

/// Counts a client API call refused: `service` is the gRPC service's full
/// name, `reason` [`REQUEST_UNAUTHENTICATED`] or
/// [`REQUEST_PERMISSION_DENIED`].
pub fn refused_request(service: &'static str, reason: &'static str) {
    global().refused_request(service, reason);
}

/// Counts a task the coordinator accepted.
pub fn task_submitted(pattern: Pattern) {
    global().activity.task_submitted(pattern);
}

/// Adds what the response cache did since `before` and sets its size
/// (see [`reactive`]).
pub fn reactive_cache(
    before: agentmesh_core::reactive::CacheCounters,
    now: agentmesh_core::reactive::CacheCounters,
    entries: usize,
    bytes: usize,
) {
    global().reactive.cache(before, now, entries, bytes);
}

/// Counts a reactive request answered by `path` (`cache`, `keyword`,
/// `provider`) or refused ([`reactive::REFUSED`]).
pub fn reactive_answered(path: &'static str) {
    global().reactive.answered(path);
}

/// Sets the state of the reactive provider fallback's breaker.
pub fn reactive_provider_breaker(state: agentmesh_core::breaker::BreakerState) {
    global().reactive.provider_breaker(state);
}

/// Counts a task that ended with `status` (completed, failed or
/// cancelled; any other status is not counted).
pub fn task_finished(pattern: Pattern, status: Status) {
    global().activity.task_finished(pattern, status);
}

/// Counts a subtask attempt dispatched.
pub fn attempt_started() {
    global().activity.attempt_started();
}

/// Counts a subtask attempt queued to run again.
pub fn attempt_retried() {
    global().activity.attempt_retried();
}

/// Observes an attempt of a `capability` subtask that took `elapsed` from
/// dispatch to result.
pub fn subtask_duration(capability: &str, elapsed: Duration) {
    global().activity.subtask_duration(capability, elapsed);
}

/// Observes a `capability` subtask that waited `waited` from ready to its
/// first dispatch.
pub fn queue_wait(capability: &str, waited: Duration) {
    global().activity.queue_wait(capability, waited);
}

/// Publishes the leader's view of its workers (in-flight, breaker); agents
/// not listed lose their series.
pub fn set_workers<'a>(workers: impl IntoIterator<Item = WorkerView<'a>>) {
    global().activity.set_workers(workers);
}

/// Publishes every recorded reputation, by (agent, capability); pairs not
/// listed lose their series.
pub fn set_reputations(scores: &BTreeMap<(String, String), f64>) {
    global().activity.set_reputations(scores);
}

/// The gauge a local agent's mailbox backlog is mirrored into; resolved
/// once when the agent starts.
pub fn mailbox_backlog(agent: &str) -> GaugeHandle {
    global().activity.mailbox_backlog(agent)
}

/// Removes a local agent's backlog series once it has stopped.
pub fn mailbox_gone(agent: &str) {
    global().activity.mailbox_gone(agent);
}

/// Counts the envelopes one link ack accepted and refused.
pub fn link_acks(accepted: usize, refused: usize) {
    global().activity.link_acks(accepted, refused);
}

/// Counts envelopes whose link ack did not come in time.
pub fn link_ack_timeouts(expired: usize) {
    global().activity.link_ack_timeouts(expired);
}

/// Observes one task-record transaction of `records` records.
pub fn record_write(records: usize, elapsed: Duration, error: Option<WriteErrorKind>) {
    global().activity.record_write(records, elapsed, error);
}

/// Observes one etcd request (`method` from
/// [`agentmesh_registry::etcd_method`]).
pub fn etcd_request(method: &'static str, elapsed: Duration, failed: bool) {
    global().activity.etcd_request(method, elapsed, failed);
}

/// Feeds the registry's etcd requests into
/// `agentmesh_etcd_request_duration_seconds` and
/// `agentmesh_etcd_request_errors_total`.
#[derive(Debug, Default)]
pub struct EtcdMetrics;

impl agentmesh_registry::EtcdObserver for EtcdMetrics {
    fn observe(&self, method: &'static str, elapsed: Duration, failed: bool) {
        etcd_request(method, elapsed, failed);
    }
}

/// The observer a node's etcd client is given
/// ([`agentmesh_registry::EtcdOptions::with_observer`]).
pub fn etcd_observer() -> std::sync::Arc<dyn agentmesh_registry::EtcdObserver> {
    std::sync::Arc::new(EtcdMetrics)
}

/// Publishes whether this node's coordinator leads, and in which term.
pub fn leading(term: Option<i64>) {
    global().activity.leading(term);
}

/// Counts a consensus round that ended, with its agreement when it agreed
/// and the number of votes that dissented.
pub fn consensus_round(outcome: RoundOutcome, agreement: Option<f64>, dissents: usize) {
    global()
        .activity
        .consensus_round(outcome, agreement, dissents);
}

/// Counts an event the leader accepted.
pub fn event_published() {
    global().events.published();
}

/// Counts a delivery attempt that ended.
pub fn event_delivered(outcome: events::DeliveryOutcome) {
    global().events.delivered(outcome);
}

/// Counts a delivery scheduled again after a failed attempt.
pub fn event_retried() {
    global().events.retried();
}

/// Counts a delivery that went to the dead-letter list.
pub fn event_dead_lettered() {
    global().events.dead_lettered();
}

/// Counts dead letters deleted past `--max-dead-letters`.
pub fn event_dead_letters_trimmed(count: usize) {
    global().events.dead_letters_trimmed(count);
}

/// Counts an event of `event_type` that no live handler took.
pub fn event_unhandled(event_type: &str) {
    global().events.unhandled(event_type);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_depth_follows_the_last_snapshot_and_emptied_queues_read_zero() {
        let metrics = Metrics::new();
        let depths = |pairs: &[(&str, usize)]| -> BTreeMap<String, usize> {
            pairs.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect()
        };
        metrics.set_queued(&depths(&[("math.eval", 3), ("sleep", 1)]));
        let text = metrics.encode(Format::Prometheus);
        assert!(
            text.contains("agentmesh_subtasks_queued{capability=\"math.eval\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("agentmesh_subtasks_queued{capability=\"sleep\"} 1\n"),
            "{text}"
        );
        metrics.set_queued(&depths(&[("math.eval", 1)]));
        let text = metrics.encode(Format::Prometheus);
        assert!(
            text.contains("agentmesh_subtasks_queued{capability=\"math.eval\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("agentmesh_subtasks_queued{capability=\"sleep\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn capabilities_beyond_the_label_bound_share_other() {
        let metrics = Metrics::new();
        let many: BTreeMap<String, usize> = (0..MAX_CAPABILITY_LABELS + 10)
            .map(|n| (format!("cap-{n:04}"), 1))
            .collect();
        metrics.set_queued(&many);
        let text = metrics.encode(Format::Prometheus);
        let series = text
            .lines()
            .filter(|l| l.starts_with("agentmesh_subtasks_queued{"))
            .count();
        assert_eq!(series, MAX_CAPABILITY_LABELS + 1, "{text}");
        assert!(
            text.contains("agentmesh_subtasks_queued{capability=\"other\"} 10\n"),
            "{text}"
        );
    }

    #[test]
    fn known_kinds_are_their_own_label_and_anything_else_is_other() {
        for kind in Kind::ALL {
            assert_eq!(kind_label(kind.as_str()), kind.as_str());
        }
        for hostile in [
            "",
            "subtask.assign ",
            "SUBTASK.ASSIGN",
            "x\"}\n# EOF",
            "other",
        ] {
            assert_eq!(kind_label(hostile), "other", "{hostile:?}");
        }
    }

    #[test]
    fn reasons_have_stable_snake_case_labels() {
        let labels: Vec<&str> = RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "forged_sender",
                "not_allowed",
                "not_leader",
                "not_owner",
                "unauthenticated"
            ]
        );
    }

    #[test]
    fn deliver_errors_about_the_sender_are_refusals_and_others_are_not() {
        use agentmesh_core::AgentId;

        use crate::transport::DeliverError;

        let agent = || AgentId::new("worker-1");
        let refusals = [
            (
                DeliverError::ForgedSender {
                    claimed: agent(),
                    authenticated: "rogue-*".into(),
                },
                RefusalReason::ForgedSender,
            ),
            (
                DeliverError::NotAllowed {
                    sender: agent(),
                    kind: "subtask.assign".into(),
                    why: "it is a worker".into(),
                },
                RefusalReason::NotAllowed,
            ),
            (
                DeliverError::NotLeader {
                    sender: agent(),
                    kind: "subtask.assign".into(),
                    leader: None,
                },
                RefusalReason::NotLeader,
            ),
            (
                DeliverError::NotOwner {
                    sender: agent(),
                    kind: "hierarchy.message".into(),
                    task: "t1".into(),
                    owner: AgentId::new("strategic-1"),
                },
                RefusalReason::NotOwner,
            ),
        ];
        for (error, reason) in refusals {
            assert_eq!(error.refusal(), Some(reason), "{error}");
        }
        for error in [
            DeliverError::UnknownAgent(agent()),
            DeliverError::TooLarge { size: 9, limit: 8 },
            DeliverError::Busy {
                agent: agent(),
                limit: 1,
            },
            DeliverError::Refused {
                agent: agent(),
                code: tonic::Code::PermissionDenied,
                message: "counted by the node that refused it".into(),
            },
        ] {
            assert_eq!(error.refusal(), None, "{error}");
        }
    }

    #[test]
    fn hostile_kinds_share_one_series() {
        let metrics = Metrics::new();
        for n in 0..1000 {
            metrics.refused_envelope(&format!("made.up.{n}"), RefusalReason::ForgedSender);
        }
        let text = metrics.encode(Format::Prometheus);
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("agentmesh_envelopes_refused_total{"))
            .collect();
        assert_eq!(
            series,
            ["agentmesh_envelopes_refused_total{kind=\"other\",reason=\"forged_sender\"} 1000"]
        );
    }

    #[test]
    fn prometheus_text_names_counters_with_total_and_their_labels() {
        let metrics = Metrics::new();
        metrics.refused_envelope("subtask.result", RefusalReason::ForgedSender);
        metrics.refused_envelope("subtask.result", RefusalReason::ForgedSender);
        metrics.refused_envelope("subtask.assign", RefusalReason::NotAllowed);
        metrics.refused_link(RefusalReason::Unauthenticated);
        metrics.refused_request("agentmesh.v1.TaskService", REQUEST_UNAUTHENTICATED);
        let text = metrics.encode(Format::Prometheus);
        for line in [
            "# TYPE agentmesh_envelopes_refused_total counter",
            "agentmesh_envelopes_refused_total{kind=\"subtask.result\",reason=\"forged_sender\"} 2",
            "agentmesh_envelopes_refused_total{kind=\"subtask.assign\",reason=\"not_allowed\"} 1",
            "# TYPE agentmesh_links_refused_total counter",
            "agentmesh_links_refused_total{reason=\"unauthenticated\"} 1",
            "# TYPE agentmesh_requests_refused_total counter",
            "agentmesh_requests_refused_total{service=\"agentmesh.v1.TaskService\",reason=\"unauthenticated\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let metrics = Metrics::new();
        metrics.refused_request("agentmesh.v1.ClusterService", REQUEST_PERMISSION_DENIED);
        let text = metrics.encode(Format::OpenMetrics);
        assert!(
            text.contains("# TYPE agentmesh_requests_refused counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "agentmesh_requests_refused_total{service=\"agentmesh.v1.ClusterService\",\
                 reason=\"permission_denied\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let prometheus_asks = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Format::negotiate(Some(prometheus_asks)),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }
}
