//! The etcd key layout, owned here and nowhere else.
//!
//! ```text
//! /agentmesh/v1/agents/<agent-id>        registration JSON, attached to the node's lease
//! /agentmesh/v1/election/coordinator     election key (coordinator leadership)
//! /agentmesh/v1/tasks/<task-id>          task record JSON
//! /agentmesh/v1/reputation/<agent-id>    reputation record, updated with compare-and-swap
//! /agentmesh/v1/checkpoints/<task-id>    workflow checkpoints
//! ```
//!
//! `docs/etcd-keys.md` documents the same layout for operators.

use agentmesh_core::{AgentId, TaskId};

pub const ROOT: &str = "/agentmesh/v1/";
pub const AGENTS: &str = "/agentmesh/v1/agents/";
pub const TASKS: &str = "/agentmesh/v1/tasks/";
pub const ELECTION_COORDINATOR: &str = "/agentmesh/v1/election/coordinator";
pub const REPUTATION: &str = "/agentmesh/v1/reputation/";
pub const CHECKPOINTS: &str = "/agentmesh/v1/checkpoints/";

pub fn agent(id: &AgentId) -> String {
    format!("{AGENTS}{id}")
}

pub fn task(id: &TaskId) -> String {
    format!("{TASKS}{id}")
}

/// The agent id of a key under [`AGENTS`].
pub fn agent_id_of(key: &[u8]) -> Option<AgentId> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(AGENTS)
        .filter(|id| !id.is_empty())
        .map(AgentId::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_keys_round_trip() {
        let id = AgentId::new("worker-1");
        assert_eq!(agent(&id), "/agentmesh/v1/agents/worker-1");
        assert_eq!(agent_id_of(agent(&id).as_bytes()), Some(id));
        assert_eq!(agent_id_of(b"/agentmesh/v1/tasks/x"), None);
        assert_eq!(agent_id_of(AGENTS.as_bytes()), None);
    }

    #[test]
    fn every_prefix_lives_under_the_root() {
        for prefix in [AGENTS, TASKS, ELECTION_COORDINATOR, REPUTATION, CHECKPOINTS] {
            assert!(prefix.starts_with(ROOT));
        }
    }
}
