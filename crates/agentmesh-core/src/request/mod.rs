//! Natural-language requests: a task file that gives `request:` (prose)
//! instead of `tasks:` with any pattern but `reactive` is decomposed into
//! a DAG of subtasks, run like a hand-written one, and post-processed.
//!
//! ```text
//!  request ─▶ memory (similar past request?) ──reused──┐
//!               │ no                                  │
//!               ▼                                     ▼
//!  provider under decomposition_schema ─invalid─▶ builtin::decompose
//!               │ valid                               │
//!               ▼                                     ▼
//!          Decomposition::task_file ─▶ the task-file validator ─▶ run
//!                                                               │
//!   aggregate ◀─ all subtasks completed ◀─────────────────────────┘
//!      │
//!   quality score < threshold and rounds left? ─yes─▶ refinement round:
//!      │ no                          new tasks by the model or the rule
//!      ▼                             (refine), validated, appended, run
//!   aggregation summary? ─yes─▶ the model's summary (extractive without)
//!      │
//!      ▼
//!   result
//! ```
//!
//! Everything here is pure: the provider is the runtime's, reached through
//! the JSON schema and the domain check this module builds
//! ([`decomposition_schema`], [`Decomposition::task_file`]); the built-in
//! decomposer ([`builtin`]), the aggregation strategies and the quality
//! rules ([`post`]) and the lexical similarity of the coordination memory
//! ([`memory`]) are plain functions.

pub mod builtin;
pub mod memory;
pub mod post;
pub mod refine;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

use crate::TaskId;
use crate::task::file::{Pattern, Strategy, SubtaskSpec, TaskFile};
use crate::task::message::{MAX_QUOTED, clip};

pub use self::post::{Aggregation, Assessment, TaskQuality};
pub use self::refine::{Refinement, Review};

/// The quality score below which a refinement round runs, as the guide
/// has it.
pub const DEFAULT_QUALITY_THRESHOLD: f64 = 0.7;
/// Refinement rounds after the first run: one, as the issue bounds it.
pub const DEFAULT_MAX_ROUNDS: u32 = 1;
/// The hard cap on `max_rounds`: each round is a full run of subtasks.
pub const MAX_ROUNDS_CAP: u32 = 3;
/// Subtasks one decomposition may have unless the node says otherwise.
pub const DEFAULT_MAX_SUBTASKS: usize = 16;
/// Longest request, in bytes: it goes into a prompt whole.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Tokens a model's decomposition may take: room for `max_subtasks`
/// tasks written out with indentation, as models do (every string is
/// bounded by the schema: about 250 tokens a task), so a small model that
/// rambles stops early instead of using the whole time budget.
pub fn decomposition_max_tokens(max_subtasks: usize) -> u32 {
    let per_task = 256u32;
    per_task
        .saturating_mul(u32::try_from(max_subtasks).unwrap_or(u32::MAX))
        .saturating_add(64)
        .min(2048)
}

/// Longest description of one planned task kept in the record.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// One task of a decomposition, with the guide's fields: the kind of
/// specialist, what it does, the capability it needs, which earlier tasks'
/// outputs it reads, what it produces and what it waits for.
///
/// The task file gives each subtask exactly one capability, so the
/// guide's "required capabilities" is the one `capability` a worker must
/// offer to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedTask {
    pub id: String,
    /// The kind of specialist (`calculator`, `text analyst`).
    pub specialist: String,
    pub description: String,
    pub capability: String,
    /// The tool's input; may hold `{{id.field}}` references to the
    /// outputs of tasks in `inputs`.
    #[serde(default = "empty_object")]
    pub input: Value,
    /// Earlier tasks whose outputs this one reads; each is also a
    /// dependency.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// The output fields this task produces, for the tasks after it.
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// In a refinement round: the planned task this one redoes, whose
    /// output this one's replaces when it scores higher (see [`refine`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// A request cut into tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decomposition {
    pub tasks: Vec<PlannedTask>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Why a request file or a decomposition was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("request: {0}")]
    Invalid(String),
    /// The decomposition is not a DAG this cluster can run; the text is
    /// the task-file validator's, which a model can act on.
    #[error("{0}")]
    Decomposition(String),
    /// The built-in decomposer placed no part of the request.
    #[error(
        "request: the built-in decomposer found no part of '{request}' it can run with the \
         capabilities on offer ({available}); configure a model (--llm-base-url) or write tasks"
    )]
    NothingPlaced { request: String, available: String },
}

