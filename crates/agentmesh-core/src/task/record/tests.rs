use serde_json::json;

use super::*;
use crate::task::{TaskLimits, parse_and_validate};

fn record(document: &str) -> TaskRecord {
    let file = parse_and_validate(document, &TaskLimits::default(), &|_| true, &Vec::new).unwrap();
    TaskRecord::new(TaskId::new("t1"), file, 1000)
}

fn average() -> TaskRecord {
    record(
        r#"{"name":"avg","tasks":[
            {"id":"a","capability":"text.word_count","input":{"text":"x"}},
            {"id":"b","capability":"text.word_count","input":{"text":"y"}},
            {"id":"avg","capability":"math.eval","input":{"expr":"({{a.words}} + {{b.words}}) / 2"},"depends_on":["a","b"]}]}"#,
    )
}

fn w(id: &str) -> AgentId {
    AgentId::new(id)
}

/// The coordinator term of these tests.
const TERM: i64 = 7;

/// A result of `attempt` in [`TERM`], as a worker reports it.
fn by(attempt: u32) -> AppliedResult {
    AppliedResult {
        term: TERM,
        attempt,
        worker: w("w"),
    }
}

#[test]
fn dependencies_gate_readiness_and_results_flow_through_references() {
    let mut r = average();
    assert_eq!(r.ready(), vec![0, 1]);
    let a = r.start_attempt(0, TERM, w("w1"), 1001);
    let b = r.start_attempt(1, TERM, w("w2"), 1001);
    assert_eq!(r.status, Status::Running);
    assert!(r.ready().is_empty());
    assert_eq!(
        r.complete(0, by(a), json!({"words": 4}), 1002),
        Applied::Changed
    );
    assert!(r.ready().is_empty());
    assert_eq!(
        r.complete(1, by(b), json!({"words": 6}), 1003),
        Applied::Changed
    );
    assert_eq!(r.ready(), vec![2]);
    assert_eq!(
        r.resolved_input(2, (&TaskLimits::default()).into())
            .unwrap(),
        json!({"expr": "(4 + 6) / 2"})
    );
    let c = r.start_attempt(2, TERM, w("w3"), 1004);
    r.complete(2, by(c), json!({"value": 5.0}), 1005);
    assert_eq!(r.status, Status::Completed);
    assert_eq!(r.result(), Some(json!({"value": 5.0})));
}

#[test]
fn stale_attempts_are_ignored() {
    let mut r = average();
    let first = r.start_attempt(0, TERM, w("w1"), 1001);
    assert_eq!(
        r.requeue(0, first, "worker lost".into(), 1002),
        Applied::Changed
    );
    let second = r.start_attempt(0, TERM, w("w2"), 1003);
    assert_eq!(second, first + 1);
    assert_eq!(
        r.complete(0, by(first), json!({"words": 1}), 1004),
        Applied::Stale
    );
    assert_eq!(r.subtasks[0].status, Status::Running);
    assert_eq!(
        r.complete(0, by(second), json!({"words": 1}), 1005),
        Applied::Changed
    );
    assert_eq!(
        r.complete(0, by(second), json!({"words": 9}), 1006),
        Applied::Stale
    );
    assert_eq!(r.subtasks[0].output, Some(json!({"words": 1})));
}

#[test]
fn failure_ends_the_task_and_stops_running_attempts() {
    let mut r = average();
    let a = r.start_attempt(0, TERM, w("w1"), 1001);
    let b = r.start_attempt(1, TERM, w("w2"), 1001);
    let (applied, stopped) = r.fail(0, by(a), "boom".into(), 1002);
    assert_eq!(applied, Applied::Changed);
    assert_eq!(r.status, Status::Failed);
    assert_eq!(
        r.error.as_deref(),
        Some("subtask 'a' failed on worker 'w1' (attempt 1): boom")
    );
    assert_eq!(
        stopped,
        vec![StoppedAttempt {
            subtask: 1,
            worker: w("w2"),
            attempt: b
        }]
    );
    assert_eq!(r.subtasks[2].status, Status::Cancelled);
    assert!(r.ready().is_empty());
}

