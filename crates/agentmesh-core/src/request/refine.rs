//! A refinement round: when a request's combined result scores below its
//! threshold, a generator (the coordinator's model, or the built-in rule)
//! is shown what ran, with each task's output and score, and answers with
//! new tasks. They are placed in the round's namespace (`r1_…`), checked
//! against the tasks that ran, validated by the task-file validator like
//! any plan, appended to the DAG and run; the result is then aggregated
//! again.
//!
//! A new task either *replaces* a planned task (its output stands in for
//! that task's when it scores higher) or is *added* to the plan (its
//! output joins the aggregation and the score).
//!
//! The built-in generator, used without a model or when the model's answer
//! is invalid twice, runs every task that scored below the threshold again
//! with the same input, replacing it: a flaky tool (a fetch that answered
//! 503) gets a second chance. It cannot rewrite an input.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Decomposition, PlannedTask, decomposition_schema};
use crate::task::file::{Strategy, SubtaskSpec, TaskFile};
use crate::task::message::clip;
use crate::task::validate::MAX_NAME_LEN;

/// Longest output of one task shown to a generator, in bytes.
pub const MAX_SHOWN_OUTPUT: usize = 400;

/// One planned task as a refinement sees it: what it was asked and what
/// its best attempt gave.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reviewed {
    pub id: String,
    pub capability: String,
    pub description: String,
    pub input: Value,
    pub output: Value,
    pub score: f64,
}

/// What the generator of round `round` is told, and what its answer is
/// checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub round: u32,
    pub request: String,
    pub strategy: Strategy,
    /// The request's score after the last round, and the threshold it
    /// missed.
    pub score: f64,
    pub threshold: f64,
    /// The planned tasks, each with its best attempt.
    pub tasks: Vec<Reviewed>,
    /// Every subtask of the record as it ran, for the validator.
    pub ran: Vec<SubtaskSpec>,
    /// The record's task name, for the task file that is validated.
    pub name: String,
}

/// A refinement round as generated, kept in the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refinement {
    pub round: u32,
    /// `builtin`, or the model that wrote the round.
    pub provider: String,
    /// Why the model's round was not used, when one was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Why the model's first answer was retried, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_because: Option<String>,
    /// The round's tasks under the ids they run with; empty when the
    /// generator found nothing to do (the request then ends).
    pub tasks: Vec<PlannedTask>,
}

impl Refinement {
    /// The subtasks the round appends to the record.
    pub fn subtasks(&self) -> Vec<SubtaskSpec> {
        Decomposition {
            tasks: self.tasks.clone(),
        }
        .subtasks()
    }
}

impl Review {
    fn taken(&self) -> BTreeSet<&str> {
        self.ran.iter().map(|s| s.id.as_str()).collect()
    }

    fn weak(&self) -> impl Iterator<Item = &Reviewed> {
        self.tasks.iter().filter(|t| t.score < self.threshold)
    }
}

/// The id `local` runs under in round `round`: `r<round>_<local>`, made
/// unique among `taken` and kept within the id length limit.
pub fn round_id(round: u32, local: &str, taken: &BTreeSet<String>) -> String {
    let mut id = format!("r{round}_{local}");
    id.truncate(MAX_NAME_LEN - 8);
    let base = id.clone();
    let mut n = 2;
    while taken.contains(&id) {
        id = format!("{base}_{n}");
        n += 1;
    }
    id
}

