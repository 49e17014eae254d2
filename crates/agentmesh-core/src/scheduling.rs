//! Worker placement: which live worker gets a ready subtask.
//!
//! A worker's score for a capability is the guide's weighted sum of
//! capability match, success rate, free load and specialisation. None of the
//! terms depends on *which* capability is asked (the match term is the same
//! constant for every worker that offers it), so a worker has one score.
//!
//! A coordinator decides for every ready subtask, and a cluster may have
//! thousands of workers, so a decision must not scan them. The pool keeps,
//! per capability, the workers that offer it *and have room*, ordered best
//! first; a decision reads the first one, in O(log n). Every change to a
//! worker (a placement, the end of an attempt, a membership change) moves
//! only that worker's entries, in the indexes of its own k capabilities:
//! O(k log n). A worker at its `max_concurrency` leaves the indexes and comes
//! back when an attempt ends, so a full worker is never even looked at.
//!
//! Each worker also has a [`CircuitBreaker`]. A worker whose breaker opens
//! leaves the indexes the same way, into a set ordered by the end of its
//! cool-down; [`WorkerPool::select`] first moves the workers whose cool-down
//! has ended back in, half-open, which costs one look at the head of that
//! set when nobody is due. A half-open worker stays out of the indexes while
//! its probe is in flight, so at most one probe reaches it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::agent::{AgentRegistration, Membership, Role};
use crate::breaker::{BreakerPolicy, BreakerState, CircuitBreaker};
use crate::ids::AgentId;

/// Weights of the four terms of a worker's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreWeights {
    pub capability: f64,
    pub success_rate: f64,
    pub free_load: f64,
    pub specialization: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            capability: 0.3,
            success_rate: 0.3,
            free_load: 0.2,
            specialization: 0.2,
        }
    }
}

impl ScoreWeights {
    /// Weights must be finite, non-negative and not all zero.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            self.capability,
            self.success_rate,
            self.free_load,
            self.specialization,
        ];
        if all.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err("score weights must be finite and non-negative".into());
        }
        if all.iter().sum::<f64>() <= 0.0 {
            return Err("at least one score weight must be positive".into());
        }
        Ok(())
    }
}

/// What the scheduler knows of one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerState {
    pub id: AgentId,
    pub capabilities: Vec<String>,
    pub max_concurrency: u32,
    /// Attempts this coordinator has placed on the worker and not yet seen
    /// finish.
    pub in_flight: u32,
    pub succeeded: u64,
    pub failed: u64,
    /// The agent's cluster-wide reputation (registry), when one is
    /// recorded; it tempers the success rate seen by this coordinator alone.
    pub reputation: Option<f64>,
    /// Fed with the verdicts of this coordinator's attempts only, like the
    /// counters above.
    pub breaker: CircuitBreaker,
}

impl WorkerState {
    pub fn has_room(&self) -> bool {
        self.in_flight < self.max_concurrency
    }

    /// The state of the worker's breaker, for display.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Whether the worker belongs in the capability indexes: it has room and
    /// its breaker takes a placement without waiting for a cool-down or a
    /// probe. An `Open` breaker whose cool-down has ended does not count
    /// until [`WorkerPool::refresh`] makes it half-open.
    fn takes_placements(&self) -> bool {
        self.has_room()
            && matches!(
                self.breaker.state(),
                BreakerState::Closed { .. }
                    | BreakerState::HalfOpen {
                        probe_in_flight: false
                    }
            )
    }

    /// Laplace-smoothed, so a new worker starts at 0.5 rather than at either
    /// extreme; averaged with the agent's recorded reputation when there is
    /// one, so what other coordinators and peers learned counts too.
    pub fn success_rate(&self) -> f64 {
        let local = (self.succeeded as f64 + 1.0) / ((self.succeeded + self.failed) as f64 + 2.0);
        match self.reputation {
            Some(reputation) if reputation.is_finite() => {
                (local + reputation.clamp(0.0, 1.0)) / 2.0
            }
            _ => local,
        }
    }

    /// The worker's score for `capability`, or `None` when it is full or
    /// does not offer it. The breaker is not consulted: it depends on time,
    /// which only [`WorkerPool::select`] is given.
    pub fn score(&self, capability: &str, weights: &ScoreWeights) -> Option<f64> {
        if !self.has_room() || !self.capabilities.iter().any(|c| c == capability) {
            return None;
        }
        Some(self.rank_score(weights))
    }

    /// The score for any capability the worker offers. The index and
    /// [`WorkerState::score`] both use this one computation, so the value a
    /// worker is filed under is bit for bit the value it is removed by.
    fn rank_score(&self, weights: &ScoreWeights) -> f64 {
        let free_load = 1.0 - f64::from(self.in_flight) / f64::from(self.max_concurrency);
        let specialization = 1.0 / self.capabilities.len() as f64;
        weights.capability
            + weights.success_rate * self.success_rate()
            + weights.free_load * free_load
            + weights.specialization * specialization
    }

    fn ranked(&self, weights: &ScoreWeights) -> Ranked {
        Ranked {
            score: self.rank_score(weights),
            in_flight: self.in_flight,
            id: self.id.clone(),
        }
    }

    /// Each capability once, even when the registration lists one twice
    /// (the specialisation term still counts the list as registered).
    fn distinct_capabilities(&self) -> impl Iterator<Item = &str> {
        self.capabilities
            .iter()
            .enumerate()
            .filter(|(i, c)| !self.capabilities[..*i].contains(c))
            .map(|(_, c)| c.as_str())
    }
}