#[test]
fn cancel_is_terminal_and_idempotent() {
    let mut r = average();
    r.start_attempt(0, TERM, w("w1"), 1001);
    assert_eq!(r.cancel("user asked".into(), 1002).len(), 1);
    assert_eq!(r.status, Status::Cancelled);
    assert!(r.cancel("again".into(), 1003).is_empty());
    assert_eq!(r.error.as_deref(), Some("user asked"));
}

#[test]
fn several_final_subtasks_aggregate_into_an_object() {
    let mut r = record(
        r#"{"name":"two","tasks":[{"id":"x","capability":"c"},{"id":"y","capability":"c"}]}"#,
    );
    for i in 0..2 {
        let a = r.start_attempt(i, TERM, w("w"), 1);
        r.complete(i, by(a), json!(i), 2);
    }
    assert_eq!(r.result(), Some(json!({"x": 0, "y": 1})));
}

#[test]
fn every_change_increases_the_revision() {
    let mut r = average();
    let start = r.revision;
    let a = r.start_attempt(0, TERM, w("w1"), 1001);
    r.complete(0, by(a), json!({}), 1002);
    assert_eq!(r.revision, start + 2);
}

#[test]
fn record_round_trips_through_json() {
    let r = average();
    let text = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<TaskRecord>(&text).unwrap(), r);
}

#[test]
fn resume_keeps_completed_work_and_restarts_running_attempts_outside_the_budget() {
    let mut r = average();
    let a = r.start_attempt(0, TERM, w("w1"), 1001);
    let b = r.start_attempt(1, TERM, w("w2"), 1001);
    r.complete(0, by(a), json!({"words": 4}), 1002);
    let before = r.revision;

    // A new coordinator loads this record from the registry.
    assert_eq!(r.resume("coordinator changed", 1003), vec![1]);
    assert!(r.revision > before);
    assert_eq!(r.subtasks[0].status, Status::Completed);
    assert_eq!(r.subtasks[1].status, Status::Pending);
    assert_eq!(r.subtasks[1].restarts, 1);
    assert_eq!(r.budgeted_attempts(1), 0);

    // The old coordinator's attempt can no longer land.
    let again = r.start_attempt(1, TERM, w("w3"), 1004);
    assert_eq!(again, b + 1);
    assert_eq!(
        r.complete(1, by(b), json!({"words": 9}), 1005),
        Applied::Stale
    );
    assert_eq!(r.budgeted_attempts(1), 1);
    assert_eq!(
        r.complete(1, by(again), json!({"words": 6}), 1006),
        Applied::Changed
    );
    assert_eq!(r.ready(), vec![2]);
}

#[test]
fn resuming_an_ended_task_changes_nothing_and_an_untouched_one_only_counts() {
    let mut r = average();
    let revision = r.revision;
    assert_eq!(r.resume("coordinator changed", 1001), vec![0, 1]);
    // The takeover is counted, and the count is a change to persist.
    assert_eq!(r.resumes, 1);
    assert_eq!(r.revision, revision + 1);
    assert!(r.subtasks.iter().all(|s| s.restarts == 0));
    r.cancel("stop".into(), 1002);
    let ended = r.clone();
    assert!(r.resume("coordinator changed", 1003).is_empty());
    assert_eq!(r, ended);
}

#[test]
fn a_task_resumed_past_the_bound_without_progress_is_failed() {
    let mut r = average();
    for n in 1..=3 {
        r.start_attempt(0, TERM, w("w1"), 1000 + n);
        r.resume("coordinator changed", 1000 + n);
        assert_eq!(r.resumes, n as u32);
        assert_eq!(r.fail_crash_loop(3, 1000 + n), None);
    }
    r.resume("coordinator changed", 1010);
    assert_eq!(r.fail_crash_loop(3, 1011), Some(Vec::new()));
    assert_eq!(r.status, Status::Failed);
    assert_eq!(
        r.error.as_deref(),
        Some(
            "task was resumed 4 times by new coordinator leaders without a subtask finishing, over the limit --max-task-resumes = 3; failed to protect the cluster"
        )
    );
    assert!(r.subtasks.iter().all(|s| s.status == Status::Cancelled));
}