impl Decomposition {
    /// The subtasks of the task file: each planned task's `inputs` join
    /// its dependencies, as a reference needs its task to be one.
    pub fn subtasks(&self) -> Vec<SubtaskSpec> {
        self.tasks
            .iter()
            .map(|t| {
                let mut depends_on = t.depends_on.clone();
                for input in &t.inputs {
                    if !depends_on.contains(input) {
                        depends_on.push(input.clone());
                    }
                }
                SubtaskSpec {
                    id: t.id.clone(),
                    capability: t.capability.clone(),
                    input: t.input.clone(),
                    depends_on,
                    timeout_ms: None,
                }
            })
            .collect()
    }

    /// The task file this decomposition stands for: the request's file
    /// with `tasks` in place of the request, and a strategy the validator
    /// runs (`auto` and `hierarchical` become `parallel`: the DAG's own
    /// dependencies order it). It then goes through the same validator as
    /// a submitted file.
    pub fn task_file(&self, request_file: &TaskFile) -> TaskFile {
        TaskFile {
            timeout_ms: request_file.timeout_ms,
            ..TaskFile::of_tasks(
                request_file.name.clone(),
                runnable_strategy(request_file.strategy),
                self.subtasks(),
            )
        }
    }

    /// The decomposition with descriptions and specialists clipped, so a
    /// model's essay does not fill the record.
    pub fn bounded(mut self) -> Self {
        for t in &mut self.tasks {
            t.description = clip(&t.description, MAX_DESCRIPTION_CHARS);
            t.specialist = clip(&t.specialist, MAX_QUOTED);
            t.outputs.truncate(16);
        }
        self
    }
}

/// The strategy a generated task file runs with.
pub fn runnable_strategy(hint: Strategy) -> Strategy {
    match hint {
        Strategy::Sequential => Strategy::Sequential,
        Strategy::Parallel | Strategy::Hierarchical | Strategy::Auto => Strategy::Parallel,
    }
}

/// Whether `file` is a natural-language request for the decomposer: a
/// `request` with any pattern but `reactive` (which answers it on the
/// fast path instead).
pub fn is_request(file: &TaskFile) -> bool {
    file.request.is_some() && file.pattern != Pattern::Reactive
}

/// Checks what only a request file holds, before any provider is asked:
/// the request is there and bounded, no `tasks` or `objectives` beside it,
/// a pattern that runs a flat DAG, the thresholds in range.
pub fn check_request_file(file: &TaskFile) -> Result<&str, RequestError> {
    let request = file.request.as_deref().unwrap_or_default();
    if request.trim().is_empty() {
        return Err(RequestError::Invalid("must not be empty".into()));
    }
    if request.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::Invalid(format!(
            "is {} bytes, over the limit of {MAX_REQUEST_BYTES}",
            request.len()
        )));
    }
    if !file.tasks.is_empty() || !file.objectives.is_empty() {
        return Err(RequestError::Invalid(
            "a request replaces tasks and objectives: give one or the other".into(),
        ));
    }
    if !matches!(file.pattern, Pattern::CoordinatorWorker | Pattern::Auto) {
        return Err(RequestError::Invalid(format!(
            "is decomposed into a coordinator_worker DAG; pattern {} is not (use \
             coordinator_worker or auto, or reactive for the fast path)",
            file.pattern
        )));
    }
    for (field, given) in [
        ("cache", file.cache.is_some()),
        ("threshold", file.threshold.is_some()),
        ("redundancy", file.redundancy.is_some()),
        ("consensus", file.consensus.is_some()),
    ] {
        if given {
            return Err(RequestError::Invalid(format!(
                "{field} does not apply to a decomposed request"
            )));
        }
    }
    if let Some(t) = file.quality_threshold
        && !(0.0..=1.0).contains(&t)
    {
        return Err(RequestError::Invalid(format!(
            "quality_threshold must be between 0 and 1, got {t}"
        )));
    }
    Ok(request)
}

