//! The strategic and tactical levels of a hierarchical task (`--role level
//! --level strategic|tactical`); operational-level nodes are workers that
//! register with their level.
//!
//! ```text
//! coordinator ──subtask.assign (the plan)──▶ strategic
//!   strategic ──hierarchy.message DOWNWARD (objective, authority)──▶ tactical
//!     tactical ──subtask.assign──▶ operational agents ──subtask.result──▶ tactical
//!     tactical ──LATERAL (objective done)──▶ the other tactical agents
//!   tactical ──hierarchy.message UPWARD (summary, or escalation)──▶ strategic
//!   strategic: re-plan an escalated objective on another tactical agent,
//!              or give it up; final report
//! strategic ──subtask.result (final report)──▶ coordinator
//! ```
//!
//! Every decision is made by `agentmesh_core::hierarchy` (`Strategic`,
//! `Tactical`); this actor carries messages between them and picks agents.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::hierarchy::{
    Direction as CoreDirection, Escalation, Level as LevelName, Strategic, StrategicPolicy,
    StrategicStep, Tactical, TacticalPolicy, TacticalStep, TacticalSummary, check_route,
};
use agentmesh_core::task::file::ObjectiveSpec;
use agentmesh_core::task::record::TACTICAL_OBJECTIVE;
use agentmesh_core::{AgentId, Membership, Role};
use agentmesh_proto::v1::hierarchy_message::Direction;
use agentmesh_proto::v1::{Envelope, HierarchyMessage, SubtaskAssignment, SubtaskResult};
use agentmesh_registry::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::actors::report;
use crate::convert;
use crate::support::background::Background;
use crate::support::feeds;
use crate::transport::{self, Backlog, DeliverError, Inbound, Inbox, Kind, Router};

#[derive(Debug)]
pub enum LevelMessage {
    /// A hierarchical task's plan, from the coordinator (strategic level).
    Plan {
        coordinator: AgentId,
        assignment: SubtaskAssignment,
    },
    Hierarchy {
        from: AgentId,
        message: HierarchyMessage,
    },
    /// An operational agent's result (tactical level).
    Result(SubtaskResult),
    /// The cluster changed: agents that left lose what they were doing.
    Membership(Arc<Membership>),
}

pub struct LevelArguments {
    pub id: AgentId,
    pub level: LevelName,
    pub router: Arc<Router>,
    pub registry: Arc<dyn Registry>,
    pub backlog: Arc<Backlog>,
    pub tactical: TacticalPolicy,
    pub strategic: StrategicPolicy,
    /// Owns the feeds into the actor.
    pub background: Background,
}

/// A directive's payload: the objective, and the operational agents that
/// already failed it under an earlier tactical agent (not to be tried).
#[derive(Debug, Serialize, Deserialize)]
struct Directive {
    objective: ObjectiveSpec,
    #[serde(default)]
    avoid: Vec<AgentId>,
}

/// An escalation's payload: the core's escalation, and the operational
/// agents that failed, for the re-plan to avoid.
#[derive(Debug, Serialize, Deserialize)]
struct EscalationReport {
    escalation: Escalation,
    failed: Vec<AgentId>,
}

/// A plan this strategic agent runs.
struct PlanRun {
    coordinator: AgentId,
    assignment: SubtaskAssignment,
    objectives: Vec<ObjectiveSpec>,
    strategic: Strategic,
    /// Operational agents that failed each objective, across re-plans.
    avoid: HashMap<String, BTreeSet<AgentId>>,
}

/// An objective this tactical agent runs.
struct ObjectiveRun {
    strategic_agent: AgentId,
    task_id: String,
    attempt: u32,
    term: i64,
    tactical: Tactical,
    /// Operational agents not to try (failed it before, or under an
    /// earlier tactical agent).
    avoid: BTreeSet<AgentId>,
    /// Dispatches so far, to number the operational attempts.
    dispatches: u32,
}

pub struct LevelState {
    id: AgentId,
    level: LevelName,
    router: Arc<Router>,
    registry: Arc<dyn Registry>,
    backlog: Arc<Backlog>,
    tactical_policy: TacticalPolicy,
    strategic_policy: StrategicPolicy,
    /// Strategic: plans by task id.
    plans: HashMap<String, PlanRun>,
    /// Tactical: objectives by `task_id/objective`.
    objectives: HashMap<String, ObjectiveRun>,
}

