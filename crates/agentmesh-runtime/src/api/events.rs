//! `EventService`: publish events and list dead letters (docs/events.md).
//!
//! `Publish` needs a `submit` or `admin` token and is handled by the
//! leader: a follower forwards it, one hop, as `TaskService.Submit` is
//! (see [`super::forward`]). The event is checked against its bounds
//! before anything else. `ListDeadLetters` needs `read` or `admin` and is
//! answered from the store by any coordinator.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::access::Action;
use agentmesh_core::events::{EventDraft, EventLimits};
use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::event_service_server::{EventService, EventServiceServer, SERVICE_NAME};
use agentmesh_registry::Registry;
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::client;
use super::error::ApiError;
use super::forward::{self, Forwarder, Route};
use super::task::TaskApi;
use crate::actors::coordinator::CoordinatorMessage;
use crate::actors::coordinator::events::{PublishError, Published};
use crate::convert;
use crate::transport::channel::Security;

/// Dead letters listed when the request asks for none in particular.
const DEFAULT_DEAD_LETTERS: usize = 100;
/// Dead letters listed at most per call.
const MAX_DEAD_LETTERS: usize = 1000;
/// Bytes of one dead letter's payload sent as a structured value.
const PAYLOAD_BUDGET: usize = 256 * 1024;
/// How long the leader has to make a published event durable.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The logic of `EventService`, callable in-process (`agentmesh local`).
#[derive(Clone)]
pub struct EventApi {
    tasks: TaskApi,
    registry: Arc<dyn Registry>,
    limits: EventLimits,
}

impl EventApi {
    pub fn new(tasks: TaskApi, registry: Arc<dyn Registry>, limits: EventLimits) -> Self {
        Self {
            tasks,
            registry,
            limits,
        }
    }

    /// Checks `draft` against the bounds; the payload's size.
    pub fn check(&self, draft: &EventDraft) -> Result<usize, ApiError> {
        draft
            .check(&self.limits)
            .map_err(|e| ApiError::Publish(PublishError::Invalid(e)))
    }

    /// Publishes on the leader here; returns once the event is durable.
    pub async fn publish(&self, draft: EventDraft, source: String) -> Result<Published, ApiError> {
        self.check(&draft)?;
        let coordinator = match self.tasks.route().await? {
            Route::Here => self.tasks.local_actor()?,
            Route::Leader { id, .. } => return Err(ApiError::NotLeader(id)),
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        coordinator
            .cast(CoordinatorMessage::PublishEvent {
                draft,
                source,
                reply,
            })
            .map_err(|e| ApiError::Coordinator(e.to_string()))?;
        match tokio::time::timeout(PUBLISH_TIMEOUT, answer).await {
            Ok(Ok(answer)) => Ok(answer?),
            Ok(Err(_)) => Err(PublishError::NotLeader.into()),
            Err(_) => Err(ApiError::Coordinator(format!(
                "event not accepted within {PUBLISH_TIMEOUT:?}"
            ))),
        }
    }

    /// At most `limit` dead letters (0: the default), newest first.
    pub async fn dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<agentmesh_core::events::DeadLetter>, ApiError> {
        let limit = match limit {
            0 => DEFAULT_DEAD_LETTERS,
            n => n.min(MAX_DEAD_LETTERS),
        };
        Ok(self.registry.dead_letters(limit).await?)
    }
}

/// The gRPC face of [`EventApi`].
pub struct EventGrpc {
    api: EventApi,
    auth: Authenticator,
    forwarder: Forwarder,
}

impl EventGrpc {
    pub fn server(
        api: EventApi,
        auth: Authenticator,
        max_message_bytes: usize,
        security: Security,
    ) -> EventServiceServer<Self> {
        EventServiceServer::new(Self {
            api,
            auth: auth.for_service(SERVICE_NAME),
            forwarder: Forwarder::new(max_message_bytes, security),
        })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes + MAX_DEAD_LETTERS * 1024 + PAYLOAD_BUDGET)
    }
}

#[tonic::async_trait]
impl EventService for EventGrpc {
    async fn publish(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> Result<Response<pb::PublishEventReply>, Status> {
        let caller = self.auth.authenticate(&request).map_err(ApiError::from)?;
        caller
            .authorize(Action::PublishEvent)
            .map_err(ApiError::from)?;
        let publisher = match &caller.principal {
            Some(principal) => principal.subject.clone(),
            None => client::identify(&request)?,
        };
        let body = request.get_ref();
        let payload = match &body.payload {
            Some(value) => convert::value_json(value)
                .map_err(|e| ApiError::InvalidArgument(format!("event payload: {e}")))?,
            None => serde_json::Value::Null,
        };
        let draft = EventDraft {
            event_type: body.r#type.clone(),
            key: body.key.clone(),
            payload,
        };
        // Bounds first, before any hop or work.
        self.api.check(&draft)?;
        match self.api.tasks.route().await? {
            Route::Here => {}
            Route::Leader { id, .. } if forward::was_forwarded(&request) => {
                return Err(ApiError::NotLeader(id).into());
            }
            leader => {
                return self
                    .forwarder
                    .publish(&leader, request.into_inner(), &publisher, &caller)
                    .await;
            }
        }
        let published = self.api.publish(draft, publisher.to_string()).await?;
        Ok(Response::new(pb::PublishEventReply {
            event_id: published.event_id,
            subscriptions: published.subscriptions,
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersReply>, Status> {
        let caller = self.auth.authenticate(&request).map_err(ApiError::from)?;
        caller
            .authorize(Action::ListDeadLetters)
            .map_err(ApiError::from)?;
        let limit = request.into_inner().limit as usize;
        let dead = self.api.dead_letters(limit).await?;
        let mut budget = PAYLOAD_BUDGET;
        let dead_letters = dead
            .into_iter()
            .map(|d| pb::DeadLetter {
                payload: convert::structured(&d.event.payload, &mut budget),
                event_id: d.event.id,
                r#type: d.event.event_type,
                key: d.event.key,
                source: d.event.source,
                subscription: d.subscription.to_string(),
                attempts: d.attempts,
                last_error: d.last_error,
                published_unix_ms: d.event.published_ms,
                dead_unix_ms: d.dead_ms,
            })
            .collect();
        Ok(Response::new(pb::ListDeadLettersReply { dead_letters }))
    }
}
