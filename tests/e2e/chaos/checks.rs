//! Exactly-once, checked from the task records the cluster serves.
//!
//! Each subtask record says which worker result ended it (`applied`: the
//! coordinator term, attempt and worker the result came from) next to the
//! term, number and worker of its latest attempt. Two checks read them:
//!
//! * [`EndsSeen`], over every record the test reads while the scenario
//!   runs: once a subtask is seen ended, every later read shows the same
//!   applied result and the same output — a result applied again, by any
//!   coordinator, or an end that was reported before it was durable and
//!   then run again, shows up as a change.
//! * [`ExactlyOnce`], over the final record of every completed task: each
//!   subtask has an applied result, and it is its latest attempt's (same
//!   term, attempt and worker) — a result of a superseded attempt or of
//!   an earlier leader's term that was applied shows up as a mismatch.

use std::collections::{HashMap, HashSet};
use std::fmt;

use agentmesh_proto::v1 as pb;
use serde_json::Value;

/// The first five entries of a failure list, one per line, for messages.
pub fn first(list: &[String]) -> String {
    list.iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Which attempt's result a record says was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedView {
    term: i64,
    attempt: u32,
    worker: String,
}

impl fmt::Display for AppliedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "term {} attempt {} from {}",
            self.term, self.attempt, self.worker
        )
    }
}

/// One subtask as a record shows it, whether the record came over gRPC
/// or as `agentmesh task status` JSON.
#[derive(Clone, Debug)]
pub struct SubtaskView {
    task: String,
    subtask: String,
    /// The record's revision.
    revision: u64,
    /// `completed` or `failed`: ended by a result.
    ended: bool,
    completed: bool,
    attempts: u32,
    term: i64,
    worker: String,
    applied: Option<AppliedView>,
    output: Value,
}

impl SubtaskView {
    fn key(&self) -> (String, String) {
        (self.task.clone(), self.subtask.clone())
    }

    fn name(&self) -> String {
        format!("task {} subtask '{}'", self.task, self.subtask)
    }

    fn applied_text(&self) -> String {
        self.applied
            .as_ref()
            .map_or("no applied result".to_owned(), |a| format!("applied {a}"))
    }
}

/// The subtasks of a record read over gRPC.
pub fn subtasks_of(record: &pb::TaskRecord) -> Vec<SubtaskView> {
    record
        .subtasks
        .iter()
        .map(|s| SubtaskView {
            task: record.task_id.clone(),
            subtask: s.id.clone(),
            revision: record.revision,
            ended: matches!(
                s.status(),
                pb::TaskStatus::Completed | pb::TaskStatus::Failed
            ),
            completed: s.status() == pb::TaskStatus::Completed,
            attempts: s.attempts,
            term: s.term,
            worker: s.worker.clone(),
            applied: s.applied.as_ref().map(|a| AppliedView {
                term: a.term,
                attempt: a.attempt,
                worker: a.worker.clone(),
            }),
            output: serde_json::from_str(&s.output_json).unwrap_or(Value::Null),
        })
        .collect()
}

/// The subtasks of a record printed by `agentmesh task status`.
pub fn subtasks_of_json(record: &Value) -> Vec<SubtaskView> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    record["subtasks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| SubtaskView {
            task: text(&record["task_id"]),
            subtask: text(&s["id"]),
            revision: record["revision"].as_u64().unwrap_or(0),
            ended: s["status"] == "completed" || s["status"] == "failed",
            completed: s["status"] == "completed",
            attempts: s["attempts"].as_u64().unwrap_or(0) as u32,
            term: s["term"].as_i64().unwrap_or(0),
            worker: text(&s["worker"]),
            applied: s
                .get("applied")
                .filter(|a| !a.is_null())
                .map(|a| AppliedView {
                    term: a["term"].as_i64().unwrap_or(0),
                    attempt: a["attempt"].as_u64().unwrap_or(0) as u32,
                    worker: text(&a["worker"]),
                }),
            output: s["output"].clone(),
        })
        .collect()
}

