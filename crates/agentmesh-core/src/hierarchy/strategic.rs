//! The strategic level: one coordinator over every objective of a task.
//!
//! ```text
//!  unassigned ──Direct──▶ directed ──assigned──▶ assigned ──report (met)──▶ met
//!      ▲                      │                     │
//!      │                      │ unplaceable         │ escalation / lost / report (not met)
//!      │                      ▼                     ▼
//!      └───── re-plan ◀── re-plans left? ──no──▶ given up ──GiveUp
//!         (avoid the agents that failed it)   (at once when UNRECOVERABLE)
//!
//!  every objective met or given up ──▶ Finished(FinalReport)
//! ```
//!
//! A re-plan hands the objective to a different tactical coordinator: the
//! one that escalated already tried every operational agent it could, so
//! trying it again would repeat the failure. Reports from a coordinator
//! the objective was taken from are stale and ignored.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::{Applied, Escalation, ROUTINE, TacticalSummary, UNRECOVERABLE, count};
use crate::AgentId;
use crate::task::file::ObjectiveSpec;

/// Why a report or an escalation is ignored when it comes from an agent
/// other than the tactical agent in charge of its objective: the actor
/// counts these as refused.
pub const NOT_IN_CHARGE: &str = "not from the tactical agent in charge of the objective";

/// How often the strategic level re-plans before it gives an objective up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategicPolicy {
    /// Re-plans per objective: each directs the objective again, to a
    /// tactical agent that has not failed it.
    pub replans: u32,
}

impl Default for StrategicPolicy {
    fn default() -> Self {
        Self { replans: 1 }
    }
}

/// What the strategic coordinator does next.
#[derive(Debug, Clone, PartialEq)]
pub enum StrategicStep {
    /// Hand the objective to a tactical agent not in `avoid` (the agents
    /// that failed it; on a re-plan the last one is the agent being
    /// replaced, to be stood down) and report the choice with `assigned`,
    /// or `unplaceable` when there is none.
    Direct {
        objective: String,
        avoid: Vec<AgentId>,
    },
    /// The objective is given up: stand its tactical agent down.
    GiveUp { objective: String, reason: String },
    /// Every objective is met or given up; the task's result.
    Finished(FinalReport),
}

/// The task's result: every level's part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalReport {
    pub strategic_summary: StrategicSummary,
    pub assessment: Assessment,
}

/// The tactical summaries, aggregated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategicSummary {
    /// One summary per objective, in task-file order, with the operational
    /// outputs; for an objective given up, what it had reached.
    pub objectives: Vec<TacticalSummary>,
    /// Objectives met.
    pub completed: usize,
    /// Objectives given up.
    pub failed: usize,
    /// Re-plans made over all objectives.
    pub replans: usize,
}

/// The strategic level's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub outcome: Outcome,
    /// A headline, then what happened to each objective that did not go
    /// straight through (re-plans, give-ups), in task-file order.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every objective met.
    Succeeded,
    /// Some objectives met, some given up.
    Partial,
    /// No objective met.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Due for a `Direct`.
    Unassigned,
    /// `Direct` handed out; waiting for `assigned`.
    Directed,
    Assigned(AgentId),
    Met(TacticalSummary),
    GivenUp {
        reason: String,
        summary: TacticalSummary,
        /// Whether `GiveUp` was handed out.
        announced: bool,
    },
}

#[derive(Debug, Clone)]
struct Objective {
    id: String,
    tasks: usize,
    state: State,
    /// Tactical agents that failed it, in order.
    avoid: Vec<AgentId>,
    replans: u32,
    notes: Vec<String>,
}

impl Objective {
    fn ended(&self) -> bool {
        matches!(self.state, State::Met(_) | State::GivenUp { .. })
    }
}

/// Every objective of one task under the strategic coordinator.
#[derive(Debug, Clone)]
pub struct Strategic {
    objectives: Vec<Objective>,
    policy: StrategicPolicy,
    finished: bool,
}

