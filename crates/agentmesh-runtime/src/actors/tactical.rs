//! The tactical level of a hierarchical task (`--role level --level
//! tactical`): it takes an objective from the strategic agent, runs its
//! operational tasks on operational agents (workers registered with their
//! level), retries elsewhere or escalates, and reports back.
//!
//! ```text
//! Strategic ──hierarchy.message DOWNWARD (objective, authority)──▶ Tactical
//!   Tactical ──subtask.assign──▶ operational agents ──subtask.result──▶ Tactical
//!   Tactical ──LATERAL (objective met)──▶ the other tactical agents
//! Tactical ──hierarchy.message UPWARD (summary, or escalation)──▶ Strategic
//! ```
//!
//! Every decision is made by `agentmesh_core::hierarchy::Tactical`; this
//! actor carries messages to and from it and picks operational agents.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use agentmesh_core::hierarchy::{
    Level, Tactical as CoreTactical, TacticalPolicy, TacticalStep, TacticalSummary,
};
use agentmesh_core::task::record::TACTICAL_OBJECTIVE;
use agentmesh_core::{AgentId, Membership, Role};
use agentmesh_proto::v1::hierarchy_message::Direction;
use agentmesh_proto::v1::{Envelope, HierarchyMessage, SubtaskAssignment, SubtaskResult};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, info, warn};

use super::authority::Authority;
use super::hierarchy::{Directive, EscalationReport, Seat, SeatArguments, pick};
use crate::convert;
use crate::metrics;
use crate::telemetry::{self, TraceParent};
use crate::transport::{self, DeliverError, Inbound, Inbox, Kind};

#[derive(Debug)]
pub enum TacticalMessage {
    /// A directive from the strategic agent (downward), or a lateral note.
    Hierarchy {
        from: AgentId,
        message: HierarchyMessage,
        /// The directive's delivery: the objective's spans join the
        /// task's trace.
        trace: TraceParent,
    },
    /// An operational agent's result, and its delivery's context.
    Result(SubtaskResult, TraceParent),
    /// The cluster changed: operational agents that left fail their task.
    Membership(Arc<Membership>),
}

pub struct TacticalArguments {
    pub seat: SeatArguments,
    pub policy: TacticalPolicy,
    /// Shared with the agent's [`TacticalInbox`].
    pub directors: Directors,
    pub authority: Authority,
}

/// The strategic agent that directs each task this tactical agent runs
/// objectives for. The actor records it when it takes a directive and
/// forgets it when the task's last objective here ends; the inbox refuses
/// directives for that task from any other agent while the director is
/// registered, so another strategic level cannot take an objective over
/// (and have its report sent to itself). A director that left the cluster
/// hands its tasks to whichever strategic level the coordinator re-plans
/// them on.
#[derive(Debug, Clone, Default)]
pub struct Directors(Arc<Mutex<HashMap<String, AgentId>>>);

impl Directors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentId>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses a directive for `task` from `sender` when another agent,
    /// still registered, directs it.
    fn check(
        &self,
        authority: &Authority,
        task: &str,
        sender: &AgentId,
    ) -> Result<(), DeliverError> {
        let Some(director) = self.lock().get(task).cloned() else {
            return Ok(());
        };
        if director == *sender || !authority.is_member(&director) {
            return Ok(());
        }
        debug!(task_id = task, claimed = %sender, director = %director,
               "refused a directive for a task another strategic level directs");
        Err(DeliverError::NotOwner {
            sender: sender.clone(),
            kind: Kind::Hierarchy.to_string(),
            task: task.to_owned(),
            owner: director,
        })
    }

    fn set(&self, task: &str, director: &AgentId) {
        self.lock().insert(task.to_owned(), director.clone());
    }

    fn forget(&self, task: &str) {
        self.lock().remove(task);
    }
}

/// An objective this tactical agent runs.
struct ObjectiveRun {
    strategic_agent: AgentId,
    task_id: String,
    attempt: u32,
    term: i64,
    tactical: CoreTactical,
    /// Operational agents not to try (failed it before, or under an
    /// earlier tactical agent).
    avoid: BTreeSet<AgentId>,
    /// Dispatches so far, to number the operational attempts.
    dispatches: u32,
    /// The `hierarchy.objective` span's context, for what the objective
    /// does without a message to continue (a retry when an operational
    /// agent leaves).
    trace: TraceParent,
}

pub struct TacticalState {
    seat: Seat,
    policy: TacticalPolicy,
    directors: Directors,
    /// The same checks as the inbox's, repeated when a directive is
    /// taken: two directives for one task may pass the inbox together.
    authority: Authority,
    /// Objectives by `task_id/objective`.
    objectives: HashMap<String, ObjectiveRun>,
}

#[derive(Debug, Default)]
pub struct Tactical;

