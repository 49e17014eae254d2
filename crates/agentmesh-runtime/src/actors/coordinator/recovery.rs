//! Taking tasks over and letting them go: leadership won and lost, agents
//! that left, links that broke.

use std::sync::Arc;

use agentmesh_core::task::{Status, TaskRecord};
use agentmesh_core::{AgentId, Membership, TaskId};
use agentmesh_registry::Leadership;
use tracing::{info, warn};

use super::pools::Pools;
use super::retention::{Retention, RetentionPolicy};
use super::{CoordinatorState, RecordWriter, WRITER_FINISH_TIMEOUT};
use crate::support::clock::now_ms;
use crate::transport::BrokenLink;

impl CoordinatorState {
    /// Takes over as leader: every unfinished task is resumed from its
    /// durable record — completed subtasks stay done, running ones start
    /// again (a restart, outside their retry budget) — and owned from now
    /// on. Resumed work is never refused for lack of room: it was accepted
    /// before, so the queue bounds may be exceeded until it drains.
    pub(super) async fn lead(&mut self, leadership: Leadership, tasks: Vec<TaskRecord>) {
        if self.writer.is_some() {
            self.relinquish().await;
        }
        let fence = leadership.fence.revision;
        self.term = fence;
        self.retention = Some(Retention::spawn(
            self.registry.clone(),
            leadership.clone(),
            RetentionPolicy {
                keep_for: self.config.task_retention,
                max_ended: self.config.max_ended_tasks,
            },
            self.hub.clone(),
        ));
        self.writer = Some(RecordWriter::spawn(
            self.registry.clone(),
            leadership,
            self.config.write_batch,
            self.config.write_concurrency,
            self.hub.clone(),
        ));
        let now = now_ms();
        let resumed = tasks.len();
        let mut restarted = 0;
        for mut record in tasks {
            let running = record
                .subtasks
                .iter()
                .filter(|s| s.status == Status::Running)
                .count();
            restarted += running;
            let ready = record.resume("the coordinator leader changed; started again", now);
            let id = record.id.clone();
            self.queue
                .extend(ready.into_iter().map(|i| (id.clone(), i)));
            if running > 0 {
                self.tasks.insert(id.clone(), record);
                self.finish_change(&id).await;
            } else {
                // Unchanged and durable as it is.
                self.hub.publish(Arc::new(record.clone()));
                self.tasks.insert(id, record);
            }
        }
        info!(
            fence,
            tasks = resumed,
            restarted_subtasks = restarted,
            at_ms = now,
            "coordinator leadership won: resuming unfinished tasks"
        );
    }

    /// Stops leading: forgets every task, its queue and its placements.
    /// Waits for the records already handed to the writer (written, or
    /// refused by the fence) before the hub forgets, so no record of the
    /// old term lands in the hub afterwards.
    pub(super) async fn relinquish(&mut self) {
        // Dropping the sweeper stops it.
        self.retention = None;
        let Some(writer) = self.writer.take() else {
            return;
        };
        let dropped = self.tasks.len();
        self.tasks.clear();
        self.queue.clear();
        self.backoff.clear();
        self.pool = Pools::new(&self.config, &self.membership);
        writer.finish(WRITER_FINISH_TIMEOUT).await;
        self.hub.forget_unfinished();
        info!(
            tasks = dropped,
            "no longer the coordinator leader: tasks left to the next leader"
        );
    }

    pub(super) async fn membership_changed(&mut self, view: &Arc<Membership>) {
        self.membership = view.clone();
        let gone = self.pool.sync(view);
        if gone.is_empty() {
            return;
        }
        let lost = self.running_on(|worker| gone.contains(worker));
        for (task, subtask, attempt, worker) in lost {
            self.retry(
                &task,
                subtask,
                attempt,
                format!("worker '{worker}' left the cluster"),
            )
            .await;
        }
    }

    /// Starts again elsewhere every attempt running on a node whose
    /// connection failed — typically a killed process, noticed long before
    /// its lease runs out. Should the node be alive after all, its late
    /// results are stale and ignored.
    pub(super) async fn link_broken(&mut self, link: BrokenLink) {
        let workers: Vec<&AgentId> = self
            .membership
            .agents
            .values()
            .filter(|agent| agent.endpoint == link.endpoint)
            .map(|agent| &agent.id)
            .collect();
        if workers.is_empty() {
            return;
        }
        let now = now_ms();
        let workers: Vec<AgentId> = workers.into_iter().cloned().collect();
        for worker in &workers {
            self.pool.trip(worker, now);
        }
        let lost = self.running_on(|worker| workers.contains(worker));
        warn!(
            endpoint = %link.endpoint,
            reason = %link.reason,
            workers = workers.len(),
            attempts = lost.len(),
            "link to a node broke: its workers sit out a cool-down, their attempts start elsewhere"
        );
        for (task, subtask, attempt, worker) in lost {
            let reason = format!(
                "connection to worker '{worker}' at {} failed: {}",
                link.endpoint, link.reason
            );
            self.retry(&task, subtask, attempt, reason).await;
        }
    }

    /// Takes the worker of a subtask's current attempt out of placement
    /// for a breaker cool-down: it could not be reached.
    pub(super) fn trip_worker_of(&mut self, task: &TaskId, subtask: usize) {
        let worker = self
            .tasks
            .get(task)
            .and_then(|record| record.subtasks[subtask].worker.clone());
        if let Some(worker) = worker {
            warn!(worker = %worker, "worker unreachable: out of placement for a cool-down");
            self.pool.trip(&worker, now_ms());
        }
    }

    /// The running attempts on the workers `on` selects.
    pub(super) fn running_on(
        &self,
        on: impl Fn(&AgentId) -> bool,
    ) -> Vec<(TaskId, usize, u32, AgentId)> {
        self.tasks
            .values()
            .flat_map(|record| {
                record.subtasks.iter().enumerate().filter_map(|(i, s)| {
                    let worker = s.worker.as_ref()?;
                    (s.status == Status::Running && on(worker))
                        .then(|| (record.id.clone(), i, s.attempts, worker.clone()))
                })
            })
            .collect()
    }
}
