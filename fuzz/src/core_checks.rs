//! The core fuzz targets: task-file parsing and validation, reference
//! resolution, `math.eval` and `json.query`. Each runs one input through
//! the code a node runs and asserts that the budgets held, not only that
//! nothing panicked: what is accepted is within its limits, and what is
//! refused for its size names the limit.
//!
//! Shared with `crates/agentmesh-core/tests/fuzz_regressions.rs`, which
//! includes this file, so a kept input replays through the same checks.
//! Keep it thin: it follows the core API as it changes.

use agentmesh_core::TaskId;
use agentmesh_core::builtin::json_query::{self, JsonQueryError, Limits};
use agentmesh_core::builtin::{expr, expr::ExprError};
use agentmesh_core::task::reference::{self, ReferenceError, ResolveBudget};
use agentmesh_core::task::validate::{self, MAX_NAME_LEN};
use agentmesh_core::task::{SubtaskSpec, TaskFileError, TaskLimits, TaskRecord};
use serde_json::Value;

/// Longest refusal a client is sent: an error message rides in gRPC
/// metadata, which clients commonly cap at 8 KiB.
pub const MAX_ERROR_BYTES: usize = 8 * 1024;

/// `TaskLimits` fields a refusal may name.
const TASK_LIMITS: &[&str] = &[
    "max_document_bytes",
    "max_subtasks",
    "max_objectives",
    "max_depth",
    "max_input_bytes",
    "max_timeout_ms",
    "max_redundancy",
    "max_nesting",
    "max_alias_expansion",
];

/// A task document as Submit handles it: `parse`, then `validate` with the
/// default `TaskLimits` and every capability offered (so validation runs
/// to the end); an accepted task becomes a record that must read back
/// from its JSON as it was written (the coordinator resumes from it).
pub fn task_file(data: &[u8]) {
    // The document arrives as a protobuf string, which is UTF-8.
    let Ok(document) = std::str::from_utf8(data) else {
        return;
    };
    let limits = TaskLimits::default();
    let outcome = validate::parse(document, &limits)
        .and_then(|file| validate::validate(file, &limits, &|_| true, &Vec::new));
    let file = match outcome {
        Ok(file) => file,
        Err(error) => return task_refusal(&error, &limits),
    };
    assert!(!file.name.is_empty() && file.name.len() <= MAX_NAME_LEN);
    let objectives = &file.objectives;
    assert!(
        objectives.len() <= limits.max_objectives,
        "objectives over max_objectives"
    );
    let specs: Vec<&SubtaskSpec> = file
        .tasks
        .iter()
        .chain(objectives.iter().flat_map(|o| &o.tasks))
        .collect();
    assert!(
        specs.len() <= limits.max_subtasks,
        "subtasks over max_subtasks"
    );
    for spec in &specs {
        let input = serde_json::to_vec(&spec.input).expect("an input serializes");
        assert!(
            input.len() <= limits.max_input_bytes,
            "input over max_input_bytes"
        );
        within_timeout(spec.timeout_ms, &limits);
    }
    within_timeout(file.timeout_ms, &limits);
    if let Some(redundancy) = file.redundancy {
        assert!(
            redundancy <= limits.max_redundancy,
            "redundancy over max_redundancy"
        );
    }
    let record = TaskRecord::new(TaskId::new("fuzz"), file, 0);
    let json = serde_json::to_vec(&record).expect("a record serializes");
    let back: TaskRecord = serde_json::from_slice(&json).expect("a record reads back");
    assert_eq!(
        serde_json::to_vec(&back).expect("a record serializes"),
        json,
        "a record reads back as it was written"
    );
}

fn within_timeout(timeout_ms: Option<u64>, limits: &TaskLimits) {
    if let Some(ms) = timeout_ms {
        assert!(
            ms > 0 && ms <= limits.max_timeout_ms,
            "timeout over max_timeout_ms"
        );
    }
}

fn task_refusal(error: &TaskFileError, limits: &TaskLimits) {
    let message = error.to_string();
    assert!(
        message.len() <= MAX_ERROR_BYTES,
        "refusal of {} bytes",
        message.len()
    );
    match error {
        TaskFileError::OverLimit { limit, max, .. } => {
            assert!(
                TASK_LIMITS.contains(limit),
                "refusal names unknown limit {limit}"
            );
            assert!(message.contains(limit) && message.contains(&max.to_string()));
        }
        TaskFileError::TooLarge { limit, .. } => {
            assert_eq!(*limit, limits.max_document_bytes);
        }
        _ => {}
    }
}

/// Reference resolution: the first line is a JSON object of subtask
/// outputs by id (a fixed one when it is not), the rest the input (JSON,
/// or else one string). Whatever validation finds malformed, resolution
/// refuses; what it accepts is within the default budget (`max_input_bytes`
/// of JSON, `max_input_references`), and a refusal over the budget names
/// the limit it crossed.
pub fn reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (outputs, input) = text.split_once('\n').unwrap_or(("", text));
    let outputs = match serde_json::from_str(outputs) {
        Ok(Value::Object(map)) => map,
        _ => default_outputs(),
    };
    let input = serde_json::from_str(input).unwrap_or_else(|_| Value::String(input.to_owned()));

    let (mut references, mut malformed) = (0usize, false);
    reference::visit_references(&input, &mut |_, found| match found {
        Ok(found) => references += found.len(),
        Err(_) => malformed = true,
    });
    let lookup = |task: &str| outputs.get(task);
    let budget = ResolveBudget::from(&TaskLimits::default());
    match reference::resolve(&input, &lookup, budget) {
        Ok(resolved) => {
            assert!(!malformed, "resolution accepted what validation refuses");
            assert!(
                references <= budget.max_references,
                "resolved {references} references, over the limit"
            );
            let size = resolved.to_string().len();
            assert!(
                size <= budget.max_input_bytes,
                "resolved to {size} bytes, over max_input_bytes"
            );
        }
        Err(
            ReferenceError::Unterminated(_)
            | ReferenceError::Empty(_)
            | ReferenceError::Malformed { .. },
        ) => assert!(malformed, "resolution refused what validation accepts"),
        Err(ReferenceError::TooLarge { limit, .. }) => {
            assert_eq!(limit, budget.max_input_bytes, "refused under another limit")
        }
        Err(ReferenceError::TooManyReferences { limit }) => {
            assert_eq!(limit, budget.max_references, "refused under another limit")
        }
        Err(ReferenceError::MissingOutput { .. } | ReferenceError::MissingField { .. }) => {}
    }
}

