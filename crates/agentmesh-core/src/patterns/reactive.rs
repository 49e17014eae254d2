//! `reactive`: the task is one request in prose, answered on the fast path
//! of `core::reactive`. At submit the node routes the request with its
//! routing table ([`route_with`]; the built-in one unless the node was
//! given `--routing-table`) to one tool, with its input read out of the
//! request, or asks its provider when the keywords cannot; the
//! coordinator answers it from its response cache or schedules that one
//! call on a worker, and its output is the answer.
//!
//! Validation checks the request and the cache options only: which tool
//! answers depends on the node's table and provider, so routing (and the
//! refusal of a request nothing can place, [`unroutable`]) is the
//! runtime's.

use super::PatternRules;
use crate::Role;
use crate::reactive::{self, DEFAULT_THRESHOLD, ReactiveLimits, Routed, RoutingTable, ToolChoice};
use crate::task::file::{Pattern, SubtaskSpec, TaskFile};
use crate::task::limits::TaskLimits;
use crate::task::message::{MAX_QUOTED, clip};
use crate::task::validate::{Dag, TaskFileError};

/// The id of a reactive task's one subtask.
pub const ANSWER: &str = "answer";

#[derive(Debug)]
pub struct Reactive;

impl PatternRules for Reactive {
    fn pattern(&self) -> Pattern {
        Pattern::Reactive
    }

    fn fields(&self) -> &'static [&'static str] {
        &["request", "cache", "threshold"]
    }

    fn runner(&self) -> Role {
        Role::Worker
    }

    fn runner_name(&self) -> &'static str {
        "worker"
    }

    /// A request and no tasks; `cache` and `threshold` filled in.
    fn check_shape(&self, file: &mut TaskFile, _limits: &TaskLimits) -> Result<(), TaskFileError> {
        if !file.tasks.is_empty() {
            return Err(TaskFileError::invalid(
                "tasks",
                "a reactive task gives a request, not tasks",
            ));
        }
        let Some(request) = &file.request else {
            return Err(TaskFileError::invalid(
                "request",
                "is required with pattern reactive",
            ));
        };
        reactive::route::check_request(request, &ReactiveLimits::default())
            .map_err(|e| TaskFileError::invalid("request", e.to_string()))?;
        file.cache.get_or_insert(true);
        let threshold = *file.threshold.get_or_insert(DEFAULT_THRESHOLD);
        if !(0.0..=1.0).contains(&threshold) {
            return Err(TaskFileError::invalid(
                "threshold",
                format!("must be between 0 and 1, got {threshold}"),
            ));
        }
        Ok(())
    }

    /// Nothing to check: routing is the node's (see the module doc).
    fn check_tasks(&self, _file: &mut TaskFile, _dag: &Dag<'_>) -> Result<(), TaskFileError> {
        Ok(())
    }

    /// One subtask: the tool the built-in table routes to, with the
    /// extracted input (none when it routes nowhere); the node replaces it
    /// with its own routing (`TaskRecord::route_reactive`).
    fn subtasks(&self, file: &TaskFile) -> Vec<SubtaskSpec> {
        choose(file)
            .map(|choice| {
                vec![SubtaskSpec {
                    id: ANSWER.into(),
                    capability: choice.tool,
                    input: choice.input,
                    depends_on: Vec::new(),
                    timeout_ms: None,
                }]
            })
            .unwrap_or_default()
    }

    /// The input is read out of the user's prose: a `{{…}}` in it is text,
    /// not a reference.
    fn input_as_written(&self) -> bool {
        true
    }
}

/// The tool the built-in table routes the file's request to.
pub fn choose(file: &TaskFile) -> Result<ToolChoice, TaskFileError> {
    let routed = route_with(file, &RoutingTable::builtin(), &ReactiveLimits::default())?;
    routed.tool.clone().ok_or_else(|| {
        unroutable(
            file,
            &routed,
            "no provider fallback is configured to answer it",
        )
    })
}

/// Classifies the file's request and picks a tool with `table`.
pub fn route_with(
    file: &TaskFile,
    table: &RoutingTable,
    limits: &ReactiveLimits,
) -> Result<Routed, TaskFileError> {
    let request = file.request.as_deref().unwrap_or_default();
    reactive::route(request, table, limits)
        .map_err(|e| TaskFileError::invalid("request", e.to_string()))
}

