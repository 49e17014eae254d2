//! What the node does, as opposed to what it refuses: tasks and subtasks,
//! workers as the leader places on them, mailboxes and links, record
//! writes, etcd requests, leadership and peer consensus.
//!
//! ```text
//! agentmesh_tasks_submitted_total{pattern}                  coordinator: tasks accepted
//! agentmesh_tasks_finished_total{pattern,status}            coordinator: tasks ended (completed/failed/cancelled)
//! agentmesh_subtask_attempts_total                          coordinator: attempts dispatched
//! agentmesh_subtask_retries_total                           coordinator: attempts re-dispatched after a failure
//! agentmesh_subtask_duration_seconds{capability}            coordinator: dispatch to result, per attempt
//! agentmesh_subtask_queue_wait_seconds{capability}          coordinator: ready to first dispatch
//! agentmesh_worker_in_flight{agent}                         coordinator: attempts placed and not finished
//! agentmesh_worker_breaker_state{agent}                     coordinator: 0 closed, 1 half-open, 2 open
//! agentmesh_agent_reputation{agent,capability}              coordinator: recorded reputation, decayed to now
//! agentmesh_mailbox_backlog{agent}                          envelopes handed to a local agent, not yet handled
//! agentmesh_link_acks_total{outcome}                        envelopes sent to other nodes, by their ack
//! agentmesh_link_ack_timeouts_total                         envelopes sent to other nodes and never acked
//! agentmesh_record_write_batch_records                      records per task-record transaction
//! agentmesh_record_write_duration_seconds                   one task-record transaction
//! agentmesh_record_write_errors_total{kind}                 failed task-record transactions
//! agentmesh_etcd_request_duration_seconds{method}           one etcd request, to its answer's head
//! agentmesh_etcd_request_errors_total{method}               etcd requests that failed
//! agentmesh_coordinator_leader                              1 while this node's coordinator leads
//! agentmesh_coordinator_term                                the term it leads (fence revision), 0 if none
//! agentmesh_consensus_rounds_total{outcome}                 peer rounds this node's peers led
//! agentmesh_consensus_agreement_ratio                       agreement of the rounds that agreed
//! agentmesh_consensus_dissents_total                        votes that dissented from the agreed output
//! ```
//!
//! Labels named by the cluster (`agent`, `capability`) are bounded: at
//! most [`MAX_CAPABILITY_LABELS`] capabilities get a series of their own
//! (the rest share `other`), and per-agent gauges cover at most
//! [`MAX_AGENT_LABELS`] agents (at most [`MAX_REPUTATION_SERIES`] pairs for
//! reputations); agents past the bound have no series, since a breaker
//! state or a score summed under `other` would mean nothing. Per-agent
//! series of agents that left are removed, so the bound holds for the
//! agents present, not for every agent ever seen.
//!
//! The hot paths (an envelope into a mailbox, an ack off a link) touch
//! only handles resolved once: a mailbox's gauge is resolved when its
//! agent starts, link ack counters when the registry is built.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use agentmesh_core::breaker::BreakerState;
use agentmesh_core::task::{Pattern, Status};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::MAX_CAPABILITY_LABELS;

/// Agents with per-agent series of their own (in-flight, breaker,
/// mailbox backlog).
pub const MAX_AGENT_LABELS: usize = 256;
/// (agent, capability) pairs with a reputation series.
pub const MAX_REPUTATION_SERIES: usize = 1024;

/// The label of a capability past [`MAX_CAPABILITY_LABELS`].
const OTHER: &str = "other";

/// Every pattern, in the order of the pre-resolved handles.
const PATTERNS: [Pattern; 6] = [
    Pattern::CoordinatorWorker,
    Pattern::PeerConsensus,
    Pattern::Hierarchical,
    Pattern::Workflow,
    Pattern::Reactive,
    Pattern::Auto,
];
/// Every terminal status, in the order of the pre-resolved handles.
const ENDINGS: [Status; 3] = [Status::Completed, Status::Failed, Status::Cancelled];

/// Subtask latencies: a tool call takes milliseconds (arithmetic) to
/// minutes (a model call), so 1 ms to 5 min.
const SUBTASK_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// etcd round trips and record writes: 0.5 ms to about 8 s, doubling.
fn store_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 15)
}

