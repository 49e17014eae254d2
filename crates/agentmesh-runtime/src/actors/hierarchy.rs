//! What the strategic and tactical actors share: the agent's seat in the
//! node (id, router, registry, backlog), the route check on
//! `hierarchy.message`, the pick of the next agent and the payloads that
//! travel between the two levels.
//!
//! ```text
//! coordinator ──subtask.assign (the plan)──▶ Strategic (strategic.rs)
//!   Strategic ──hierarchy.message DOWNWARD (Directive)──▶ Tactical (tactical.rs)
//!     Tactical ──subtask.assign──▶ operational agents ──subtask.result──▶ Tactical
//!     Tactical ──LATERAL (objective met)──▶ the other tactical agents
//!   Tactical ──hierarchy.message UPWARD (summary, or EscalationReport)──▶ Strategic
//! Strategic ──subtask.result (final report)──▶ coordinator
//! ```

use std::sync::Arc;

use agentmesh_core::hierarchy::{Direction as CoreDirection, Escalation, Level, check_route};
use agentmesh_core::task::file::ObjectiveSpec;
use agentmesh_core::{AgentId, Membership, Role};
use agentmesh_proto::v1::HierarchyMessage;
use agentmesh_proto::v1::hierarchy_message::Direction;
use agentmesh_registry::Registry;
use ractor::{ActorRef, Message};
use serde::{Deserialize, Serialize};

use crate::support::background::Background;
use crate::support::feeds;
use crate::transport::{self, Backlog, Kind, Router};

/// A directive's payload: the objective, and the operational agents that
/// already failed it under an earlier tactical agent (not to be tried).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Directive {
    pub objective: ObjectiveSpec,
    #[serde(default)]
    pub avoid: Vec<AgentId>,
}

/// An escalation's payload: the core's escalation, and the operational
/// agents that failed, for the re-plan to avoid.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct EscalationReport {
    pub escalation: Escalation,
    pub failed: Vec<AgentId>,
}

/// What the node hands a strategic or tactical agent to start it.
pub struct SeatArguments {
    pub id: AgentId,
    pub router: Arc<Router>,
    pub registry: Arc<dyn Registry>,
    pub backlog: Arc<Backlog>,
    /// Owns the feeds into the actor.
    pub background: Background,
}

/// A level agent's place in its node: who it is, at which level, and the
/// handles it sends and looks up agents through.
pub(super) struct Seat {
    pub id: AgentId,
    pub level: Level,
    pub router: Arc<Router>,
    pub registry: Arc<dyn Registry>,
    pub backlog: Arc<Backlog>,
}

impl Seat {
    /// Takes the seat and feeds membership changes into `myself`, so agents
    /// that leave lose what they were doing without waiting for a deadline.
    pub fn take<M: Message>(
        args: SeatArguments,
        level: Level,
        myself: ActorRef<M>,
        membership: impl Fn(Arc<Membership>) -> M + Send + 'static,
    ) -> Self {
        feeds::follow(
            &args.background,
            args.registry.membership(),
            myself,
            membership,
        );
        Self {
            id: args.id,
            level,
            router: args.router,
            registry: args.registry,
            backlog: args.backlog,
        }
    }

    pub fn membership(&self) -> Arc<Membership> {
        self.registry.membership().borrow().clone()
    }

    pub fn send(&self, to: &AgentId, kind: Kind, message: impl prost::Message) {
        transport::tell(
            &self.router,
            transport::envelope(&self.id, to, kind, message),
        );
    }

    /// A `hierarchy.message` this level sends, `from_level` filled in.
    pub fn message(
        &self,
        task_id: &str,
        objective: &str,
        direction: Direction,
    ) -> HierarchyMessage {
        HierarchyMessage {
            task_id: task_id.to_owned(),
            objective_id: objective.to_owned(),
            direction: direction.into(),
            from_level: self.level.as_str().into(),
            ..HierarchyMessage::default()
        }
    }

    /// Directives come from the level directly above, with its authority;
    /// reports from the level directly below; lateral messages from this
    /// level (`hierarchy::check_route`).
    pub fn check_route(&self, message: &HierarchyMessage) -> Result<(), String> {
        let from: Level = message.from_level.parse().map_err(|e| format!("{e}"))?;
        let direction = match message.direction() {
            Direction::Downward => CoreDirection::Downward { authority: from },
            Direction::Upward => CoreDirection::Upward {
                escalation: u8::try_from(message.escalation).unwrap_or(u8::MAX),
                summary: message.summary.clone(),
            },
            Direction::Lateral => CoreDirection::Lateral,
            Direction::Unspecified => return Err("no direction".into()),
        };
        check_route(from, self.level, &direction).map_err(|e| e.to_string())
    }
}

/// The first agent (by id) of `role` offering `capability` not in `avoid`:
/// deterministic, so a re-plan avoiding a failed agent predictably picks
/// the next one.
pub(super) fn pick(
    membership: &Membership,
    role: Role,
    capability: &str,
    avoid: &[AgentId],
) -> Option<AgentId> {
    membership
        .offering(role, capability)
        .find(|a| !avoid.contains(&a.id))
        .map(|a| a.id.clone())
}