/// A worker's entry in the index of one of its capabilities.
///
/// Ordered best first: higher score, then fewer attempts in flight, then the
/// smaller id, which is exactly the tie-breaking [`WorkerPool::select`]
/// promises, so the first entry is the decision. `f64::total_cmp` makes the
/// order total, which a `BTreeSet` needs to stay consistent whatever the
/// scores are; with weights that pass [`ScoreWeights::validate`] every score
/// of a worker with room is finite and positive, where `total_cmp` agrees
/// with `>` and `==`.
#[derive(Debug, Clone)]
struct Ranked {
    score: f64,
    in_flight: u32,
    id: AgentId,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then_with(|| self.in_flight.cmp(&other.in_flight))
            .then_with(|| self.id.cmp(&other.id))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

/// The per-capability indexes of a pool.
///
/// Invariant: for every capability offered by at least one worker,
/// `offered` counts those workers and `ready` holds exactly the
/// [`Ranked`] entries of those that [take placements], computed from their
/// current state; a capability nobody offers has no entry in either map.
/// `cooling` holds exactly the workers whose breaker is `Open`, with the
/// end of the cool-down.
///
/// [take placements]: WorkerState::takes_placements
#[derive(Debug, Clone, Default)]
struct CapabilityIndex {
    /// Number of workers, busy or not, offering each capability.
    offered: HashMap<String, usize>,
    /// Per capability, the workers offering it that take placements, best
    /// first.
    ready: HashMap<String, BTreeSet<Ranked>>,
    /// Workers whose breaker is open, soonest readmitted first.
    cooling: BTreeSet<(u64, AgentId)>,
}

impl CapabilityIndex {
    fn add_offers(&mut self, worker: &WorkerState) {
        for capability in worker.distinct_capabilities() {
            match self.offered.get_mut(capability) {
                Some(count) => *count += 1,
                None => {
                    self.offered.insert(capability.to_owned(), 1);
                    self.ready.insert(capability.to_owned(), BTreeSet::new());
                }
            }
        }
    }

    fn remove_offers(&mut self, worker: &WorkerState) {
        for capability in worker.distinct_capabilities() {
            if let Some(count) = self.offered.get_mut(capability) {
                *count -= 1;
                if *count == 0 {
                    self.offered.remove(capability);
                    self.ready.remove(capability);
                }
            }
        }
    }

    /// Files `worker` where its state puts it: in `cooling` while its
    /// breaker is open, under each of its capabilities while it takes
    /// placements. Its offers must already be counted.
    fn rank(&mut self, worker: &WorkerState, weights: &ScoreWeights) {
        self.file(worker, weights, true);
    }

    /// Undoes [`CapabilityIndex::rank`]; must see the worker in the state it
    /// was ranked in.
    fn unrank(&mut self, worker: &WorkerState, weights: &ScoreWeights) {
        self.file(worker, weights, false);
    }

    /// Files the worker's entries in (`insert`) or out of the index, by the
    /// one rule both directions must share.
    fn file(&mut self, worker: &WorkerState, weights: &ScoreWeights, insert: bool) {
        if let BreakerState::Open { until_ms } = worker.breaker.state() {
            let entry = (until_ms, worker.id.clone());
            if insert {
                self.cooling.insert(entry);
            } else {
                self.cooling.remove(&entry);
            }
            return;
        }
        if !worker.takes_placements() {
            return;
        }
        let entry = worker.ranked(weights);
        for capability in worker.distinct_capabilities() {
            if let Some(ready) = self.ready.get_mut(capability) {
                if insert {
                    ready.insert(entry.clone());
                } else {
                    ready.remove(&entry);
                }
            }
        }
    }
}

/// The workers a coordinator places subtasks on, indexed by capability.
///
/// The pool holds its [`ScoreWeights`] because the index is ordered by
/// score: weights passed per call could not reuse the order.
///
/// Time comes in as `now_ms` (milliseconds on any clock that does not go
/// backwards, the same for every call) because breakers cool down.
#[derive(Debug, Clone, Default)]
pub struct WorkerPool {
    /// Expected to have passed [`ScoreWeights::validate`].
    weights: ScoreWeights,
    /// Given to the breaker of every worker the pool admits.
    breaker: BreakerPolicy,
    workers: BTreeMap<AgentId, WorkerState>,
    index: CapabilityIndex,
    /// The role of the agents the pool places on; workers when unset.
    role: Option<Role>,
}

impl WorkerPool {
    /// An empty pool ranking workers with `weights`.
    pub fn new(weights: ScoreWeights) -> Self {
        Self {
            weights,
            ..Self::default()
        }
    }

    /// A pool of agents of `role` rather than workers: peers, where a
    /// coordinator places the proposer of a `peer_consensus` subtask, or
    /// hierarchy levels, where it places a `hierarchical` task's plan.
    pub fn of_role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }

    /// Whether `agent` is one this pool places on: of the pool's role, and
    /// able to run anything at all.
    fn admits(&self, agent: &AgentRegistration) -> bool {
        agent.role == self.role.unwrap_or(Role::Worker) && agent.max_concurrency > 0
    }

    /// Uses `policy` for the breakers of the pool's workers, present and
    /// future (present ones keep their state). Without it the pool uses
    /// [`BreakerPolicy::default`].
    pub fn with_breaker(mut self, policy: BreakerPolicy) -> Self {
        self.breaker = policy;
        for worker in self.workers.values_mut() {
            worker.breaker.set_policy(policy);
        }
        self
    }

    pub fn weights(&self) -> &ScoreWeights {
        &self.weights
    }

    pub fn breaker_policy(&self) -> &BreakerPolicy {
        &self.breaker
    }

    pub fn get(&self, id: &AgentId) -> Option<&WorkerState> {
        self.workers.get(id)
    }

    pub fn workers(&self) -> impl Iterator<Item = &WorkerState> {
        self.workers.values()
    }

    /// Brings the pool in line with the live membership. Keeps the counters
    /// of workers still present; returns the ids of workers that left.
    ///
    /// Membership is republished whenever any worker's load changes, so most
    /// calls change nothing the pool cares about (load is the registry's
    /// view; the pool counts its own placements). Only workers that joined,
    /// left, or changed capabilities or `max_concurrency` touch the index;
    /// the rest cost one comparison in a merge of the two id-sorted maps.
    pub fn sync(&mut self, membership: &Membership) -> Vec<AgentId> {
        let mut gone = Vec::new();
        let mut changed = Vec::new();
        let mut known = self.workers.values().peekable();
        let admitted: Vec<(&AgentId, &AgentRegistration)> = membership
            .agents
            .iter()
            .filter(|(_, a)| self.admits(a))
            .collect();
        for (id, agent) in admitted {
            while let Some(worker) = known.next_if(|w| w.id < *id) {
                gone.push(worker.id.clone());
            }
            match known.next_if(|w| w.id == *id) {
                Some(worker)
                    if worker.capabilities == agent.capabilities
                        && worker.max_concurrency == agent.max_concurrency => {}
                _ => changed.push((id, agent)),
            }
        }
        gone.extend(known.map(|w| w.id.clone()));
        for id in &gone {
            self.dismiss(id);
        }
        for (id, agent) in changed {
            self.admit(id, agent);
        }
        gone
    }

