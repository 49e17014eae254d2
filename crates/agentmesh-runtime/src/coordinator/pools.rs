//! Where a coordinator places subtasks: workers for `coordinator_worker`
//! tasks, peers (each proposing a collaboration among peers) for
//! `peer_consensus` tasks. An agent is in one pool at most, by its role, so
//! what is done by agent id is done in both.

use agentmesh_core::scheduling::{WorkerPool, WorkerState};
use agentmesh_core::task::Pattern;
use agentmesh_core::{AgentId, Membership};

use crate::config::CoordinatorConfig;

pub struct Pools {
    workers: WorkerPool,
    peers: WorkerPool,
}

impl Pools {
    /// Pools with no placements, for the agents of `membership`.
    pub fn new(config: &CoordinatorConfig, membership: &Membership) -> Self {
        let pool = || WorkerPool::new(config.weights.clone()).with_breaker(config.breaker);
        let mut pools = Self {
            workers: pool(),
            peers: pool().of_peers(),
        };
        pools.sync(membership);
        pools
    }

    /// The pool a subtask of a task with `pattern` is placed from.
    pub fn for_pattern(&mut self, pattern: Pattern) -> &mut WorkerPool {
        match pattern {
            Pattern::PeerConsensus => &mut self.peers,
            _ => &mut self.workers,
        }
    }

    /// Returns the agents that left either pool.
    pub fn sync(&mut self, membership: &Membership) -> Vec<AgentId> {
        let mut gone = self.workers.sync(membership);
        gone.extend(self.peers.sync(membership));
        gone
    }

    pub fn acquire(&mut self, id: &AgentId, now_ms: u64) {
        self.workers.acquire(id, now_ms);
        self.peers.acquire(id, now_ms);
    }

    pub fn release(&mut self, id: &AgentId, success: Option<bool>, now_ms: u64) {
        self.workers.release(id, success, now_ms);
        self.peers.release(id, success, now_ms);
    }

    pub fn set_reputation(&mut self, id: &AgentId, reputation: Option<f64>) {
        self.workers.set_reputation(id, reputation);
        self.peers.set_reputation(id, reputation);
    }

    pub fn trip(&mut self, id: &AgentId, now_ms: u64) {
        self.workers.trip(id, now_ms);
        self.peers.trip(id, now_ms);
    }

    /// Every agent placed on, workers first.
    pub fn agents(&self) -> impl Iterator<Item = &WorkerState> {
        self.workers.workers().chain(self.peers.workers())
    }
}
