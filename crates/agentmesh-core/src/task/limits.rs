//! Bounds on what a task file may ask of the cluster.

use serde::{Deserialize, Serialize};

/// Every bound a submitted task is checked against; each is a knob of the
/// coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskLimits {
    /// Size of the task document in bytes.
    pub max_document_bytes: usize,
    /// Number of subtasks in one task; for a `hierarchical` task, of
    /// operational tasks over all its objectives.
    pub max_subtasks: usize,
    /// Objectives of one `hierarchical` task, each of which occupies a
    /// tactical coordinator while it runs.
    pub max_objectives: usize,
    /// Length of the longest dependency chain.
    pub max_depth: usize,
    /// Size of one subtask's input, serialized as JSON: as written, checked
    /// at submit, and once its `{{id.field}}` references are resolved,
    /// computed before the resolved input is built (a string splicing one
    /// output a thousand times is refused without being built).
    pub max_input_bytes: usize,
    /// `{{id.field}}` references in one subtask's input, every occurrence
    /// counted. Each costs a lookup when the subtask starts, on the
    /// coordinator's actor; checked at submit.
    pub max_input_references: usize,
    /// Upper bound of a task or subtask timeout.
    pub max_timeout_ms: u64,
    /// Peers one `peer_consensus` subtask may ask for.
    pub max_redundancy: u32,
    /// Mappings and sequences nested in one another, the document's own
    /// top level included, in either format. Checked while parsing, so a
    /// document of nothing but `[[[[…` is refused after that many levels
    /// rather than parsed in full.
    pub max_nesting: usize,
    /// Parser events (node starts, node ends and scalars) that YAML aliases
    /// may replay over the whole document. Checked while parsing, so an
    /// alias bomb is refused before it is expanded; the expanded text of
    /// the document's scalars is also held to four times
    /// `max_document_bytes`.
    pub max_alias_expansion: usize,
}

impl Default for TaskLimits {
    fn default() -> Self {
        Self {
            max_document_bytes: 1024 * 1024,
            max_subtasks: 1024,
            max_objectives: 32,
            max_depth: 64,
            max_input_bytes: 256 * 1024,
            // As many as a task may have subtasks: a fan-in that reads one
            // field of every other subtask fits.
            max_input_references: 1024,
            max_timeout_ms: 24 * 60 * 60 * 1000,
            max_redundancy: 9,
            // A task file is the top-level mapping, `tasks` or `objectives`,
            // and a subtask's mapping, a few levels above its input.
            max_nesting: 64,
            // About a hundred replayed events for each of the most subtasks
            // a task may have: room for inputs shared through anchors.
            max_alias_expansion: 100_000,
        }
    }
}