impl Strategic {
    /// Takes charge of a validated task's objectives.
    pub fn new(objectives: &[ObjectiveSpec], policy: StrategicPolicy) -> Self {
        Self {
            objectives: objectives
                .iter()
                .map(|o| Objective {
                    id: o.id.clone(),
                    tasks: o.tasks.len(),
                    state: State::Unassigned,
                    avoid: Vec::new(),
                    replans: 0,
                    notes: Vec::new(),
                })
                .collect(),
            policy,
            finished: false,
        }
    }

    /// The tactical agent currently in charge of an objective.
    pub fn assignee(&self, objective: &str) -> Option<&AgentId> {
        match &self.objectives.iter().find(|o| o.id == objective)?.state {
            State::Assigned(agent) => Some(agent),
            _ => None,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The steps now due: directives for objectives without a tactical
    /// agent, give-ups not yet announced, and the final report once every
    /// objective ended. Each step is returned once.
    #[expect(
        clippy::should_implement_trait,
        reason = "a batch of steps due now, not the next item of a sequence"
    )]
    pub fn next(&mut self) -> Vec<StrategicStep> {
        if self.finished {
            return Vec::new();
        }
        let mut steps = Vec::new();
        for objective in &mut self.objectives {
            match &mut objective.state {
                State::Unassigned => {
                    objective.state = State::Directed;
                    steps.push(StrategicStep::Direct {
                        objective: objective.id.clone(),
                        avoid: objective.avoid.clone(),
                    });
                }
                State::GivenUp {
                    reason, announced, ..
                } if !*announced => {
                    *announced = true;
                    steps.push(StrategicStep::GiveUp {
                        objective: objective.id.clone(),
                        reason: reason.clone(),
                    });
                }
                _ => {}
            }
        }
        if self.objectives.iter().all(Objective::ended) {
            self.finished = true;
            steps.push(StrategicStep::Finished(self.report()));
        }
        steps
    }

    /// The actor handed the objective to `agent` after a `Direct`.
    pub fn assigned(&mut self, objective: &str, agent: &AgentId) -> Applied {
        let Some(o) = self.position(objective) else {
            return Applied::Ignored("unknown objective");
        };
        let objective = &mut self.objectives[o];
        if objective.state != State::Directed {
            return Applied::Ignored("the objective is not waiting for a tactical agent");
        }
        if objective.avoid.contains(agent) {
            return Applied::Ignored("the tactical agent already failed this objective");
        }
        objective.state = State::Assigned(agent.clone());
        Applied::Changed
    }

    /// The tactical agent `from` reported its objective's summary. A
    /// summary of an objective not met counts as an escalation.
    pub fn reported(&mut self, from: &AgentId, summary: TacticalSummary) -> Applied {
        let o = match self.in_charge(&summary.objective, from) {
            Ok(o) => o,
            Err(reason) => return Applied::Ignored(reason),
        };
        if summary.completed == self.objectives[o].tasks && summary.failed == 0 {
            self.objectives[o].state = State::Met(summary);
        } else {
            let reason = summary.summary.clone();
            self.act(o, from, super::REPLAN, reason, Some(summary));
        }
        Applied::Changed
    }

    /// The tactical agent `from` escalated: the objective is re-planned on
    /// another tactical agent while re-plans are left (at once given up
    /// when the escalation is [`UNRECOVERABLE`]). A [`ROUTINE`] report
    /// needs no action.
    pub fn escalated(&mut self, from: &AgentId, escalation: Escalation) -> Applied {
        let o = match self.in_charge(&escalation.objective, from) {
            Ok(o) => o,
            Err(reason) => return Applied::Ignored(reason),
        };
        if escalation.escalation == ROUTINE {
            return Applied::Ignored("a routine report needs no action");
        }
        self.act(
            o,
            from,
            escalation.escalation,
            escalation.summary,
            Some(escalation.partial),
        );
        Applied::Changed
    }

    /// The tactical agent in charge of the objective is gone (its node
    /// left, or it missed its deadline): like an escalation from it, with
    /// nothing known of its progress.
    pub fn lost(&mut self, objective: &str, agent: &AgentId, reason: &str) -> Applied {
        let o = match self.in_charge(objective, agent) {
            Ok(o) => o,
            Err(reason) => return Applied::Ignored(reason),
        };
        let reason = format!("tactical agent '{agent}' was lost: {reason}");
        self.act(o, agent, super::REPLAN, reason, None);
        Applied::Changed
    }

