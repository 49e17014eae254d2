//! The durable record of one task and the pure state machine the
//! coordinator drives over it.
//!
//! The record is the single source of truth: it is what the registry
//! persists, what `task status` shows, and what a coordinator reloads to
//! resume the task, so every transition is a method here and the
//! coordinator only decides *when* to call it.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::budget::{BudgetError, RecordLimits, encoded_len, truncated};
use super::file::{Pattern, Strategy, SubtaskSpec, TaskFile};
use super::reference::{ReferenceError, ResolveBudget, resolve};
use crate::fairness::ClientId;
use crate::ids::{AgentId, TaskId};
use crate::patterns;
use crate::request::{Aggregation, Awaiting, Refinement};

/// Lifecycle state of a task or subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtaskRecord {
    pub id: String,
    pub capability: String,
    pub input: Value,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    pub status: Status,
    /// Worker of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<AgentId>,
    /// Number of attempts started; the latest attempt's number.
    #[serde(default)]
    pub attempts: u32,
    /// The coordinator term (the leader's fence revision) under which the
    /// latest attempt started. With `attempts` it names that attempt: a new
    /// leader may reuse the number of an attempt whose record its
    /// predecessor never wrote.
    #[serde(default, skip_serializing_if = "is_zero_term")]
    pub term: i64,
    /// The worker of every attempt, in order (a worker may appear twice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tried: Vec<AgentId>,
    /// Attempts ended by a change of coordinator rather than by anything
    /// the subtask or its worker did; they do not count against the retry
    /// budget.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The worker's result that ended the subtask, kept with the output it
    /// produced so that "one result applied per subtask, the current
    /// attempt's" can be checked from the durable record. `None` while the
    /// subtask runs, and when no result ended it (cancelled, or its retry
    /// budget spent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<AppliedResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// `peer_consensus`: how the output was agreed on (algorithm, votes,
    /// agreement, dissenters, solo fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<Value>,
}

impl SubtaskRecord {
    /// A subtask not yet started.
    pub fn pending(spec: SubtaskSpec) -> Self {
        Self {
            id: spec.id,
            capability: spec.capability,
            input: spec.input,
            depends_on: spec.depends_on,
            timeout_ms: spec.timeout_ms,
            status: Status::Pending,
            worker: None,
            attempts: 0,
            term: 0,
            tried: Vec::new(),
            restarts: 0,
            output: None,
            applied: None,
            error: None,
            started_ms: None,
            finished_ms: None,
            consensus: None,
        }
    }
}

/// Which attempt a worker's result belongs to, as the result itself says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedResult {
    /// The coordinator term the attempt was dispatched under.
    pub term: i64,
    pub attempt: u32,
    /// The worker that sent the result.
    pub worker: AgentId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub name: String,
    pub pattern: Pattern,
    pub strategy: Strategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `peer_consensus`: peers per subtask.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redundancy: u32,
    /// `peer_consensus`: the consensus algorithm asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<String>,
    pub status: Status,
    /// Every subtask with its output. The task's result is derived from
    /// them ([`TaskRecord::result`]) rather than stored: a copy would
    /// double the record of a task with one large final output.
    pub subtasks: Vec<SubtaskRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Increases with every change, so watchers can resume after the last
    /// revision they saw.
    pub revision: u64,
    /// Times a new coordinator leader took the task over since one of its
    /// subtasks last completed. A task that takes every leader down before
    /// it makes progress would otherwise be resumed, and take the next one
    /// down, forever; the coordinator fails it past a bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumes: u32,
    /// Who submitted the task, for per-client limits and fair dispatch;
    /// kept in the record so a new leader resumes the task under the same
    /// client. Absent from records written before clients were named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientId>,
    /// The authenticated subject that submitted the task, whose submit
    /// token may read and cancel it (see [`crate::access`]). Unlike
    /// [`TaskRecord::client`], which a client may name itself when
    /// authentication is off, it is set only from a verified token; absent
    /// when the task was submitted without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ClientId>,
    /// The client's key for the submit that created the task: a submit of
    /// the same client with the same key returns this task rather than
    /// creating another (see [`super::listing::IdempotencyKey`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<super::listing::IdempotencyKey>,
    /// SHA-256 (hex) of the submitted document, kept with an idempotency
    /// key so that the same key with another document is refused rather
    /// than answered with a task the client did not ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_sha256: Option<String>,
    /// `reactive`: the request, its cache options, and which path
    /// answered it (see [`crate::reactive::provenance`]). Boxed: most
    /// records are of other patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactive: Option<Box<crate::reactive::ReactiveRecord>>,
    /// A natural-language request: how it was decomposed (the subtasks
    /// are its DAG), and its post-processing (see `core::request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Box<crate::request::RequestPlan>>,
}

