//! Turns a submitted document into a validated task, or into an error that
//! names the offending field.
//!
//! Every check runs before the cluster is touched, so a bad request is
//! refused at the edge and disturbs nothing already running.

use std::collections::{HashMap, HashSet};

use thiserror::Error;

use super::file::{Pattern, Strategy, TaskFile};
use super::limits::TaskLimits;
use super::reference::{ReferenceError, visit_references};
use crate::Role;

/// Length limit of task names and subtask ids.
pub const MAX_NAME_LEN: usize = 128;

/// Why a task file was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TaskFileError {
    #[error("task file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("task file is not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    /// A field holds a value the format allows but the cluster does not.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// No live worker offers a capability; depends on the cluster's state,
    /// not on the document.
    #[error("{field}: no live {runner} offers capability '{capability}' (available: {available})")]
    CapabilityUnavailable {
        field: String,
        capability: String,
        /// `worker`, or `peer` for a `peer_consensus` task.
        runner: &'static str,
        available: String,
    },
    /// The document is valid but asks for something this cluster does not run.
    #[error("{field}: {message}")]
    Unsupported { field: String, message: String },
}

impl TaskFileError {
    /// Whether the error depends on the cluster's state rather than on the
    /// document itself (gRPC `FAILED_PRECONDITION` rather than
    /// `INVALID_ARGUMENT`).
    pub fn is_precondition(&self) -> bool {
        matches!(
            self,
            TaskFileError::CapabilityUnavailable { .. } | TaskFileError::Unsupported { .. }
        )
    }

    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        TaskFileError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses JSON or YAML (JSON when the first non-blank character is `{`).
pub fn parse(document: &str, limits: &TaskLimits) -> Result<TaskFile, TaskFileError> {
    if document.len() > limits.max_document_bytes {
        return Err(TaskFileError::TooLarge {
            size: document.len(),
            limit: limits.max_document_bytes,
        });
    }
    if document.trim_start().starts_with('{') {
        serde_json::from_str(document).map_err(|e| TaskFileError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })
    } else {
        serde_yaml::from_str(document).map_err(|e| TaskFileError::Syntax {
            format: "YAML",
            message: e.to_string(),
        })
    }
}

/// Parses and validates in one step; see [`validate`].
pub fn parse_and_validate(
    document: &str,
    limits: &TaskLimits,
    offers: &dyn Fn(&str) -> bool,
    available: &dyn Fn() -> Vec<String>,
) -> Result<TaskFile, TaskFileError> {
    validate(parse(document, limits)?, limits, offers, available)
}

/// Checks a parsed task file and returns it normalised: for the
/// `sequential` strategy every entry depends on the entry before it.
///
/// `offers` tells whether a live worker offers a capability; `available`
/// lists what is offered, for the error message.
pub fn validate(
    mut file: TaskFile,
    limits: &TaskLimits,
    offers: &dyn Fn(&str) -> bool,
    available: &dyn Fn() -> Vec<String>,
) -> Result<TaskFile, TaskFileError> {
    check_header(&file, limits)?;
    check_collaboration(&mut file, limits)?;
    check_ids(&file)?;
    if file.strategy == Strategy::Sequential {
        for i in 1..file.tasks.len() {
            let previous = file.tasks[i - 1].id.clone();
            if !file.tasks[i].depends_on.contains(&previous) {
                file.tasks[i].depends_on.push(previous);
            }
        }
    }
    let index = check_ids(&file)?;
    let deps = check_dependencies(&file, &index)?;
    let order = topological_order(&file, &deps)?;
    check_depth(&file, &deps, &order, limits)?;
    let ancestors = ancestors(&deps, &order);
    for (i, task) in file.tasks.iter().enumerate() {
        check_entry(&file, i, &index, &ancestors[i], limits)?;
        if !offers(&task.capability) {
            return Err(TaskFileError::CapabilityUnavailable {
                field: format!("tasks[{i}].capability"),
                capability: task.capability.clone(),
                runner: runner_of(file.pattern).as_str(),
                available: list_or_none(available()),
            });
        }
    }
    Ok(file)
}

