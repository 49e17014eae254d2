//! Where a coordinator places subtasks: workers for `coordinator_worker`
//! tasks, peers (each proposing a collaboration among peers) for
//! `peer_consensus` tasks, hierarchy levels for `hierarchical` tasks (their
//! plan goes to a strategic-level agent), reactive agents for `reactive`
//! tasks when one that offers the tool is live (workers otherwise). An agent is in one pool at
//! most, by its role, so what is done by agent id is done in every pool.

use agentmesh_core::patterns;
use agentmesh_core::scheduling::{WorkerPool, WorkerState};
use agentmesh_core::task::Pattern;
use agentmesh_core::{AgentId, Membership, Role};

use crate::node::config::CoordinatorConfig;

/// The roles placed on, in the order of [`Pools::pools`].
const ROLES: [Role; 4] = [Role::Worker, Role::Peer, Role::Level, Role::Reactive];

pub struct Pools {
    pools: [WorkerPool; 4],
}

impl Pools {
    /// Pools with no placements, for the agents of `membership`.
    pub fn new(config: &CoordinatorConfig, membership: &Membership) -> Self {
        let mut pools = Self {
            pools: ROLES.map(|role| {
                WorkerPool::new(config.weights.clone())
                    .with_breaker(config.breaker)
                    .of_role(role)
            }),
        };
        pools.sync(membership);
        pools
    }

    /// The pool a subtask needing `capability` of a task with `pattern` is
    /// placed from: its runners' role, as the pattern's rules say. A
    /// reactive task goes to the reactive pool while one of its agents
    /// offers the capability, to the workers otherwise.
    pub fn for_subtask(&mut self, pattern: Pattern, capability: &str) -> &mut WorkerPool {
        let mut role = patterns::rules(pattern).map_or(Role::Worker, |rules| rules.runner());
        if pattern == Pattern::Reactive
            && self.pools[3]
                .workers()
                .any(|agent| agent.capabilities.iter().any(|c| c == capability))
        {
            role = Role::Reactive;
        }
        let index = ROLES.iter().position(|r| *r == role).unwrap_or(0);
        &mut self.pools[index]
    }

    /// Returns the agents that left any pool.
    pub fn sync(&mut self, membership: &Membership) -> Vec<AgentId> {
        self.pools
            .iter_mut()
            .flat_map(|pool| pool.sync(membership))
            .collect()
    }

    /// Whether any pool has an agent that takes a placement now.
    pub fn has_room(&mut self, now_ms: u64) -> bool {
        self.pools.iter_mut().any(|pool| pool.has_room(now_ms))
    }

    pub fn acquire(&mut self, id: &AgentId, now_ms: u64) {
        self.pools.iter_mut().for_each(|p| p.acquire(id, now_ms));
    }

    pub fn release(&mut self, id: &AgentId, success: Option<bool>, now_ms: u64) {
        self.pools
            .iter_mut()
            .for_each(|p| p.release(id, success, now_ms));
    }

    /// See [`WorkerPool::fault`].
    pub fn fault(&mut self, id: &AgentId, now_ms: u64) {
        self.pools.iter_mut().for_each(|p| p.fault(id, now_ms));
    }

    pub fn set_reputation(&mut self, id: &AgentId, reputation: Option<f64>) {
        self.pools
            .iter_mut()
            .for_each(|p| p.set_reputation(id, reputation));
    }

    pub fn trip(&mut self, id: &AgentId, now_ms: u64) {
        self.pools.iter_mut().for_each(|p| p.trip(id, now_ms));
    }

    /// Every agent placed on, workers first.
    pub fn agents(&self) -> impl Iterator<Item = &WorkerState> {
        self.pools.iter().flat_map(WorkerPool::workers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_core::AgentRegistration;

    fn agent(id: &str, role: Role, capability: &str) -> AgentRegistration {
        AgentRegistration {
            id: AgentId::new(id),
            role,
            level: None,
            capabilities: vec![capability.into()],
            endpoint: "127.0.0.1:1".into(),
            load: 0,
            max_concurrency: 4,
            version: "t".into(),
            faults: Vec::new(),
            insecure: false,
            event_handlers: Vec::new(),
        }
    }

    #[test]
    fn a_reactive_task_runs_on_a_reactive_agent_that_offers_its_tool_else_on_a_worker() {
        let membership = Membership {
            agents: [
                agent("fast", Role::Reactive, "math.eval"),
                agent("slow", Role::Worker, "http.get"),
                agent("also", Role::Worker, "math.eval"),
            ]
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect(),
        };
        let mut pools = Pools::new(&CoordinatorConfig::default(), &membership);
        let on = |pools: &mut Pools, pattern, capability| {
            pools
                .for_subtask(pattern, capability)
                .select(capability, 0)
                .map(|id| id.to_string())
        };
        assert_eq!(
            on(&mut pools, Pattern::Reactive, "math.eval").as_deref(),
            Some("fast")
        );
        assert_eq!(
            on(&mut pools, Pattern::Reactive, "http.get").as_deref(),
            Some("slow")
        );
        assert_eq!(
            on(&mut pools, Pattern::CoordinatorWorker, "math.eval").as_deref(),
            Some("also")
        );
    }
}
