//! The tactical level: one coordinator running one objective's operational
//! tasks.
//!
//! ```text
//!  waiting ──deps completed──▶ dispatched ──started──▶ running ──completed──▶ completed
//!     ▲                             │                     │
//!     └──── failed, budget left ────┴─────────────────────┘
//!              (avoid the agents that failed it)
//!                                   │ failed on 1 + retries_elsewhere agents,
//!                                   ▼ unplaceable, or input unresolvable
//!                                 failed ──▶ Escalate (the objective stops)
//! ```
//!
//! A task that fails is not retried on an agent that already failed it:
//! a second try on the same agent mostly meets the same fault, and the
//! level above can only help once the level below has tried the agents it
//! can reach. After an escalation the coordinator dispatches nothing more;
//! the strategic level decides whether the objective starts over under
//! another coordinator or is given up. Results of tasks still running are
//! recorded all the same, so the partial summary stays accurate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Applied, Direction, REPLAN, ROUTINE, UNRECOVERABLE, count};
use crate::AgentId;
use crate::task::TaskLimits;
use crate::task::file::{ObjectiveSpec, SubtaskSpec};
use crate::task::reference::{ResolveBudget, resolve};

/// How hard the tactical level tries before it escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TacticalPolicy {
    /// Further agents a failed task is tried on, each one that has not
    /// failed it yet; the task escalates once it failed on
    /// `1 + retries_elsewhere` distinct agents.
    pub retries_elsewhere: u32,
}

impl Default for TacticalPolicy {
    fn default() -> Self {
        Self {
            retries_elsewhere: 2,
        }
    }
}

/// What the tactical coordinator does next.
#[derive(Debug, Clone, PartialEq)]
pub enum TacticalStep {
    /// Send the task to an operational agent that offers `capability` and
    /// is not in `avoid` (the agents that already failed it); report back
    /// with `started`, then `completed` or `failed`, or `unplaceable` when
    /// no such agent exists.
    Dispatch {
        task_id: String,
        capability: String,
        /// The task's input with every reference resolved against the
        /// outputs of completed tasks of this objective.
        input: Value,
        timeout_ms: Option<u64>,
        avoid: Vec<AgentId>,
    },
    /// Report upward, asking the strategic level to act; nothing more is
    /// dispatched for this objective.
    Escalate(Escalation),
    /// Every task completed: report the summary upward.
    Done(TacticalSummary),
}

/// An upward report that asks the strategic level to act, as the tactical
/// actor sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    pub objective: String,
    /// The task that could not be completed.
    pub task_id: String,
    /// [`REPLAN`] or [`UNRECOVERABLE`].
    pub escalation: u8,
    /// One line on what went wrong.
    pub summary: String,
    /// What the objective had reached when it escalated; the objective's
    /// part of the final report when the strategic level gives it up.
    pub partial: TacticalSummary,
}

impl Escalation {
    /// The message's direction, for [`super::check_route`].
    pub fn direction(&self) -> Direction {
        Direction::Upward {
            escalation: self.escalation,
            summary: self.summary.clone(),
        }
    }
}

/// What one tactical coordinator reports about its objective: the
/// operational outputs and how they were reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TacticalSummary {
    pub objective: String,
    /// Operational tasks of the objective.
    pub tasks: usize,
    /// Tasks completed.
    pub completed: usize,
    /// Tasks given up at this level (failed on every agent allowed, not
    /// placeable, or unable to start). Tasks neither completed nor failed
    /// never ran to the end.
    pub failed: usize,
    /// Output of every completed task, by task id.
    pub outputs: BTreeMap<String, Value>,
    /// Dispatches made, first tries and retries alike.
    pub attempts: usize,
    /// One line for humans.
    pub summary: String,
}

impl TacticalSummary {
    /// Whether every task of the objective completed.
    pub fn met(&self) -> bool {
        self.completed == self.tasks
    }