#[test]
fn progress_between_takeovers_resets_the_count() {
    let mut r = average();
    r.resume("coordinator changed", 1001);
    r.resume("coordinator changed", 1002);
    let a = r.start_attempt(0, TERM, w("w1"), 1003);
    r.complete(0, by(a), json!({"words": 4}), 1004);
    assert_eq!(r.resumes, 0);
    for n in 0..3 {
        r.resume("coordinator changed", 1005 + n);
    }
    assert_eq!(r.fail_crash_loop(3, 1010), None);
    assert!(!r.status.is_terminal());
}

#[test]
fn records_written_before_the_resume_count_still_load() {
    let mut r = average();
    let mut json = serde_json::to_value(&r).unwrap();
    assert!(json.get("resumes").is_none(), "zero is not written");
    json.as_object_mut().unwrap().remove("resumes");
    let loaded: TaskRecord = serde_json::from_value(json).unwrap();
    assert_eq!(loaded.resumes, 0);
    r.resume("coordinator changed", 1001);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["resumes"], 1);
}

#[test]
fn an_excused_attempt_does_not_count_against_the_budget() {
    let mut r = average();
    let first = r.start_attempt(0, TERM, w("w1"), 1001);
    assert_eq!(r.excuse(0, first), Applied::Changed);
    assert_eq!(r.budgeted_attempts(0), 0);
    assert_eq!(r.excuse(0, first + 1), Applied::Stale);
    r.requeue(0, first, "handed back".into(), 1002);
    r.start_attempt(0, TERM, w("w2"), 1003);
    assert_eq!(r.budgeted_attempts(0), 1);
}

#[test]
fn an_ended_subtask_keeps_the_result_that_ended_it() {
    let mut r = average();
    let a = r.start_attempt(0, TERM, w("w1"), 1001);
    assert_eq!(r.subtasks[0].term, TERM);
    assert_eq!(r.subtasks[0].applied, None, "nothing applied while it runs");
    let result = AppliedResult {
        term: TERM,
        attempt: a,
        worker: w("w1"),
    };
    r.complete(0, result.clone(), json!({"words": 4}), 1002);
    assert_eq!(r.subtasks[0].applied, Some(result.clone()));

    // A later result for the same subtask changes neither the output nor
    // which result was applied.
    let late = AppliedResult {
        term: TERM + 1,
        ..result.clone()
    };
    assert_eq!(
        r.complete(0, late, json!({"words": 9}), 1003),
        Applied::Stale
    );
    assert_eq!(r.subtasks[0].applied, Some(result));
    assert_eq!(r.subtasks[0].output, Some(json!({"words": 4})));

    // A failed result is kept too.
    let b = r.start_attempt(1, TERM, w("w2"), 1004);
    r.fail(1, by(b), "boom".into(), 1005);
    assert_eq!(r.subtasks[1].applied, Some(by(b)));
    assert_eq!(r.status, Status::Failed);
}

#[test]
fn a_stale_or_missing_result_applies_nothing() {
    let mut r = average();
    let first = r.start_attempt(0, TERM, w("w1"), 1001);
    r.requeue(0, first, "worker lost".into(), 1002);
    let second = r.start_attempt(0, TERM + 1, w("w2"), 1003);
    let (applied, _) = r.fail(0, by(first), "late".into(), 1004);
    assert_eq!(applied, Applied::Stale);
    assert_eq!(r.subtasks[0].applied, None);
    assert_eq!(r.subtasks[0].term, TERM + 1, "the latest attempt's term");

    // Giving up after the retry budget is an end without a result.
    let (applied, _) = r.give_up(0, second, "budget spent".into(), 1005);
    assert_eq!(applied, Applied::Changed);
    assert_eq!(r.subtasks[0].status, Status::Failed);
    assert_eq!(r.subtasks[0].applied, None);
}