/// The refusal of a request no tool of the table fits, saying how it was
/// classified and `why` nothing else answered it.
pub fn unroutable(file: &TaskFile, routed: &Routed, why: &str) -> TaskFileError {
    let request = file.request.as_deref().unwrap_or_default();
    TaskFileError::Unsupported {
        field: "request".into(),
        message: format!(
            "no tool of the routing table fits '{}' (classified as {}), and {why}",
            clip(request, MAX_QUOTED),
            routed
                .classification
                .kind()
                .map_or("unplaced", |k| k.as_str())
        ),
    }
}

/// The cache options of a validated reactive file: whether to use the
/// cache, and the threshold.
pub fn cache_options(file: &TaskFile) -> (bool, f64) {
    (
        file.cache.unwrap_or(true),
        file.threshold.unwrap_or(DEFAULT_THRESHOLD),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::task::{TaskLimits, parse_and_validate};

    fn check(document: &str) -> Result<crate::task::TaskFile, crate::task::TaskFileError> {
        parse_and_validate(
            document,
            &TaskLimits::default(),
            &|c| c != "http.get",
            &|| vec!["math.eval".into()],
        )
    }

    #[test]
    fn a_reactive_request_becomes_one_keyword_routed_subtask() {
        let file = check("name: r\npattern: reactive\nrequest: what is 2 + 3 * 4?\n").unwrap();
        assert_eq!((file.cache, file.threshold), (Some(true), Some(0.8)));
        let record = crate::task::TaskRecord::new(crate::TaskId::new("t"), file, 0);
        assert_eq!(record.subtasks.len(), 1);
        assert_eq!(record.subtasks[0].capability, "math.eval");
        assert_eq!(record.subtasks[0].input, json!({"expr": "2 + 3 * 4"}));
    }

    #[test]
    fn a_cached_answer_completes_the_record_without_an_attempt() {
        use crate::reactive::AnswerPath;
        let file = check("name: r\npattern: reactive\nrequest: what is 2 + 3 * 4?\n").unwrap();
        let mut record = crate::task::TaskRecord::new(crate::TaskId::new("t"), file, 0);
        let guard = record.reactive_guard().unwrap();
        assert!(
            guard.contains("math.eval") && guard.contains("2 + 3 * 4"),
            "{guard}"
        );
        record.answer_from_cache(json!({"value": 14}), 0.9, crate::TaskId::new("s"), 5);
        assert_eq!(record.status, crate::task::Status::Completed);
        assert_eq!(record.result(), Some(json!({"value": 14})));
        assert_eq!(record.subtasks[0].attempts, 0);
        assert!(record.subtasks[0].worker.is_none());
        let reactive = record.reactive.as_ref().unwrap();
        assert_eq!(reactive.answered_by, AnswerPath::Cache);
        assert_eq!(reactive.source.as_ref().unwrap().as_str(), "s");
        assert_eq!(reactive.similarity, Some(0.9));
    }

    #[test]
    fn the_shipped_example_validates() {
        check(include_str!("../../../../examples/reactive-request.yaml")).unwrap();
    }

    #[test]
    fn refusals_name_the_field() {
        let err = |doc: &str| check(doc).unwrap_err().to_string();
        assert_eq!(
            err("name: r\npattern: reactive\n"),
            "request: is required with pattern reactive"
        );
        assert!(
            err("name: r\npattern: reactive\nrequest: x\ntasks: [{id: a, capability: c}]\n")
                .starts_with("tasks: a reactive task gives a request")
        );
        assert!(
            err("name: r\npattern: reactive\nrequest: what is 1+1\nthreshold: 1.5\n")
                .starts_with("threshold: must be between 0 and 1")
        );
        let long = format!(
            "name: r\npattern: reactive\nrequest: '{}'\n",
            "a".repeat(5000)
        );
        assert!(err(&long).contains("max_request_bytes = 4096"));
        assert!(
            err("name: r\nrequest: what is 1+1\ntasks: [{id: a, capability: c}]\n")
                .starts_with("request: applies to pattern reactive only")
        );
        let unrouted = check("name: r\npattern: reactive\nrequest: bonjour\n").unwrap();
        let unrouted = super::choose(&unrouted).unwrap_err();
        assert!(unrouted.is_precondition());
        assert!(
            unrouted.to_string().contains("classified as unplaced"),
            "{unrouted}"
        );
    }
}
