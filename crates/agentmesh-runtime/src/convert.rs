//! Conversion between domain types and `agentmesh.v1` protobuf messages:
//! the only place in the runtime that knows both.

use std::time::Duration;

use agentmesh_core::breaker::Blame;
use agentmesh_core::scheduling::WorkerState;
use agentmesh_core::task::{Status, SubtaskRecord, TaskRecord};
use agentmesh_core::{AgentId, AgentRegistration, AttemptId, SubtaskId, TaskId};
use agentmesh_proto::v1 as pb;
use serde_json::{Value, json};

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

fn subtask(s: &SubtaskRecord) -> pb::SubtaskRecord {
    pb::SubtaskRecord {
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
    pb::TaskRecord {
        task_id: r.id.to_string(),
        name: r.name.clone(),
        pattern: r.pattern.to_string(),
        strategy: r.strategy.to_string(),
        status: status(r.status).into(),
        subtasks: r.subtasks.iter().map(subtask).collect(),
        result_json: json_text(r.result().as_ref()),
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
            consensus_json: String::new(),
            ..subtask(s)
        })
        .collect();
    summary
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
