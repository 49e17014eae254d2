//! `hierarchical`: the task is a plan of objectives, each a DAG of
//! operational tasks. The coordinator schedules one subtask, the plan, on
//! a strategic-level agent; the levels below run it (`core::hierarchy`).

use std::collections::HashMap;

use super::PatternRules;
use crate::task::file::{ObjectiveSpec, Pattern, SubtaskSpec, TaskFile};
use crate::task::limits::TaskLimits;
use crate::task::record::STRATEGIC_PLAN;
use crate::task::validate::{Dag, TaskFileError, invalid_id, valid_id};
use crate::{Membership, Role};

#[derive(Debug)]
pub struct Hierarchical;

impl PatternRules for Hierarchical {
    fn pattern(&self) -> Pattern {
        Pattern::Hierarchical
    }

    fn fields(&self) -> &'static [&'static str] {
        &["objectives"]
    }

    /// Operational tasks run on operational-level agents.
    fn runner(&self) -> Role {
        Role::Level
    }

    fn runner_name(&self) -> &'static str {
        "operational-level agent"
    }

    fn check_shape(&self, file: &mut TaskFile, limits: &TaskLimits) -> Result<(), TaskFileError> {
        check_objective_counts(file, limits)
    }

    fn check_tasks(&self, file: &mut TaskFile, dag: &Dag<'_>) -> Result<(), TaskFileError> {
        check_objectives(&mut file.objectives, dag)
    }

    fn check_cluster(&self, membership: &Membership) -> Result<(), TaskFileError> {
        if membership.offers_as(Role::Level, STRATEGIC_PLAN) {
            return Ok(());
        }
        Err(TaskFileError::Unsupported {
            field: "pattern".into(),
            message: "a hierarchical task needs a strategic-level agent \
                      (agentmesh node --role level --level strategic), and none is live"
                .into(),
        })
    }

    /// One subtask for the coordinator: the plan, run by a strategic-level
    /// agent over the task's objectives, whose output is the final report.
    fn subtasks(&self, file: &TaskFile) -> Vec<SubtaskSpec> {
        vec![SubtaskSpec {
            id: "plan".into(),
            capability: STRATEGIC_PLAN.into(),
            input: serde_json::json!({ "objectives": file.objectives }),
            depends_on: Vec::new(),
            timeout_ms: None,
        }]
    }

    /// The plan carries the objectives as written; their references are
    /// resolved by the tactical level, within each objective.
    fn input_as_written(&self) -> bool {
        true
    }
}

/// `hierarchical`: `objectives` is given and within bounds, `tasks` is not
/// used, and the operational tasks of all objectives together stay within
/// `max_subtasks`.
fn check_objective_counts(file: &TaskFile, limits: &TaskLimits) -> Result<(), TaskFileError> {
    if !file.tasks.is_empty() {
        return Err(TaskFileError::invalid(
            "tasks",
            "must be empty with pattern hierarchical (list the operational tasks under objectives[].tasks)",
        ));
    }
    if file.objectives.is_empty() {
        return Err(TaskFileError::invalid(
            "objectives",
            "must list at least one objective with pattern hierarchical",
        ));
    }
    if file.objectives.len() > limits.max_objectives {
        return Err(TaskFileError::invalid(
            "objectives",
            format!(
                "lists {} objectives, over the limit of {}",
                file.objectives.len(),
                limits.max_objectives
            ),
        ));
    }
    let total: usize = file.objectives.iter().map(|o| o.tasks.len()).sum();
    if total > limits.max_subtasks {
        return Err(TaskFileError::invalid(
            "objectives",
            format!(
                "list {total} operational tasks in all, over the limit of {}",
                limits.max_subtasks
            ),
        ));
    }
    Ok(())
}

/// Objective ids, then each objective's tasks with the checks of a flat
/// task; ids and references are scoped to their objective.
fn check_objectives(objectives: &mut [ObjectiveSpec], flat: &Dag<'_>) -> Result<(), TaskFileError> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(objectives.len());
    for (o, objective) in objectives.iter().enumerate() {
        let field = || format!("objectives[{o}].id");
        if !valid_id(&objective.id) {
            return Err(invalid_id(field(), &objective.id));
        }
        if let Some(first) = index.insert(objective.id.as_str(), o) {
            return Err(TaskFileError::invalid(
                field(),
                format!(
                    "duplicate id '{}' (first used by objectives[{first}])",
                    objective.id
                ),
            ));
        }
    }
    // Which objectives hold each task id, to explain a reference that
    // reaches across objectives.
    let mut owners: HashMap<String, Vec<String>> = HashMap::new();
    for objective in objectives.iter() {
        for task in &objective.tasks {
            owners
                .entry(task.id.clone())
                .or_default()
                .push(objective.id.clone());
        }
    }
    for (o, objective) in objectives.iter_mut().enumerate() {
        let field = format!("objectives[{o}].tasks");
        if objective.tasks.is_empty() {
            return Err(TaskFileError::invalid(field, "must list at least one task"));
        }
        let own = objective.id.as_str();
        let elsewhere = |id: &str| {
            let other = owners.get(id)?.iter().find(|other| *other != own)?;
            Some(format!(
                "references stay within their objective; '{id}' is a task of objective '{other}'"
            ))
        };
        let dag = Dag {
            field: &field,
            elsewhere: &elsewhere,
            ..*flat
        };
        dag.check(&mut objective.tasks).map_err(|e| match e {
            TaskFileError::Cycle(ids) => TaskFileError::invalid(
                field.as_str(),
                format!(
                    "dependency cycle: {}",
                    crate::task::validate::describe_cycle(&ids)
                ),
            ),
            other => other,
        })?;
    }
    Ok(())
}