fn default_outputs() -> serde_json::Map<String, Value> {
    let outputs = serde_json::json!({
        "a": {"words": 4, "name": "fox", "list": [10, 20, {"x": "y"}]},
        "b": "text",
        "c": [1, 2.5, null, true],
    });
    match outputs {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

/// `math.eval`: a result is finite; an error names a position inside the
/// expression, and a refusal for size names the limit.
pub fn math_eval(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let too_long = source.len() > expr::MAX_EXPR_LEN;
    match expr::eval(source) {
        Ok(value) => {
            assert!(!too_long, "evaluated an expression over MAX_EXPR_LEN");
            assert!(value.is_finite(), "{value} is not finite");
        }
        Err(ExprError::TooLong { len, max }) => {
            assert!(too_long && len == source.len() && max == expr::MAX_EXPR_LEN);
        }
        Err(error) => {
            assert!(
                !too_long,
                "an expression over MAX_EXPR_LEN was parsed: {error}"
            );
            expr_error_in_source(&error, source);
        }
    }
}

fn expr_error_in_source(error: &ExprError, source: &str) {
    let text_at = |pos: usize, text: &str| {
        assert!(
            source.get(pos..).is_some_and(|rest| rest.starts_with(text)),
            "{error}: '{text}' is not at byte {pos}"
        );
    };
    match error {
        ExprError::TooDeep { max } => assert_eq!(*max, expr::MAX_NESTING),
        ExprError::UnexpectedChar { ch, pos } => text_at(*pos, ch.encode_utf8(&mut [0; 4])),
        ExprError::InvalidNumber { text, pos }
        | ExprError::UnexpectedToken { found: text, pos }
        | ExprError::UnknownFunction { name: text, pos }
        | ExprError::UnknownIdentifier { name: text, pos }
        | ExprError::MissingCall { name: text, pos }
        | ExprError::WrongArity {
            name: text, pos, ..
        } => text_at(*pos, text),
        ExprError::DivisionByZero { pos } | ExprError::NotFinite { pos } => {
            assert!(*pos < source.len(), "{error}: position out of the source");
        }
        _ => {}
    }
}

/// Limits far below the defaults, so the fuzzer reaches every one of them.
const TIGHT: Limits = Limits {
    max_path_len: 64,
    max_nesting: 6,
    max_matches: 16,
    max_output_bytes: 512,
    max_work: 4_000,
    max_regex_bytes: 64 * 1024,
};

/// `json.query`: the first line is the path, the rest the document (JSON,
/// or else RFC 9535's example document). Run within the default limits and
/// within tight ones: a result stays within the limits it ran under, and a
/// query that succeeds under tight limits gives the same under the
/// defaults (a limit only ever refuses).
pub fn json_query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, document) = text.split_once('\n').unwrap_or((text, ""));
    let document = serde_json::from_str(document).unwrap_or_else(|_| store());
    let tight = json_query::query_with(&document, path, &TIGHT);
    if let Ok(nodes) = &tight {
        within_query_limits(nodes, path, &TIGHT);
    }
    let default = json_query::query(&document, path);
    match &default {
        Ok(nodes) => within_query_limits(nodes, path, &Limits::default()),
        Err(error) => {
            assert!(tight.is_err(), "refused under the defaults only: {error}");
            if path.len() > json_query::MAX_PATH_LEN {
                assert!(matches!(error, JsonQueryError::TooLong { .. }));
            }
        }
    }
    if let (Ok(tight), Ok(default)) = (&tight, &default) {
        assert_eq!(tight, default, "limits changed the result");
    }
    if let Err(error) = &tight
        && path.len() > TIGHT.max_path_len
    {
        assert!(
            error.is_limit(),
            "a path over the limit was parsed: {error}"
        );
    }
}

fn within_query_limits(nodes: &[Value], path: &str, limits: &Limits) {
    assert!(
        path.len() <= limits.max_path_len,
        "a path over max_path_len ran"
    );
    assert!(nodes.len() <= limits.max_matches, "{} matches", nodes.len());
    let bytes: usize = nodes.iter().map(|v| v.to_string().len()).sum();
    assert!(bytes <= limits.max_output_bytes, "{bytes} bytes of output");
}

/// RFC 9535's example document (section 1.5).
fn store() -> Value {
    serde_json::json!({"store": {
        "book": [
            {"category": "reference", "author": "Nigel Rees",
             "title": "Sayings of the Century", "price": 8.95},
            {"category": "fiction", "author": "Evelyn Waugh",
             "title": "Sword of Honour", "price": 12.99},
            {"category": "fiction", "author": "Herman Melville",
             "title": "Moby Dick", "isbn": "0-553-21311-3", "price": 8.99},
            {"category": "fiction", "author": "J. R. R. Tolkien",
             "title": "The Lord of the Rings", "isbn": "0-395-19395-8",
             "price": 22.99}
        ],
        "bicycle": {"color": "red", "price": 399}
    }})
}
