//! Conversion between domain types and `agentmesh.v1` protobuf messages:
//! the only place in the runtime that knows both.
//!
//! JSON travels two ways: as text (`document`, `*_json`) and as the
//! well-known `google.protobuf.Struct`/`Value`, which grpcurl and generated
//! clients write and read without escaping JSON inside JSON. A structured
//! task becomes JSON text here ([`task_document`]) and is then parsed and
//! validated like any document; results become `Value`s here
//! ([`structured`]).

use std::time::Duration;

use agentmesh_core::breaker::Blame;
use agentmesh_core::scheduling::WorkerState;
use agentmesh_core::task::{Status, SubtaskRecord, TaskFileError, TaskLimits, TaskRecord};
use agentmesh_core::{AgentId, AgentRegistration, AttemptId, SubtaskId, TaskId};
use agentmesh_proto::prost_types::{self, value::Kind};
use agentmesh_proto::v1 as pb;
use prost::Message as _;
use serde_json::{Map, Number, Value, json};

use crate::tools::ToolError;

pub fn status(status: Status) -> pb::TaskStatus {
    match status {
        Status::Pending => pb::TaskStatus::Pending,
        Status::Running => pb::TaskStatus::Running,
        Status::Completed => pb::TaskStatus::Completed,
        Status::Failed => pb::TaskStatus::Failed,
        Status::Cancelled => pb::TaskStatus::Cancelled,
    }
}

/// The lowercase name of a wire status, as printed by the CLI.
pub fn status_name(status: pb::TaskStatus) -> &'static str {
    match status {
        pb::TaskStatus::Unspecified => "unspecified",
        pb::TaskStatus::Pending => "pending",
        pb::TaskStatus::Running => "running",
        pb::TaskStatus::Completed => "completed",
        pb::TaskStatus::Failed => "failed",
        pb::TaskStatus::Cancelled => "cancelled",
    }
}

pub fn is_terminal(status: pb::TaskStatus) -> bool {
    matches!(
        status,
        pb::TaskStatus::Completed | pb::TaskStatus::Failed | pb::TaskStatus::Cancelled
    )
}

fn json_text(value: Option<&Value>) -> String {
    value.map(Value::to_string).unwrap_or_default()
}

fn subtask(s: &SubtaskRecord, budget: &mut usize) -> pb::SubtaskRecord {
    pb::SubtaskRecord {
        output: s.output.as_ref().and_then(|v| structured(v, budget)),
        id: s.id.clone(),
        capability: s.capability.clone(),
        status: status(s.status).into(),
        worker: s
            .worker
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        attempts: s.attempts,
        output_json: json_text(s.output.as_ref()),
        error: s.error.clone().unwrap_or_default(),
        started_unix_ms: s.started_ms.unwrap_or(0),
        finished_unix_ms: s.finished_ms.unwrap_or(0),
        depends_on: s.depends_on.clone(),
        workers_tried: s.tried.iter().map(ToString::to_string).collect(),
        consensus_json: json_text(s.consensus.as_ref()),
        term: s.term,
        applied: s.applied.as_ref().map(|a| pb::AppliedResult {
            term: a.term,
            attempt: a.attempt,
            worker: a.worker.to_string(),
        }),
    }
}

pub fn task_record(r: &TaskRecord) -> pb::TaskRecord {
    let mut budget = MAX_VALUE_BYTES;
    let result = r.result();
    pb::TaskRecord {
        result: result.as_ref().and_then(|v| structured(v, &mut budget)),
        task_id: r.id.to_string(),
        name: r.name.clone(),
        pattern: r.pattern.to_string(),
        strategy: r.strategy.to_string(),
        status: status(r.status).into(),
        subtasks: r.subtasks.iter().map(|s| subtask(s, &mut budget)).collect(),
        result_json: json_text(result.as_ref()),
        error: r.error.clone().unwrap_or_default(),
        created_unix_ms: r.created_ms,
        updated_unix_ms: r.updated_ms,
        revision: r.revision,
        owner: r
            .owner
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        idempotency_key: r
            .idempotency_key
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        reactive_json: r
            .reactive
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
            .unwrap_or_default(),
        request_json: r
            .request
            .as_ref()
            .and_then(|plan| serde_json::to_string(plan).ok())
            .unwrap_or_default(),
    }
}

