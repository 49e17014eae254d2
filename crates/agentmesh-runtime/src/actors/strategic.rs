//! The strategic level of a hierarchical task (`--role level --level
//! strategic`): it takes the plan from the coordinator, directs each
//! objective to a tactical agent, re-plans or gives up on escalations and
//! answers with the final report.
//!
//! ```text
//! coordinator ──subtask.assign (the plan)──▶ Strategic
//!   Strategic ──hierarchy.message DOWNWARD (objective, authority)──▶ Tactical
//!   Tactical ──hierarchy.message UPWARD (summary, or escalation)──▶ Strategic
//!   Strategic: re-plan an escalated objective on another tactical agent,
//!              or give it up
//! Strategic ──subtask.result (final report)──▶ coordinator
//! ```
//!
//! Every decision is made by `agentmesh_core::hierarchy::Strategic`; this
//! actor carries messages to and from it and picks tactical agents.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::hierarchy::{
    Applied, Level, NOT_IN_CHARGE, Strategic as CoreStrategic, StrategicPolicy, StrategicStep,
    TacticalSummary,
};
use agentmesh_core::task::file::ObjectiveSpec;
use agentmesh_core::task::record::TACTICAL_OBJECTIVE;
use agentmesh_core::{AgentId, Membership, Role};
use agentmesh_proto::v1::hierarchy_message::Direction;
use agentmesh_proto::v1::{Envelope, HierarchyMessage, SubtaskAssignment};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::hierarchy::{Directive, EscalationReport, Seat, SeatArguments, pick};
use crate::actors::authority::Authority;
use crate::actors::report;
use crate::convert;
use crate::metrics::{self, RefusalReason};
use crate::telemetry::{self, TraceParent};
use crate::transport::{self, DeliverError, Inbound, Inbox, Kind};

#[derive(Debug)]
pub enum StrategicMessage {
    /// A hierarchical task's plan, from the coordinator.
    Plan {
        coordinator: AgentId,
        assignment: SubtaskAssignment,
        /// The plan's delivery: the plan's spans join the task's trace.
        trace: TraceParent,
    },
    /// A tactical agent's report (upward), or a lateral note.
    Hierarchy {
        from: AgentId,
        message: HierarchyMessage,
        /// The report's delivery.
        trace: TraceParent,
    },
    /// The cluster changed: tactical agents that left lose their objective.
    Membership(Arc<Membership>),
}

pub struct StrategicArguments {
    pub seat: SeatArguments,
    pub policy: StrategicPolicy,
}

/// A plan this strategic agent runs.
struct PlanRun {
    coordinator: AgentId,
    assignment: SubtaskAssignment,
    objectives: Vec<ObjectiveSpec>,
    strategic: CoreStrategic,
    /// Operational agents that failed each objective, across re-plans.
    avoid: HashMap<String, BTreeSet<AgentId>>,
    /// The `hierarchy.plan` span's context: what the plan does later
    /// without a message to continue (a re-plan when a tactical agent
    /// leaves) joins the task's trace through it.
    trace: TraceParent,
}

pub struct StrategicState {
    seat: Seat,
    policy: StrategicPolicy,
    /// Plans by task id.
    plans: HashMap<String, PlanRun>,
}

#[derive(Debug, Default)]
pub struct Strategic;