/// A running attempt that a transition stopped and whose worker should be
/// told to cancel it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedAttempt {
    pub subtask: usize,
    pub worker: AgentId,
    pub attempt: u32,
}

/// What applying a worker's report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The report changed the record.
    Changed,
    /// The report was for an attempt that is no longer current, or for a
    /// task that already ended; it was ignored.
    Stale,
}

impl TaskRecord {
    /// A new pending record for a validated task file.
    pub fn new(id: TaskId, file: TaskFile, now_ms: u64) -> Self {
        let specs = match patterns::rules(file.pattern) {
            Some(rules) => rules.subtasks(&file),
            None => file.tasks.clone(),
        };
        let subtasks = specs.into_iter().map(SubtaskRecord::pending).collect();
        let reactive = (file.pattern == Pattern::Reactive).then(|| {
            let (cache, threshold) = patterns::reactive::cache_options(&file);
            Box::new(crate::reactive::ReactiveRecord::new(
                file.request.clone().unwrap_or_default(),
                cache,
                threshold,
            ))
        });
        Self {
            id,
            name: file.name,
            pattern: file.pattern,
            strategy: file.strategy,
            timeout_ms: file.timeout_ms,
            redundancy: file.redundancy.unwrap_or(0),
            consensus: file.consensus,
            status: Status::Pending,
            subtasks,
            error: None,
            created_ms: now_ms,
            updated_ms: now_ms,
            revision: 1,
            resumes: 0,
            client: None,
            owner: None,
            idempotency_key: None,
            document_sha256: None,
            reactive,
            request: None,
        }
    }

    /// `reactive`: routes the task to `choice` (the runtime's routing
    /// table or provider decided it), replacing the subtask the built-in
    /// table gave, and records how.
    pub fn route_reactive(
        &mut self,
        choice: &crate::reactive::ToolChoice,
        how: impl FnOnce(&mut crate::reactive::ReactiveRecord),
    ) {
        self.subtasks = vec![SubtaskRecord::pending(SubtaskSpec {
            id: patterns::reactive::ANSWER.into(),
            capability: choice.tool.clone(),
            input: choice.input.clone(),
            depends_on: Vec::new(),
            timeout_ms: None,
        })];
        if let Some(reactive) = &mut self.reactive {
            how(reactive);
        }
    }

    /// `reactive`: the cache guard of the routed request (its tool and
    /// input), so only a request routed the same way shares an answer.
    pub fn reactive_guard(&self) -> Option<String> {
        let answer = self.subtasks.first()?;
        Some(crate::reactive::guard(&crate::reactive::ToolChoice {
            tool: answer.capability.clone(),
            input: answer.input.clone(),
            keywords: Vec::new(),
        }))
    }

    /// `reactive`: completes the task at once with `output`, the cached
    /// answer of task `source`, without any attempt: its one subtask is
    /// completed with no worker, and the record says where the answer
    /// came from.
    pub fn answer_from_cache(
        &mut self,
        output: Value,
        similarity: f64,
        source: TaskId,
        now_ms: u64,
    ) {
        for s in &mut self.subtasks {
            s.status = Status::Completed;
            s.output = Some(output.clone());
            s.finished_ms = Some(now_ms);
        }
        if let Some(reactive) = &mut self.reactive {
            reactive.answered_by = crate::reactive::AnswerPath::Cache;
            reactive.similarity = Some(similarity);
            reactive.source = Some(source);
        }
        self.status = Status::Completed;
        self.touch(now_ms);
    }

    pub fn position(&self, subtask_id: &str) -> Option<usize> {
        self.subtasks.iter().position(|s| s.id == subtask_id)
    }