fn list_or_none(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// The role of the agents that run the subtasks of a task with `pattern`:
/// `offers` in [`validate`] must answer for them.
pub fn runner_of(pattern: Pattern) -> Role {
    match pattern {
        Pattern::PeerConsensus => Role::Peer,
        _ => Role::Worker,
    }
}

/// Peers per subtask when a `peer_consensus` task does not say.
pub const DEFAULT_REDUNDANCY: u32 = 3;
/// The consensus algorithms a task may ask for.
pub const CONSENSUS_ALGORITHMS: [&str; 4] =
    ["voting", "reputation_weighted", "quality_based", "hybrid"];

/// `redundancy` and `consensus` belong to `peer_consensus` tasks; fills in
/// their defaults there.
fn check_collaboration(file: &mut TaskFile, limits: &TaskLimits) -> Result<(), TaskFileError> {
    if file.pattern != Pattern::PeerConsensus {
        for (field, given) in [
            ("redundancy", file.redundancy.is_some()),
            ("consensus", file.consensus.is_some()),
        ] {
            if given {
                return Err(TaskFileError::invalid(
                    field,
                    format!(
                        "applies to pattern peer_consensus only (this task's pattern is {})",
                        file.pattern
                    ),
                ));
            }
        }
        return Ok(());
    }
    let redundancy = *file.redundancy.get_or_insert(DEFAULT_REDUNDANCY);
    if redundancy == 0 || redundancy > limits.max_redundancy {
        return Err(TaskFileError::invalid(
            "redundancy",
            format!(
                "must be between 1 and {} peers, got {redundancy}",
                limits.max_redundancy
            ),
        ));
    }
    let algorithm = file.consensus.get_or_insert_with(|| "hybrid".to_owned());
    if !CONSENSUS_ALGORITHMS.contains(&algorithm.as_str()) {
        return Err(TaskFileError::invalid(
            "consensus",
            format!(
                "unknown algorithm '{algorithm}' (known: {})",
                CONSENSUS_ALGORITHMS.join(", ")
            ),
        ));
    }
    Ok(())
}

fn check_header(file: &TaskFile, limits: &TaskLimits) -> Result<(), TaskFileError> {
    if file.name.trim().is_empty() {
        return Err(TaskFileError::invalid("name", "must not be empty"));
    }
    if file.name.len() > MAX_NAME_LEN {
        return Err(TaskFileError::invalid(
            "name",
            format!(
                "is {} bytes, over the limit of {MAX_NAME_LEN}",
                file.name.len()
            ),
        ));
    }
    if !matches!(
        file.pattern,
        Pattern::CoordinatorWorker | Pattern::PeerConsensus
    ) {
        return Err(TaskFileError::Unsupported {
            field: "pattern".into(),
            message: format!(
                "pattern '{}' is not available in this cluster yet (supported: coordinator_worker, peer_consensus)",
                file.pattern
            ),
        });
    }
    if file.strategy == Strategy::Hierarchical {
        return Err(TaskFileError::Unsupported {
            field: "strategy".into(),
            message: "strategy 'hierarchical' is not available in this cluster yet (supported: sequential, parallel)".into(),
        });
    }
    if file.tasks.is_empty() {
        return Err(TaskFileError::invalid(
            "tasks",
            "must list at least one task",
        ));
    }
    if file.tasks.len() > limits.max_subtasks {
        return Err(TaskFileError::invalid(
            "tasks",
            format!(
                "lists {} tasks, over the limit of {}",
                file.tasks.len(),
                limits.max_subtasks
            ),
        ));
    }
    check_timeout("timeout_ms", file.timeout_ms, limits)
}

fn check_timeout(
    field: &str,
    timeout: Option<u64>,
    limits: &TaskLimits,
) -> Result<(), TaskFileError> {
    match timeout {
        Some(0) => Err(TaskFileError::invalid(field, "must be greater than 0")),
        Some(ms) if ms > limits.max_timeout_ms => Err(TaskFileError::invalid(
            field,
            format!("{ms} ms is over the limit of {} ms", limits.max_timeout_ms),
        )),
        _ => Ok(()),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn check_ids(file: &TaskFile) -> Result<HashMap<&str, usize>, TaskFileError> {
    let mut index = HashMap::with_capacity(file.tasks.len());
    for (i, task) in file.tasks.iter().enumerate() {
        if !valid_id(&task.id) {
            return Err(TaskFileError::invalid(
                format!("tasks[{i}].id"),
                format!(
                    "'{}' is not a valid id (1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ -)",
                    task.id
                ),
            ));
        }
        if let Some(first) = index.insert(task.id.as_str(), i) {
            return Err(TaskFileError::invalid(
                format!("tasks[{i}].id"),
                format!("duplicate id '{}' (first used by tasks[{first}])", task.id),
            ));
        }
    }
    Ok(index)
}

fn check_dependencies(
    file: &TaskFile,
    index: &HashMap<&str, usize>,
) -> Result<Vec<Vec<usize>>, TaskFileError> {
    file.tasks
        .iter()
        .enumerate()
        .map(|(i, task)| {
            let mut deps = Vec::with_capacity(task.depends_on.len());
            for dep in &task.depends_on {
                let field = || format!("tasks[{i}].depends_on");
                let &d = index.get(dep.as_str()).ok_or_else(|| {
                    TaskFileError::invalid(field(), format!("unknown task id '{dep}'"))
                })?;
                if d == i {
                    return Err(TaskFileError::invalid(
                        field(),
                        format!("task '{dep}' depends on itself"),
                    ));
                }
                if !deps.contains(&d) {
                    deps.push(d);
                }
            }
            Ok(deps)
        })
        .collect()
}

/// Kahn's algorithm; on a cycle, reports one cycle by name.
fn topological_order(file: &TaskFile, deps: &[Vec<usize>]) -> Result<Vec<usize>, TaskFileError> {
    let n = deps.len();
    let mut indegree: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut next = 0;
    while next < order.len() {
        let i = order[next];
        next += 1;
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                order.push(j);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    let cycle = find_cycle(deps, &indegree);
    Err(TaskFileError::Cycle(
        cycle
            .into_iter()
            .map(|i| file.tasks[i].id.clone())
            .collect(),
    ))
}

/// Walks dependencies among the nodes Kahn's algorithm could not order
/// (every one of them has an unordered dependency) until a node repeats.
fn find_cycle(deps: &[Vec<usize>], indegree: &[usize]) -> Vec<usize> {
    let Some(start) = (0..deps.len()).find(|&i| indegree[i] > 0) else {
        return Vec::new();
    };
    let mut path = vec![start];
    let mut position = HashMap::from([(start, 0)]);
    let mut current = start;
    loop {
        let Some(&next) = deps[current].iter().find(|&&d| indegree[d] > 0) else {
            return path;
        };
        if let Some(&at) = position.get(&next) {
            // The walk follows "depends on" edges; reverse it so the message
            // reads in execution order (a -> b means b waits for a).
            let mut cycle: Vec<usize> = path[at..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return cycle;
        }
        position.insert(next, path.len());
        path.push(next);
        current = next;
    }
}

fn check_depth(
    file: &TaskFile,
    deps: &[Vec<usize>],
    order: &[usize],
    limits: &TaskLimits,
) -> Result<(), TaskFileError> {
    let mut depth = vec![1usize; deps.len()];
    for &i in order {
        depth[i] = 1 + deps[i].iter().map(|&d| depth[d]).max().unwrap_or(0);
        if depth[i] > limits.max_depth {
            return Err(TaskFileError::invalid(
                format!("tasks[{i}].depends_on"),
                format!(
                    "task '{}' ends a dependency chain of {} tasks, over the limit of {}",
                    file.tasks[i].id, depth[i], limits.max_depth
                ),
            ));
        }
    }
    Ok(())
}

/// The transitive dependencies of every task, whose outputs its references
/// may use.
fn ancestors(deps: &[Vec<usize>], order: &[usize]) -> Vec<HashSet<usize>> {
    let mut all: Vec<HashSet<usize>> = vec![HashSet::new(); deps.len()];
    for &i in order {
        let mut mine = HashSet::new();
        for &d in &deps[i] {
            mine.insert(d);
            mine.extend(all[d].iter().copied());
        }
        all[i] = mine;
    }
    all
}

fn check_entry(
    file: &TaskFile,
    i: usize,
    index: &HashMap<&str, usize>,
    ancestors: &HashSet<usize>,
    limits: &TaskLimits,
) -> Result<(), TaskFileError> {
    let task = &file.tasks[i];
    if task.capability.trim().is_empty() {
        return Err(TaskFileError::invalid(
            format!("tasks[{i}].capability"),
            "must not be empty",
        ));
    }
    check_timeout(&format!("tasks[{i}].timeout_ms"), task.timeout_ms, limits)?;
    let input_size = serde_json::to_vec(&task.input).map_or(0, |v| v.len());
    if input_size > limits.max_input_bytes {
        return Err(TaskFileError::invalid(
            format!("tasks[{i}].input"),
            format!(
                "is {input_size} bytes as JSON, over the limit of {}",
                limits.max_input_bytes
            ),
        ));
    }
    let mut first_error = None;
    visit_references(&task.input, &mut |path, refs| {
        if first_error.is_some() {
            return;
        }
        let field = if path.is_empty() {
            format!("tasks[{i}].input")
        } else {
            format!("tasks[{i}].input.{path}")
        };
        first_error = check_references(task.id.as_str(), refs, index, ancestors)
            .err()
            .map(|message| TaskFileError::invalid(field, message));
    });
    first_error.map_or(Ok(()), Err)
}

fn check_references(
    task: &str,
    refs: Result<Vec<super::reference::Reference>, ReferenceError>,
    index: &HashMap<&str, usize>,
    ancestors: &HashSet<usize>,
) -> Result<(), String> {
    for reference in refs.map_err(|e| e.to_string())? {
        match index.get(reference.task.as_str()) {
            None => {
                return Err(format!(
                    "reference {} names unknown task '{}'",
                    reference.display(),
                    reference.task
                ));
            }
            Some(d) if !ancestors.contains(d) => {
                return Err(format!(
                    "reference {} names task '{}', which is not a dependency of '{task}' (add it to depends_on)",
                    reference.display(),
                    reference.task
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
