//! Who may hand out work to the agents of this node.
//!
//! The mailbox has already checked that an envelope comes from the agent
//! it names (the sending node's certificate speaks for it). This decides
//! whether that agent may send it: assignments and cancellations come
//! from the leader coordinator (or, for a worker, from a peer leading a
//! consensus round or a tactical level running an objective), as the
//! cluster's membership and election say right now.
//!
//! A coordinator that is not the leader this node sees is refused with
//! [`DeliverError::NotLeader`] (`FAILED_PRECONDITION`), not as a forgery:
//! it is either deposed, or a new leader this node has not heard of yet.
//! The new leader tells the two apart by that code and offers the work
//! again after a backoff, without spending the subtask's retry budget.
//!
//! Refusals are logged here at DEBUG only: the mailbox logs each one at
//! WARN, with the identity the sender's certificate carries, and counts
//! it (`agentmesh_envelopes_refused_total`).

use std::sync::Arc;

use agentmesh_core::hierarchy::Level;
use agentmesh_core::{AgentId, AgentRegistration, Membership, Role};
use tokio::sync::watch;
use tracing::debug;

use crate::transport::{DeliverError, Kind};

/// The membership and leader views the checks read; cheap to clone.
#[derive(Debug, Clone)]
pub struct Authority {
    membership: watch::Receiver<Arc<Membership>>,
    leader: watch::Receiver<Option<AgentId>>,
}

impl Authority {
    pub fn new(
        membership: watch::Receiver<Arc<Membership>>,
        leader: watch::Receiver<Option<AgentId>>,
    ) -> Self {
        Self { membership, leader }
    }

    /// Refuses `kind` from `sender` unless it hands out work to workers:
    /// the leader coordinator, a peer (replicas of a consensus round), or
    /// a tactical level (an objective's operational tasks).
    pub fn assigner(&self, sender: &AgentId, kind: Kind) -> Result<(), DeliverError> {
        let why = {
            let membership = self.membership.borrow();
            match membership.agents.get(sender) {
                None => "it is not a registered agent of the cluster".to_owned(),
                Some(agent) if agent.role == Role::Coordinator => String::new(),
                Some(agent) if assigns_to_workers(agent) => return Ok(()),
                Some(agent) => format!(
                    "it is a {}{}, which does not hand out work",
                    agent.role,
                    agent.level.map(|l| format!(" ({l})")).unwrap_or_default()
                ),
            }
        };
        if why.is_empty() {
            return self.leader_only(sender, kind);
        }
        Err(not_allowed(sender, kind, why))
    }

    /// Refuses `kind` from `sender` unless it is a registered strategic
    /// level: the only level that gives directives.
    pub fn strategic_level(&self, sender: &AgentId, kind: Kind) -> Result<(), DeliverError> {
        let membership = self.membership.borrow();
        match membership.agents.get(sender) {
            Some(agent) if agent.role == Role::Level && agent.level == Some(Level::Strategic) => {
                Ok(())
            }
            Some(agent) => Err(not_allowed(
                sender,
                kind,
                format!("it is a {}, not a strategic level", agent.role),
            )),
            None => Err(not_allowed(
                sender,
                kind,
                "it is not a registered agent of the cluster".to_owned(),
            )),
        }
    }

    /// Whether `agent` is registered now.
    pub fn is_member(&self, agent: &AgentId) -> bool {
        self.membership.borrow().agents.contains_key(agent)
    }

    /// Fixed views for unit tests: `agents` registered, `leader` leading.
    #[cfg(test)]
    pub(crate) fn fixed(agents: Vec<AgentRegistration>, leader: Option<&str>) -> Self {
        let membership = Membership {
            agents: agents.into_iter().map(|a| (a.id.clone(), a)).collect(),
        };
        Self::new(
            watch::channel(Arc::new(membership)).1,
            watch::channel(leader.map(AgentId::new)).1,
        )
    }

    /// Refuses `kind` from `sender` unless it is the leader coordinator.
    pub fn leader_only(&self, sender: &AgentId, kind: Kind) -> Result<(), DeliverError> {
        let leader = self.leader.borrow().clone();
        if leader.as_ref() == Some(sender) {
            return Ok(());
        }
        debug!(sender = %sender, kind = %kind, leader = ?leader,
               "refused a message only the leader coordinator may send");
        Err(DeliverError::NotLeader {
            sender: sender.clone(),
            kind: kind.to_string(),
            leader,
        })
    }
}