    /// Pending subtasks whose dependencies have all completed.
    pub fn ready(&self) -> Vec<usize> {
        if self.status.is_terminal() {
            return Vec::new();
        }
        let completed: HashSet<&str> = self
            .subtasks
            .iter()
            .filter(|s| s.status == Status::Completed)
            .map(|s| s.id.as_str())
            .collect();
        self.subtasks
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.status == Status::Pending
                    && s.depends_on.iter().all(|d| completed.contains(d.as_str()))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The subtask's input with every reference replaced by earlier
    /// outputs, within `budget` (see [`resolve`]). Outputs are borrowed,
    /// and found through one index rather than a search per reference.
    pub fn resolved_input(
        &self,
        subtask: usize,
        budget: ResolveBudget,
    ) -> Result<Value, ReferenceError> {
        if patterns::rules(self.pattern).is_some_and(|rules| rules.input_as_written()) {
            return Ok(self.subtasks[subtask].input.clone());
        }
        let outputs: HashMap<&str, &Value> = self
            .subtasks
            .iter()
            .filter(|s| s.status == Status::Completed)
            .filter_map(|s| Some((s.id.as_str(), s.output.as_ref()?)))
            .collect();
        let output_of = |id: &str| outputs.get(id).copied();
        resolve(&self.subtasks[subtask].input, &output_of, budget)
    }

    /// Starts a new attempt of a pending subtask on `worker`, under the
    /// coordinator term `term`; returns the attempt number.
    pub fn start_attempt(
        &mut self,
        subtask: usize,
        term: i64,
        worker: AgentId,
        now_ms: u64,
    ) -> u32 {
        let s = &mut self.subtasks[subtask];
        s.status = Status::Running;
        s.attempts += 1;
        s.term = term;
        s.tried.push(worker.clone());
        s.worker = Some(worker);
        s.error = None;
        s.started_ms = Some(now_ms);
        s.finished_ms = None;
        let attempt = s.attempts;
        if self.status == Status::Pending {
            self.status = Status::Running;
        }
        self.touch(now_ms);
        attempt
    }

    fn current(&self, subtask: usize, attempt: u32) -> bool {
        let s = &self.subtasks[subtask];
        !self.status.is_terminal() && s.status == Status::Running && s.attempts == attempt
    }

    /// The worker the current attempt `attempt` of `subtask` was given to,
    /// when an answer to it comes from `worker`, someone else: a forgery
    /// (or a confusion) that must not be applied, whatever it says. `None`
    /// when `worker` is the attempt's, and for an attempt that is not
    /// current (its answer is stale and changes nothing anyway).
    pub fn assigned_elsewhere(
        &self,
        subtask: usize,
        attempt: u32,
        worker: &AgentId,
    ) -> Option<&AgentId> {
        let s = &self.subtasks[subtask];
        if !self.current(subtask, attempt) {
            return None;
        }
        s.worker.as_ref().filter(|assigned| *assigned != worker)
    }

    /// Applies a successful result of attempt `result.attempt`; completes
    /// the task when it was the last subtask. The record keeps `result` as
    /// the subtask's applied result; which term a result may come from is
    /// the coordinator's to check.
    pub fn complete(
        &mut self,
        subtask: usize,
        result: AppliedResult,
        output: Value,
        now_ms: u64,
    ) -> Applied {
        if !self.current(subtask, result.attempt) {
            return Applied::Stale;
        }
        self.resumes = 0;
        let s = &mut self.subtasks[subtask];
        s.status = Status::Completed;
        s.output = Some(output);
        s.applied = Some(result);
        s.finished_ms = Some(now_ms);
        if self.subtasks.iter().all(|s| s.status == Status::Completed) {
            self.post_process();
        }
        self.touch(now_ms);
        Applied::Changed
    }

    /// Applies a failed result of attempt `result.attempt`: fails the
    /// subtask and with it the task, and keeps `result` as the subtask's
    /// applied result; returns the other running attempts, which should be
    /// cancelled.
    pub fn fail(
        &mut self,
        subtask: usize,
        result: AppliedResult,
        error: String,
        now_ms: u64,
    ) -> (Applied, Vec<StoppedAttempt>) {
        let attempt = result.attempt;
        let outcome = self.give_up(subtask, attempt, error, now_ms);
        if outcome.0 == Applied::Changed {
            self.subtasks[subtask].applied = Some(result);
        }
        outcome
    }

    /// Every subtask has completed: a plain task is done; a request is
    /// aggregated and scored, and then waits for a refinement round or a
    /// summary, or is done (see `core::request`).
    fn post_process(&mut self) {
        let Some(plan) = self.request.as_deref_mut() else {
            self.status = Status::Completed;
            return;
        };
        let assessed = crate::request::post::assess(&self.subtasks, plan);
        plan.scores.push(assessed.score);
        plan.judged_by.get_or_insert_with(|| "rules".into());
        plan.result = Some(assessed.result);
        if assessed.refine {
            plan.awaiting = Some(Awaiting::Refinement {
                round: plan.rounds + 1,
            });
            return;
        }
        self.conclude();
    }

    /// The last round is over: a request to summarize waits for its
    /// summary; anything else is done.
    fn conclude(&mut self) {
        if let Some(plan) = self.request.as_deref_mut() {
            if plan.aggregation == Aggregation::Summary && plan.summarized_by.is_none() {
                plan.awaiting = Some(Awaiting::Summary);
                return;
            }
            plan.awaiting = None;
        }
        self.status = Status::Completed;
    }

    /// The step an unfinished request waits for, once all its subtasks
    /// completed (see [`TaskRecord::refine`], [`TaskRecord::summarize`]).
    pub fn awaiting(&self) -> Option<Awaiting> {
        if self.status.is_terminal() {
            return None;
        }
        self.request.as_deref()?.awaiting
    }

    /// Applies refinement round `refinement.round`: its tasks are
    /// appended as pending subtasks (a task that `replaces` a planned one
    /// competes with it, any other joins the plan), or, with none, the
    /// request ends with the result it has. Stale unless the record waits
    /// for exactly this round.
    pub fn refine(&mut self, refinement: Refinement, now_ms: u64) -> Applied {
        let round = refinement.round;
        if self.awaiting() != Some(Awaiting::Refinement { round }) {
            return Applied::Stale;
        }
        let Some(plan) = self.request.as_deref_mut() else {
            return Applied::Stale;
        };
        plan.awaiting = None;
        plan.rounds = round;
        for task in &refinement.tasks {
            match &task.replaces {
                Some(original) => {
                    plan.refined.insert(task.id.clone(), original.clone());
                }
                None => plan.decomposition.tasks.push(task.clone()),
            }
        }
        let specs = refinement.subtasks();
        plan.refinements.push(refinement);
        if specs.is_empty() {
            self.conclude();
        } else {
            self.subtasks
                .extend(specs.into_iter().map(SubtaskRecord::pending));
        }
        self.touch(now_ms);
        Applied::Changed
    }

    /// Completes a request with the summary `text` written by `provider`
    /// (and why a model's was not used, if one was asked). Stale unless
    /// the record waits for its summary.
    pub fn summarize(
        &mut self,
        text: &str,
        provider: String,
        fallback: Option<String>,
        now_ms: u64,
    ) -> Applied {
        if self.awaiting() != Some(Awaiting::Summary) {
            return Applied::Stale;
        }
        let Some(plan) = self.request.as_deref_mut() else {
            return Applied::Stale;
        };
        plan.result = Some(serde_json::json!({
            "summary": crate::task::message::clip(text.trim(), crate::request::MAX_SUMMARY_BYTES)
        }));
        plan.summarized_by = Some(provider);
        plan.summary_fallback = fallback;
        self.conclude();
        self.touch(now_ms);
        Applied::Changed
    }

    /// Fails the subtask, and with it the task, without a result of its
    /// current attempt (its retry budget is spent); returns the other
    /// running attempts, which should be cancelled.
    pub fn give_up(
        &mut self,
        subtask: usize,
        attempt: u32,
        error: String,
        now_ms: u64,
    ) -> (Applied, Vec<StoppedAttempt>) {
        if !self.current(subtask, attempt) {
            return (Applied::Stale, Vec::new());
        }
        let s = &mut self.subtasks[subtask];
        s.status = Status::Failed;
        s.finished_ms = Some(now_ms);
        let worker = s
            .worker
            .as_ref()
            .map_or("no worker".to_owned(), |w| format!("worker '{w}'"));
        let message = format!(
            "subtask '{}' failed on {worker} (attempt {attempt}): {error}",
            s.id
        );
        s.error = Some(error);
        let stopped = self.finish(Status::Failed, message, now_ms);
        (Applied::Changed, stopped)
    }

    /// Fails a pending subtask that could not be started (for instance,
    /// because its input references could not be resolved).
    pub fn fail_unstarted(
        &mut self,
        subtask: usize,
        error: String,
        now_ms: u64,
    ) -> Vec<StoppedAttempt> {
        let s = &mut self.subtasks[subtask];
        s.status = Status::Failed;
        s.finished_ms = Some(now_ms);
        let message = format!("subtask '{}' could not start: {error}", s.id);
        s.error = Some(error);
        self.finish(Status::Failed, message, now_ms)
    }

    /// Puts a running attempt back to pending, to be dispatched again (its
    /// worker was lost or unreachable).
    pub fn requeue(
        &mut self,
        subtask: usize,
        attempt: u32,
        reason: String,
        now_ms: u64,
    ) -> Applied {
        if !self.current(subtask, attempt) {
            return Applied::Stale;
        }
        let s = &mut self.subtasks[subtask];
        s.status = Status::Pending;
        s.error = Some(reason);
        self.touch(now_ms);
        Applied::Changed
    }

    /// Takes over the record from a coordinator that is gone: every running
    /// attempt goes back to pending (a result of it is stale from now on,
    /// as its attempt number is no longer current) and counts as a restart,
    /// not against the retry budget. Returns the subtasks ready to run, and
    /// leaves completed subtasks alone so they are not run again. Counts
    /// the takeover in `resumes`.
    pub fn resume(&mut self, reason: &str, now_ms: u64) -> Vec<usize> {
        if self.status.is_terminal() {
            return Vec::new();
        }
        self.resumes = self.resumes.saturating_add(1);
        for s in &mut self.subtasks {
            if s.status == Status::Running {
                s.status = Status::Pending;
                s.restarts += 1;
                s.error = Some(reason.to_owned());
            }
        }
        self.touch(now_ms);
        self.ready()
    }

    /// Excuses the current attempt of a subtask from the retry budget: it
    /// ended through no fault of the subtask or its worker (handed back by
    /// a draining or full worker). Stale attempts are not excused.
    pub fn excuse(&mut self, subtask: usize, attempt: u32) -> Applied {
        if !self.current(subtask, attempt) {
            return Applied::Stale;
        }
        self.subtasks[subtask].restarts += 1;
        Applied::Changed
    }

    /// Attempts of a subtask that count against its retry budget.
    pub fn budgeted_attempts(&self, subtask: usize) -> u32 {
        let s = &self.subtasks[subtask];
        s.attempts.saturating_sub(s.restarts)
    }

    /// Cancels the task; returns the running attempts to stop.
    pub fn cancel(&mut self, reason: String, now_ms: u64) -> Vec<StoppedAttempt> {
        if self.status.is_terminal() {
            return Vec::new();
        }
        self.finish(Status::Cancelled, reason, now_ms)
    }

    /// Fails the task because it was resumed more than `max_resumes` times
    /// without progress; returns the running attempts to stop. `None`, and
    /// nothing changed, when it is within the bound.
    pub fn fail_crash_loop(
        &mut self,
        max_resumes: u32,
        now_ms: u64,
    ) -> Option<Vec<StoppedAttempt>> {
        if self.status.is_terminal() || self.resumes <= max_resumes {
            return None;
        }
        let reason = format!(
            "task was resumed {} times by new coordinator leaders without a subtask finishing, over the limit --max-task-resumes = {max_resumes}; failed to protect the cluster",
            self.resumes
        );
        Some(self.finish(Status::Failed, reason, now_ms))
    }

    /// Fails the task because its time limit passed; returns the running
    /// attempts to stop.
    pub fn time_out(&mut self, reason: String, now_ms: u64) -> Vec<StoppedAttempt> {
        if self.status.is_terminal() {
            return Vec::new();
        }
        self.finish(Status::Failed, reason, now_ms)
    }

    /// Ends the task in `status`, cancelling every subtask not yet ended.
    fn finish(&mut self, status: Status, error: String, now_ms: u64) -> Vec<StoppedAttempt> {
        let mut stopped = Vec::new();
        for (i, s) in self.subtasks.iter_mut().enumerate() {
            if s.status.is_terminal() {
                continue;
            }
            if s.status == Status::Running {
                if let Some(worker) = s.worker.clone() {
                    stopped.push(StoppedAttempt {
                        subtask: i,
                        worker,
                        attempt: s.attempts,
                    });
                }
                s.finished_ms = Some(now_ms);
            }
            s.status = Status::Cancelled;
        }
        self.status = status;
        self.error = Some(error);
        self.touch(now_ms);
        stopped
    }

    /// The result of a completed task: the output of its final subtask, or
    /// an object of the outputs of every final subtask (one no other
    /// subtask depends on) when there are several. `None` until the task
    /// has completed.
    pub fn result(&self) -> Option<Value> {
        if let Some(result) = self.request.as_ref().and_then(|p| p.result.clone()) {
            return (self.status == Status::Completed).then_some(result);
        }
        (self.status == Status::Completed).then(|| self.aggregate())
    }

    /// The record's size as the registry stores it (compact JSON).
    pub fn encoded_len(&self) -> usize {
        encoded_len(self)
    }

    /// Fails the task because its record, at `bytes`, is over
    /// `limits.max_record_bytes`, and shrinks the record to fit: the
    /// subtasks' outputs are left out, then, should that not be enough,
    /// error messages are cut short and the inputs left out too. Works on
    /// an ended task as well (a completion can be what outgrew the budget).
    /// Returns the running attempts to stop.
    pub fn fail_over_budget(
        &mut self,
        bytes: usize,
        limits: &RecordLimits,
        now_ms: u64,
    ) -> Vec<StoppedAttempt> {
        let over = BudgetError::RecordTooLarge {
            bytes,
            budget: limits.max_record_bytes,
        };
        let largest = self
            .subtasks
            .iter()
            .filter_map(|s| Some((s.id.as_str(), encoded_len(s.output.as_ref()?))))
            .max_by_key(|(_, len)| *len);
        let message = match largest {
            Some((id, len)) => format!(
                "{over}; the largest output is subtask '{id}''s, {len} bytes; outputs are left out of the record"
            ),
            None => format!("{over}; outputs are left out of the record"),
        };
        self.fail_shrunk(message, limits.max_record_bytes, now_ms)
    }

    /// Fails the task because the registry refused its record for good
    /// (`reason`), and strips the record to its skeleton — no outputs, no
    /// inputs, errors cut short — so that the failure itself can be
    /// written. Returns the running attempts to stop.
    pub fn fail_unwritable(&mut self, reason: &str, now_ms: u64) -> Vec<StoppedAttempt> {
        let message = format!("{reason}; outputs are left out of the record");
        self.fail_shrunk(message, 0, now_ms)
    }

    /// Whether the record is a failed skeleton already: no output and no
    /// input is left to shed.
    pub fn is_stripped(&self) -> bool {
        self.status == Status::Failed
            && self
                .subtasks
                .iter()
                .all(|s| s.output.is_none() && s.consensus.is_none() && s.input.is_null())
    }

    /// Fails the task with `message` and sheds what the record holds, in
    /// order of how little it matters to a reader of a failed task, until
    /// it is at most `target` bytes: outputs, then the length of error
    /// messages, then inputs.
    fn fail_shrunk(
        &mut self,
        mut message: String,
        target: usize,
        now_ms: u64,
    ) -> Vec<StoppedAttempt> {
        for s in &mut self.subtasks {
            s.output = None;
            s.consensus = None;
        }
        let stopped = self.finish(Status::Failed, message.clone(), now_ms);
        if self.encoded_len() <= target {
            return stopped;
        }
        for s in &mut self.subtasks {
            s.error = s.error.as_deref().map(|e| truncated(e, SHRUNK_ERROR_BYTES));
        }
        self.error = Some(truncated(&message, SHRUNK_ERROR_BYTES));
        if self.encoded_len() <= target {
            return stopped;
        }
        for s in &mut self.subtasks {
            s.input = Value::Null;
        }
        message.push_str(", and so are inputs");
        self.error = Some(truncated(&message, SHRUNK_ERROR_BYTES));
        stopped
    }

    fn aggregate(&self) -> Value {
        let depended_on: HashSet<&str> = self
            .subtasks
            .iter()
            .flat_map(|s| s.depends_on.iter().map(String::as_str))
            .collect();
        let sinks: Vec<&SubtaskRecord> = self
            .subtasks
            .iter()
            .filter(|s| !depended_on.contains(s.id.as_str()))
            .collect();
        match sinks.as_slice() {
            [only] => only.output.clone().unwrap_or(Value::Null),
            many => Value::Object(
                many.iter()
                    .map(|s| (s.id.clone(), s.output.clone().unwrap_or(Value::Null)))
                    .collect::<Map<_, _>>(),
            ),
        }
    }

    fn touch(&mut self, now_ms: u64) {
        self.updated_ms = self.updated_ms.max(now_ms);
        self.revision += 1;
    }
}

/// The capability of a hierarchical task's plan: what a strategic-level
/// agent offers.
pub const STRATEGIC_PLAN: &str = "hierarchy.strategic";
/// What a tactical-level agent offers.
pub const TACTICAL_OBJECTIVE: &str = "hierarchy.tactical";

/// What is kept of each error message when a record over its budget is
/// shrunk.
const SHRUNK_ERROR_BYTES: usize = 1024;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_term(term: &i64) -> bool {
    *term == 0
}

#[cfg(test)]
mod tests;
