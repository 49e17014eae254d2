//! Task and attempt deadlines, checked on every tick.

use agentmesh_core::task::Status;
use agentmesh_core::{AgentId, TaskId};

use super::CoordinatorState;
use crate::node::config::ATTEMPT_GRACE;
use crate::support::clock::now_ms;

impl CoordinatorState {
    /// Ends tasks past their time limit, and starts again elsewhere the
    /// attempts that went too long without a result.
    pub(super) async fn check_deadlines(&mut self) {
        let now = now_ms();
        let expired: Vec<(TaskId, u64)> = self
            .tasks
            .values()
            .filter_map(|r| {
                let timeout = r.timeout_ms?;
                (now >= r.created_ms + timeout).then(|| (r.id.clone(), timeout))
            })
            .collect();
        for (id, timeout) in expired {
            if let Some(record) = self.tasks.get_mut(&id) {
                let stopped = record.time_out(format!("task timed out after {timeout} ms"), now);
                self.stop_attempts(&id, stopped);
                self.finish_change(&id).await;
            }
        }
        let default_limit = self.config.attempt_timeout.as_millis() as u64;
        let overdue: Vec<(TaskId, usize, u32, AgentId, u64)> = self
            .tasks
            .values()
            .flat_map(|record| {
                record
                    .subtasks
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, s)| {
                        let limit = s
                            .timeout_ms
                            .map_or(default_limit, |t| t + ATTEMPT_GRACE.as_millis() as u64);
                        let started = s.started_ms?;
                        let worker = s.worker.clone()?;
                        (s.status == Status::Running && now >= started + limit)
                            .then(|| (record.id.clone(), i, s.attempts, worker, limit))
                    })
            })
            .collect();
        for (task, subtask, attempt, worker, limit) in overdue {
            self.send_cancel(
                &task,
                subtask,
                attempt,
                &worker,
                "no result in time; started elsewhere",
            );
            let reason = format!("no result from worker '{worker}' within {limit} ms");
            // A worker that lets an attempt run out is at fault: every
            // result, failed ones included, is reported at once.
            self.pool.fault(&worker, now);
            self.retry(&task, subtask, attempt, reason).await;
        }
    }
}