fn subtask_histogram() -> Histogram {
    Histogram::new(SUBTASK_BUCKETS)
}

fn store_histogram() -> Histogram {
    Histogram::new(store_buckets())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PatternLabels {
    pattern: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FinishedLabels {
    pattern: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CapabilityLabels {
    capability: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReputationLabels {
    agent: String,
    capability: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// How a task-record transaction failed, as the `kind` label of
/// `agentmesh_record_write_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteErrorKind {
    /// etcd was unreachable or slow; the write is retried.
    Transient,
    /// etcd refused the records themselves (too large); not retried.
    Permanent,
    /// The term's fence no longer holds: another coordinator leads.
    Fenced,
}

impl WriteErrorKind {
    pub const ALL: [WriteErrorKind; 3] = [Self::Transient, Self::Permanent, Self::Fenced];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Fenced => "fenced",
        }
    }
}

/// How a consensus round ended, as the `outcome` label of
/// `agentmesh_consensus_rounds_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundOutcome {
    /// The peers agreed on one output.
    Agreed,
    /// Results came back but did not agree.
    Disagreed,
    /// The round ended without results to decide on (no bidder, every
    /// participant failed or timed out).
    Failed,
}

impl RoundOutcome {
    pub const ALL: [RoundOutcome; 3] = [Self::Agreed, Self::Disagreed, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agreed => "agreed",
            Self::Disagreed => "disagreed",
            Self::Failed => "failed",
        }
    }
}

/// The `agentmesh_worker_breaker_state` value of a breaker: ordered by
/// how much it holds placements back, so `max` over agents reads "the
/// worst".
pub fn breaker_value(state: BreakerState) -> i64 {
    match state {
        BreakerState::Closed { .. } => 0,
        BreakerState::HalfOpen { .. } => 1,
        BreakerState::Open { .. } => 2,
    }
}

/// One worker as the leader sees it, for [`Activity::set_workers`].
#[derive(Debug, Clone)]
pub struct WorkerView<'a> {
    pub agent: &'a str,
    pub in_flight: u32,
    pub breaker: BreakerState,
}

/// The per-capability subtask histograms, resolved once per capability.
#[derive(Clone)]
struct SubtaskSeries {
    duration: Histogram,
    queue_wait: Histogram,
}

pub(super) struct Activity {
    tasks_submitted: [Counter; PATTERNS.len()],
    tasks_finished: [[Counter; ENDINGS.len()]; PATTERNS.len()],
    attempts: Counter,
    retries: Counter,
    subtask_duration: HistogramFamily<CapabilityLabels>,
    queue_wait: HistogramFamily<CapabilityLabels>,
    /// Each capability's series, so an observation costs a read lock and
    /// a hash, never an allocation; at most [`MAX_CAPABILITY_LABELS`] and
    /// `other`.
    subtask_series: RwLock<HashMap<String, SubtaskSeries>>,
    worker_in_flight: Family<AgentLabels, Gauge>,
    worker_breaker: Family<AgentLabels, Gauge>,
    /// The agents the two families above have series for.
    workers: Mutex<HashSet<String>>,
    reputation: Family<ReputationLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    reputations: Mutex<HashSet<(String, String)>>,
    mailbox_backlog: Family<AgentLabels, Gauge>,
    /// The agents `mailbox_backlog` has a series for.
    mailboxes: Mutex<HashSet<String>>,
    link_accepted: Counter,
    link_refused: Counter,
    link_timeouts: Counter,
    write_batch: Histogram,
    write_duration: Histogram,
    write_errors: [Counter; WriteErrorKind::ALL.len()],
    etcd_duration: HistogramFamily<MethodLabels>,
    etcd_errors: Family<MethodLabels, Counter>,
    leader: Gauge,
    term: Gauge,
    rounds: [Counter; RoundOutcome::ALL.len()],
    agreement: Histogram,
    dissents: Counter,
}