#[derive(Debug, Default)]
pub struct Level;

impl Actor for Level {
    type Msg = LevelMessage;
    type State = LevelState;
    type Arguments = LevelArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: LevelArguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        feeds::follow(
            &args.background,
            args.registry.membership(),
            myself,
            LevelMessage::Membership,
        );
        Ok(LevelState {
            id: args.id,
            level: args.level,
            router: args.router,
            registry: args.registry,
            backlog: args.backlog,
            tactical_policy: args.tactical,
            strategic_policy: args.strategic,
            plans: HashMap::new(),
            objectives: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, LevelMessage::Membership(_)) {
            state.backlog.leave();
        }
        match message {
            LevelMessage::Plan {
                coordinator,
                assignment,
            } => state.plan(coordinator, assignment),
            LevelMessage::Hierarchy { from, message } => state.hierarchy(from, message),
            LevelMessage::Result(result) => state.operational_result(result),
            LevelMessage::Membership(view) => state.membership_changed(&view),
        }
        Ok(())
    }
}

impl LevelState {
    fn membership(&self) -> Arc<Membership> {
        self.registry.membership().borrow().clone()
    }

    /// A tactical agent that left loses its objective (re-planned); an
    /// operational agent that left fails its running task (tried
    /// elsewhere), without waiting for the plan's deadline.
    fn membership_changed(&mut self, view: &Membership) {
        let gone = |agent: &AgentId| !view.agents.contains_key(agent);
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
                    gone(agent).then(|| (o.id.clone(), agent.clone()))
                })
                .collect();
            for (objective, agent) in &lost {
                warn!(task_id, objective = %objective, tactical = %agent, "tactical agent left the cluster");
                run.strategic
                    .lost(objective, agent, "the tactical agent left the cluster");
            }
            if !lost.is_empty() {
                self.advance_plan(&task_id);
            }
        }
        let objectives: Vec<String> = self.objectives.keys().cloned().collect();
        for key in objectives {
            let Some(run) = self.objectives.get_mut(&key) else {
                continue;
            };
            let lost: Vec<(String, AgentId)> = run
                .tactical
                .in_flight()
                .into_iter()
                .filter_map(|(task, agent)| {
                    let agent = agent?;
                    gone(agent).then(|| (task.to_owned(), agent.clone()))
                })
                .collect();
            for (task, agent) in &lost {
                run.avoid.insert(agent.clone());
                run.tactical
                    .failed(task, agent, "the operational agent left the cluster");
            }
            if !lost.is_empty() {
                self.advance_objective(&key);
            }
        }
    }

    // ----- strategic -------------------------------------------------------

    fn plan(&mut self, coordinator: AgentId, assignment: SubtaskAssignment) {
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
        let strategic = Strategic::new(&objectives, self.strategic_policy);
        let task_id = assignment.task_id.clone();
        self.plans.insert(
            task_id.clone(),
            PlanRun {
                coordinator,
                assignment,
                objectives,
                strategic,
                avoid: HashMap::new(),
            },
        );
        self.advance_plan(&task_id);
    }

    /// Carries out the strategic steps until it has to wait.
    fn advance_plan(&mut self, task_id: &str) {
        let membership = self.membership();
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
                            task_id: task_id.to_owned(),
                            objective_id: objective.clone(),
                            direction: Direction::Downward.into(),
                            from_level: self.level.as_str().into(),
                            payload_json: serde_json::to_string(&directive).unwrap_or_default(),
                            attempt: run.assignment.attempt,
                            term: run.assignment.term,
                            ..HierarchyMessage::default()
                        };
                        info!(task_id, objective = %objective, tactical = %agent, "directing objective");
                        run.strategic.assigned(&objective, &agent);
                        send(&self.router, &self.id, &agent, Kind::Hierarchy, message);
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
                    run.strategic.reported(&from, summary);
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
                    run.strategic.escalated(&from, report.escalation);
                }
                Err(error) => warn!(%error, "unreadable escalation"),
            }
        }
        self.advance_plan(&task_id);
    }

    // ----- tactical --------------------------------------------------------

    fn hierarchy(&mut self, from: AgentId, message: HierarchyMessage) {
        if let Err(reason) = self.check_route(&message) {
            warn!(from = %from, %reason, "hierarchy message refused");
            return;
        }
        match message.direction() {
            Direction::Downward => self.directive(from, message),
            Direction::Upward => self.report(from, message),
            Direction::Lateral => {
                debug!(from = %from, task_id = %message.task_id, objective = %message.objective_id,
                       summary = %message.summary, "lateral status");
            }
            Direction::Unspecified => warn!(from = %from, "hierarchy message without a direction"),
        }
    }

    /// Directives come from the level directly above, with its authority;
    /// reports from the level directly below; lateral messages from this
    /// level (`hierarchy::check_route`).
    fn check_route(&self, message: &HierarchyMessage) -> Result<(), String> {
        let from: LevelName = message.from_level.parse().map_err(|e| format!("{e}"))?;
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

    fn directive(&mut self, strategic_agent: AgentId, message: HierarchyMessage) {
        let directive: Directive = match serde_json::from_str(&message.payload_json) {
            Ok(directive) => directive,
            Err(error) => {
                warn!(%error, "unreadable directive");
                return;
            }
        };
        info!(task_id = %message.task_id, objective = %directive.objective.id,
              authority = %message.from_level, "directive received");
        let key = objective_key(&message.task_id, &directive.objective.id);
        self.objectives.insert(
            key.clone(),
            ObjectiveRun {
                strategic_agent,
                task_id: message.task_id.clone(),
                attempt: message.attempt,
                term: message.term,
                tactical: Tactical::new(&directive.objective, self.tactical_policy),
                avoid: directive.avoid.into_iter().collect(),
                dispatches: 0,
            },
        );
        self.advance_objective(&key);
    }

    fn operational_result(&mut self, result: SubtaskResult) {
        let Some((objective, task)) = result.subtask_id.split_once('/') else {
            return;
        };
        let key = objective_key(&result.task_id, objective);
        let Some(run) = self.objectives.get_mut(&key) else {
            return;
        };
        let agent = AgentId::new(result.worker_id.clone());
        match convert::outcome(&result, "operational agent") {
            Ok(output) => {
                run.tactical.completed(task, &agent, output);
            }
            Err(error) => {
                warn!(task = %task, agent = %agent, %error, "operational task failed");
                run.avoid.insert(agent.clone());
                run.tactical.failed(task, &agent, error);
            }
        }
        self.advance_objective(&key);
    }

    /// Carries out the tactical steps until it has to wait.
    fn advance_objective(&mut self, key: &str) {
        let membership = self.membership();
        loop {
            let Some(run) = self.objectives.get_mut(key) else {
                return;
            };
            let steps = run.tactical.next();
            if steps.is_empty() {
                return;
            }
            for step in steps {
                match step {
                    TacticalStep::Dispatch {
                        task_id,
                        capability,
                        input,
                        timeout_ms,
                        avoid,
                    } => {
                        let mut excluded = avoid;
                        excluded.extend(run.avoid.iter().cloned());
                        let Some(agent) = pick(&membership, Role::Level, &capability, &excluded)
                        else {
                            run.tactical.unplaceable(
                                &task_id,
                                &format!(
                                    "no operational agent offering '{capability}' is left to try"
                                ),
                            );
                            continue;
                        };
                        run.dispatches += 1;
                        let assignment = SubtaskAssignment {
                            task_id: run.task_id.clone(),
                            subtask_id: format!("{}/{task_id}", run.tactical.objective()),
                            attempt: run.dispatches,
                            capability,
                            input_json: input.to_string(),
                            timeout_ms: timeout_ms.unwrap_or(0),
                            term: run.term,
                            ..SubtaskAssignment::default()
                        };
                        debug!(task = %task_id, operational = %agent, "dispatching operational task");
                        run.tactical.started(&task_id, &agent);
                        send(
                            &self.router,
                            &self.id,
                            &agent,
                            Kind::SubtaskAssign,
                            assignment,
                        );
                    }
                    TacticalStep::Escalate(escalation) => {
                        let run = self.objectives.remove(key).expect("the run is there");
                        let message = HierarchyMessage {
                            task_id: run.task_id.clone(),
                            objective_id: escalation.objective.clone(),
                            direction: Direction::Upward.into(),
                            from_level: self.level.as_str().into(),
                            escalation: u32::from(escalation.escalation),
                            summary: escalation.summary.clone(),
                            payload_json: serde_json::to_string(&EscalationReport {
                                escalation,
                                failed: run.avoid.iter().cloned().collect(),
                            })
                            .unwrap_or_default(),
                            attempt: run.attempt,
                            term: run.term,
                        };
                        send(
                            &self.router,
                            &self.id,
                            &run.strategic_agent,
                            Kind::Hierarchy,
                            message,
                        );
                        return;
                    }
                    TacticalStep::Done(summary) => {
                        let run = self.objectives.remove(key).expect("the run is there");
                        info!(task_id = %run.task_id, objective = %summary.objective, "objective met");
                        let report = HierarchyMessage {
                            task_id: run.task_id.clone(),
                            objective_id: summary.objective.clone(),
                            direction: Direction::Upward.into(),
                            from_level: self.level.as_str().into(),
                            summary: summary.summary.clone(),
                            payload_json: serde_json::to_string(&summary).unwrap_or_default(),
                            attempt: run.attempt,
                            term: run.term,
                            ..HierarchyMessage::default()
                        };
                        send(
                            &self.router,
                            &self.id,
                            &run.strategic_agent,
                            Kind::Hierarchy,
                            report,
                        );
                        self.tell_peers_at_level(&membership, &run.task_id, &summary);
                        return;
                    }
                }
            }
        }
    }

    /// Lateral: lets the other tactical agents know an objective is met.
    fn tell_peers_at_level(
        &self,
        membership: &Membership,
        task_id: &str,
        summary: &TacticalSummary,
    ) {
        for agent in membership
            .offering(Role::Level, TACTICAL_OBJECTIVE)
            .filter(|a| a.id != self.id)
        {
            let message = HierarchyMessage {
                task_id: task_id.to_owned(),
                objective_id: summary.objective.clone(),
                direction: Direction::Lateral.into(),
                from_level: self.level.as_str().into(),
                summary: summary.summary.clone(),
                ..HierarchyMessage::default()
            };
            send(&self.router, &self.id, &agent.id, Kind::Hierarchy, message);
        }
    }

    /// Answers the coordinator for the plan, with retries like any result.
    fn answer(
        &self,
        coordinator: &AgentId,
        assignment: &SubtaskAssignment,
        output: Result<Value, String>,
    ) {
        let outcome = output.map(|value| value.to_string());
        let result = convert::subtask_result(&self.id, assignment, outcome, Duration::ZERO);
        report::report_later(&self.router, &self.id, coordinator, result);
    }
}

