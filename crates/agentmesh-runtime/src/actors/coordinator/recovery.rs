//! Taking tasks over and letting them go: leadership won and lost, agents
//! that left, links that broke.

use std::sync::Arc;

use agentmesh_core::task::{Status, TaskRecord};
use agentmesh_core::{AgentId, Membership, TaskId};
use agentmesh_registry::Leadership;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::pools::Pools;
use super::retention::{Retention, RetentionPolicy};
use super::writer::WriterLimits;
use super::{CoordinatorMessage, CoordinatorState, RecordWriter, WRITER_FINISH_TIMEOUT};
use crate::metrics;
use crate::support::clock::now_ms;
use crate::transport::BrokenLink;

impl CoordinatorState {
    /// Takes over as leader: every unfinished task is resumed from its
    /// durable record — completed subtasks stay done, running ones start
    /// again (a restart, outside their retry budget) — and owned from now
    /// on. Resumed work is never refused for lack of room: it was accepted
    /// before, so the queue bounds may be exceeded until it drains.
    ///
    /// Each takeover is counted in the record, and the count is durable
    /// before any of the task's work is done again (its subtasks wait for
    /// [`CoordinatorMessage::Resumed`]): should that work take this leader
    /// down, the next one sees the count. A task taken over more than
    /// `max_task_resumes` times without a subtask completing is failed
    /// instead of resumed, so it cannot take every leader down in turn.
    pub(super) async fn lead(&mut self, leadership: Leadership, tasks: Vec<TaskRecord>) {
        if self.writer.is_some() {
            self.relinquish().await;
        }
        let fence = leadership.fence.revision;
        self.term = fence;
        metrics::leading(Some(fence));
        self.retention = Some(Retention::spawn(
            self.registry.clone(),
            leadership.clone(),
            RetentionPolicy {
                keep_for: self.config.task_retention,
                max_ended: self.config.max_ended_tasks,
            },
            self.hub.clone(),
        ));
        self.events = Some(super::events::EventRouterHandle::spawn(
            self.id.clone(),
            self.registry.clone(),
            self.router.clone(),
            leadership.clone(),
            self.config.events.clone(),
            super::events::HandlerTasks {
                limits: self.config.limits.clone(),
                routing_table: self.config.routing_table.clone(),
            },
            self.myself.clone(),
        ));
        let refusals = self.myself.clone();
        let writer = RecordWriter::spawn(
            self.registry.clone(),
            leadership,
            WriterLimits {
                batch: self.config.write_batch,
                batch_bytes: self.config.write_batch_bytes,
                concurrency: self.config.write_concurrency,
            },
            self.hub.clone(),
            Arc::new(move |refused| {
                let _ = refusals.cast(CoordinatorMessage::RecordRefused(refused));
            }),
        );
        let now = now_ms();
        let resumed = tasks.len();
        let (mut restarted, mut crash_looped) = (0, 0);
        for mut record in tasks {
            restarted += record
                .subtasks
                .iter()
                .filter(|s| s.status == Status::Running)
                .count();
            record.resume("the coordinator leader changed; started again", now);
            let id = record.id.clone();
            if record
                .fail_crash_loop(self.config.max_task_resumes, now)
                .is_some()
            {
                warn!(task_id = %id, resumes = record.resumes, limit = self.config.max_task_resumes, "task resumed too often without progress: failed to protect the cluster");
                crash_looped += 1;
                let bytes = record.encoded_len();
                writer.write(Arc::new(record), bytes, None).await;
                continue;
            }
            let (ack, durable) = oneshot::channel();
            let bytes = record.encoded_len();
            writer
                .write(Arc::new(record.clone()), bytes, Some(ack))
                .await;
            self.tasks.insert(id.clone(), record);
            let coordinator = self.myself.clone();
            self.router
                .background()
                .spawn("resumed record durable", async move {
                    if let Ok(Ok(())) = durable.await {
                        let _ = coordinator.cast(CoordinatorMessage::Resumed {
                            task: id,
                            term: fence,
                        });
                    }
                });
        }
        self.writer = Some(writer);
        info!(
            fence,
            tasks = resumed,
            restarted_subtasks = restarted,
            failed_crash_looping = crash_looped,
            at_ms = now,
            "coordinator leadership won: resuming unfinished tasks"
        );
    }

    /// Queues the ready subtasks of a task whose resumed record is durable.
    pub(super) fn resumed(&mut self, id: &TaskId, term: i64) {
        if term != self.term {
            return;
        }
        let Some(record) = self.tasks.get(id) else {
            return;
        };
        let ready = record.ready();
        self.queue
            .extend(ready.into_iter().map(|i| (id.clone(), i)));
        // A request that was waiting for its planner is asked again.
        self.think(id);
    }

    /// Stops leading: forgets every task, its queue and its placements.
    /// Waits for the records already handed to the writer (written, or
    /// refused by the fence) before the hub forgets, so no record of the
    /// old term lands in the hub afterwards.
    pub(super) async fn relinquish(&mut self) {
        // Dropping the sweeper and the event router stops them.
        self.retention = None;
        self.events = None;
        let Some(writer) = self.writer.take() else {
            return;
        };
        metrics::leading(None);
        let dropped = self.tasks.len();
        self.tasks.clear();
        self.traces.clear();
        self.thinking.clear();
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