impl Actor for Tactical {
    type Msg = TacticalMessage;
    type State = TacticalState;
    type Arguments = TacticalArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: TacticalArguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(TacticalState {
            seat: Seat::take(
                args.seat,
                Level::Tactical,
                myself,
                TacticalMessage::Membership,
            ),
            policy: args.policy,
            directors: args.directors,
            authority: args.authority,
            objectives: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, TacticalMessage::Membership(_)) {
            state.seat.backlog.leave();
        }
        match message {
            TacticalMessage::Hierarchy {
                from,
                message,
                trace,
            } => state.hierarchy(from, message, trace),
            TacticalMessage::Result(result, trace) => {
                let span = telemetry::child_of(
                    &trace,
                    crate::span!(
                        "hierarchy.result",
                        task.id = %result.task_id,
                        subtask.id = %result.subtask_id,
                        attempt = result.attempt,
                        agent.id = %result.worker_id,
                    ),
                );
                span.in_scope(|| state.operational_result(result));
            }
            TacticalMessage::Membership(view) => state.membership_changed(&view),
        }
        Ok(())
    }
}

impl TacticalState {
    /// An operational agent that left fails its running task (tried
    /// elsewhere), without waiting for the plan's deadline.
    fn membership_changed(&mut self, view: &Membership) {
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
                    (!view.agents.contains_key(agent)).then(|| (task.to_owned(), agent.clone()))
                })
                .collect();
            for (task, agent) in &lost {
                run.avoid.insert(agent.clone());
                run.tactical
                    .failed(task, agent, "the operational agent left the cluster");
            }
            if !lost.is_empty() {
                let span = telemetry::child_of(
                    &run.trace,
                    crate::span!("hierarchy.replan", task.id = %run.task_id, agent.id = %self.seat.id),
                );
                span.in_scope(|| self.advance_objective(&key));
            }
        }
    }

    fn hierarchy(&mut self, from: AgentId, message: HierarchyMessage, trace: TraceParent) {
        if let Err(reason) = self.seat.check_route(&message) {
            warn!(from = %from, %reason, "hierarchy message refused");
            return;
        }
        match message.direction() {
            Direction::Downward => {
                let span = telemetry::child_of(
                    &trace,
                    crate::span!(
                        "hierarchy.objective",
                        task.id = %message.task_id,
                        objective = %message.objective_id,
                        attempt = message.attempt,
                        agent.id = %self.seat.id,
                        from = %from,
                    ),
                );
                let trace = TraceParent::of(&span);
                span.in_scope(|| self.directive(from, message, trace));
            }
            Direction::Lateral => {
                debug!(from = %from, task_id = %message.task_id, objective = %message.objective_id,
                       summary = %message.summary, "lateral status");
            }
            // Operational agents answer with `subtask.result`; a tactical
            // agent runs no plan to report to.
            Direction::Upward => {
                debug!(from = %from, task_id = %message.task_id, "report for a plan that is over");
            }
            Direction::Unspecified => warn!(from = %from, "hierarchy message without a direction"),
        }
    }

    fn directive(
        &mut self,
        strategic_agent: AgentId,
        message: HierarchyMessage,
        trace: TraceParent,
    ) {
        // Only the level above gives directives, and only the strategic
        // agent that directs a task here gives more for it. The inbox has
        // refused anyone else already; this catches two that raced.
        let allowed = self
            .authority
            .strategic_level(&strategic_agent, Kind::Hierarchy)
            .and_then(|()| {
                self.directors
                    .check(&self.authority, &message.task_id, &strategic_agent)
            });
        if let Err(refused) = allowed {
            warn!(task_id = %message.task_id, claimed = %strategic_agent, %refused,
                  "ignored a directive that raced another");
            if let Some(reason) = refused.refusal() {
                metrics::refused_envelope(Kind::Hierarchy.as_str(), reason);
            }
            return;
        }
        let directive: Directive = match serde_json::from_str(&message.payload_json) {
            Ok(directive) => directive,
            Err(error) => {
                warn!(%error, "unreadable directive");
                return;
            }
        };
        info!(task_id = %message.task_id, objective = %directive.objective.id,
              authority = %message.from_level, from = %strategic_agent, "directive received");
        let key = objective_key(&message.task_id, &directive.objective.id);
        self.directors.set(&message.task_id, &strategic_agent);
        self.objectives.insert(
            key.clone(),
            ObjectiveRun {
                strategic_agent,
                task_id: message.task_id.clone(),
                attempt: message.attempt,
                term: message.term,
                tactical: CoreTactical::new(&directive.objective, self.policy),
                avoid: directive.avoid.into_iter().collect(),
                dispatches: 0,
                trace,
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
        let membership = self.seat.membership();
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
                        let span = crate::span!(
                            "hierarchy.dispatch",
                            task.id = %assignment.task_id,
                            subtask.id = %assignment.subtask_id,
                            attempt = assignment.attempt,
                            agent.id = %agent,
                            capability = %assignment.capability,
                        );
                        span.in_scope(|| self.seat.send(&agent, Kind::SubtaskAssign, assignment));
                    }
                    TacticalStep::Escalate(escalation) => {
                        let run = self.end_run(key);
                        let header = self.seat.message(
                            &run.task_id,
                            &escalation.objective,
                            Direction::Upward,
                        );
                        let level = u32::from(escalation.escalation);
                        let summary = escalation.summary.clone();
                        let report = EscalationReport {
                            escalation,
                            failed: run.avoid.iter().cloned().collect(),
                        };
                        let message = HierarchyMessage {
                            escalation: level,
                            summary,
                            payload_json: serde_json::to_string(&report).unwrap_or_default(),
                            attempt: run.attempt,
                            term: run.term,
                            ..header
                        };
                        report_span(&self.seat.id, &message).in_scope(|| {
                            self.seat
                                .send(&run.strategic_agent, Kind::Hierarchy, message)
                        });
                        return;
                    }
                    TacticalStep::Done(summary) => {
                        let run = self.end_run(key);
                        info!(task_id = %run.task_id, objective = %summary.objective, "objective met");
                        let report = HierarchyMessage {
                            summary: summary.summary.clone(),
                            payload_json: serde_json::to_string(&summary).unwrap_or_default(),
                            attempt: run.attempt,
                            term: run.term,
                            ..self
                                .seat
                                .message(&run.task_id, &summary.objective, Direction::Upward)
                        };
                        report_span(&self.seat.id, &report).in_scope(|| {
                            self.seat
                                .send(&run.strategic_agent, Kind::Hierarchy, report)
                        });
                        self.tell_peers_at_level(&membership, &run.task_id, &summary);
                        return;
                    }
                }
            }
        }
    }

    /// Removes an objective's run; its task's director is forgotten with
    /// the task's last objective here.
    fn end_run(&mut self, key: &str) -> ObjectiveRun {
        let run = self.objectives.remove(key).expect("the run is there");
        if !self.objectives.values().any(|r| r.task_id == run.task_id) {
            self.directors.forget(&run.task_id);
        }
        run
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
            .filter(|a| a.id != self.seat.id)
        {
            let message = HierarchyMessage {
                summary: summary.summary.clone(),
                ..self
                    .seat
                    .message(task_id, &summary.objective, Direction::Lateral)
            };
            self.seat.send(&agent.id, Kind::Hierarchy, message);
        }
    }
}