#[test]
fn records_written_before_terms_and_applied_results_still_decode() {
    let mut r = average();
    let a = r.start_attempt(0, TERM, w("w1"), 1001);
    r.complete(0, by(a), json!({"words": 4}), 1002);
    let mut old = serde_json::to_value(&r).unwrap();
    for s in old["subtasks"].as_array_mut().unwrap() {
        let fields = s.as_object_mut().unwrap();
        fields.remove("term");
        fields.remove("applied");
    }
    let decoded: TaskRecord = serde_json::from_value(old).unwrap();
    assert_eq!(decoded.subtasks[0].term, 0);
    assert_eq!(decoded.subtasks[0].applied, None);
    assert_eq!(decoded.subtasks[0].output, Some(json!({"words": 4})));

    // And a record with neither writes neither.
    let fresh = serde_json::to_value(average()).unwrap();
    assert!(fresh["subtasks"][0].get("term").is_none());
    assert!(fresh["subtasks"][0].get("applied").is_none());
}

/// A task of one subtask with a large input whose worker echoes it back.
fn one_large_subtask(input_bytes: usize) -> TaskRecord {
    let text = "x".repeat(input_bytes);
    record(&format!(
        r#"{{"name":"big","tasks":[{{"id":"a","capability":"text.word_count","input":{{"text":"{text}"}}}}]}}"#
    ))
}

#[test]
fn the_record_holds_each_output_once_so_its_size_follows_inputs_plus_outputs() {
    let mut r = one_large_subtask(100_000);
    let pending = r.encoded_len();
    assert!(pending > 100_000 && pending < 101_000, "{pending}");
    let a = r.start_attempt(0, TERM, w("w1"), 1001);
    let output = json!({ "echo": "y".repeat(200_000) });
    r.complete(0, by(a), output.clone(), 1002);
    assert_eq!(r.status, Status::Completed);
    // The result is the final output, derived rather than stored: the
    // record grew by the output once, not twice.
    assert_eq!(r.result(), Some(output));
    let completed = r.encoded_len();
    assert!(
        completed < pending + 200_000 + 1_000,
        "{completed} bytes for 100 KB in and 200 KB out"
    );
    assert_eq!(completed, serde_json::to_vec(&r).unwrap().len());
    assert!(serde_json::to_value(&r).unwrap().get("result").is_none());
}

#[test]
fn a_record_written_with_a_stored_result_still_decodes_and_derives_it() {
    let mut r = average();
    for i in 0..3 {
        let attempt = r.start_attempt(i, TERM, w("w"), 1001);
        r.complete(i, by(attempt), json!({"words": 2, "value": 2}), 1002);
    }
    let mut old = serde_json::to_value(&r).unwrap();
    old["result"] = json!({"value": 2});
    let decoded: TaskRecord = serde_json::from_value(old).unwrap();
    assert_eq!(decoded.result(), Some(json!({"words": 2, "value": 2})));
}

#[test]
fn a_record_over_its_budget_fails_its_task_and_shrinks_to_fit() {
    let limits = RecordLimits {
        max_record_bytes: 64 * 1024,
        max_output_bytes: 64 * 1024,
    };
    let mut r = average();
    let a = r.start_attempt(0, TERM, w("w1"), 1001);
    let b = r.start_attempt(1, TERM, w("w2"), 1001);
    r.complete(
        0,
        by(a),
        json!({ "words": 1, "pad": "p".repeat(40_000) }),
        1002,
    );
    r.complete(
        1,
        by(b),
        json!({ "words": 1, "pad": "q".repeat(50_000) }),
        1003,
    );
    let bytes = r.encoded_len();
    assert!(limits.check_record(bytes).is_err());

    let stopped = r.fail_over_budget(bytes, &limits, 1004);
    assert!(stopped.is_empty());
    assert_eq!(r.status, Status::Failed);
    let error = r.error.clone().unwrap();
    assert!(
        error.contains(&format!("task record is {bytes} bytes")),
        "{error}"
    );
    assert!(
        error.contains("65536 bytes (--max-record-bytes)"),
        "{error}"
    );
    assert!(
        error.contains("subtask 'b'"),
        "names the largest output: {error}"
    );
    assert!(r.subtasks.iter().all(|s| s.output.is_none()));
    // The pending subtask ends with its task; inputs stay for the reader.
    assert_eq!(r.subtasks[2].status, Status::Cancelled);
    assert!(r.subtasks[0].input.get("text").is_some());
    assert!(limits.check_record(r.encoded_len()).is_ok());
}