impl Actor for Strategic {
    type Msg = StrategicMessage;
    type State = StrategicState;
    type Arguments = StrategicArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: StrategicArguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(StrategicState {
            seat: Seat::take(
                args.seat,
                Level::Strategic,
                myself,
                StrategicMessage::Membership,
            ),
            policy: args.policy,
            plans: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, StrategicMessage::Membership(_)) {
            state.seat.backlog.leave();
        }
        match message {
            StrategicMessage::Plan {
                coordinator,
                assignment,
                trace,
            } => {
                let span = telemetry::child_of(
                    &trace,
                    crate::span!(
                        "hierarchy.plan",
                        task.id = %assignment.task_id,
                        subtask.id = %assignment.subtask_id,
                        attempt = assignment.attempt,
                        agent.id = %state.seat.id,
                    ),
                );
                span.in_scope(|| state.plan(coordinator, assignment, TraceParent::of(&span)));
            }
            StrategicMessage::Hierarchy {
                from,
                message,
                trace,
            } => {
                let span = telemetry::child_of(
                    &trace,
                    crate::span!(
                        "hierarchy.assess",
                        task.id = %message.task_id,
                        objective = %message.objective_id,
                        attempt = message.attempt,
                        agent.id = %state.seat.id,
                        from = %from,
                        escalation = message.escalation,
                    ),
                );
                span.in_scope(|| state.hierarchy(from, message));
            }
            StrategicMessage::Membership(view) => state.membership_changed(&view),
        }
        Ok(())
    }
}

impl StrategicState {
    /// A tactical agent that left loses its objective (re-planned), without
    /// waiting for the plan's deadline.
    fn membership_changed(&mut self, view: &Membership) {
        let plans: Vec<String> = self.plans.keys().cloned().collect();
        for task_id in plans {
            let Some(run) = self.plans.get_mut(&task_id) else {
                continue;
            };
            let lost: Vec<(String, AgentId)> = run
                .objectives
                .iter()
                .filter_map(|o| {
                    let agent = run.strategic.assignee(&o.id)?;
                    (!view.agents.contains_key(agent)).then(|| (o.id.clone(), agent.clone()))
                })
                .collect();
            for (objective, agent) in &lost {
                warn!(task_id, objective = %objective, tactical = %agent, "tactical agent left the cluster");
                run.strategic
                    .lost(objective, agent, "the tactical agent left the cluster");
            }
            if !lost.is_empty() {
                let span = telemetry::child_of(
                    &run.trace,
                    crate::span!("hierarchy.replan", task.id = %task_id, agent.id = %self.seat.id),
                );
                span.in_scope(|| self.advance_plan(&task_id));
            }
        }
    }

    fn plan(&mut self, coordinator: AgentId, assignment: SubtaskAssignment, trace: TraceParent) {
        #[derive(Deserialize)]
        struct Input {
            objectives: Vec<ObjectiveSpec>,
        }
        let objectives = match serde_json::from_str::<Input>(&assignment.input_json) {
            Ok(input) => input.objectives,
            Err(error) => {
                let reason = format!("the plan's input is not a list of objectives: {error}");
                self.answer(&coordinator, &assignment, Err(reason));
                return;
            }
        };
        info!(task_id = %assignment.task_id, objectives = objectives.len(), "strategic plan received");
        let strategic = CoreStrategic::new(&objectives, self.policy);
        let task_id = assignment.task_id.clone();
        self.plans.insert(
            task_id.clone(),
            PlanRun {
                coordinator,
                assignment,
                objectives,
                strategic,
                avoid: HashMap::new(),
                trace,
            },
        );
        self.advance_plan(&task_id);
    }

