//! `agentmesh local`: a coordinator and workers in one process, started by
//! [`NodeBuilder::local`](super::NodeBuilder::local).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;

use agentmesh_core::events::{DeadLetter, EventDraft, HandlerSpec, handler};
use agentmesh_core::task::TaskRecord;
use agentmesh_core::task::listing::{MAX_PAGE_SIZE, TaskFilter, TaskQuery};
use agentmesh_registry::Registry;

use super::RunningAgents;
use super::agents::Spawner;
use crate::api::error::ApiError;
use crate::api::events::EventApi;
use crate::api::task::TaskApi;

/// How long an embedded cluster's workers may finish running subtasks
/// when it shuts down.
const LOCAL_DRAIN: Duration = Duration::from_secs(5);
/// How often [`LocalCluster::handle_events`] looks whether the handlers
/// are done: in-memory reads, so cheap.
const EVENT_POLL: Duration = Duration::from_millis(50);
/// The source of events published by `agentmesh local --publish`.
const LOCAL_SOURCE: &str = "local";

/// One published event and how each of its deliveries ended.
#[derive(Debug, Clone)]
pub struct HandledEvent {
    pub event_id: String,
    pub draft: EventDraft,
    /// Every subscription the event went to, with its dead letter when the
    /// delivery ran out of attempts.
    pub deliveries: Vec<(String, Option<DeadLetter>)>,
}

/// What [`LocalCluster::handle_events`] saw once every handler was done.
#[derive(Debug, Clone)]
pub struct HandledEvents {
    pub events: Vec<HandledEvent>,
    /// The tasks the handlers ran (the embedded cluster runs nothing
    /// else), ended, newest first.
    pub tasks: Vec<TaskRecord>,
}

impl HandledEvents {
    /// Every delivery acknowledged and every handler task completed.
    pub fn succeeded(&self) -> bool {
        self.events
            .iter()
            .flat_map(|e| &e.deliveries)
            .all(|(_, dead)| dead.is_none())
            && self
                .tasks
                .iter()
                .all(|t| t.status == agentmesh_core::task::Status::Completed)
    }
}

/// A running embedded cluster.
pub struct LocalCluster {
    api: TaskApi,
    events: EventApi,
    registry: Arc<dyn Registry>,
    spawner: Spawner,
    running: RunningAgents,
    metrics_addr: Option<SocketAddr>,
}

impl LocalCluster {
    pub(super) fn new(
        api: TaskApi,
        events: EventApi,
        registry: Arc<dyn Registry>,
        spawner: Spawner,
        running: RunningAgents,
        metrics_addr: Option<SocketAddr>,
    ) -> Self {
        Self {
            api,
            events,
            registry,
            spawner,
            running,
            metrics_addr,
        }
    }

    pub fn api(&self) -> &TaskApi {
        &self.api
    }

    /// Where metrics are served (`--metrics-listen`), once bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Submits a task document and waits for its terminal record.
    pub async fn run(&self, document: &str) -> Result<TaskRecord, ApiError> {
        Ok(Arc::unwrap_or_clone(self.api.run(document).await?))
    }

    /// Publishes `drafts` through the embedded coordinator's router and
    /// waits until every delivery settled (acknowledged or dead-lettered)
    /// and every task the handlers started ended. `handlers` are the
    /// workers' declarations: an event none of them takes is refused
    /// rather than waited on. Unbounded: the caller puts a timeout on it.
    pub async fn handle_events(
        &self,
        drafts: Vec<EventDraft>,
        handlers: &[HandlerSpec],
    ) -> Result<HandledEvents, ApiError> {
        let mut events = Vec::with_capacity(drafts.len());
        for draft in drafts {
            self.events.check(&draft)?;
            if handler::matching(handlers, &draft.event_type).is_empty() {
                return Err(ApiError::InvalidArgument(format!(
                    "no --event-handler takes events of type {:?}",
                    draft.event_type
                )));
            }
            let published = loop {
                let published = self
                    .events
                    .publish(draft.clone(), LOCAL_SOURCE.to_owned())
                    .await?;
                if !published.subscriptions.is_empty() {
                    break published;
                }
                // The router learns of the workers' handlers from the
                // membership a moment after it starts leading; an event
                // it found no handler for was not stored, so it is sent
                // again.
                tokio::time::sleep(EVENT_POLL).await;
            };
            events.push((published, draft));
        }
        let ids: HashSet<&str> = events.iter().map(|(p, _)| p.event_id.as_str()).collect();
        let tasks = loop {
            let settled = !self
                .registry
                .pending_events()
                .await?
                .iter()
                .any(|record| ids.contains(record.event.id.as_str()));
            if settled {
                let query = TaskQuery::new(TaskFilter::default(), None, MAX_PAGE_SIZE);
                let tasks = self.api.list(&query).await?.records;
                if tasks.iter().all(|t| t.status.is_terminal()) {
                    break tasks;
                }
            }
            tokio::time::sleep(EVENT_POLL).await;
        };
        let dead = self.registry.dead_letters(usize::MAX).await?;
        let events = events
            .into_iter()
            .map(|(published, draft)| HandledEvent {
                deliveries: published
                    .subscriptions
                    .iter()
                    .map(|subscription| {
                        let letter = dead.iter().find(|d| {
                            d.event.id == published.event_id
                                && d.subscription.as_str() == subscription
                        });
                        (subscription.clone(), letter.cloned())
                    })
                    .collect(),
                event_id: published.event_id,
                draft,
            })
            .collect();
        Ok(HandledEvents { events, tasks })
    }

    /// Resolves with the reason once an agent of the cluster has failed.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        self.spawner.failed()
    }

    /// Stops in order: the coordinator steps down (its queued records
    /// land), workers finish or hand back what they run, then every actor
    /// and background task stops.
    pub async fn shutdown(self) {
        self.running.leave(&self.spawner, LOCAL_DRAIN).await;
        self.spawner.router().shutdown(LOCAL_DRAIN).await;
        self.spawner.stop(LOCAL_DRAIN).await;
    }
}