#[test]
fn a_record_whose_inputs_alone_are_over_the_budget_drops_them_too() {
    let limits = RecordLimits {
        max_record_bytes: 10_000,
        max_output_bytes: 10_000,
    };
    let mut r = one_large_subtask(50_000);
    let a = r.start_attempt(0, TERM, w("w1"), 1001);
    let bytes = r.encoded_len();
    let stopped = r.fail_over_budget(bytes, &limits, 1002);
    // The running attempt is to be stopped; the record now fits.
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].attempt, a);
    assert_eq!(r.subtasks[0].input, Value::Null);
    assert!(r.error.as_deref().unwrap().contains("inputs"));
    assert!(limits.check_record(r.encoded_len()).is_ok());
}

#[test]
fn a_record_the_registry_refused_fails_as_a_skeleton() {
    let mut r = average();
    let a = r.start_attempt(0, TERM, w("w1"), 1001);
    r.complete(0, by(a), json!({"words": 4}), 1002);
    let b = r.start_attempt(1, TERM, w("w2"), 1003);
    let stopped = r.fail_unwritable(
        "task record of 2000000 bytes could not be written: request is too large",
        1004,
    );
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].attempt, b);
    assert_eq!(r.status, Status::Failed);
    assert!(r.error.as_deref().unwrap().contains("request is too large"));
    assert!(r.is_stripped());
    assert!(!average().is_stripped());
}

#[test]
fn the_client_survives_a_round_trip_and_old_records_have_none() {
    let mut r = average();
    assert!(serde_json::to_value(&r).unwrap().get("client").is_none());
    r.client = Some(ClientId::parse("alice@host").unwrap());
    let text = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<TaskRecord>(&text).unwrap(), r);
    let decoded: TaskRecord =
        serde_json::from_value(serde_json::to_value(average()).unwrap()).unwrap();
    assert_eq!(decoded.client, None);
}

#[test]
fn the_owner_survives_a_round_trip_and_unauthenticated_records_have_none() {
    let mut r = average();
    assert!(serde_json::to_value(&r).unwrap().get("owner").is_none());
    r.owner = Some(ClientId::parse("alice").unwrap());
    let text = serde_json::to_string(&r).unwrap();
    // A new leader reads the owner back from the stored record.
    let decoded = serde_json::from_str::<TaskRecord>(&text).unwrap();
    assert_eq!(decoded.owner.as_ref().map(ClientId::as_str), Some("alice"));
    assert_eq!(decoded, r);
}

#[test]
fn only_the_worker_of_the_current_attempt_may_answer_it() {
    let mut r = average();
    let first = r.start_attempt(0, TERM, w("w1"), 1001);
    assert_eq!(r.assigned_elsewhere(0, first, &w("w1")), None);
    assert_eq!(r.assigned_elsewhere(0, first, &w("rogue")), Some(&w("w1")));
    // Retried on w2: w1's answer to the old attempt is stale, not forged;
    // the new attempt is w2's alone.
    r.requeue(0, first, "lost".into(), 1002);
    let second = r.start_attempt(0, TERM, w("w2"), 1003);
    assert_eq!(r.assigned_elsewhere(0, first, &w("w1")), None);
    assert_eq!(r.assigned_elsewhere(0, second, &w("w1")), Some(&w("w2")));
    assert_eq!(r.assigned_elsewhere(0, second, &w("w2")), None);
}