impl Activity {
    /// Registers every metric in `registry`; series with a fixed label
    /// set exist from the start (at zero), so a rate over them is defined
    /// before the first event.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let submitted = Family::<PatternLabels, Counter>::default();
        registry.register(
            "agentmesh_tasks_submitted",
            "Tasks accepted by this node's coordinator while it led, by pattern",
            submitted.clone(),
        );
        let finished = Family::<FinishedLabels, Counter>::default();
        registry.register(
            "agentmesh_tasks_finished",
            "Tasks that ended under this node's coordinator, by pattern and final status \
             (completed, failed, cancelled)",
            finished.clone(),
        );
        let attempts = Counter::default();
        registry.register(
            "agentmesh_subtask_attempts",
            "Subtask attempts dispatched by this node's coordinator (first attempts and retries)",
            attempts.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "agentmesh_subtask_retries",
            "Subtask attempts that failed or were lost and were queued to run again",
            retries.clone(),
        );
        let subtask_duration: HistogramFamily<CapabilityLabels> =
            Family::new_with_constructor(subtask_histogram);
        registry.register(
            "agentmesh_subtask_duration_seconds",
            "Time from dispatching a subtask attempt to applying its result, by capability",
            subtask_duration.clone(),
        );
        let queue_wait: HistogramFamily<CapabilityLabels> =
            Family::new_with_constructor(subtask_histogram);
        registry.register(
            "agentmesh_subtask_queue_wait_seconds",
            "Time a subtask waited from being ready (task accepted or last dependency done) to \
             its first dispatch, by capability",
            queue_wait.clone(),
        );
        let worker_in_flight = Family::<AgentLabels, Gauge>::default();
        registry.register(
            "agentmesh_worker_in_flight",
            "Attempts the leader coordinator placed on an agent and has not seen finish, by agent",
            worker_in_flight.clone(),
        );
        let worker_breaker = Family::<AgentLabels, Gauge>::default();
        registry.register(
            "agentmesh_worker_breaker_state",
            "Circuit breaker of an agent as the leader coordinator sees it: 0 closed, \
             1 half-open, 2 open",
            worker_breaker.clone(),
        );
        let reputation = Family::<ReputationLabels, Gauge<f64, _>>::default();
        registry.register(
            "agentmesh_agent_reputation",
            "Recorded reputation of an agent for a capability, 0 to 1, decayed to now \
             (read from the registry by each coordinator)",
            reputation.clone(),
        );
        let mailbox_backlog = Family::<AgentLabels, Gauge>::default();
        registry.register(
            "agentmesh_mailbox_backlog",
            "Envelopes handed to a local agent and not yet handled, by agent",
            mailbox_backlog.clone(),
        );
        let link_acks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "agentmesh_link_acks",
            "Envelopes sent to other nodes over links, by the peer's acknowledgement \
             (accepted or refused)",
            link_acks.clone(),
        );
        let link_timeouts = Counter::default();
        registry.register(
            "agentmesh_link_ack_timeouts",
            "Envelopes sent to other nodes whose acknowledgement did not come in time",
            link_timeouts.clone(),
        );
        let write_batch = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        registry.register(
            "agentmesh_record_write_batch_records",
            "Task records per transaction of the leader's record writer",
            write_batch.clone(),
        );
        let write_duration = store_histogram();
        registry.register(
            "agentmesh_record_write_duration_seconds",
            "Duration of one task-record transaction (each try of a batch), failed or not",
            write_duration.clone(),
        );
        let write_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "agentmesh_record_write_errors",
            "Failed task-record transactions, by kind: transient (retried), permanent \
             (refused records), fenced (leadership lost)",
            write_errors.clone(),
        );
        let etcd_duration: HistogramFamily<MethodLabels> =
            Family::new_with_constructor(store_histogram);
        registry.register(
            "agentmesh_etcd_request_duration_seconds",
            "Duration of an etcd request until its answer began (for streams: until the stream \
             opened), by gRPC method",
            etcd_duration.clone(),
        );
        let etcd_errors = Family::<MethodLabels, Counter>::default();
        registry.register(
            "agentmesh_etcd_request_errors",
            "etcd requests that failed (unreachable, timed out, or an error status), by gRPC \
             method",
            etcd_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "agentmesh_coordinator_leader",
            "1 while this node's coordinator leads the cluster, 0 otherwise",
            leader.clone(),
        );
        let term = Gauge::default();
        registry.register(
            "agentmesh_coordinator_term",
            "The term (fence revision) this node's coordinator leads in, 0 while it does not lead",
            term.clone(),
        );
        let rounds = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "agentmesh_consensus_rounds",
            "Consensus rounds led by this node's peers that ended, by outcome",
            rounds.clone(),
        );
        let agreement = Histogram::new((1..=10).map(|n| f64::from(n) / 10.0));
        registry.register(
            "agentmesh_consensus_agreement_ratio",
            "Agreement of the consensus rounds that agreed: the weighted share of votes for the \
             chosen output, 0 to 1",
            agreement.clone(),
        );
        let dissents = Counter::default();
        registry.register(
            "agentmesh_consensus_dissents",
            "Votes that dissented from the output a consensus round agreed on, or from every \
             output of a round that did not agree",
            dissents.clone(),
        );
        let tasks_submitted = PATTERNS.map(|pattern| {
            submitted
                .get_or_create(&PatternLabels {
                    pattern: pattern.as_str(),
                })
                .clone()
        });
        let tasks_finished = PATTERNS.map(|pattern| {
            ENDINGS.map(|status| {
                finished
                    .get_or_create(&FinishedLabels {
                        pattern: pattern.as_str(),
                        status: status.as_str(),
                    })
                    .clone()
            })
        });
        let outcome = |family: &Family<OutcomeLabels, Counter>, outcome| {
            family.get_or_create(&OutcomeLabels { outcome }).clone()
        };
        Self {
            tasks_submitted,
            tasks_finished,
            attempts,
            retries,
            subtask_duration,
            queue_wait,
            subtask_series: RwLock::new(HashMap::new()),
            worker_in_flight,
            worker_breaker,
            workers: Mutex::new(HashSet::new()),
            reputation,
            reputations: Mutex::new(HashSet::new()),
            mailbox_backlog,
            mailboxes: Mutex::new(HashSet::new()),
            link_accepted: outcome(&link_acks, "accepted"),
            link_refused: outcome(&link_acks, "refused"),
            link_timeouts,
            write_batch,
            write_duration,
            write_errors: WriteErrorKind::ALL.map(|kind| {
                write_errors
                    .get_or_create(&KindLabels {
                        kind: kind.as_str(),
                    })
                    .clone()
            }),
            etcd_duration,
            etcd_errors,
            leader,
            term,
            rounds: RoundOutcome::ALL.map(|o| outcome(&rounds, o.as_str())),
            agreement,
            dissents,
        }
    }

    pub(super) fn task_submitted(&self, pattern: Pattern) {
        self.tasks_submitted[pattern_index(pattern)].inc();
    }

    pub(super) fn task_finished(&self, pattern: Pattern, status: Status) {
        if let Some(ending) = ENDINGS.iter().position(|s| *s == status) {
            self.tasks_finished[pattern_index(pattern)][ending].inc();
        }
    }

    pub(super) fn attempt_started(&self) {
        self.attempts.inc();
    }

    pub(super) fn attempt_retried(&self) {
        self.retries.inc();
    }

    /// The histograms of `capability`, or of `other` past the bound.
    fn subtask_series(&self, capability: &str) -> SubtaskSeries {
        if let Some(series) = self
            .subtask_series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(capability)
        {
            return series.clone();
        }
        let mut known = self
            .subtask_series
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // Every known capability and `other`.
        let label = if known.len() < MAX_CAPABILITY_LABELS {
            capability
        } else {
            OTHER
        };
        let labels = CapabilityLabels {
            capability: label.to_owned(),
        };
        let series = SubtaskSeries {
            duration: self.subtask_duration.get_or_create(&labels).clone(),
            queue_wait: self.queue_wait.get_or_create(&labels).clone(),
        };
        if label == capability {
            known.insert(capability.to_owned(), series.clone());
        }
        series
    }

    pub(super) fn subtask_duration(&self, capability: &str, elapsed: Duration) {
        self.subtask_series(capability)
            .duration
            .observe(elapsed.as_secs_f64());
    }

    pub(super) fn queue_wait(&self, capability: &str, waited: Duration) {
        self.subtask_series(capability)
            .queue_wait
            .observe(waited.as_secs_f64());
    }

    /// Replaces the per-worker gauges with `workers`: agents no longer
    /// listed lose their series.
    pub(super) fn set_workers<'a>(&self, workers: impl IntoIterator<Item = WorkerView<'a>>) {
        let mut known = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        for worker in workers {
            if !known.contains(worker.agent) && known.len() >= MAX_AGENT_LABELS {
                continue;
            }
            let labels = AgentLabels {
                agent: worker.agent.to_owned(),
            };
            self.worker_in_flight
                .get_or_create(&labels)
                .set(i64::from(worker.in_flight));
            self.worker_breaker
                .get_or_create(&labels)
                .set(breaker_value(worker.breaker));
            known.insert(labels.agent.clone());
            seen.insert(labels.agent);
        }
        known.retain(|agent| {
            if seen.contains(agent) {
                return true;
            }
            let labels = AgentLabels {
                agent: agent.clone(),
            };
            self.worker_in_flight.remove(&labels);
            self.worker_breaker.remove(&labels);
            false
        });
    }

    /// Replaces the reputation gauges with `scores`, (agent, capability)
    /// to score; pairs no longer listed lose their series.
    pub(super) fn set_reputations(&self, scores: &BTreeMap<(String, String), f64>) {
        let mut known = self.reputations.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|(agent, capability)| {
            if scores.contains_key(&(agent.clone(), capability.clone())) {
                return true;
            }
            self.reputation.remove(&ReputationLabels {
                agent: agent.clone(),
                capability: capability.clone(),
            });
            false
        });
        for ((agent, capability), score) in scores {
            let pair = (agent.clone(), capability.clone());
            if !known.contains(&pair) && known.len() >= MAX_REPUTATION_SERIES {
                continue;
            }
            self.reputation
                .get_or_create(&ReputationLabels {
                    agent: agent.clone(),
                    capability: capability.clone(),
                })
                .set(*score);
            known.insert(pair);
        }
    }

    /// The backlog gauge of a local agent, or a private one past the
    /// bound.
    pub(super) fn mailbox_backlog(&self, agent: &str) -> Gauge {
        let mut known = self.mailboxes.lock().unwrap_or_else(|e| e.into_inner());
        if !known.contains(agent) && known.len() >= MAX_AGENT_LABELS {
            return Gauge::default();
        }
        known.insert(agent.to_owned());
        self.mailbox_backlog
            .get_or_create(&AgentLabels {
                agent: agent.to_owned(),
            })
            .clone()
    }

    pub(super) fn mailbox_gone(&self, agent: &str) {
        let mut known = self.mailboxes.lock().unwrap_or_else(|e| e.into_inner());
        if known.remove(agent) {
            self.mailbox_backlog.remove(&AgentLabels {
                agent: agent.to_owned(),
            });
        }
    }

    pub(super) fn link_acks(&self, accepted: usize, refused: usize) {
        if accepted > 0 {
            self.link_accepted.inc_by(accepted as u64);
        }
        if refused > 0 {
            self.link_refused.inc_by(refused as u64);
        }
    }

    pub(super) fn link_ack_timeouts(&self, expired: usize) {
        if expired > 0 {
            self.link_timeouts.inc_by(expired as u64);
        }
    }

    pub(super) fn record_write(
        &self,
        records: usize,
        elapsed: Duration,
        error: Option<WriteErrorKind>,
    ) {
        self.write_batch.observe(records as f64);
        self.write_duration.observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            let index = WriteErrorKind::ALL.iter().position(|k| *k == kind);
            if let Some(index) = index {
                self.write_errors[index].inc();
            }
        }
    }

    /// `method` is one of the registry's fixed set
    /// ([`agentmesh_registry::etcd_method`]).
    pub(super) fn etcd_request(&self, method: &'static str, elapsed: Duration, failed: bool) {
        let labels = MethodLabels { method };
        self.etcd_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if failed {
            self.etcd_errors.get_or_create(&labels).inc();
        }
    }

    pub(super) fn leading(&self, term: Option<i64>) {
        self.leader.set(i64::from(term.is_some()));
        self.term.set(term.unwrap_or(0));
    }

    pub(super) fn consensus_round(
        &self,
        outcome: RoundOutcome,
        agreement: Option<f64>,
        dissents: usize,
    ) {
        if let Some(index) = RoundOutcome::ALL.iter().position(|o| *o == outcome) {
            self.rounds[index].inc();
        }
        if let Some(agreement) = agreement {
            self.agreement.observe(agreement);
        }
        self.dissents.inc_by(dissents as u64);
    }
}

