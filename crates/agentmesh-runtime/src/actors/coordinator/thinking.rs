//! The steps of a natural-language request that may ask a model, once all
//! its subtasks completed (docs/requests.md): the tasks of a refinement
//! round, and the summary of `aggregation: summary`. The record says which
//! step it waits for (`TaskRecord::awaiting`, durable, so a new leader
//! asks again); the node's [`RequestPlanner`] is asked off the actor, the
//! built-in rules answering without a model, and its answer comes back as
//! [`CoordinatorMessage::Thought`] to be applied by the record's pure
//! transition.

use agentmesh_core::TaskId;
use agentmesh_core::request::{Awaiting, Refinement, post};
use agentmesh_core::task::record::Applied;
use tracing::{debug, info};

use super::{CoordinatorMessage, CoordinatorState};
use crate::api::request::RequestPlanner;
use crate::support::clock::now_ms;

/// What a request's planner answered.
#[derive(Debug)]
pub enum Thought {
    Refinement(Refinement),
    Summary {
        text: String,
        provider: String,
        fallback: Option<String>,
    },
}

impl CoordinatorState {
    /// Asks for what task `id` waits for, unless it waits for nothing or
    /// was asked already in this term.
    pub(super) fn think(&mut self, id: &TaskId) {
        let Some(record) = self.tasks.get(id) else {
            return;
        };
        let (Some(step), Some(plan)) = (record.awaiting(), record.request.as_deref()) else {
            return;
        };
        if !self.thinking.insert(id.clone()) {
            return;
        }
        let planner = RequestPlanner {
            options: self.config.requests.clone(),
        };
        let chat = self.providers.chat.clone();
        let (coordinator, task, term) = (self.myself.clone(), id.clone(), self.term);
        let reply = move |thought| {
            // A coordinator that stopped has no use for it.
            let _ = coordinator.cast(CoordinatorMessage::Thought {
                task,
                term,
                thought,
            });
        };
        let background = self.router.background();
        match step {
            Awaiting::Refinement { round } => {
                let review = post::review(&record.subtasks, plan, &record.name);
                let (limits, membership) = (self.config.limits.clone(), self.membership.clone());
                debug!(task_id = %id, round, "asking for a refinement round");
                background.spawn("request refinement", async move {
                    let round = planner
                        .refine(chat.as_ref(), &review, &limits, &membership)
                        .await;
                    reply(Thought::Refinement(round));
                });
            }
            Awaiting::Summary => {
                let outputs = post::outputs(&record.subtasks, plan);
                let request = plan.request.clone();
                background.spawn("request summary", async move {
                    let (text, provider, fallback) =
                        planner.summarize(chat.as_ref(), &request, &outputs).await;
                    reply(Thought::Summary {
                        text,
                        provider,
                        fallback,
                    });
                });
            }
        }
    }

    /// Applies a planner's answer for task `task`, asked in `term`: the
    /// round's subtasks are queued, or the task ends.
    pub(super) async fn thought(&mut self, task: TaskId, term: i64, thought: Thought) {
        if term != self.term {
            debug!(task_id = %task, term, "a planner's answer of an earlier term: ignored");
            return;
        }
        self.thinking.remove(&task);
        let Some(record) = self.tasks.get_mut(&task) else {
            return;
        };
        let planned = record.subtasks.len();
        let applied = match thought {
            Thought::Refinement(round) => {
                info!(
                    task_id = %task,
                    round = round.round,
                    tasks = round.tasks.len(),
                    provider = %round.provider,
                    fallback = round.fallback.as_deref().unwrap_or(""),
                    "refinement round planned"
                );
                record.refine(round, now_ms())
            }
            Thought::Summary {
                text,
                provider,
                fallback,
            } => record.summarize(&text, provider, fallback, now_ms()),
        };
        if applied == Applied::Stale {
            debug!(task_id = %task, "a planner's answer the task no longer waits for: ignored");
            return;
        }
        let added: Vec<usize> = record
            .ready()
            .into_iter()
            .filter(|&i| i >= planned)
            .collect();
        self.queue
            .extend(added.into_iter().map(|i| (task.clone(), i)));
        self.finish_change(&task).await;
    }
}