/// A record as a listing shows it: without outputs, consensus details or
/// the result, which can be large; `Get` returns them.
pub fn task_summary(r: &TaskRecord) -> pb::TaskRecord {
    let mut summary = task_record(&TaskRecord {
        subtasks: Vec::new(),
        ..r.clone()
    });
    summary.subtasks = r
        .subtasks
        .iter()
        .map(|s| pb::SubtaskRecord {
            output_json: String::new(),
            output: None,
            consensus_json: String::new(),
            ..subtask(s, &mut 0)
        })
        .collect();
    summary
}

/// JSON nesting (mappings and sequences, the value itself included) of a
/// result or output sent as a `google.protobuf.Value`. Every level costs a
/// decoder two or three nested messages and protobuf decoders stop at 100
/// (prost, C++, Python), so a deeper value would make the whole record
/// unreadable for them; it is sent as JSON text only.
pub const MAX_VALUE_NESTING: usize = 24;

/// Encoded bytes of the `google.protobuf.Value`s of one record: the
/// record's JSON texts are bounded by the record budget, but a Value can
/// take several times its text (a number is nine bytes and a tag), so the
/// structured copies have a budget of their own; what is over it is sent
/// as JSON text only. The TaskService's replies may exceed the node's
/// message limit by this much.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// `value` as a `google.protobuf.Value`, if it nests at most
/// [`MAX_VALUE_NESTING`] levels and its encoding fits in what is left of
/// `budget` (which it then takes from). Whole numbers beyond ±2^53 lose
/// precision as a protobuf double; their JSON text keeps them exact.
pub fn structured(value: &Value, budget: &mut usize) -> Option<prost_types::Value> {
    if !nests_within(value, MAX_VALUE_NESTING) {
        return None;
    }
    let converted = to_proto(value);
    let len = converted.encoded_len();
    *budget = budget.checked_sub(len)?;
    Some(converted)
}

/// Whether `value` nests at most `levels` deep; stops looking one level
/// past it.
fn nests_within(value: &Value, levels: usize) -> bool {
    match value {
        Value::Array(items) => levels > 0 && items.iter().all(|v| nests_within(v, levels - 1)),
        Value::Object(fields) => levels > 0 && fields.values().all(|v| nests_within(v, levels - 1)),
        _ => true,
    }
}