fn objective_key(task_id: &str, objective: &str) -> String {
    format!("{task_id}/{objective}")
}

/// The first agent (by id) of `role` offering `capability` not in `avoid`:
/// deterministic, so a re-plan avoiding a failed agent predictably picks
/// the next one.
fn pick(
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

fn send(
    router: &Arc<Router>,
    from: &AgentId,
    to: &AgentId,
    kind: Kind,
    message: impl prost::Message,
) {
    transport::tell(router, transport::envelope(from, to, kind, message));
}

/// What a strategic or tactical agent accepts from its mailbox.
#[derive(Debug)]
pub struct LevelInbox;

impl Inbox for LevelInbox {
    type Message = LevelMessage;

    fn accepts(&self) -> &'static [Kind] {
        &[
            Kind::SubtaskAssign,
            Kind::SubtaskResult,
            Kind::SubtaskCancel,
            Kind::Hierarchy,
        ]
    }

    fn decode(
        &self,
        kind: Kind,
        envelope: Envelope,
    ) -> Result<Inbound<LevelMessage>, DeliverError> {
        let message = match kind {
            Kind::SubtaskAssign => LevelMessage::Plan {
                assignment: transport::decode(&envelope)?,
                coordinator: AgentId::new(envelope.from),
            },
            Kind::SubtaskResult => LevelMessage::Result(transport::decode(&envelope)?),
            Kind::Hierarchy => LevelMessage::Hierarchy {
                message: transport::decode(&envelope)?,
                from: AgentId::new(envelope.from),
            },
            // Cancelling a plan is not supported yet: the levels finish it.
            _ => return Ok(Inbound::Handled),
        };
        Ok(Inbound::Message(message))
    }
}