fn not_allowed(sender: &AgentId, kind: Kind, why: String) -> DeliverError {
    debug!(sender = %sender, kind = %kind, %why, "refused a message from an agent that may not send it");
    DeliverError::NotAllowed {
        sender: sender.clone(),
        kind: kind.to_string(),
        why,
    }
}

/// Agents other than coordinators that send workers assignments and
/// cancellations.
fn assigns_to_workers(agent: &AgentRegistration) -> bool {
    match agent.role {
        Role::Peer => true,
        Role::Level => agent.level == Some(Level::Tactical),
        Role::Coordinator | Role::Worker | Role::Reactive => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn registration(id: &str, role: Role, level: Option<Level>) -> AgentRegistration {
        AgentRegistration {
            id: AgentId::new(id),
            role,
            level,
            capabilities: vec!["x".into()],
            endpoint: "127.0.0.1:1".into(),
            load: 0,
            max_concurrency: 1,
            version: "test".into(),
            faults: Vec::new(),
            insecure: false,
            event_handlers: Vec::new(),
        }
    }

    fn authority(
        agents: Vec<AgentRegistration>,
        leader: Option<&str>,
    ) -> (Authority, watch::Sender<Option<AgentId>>) {
        let membership = Membership {
            agents: agents.into_iter().map(|a| (a.id.clone(), a)).collect(),
        };
        let (_, membership) = watch::channel(Arc::new(membership));
        let (leader_tx, leader) = watch::channel(leader.map(AgentId::new));
        (Authority::new(membership, leader), leader_tx)
    }

    #[test]
    fn only_the_leader_coordinator_assigns_and_a_new_leader_is_taken_once_seen() {
        let agents = vec![
            registration("c1", Role::Coordinator, None),
            registration("c2", Role::Coordinator, None),
        ];
        let (authority, leader) = authority(agents, Some("c1"));
        let (c1, c2) = (AgentId::new("c1"), AgentId::new("c2"));
        assert!(authority.assigner(&c1, Kind::SubtaskAssign).is_ok());
        let refused = authority.assigner(&c2, Kind::SubtaskAssign).unwrap_err();
        assert!(refused.sender_not_leader(), "{refused:?}");
        assert!(refused.to_string().contains("'c1' leading"), "{refused}");

        leader.send_replace(Some(c2.clone()));
        assert!(authority.assigner(&c2, Kind::SubtaskCancel).is_ok());
        assert!(authority.leader_only(&c1, Kind::SubtaskAssign).is_err());
        leader.send_replace(None);
        let refused = authority.leader_only(&c2, Kind::SubtaskAssign).unwrap_err();
        assert!(refused.to_string().contains("no leader"), "{refused}");
    }

    #[test]
    fn peers_and_tactical_levels_assign_to_workers_but_not_workers_or_strangers() {
        let agents = vec![
            registration("p1", Role::Peer, None),
            registration("w1", Role::Worker, None),
            registration("t1", Role::Level, Some(Level::Tactical)),
            registration("s1", Role::Level, Some(Level::Strategic)),
        ];
        let (authority, _leader) = authority(agents, None);
        for ok in ["p1", "t1"] {
            assert!(
                authority
                    .assigner(&AgentId::new(ok), Kind::SubtaskAssign)
                    .is_ok(),
                "{ok}"
            );
        }
        for refused in ["w1", "s1", "rogue"] {
            let error = authority
                .assigner(&AgentId::new(refused), Kind::SubtaskAssign)
                .unwrap_err();
            assert!(
                matches!(error, DeliverError::NotAllowed { .. }),
                "{refused}: {error:?}"
            );
        }
        assert!(
            authority
                .strategic_level(&AgentId::new("s1"), Kind::Hierarchy)
                .is_ok()
        );
        assert!(
            authority
                .strategic_level(&AgentId::new("t1"), Kind::Hierarchy)
                .is_err()
        );
    }
}