    /// Carries out the strategic steps until it has to wait.
    fn advance_plan(&mut self, task_id: &str) {
        let membership = self.seat.membership();
        loop {
            let Some(run) = self.plans.get_mut(task_id) else {
                return;
            };
            let steps = run.strategic.next();
            if steps.is_empty() {
                return;
            }
            for step in steps {
                match step {
                    StrategicStep::Direct { objective, avoid } => {
                        let Some(agent) =
                            pick(&membership, Role::Level, TACTICAL_OBJECTIVE, &avoid)
                        else {
                            run.strategic.unplaceable(
                                &objective,
                                "no tactical-level agent is available for it",
                            );
                            continue;
                        };
                        let Some(spec) = run.objectives.iter().find(|o| o.id == objective) else {
                            continue;
                        };
                        let directive = Directive {
                            objective: spec.clone(),
                            avoid: run
                                .avoid
                                .get(&objective)
                                .map(|a| a.iter().cloned().collect())
                                .unwrap_or_default(),
                        };
                        let message = HierarchyMessage {
                            payload_json: serde_json::to_string(&directive).unwrap_or_default(),
                            attempt: run.assignment.attempt,
                            term: run.assignment.term,
                            ..self.seat.message(task_id, &objective, Direction::Downward)
                        };
                        info!(task_id, objective = %objective, tactical = %agent, "directing objective");
                        run.strategic.assigned(&objective, &agent);
                        let span = crate::span!(
                            "hierarchy.directive",
                            task.id = %task_id,
                            objective = %objective,
                            attempt = run.assignment.attempt,
                            agent.id = %self.seat.id,
                            to = %agent,
                        );
                        span.in_scope(|| self.seat.send(&agent, Kind::Hierarchy, message));
                    }
                    StrategicStep::GiveUp { objective, reason } => {
                        warn!(task_id, objective = %objective, %reason, "objective given up");
                    }
                    StrategicStep::Finished(report) => {
                        let run = self.plans.remove(task_id).expect("the run is there");
                        info!(
                            task_id,
                            outcome = report.assessment.outcome.as_str(),
                            "final assessment"
                        );
                        let output = serde_json::to_value(&report).map_err(|e| e.to_string());
                        self.answer(&run.coordinator, &run.assignment, output);
                        return;
                    }
                }
            }
        }
    }

    fn hierarchy(&mut self, from: AgentId, message: HierarchyMessage) {
        if let Err(reason) = self.seat.check_route(&message) {
            warn!(from = %from, %reason, "hierarchy message refused");
            return;
        }
        match message.direction() {
            Direction::Upward => self.report(from, message),
            Direction::Lateral => {
                debug!(from = %from, task_id = %message.task_id, objective = %message.objective_id,
                       summary = %message.summary, "lateral status");
            }
            // Nothing is above the strategic level: `check_route` refuses
            // a directive to it.
            Direction::Downward => {}
            Direction::Unspecified => warn!(from = %from, "hierarchy message without a direction"),
        }
    }

    /// A tactical agent's report, routine or escalated.
    fn report(&mut self, from: AgentId, message: HierarchyMessage) {
        let task_id = message.task_id.clone();
        let Some(run) = self.plans.get_mut(&task_id) else {
            debug!(task_id, "report for a plan that is over");
            return;
        };
        if message.attempt != run.assignment.attempt || message.term != run.assignment.term {
            return;
        }
        if message.escalation == 0 {
            match serde_json::from_str::<TacticalSummary>(&message.payload_json) {
                Ok(summary) => {
                    let applied = run.strategic.reported(&from, summary);
                    refuse_if_not_in_charge(&applied, &from, &task_id);
                }
                Err(error) => warn!(%error, "unreadable tactical summary"),
            }
        } else {
            match serde_json::from_str::<EscalationReport>(&message.payload_json) {
                Ok(report) => {
                    warn!(task_id, objective = %message.objective_id, escalation = message.escalation,
                          summary = %message.summary, "objective escalated");
                    run.avoid
                        .entry(message.objective_id.clone())
                        .or_default()
                        .extend(report.failed);
                    let applied = run.strategic.escalated(&from, report.escalation);
                    refuse_if_not_in_charge(&applied, &from, &task_id);
                }
                Err(error) => warn!(%error, "unreadable escalation"),
            }
        }
        self.advance_plan(&task_id);
    }

    /// Answers the coordinator for the plan, with retries like any result.
    fn answer(
        &self,
        coordinator: &AgentId,
        assignment: &SubtaskAssignment,
        output: Result<Value, String>,
    ) {
        let outcome = output.map(|value| value.to_string());
        let result = convert::subtask_result(&self.seat.id, assignment, outcome, Duration::ZERO);
        report::report_later(&self.seat.router, &self.seat.id, coordinator, result);
    }
}