/// The span of a report sent upward (a summary, or an escalation).
fn report_span(me: &AgentId, report: &HierarchyMessage) -> tracing::Span {
    crate::span!(
        "hierarchy.report",
        task.id = %report.task_id,
        objective = %report.objective_id,
        attempt = report.attempt,
        agent.id = %me,
        escalation = report.escalation,
    )
}

fn objective_key(task_id: &str, objective: &str) -> String {
    format!("{task_id}/{objective}")
}

/// What a tactical agent accepts from its mailbox: directives and lateral
/// notes, its operational agents' results, and cancels (dropped, as the
/// levels finish what they started).
#[derive(Debug)]
pub struct TacticalInbox {
    authority: Authority,
    directors: Directors,
}

impl TacticalInbox {
    pub fn new(authority: Authority, directors: Directors) -> Self {
        Self {
            authority,
            directors,
        }
    }
}

impl Inbox for TacticalInbox {
    type Message = TacticalMessage;

    fn accepts(&self) -> &'static [Kind] {
        &[Kind::SubtaskResult, Kind::SubtaskCancel, Kind::Hierarchy]
    }

    fn decode(
        &self,
        kind: Kind,
        envelope: Envelope,
    ) -> Result<Inbound<TacticalMessage>, DeliverError> {
        let message = match kind {
            Kind::SubtaskResult => {
                let result: SubtaskResult = transport::decode(&envelope)?;
                // An operational result speaks for the agent it names.
                if result.worker_id != envelope.from {
                    debug!(claimed = %result.worker_id, authenticated = %envelope.from,
                          "refused an operational result in the name of another agent");
                    return Err(DeliverError::ForgedSender {
                        claimed: AgentId::new(result.worker_id),
                        authenticated: envelope.from,
                    });
                }
                TacticalMessage::Result(result, TraceParent::from_map(&envelope.trace_context))
            }
            Kind::Hierarchy => {
                let message: HierarchyMessage = transport::decode(&envelope)?;
                let from = AgentId::new(envelope.from);
                if message.direction() == Direction::Downward {
                    self.authority.strategic_level(&from, kind)?;
                    self.directors
                        .check(&self.authority, &message.task_id, &from)?;
                }
                TacticalMessage::Hierarchy {
                    message,
                    from,
                    trace: TraceParent::from_map(&envelope.trace_context),
                }
            }
            // Cancelling is not supported yet: the levels finish the plan.
            _ => return Ok(Inbound::Handled),
        };
        Ok(Inbound::Message(message))
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::watch;

    use super::*;
    use crate::actors::authority::tests::registration;

    fn downward(task: &str) -> HierarchyMessage {
        let mut message = HierarchyMessage {
            task_id: task.into(),
            ..HierarchyMessage::default()
        };
        message.set_direction(Direction::Downward);
        message
    }

    #[test]
    fn a_tactical_mailbox_takes_directives_and_results_and_refuses_a_plan() {
        let (worker, me) = (AgentId::new("worker-1"), AgentId::new("tactical-1"));
        let inbox = TacticalInbox::new(
            Authority::fixed(
                vec![
                    registration("worker-1", Role::Worker, None),
                    registration("strategic-1", Role::Level, Some(Level::Strategic)),
                ],
                None,
            ),
            Directors::default(),
        );
        assert!(!inbox.accepts().contains(&Kind::SubtaskAssign));

        let result = SubtaskResult {
            subtask_id: "o1/a".into(),
            worker_id: worker.to_string(),
            ..SubtaskResult::default()
        };
        let envelope = transport::envelope(&worker, &me, Kind::SubtaskResult, result.clone());
        let decoded = inbox.decode(Kind::SubtaskResult, envelope);
        assert!(
            matches!(&decoded, Ok(Inbound::Message(TacticalMessage::Result(r, _))) if r.subtask_id == "o1/a"),
            "{decoded:?}"
        );
        // The same result sent by someone else is refused.
        let other = AgentId::new("worker-2");
        let envelope = transport::envelope(&other, &me, Kind::SubtaskResult, result);
        assert!(matches!(
            inbox.decode(Kind::SubtaskResult, envelope),
            Err(DeliverError::ForgedSender { .. })
        ));

        // A directive from a worker is refused; from the strategic level taken.
        let envelope = transport::envelope(&worker, &me, Kind::Hierarchy, downward("t1"));
        let refused = inbox.decode(Kind::Hierarchy, envelope);
        assert!(
            matches!(refused, Err(DeliverError::NotAllowed { .. })),
            "{refused:?}"
        );
        let strategic = AgentId::new("strategic-1");
        let envelope = transport::envelope(&strategic, &me, Kind::Hierarchy, downward("t1"));
        let decoded = inbox.decode(Kind::Hierarchy, envelope);
        assert!(
            matches!(&decoded, Ok(Inbound::Message(TacticalMessage::Hierarchy { from, message, .. }))
                if *from == strategic && message.task_id == "t1"),
            "{decoded:?}"
        );
    }

    #[test]
    fn only_the_strategic_level_directing_a_task_gives_more_directives_for_it() {
        let me = AgentId::new("tactical-1");
        let (s1, s2) = (AgentId::new("s1"), AgentId::new("s2"));
        let both = || {
            let agents = [("s1", Level::Strategic), ("s2", Level::Strategic)];
            Arc::new(Membership {
                agents: agents
                    .into_iter()
                    .map(|(id, level)| {
                        (AgentId::new(id), registration(id, Role::Level, Some(level)))
                    })
                    .collect(),
            })
        };
        let (membership_tx, membership) = watch::channel(both());
        let authority = Authority::new(membership, watch::channel(None).1);
        let directors = Directors::default();
        let inbox = TacticalInbox::new(authority, directors.clone());
        let decode = |from: &AgentId, task: &str| {
            inbox.decode(
                Kind::Hierarchy,
                transport::envelope(from, &me, Kind::Hierarchy, downward(task)),
            )
        };

        directors.set("t1", &s1);
        assert!(decode(&s1, "t1").is_ok(), "its director");
        let refused = decode(&s2, "t1").unwrap_err();
        assert!(
            matches!(&refused, DeliverError::NotOwner { owner, .. } if *owner == s1),
            "{refused:?}"
        );
        assert!(decode(&s2, "t2").is_ok(), "a task nobody directs here");

        // Once its director has left the cluster, a re-planned task is
        // directed by whoever the coordinator gave the plan to.
        let mut without_s1 = (*both()).clone();
        without_s1.agents.remove(&s1);
        membership_tx.send_replace(Arc::new(without_s1));
        assert!(decode(&s2, "t1").is_ok());

        // And once the task's last objective here ends, it is free.
        membership_tx.send_replace(both());
        assert!(decode(&s2, "t1").is_err());
        directors.forget("t1");
        assert!(decode(&s2, "t1").is_ok());
    }
}
