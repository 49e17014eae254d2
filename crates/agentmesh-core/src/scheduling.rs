//! Worker placement: which live worker gets a ready subtask.
//!
//! A worker's score for a capability is the guide's weighted sum of
//! capability match, success rate, free load and specialisation. Workers are
//! indexed by capability so a decision only looks at workers that can take
//! the subtask, and never at a worker already at its `max_concurrency`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::agent::{Membership, Role};
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
}

impl WorkerState {
    pub fn has_room(&self) -> bool {
        self.in_flight < self.max_concurrency
    }

    /// Laplace-smoothed, so a new worker starts at 0.5 rather than at either
    /// extreme.
    pub fn success_rate(&self) -> f64 {
        (self.succeeded as f64 + 1.0) / ((self.succeeded + self.failed) as f64 + 2.0)
    }

    /// The worker's score for `capability`, or `None` when it cannot take it.
    pub fn score(&self, capability: &str, weights: &ScoreWeights) -> Option<f64> {
        if !self.has_room() || !self.capabilities.iter().any(|c| c == capability) {
            return None;
        }
        let free_load = 1.0 - f64::from(self.in_flight) / f64::from(self.max_concurrency);
        let specialization = 1.0 / self.capabilities.len() as f64;
        Some(
            weights.capability
                + weights.success_rate * self.success_rate()
                + weights.free_load * free_load
                + weights.specialization * specialization,
        )
    }
}

/// The workers a coordinator places subtasks on, indexed by capability.
#[derive(Debug, Clone, Default)]
pub struct WorkerPool {
    workers: BTreeMap<AgentId, WorkerState>,
    by_capability: HashMap<String, Vec<AgentId>>,
}

impl WorkerPool {
    pub fn get(&self, id: &AgentId) -> Option<&WorkerState> {
        self.workers.get(id)
    }

    pub fn workers(&self) -> impl Iterator<Item = &WorkerState> {
        self.workers.values()
    }

    /// Brings the pool in line with the live membership. Keeps the counters
    /// of workers still present; returns the ids of workers that left.
    pub fn sync(&mut self, membership: &Membership) -> Vec<AgentId> {
        let live: BTreeMap<&AgentId, _> = membership
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
            let entry = self
                .workers
                .entry(id.clone())
                .or_insert_with(|| WorkerState {
                    id: id.clone(),
                    capabilities: Vec::new(),
                    max_concurrency: 0,
                    in_flight: 0,
                    succeeded: 0,
                    failed: 0,
                });
            entry.capabilities = agent.capabilities.clone();
            entry.max_concurrency = agent.max_concurrency;
        }
        self.reindex();
        gone
    }

    fn reindex(&mut self) {
        self.by_capability.clear();
        for worker in self.workers.values() {
            for capability in &worker.capabilities {
                self.by_capability
                    .entry(capability.clone())
                    .or_default()
                    .push(worker.id.clone());
            }
        }
    }

    /// Whether any worker, busy or not, offers `capability`.
    pub fn offers(&self, capability: &str) -> bool {
        self.by_capability.contains_key(capability)
    }

    /// The best worker with room for `capability`; ties go to the worker
    /// with fewer attempts in flight, then to the smaller id, so a decision
    /// is deterministic.
    pub fn select(&self, capability: &str, weights: &ScoreWeights) -> Option<AgentId> {
        let candidates = self.by_capability.get(capability)?;
        let mut best: Option<(&WorkerState, f64)> = None;
        for worker in candidates.iter().filter_map(|id| self.workers.get(id)) {
            let Some(score) = worker.score(capability, weights) else {
                continue;
            };
            let better = match best {
                None => true,
                Some((current, current_score)) => {
                    score > current_score
                        || (score == current_score && worker.in_flight < current.in_flight)
                }
            };
            if better {
                best = Some((worker, score));
            }
        }
        best.map(|(worker, _)| worker.id.clone())
    }

    /// Records a placement.
    pub fn acquire(&mut self, id: &AgentId) {
        if let Some(worker) = self.workers.get_mut(id) {
            worker.in_flight += 1;
        }
    }

    /// Records the end of an attempt; `success` is `None` when the attempt
    /// was abandoned without a verdict (cancelled, worker lost).
    pub fn release(&mut self, id: &AgentId, success: Option<bool>) {
        if let Some(worker) = self.workers.get_mut(id) {
            worker.in_flight = worker.in_flight.saturating_sub(1);
            match success {
                Some(true) => worker.succeeded += 1,
                Some(false) => worker.failed += 1,
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::agent::AgentRegistration;

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
        }
    }

    fn pool(workers: &[AgentRegistration]) -> WorkerPool {
        let membership = Membership {
            agents: workers.iter().map(|w| (w.id.clone(), w.clone())).collect(),
        };
        let mut pool = WorkerPool::default();
        pool.sync(&membership);
        pool
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
        let weights = ScoreWeights::default();
        assert_eq!(
            p.select("math.eval", &weights),
            Some(AgentId::new("specialist"))
        );
        p.acquire(&AgentId::new("specialist"));
        assert_eq!(
            p.select("math.eval", &weights),
            Some(AgentId::new("generalist"))
        );
        p.acquire(&AgentId::new("generalist"));
        assert_eq!(p.select("math.eval", &weights), None);
        assert!(p.offers("math.eval"));
        assert!(!p.offers("json.query"));
    }

    #[test]
    fn failures_lower_a_workers_rank() {
        let mut p = pool(&[
            registration("w1", &["c"], 10),
            registration("w2", &["c"], 10),
        ]);
        for _ in 0..3 {
            p.acquire(&AgentId::new("w1"));
            p.release(&AgentId::new("w1"), Some(false));
        }
        assert_eq!(
            p.select("c", &ScoreWeights::default()),
            Some(AgentId::new("w2"))
        );
    }

    #[test]
    fn sync_reports_departed_workers_and_keeps_counters() {
        let mut p = pool(&[registration("w1", &["c"], 2), registration("w2", &["c"], 2)]);
        p.acquire(&AgentId::new("w1"));
        let membership = Membership {
            agents: [registration("w1", &["c"], 2)]
                .into_iter()
                .map(|w| (w.id.clone(), w))
                .collect(),
        };
        assert_eq!(p.sync(&membership), vec![AgentId::new("w2")]);
        assert_eq!(p.get(&AgentId::new("w1")).unwrap().in_flight, 1);
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
                match p.select("c", &ScoreWeights::default()) {
                    Some(id) => { p.acquire(&id); placed += 1; }
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
            };
            let score = worker.score("c0", &ScoreWeights::default()).unwrap();
            prop_assert!(score > 0.3 && score <= 1.0 + 1e-12);
        }
    }
}
