//! The task file as users write it (JSON or YAML), described by
//! `docs/task.schema.json`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A task file. Unknown fields are refused so a typo never silently changes
/// what runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    pub name: String,
    #[serde(default)]
    pub pattern: Pattern,
    #[serde(default)]
    pub strategy: Strategy,
    /// The subtasks of every pattern but `hierarchical`, which lists them
    /// under `objectives` instead (and leaves this empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<SubtaskSpec>,
    /// `hierarchical`: what the strategic level hands to tactical
    /// coordinators, one objective each, with the operational tasks that
    /// reach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objectives: Vec<ObjectiveSpec>,
    /// Time limit of the whole task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `peer_consensus`: how many peers run each subtask (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy: Option<u32>,
    /// `peer_consensus`: how the peers agree (`voting`,
    /// `reputation_weighted`, `quality_based` or `hybrid`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<String>,
    /// The request in prose: with `reactive`, answered by a keyword-routed
    /// tool (see `core::reactive`); with any other pattern, decomposed into
    /// `tasks` at submit (see `core::request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// `reactive`: whether the answer may come from, and goes into, the
    /// coordinator's response cache (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// `reactive`: the similarity at or above which a cached answer is
    /// used, in `[0, 1]` (default 0.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// A decomposed request: how the outputs are combined into the result
    /// (`merge`, the default, `concatenate`, `vote` or `summary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<crate::request::Aggregation>,
    /// A decomposed request: the quality score below which one refinement
    /// round runs, in `[0, 1]` (default: the node's, 0.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_threshold: Option<f64>,
}

impl TaskFile {
    /// A `coordinator_worker` file of `tasks` with `strategy` and nothing
    /// else: what a generated plan is validated as.
    pub fn of_tasks(name: impl Into<String>, strategy: Strategy, tasks: Vec<SubtaskSpec>) -> Self {
        Self {
            name: name.into(),
            pattern: Pattern::CoordinatorWorker,
            strategy,
            tasks,
            objectives: Vec::new(),
            timeout_ms: None,
            redundancy: None,
            consensus: None,
            request: None,
            cache: None,
            threshold: None,
            aggregation: None,
            quality_threshold: None,
        }
    }

    /// The pattern-specific fields this file sets (see
    /// `PatternRules::fields`).
    pub fn pattern_fields(&self) -> Vec<&'static str> {
        [
            ("objectives", !self.objectives.is_empty()),
            ("redundancy", self.redundancy.is_some()),
            ("consensus", self.consensus.is_some()),
            ("request", self.request.is_some()),
            ("cache", self.cache.is_some()),
            ("threshold", self.threshold.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, given)| given.then_some(field))
        .collect()
    }
}

/// One entry of `tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubtaskSpec {
    pub id: String,
    pub capability: String,
    #[serde(default = "empty_object")]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// One entry of `objectives`: a goal one tactical coordinator owns, reached
/// by a DAG of operational tasks. Ids, `depends_on` and `{{id.field}}`
/// references are scoped to the objective, so two objectives may both have
/// a task `survey` and neither can read the other's outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveSpec {
    pub id: String,
    /// What the objective is for, in words, carried into its reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub tasks: Vec<SubtaskSpec>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// How the cluster runs the task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    #[default]
    CoordinatorWorker,
    PeerConsensus,
    Hierarchical,
    Workflow,
    Reactive,
    Auto,
}

impl Pattern {
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::CoordinatorWorker => "coordinator_worker",
            Pattern::PeerConsensus => "peer_consensus",
            Pattern::Hierarchical => "hierarchical",
            Pattern::Workflow => "workflow",
            Pattern::Reactive => "reactive",
            Pattern::Auto => "auto",
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How subtasks are ordered: `sequential` chains every entry to the one
/// before it; `parallel` runs the DAG given by `depends_on`. `auto` is a
/// request's hint only: the decomposer picks the order (see
/// `core::request`). With pattern
/// `hierarchical` the strategy orders the tasks within each objective.
///
/// `hierarchical` is part of the format but refused at validation: levels
/// are a pattern (`pattern: hierarchical` with `objectives`), not an order
/// of one list of tasks, and a synonym would give one thing two spellings
/// and let `strategy: hierarchical` contradict `pattern: peer_consensus`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Sequential,
    #[default]
    Parallel,
    Hierarchical,
    Auto,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Sequential => "sequential",
            Strategy::Parallel => "parallel",
            Strategy::Hierarchical => "hierarchical",
            Strategy::Auto => "auto",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