/// Counts and logs a report or escalation the core ignored because its
/// sender is not in charge of the objective: a refusal the mailbox could
/// not make, as only the plan knows who is in charge.
fn refuse_if_not_in_charge(applied: &Applied, from: &AgentId, task_id: &str) {
    if *applied == Applied::Ignored(NOT_IN_CHARGE) {
        warn!(task_id, claimed = %from, "ignored a report from an agent not in charge of the objective");
        metrics::refused_envelope(Kind::Hierarchy.as_str(), RefusalReason::NotOwner);
    }
}

/// What a strategic agent accepts from its mailbox: the plan from the
/// leader coordinator, reports and lateral notes, and the coordinator's
/// cancel.
#[derive(Debug)]
pub struct StrategicInbox {
    authority: Authority,
}

impl StrategicInbox {
    pub fn new(authority: Authority) -> Self {
        Self { authority }
    }
}

impl Inbox for StrategicInbox {
    type Message = StrategicMessage;

    fn accepts(&self) -> &'static [Kind] {
        &[Kind::SubtaskAssign, Kind::SubtaskCancel, Kind::Hierarchy]
    }

    fn decode(
        &self,
        kind: Kind,
        envelope: Envelope,
    ) -> Result<Inbound<StrategicMessage>, DeliverError> {
        let message = match kind {
            Kind::SubtaskAssign => {
                let coordinator = AgentId::new(envelope.from.as_str());
                self.authority.leader_only(&coordinator, kind)?;
                StrategicMessage::Plan {
                    assignment: transport::decode(&envelope)?,
                    trace: TraceParent::from_map(&envelope.trace_context),
                    coordinator,
                }
            }
            Kind::Hierarchy => StrategicMessage::Hierarchy {
                message: transport::decode(&envelope)?,
                trace: TraceParent::from_map(&envelope.trace_context),
                from: AgentId::new(envelope.from),
            },
            // Cancelling a plan is not supported yet: the levels finish it.
            _ => return Ok(Inbound::Handled),
        };
        Ok(Inbound::Message(message))
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::v1::SubtaskCancel;

    use super::*;
    use crate::actors::authority::tests::registration;

    #[test]
    fn a_strategic_mailbox_takes_the_plan_drops_cancels_and_refuses_operational_results() {
        let (coordinator, me) = (AgentId::new("coordinator"), AgentId::new("strategic-1"));
        let inbox = StrategicInbox::new(Authority::fixed(
            vec![
                registration("coordinator", Role::Coordinator, None),
                registration("standby", Role::Coordinator, None),
            ],
            Some("coordinator"),
        ));
        assert!(!inbox.accepts().contains(&Kind::SubtaskResult));

        let plan = SubtaskAssignment {
            task_id: "t1".into(),
            ..SubtaskAssignment::default()
        };
        // Only the leader hands out a plan.
        let standby = AgentId::new("standby");
        let envelope = transport::envelope(&standby, &me, Kind::SubtaskAssign, plan.clone());
        let refused = inbox.decode(Kind::SubtaskAssign, envelope).unwrap_err();
        assert!(refused.sender_not_leader(), "{refused:?}");
        let envelope = transport::envelope(&coordinator, &me, Kind::SubtaskAssign, plan);
        let decoded = inbox.decode(Kind::SubtaskAssign, envelope);
        assert!(
            matches!(&decoded, Ok(Inbound::Message(StrategicMessage::Plan { coordinator: from, assignment, .. }))
                if *from == coordinator && assignment.task_id == "t1"),
            "{decoded:?}"
        );

        let cancel = transport::envelope(
            &coordinator,
            &me,
            Kind::SubtaskCancel,
            SubtaskCancel::default(),
        );
        let decoded = inbox.decode(Kind::SubtaskCancel, cancel);
        assert!(matches!(decoded, Ok(Inbound::Handled)), "{decoded:?}");
    }
}