    /// No tactical agent outside the directive's `avoid` can take the
    /// objective: it is given up.
    pub fn unplaceable(&mut self, objective: &str, reason: &str) -> Applied {
        let Some(o) = self.position(objective) else {
            return Applied::Ignored("unknown objective");
        };
        if self.objectives[o].state != State::Directed {
            return Applied::Ignored("the objective is not waiting for a tactical agent");
        }
        self.give_up(
            o,
            format!("no tactical agent could take it: {reason}"),
            None,
        );
        Applied::Changed
    }

    fn position(&self, objective: &str) -> Option<usize> {
        self.objectives.iter().position(|o| o.id == objective)
    }

    /// The objective's position, when `from` is the agent in charge of it
    /// (or [`NOT_IN_CHARGE`]).
    fn in_charge(&self, objective: &str, from: &AgentId) -> Result<usize, &'static str> {
        let o = self.position(objective).ok_or("unknown objective")?;
        match &self.objectives[o].state {
            State::Assigned(agent) if agent == from => Ok(o),
            State::Met(_) | State::GivenUp { .. } => Err("the objective already ended"),
            _ => Err(NOT_IN_CHARGE),
        }
    }

    /// Acts on a failure reported by (or of) the objective's agent `from`.
    fn act(
        &mut self,
        o: usize,
        from: &AgentId,
        escalation: u8,
        reason: String,
        partial: Option<TacticalSummary>,
    ) {
        let objective = &mut self.objectives[o];
        if escalation >= UNRECOVERABLE {
            let reason = format!("{reason} (re-planning cannot mend it)");
            return self.give_up(o, reason, partial);
        }
        if objective.replans < self.policy.replans {
            objective.replans += 1;
            objective.avoid.push(from.clone());
            objective.notes.push(format!(
                "objective '{}' re-planned away from tactical agent '{from}': {reason}",
                objective.id
            ));
            objective.state = State::Unassigned;
            return;
        }
        let reason = format!(
            "{reason} (after {})",
            count(objective.replans as usize, "re-plan")
        );
        self.give_up(o, reason, partial);
    }

    fn give_up(&mut self, o: usize, reason: String, partial: Option<TacticalSummary>) {
        let objective = &mut self.objectives[o];
        let summary = partial.unwrap_or_else(|| TacticalSummary {
            objective: objective.id.clone(),
            tasks: objective.tasks,
            completed: 0,
            failed: 0,
            outputs: Default::default(),
            attempts: 0,
            summary: format!("objective '{}' not met: {reason}", objective.id),
        });
        objective
            .notes
            .push(format!("objective '{}' given up: {reason}", objective.id));
        objective.state = State::GivenUp {
            reason,
            summary,
            announced: false,
        };
    }

    fn report(&self) -> FinalReport {
        let mut objectives = Vec::with_capacity(self.objectives.len());
        let (mut completed, mut failed) = (0, 0);
        for objective in &self.objectives {
            match &objective.state {
                State::Met(summary) => {
                    completed += 1;
                    objectives.push(summary.clone());
                }
                State::GivenUp { summary, .. } => {
                    failed += 1;
                    objectives.push(summary.clone());
                }
                _ => {}
            }
        }
        let replans: usize = self.objectives.iter().map(|o| o.replans as usize).sum();
        let outcome = if failed == 0 {
            Outcome::Succeeded
        } else if completed == 0 {
            Outcome::Failed
        } else {
            Outcome::Partial
        };
        let mut headline = format!(
            "{completed} of {} met",
            count(objectives.len(), "objective")
        );
        if replans > 0 {
            headline.push_str(&format!(" after {}", count(replans, "re-plan")));
        }
        let mut notes = vec![headline];
        notes.extend(self.objectives.iter().flat_map(|o| o.notes.iter().cloned()));
        FinalReport {
            strategic_summary: StrategicSummary {
                objectives,
                completed,
                failed,
                replans,
            },
            assessment: Assessment { outcome, notes },
        }
    }
}

#[cfg(test)]
mod tests;