/// Recursion bounded by the caller ([`nests_within`]).
fn to_proto(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_proto).collect(),
        }),
        Value::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.clone(), to_proto(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// The JSON text of a task sent as a `google.protobuf.Struct`, to be parsed
/// and validated like any document, so it meets the same limits and the
/// same checks with the same messages. Its nesting is checked against
/// `limits.max_nesting` (counted as in a document: the top-level mapping
/// is one level) before anything is converted; NaN and infinities, which
/// JSON cannot hold, are refused naming their field.
pub fn task_document(
    task: &prost_types::Struct,
    limits: &TaskLimits,
) -> Result<String, TaskFileError> {
    let mut path = String::new();
    check_nesting(task, 1, limits.max_nesting, &mut path).map_err(TaskFileError::bounded)?;
    let json = struct_to_json(task, &mut path).map_err(TaskFileError::bounded)?;
    let document = Value::Object(json).to_string();
    // Checked here as well as by the parser: a structured task's text may
    // be longer than its message (escapes), and the text is what is
    // forwarded to the leader.
    if document.len() > limits.max_document_bytes {
        return Err(TaskFileError::TooLarge {
            size: document.len(),
            limit: limits.max_document_bytes,
        });
    }
    Ok(document)
}

/// Refuses a container deeper than `max`; `depth` is the level of `s` (the
/// task's own mapping is level 1). Recursion stops one level past `max`.
fn check_nesting(
    s: &prost_types::Struct,
    depth: usize,
    max: usize,
    path: &mut String,
) -> Result<(), TaskFileError> {
    check_level(depth, max, path)?;
    for (key, value) in &s.fields {
        let len = push_key(path, key);
        check_value_nesting(value, depth, max, path)?;
        path.truncate(len);
    }
    Ok(())
}

fn check_value_nesting(
    value: &prost_types::Value,
    parent: usize,
    max: usize,
    path: &mut String,
) -> Result<(), TaskFileError> {
    match &value.kind {
        Some(Kind::StructValue(s)) => check_nesting(s, parent + 1, max, path),
        Some(Kind::ListValue(list)) => {
            check_level(parent + 1, max, path)?;
            for (i, item) in list.values.iter().enumerate() {
                let len = push_index(path, i);
                check_value_nesting(item, parent + 1, max, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_level(depth: usize, max: usize, path: &str) -> Result<(), TaskFileError> {
    if depth <= max {
        return Ok(());
    }
    Err(TaskFileError::OverLimit {
        limit: "max_nesting",
        max,
        found: format!("nests too deep at {}", at(path)),
    })
}

fn at(path: &str) -> &str {
    if path.is_empty() {
        "the top level"
    } else {
        path
    }
}

/// Appends `.key` to a field path; returns the length to truncate back to.
fn push_key(path: &mut String, key: &str) -> usize {
    let len = path.len();
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
    len
}

fn push_index(path: &mut String, i: usize) -> usize {
    let len = path.len();
    path.push_str(&format!("[{i}]"));
    len
}

/// Recursion bounded by [`check_nesting`], which runs first.
fn struct_to_json(
    s: &prost_types::Struct,
    path: &mut String,
) -> Result<Map<String, Value>, TaskFileError> {
    let mut object = Map::new();
    for (key, value) in &s.fields {
        let len = push_key(path, key);
        object.insert(key.clone(), value_to_json(value, path)?);
        path.truncate(len);
    }
    Ok(object)
}

fn value_to_json(value: &prost_types::Value, path: &mut String) -> Result<Value, TaskFileError> {
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            Value::Number(json_number(*n).ok_or_else(|| TaskFileError::Invalid {
                field: at(path).to_owned(),
                message: format!(
                    "{n} is not a number JSON can hold (NaN and infinities have no JSON form)"
                ),
            })?)
        }
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s, path)?),
        Some(Kind::ListValue(list)) => {
            let mut items = Vec::with_capacity(list.values.len());
            for (i, item) in list.values.iter().enumerate() {
                let len = push_index(path, i);
                items.push(value_to_json(item, path)?);
                path.truncate(len);
            }
            Value::Array(items)
        }
    })
}

/// Protobuf has doubles only; a whole one within ±2^53 (where every whole
/// double is exact) becomes a JSON integer, so `timeout_ms: 5000` reads as
/// the integer a task file field wants rather than `5000.0`. `None` for
/// NaN and infinities.
fn json_number(n: f64) -> Option<Number> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.is_finite() && n.fract() == 0.0 && n.abs() <= EXACT {
        Some(Number::from(n as i64))
    } else {
        Number::from_f64(n)
    }
}

/// Nesting a decoded `Value` can have at most: protobuf decoders stop at
/// 100 nested messages, and every level is at least two.
const DECODED_NESTING: usize = 100;

/// A `google.protobuf.Value` as JSON, for clients reading the structured
/// result fields. NaN and infinities, which no node sends, are refused.
pub fn value_json(value: &prost_types::Value) -> Result<Value, TaskFileError> {
    let mut path = String::new();
    // Keeps a hand-built value, which no decoder bounded, in bounds too.
    check_value_nesting(value, 0, DECODED_NESTING, &mut path)?;
    value_to_json(value, &mut path)
}

/// Drops the `keys` whose value is null: fields that only some patterns
/// fill are left out rather than shown empty everywhere.
fn without_nulls(mut value: Value, keys: &[&str]) -> Value {
    if let Value::Object(fields) = &mut value {
        for key in keys {
            if fields.get(*key).is_some_and(Value::is_null) {
                fields.remove(*key);
            }
        }
    }
    value
}