/// Every subtask end as first seen, and every later read that contradicts
/// it.
#[derive(Debug, Default)]
pub struct EndsSeen {
    first: HashMap<(String, String), SubtaskView>,
    /// Reads checked.
    reads: usize,
    /// The first contradicting read of each subtask whose end changed.
    changed: Vec<String>,
    changed_subtasks: HashSet<(String, String)>,
}

impl EndsSeen {
    /// Checks one read of a record, `source` naming where it came from.
    pub fn observe(&mut self, record: &pb::TaskRecord, source: &str) {
        self.observe_subtasks(subtasks_of(record), source);
    }

    pub fn observe_subtasks(&mut self, subtasks: Vec<SubtaskView>, source: &str) {
        self.reads += 1;
        for now in subtasks {
            let Some(end) = self.first.get(&now.key()) else {
                if now.ended {
                    self.first.insert(now.key(), now);
                }
                continue;
            };
            let change = if now.ended {
                (now.applied != end.applied || now.output != end.output).then(|| {
                    format!(
                        "{}: ended at revision {} with {} and output {}, then {source} shows \
                         revision {} with {} and output {}",
                        now.name(),
                        end.revision,
                        end.applied_text(),
                        end.output,
                        now.revision,
                        now.applied_text(),
                        now.output
                    )
                })
            } else {
                // An older revision (a deposed leader answering from what
                // it had) is no change; a newer one must still be ended.
                (now.revision > end.revision).then(|| {
                    format!(
                        "{}: ended at revision {} with {}, then {source} shows it running \
                         again at revision {}",
                        now.name(),
                        end.revision,
                        end.applied_text(),
                        now.revision
                    )
                })
            };
            if let Some(change) = change
                && self.changed_subtasks.insert(now.key())
            {
                self.changed.push(change);
            }
        }
    }
}

/// What the final records say about the results applied.
#[derive(Debug, Default)]
pub struct ExactlyOnce {
    /// Subtasks of completed tasks checked.
    checked: usize,
    /// ... with no applied result.
    missing: Vec<String>,
    /// ... whose applied result is not their latest attempt's.
    not_latest: Vec<String>,
    /// Subtasks whose end changed once seen (from [`EndsSeen`]).
    changed: Vec<String>,
    reads: usize,
}

impl ExactlyOnce {
    /// Checks the subtasks of the final records of completed tasks, and
    /// takes what `ends` found over every read.
    pub fn check(finals: impl IntoIterator<Item = SubtaskView>, ends: &EndsSeen) -> Self {
        let mut check = ExactlyOnce {
            changed: ends.changed.clone(),
            reads: ends.reads,
            ..ExactlyOnce::default()
        };
        for s in finals.into_iter().filter(|s| s.completed) {
            check.checked += 1;
            let latest = AppliedView {
                term: s.term,
                attempt: s.attempts,
                worker: s.worker.clone(),
            };
            match &s.applied {
                None => check.missing.push(s.name()),
                Some(applied) if *applied != latest => check.not_latest.push(format!(
                    "{}: applied {applied}, but its latest attempt is {latest}",
                    s.name()
                )),
                Some(_) => {}
            }
        }
        check
    }

    /// `key=value` pairs for a scenario's CHAOS line.
    pub fn fields(&self) -> String {
        format!(
            "applied_checked={} applied_missing={} applied_not_latest={} reads={} \
             end_changed={}",
            self.checked,
            self.missing.len(),
            self.not_latest.len(),
            self.reads,
            self.changed.len()
        )
    }

    pub fn assert_clean(&self) {
        assert!(
            self.changed.is_empty(),
            "{} subtask ends changed after they were seen (a result applied twice, or an end \
             reported before it was durable):\n  {}",
            self.changed.len(),
            first(&self.changed)
        );
        assert!(
            self.not_latest.is_empty(),
            "{} subtasks of completed tasks had a result of another attempt or term applied \
             than their latest one:\n  {}",
            self.not_latest.len(),
            first(&self.not_latest)
        );
        assert!(
            self.missing.is_empty(),
            "{} subtasks of completed tasks have no applied result in their record:\n  {}",
            self.missing.len(),
            first(&self.missing)
        );
        assert!(self.checked > 0, "no completed subtask was checked");
    }
}
