//! The etcd key layout, owned here and nowhere else.
//!
//! ```text
//! /agentmesh/v1/agents/<agent-id>        registration JSON, attached to the node's lease
//! /agentmesh/v1/election/coordinator/<lease-hex>
//!                                        coordinator candidate of one node: its agent id,
//!                                        attached to the node's lease; the oldest leads
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
/// The name of the coordinator election, as etcd's election API takes it.
pub const ELECTION_COORDINATOR: &str = "/agentmesh/v1/election/coordinator";
/// The prefix of the coordinator candidates: [`ELECTION_COORDINATOR`] and a
/// slash, as etcd's election API lays out an election's keys.
pub const ELECTION_COORDINATOR_CANDIDATES: &str = "/agentmesh/v1/election/coordinator/";
pub const REPUTATION: &str = "/agentmesh/v1/reputation/";
pub const CHECKPOINTS: &str = "/agentmesh/v1/checkpoints/";

pub fn agent(id: &AgentId) -> String {
    format!("{AGENTS}{id}")
}

pub fn task(id: &TaskId) -> String {
    format!("{TASKS}{id}")
}

/// The candidate key of the node holding `lease`: the election name, a
/// slash and the lease id in lowercase hex, exactly as etcd's own election
/// API names it, so `etcdctl elect` and the `Election` gRPC service see the
/// same election.
pub fn coordinator_candidate(lease: i64) -> String {
    format!("{ELECTION_COORDINATOR_CANDIDATES}{lease:x}")
}

/// The key range of every task record: from [`TASKS`] up to, not
/// including, this key (the prefix with its last byte incremented).
pub fn tasks_end() -> String {
    // '/' + 1 == '0'
    format!("{}0", TASKS.trim_end_matches('/'))
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
        for prefix in [
            AGENTS,
            TASKS,
            ELECTION_COORDINATOR,
            ELECTION_COORDINATOR_CANDIDATES,
            REPUTATION,
            CHECKPOINTS,
        ] {
            assert!(prefix.starts_with(ROOT));
        }
    }

    #[test]
    fn candidate_keys_follow_the_etcd_election_layout() {
        assert_eq!(
            ELECTION_COORDINATOR_CANDIDATES,
            format!("{ELECTION_COORDINATOR}/")
        );
        assert_eq!(
            coordinator_candidate(0x694d_8a2b_1c3d_4e5f),
            "/agentmesh/v1/election/coordinator/694d8a2b1c3d4e5f"
        );
    }

    #[test]
    fn tasks_end_bounds_exactly_the_task_keys() {
        let end = tasks_end();
        assert_eq!(end, "/agentmesh/v1/tasks0");
        let inside = task(&TaskId::new("\u{10ffff}"));
        assert!(TASKS < end.as_str() && inside.as_str() < end.as_str());
    }
}