fn parse_json(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
    }
}

fn non_empty(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        json!(text)
    }
}

/// The JSON a user sees for a task: what `submit --wait`, `task status` and
/// `local` print.
pub fn task_json(r: &pb::TaskRecord) -> Value {
    let elapsed = r.updated_unix_ms.saturating_sub(r.created_unix_ms);
    json!({
        "task_id": r.task_id,
        "name": r.name,
        "status": status_name(r.status()),
        "result": parse_json(&r.result_json),
        "error": non_empty(&r.error),
        "elapsed_ms": elapsed,
        "revision": r.revision,
        "owner": non_empty(&r.owner),
        "reactive": parse_json(&r.reactive_json),
        "request": parse_json(&r.request_json),
        "subtasks": r.subtasks.iter().map(|s| without_nulls(json!({
            "id": s.id,
            "capability": s.capability,
            "status": status_name(s.status()),
            "worker": non_empty(&s.worker),
            "attempts": s.attempts,
            "term": s.term,
            "workers_tried": s.workers_tried,
            "output": parse_json(&s.output_json),
            "consensus": parse_json(&s.consensus_json),
            "applied": s.applied.as_ref().map(|a| json!({
                "term": a.term,
                "attempt": a.attempt,
                "worker": a.worker,
            })),
            "error": non_empty(&s.error),
            "elapsed_ms": s.finished_unix_ms.saturating_sub(s.started_unix_ms),
        }), &["consensus", "applied"])).collect::<Vec<_>>(),
    })
}