/// The built-in round: each task below the threshold again, with the
/// input it had (references included: they name completed tasks).
pub fn builtin(review: &Review) -> Vec<PlannedTask> {
    let mut taken: BTreeSet<String> = review.taken().into_iter().map(str::to_owned).collect();
    let mut tasks = Vec::new();
    for weak in review.weak() {
        let Some(ran) = review.ran.iter().find(|s| s.id == weak.id) else {
            continue;
        };
        let id = round_id(review.round, &weak.id, &taken);
        taken.insert(id.clone());
        tasks.push(PlannedTask {
            id,
            specialist: "retry".into(),
            description: clip(&format!("again: {}", weak.description), 200),
            capability: ran.capability.clone(),
            input: ran.input.clone(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            depends_on: ran.depends_on.clone(),
            replaces: Some(weak.id.clone()),
        });
    }
    tasks
}

/// The JSON schema of a model's round: the decomposition's, with the
/// round's ids chosen from `n1`…`nK`, dependencies and inputs from those
/// and the tasks that ran, and an optional `replaces` naming a planned
/// task. Closed sets leave a small model no name to invent.
pub fn refinement_schema(capabilities: &[String], max_tasks: usize, review: &Review) -> Value {
    let mut schema = decomposition_schema(capabilities, max_tasks);
    let fresh = fresh_ids(max_tasks);
    let planned: Vec<&str> = review.tasks.iter().map(|t| t.id.as_str()).collect();
    let mut known: Vec<String> = review.ran.iter().map(|s| s.id.clone()).collect();
    known.extend(fresh.iter().cloned());
    let task = &mut schema["properties"]["tasks"]["items"]["properties"];
    task["id"] = json!({ "enum": fresh, "description": "a new id: n1, n2, ..." });
    task["replaces"] = json!({
        "enum": planned,
        "description": "the planned task whose output this task's replaces, if it redoes one",
    });
    for field in ["depends_on", "inputs"] {
        task[field]["items"] = json!({ "enum": known });
        task[field]["maxItems"] = json!(known.len().saturating_sub(1));
    }
    schema
}

/// The ids a model's round may give its tasks.
fn fresh_ids(max_tasks: usize) -> Vec<String> {
    (1..=max_tasks.max(1)).map(|n| format!("n{n}")).collect()
}

/// The prompt asking a model for round `review.round`.
pub fn refinement_prompt(review: &Review, capabilities: &[String]) -> String {
    let ran: Vec<String> = review
        .tasks
        .iter()
        .map(|t| {
            format!(
                "- {} ({}, input {}): output {} scored {:.2}",
                t.id,
                t.capability,
                clip(&t.input.to_string(), 200),
                clip(&t.output.to_string(), MAX_SHOWN_OUTPUT),
                t.score
            )
        })
        .collect();
    format!(
        "These tasks ran for the request, and the combined result scored {:.2}, below {:.2}:\n{}\n\n\
         Plan new tasks, named n1, n2 and so on, that fix the weak results. Each task calls one \
         capability of: {}. A task that redoes a planned task names it in replaces. A task may read the output of a task \
         that ran with a reference like {{{{id.field}}}} in its input, and must then list that \
         task in depends_on. Answer with JSON only.\n\nRequest: {}",
        review.score,
        review.threshold,
        ran.join("\n"),
        capabilities.join(", "),
        review.request
    )
}

/// A model's round, its ids placed in the round's namespace: a new id
/// becomes `r<round>_<id>`, and the dependencies, inputs and `{{id.…}}`
/// references that name a task of the round follow it (a name of the
/// round wins over a task that ran). A `replaces` must name a planned
/// task. The result still goes through the task-file validator
/// ([`refined_file`]).
pub fn place(answer: Decomposition, review: &Review) -> Result<Vec<PlannedTask>, String> {
    let mut taken: BTreeSet<String> = review.taken().into_iter().map(str::to_owned).collect();
    let mut renamed: Vec<(String, String)> = Vec::new();
    for task in &answer.tasks {
        if renamed.iter().any(|(local, _)| *local == task.id) {
            return Err(format!("task id '{}' is given twice", clip(&task.id, 40)));
        }
        let id = round_id(review.round, &task.id, &taken);
        taken.insert(id.clone());
        renamed.push((task.id.clone(), id));
    }
    let rename = |name: &str| {
        renamed
            .iter()
            .find(|(local, _)| local == name)
            .map_or_else(|| name.to_owned(), |(_, id)| id.clone())
    };
    answer
        .tasks
        .into_iter()
        .zip(&renamed)
        .map(|(mut task, (_, id))| {
            if let Some(replaced) = &task.replaces
                && !review.tasks.iter().any(|t| t.id == *replaced)
            {
                return Err(format!(
                    "task '{}' replaces '{}', which is not a planned task",
                    clip(&task.id, 40),
                    clip(replaced, 40)
                ));
            }
            task.id = id.clone();
            task.depends_on = task.depends_on.iter().map(|d| rename(d)).collect();
            task.inputs = task.inputs.iter().map(|d| rename(d)).collect();
            rename_references(&mut task.input, &renamed);
            Ok(task)
        })
        .collect()
}

/// Rewrites `{{local…}}` to `{{id…}}` in every string of `value`.
fn rename_references(value: &mut Value, renamed: &[(String, String)]) {
    match value {
        Value::String(s) if s.contains("{{") => {
            for (local, id) in renamed {
                for end in [".", "}}"] {
                    *s = s.replace(&format!("{{{{{local}{end}"), &format!("{{{{{id}{end}"));
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_references(v, renamed)),
        Value::Object(map) => map.values_mut().for_each(|v| rename_references(v, renamed)),
        _ => {}
    }
}

/// The task file the validator checks a round with: every subtask that
/// ran, then the round's.
pub fn refined_file(review: &Review, tasks: &[PlannedTask]) -> TaskFile {
    let mut all = review.ran.clone();
    all.extend(
        Decomposition {
            tasks: tasks.to_vec(),
        }
        .subtasks(),
    );
    TaskFile::of_tasks(review.name.clone(), Strategy::Parallel, all)
}

/// A validator error about [`refined_file`], with the task index turned
/// back into the round's own (`tasks[3]` is the round's `tasks[1]` after
/// two tasks that ran), so a model's retry reads about its answer.
pub fn round_error(error: &str, review: &Review) -> String {
    let Some(rest) = error.strip_prefix("tasks[") else {
        return error.to_owned();
    };
    let Some((index, tail)) = rest.split_once(']') else {
        return error.to_owned();
    };
    match index.parse::<usize>() {
        Ok(i) if i >= review.ran.len() => format!("tasks[{}]{tail}", i - review.ran.len()),
        _ => error.to_owned(),
    }
}

/// The prompt asking a model to summarize a request's results.
pub fn summary_prompt(request: &str, outputs: &[(String, String, Value)]) -> String {
    let lines: Vec<String> = outputs
        .iter()
        .map(|(id, description, output)| {
            let what = if description.is_empty() {
                id.as_str()
            } else {
                description.as_str()
            };
            format!(
                "- {}: {}",
                clip(what, 120),
                clip(&output.to_string(), MAX_SHOWN_OUTPUT)
            )
        })
        .collect();
    format!(
        "Agents ran these tasks for a request. Write the answer to the request from their \
         results in at most three sentences, in plain text.\n\nRequest: {request}\n\nResults:\n{}",
        lines.join("\n")
    )
}