    /// A routine report's direction, for [`super::check_route`].
    pub fn direction(&self) -> Direction {
        Direction::Upward {
            escalation: ROUTINE,
            summary: self.summary.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Not handed out: dependencies not completed yet, or back after a
    /// failure.
    Waiting,
    /// Handed to the actor; no agent has started it yet.
    Dispatched,
    Running(AgentId),
    Completed(Value),
    /// Given up at this level, with why.
    Failed(String),
}

#[derive(Debug, Clone)]
struct Task {
    spec: SubtaskSpec,
    /// Positions of the tasks this one depends on.
    deps: Vec<usize>,
    state: State,
    /// Distinct agents that failed it, in order.
    failed_on: Vec<AgentId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Escalated,
    Done,
}

/// One objective under one tactical coordinator.
#[derive(Debug, Clone)]
pub struct Tactical {
    objective: String,
    policy: TacticalPolicy,
    tasks: Vec<Task>,
    attempts: usize,
    phase: Phase,
    /// Set by an event, emitted by the next call of [`Tactical::next`].
    escalation: Option<(usize, u8, String)>,
}

impl Tactical {
    /// Takes charge of a validated objective (see
    /// [`crate::task::validate`]). A dependency on an id the objective
    /// does not have is dropped; the task then fails to resolve its input
    /// or runs without the order, rather than waiting forever.
    pub fn new(objective: &ObjectiveSpec, policy: TacticalPolicy) -> Self {
        let position = |id: &str| objective.tasks.iter().position(|t| t.id == id);
        let tasks = objective
            .tasks
            .iter()
            .map(|spec| {
                let mut deps: Vec<usize> =
                    spec.depends_on.iter().filter_map(|d| position(d)).collect();
                deps.sort_unstable();
                deps.dedup();
                Task {
                    spec: spec.clone(),
                    deps,
                    state: State::Waiting,
                    failed_on: Vec::new(),
                }
            })
            .collect();
        Self {
            objective: objective.id.clone(),
            policy,
            tasks,
            attempts: 0,
            phase: Phase::Running,
            escalation: None,
        }
    }

    pub fn objective(&self) -> &str {
        &self.objective
    }

    /// Tasks handed out and not ended, with the agent running each (none
    /// while no agent has started it): what to cancel when the objective
    /// is taken away.
    pub fn in_flight(&self) -> Vec<(&str, Option<&AgentId>)> {
        self.tasks
            .iter()
            .filter_map(|t| match &t.state {
                State::Dispatched => Some((t.spec.id.as_str(), None)),
                State::Running(agent) => Some((t.spec.id.as_str(), Some(agent))),
                _ => None,
            })
            .collect()
    }

    /// Whether the coordinator is done with the objective, met or escalated.
    pub fn is_over(&self) -> bool {
        self.phase != Phase::Running
    }

    /// The steps now due: the tasks that became ready, an escalation, or
    /// the final summary. Each task is dispatched once per attempt; calling
    /// again without an event in between returns nothing new.
    #[expect(
        clippy::should_implement_trait,
        reason = "a batch of steps due now, not the next item of a sequence"
    )]
    pub fn next(&mut self) -> Vec<TacticalStep> {
        if self.phase != Phase::Running {
            return Vec::new();
        }
        if let Some(step) = self.escalate() {
            return vec![step];
        }
        let ready: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| self.is_ready(i))
            .collect();
        // Resolve every input before dispatching any, so a broken
        // reference escalates without sending work that is then abandoned.
        let mut inputs = Vec::with_capacity(ready.len());
        // The objective was validated by the coordinator against its
        // limits; the level node resolves within the default ones.
        let budget = ResolveBudget::from(&TaskLimits::default());
        for &i in &ready {
            let output_of = |id: &str| self.output(id);
            match resolve(&self.tasks[i].spec.input, &output_of, budget) {
                Ok(input) => inputs.push(input),
                Err(e) => {
                    let reason = format!("task '{}' cannot start: {e}", self.tasks[i].spec.id);
                    self.give_up(i, UNRECOVERABLE, reason);
                    return self.escalate().into_iter().collect();
                }
            }
        }
        let steps: Vec<TacticalStep> = ready
            .into_iter()
            .zip(inputs)
            .map(|(i, input)| {
                let task = &mut self.tasks[i];
                task.state = State::Dispatched;
                TacticalStep::Dispatch {
                    task_id: task.spec.id.clone(),
                    capability: task.spec.capability.clone(),
                    input,
                    timeout_ms: task.spec.timeout_ms,
                    avoid: task.failed_on.clone(),
                }
            })
            .collect();
        self.attempts += steps.len();
        if !steps.is_empty() {
            return steps;
        }
        if self
            .tasks
            .iter()
            .all(|t| matches!(t.state, State::Completed(_)))
        {
            self.phase = Phase::Done;
            return vec![TacticalStep::Done(self.summary())];
        }
        if self.in_flight().is_empty() {
            // Nothing runs and nothing can start: only an objective that
            // skipped validation (a dependency cycle) gets here.
            let stuck: Vec<String> = self
                .tasks
                .iter()
                .filter(|t| t.state == State::Waiting)
                .map(|t| format!("'{}'", t.spec.id))
                .collect();
            let first = self
                .tasks
                .iter()
                .position(|t| t.state == State::Waiting)
                .unwrap_or(0);
            let reason = format!(
                "tasks {} can never start: their dependencies cannot complete",
                stuck.join(", ")
            );
            self.give_up(first, UNRECOVERABLE, reason);
            return self.escalate().into_iter().collect();
        }
        Vec::new()
    }

    /// An operational agent started a dispatched task.
    pub fn started(&mut self, task_id: &str, agent: &AgentId) -> Applied {
        let Some(i) = self.position(task_id) else {
            return Applied::Ignored("unknown task");
        };
        let task = &mut self.tasks[i];
        match &task.state {
            State::Dispatched if task.failed_on.contains(agent) => {
                Applied::Ignored("the agent already failed this task")
            }
            State::Dispatched => {
                task.state = State::Running(agent.clone());
                Applied::Changed
            }
            State::Running(running) if running == agent => Applied::Ignored("already started"),
            _ => Applied::Ignored("the task is not waiting for an agent"),
        }
    }

    /// A task completed on `agent` with `output`.
    pub fn completed(&mut self, task_id: &str, agent: &AgentId, output: Value) -> Applied {
        let Some(i) = self.position(task_id) else {
            return Applied::Ignored("unknown task");
        };
        if let Err(reason) = self.accepts(i, agent) {
            return Applied::Ignored(reason);
        }
        self.tasks[i].state = State::Completed(output);
        Applied::Changed
    }

    /// A task failed on `agent`. It goes back to waiting, to be dispatched
    /// to another agent, until it failed on `1 + retries_elsewhere`
    /// distinct agents; then the objective escalates.
    pub fn failed(&mut self, task_id: &str, agent: &AgentId, error: impl Into<String>) -> Applied {
        let Some(i) = self.position(task_id) else {
            return Applied::Ignored("unknown task");
        };
        if let Err(reason) = self.accepts(i, agent) {
            return Applied::Ignored(reason);
        }
        let error = error.into();
        let task = &mut self.tasks[i];
        task.failed_on.push(agent.clone());
        let budget = 1 + self.policy.retries_elsewhere as usize;
        if task.failed_on.len() < budget {
            task.state = State::Waiting;
            return Applied::Changed;
        }
        let agents: Vec<&str> = task.failed_on.iter().map(AgentId::as_str).collect();
        let reason = format!(
            "task '{}' failed on {} ({}); last error: {error}",
            task.spec.id,
            count(agents.len(), "agent"),
            agents.join(", ")
        );
        self.give_up(i, REPLAN, reason);
        Applied::Changed
    }

    /// No operational agent outside the dispatch's `avoid` can run the
    /// task; the objective escalates, since another coordinator may reach
    /// other agents.
    pub fn unplaceable(&mut self, task_id: &str, reason: &str) -> Applied {
        let Some(i) = self.position(task_id) else {
            return Applied::Ignored("unknown task");
        };
        if self.tasks[i].state != State::Dispatched {
            return Applied::Ignored("the task is not waiting for an agent");
        }
        let reason = format!("task '{task_id}' could not be placed: {reason}");
        self.give_up(i, REPLAN, reason);
        Applied::Changed
    }

    /// Where the objective stands, for a report at any time.
    pub fn summary(&self) -> TacticalSummary {
        let outputs: BTreeMap<String, Value> = self
            .tasks
            .iter()
            .filter_map(|t| match &t.state {
                State::Completed(output) => Some((t.spec.id.clone(), output.clone())),
                _ => None,
            })
            .collect();
        let failed: Vec<&Task> = self
            .tasks
            .iter()
            .filter(|t| matches!(t.state, State::Failed(_)))
            .collect();
        let (tasks, completed) = (self.tasks.len(), outputs.len());
        let summary = if completed == tasks {
            format!(
                "objective '{}' met: {} completed in {}",
                self.objective,
                count(tasks, "task"),
                count(self.attempts, "attempt")
            )
        } else {
            let mut line = format!(
                "objective '{}' not met: {completed} of {} completed, {} failed",
                self.objective,
                count(tasks, "task"),
                failed.len()
            );
            if let Some(State::Failed(reason)) = failed.first().map(|t| &t.state) {
                line.push_str("; ");
                line.push_str(reason);
            }
            line
        };
        TacticalSummary {
            objective: self.objective.clone(),
            tasks,
            completed,
            failed: failed.len(),
            outputs,
            attempts: self.attempts,
            summary,
        }
    }

    fn position(&self, task_id: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.spec.id == task_id)
    }

    fn output(&self, task_id: &str) -> Option<&Value> {
        let i = self.position(task_id)?;
        match &self.tasks[i].state {
            State::Completed(output) => Some(output),
            _ => None,
        }
    }

    fn is_ready(&self, i: usize) -> bool {
        let task = &self.tasks[i];
        task.state == State::Waiting
            && task
                .deps
                .iter()
                .all(|&d| matches!(self.tasks[d].state, State::Completed(_)))
    }

    /// Whether a result of task `i` from `agent` counts: from the agent
    /// running it, or from any agent that has not failed it while no agent
    /// has reported a start.
    fn accepts(&self, i: usize, agent: &AgentId) -> Result<(), &'static str> {
        let task = &self.tasks[i];
        match &task.state {
            State::Dispatched if task.failed_on.contains(agent) => {
                Err("the agent already failed this task")
            }
            State::Dispatched => Ok(()),
            State::Running(running) if running == agent => Ok(()),
            State::Running(_) => Err("another agent runs this task"),
            State::Completed(_) => Err("the task already completed"),
            State::Failed(_) => Err("the task was given up"),
            State::Waiting => Err("the task is not dispatched"),
        }
    }

    /// Gives up task `i`; the first task given up is what the objective
    /// escalates with.
    fn give_up(&mut self, i: usize, escalation: u8, reason: String) {
        self.tasks[i].state = State::Failed(reason.clone());
        if self.escalation.is_none() && self.phase == Phase::Running {
            self.escalation = Some((i, escalation, reason));
        }
    }

    fn escalate(&mut self) -> Option<TacticalStep> {
        let (i, escalation, summary) = self.escalation.take()?;
        self.phase = Phase::Escalated;
        Some(TacticalStep::Escalate(Escalation {
            objective: self.objective.clone(),
            task_id: self.tasks[i].spec.id.clone(),
            escalation,
            summary,
            partial: self.summary(),
        }))
    }
}

#[cfg(test)]
mod tests;