    /// Adds a worker, or updates the capabilities and `max_concurrency` of a
    /// known one while keeping its counters.
    fn admit(&mut self, id: &AgentId, agent: &AgentRegistration) {
        match self.workers.get_mut(id) {
            Some(worker) => {
                self.index.unrank(worker, &self.weights);
                self.index.remove_offers(worker);
                worker.capabilities.clone_from(&agent.capabilities);
                worker.max_concurrency = agent.max_concurrency;
                self.index.add_offers(worker);
                self.index.rank(worker, &self.weights);
            }
            None => {
                let worker = WorkerState {
                    id: id.clone(),
                    capabilities: agent.capabilities.clone(),
                    max_concurrency: agent.max_concurrency,
                    in_flight: 0,
                    succeeded: 0,
                    failed: 0,
                    reputation: None,
                    breaker: CircuitBreaker::new(self.breaker),
                };
                self.index.add_offers(&worker);
                self.index.rank(&worker, &self.weights);
                self.workers.insert(id.clone(), worker);
            }
        }
    }

    fn dismiss(&mut self, id: &AgentId) {
        if let Some(worker) = self.workers.remove(id) {
            self.index.unrank(&worker, &self.weights);
            self.index.remove_offers(&worker);
        }
    }

    /// Applies `change` to a worker's counters and moves its index entries
    /// accordingly; its capabilities must not change here.
    fn update(&mut self, id: &AgentId, change: impl FnOnce(&mut WorkerState)) {
        if let Some(worker) = self.workers.get_mut(id) {
            self.index.unrank(worker, &self.weights);
            change(worker);
            self.index.rank(worker, &self.weights);
        }
    }

    /// Whether any worker, busy or not, offers `capability`.
    pub fn offers(&self, capability: &str) -> bool {
        self.index.offered.contains_key(capability)
    }

    /// Moves the workers whose breaker cool-down has ended by `now_ms` back
    /// into the indexes, half-open. [`WorkerPool::select`] calls it, so a
    /// coordinator need not; O(log n) per readmitted worker and one look at
    /// the head of the cooling set otherwise.
    pub fn refresh(&mut self, now_ms: u64) {
        while self
            .index
            .cooling
            .first()
            .is_some_and(|(until_ms, _)| *until_ms <= now_ms)
        {
            let Some((_, id)) = self.index.cooling.pop_first() else {
                break;
            };
            // Popping the entry was the unranking of the open worker.
            if let Some(worker) = self.workers.get_mut(&id) {
                worker.breaker.refresh(now_ms);
                self.index.rank(worker, &self.weights);
            }
        }
    }

    /// When the earliest open breaker's cool-down ends, if any is open: a
    /// coordinator with subtasks waiting for a capability can wake up then
    /// and select again, as no other event may come.
    pub fn next_readmission_ms(&self) -> Option<u64> {
        self.index.cooling.first().map(|(until_ms, _)| *until_ms)
    }

    /// The best worker for `capability` at `now_ms`: it has room and its
    /// breaker admits a placement. Ties go to the worker with fewer
    /// attempts in flight, then to the smaller id, so a decision is
    /// deterministic.
    ///
    /// Takes `&mut self` because it first [refreshes](WorkerPool::refresh)
    /// the pool: the coordinator's loop stays `select` then `acquire`, and
    /// no call path can forget to readmit a cooled-down worker. O(log n):
    /// the first entry of the capability's index.
    pub fn select(&mut self, capability: &str, now_ms: u64) -> Option<AgentId> {
        self.refresh(now_ms);
        self.index
            .ready
            .get(capability)?
            .first()
            .map(|entry| entry.id.clone())
    }

    /// Whether any worker takes a placement at `now_ms`, whatever the
    /// capability: a coordinator stops looking through its queue once none
    /// does. Refreshes first, like [`WorkerPool::select`]; O(capabilities
    /// offered).
    pub fn has_room(&mut self, now_ms: u64) -> bool {
        self.refresh(now_ms);
        self.index.ready.values().any(|ready| !ready.is_empty())
    }

    /// Records a placement. On a half-open worker it is the probe, and the
    /// worker leaves the indexes until the probe ends.
    pub fn acquire(&mut self, id: &AgentId, now_ms: u64) {
        self.update(id, |worker| {
            worker.in_flight = worker.in_flight.saturating_add(1);
            worker.breaker.on_dispatch(now_ms);
        });
    }

    /// Sets an agent's recorded reputation (see [`WorkerState::reputation`]).
    pub fn set_reputation(&mut self, id: &AgentId, reputation: Option<f64>) {
        let unchanged = self
            .workers
            .get(id)
            .is_none_or(|w| w.reputation == reputation);
        if !unchanged {
            self.update(id, |worker| worker.reputation = reputation);
        }
    }

    /// Takes a worker that could not be reached out of placement for a
    /// breaker cool-down (see [`CircuitBreaker::trip`]).
    pub fn trip(&mut self, id: &AgentId, now_ms: u64) {
        self.update(id, |worker| worker.breaker.trip(now_ms));
    }

    /// Counts a fault of the worker against its breaker (an attempt that
    /// timed out, an internal error) without ending an attempt: the
    /// attempt itself is ended by [`WorkerPool::release`], with no verdict,
    /// when it is started elsewhere.
    pub fn fault(&mut self, id: &AgentId, now_ms: u64) {
        self.update(id, |worker| {
            worker.failed += 1;
            worker.breaker.record_failure(now_ms);
        });
    }