/// The JSON schema a provider's decomposition must follow: the subtask of
/// the task-file schema (`docs/task.schema.json`, its id pattern and input
/// and `depends_on` descriptions) with the guide's fields added, the
/// capability an `enum` of what the live cluster offers, and the count
/// bounded by `max_subtasks`.
pub fn decomposition_schema(capabilities: &[String], max_subtasks: usize) -> Value {
    let task_schema: Value =
        serde_json::from_str(include_str!("../../../../docs/task.schema.json"))
            .unwrap_or(Value::Null);
    // The task file's id characters, with a short bound: a model fills a
    // string to its bound, and a plan's ids need not be long.
    let id = "^[A-Za-z0-9_-]{1,24}$";
    let subtask = &task_schema["$defs"]["subtask"]["properties"];
    let describe = |field: &str, fallback: &str| {
        subtask[field]["description"]
            .as_str()
            .unwrap_or(fallback)
            .to_owned()
    };
    let ids = |description: String| {
        json!({
            "type": "array",
            "items": { "type": "string", "pattern": id },
            // A task depends on at most every other one.
            "maxItems": max_subtasks.saturating_sub(1),
            "description": description,
        })
    };
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["tasks"],
        "properties": {
            "tasks": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_subtasks,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["id", "specialist", "description", "capability", "input", "depends_on"],
                    "properties": {
                        "id": { "type": "string", "pattern": id },
                        "specialist": { "type": "string", "description": "the kind of specialist agent", "maxLength": 32 },
                        "description": { "type": "string", "description": "what this task does", "maxLength": 80 },
                        "capability": { "enum": capabilities, "description": "the capability (tool) a worker needs" },
                        "input": input_schema(capabilities, describe("input", "the tool's input")),
                        "inputs": ids("ids of earlier tasks whose outputs this one reads".into()),
                        "outputs": { "type": "array", "items": { "type": "string", "maxLength": 24 }, "maxItems": 4, "description": "output fields this task produces" },
                        "depends_on": ids(describe("depends_on", "ids this task waits for")),
                    }
                }
            }
        }
    })
}

/// The input of a task: one of the closed, bounded shapes the offered
/// built-in tools take, or any object when a tool of the cluster's own is
/// offered (its shape is not known here). A schema-constrained decoder
/// cannot then ramble inside an open object until the token bound cuts the
/// answer short, which is what a small model does with a bare object.
fn input_schema(capabilities: &[String], description: String) -> Value {
    let mut shapes: Vec<Value> = Vec::new();
    for capability in capabilities {
        match builtin_input(capability) {
            Some(shape) => shapes.push(shape),
            None => return json!({ "type": "object", "description": description }),
        }
    }
    json!({ "anyOf": shapes, "description": description })
}

/// The input of a built-in tool, as a closed object with bounded fields;
/// `None` for any other capability.
pub fn builtin_input(capability: &str) -> Option<Value> {
    use crate::reactive::Extractor;
    let extractor = match capability {
        "math.eval" => Extractor::Expression,
        "text.word_count" => Extractor::Text,
        "json.query" => Extractor::JsonQuery,
        "http.get" => Extractor::Url,
        "sleep" => {
            return Some(json!({
                "type": "object",
                "properties": { "ms": { "type": "integer", "minimum": 0, "maximum": 600000 } },
                "required": ["ms"],
                "additionalProperties": false,
            }));
        }
        _ => return None,
    };
    Some(extractor.input_schema())
}

/// The prompt asking a model for a decomposition.
pub fn decomposition_prompt(request: &str, strategy: Strategy, capabilities: &[String]) -> String {
    let order = match strategy {
        Strategy::Sequential => "Run the tasks one after another: each depends on the one before.",
        Strategy::Parallel => "Let tasks that do not need each other run in parallel.",
        Strategy::Hierarchical => {
            "Group the work: a few independent parts, each a short chain of tasks."
        }
        Strategy::Auto => {
            "Choose the order: dependencies only where a task needs another's output."
        }
    };
    let described: Vec<String> = capabilities
        .iter()
        .map(|c| match builtin_input(c) {
            Some(shape) => format!("{c} (input fields: {})", shape["required"]),
            None => c.clone(),
        })
        .collect();
    format!(
        "Decompose the request into tasks for worker agents. Each task calls one capability \
         with a JSON input. Capabilities: {}. A task may use an earlier task's output with \
         a reference like {{{{count.words}}}} in its input, and must then list that task in \
         depends_on. {order} Answer with JSON only.\n\nRequest: {request}",
        described.join(", ")
    )
}