fn pattern_index(pattern: Pattern) -> usize {
    PATTERNS.iter().position(|p| *p == pattern).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::{Format, Metrics};
    use super::*;

    fn series<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn task_counters_exist_at_zero_and_count_by_pattern_and_status() {
        let metrics = Metrics::new();
        let text = metrics.encode(Format::Prometheus);
        assert_eq!(
            series(&text, "agentmesh_tasks_submitted_total{").len(),
            PATTERNS.len()
        );
        assert_eq!(
            series(&text, "agentmesh_tasks_finished_total{").len(),
            PATTERNS.len() * ENDINGS.len()
        );
        metrics.activity.task_submitted(Pattern::PeerConsensus);
        metrics
            .activity
            .task_finished(Pattern::PeerConsensus, Status::Completed);
        metrics
            .activity
            .task_finished(Pattern::PeerConsensus, Status::Running);
        let text = metrics.encode(Format::Prometheus);
        for line in [
            "agentmesh_tasks_submitted_total{pattern=\"peer_consensus\"} 1",
            "agentmesh_tasks_finished_total{pattern=\"peer_consensus\",status=\"completed\"} 1",
            "agentmesh_tasks_finished_total{pattern=\"peer_consensus\",status=\"failed\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn subtask_histograms_are_in_seconds_and_capabilities_past_the_bound_share_other() {
        let metrics = Metrics::new();
        for n in 0..MAX_CAPABILITY_LABELS + 5 {
            metrics
                .activity
                .subtask_duration(&format!("cap-{n:04}"), Duration::from_millis(3));
        }
        metrics
            .activity
            .queue_wait("cap-0000", Duration::from_millis(20));
        let text = metrics.encode(Format::Prometheus);
        let counts = series(&text, "agentmesh_subtask_duration_seconds_count{");
        assert_eq!(counts.len(), MAX_CAPABILITY_LABELS + 1, "{text}");
        assert!(
            counts.contains(&"agentmesh_subtask_duration_seconds_count{capability=\"other\"} 5"),
            "{counts:?}"
        );
        // 3 ms lands in the 5 ms bucket, not in the 2.5 ms one.
        for line in [
            "agentmesh_subtask_duration_seconds_bucket{capability=\"cap-0001\",le=\"0.0025\"} 0",
            "agentmesh_subtask_duration_seconds_bucket{capability=\"cap-0001\",le=\"0.005\"} 1",
            "agentmesh_subtask_queue_wait_seconds_sum{capability=\"cap-0000\"} 0.02",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn worker_series_follow_the_latest_view_within_the_bound() {
        let metrics = Metrics::new();
        let names: Vec<String> = (0..MAX_AGENT_LABELS + 3)
            .map(|n| format!("w{n:04}"))
            .collect();
        fn view(names: &[String], breaker: BreakerState) -> Vec<WorkerView<'_>> {
            names
                .iter()
                .map(|agent| WorkerView {
                    agent,
                    in_flight: 2,
                    breaker,
                })
                .collect()
        }
        metrics.activity.set_workers(view(
            &names,
            BreakerState::Closed {
                consecutive_failures: 0,
            },
        ));
        let text = metrics.encode(Format::Prometheus);
        assert_eq!(
            series(&text, "agentmesh_worker_in_flight{").len(),
            MAX_AGENT_LABELS
        );
        // The agents left but two; one of them is open.
        metrics.activity.set_workers(
            view(&names[..1], BreakerState::Open { until_ms: 9 })
                .into_iter()
                .chain(view(
                    &names[1..2],
                    BreakerState::HalfOpen {
                        probe_in_flight: true,
                    },
                )),
        );
        let text = metrics.encode(Format::Prometheus);
        let mut breakers = series(&text, "agentmesh_worker_breaker_state{");
        breakers.sort_unstable();
        assert_eq!(
            breakers,
            [
                "agentmesh_worker_breaker_state{agent=\"w0000\"} 2",
                "agentmesh_worker_breaker_state{agent=\"w0001\"} 1"
            ],
            "{text}"
        );
        assert_eq!(series(&text, "agentmesh_worker_in_flight{").len(), 2);
    }

    #[test]
    fn reputations_are_bounded_and_forgotten_when_no_longer_recorded() {
        let metrics = Metrics::new();
        let scores: BTreeMap<(String, String), f64> = (0..MAX_REPUTATION_SERIES + 4)
            .map(|n| ((format!("a{n:05}"), "math".to_owned()), 0.5))
            .collect();
        metrics.activity.set_reputations(&scores);
        let text = metrics.encode(Format::Prometheus);
        assert_eq!(
            series(&text, "agentmesh_agent_reputation{").len(),
            MAX_REPUTATION_SERIES
        );
        let one: BTreeMap<(String, String), f64> =
            [(("a00000".to_owned(), "math".to_owned()), 0.75)].into();
        metrics.activity.set_reputations(&one);
        let text = metrics.encode(Format::Prometheus);
        assert_eq!(
            series(&text, "agentmesh_agent_reputation{"),
            ["agentmesh_agent_reputation{agent=\"a00000\",capability=\"math\"} 0.75"]
        );
    }

    #[test]
    fn a_backlog_mirrors_its_depth_until_its_agent_is_gone() {
        let metrics = Metrics::new();
        let backlog = crate::transport::Backlog::observed(2, metrics.activity.mailbox_backlog("w"));
        backlog.enter("w").unwrap();
        backlog.enter("w").unwrap();
        assert!(backlog.enter("w").is_err());
        backlog.leave();
        let text = metrics.encode(Format::Prometheus);
        assert!(
            text.contains("agentmesh_mailbox_backlog{agent=\"w\"} 1\n"),
            "{text}"
        );
        metrics.activity.mailbox_gone("w");
        let text = metrics.encode(Format::Prometheus);
        assert!(!text.contains("agentmesh_mailbox_backlog{"), "{text}");
    }

    #[test]
    fn fixed_label_sets_are_stable() {
        let metrics = Metrics::new();
        metrics.activity.link_acks(3, 1);
        metrics
            .activity
            .record_write(5, Duration::from_millis(1), Some(WriteErrorKind::Permanent));
        metrics.activity.leading(Some(42));
        metrics
            .activity
            .consensus_round(RoundOutcome::Agreed, Some(0.75), 1);
        metrics
            .activity
            .etcd_request("KV/Txn", Duration::from_millis(2), true);
        let text = metrics.encode(Format::Prometheus);
        for line in [
            "agentmesh_link_acks_total{outcome=\"accepted\"} 3",
            "agentmesh_link_acks_total{outcome=\"refused\"} 1",
            "agentmesh_record_write_errors_total{kind=\"permanent\"} 1",
            "agentmesh_record_write_errors_total{kind=\"transient\"} 0",
            "agentmesh_record_write_batch_records_bucket{le=\"4\"} 0",
            "agentmesh_record_write_batch_records_bucket{le=\"8\"} 1",
            "agentmesh_coordinator_leader 1",
            "agentmesh_coordinator_term 42",
            "agentmesh_consensus_rounds_total{outcome=\"agreed\"} 1",
            "agentmesh_consensus_rounds_total{outcome=\"failed\"} 0",
            "agentmesh_consensus_agreement_ratio_bucket{le=\"0.8\"} 1",
            "agentmesh_consensus_dissents_total 1",
            "agentmesh_etcd_request_errors_total{method=\"KV/Txn\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        metrics.activity.leading(None);
        let text = metrics.encode(Format::Prometheus);
        assert!(text.contains("agentmesh_coordinator_term 0\n"), "{text}");
    }
}