    /// Records the end of an attempt; `success` is `None` when the attempt
    /// ended without a verdict on the worker (cancelled, worker lost, or a
    /// failure the task's own input caused).
    ///
    /// A verdict goes to the breaker. An abandonment frees a half-open
    /// worker's probe slot only once none of its attempts is in flight: the
    /// pool cannot tell the probe from an attempt placed before the breaker
    /// opened, and freeing the slot for the latter would let a second probe
    /// run beside the first.
    pub fn release(&mut self, id: &AgentId, success: Option<bool>, now_ms: u64) {
        self.update(id, |worker| {
            worker.in_flight = worker.in_flight.saturating_sub(1);
            match success {
                Some(true) => {
                    worker.succeeded += 1;
                    worker.breaker.record_success(now_ms);
                }
                Some(false) => {
                    worker.failed += 1;
                    worker.breaker.record_failure(now_ms);
                }
                None if worker.in_flight == 0 => worker.breaker.record_abandoned(now_ms),
                None => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn registration(id: &str, capabilities: &[&str], max: u32) -> AgentRegistration {
        AgentRegistration {
            id: AgentId::new(id),
            role: Role::Worker,
            level: None,
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            endpoint: "127.0.0.1:1".into(),
            load: 0,
            max_concurrency: max,
            version: "test".into(),
            faults: Vec::new(),
            insecure: false,
            event_handlers: Vec::new(),
        }
    }

    fn membership(workers: &[AgentRegistration]) -> Membership {
        Membership {
            agents: workers.iter().map(|w| (w.id.clone(), w.clone())).collect(),
        }
    }

    fn pool(workers: &[AgentRegistration]) -> WorkerPool {
        let mut pool = WorkerPool::default();
        pool.sync(&membership(workers));
        pool
    }

    /// Recomputes the whole index from the workers' states and compares it
    /// with the one the pool maintained incrementally.
    fn assert_index_consistent(pool: &WorkerPool) {
        let mut offered: HashMap<String, usize> = HashMap::new();
        let mut ready: HashMap<String, BTreeSet<Ranked>> = HashMap::new();
        for worker in pool.workers.values() {
            for capability in worker.distinct_capabilities() {
                *offered.entry(capability.to_owned()).or_default() += 1;
                let set = ready.entry(capability.to_owned()).or_default();
                if worker.takes_placements() {
                    set.insert(worker.ranked(&pool.weights));
                }
            }
        }
        let cooling: BTreeSet<(u64, AgentId)> = pool
            .workers
            .values()
            .filter_map(|worker| match worker.breaker_state() {
                BreakerState::Open { until_ms } => Some((until_ms, worker.id.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(pool.index.offered, offered);
        assert_eq!(pool.index.ready, ready);
        assert_eq!(pool.index.cooling, cooling);
    }

    #[test]
    fn default_weights_follow_the_guide() {
        let w = ScoreWeights::default();
        assert_eq!(
            (w.capability, w.success_rate, w.free_load, w.specialization),
            (0.3, 0.3, 0.2, 0.2)
        );
        assert!(w.validate().is_ok());
        assert!(
            ScoreWeights {
                capability: -1.0,
                ..w.clone()
            }
            .validate()
            .is_err()
        );
        assert_eq!(WorkerPool::default().weights(), &w);
    }

    #[test]
    fn score_combines_the_four_terms() {
        let worker = WorkerState {
            id: AgentId::new("w"),
            capabilities: vec!["a".into(), "b".into()],
            max_concurrency: 4,
            in_flight: 1,
            succeeded: 8,
            failed: 0,
            reputation: None,
            breaker: CircuitBreaker::default(),
        };
        let score = worker.score("a", &ScoreWeights::default()).unwrap();
        let expected = 0.3 + 0.3 * (9.0 / 10.0) + 0.2 * 0.75 + 0.2 * 0.5;
        assert!((score - expected).abs() < 1e-12);
        assert_eq!(worker.score("c", &ScoreWeights::default()), None);
    }

    #[test]
    fn specialist_beats_generalist_and_full_workers_are_skipped() {
        let mut p = pool(&[
            registration("generalist", &["math.eval", "text.word_count"], 1),
            registration("specialist", &["math.eval"], 1),
        ]);
        assert_eq!(p.select("math.eval", 0), Some(AgentId::new("specialist")));
        p.acquire(&AgentId::new("specialist"), 0);
        assert_eq!(p.select("math.eval", 0), Some(AgentId::new("generalist")));
        p.acquire(&AgentId::new("generalist"), 0);
        assert_eq!(p.select("math.eval", 0), None);
        assert_eq!(p.select("text.word_count", 0), None);
        assert!(p.offers("math.eval"));
        assert!(!p.offers("json.query"));
        // A full worker comes back when an attempt ends.
        p.release(&AgentId::new("generalist"), Some(true), 0);
        assert_eq!(
            p.select("text.word_count", 0),
            Some(AgentId::new("generalist"))
        );
        assert_index_consistent(&p);
    }

    #[test]
    fn failures_lower_a_workers_rank() {
        let mut p = pool(&[
            registration("w1", &["c"], 10),
            registration("w2", &["c"], 10),
        ]);
        assert_eq!(
            p.select("c", 0),
            Some(AgentId::new("w1")),
            "tie goes to the smaller id"
        );
        for _ in 0..3 {
            p.acquire(&AgentId::new("w1"), 0);
            p.release(&AgentId::new("w1"), Some(false), 0);
        }
        assert_eq!(p.select("c", 0), Some(AgentId::new("w2")));
    }

    #[test]
    fn ties_go_to_fewer_in_flight_then_smaller_id() {
        // Only the capability term counts: every score is equal.
        let weights = ScoreWeights {
            capability: 1.0,
            success_rate: 0.0,
            free_load: 0.0,
            specialization: 0.0,
        };
        let mut p = WorkerPool::new(weights);
        p.sync(&membership(&[
            registration("a", &["c"], 3),
            registration("b", &["c"], 3),
        ]));
        p.acquire(&AgentId::new("a"), 0);
        assert_eq!(p.select("c", 0), Some(AgentId::new("b")));
        p.acquire(&AgentId::new("b"), 0);
        assert_eq!(p.select("c", 0), Some(AgentId::new("a")));
    }

    #[test]
    fn sync_reports_departed_workers_and_keeps_counters() {
        let mut p = pool(&[registration("w1", &["c"], 2), registration("w2", &["c"], 2)]);
        p.acquire(&AgentId::new("w1"), 0);
        let only_w1 = membership(&[registration("w1", &["c"], 2)]);
        assert_eq!(p.sync(&only_w1), vec![AgentId::new("w2")]);
        assert_eq!(p.get(&AgentId::new("w1")).unwrap().in_flight, 1);
        // Republished load changes nothing the pool tracks.
        let mut reloaded = registration("w1", &["c"], 2);
        reloaded.load = 2;
        assert!(p.sync(&membership(&[reloaded])).is_empty());
        assert_eq!(p.get(&AgentId::new("w1")).unwrap().in_flight, 1);
        assert_index_consistent(&p);
    }

    #[test]
    fn sync_moves_a_worker_whose_capabilities_or_limit_change() {
        let mut p = pool(&[registration("w", &["a"], 2)]);
        p.acquire(&AgentId::new("w"), 0);
        assert_eq!(p.select("a", 0), Some(AgentId::new("w")));
        p.sync(&membership(&[registration("w", &["b"], 2)]));
        assert_eq!(p.select("a", 0), None);
        assert!(!p.offers("a"));
        assert_eq!(p.select("b", 0), Some(AgentId::new("w")));
        // Lowering the limit to the attempts in flight fills the worker.
        p.sync(&membership(&[registration("w", &["b"], 1)]));
        assert_eq!(p.select("b", 0), None);
        assert!(p.offers("b"));
        p.release(&AgentId::new("w"), None, 0);
        assert_eq!(p.select("b", 0), Some(AgentId::new("w")));
        // A worker that stops being one leaves the pool.
        let mut peer = registration("w", &["b"], 1);
        peer.role = Role::Peer;
        assert_eq!(p.sync(&membership(&[peer])), vec![AgentId::new("w")]);
        assert!(!p.offers("b"));
        assert_index_consistent(&p);
    }

    #[test]
    fn a_capability_listed_twice_is_indexed_once() {
        let mut p = pool(&[registration("w", &["a", "a"], 1)]);
        assert_eq!(p.select("a", 0), Some(AgentId::new("w")));
        p.acquire(&AgentId::new("w"), 0);
        assert_eq!(p.select("a", 0), None);
        p.sync(&Membership::default());
        assert!(!p.offers("a"));
        assert_index_consistent(&p);
    }

    /// Weights under which every worker scores the same, so only the
    /// breaker and the tie-breaks decide.
    fn flat_weights() -> ScoreWeights {
        ScoreWeights {
            capability: 1.0,
            success_rate: 0.0,
            free_load: 0.0,
            specialization: 0.0,
        }
    }

    const BREAKER: BreakerPolicy = BreakerPolicy {
        failures_to_open: 3,
        cool_down_ms: 1_000,
    };

    fn breaker_pool(workers: &[AgentRegistration]) -> WorkerPool {
        let mut p = WorkerPool::new(flat_weights()).with_breaker(BREAKER);
        p.sync(&membership(workers));
        p
    }

    fn fail(p: &mut WorkerPool, id: &AgentId, now: u64) {
        p.acquire(id, now);
        p.release(id, Some(false), now);
    }

    fn breaker_of(p: &WorkerPool, id: &str) -> BreakerState {
        p.get(&AgentId::new(id)).unwrap().breaker_state()
    }

    #[test]
    fn a_failing_worker_sits_out_its_cool_down_then_gets_one_probe() {
        let (w1, w2) = (AgentId::new("w1"), AgentId::new("w2"));
        let mut p = breaker_pool(&[registration("w1", &["c"], 4), registration("w2", &["c"], 1)]);
        assert_eq!(p.select("c", 0), Some(w1.clone()), "tie goes to w1");
        for now in [1, 2] {
            fail(&mut p, &w1, now);
            assert_eq!(p.select("c", now), Some(w1.clone()), "still closed");
        }
        fail(&mut p, &w1, 10);
        assert_eq!(breaker_of(&p, "w1"), BreakerState::Open { until_ms: 1_010 });
        assert_eq!(p.next_readmission_ms(), Some(1_010));
        assert_index_consistent(&p);

        // Open: the other capable worker is chosen, and once it is full
        // nobody is, although w1 has room.
        assert_eq!(p.select("c", 10), Some(w2.clone()));
        p.acquire(&w2, 10);
        assert_eq!(p.select("c", 1_009), None);
        assert!(p.get(&w1).unwrap().has_room());

        // Cooled down: exactly one probe goes to w1.
        assert_eq!(p.select("c", 1_010), Some(w1.clone()));
        assert_eq!(
            breaker_of(&p, "w1"),
            BreakerState::HalfOpen {
                probe_in_flight: false
            }
        );
        assert_eq!(p.next_readmission_ms(), None);
        p.acquire(&w1, 1_010);
        assert_eq!(
            breaker_of(&p, "w1"),
            BreakerState::HalfOpen {
                probe_in_flight: true
            }
        );
        assert_eq!(p.select("c", 1_011), None, "no second probe");
        assert_index_consistent(&p);

        // A successful probe restores w1 fully: several placements again.
        p.release(&w1, Some(true), 1_200);
        assert_eq!(
            breaker_of(&p, "w1"),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        for _ in 0..4 {
            assert_eq!(p.select("c", 1_200), Some(w1.clone()));
            p.acquire(&w1, 1_200);
        }
        assert_eq!(p.select("c", 1_200), None, "w1 full, w2 busy");
        assert_index_consistent(&p);
    }

    #[test]
    fn a_failed_probe_sits_out_another_cool_down() {
        let w = AgentId::new("w");
        let mut p = breaker_pool(&[registration("w", &["c"], 2)]);
        for now in 0..3 {
            fail(&mut p, &w, now);
        }
        assert_eq!(p.select("c", 1_001), None);
        assert_eq!(p.select("c", 1_002), Some(w.clone()));
        p.acquire(&w, 1_002);
        p.release(&w, Some(false), 1_500);
        assert_eq!(breaker_of(&p, "w"), BreakerState::Open { until_ms: 2_500 });
        assert_eq!(p.select("c", 2_499), None);
        assert_eq!(p.select("c", 2_500), Some(w));
        assert_index_consistent(&p);
    }

    #[test]
    fn faults_open_the_breaker_and_input_errors_do_not() {
        let w = AgentId::new("w");
        let mut p = breaker_pool(&[registration("w", &["c"], 9)]);
        // Input errors: attempts ended with no verdict on the worker.
        for now in 0..10 {
            p.acquire(&w, now);
            p.release(&w, None, now);
        }
        assert_eq!(
            breaker_of(&p, "w"),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        // Attempts that ran out: faults counted apart from their release.
        for now in 10..13 {
            p.acquire(&w, now);
            p.fault(&w, now);
            p.release(&w, None, now);
        }
        assert_eq!(breaker_of(&p, "w"), BreakerState::Open { until_ms: 1_012 });
        let state = p.get(&w).unwrap();
        assert_eq!((state.in_flight, state.failed, state.succeeded), (0, 3, 0));
        assert_index_consistent(&p);
    }

    #[test]
    fn a_recorded_reputation_tempers_the_success_rate() {
        let mut p = WorkerPool::new(ScoreWeights {
            capability: 0.0,
            success_rate: 1.0,
            free_load: 0.0,
            specialization: 0.0,
        });
        p.sync(&membership(&[
            registration("a", &["c"], 1),
            registration("b", &["c"], 1),
        ]));
        assert_eq!(p.select("c", 0), Some(AgentId::new("a")), "ties by id");
        p.set_reputation(&AgentId::new("a"), Some(0.1));
        p.set_reputation(&AgentId::new("b"), Some(0.9));
        assert_eq!(p.select("c", 0), Some(AgentId::new("b")));
        let b = p.workers().find(|w| w.id == AgentId::new("b")).unwrap();
        assert!((b.success_rate() - 0.7).abs() < 1e-12);
        assert_index_consistent(&p);
    }

    #[test]
    fn a_pool_places_on_its_own_role_only() {
        let mut peer = registration("peer", &["c"], 2);
        peer.role = Role::Peer;
        let view = membership(&[registration("worker", &["c"], 2), peer]);
        let mut workers = WorkerPool::new(flat_weights());
        let mut peers = WorkerPool::new(flat_weights()).of_role(Role::Peer);
        workers.sync(&view);
        peers.sync(&view);
        assert_eq!(workers.select("c", 0), Some(AgentId::new("worker")));
        assert_eq!(peers.select("c", 0), Some(AgentId::new("peer")));
    }

    #[test]
    fn an_unreachable_worker_is_tripped_out_of_placement_at_once() {
        let dead = AgentId::new("dead");
        let alive = AgentId::new("alive");
        let mut p = breaker_pool(&[
            registration("dead", &["c"], 8),
            registration("alive", &["c"], 1),
        ]);
        p.trip(&dead, 10);
        assert_eq!(p.select("c", 11), Some(alive.clone()));
        p.acquire(&alive, 11);
        assert_eq!(p.select("c", 12), None, "no placement on the dead one");
        assert_eq!(
            p.select("c", 1_010),
            Some(dead),
            "probed after the cool-down"
        );
        assert_index_consistent(&p);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot_once_nothing_is_in_flight() {
        let w = AgentId::new("w");
        let mut p = breaker_pool(&[registration("w", &["c"], 4)]);
        // An attempt placed while the worker was healthy is still running
        // when the breaker opens.
        p.acquire(&w, 0);
        for now in 1..4 {
            fail(&mut p, &w, now);
        }
        assert_eq!(p.select("c", 1_003), Some(w.clone()));
        p.acquire(&w, 1_003);
        // The pool cannot tell which attempt was abandoned: one still runs,
        // so the slot stays taken and no second probe goes out.
        p.release(&w, None, 1_100);
        assert_eq!(p.select("c", 1_100), None);
        p.release(&w, None, 1_200);
        assert_eq!(
            breaker_of(&p, "w"),
            BreakerState::HalfOpen {
                probe_in_flight: false
            }
        );
        assert_eq!(p.select("c", 1_200), Some(w));
        assert_index_consistent(&p);
    }

    #[test]
    fn the_breaker_policy_reaches_present_and_future_workers() {
        let policy = BreakerPolicy {
            failures_to_open: 1,
            cool_down_ms: 7,
        };
        let mut p = pool(&[registration("old", &["c"], 1)]).with_breaker(policy);
        assert_eq!(p.breaker_policy(), &policy);
        p.sync(&membership(&[
            registration("old", &["c"], 1),
            registration("new", &["c"], 1),
        ]));
        for w in p.workers() {
            assert_eq!(w.breaker.policy(), &policy);
        }
        fail(&mut p, &AgentId::new("old"), 0);
        assert_eq!(breaker_of(&p, "old"), BreakerState::Open { until_ms: 7 });
        assert_eq!(
            WorkerPool::default().breaker_policy(),
            &BreakerPolicy::default()
        );
    }

    #[test]
    fn a_departed_open_worker_leaves_the_cooling_set() {
        let mut p = breaker_pool(&[registration("w", &["c"], 1)]);
        for now in 0..3 {
            fail(&mut p, &AgentId::new("w"), now);
        }
        assert_eq!(p.next_readmission_ms(), Some(1_002));
        p.sync(&Membership::default());
        assert_eq!(p.next_readmission_ms(), None);
        // It comes back as a new worker, with a closed breaker.
        p.sync(&membership(&[registration("w", &["c"], 1)]));
        assert_eq!(p.select("c", 5), Some(AgentId::new("w")));
        assert_index_consistent(&p);
    }

    /// The pool as it was before the index: every decision scans every
    /// worker. The reference the indexed pool must agree with.
    #[derive(Debug, Default)]
    struct LinearPool {
        breaker: BreakerPolicy,
        workers: BTreeMap<AgentId, WorkerState>,
    }

    impl LinearPool {
        fn sync(&mut self, membership: &Membership) -> Vec<AgentId> {
            let live: BTreeMap<&AgentId, &AgentRegistration> = membership
                .agents
                .iter()
                .filter(|(_, a)| a.role == Role::Worker && a.max_concurrency > 0)
                .collect();
            let gone: Vec<AgentId> = self
                .workers
                .keys()
                .filter(|id| !live.contains_key(id))
                .cloned()
                .collect();
            for id in &gone {
                self.workers.remove(id);
            }
            for (id, agent) in live {
                let worker = self.workers.entry(id.clone()).or_insert(WorkerState {
                    id: id.clone(),
                    capabilities: Vec::new(),
                    max_concurrency: 0,
                    in_flight: 0,
                    succeeded: 0,
                    failed: 0,
                    reputation: None,
                    breaker: CircuitBreaker::new(self.breaker),
                });
                worker.capabilities = agent.capabilities.clone();
                worker.max_concurrency = agent.max_concurrency;
            }
            gone
        }

        /// Highest score among the workers with room whose breaker admits
        /// a placement at `now`; ties to fewer attempts in flight, then to
        /// the smaller id. Refreshes every breaker first, as the pool
        /// refreshes the ones due, so both hold the same states.
        fn select(
            &mut self,
            capability: &str,
            weights: &ScoreWeights,
            now: u64,
        ) -> Option<AgentId> {
            for worker in self.workers.values_mut() {
                worker.breaker.refresh(now);
            }
            let mut best: Option<(&WorkerState, f64)> = None;
            for worker in self.workers.values() {
                let Some(score) = worker.score(capability, weights) else {
                    continue;
                };
                if !worker.breaker.admits(now) {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((current, current_score)) => {
                        score > current_score
                            || (score == current_score
                                && (worker.in_flight < current.in_flight
                                    || (worker.in_flight == current.in_flight
                                        && worker.id < current.id)))
                    }
                };
                if better {
                    best = Some((worker, score));
                }
            }
            best.map(|(worker, _)| worker.id.clone())
        }

        fn offers(&self, capability: &str) -> bool {
            self.workers
                .values()
                .any(|w| w.capabilities.iter().any(|c| c == capability))
        }

        fn acquire(&mut self, id: &AgentId, now: u64) {
            if let Some(worker) = self.workers.get_mut(id) {
                worker.in_flight += 1;
                worker.breaker.on_dispatch(now);
            }
        }

        fn release(&mut self, id: &AgentId, success: Option<bool>, now: u64) {
            if let Some(worker) = self.workers.get_mut(id) {
                worker.in_flight = worker.in_flight.saturating_sub(1);
                match success {
                    Some(true) => {
                        worker.succeeded += 1;
                        worker.breaker.record_success(now);
                    }
                    Some(false) => {
                        worker.failed += 1;
                        worker.breaker.record_failure(now);
                    }
                    None => {
                        if worker.in_flight == 0 {
                            worker.breaker.record_abandoned(now);
                        }
                    }
                }
            }
        }
    }

    /// Capabilities the random workers draw from; `c4` is never offered.
    const CAPABILITIES: [&str; 5] = ["c0", "c1", "c2", "c3", "c4"];
    const WORKER_IDS: usize = 12;

    #[derive(Debug, Clone)]
    enum Op {
        /// The live membership becomes exactly these registrations.
        Sync(Vec<AgentRegistration>),
        /// Whatever the worker's state, even full, open or unknown.
        Acquire(usize),
        /// What the coordinator does: select, then acquire the choice.
        Place(usize),
        Release(usize, Option<bool>),
        /// An attempt placed on the worker (whatever its state) fails at
        /// once, so breakers open often.
        Fail(usize),
        /// Time passes, so cool-downs end.
        Advance(u64),
    }

    fn worker_id(i: usize) -> AgentId {
        AgentId::new(format!("w{i:02}"))
    }

    fn registration_strategy() -> impl Strategy<Value = AgentRegistration> {
        (
            0..WORKER_IDS,
            proptest::collection::vec(0usize..4, 0..4),
            0u32..4,
            proptest::bool::weighted(0.9),
        )
            .prop_map(|(i, caps, max, worker)| {
                // Duplicates in `caps` are kept on purpose.
                let caps: Vec<&str> = caps.into_iter().map(|c| CAPABILITIES[c]).collect();
                let mut r = registration(worker_id(i).as_str(), &caps, max);
                if !worker {
                    r.role = Role::Peer;
                }
                r
            })
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => proptest::collection::vec(registration_strategy(), 0..WORKER_IDS).prop_map(Op::Sync),
            2 => (0..WORKER_IDS + 1).prop_map(Op::Acquire),
            4 => (0..CAPABILITIES.len()).prop_map(Op::Place),
            4 => (0..WORKER_IDS + 1, proptest::option::of(any::<bool>()))
                .prop_map(|(i, verdict)| Op::Release(i, verdict)),
            3 => (0..WORKER_IDS + 1).prop_map(Op::Fail),
            2 => (0u64..150).prop_map(Op::Advance),
        ]
    }

    /// Weights from a few values, so ties (zero weights) are frequent.
    fn weights_strategy() -> impl Strategy<Value = ScoreWeights> {
        let term = || proptest::sample::select(vec![0.0, 0.25, 0.3, 1.0]);
        (term(), term(), term(), term())
            .prop_map(
                |(capability, success_rate, free_load, specialization)| ScoreWeights {
                    capability,
                    success_rate,
                    free_load,
                    specialization,
                },
            )
            .prop_filter("valid weights", |w| w.validate().is_ok())
    }

    /// Breakers that open after few failures and cool down within a few
    /// `Advance` steps (or at once), so every state is visited.
    fn breaker_strategy() -> impl Strategy<Value = BreakerPolicy> {
        (1u32..4, proptest::sample::select(vec![0u64, 1, 50, 200])).prop_map(
            |(failures_to_open, cool_down_ms)| BreakerPolicy {
                failures_to_open,
                cool_down_ms,
            },
        )
    }

    #[derive(Debug, Clone)]
    enum ProbeOp {
        Place(usize),
        /// Ends the outstanding attempt at this position (modulo their
        /// number).
        End(usize, Option<bool>),
        Advance(u64),
    }

    fn probe_op_strategy() -> impl Strategy<Value = ProbeOp> {
        prop_oneof![
            4 => (0usize..2).prop_map(ProbeOp::Place),
            4 => (any::<usize>(), proptest::option::weighted(0.7, proptest::bool::weighted(0.3)))
                .prop_map(|(k, verdict)| ProbeOp::End(k, verdict)),
            2 => (0u64..150).prop_map(ProbeOp::Advance),
        ]
    }

    proptest! {
        #[test]
        fn selection_never_exceeds_max_concurrency(
            limits in proptest::collection::vec(1u32..5, 1..8),
            placements in 0usize..64,
        ) {
            let regs: Vec<_> = limits.iter().enumerate()
                .map(|(i, &m)| registration(&format!("w{i}"), &["c"], m))
                .collect();
            let mut p = pool(&regs);
            let capacity: u32 = limits.iter().sum();
            let mut placed = 0u32;
            for _ in 0..placements {
                match p.select("c", 0) {
                    Some(id) => { p.acquire(&id, 0); placed += 1; }
                    None => break,
                }
            }
            prop_assert_eq!(placed, capacity.min(placements as u32));
            for w in p.workers() {
                prop_assert!(w.in_flight <= w.max_concurrency);
            }
        }

        #[test]
        fn score_is_within_weight_sum(in_flight in 0u32..10, extra in 1u32..10, s in 0u64..100, f in 0u64..100, n in 1usize..6) {
            let worker = WorkerState {
                id: AgentId::new("w"),
                capabilities: (0..n).map(|i| format!("c{i}")).collect(),
                max_concurrency: in_flight + extra,
                in_flight,
                succeeded: s,
                failed: f,
                reputation: None,
                breaker: CircuitBreaker::default(),
            };
            let score = worker.score("c0", &ScoreWeights::default()).unwrap();
            prop_assert!(score > 0.3 && score <= 1.0 + 1e-12);
        }

        /// The proof that the index is right: after every operation of a
        /// random history, the indexed pool decides exactly as a linear scan
        /// of every worker does (a worker is eligible iff it has room and
        /// its breaker admits at `now`), and tracks the same workers.
        #[test]
        fn indexed_selection_matches_linear_scan(
            weights in weights_strategy(),
            breaker in breaker_strategy(),
            ops in proptest::collection::vec(op_strategy(), 1..80),
        ) {
            let mut pool = WorkerPool::new(weights.clone()).with_breaker(breaker);
            let mut reference = LinearPool { breaker, ..LinearPool::default() };
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Sync(registrations) => {
                        let view = membership(&registrations);
                        prop_assert_eq!(pool.sync(&view), reference.sync(&view));
                    }
                    Op::Acquire(i) => {
                        pool.acquire(&worker_id(i), now);
                        reference.acquire(&worker_id(i), now);
                    }
                    Op::Place(c) => {
                        let chosen = pool.select(CAPABILITIES[c], now);
                        prop_assert_eq!(&chosen, &reference.select(CAPABILITIES[c], &weights, now));
                        if let Some(id) = chosen {
                            prop_assert!(!pool.get(&id).unwrap().breaker.is_open(now));
                            pool.acquire(&id, now);
                            reference.acquire(&id, now);
                        }
                    }
                    Op::Release(i, verdict) => {
                        pool.release(&worker_id(i), verdict, now);
                        reference.release(&worker_id(i), verdict, now);
                    }
                    Op::Fail(i) => {
                        pool.acquire(&worker_id(i), now);
                        pool.release(&worker_id(i), Some(false), now);
                        reference.acquire(&worker_id(i), now);
                        reference.release(&worker_id(i), Some(false), now);
                    }
                    Op::Advance(dt) => now += dt,
                }
                // Before selecting (which refreshes), the cooling set has
                // only open breakers, the soonest first.
                prop_assert_eq!(
                    pool.next_readmission_ms(),
                    pool.workers()
                        .filter_map(|w| match w.breaker_state() {
                            BreakerState::Open { until_ms } => Some(until_ms),
                            _ => None,
                        })
                        .min()
                );
                for capability in CAPABILITIES {
                    prop_assert_eq!(
                        pool.select(capability, now),
                        reference.select(capability, &weights, now),
                        "select({})", capability
                    );
                    prop_assert_eq!(pool.offers(capability), reference.offers(capability));
                }
                let any = CAPABILITIES.iter().any(|c| reference.select(c, &weights, now).is_some());
                prop_assert_eq!(pool.has_room(now), any);
                prop_assert!(pool.workers().eq(reference.workers.values()));
                assert_index_consistent(&pool);
            }
        }

        /// Driven the way a coordinator drives it (placements only through
        /// `select`, every attempt ended exactly once, in any order), the
        /// pool never has two probes on a half-open worker, and never
        /// places on a worker whose cool-down has not ended.
        #[test]
        fn a_half_open_worker_gets_one_probe_at_a_time(
            limits in proptest::collection::vec(1u32..4, 1..4),
            breaker in breaker_strategy(),
            ops in proptest::collection::vec(probe_op_strategy(), 1..150),
        ) {
            let regs: Vec<_> = limits.iter().enumerate()
                .map(|(i, &m)| registration(&format!("w{i}"), &["c0", &format!("c{}", i % 2)], m))
                .collect();
            let mut p = WorkerPool::new(ScoreWeights::default()).with_breaker(breaker);
            p.sync(&membership(&regs));
            let mut now = 0u64;
            // Outstanding attempts: the worker, and whether the attempt was
            // placed as a probe of the worker's current half-open period.
            let mut attempts: Vec<(AgentId, bool)> = Vec::new();
            for op in ops {
                match op {
                    ProbeOp::Place(c) => {
                        if let Some(id) = p.select(CAPABILITIES[c], now) {
                            let worker = p.get(&id).unwrap();
                            prop_assert!(!worker.breaker.is_open(now));
                            let probe = matches!(worker.breaker_state(), BreakerState::HalfOpen { .. });
                            p.acquire(&id, now);
                            attempts.push((id, probe));
                        }
                    }
                    ProbeOp::End(k, verdict) => {
                        if !attempts.is_empty() {
                            let (id, _) = attempts.remove(k % attempts.len());
                            p.release(&id, verdict, now);
                        }
                    }
                    ProbeOp::Advance(dt) => now += dt,
                }
                for worker in p.workers() {
                    let mine = attempts.iter_mut().filter(|(id, _)| *id == worker.id);
                    match worker.breaker_state() {
                        BreakerState::HalfOpen { probe_in_flight } => {
                            let probes = mine.filter(|(_, probe)| *probe).count();
                            prop_assert!(probes <= 1, "{} probes on {}", probes, worker.id);
                            prop_assert!(probes == 0 || probe_in_flight);
                        }
                        // The half-open period is over: its probe, if still
                        // running, is an ordinary attempt now.
                        _ => mine.for_each(|(_, probe)| *probe = false),
                    }
                    prop_assert_eq!(
                        worker.in_flight as usize,
                        attempts.iter().filter(|(id, _)| *id == worker.id).count()
                    );
                }
                assert_index_consistent(&p);
            }
        }
    }
}