/// What the record keeps of a request: the prose, how it was decomposed
/// and by whom, and the post-processing (scores, rounds, result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestPlan {
    pub request: String,
    /// The strategy hint as given (`auto` included).
    pub strategy: Strategy,
    /// The provider whose decomposition runs: `builtin`, or a model's name.
    pub provider: String,
    /// Why the configured model's decomposition was not used, if one is
    /// configured and it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Why the provider's first answer was retried, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_because: Option<String>,
    /// Set when the decomposition came from the coordination memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused: Option<Reused>,
    /// The generated DAG with the guide's fields; its runnable form is the
    /// record's subtasks.
    pub decomposition: Decomposition,
    /// Parts of the request the built-in decomposer could not place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    pub aggregation: Aggregation,
    pub threshold: f64,
    pub max_rounds: u32,
    /// Refinement rounds run so far.
    #[serde(default)]
    pub rounds: u32,
    /// The quality score after each aggregation, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<f64>,
    /// How the score was reached (`rules`, or a provider's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged_by: Option<String>,
    /// Refinement subtasks, each to the planned task it replaces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refined: BTreeMap<String, String>,
    /// Each refinement round: who generated it, and its tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refinements: Vec<Refinement>,
    /// What the request waits for, off the coordinator's actor, before
    /// it can go on; durable, so a new leader asks again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting: Option<Awaiting>,
    /// `aggregation: summary`: who wrote the summary (`builtin`, the
    /// extractive one, or a model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summarized_by: Option<String>,
    /// Why a model's summary was not used, when one was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_fallback: Option<String>,
    /// The aggregated result: after the last round, or so far while a
    /// round or a summary is awaited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// The step a request waits for once all its subtasks completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Awaiting {
    /// The tasks of refinement round `round`.
    Refinement { round: u32 },
    /// The summary of the results.
    Summary,
}

/// The longest summary kept, in bytes.
pub const MAX_SUMMARY_BYTES: usize = 2000;

/// A decomposition taken from the coordination memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reused {
    /// The task whose decomposition this is.
    pub from_task: TaskId,
    pub similarity: f64,
    /// `lexical` or `embedding`.
    pub by: String,
}

/// Node-level knobs of requests (node flags, see `docs/requests.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOptions {
    pub quality_threshold: f64,
    pub max_rounds: u32,
    pub max_subtasks: usize,
    pub memory_size: usize,
    pub memory_similarity: f64,
}

impl Default for RequestOptions {
    fn default() -> Self {
        Self {
            quality_threshold: DEFAULT_QUALITY_THRESHOLD,
            max_rounds: DEFAULT_MAX_ROUNDS,
            max_subtasks: DEFAULT_MAX_SUBTASKS,
            memory_size: memory::DEFAULT_MEMORY_SIZE,
            memory_similarity: memory::DEFAULT_SIMILARITY,
        }
    }
}

impl RequestPlan {
    /// A plan for `file`'s request decomposed as `decomposition` by
    /// `provider`, with `options` and the file's own overrides.
    pub fn new(
        file: &TaskFile,
        decomposition: Decomposition,
        provider: impl Into<String>,
        options: &RequestOptions,
    ) -> Self {
        Self {
            request: file.request.clone().unwrap_or_default(),
            strategy: file.strategy,
            provider: provider.into(),
            fallback: None,
            retried_because: None,
            reused: None,
            decomposition,
            skipped: Vec::new(),
            aggregation: file.aggregation.unwrap_or_default(),
            threshold: file.quality_threshold.unwrap_or(options.quality_threshold),
            max_rounds: options.max_rounds.min(MAX_ROUNDS_CAP),
            rounds: 0,
            scores: Vec::new(),
            judged_by: None,
            refined: BTreeMap::new(),
            refinements: Vec::new(),
            awaiting: None,
            summarized_by: None,
            summary_fallback: None,
            result: None,
        }
    }
}

#[cfg(test)]
mod tests;
