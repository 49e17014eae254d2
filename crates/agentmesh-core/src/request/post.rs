//! After the subtasks of a request complete: the guide's aggregation of
//! their outputs, a quality score of the combined result, and the
//! decision to run one refinement round.
//!
//! # Quality rules
//!
//! With no model to judge it, each task's output is scored by a rule of
//! its capability, in `[0, 1]`:
//!
//! | capability        | 1 when                                   | else |
//! |-------------------|------------------------------------------|------|
//! | `math.eval`       | `value` is a number                      | 0    |
//! | `text.word_count` | the text had a real word (`top_words`)   | 0    |
//! | `json.query`      | the path matched something (`count > 0`) | 0    |
//! | `http.get`        | `status` is 2xx                          | 0    |
//! | anything else     | the output is not null or empty          | 0    |
//!
//! The request's score is the mean over its tasks (a refined task counts
//! with its better attempt), times the share of the request's clauses the
//! decomposer placed: a request half of which was skipped scores at most
//! 0.5.
//!
//! # Refinement
//!
//! Below the threshold, and while rounds are left (`max_rounds`, one by
//! default), the request waits for a refinement round ([`super::refine`]):
//! new tasks, generated from this review of what ran, appended to the DAG
//! and run; the result is then aggregated again from each planned task's
//! better attempt and the round's added tasks.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::RequestPlan;
use super::refine::{Review, Reviewed};
use crate::task::file::SubtaskSpec;
use crate::task::message::clip;
use crate::task::record::SubtaskRecord;

/// How the outputs of a request's tasks become its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// One object: each task's id to its output.
    #[default]
    Merge,
    /// One array of the outputs, in task order.
    Concatenate,
    /// The output most tasks agree on, with the count.
    Vote,
    /// A text summary: by a model where the runtime asks one, else the
    /// extractive summary here (one line per task: what it did, what it
    /// found).
    Summary,
}

/// The score of one task's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskQuality {
    pub id: String,
    pub score: f64,
}

/// What the completed subtasks of a request amount to.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The aggregated result.
    pub result: Value,
    pub score: f64,
    /// Below the threshold with a round left: a refinement round is due.
    pub refine: bool,
}

/// The built-in rule score of `output` from `capability` (table above).
pub fn rule_score(capability: &str, output: &Value) -> f64 {
    let ok = match capability {
        "math.eval" => output.get("value").is_some_and(Value::is_number),
        "text.word_count" => output
            .get("top_words")
            .and_then(Value::as_array)
            .is_some_and(|w| !w.is_empty()),
        "json.query" => output
            .get("count")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 0),
        "http.get" => output
            .get("status")
            .and_then(Value::as_u64)
            .is_some_and(|s| (200..300).contains(&s)),
        _ => !is_empty(output),
    };
    if ok { 1.0 } else { 0.0 }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Combines `(id, description, output)` triples by `aggregation`.
pub fn aggregate(aggregation: Aggregation, outputs: &[(String, String, Value)]) -> Value {
    match aggregation {
        Aggregation::Merge => Value::Object(
            outputs
                .iter()
                .map(|(id, _, v)| (id.clone(), v.clone()))
                .collect::<Map<_, _>>(),
        ),
        Aggregation::Concatenate => {
            Value::Array(outputs.iter().map(|(_, _, v)| v.clone()).collect())
        }
        Aggregation::Vote => {
            // Compact JSON is the identity of an answer; ties go to the
            // earliest task.
            let mut counts: Vec<(String, &Value, usize)> = Vec::new();
            for (_, _, v) in outputs {
                let key = v.to_string();
                match counts.iter_mut().find(|(k, _, _)| *k == key) {
                    Some(entry) => entry.2 += 1,
                    None => counts.push((key, v, 1)),
                }
            }
            let best = counts
                .iter()
                .fold(None::<&(String, &Value, usize)>, |best, c| match best {
                    Some(b) if b.2 >= c.2 => Some(b),
                    _ => Some(c),
                });
            match best {
                Some((_, v, n)) => json!({ "answer": v, "votes": n, "of": outputs.len() }),
                None => Value::Null,
            }
        }
        Aggregation::Summary => json!({ "summary": extractive_summary(outputs) }),
    }
}