/// An agent as `ListAgents` reports it, with the scheduler's counters when
/// the answering node schedules work on it.
pub fn agent_info(
    agent: &AgentRegistration,
    stats: Option<&WorkerState>,
    leader: bool,
    reputation: Option<f64>,
) -> pb::AgentInfo {
    pb::AgentInfo {
        id: agent.id.to_string(),
        role: agent.role.to_string(),
        level: agent
            .level
            .map(|l| l.as_str().to_owned())
            .unwrap_or_default(),
        capabilities: agent.capabilities.clone(),
        endpoint: agent.endpoint.clone(),
        load: agent.load,
        max_concurrency: agent.max_concurrency,
        version: agent.version.clone(),
        succeeded: stats.map_or(0, |s| s.succeeded),
        failed: stats.map_or(0, |s| s.failed),
        reputation,
        breaker: stats.map_or_else(String::new, |s| s.breaker_state().to_string()),
        leader,
        faults: agent.faults.clone(),
        insecure: agent.insecure,
        event_handlers: agent
            .event_handlers
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

/// A subtask result's outcome as domain data: the output, or why there is
/// none. `who` names the sender in the error (`worker`, `peer`).
pub fn outcome(result: &pb::SubtaskResult, who: &str) -> Result<Value, String> {
    match &result.outcome {
        Some(pb::subtask_result::Outcome::OutputJson(json)) => {
            serde_json::from_str(json).map_err(|e| format!("{who} returned invalid JSON: {e}"))
        }
        Some(pb::subtask_result::Outcome::Error(error)) => Err(error.clone()),
        None => Err(format!("{who} sent a result without outcome")),
    }
}

/// The result of one attempt of `assignment`, run by `worker`.
pub fn subtask_result(
    worker: &AgentId,
    assignment: &pb::SubtaskAssignment,
    outcome: Result<String, String>,
    elapsed: Duration,
) -> pb::SubtaskResult {
    pb::SubtaskResult {
        task_id: assignment.task_id.clone(),
        subtask_id: assignment.subtask_id.clone(),
        attempt: assignment.attempt,
        worker_id: worker.to_string(),
        outcome: Some(match outcome {
            Ok(output) => pb::subtask_result::Outcome::OutputJson(output),
            Err(error) => pb::subtask_result::Outcome::Error(error),
        }),
        elapsed_us: elapsed.as_micros() as u64,
        handed_back: false,
        term: assignment.term,
        consensus_json: String::new(),
        blame: pb::subtask_result::Blame::Unspecified.into(),
    }
}

/// The result of one attempt of `assignment` that ran a tool: an error
/// carries whose fault it is.
pub fn tool_result(
    worker: &AgentId,
    assignment: &pb::SubtaskAssignment,
    outcome: Result<String, ToolError>,
    elapsed: Duration,
) -> pb::SubtaskResult {
    match outcome {
        Ok(output) => subtask_result(worker, assignment, Ok(output), elapsed),
        Err(error) => failed_result(
            worker,
            assignment,
            error.to_string(),
            error.blame(),
            elapsed,
        ),
    }
}

/// A failed attempt of `assignment`, `blame` saying whose fault it is.
pub fn failed_result(
    worker: &AgentId,
    assignment: &pb::SubtaskAssignment,
    error: String,
    blame: Blame,
    elapsed: Duration,
) -> pb::SubtaskResult {
    pb::SubtaskResult {
        blame: blame_to_wire(blame).into(),
        ..subtask_result(worker, assignment, Err(error), elapsed)
    }
}

fn blame_to_wire(blame: Blame) -> pb::subtask_result::Blame {
    match blame {
        Blame::Task => pb::subtask_result::Blame::Task,
        Blame::Worker => pb::subtask_result::Blame::Worker,
    }
}

/// Whose fault a failed result is; `None` from a sender that does not say
/// (one that predates the field, or a peer or level reporting for others).
pub fn blame(result: &pb::SubtaskResult) -> Option<Blame> {
    match result.blame() {
        pb::subtask_result::Blame::Task => Some(Blame::Task),
        pb::subtask_result::Blame::Worker => Some(Blame::Worker),
        pb::subtask_result::Blame::Unspecified => None,
    }
}

/// `result` with its outcome replaced by the failure `error`, blamed on
/// `blame`: for a result that cannot be sent as it is.
pub fn into_failure(result: pb::SubtaskResult, error: String, blame: Blame) -> pb::SubtaskResult {
    pb::SubtaskResult {
        outcome: Some(pb::subtask_result::Outcome::Error(error)),
        blame: blame_to_wire(blame).into(),
        consensus_json: String::new(),
        ..result
    }
}

/// The attempt an assignment starts.
pub fn assigned_attempt(assignment: &pb::SubtaskAssignment) -> AttemptId {
    attempt_id(
        &assignment.task_id,
        &assignment.subtask_id,
        assignment.term,
        assignment.attempt,
    )
}

/// The attempt a result reports on.
pub fn reported_attempt(result: &pb::SubtaskResult) -> AttemptId {
    attempt_id(
        &result.task_id,
        &result.subtask_id,
        result.term,
        result.attempt,
    )
}

/// The attempt a cancellation stops.
pub fn cancelled_attempt(cancel: &pb::SubtaskCancel) -> AttemptId {
    attempt_id(
        &cancel.task_id,
        &cancel.subtask_id,
        cancel.term,
        cancel.attempt,
    )
}

fn attempt_id(task: &str, subtask: &str, term: i64, attempt: u32) -> AttemptId {
    AttemptId {
        task: TaskId::new(task),
        subtask: SubtaskId::new(subtask),
        term,
        attempt,
    }
}

/// An assignment of `attempt` with nothing to run: for reporting on an
/// attempt whose assignment is gone (handed back at shutdown).
pub fn bare_assignment(attempt: &AttemptId) -> pb::SubtaskAssignment {
    pb::SubtaskAssignment {
        task_id: attempt.task.to_string(),
        subtask_id: attempt.subtask.to_string(),
        attempt: attempt.attempt,
        term: attempt.term,
        ..pb::SubtaskAssignment::default()
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_core::TaskId;
    use agentmesh_core::task::validate::parse;
    use agentmesh_core::task::{AppliedResult, TaskLimits, parse_and_validate};

    use super::*;

    #[test]
    fn task_json_shows_result_and_subtasks() {
        let file = parse_and_validate(
            r#"{"name":"t","tasks":[{"id":"a","capability":"c"}]}"#,
            &TaskLimits::default(),
            &|_| true,
            &Vec::new,
        )
        .unwrap();
        let mut record = TaskRecord::new(TaskId::new("t1"), file, 10);
        let attempt = record.start_attempt(0, 3, "w1".into(), 11);
        let by = AppliedResult {
            term: 3,
            attempt,
            worker: "w1".into(),
        };
        record.complete(0, by, json!({"value": 2}), 15);
        let shown = task_json(&task_record(&record));
        assert_eq!(shown["status"], json!("completed"));
        assert_eq!(shown["result"], json!({"value": 2}));
        assert_eq!(shown["subtasks"][0]["worker"], json!("w1"));
        assert_eq!(
            shown["subtasks"][0]["applied"],
            json!({"term": 3, "attempt": 1, "worker": "w1"})
        );
        assert_eq!(shown["elapsed_ms"], json!(5));
        assert_eq!(shown["error"], Value::Null);
        let wire = task_record(&record);
        let result = value_json(wire.result.as_ref().expect("a structured result")).unwrap();
        assert_eq!(result, json!({"value": 2}));
        let output = value_json(wire.subtasks[0].output.as_ref().unwrap()).unwrap();
        assert_eq!(output, json!({"value": 2}));
        assert_eq!(task_summary(&record).subtasks[0].output, None);
    }

    fn structure(value: &Value) -> prost_types::Struct {
        match to_proto(value).kind {
            Some(Kind::StructValue(s)) => s,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    fn number(n: f64) -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    /// JSON that survives a trip through protobuf's doubles: integers
    /// within ±2^53 and non-whole finite numbers.
    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(1i64 << 53)..=(1i64 << 53)).prop_map(|n| json!(n)),
            (-1e12f64..1e12)
                .prop_filter("not whole", |f| f.fract() != 0.0)
                .prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn json_round_trips_through_value_and_struct(value in json(), key in "[a-z]{1,8}") {
            let back = value_json(&to_proto(&value)).unwrap();
            proptest::prop_assert_eq!(&back, &value);
            // As text, the task reads back as the same task sent as a
            // document does (serde_json's float parsing is not exact
            // either way).
            let task = json!({ key: value });
            let text = task_document(&structure(&task), &TaskLimits::default()).unwrap();
            let parsed: Value = serde_json::from_str(&text).unwrap();
            let as_document: Value = serde_json::from_str(&task.to_string()).unwrap();
            proptest::prop_assert_eq!(parsed, as_document);
        }
    }

    #[test]
    fn whole_numbers_become_integers_and_non_finite_ones_are_refused() {
        let task = structure(&json!({"name": "t", "timeout_ms": 5000}));
        let text = task_document(&task, &TaskLimits::default()).unwrap();
        assert!(text.contains(r#""timeout_ms":5000"#), "{text}");
        assert_eq!(json_number(2f64.powi(60)).unwrap().as_i64(), None);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut task = structure(&json!({"name": "t", "tasks": [{"input": {"x": 1}}]}));
            let Some(Kind::ListValue(tasks)) = &mut task.fields.get_mut("tasks").unwrap().kind
            else {
                unreachable!()
            };
            let Some(Kind::StructValue(entry)) = &mut tasks.values[0].kind else {
                unreachable!()
            };
            let Some(Kind::StructValue(input)) = &mut entry.fields.get_mut("input").unwrap().kind
            else {
                unreachable!()
            };
            input.fields.insert("x".into(), number(bad));
            let error = task_document(&task, &TaskLimits::default()).unwrap_err();
            let message = error.to_string();
            assert!(
                message.starts_with("tasks[0].input.x: ") && message.contains("JSON"),
                "{message}"
            );
            assert!(value_json(&number(bad)).is_err());
        }
    }

    /// `{"a": {"a": … {"a": 1}}}`, `levels` mappings deep.
    fn nested(levels: usize) -> Value {
        (1..levels).fold(json!({"a": 1}), |inner, _| json!({ "a": inner }))
    }

    #[test]
    fn nesting_is_held_to_the_document_limit_before_conversion() {
        let limits = TaskLimits::default();
        let max = limits.max_nesting;
        assert!(task_document(&structure(&nested(max)), &limits).is_ok());
        let error = task_document(&structure(&nested(max + 1)), &limits).unwrap_err();
        let TaskFileError::OverLimit {
            limit,
            max: named,
            found,
        } = &error
        else {
            panic!("{error}")
        };
        assert_eq!((*limit, *named), ("max_nesting", max));
        assert!(found.starts_with("nests too deep at a.a.a"), "{found}");
        // The same task as a document meets the same limit.
        let document = parse(&nested(max + 1).to_string(), &limits).unwrap_err();
        assert!(
            matches!(
                document,
                TaskFileError::OverLimit {
                    limit: "max_nesting",
                    ..
                }
            ),
            "{document}"
        );
        // Lists count as levels too, and a tighter limit holds.
        let tight = TaskLimits {
            max_nesting: 3,
            ..TaskLimits::default()
        };
        let lists = structure(&json!({"a": [[1]]}));
        assert!(task_document(&lists, &tight).is_ok());
        let lists = structure(&json!({"a": [[[1]]]}));
        let error = task_document(&lists, &tight).unwrap_err().to_string();
        assert_eq!(
            error,
            "task file nests too deep at a[0][0], over the limit max_nesting = 3"
        );
    }

    #[test]
    fn a_structured_task_meets_the_same_validator_and_size_limit_as_a_document() {
        let limits = TaskLimits::default();
        let task = json!({
            "name": "loop",
            "tasks": [
                {"id": "a", "capability": "c", "depends_on": ["b"]},
                {"id": "b", "capability": "c", "depends_on": ["a"]},
            ]
        });
        let text = task_document(&structure(&task), &limits).unwrap();
        let check = |document: &str| {
            parse_and_validate(document, &limits, &|_| true, &Vec::new)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(check(&text), check(&task.to_string()));
        assert!(check(&text).starts_with("dependency cycle"));

        let small = TaskLimits {
            max_document_bytes: 64,
            ..TaskLimits::default()
        };
        let big = structure(&json!({"name": "x".repeat(100)}));
        assert_eq!(
            task_document(&big, &small).unwrap_err().to_string(),
            "task file is 111 bytes, over the limit of 64 bytes"
        );
    }

    #[test]
    fn structured_results_are_bounded_in_nesting_and_bytes() {
        let mut budget = MAX_VALUE_BYTES;
        assert!(structured(&nested(MAX_VALUE_NESTING), &mut budget).is_some());
        assert!(structured(&nested(MAX_VALUE_NESTING + 1), &mut budget).is_none());
        let mut budget = 100;
        let long = json!("x".repeat(60));
        assert!(structured(&long, &mut budget).is_some());
        assert!(
            structured(&long, &mut budget).is_none(),
            "over what is left"
        );
        assert!(structured(&json!(1), &mut budget).is_some(), "fits");
    }

    #[test]
    fn blame_travels_with_a_failure_and_defaults_to_the_worker() {
        let worker = AgentId::new("w1");
        let assignment = pb::SubtaskAssignment::default();
        let input = ToolError::InvalidInput("field 'expr' must be a string".into());
        let result = tool_result(&worker, &assignment, Err(input), Duration::ZERO);
        let decoded: pb::SubtaskResult =
            prost::Message::decode(prost::Message::encode_to_vec(&result).as_slice()).unwrap();
        assert_eq!(blame(&decoded), Some(Blame::Task));
        let internal = ToolError::Internal("database down".into());
        let result = tool_result(&worker, &assignment, Err(internal), Duration::ZERO);
        assert_eq!(blame(&result), Some(Blame::Worker));
        let legacy = subtask_result(&worker, &assignment, Err("boom".into()), Duration::ZERO);
        assert_eq!(blame(&legacy), None);
    }
}