/// One line per task: its description and its output, each clipped.
pub fn extractive_summary(outputs: &[(String, String, Value)]) -> String {
    outputs
        .iter()
        .map(|(id, description, v)| {
            let what = if description.is_empty() {
                id.as_str()
            } else {
                description.as_str()
            };
            format!("{}: {}", clip(what, 120), clip(&v.to_string(), 200))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each planned task with its better attempt: `(id, capability, output,
/// score)`, in plan order. A refined attempt replaces the first when it
/// scores higher.
fn best_attempts<'a>(
    subtasks: &'a [SubtaskRecord],
    plan: &'a RequestPlan,
) -> Vec<(&'a str, &'a str, Value, f64)> {
    let by_id: HashMap<&str, &SubtaskRecord> =
        subtasks.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut best: Vec<(&str, &str, Value, f64)> = plan
        .decomposition
        .tasks
        .iter()
        .filter_map(|t| by_id.get(t.id.as_str()))
        .map(|s| {
            let output = s.output.clone().unwrap_or(Value::Null);
            let score = rule_score(&s.capability, &output);
            (s.id.as_str(), s.capability.as_str(), output, score)
        })
        .collect();
    for s in subtasks {
        let Some(original) = plan.refined.get(&s.id) else {
            continue;
        };
        let output = s.output.clone().unwrap_or(Value::Null);
        let score = rule_score(&s.capability, &output);
        if let Some(slot) = best.iter_mut().find(|b| b.0 == original.as_str())
            && score > slot.3
        {
            slot.2 = output;
            slot.3 = score;
        }
    }
    best
}

/// The score of a request: the mean task score times the share of
/// clauses placed.
pub fn request_score(task_scores: &[f64], skipped: usize) -> f64 {
    if task_scores.is_empty() {
        return 0.0;
    }
    let mean = task_scores.iter().sum::<f64>() / task_scores.len() as f64;
    let placed = task_scores.len() as f64 / (task_scores.len() + skipped) as f64;
    (mean * placed).clamp(0.0, 1.0)
}

/// `(id, description, output)` of each planned task's better attempt,
/// in plan order: what is aggregated, and what a summary is written from.
pub fn outputs(subtasks: &[SubtaskRecord], plan: &RequestPlan) -> Vec<(String, String, Value)> {
    outputs_of(best_attempts(subtasks, plan), plan)
}

fn outputs_of(
    best: Vec<(&str, &str, Value, f64)>,
    plan: &RequestPlan,
) -> Vec<(String, String, Value)> {
    let descriptions: HashMap<&str, &str> = plan
        .decomposition
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), t.description.as_str()))
        .collect();
    best.into_iter()
        .map(|(id, _, v, _)| {
            let description = descriptions.get(id).copied().unwrap_or_default();
            (id.to_owned(), description.to_owned(), v)
        })
        .collect()
}

/// Aggregates the completed subtasks of `plan`, scores the result and
/// says whether a refinement round is due.
pub fn assess(subtasks: &[SubtaskRecord], plan: &RequestPlan) -> Assessment {
    let best = best_attempts(subtasks, plan);
    let scores: Vec<f64> = best.iter().map(|b| b.3).collect();
    let score = request_score(&scores, plan.skipped.len());
    let result = aggregate(plan.aggregation, &outputs_of(best, plan));
    let refine = score < plan.threshold && plan.rounds < plan.max_rounds;
    Assessment {
        result,
        score,
        refine,
    }
}

/// What the generator of the next round is shown: each planned task with
/// its better attempt and score, and every subtask as it ran.
pub fn review(subtasks: &[SubtaskRecord], plan: &RequestPlan, name: &str) -> Review {
    let best = best_attempts(subtasks, plan);
    let scores: Vec<f64> = best.iter().map(|b| b.3).collect();
    let tasks = best
        .iter()
        .map(|(id, capability, output, score)| {
            let planned = plan.decomposition.tasks.iter().find(|t| t.id == *id);
            Reviewed {
                id: (*id).to_owned(),
                capability: (*capability).to_owned(),
                description: planned.map(|t| t.description.clone()).unwrap_or_default(),
                input: planned.map(|t| t.input.clone()).unwrap_or(Value::Null),
                output: output.clone(),
                score: *score,
            }
        })
        .collect();
    Review {
        round: plan.rounds + 1,
        request: plan.request.clone(),
        strategy: plan.strategy,
        score: request_score(&scores, plan.skipped.len()),
        threshold: plan.threshold,
        tasks,
        ran: subtasks
            .iter()
            .map(|s| SubtaskSpec {
                id: s.id.clone(),
                capability: s.capability.clone(),
                input: s.input.clone(),
                depends_on: s.depends_on.clone(),
                timeout_ms: s.timeout_ms,
            })
            .collect(),
        name: name.to_owned(),
    }
}
