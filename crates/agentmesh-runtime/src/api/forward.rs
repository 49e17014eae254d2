//! One hop from a follower coordinator to the leader, for the calls only
//! the leader may handle (`Submit`, `Cancel`).
//!
//! The forwarded request carries [`FORWARDED_BY`], so the receiver answers
//! it or refuses it but never forwards it again: while two coordinators
//! disagree on who leads, a request fails with UNAVAILABLE (and the client
//! retries) instead of bouncing between them.
//!
//! When the node authenticates clients, the forwarded request carries the
//! client's own bearer token, so the leader authenticates the client itself
//! and records the task's owner as the client, not as this node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use agentmesh_core::{AgentId, ClientId};
use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::event_service_client::EventServiceClient;
use agentmesh_proto::v1::task_service_client::TaskServiceClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::auth::Caller;
use crate::telemetry;
use crate::transport::channel::{self, Security};

/// Where a call that changes a task is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node's coordinator leads.
    Here,
    /// Another coordinator leads; it is reached at `endpoint`.
    Leader { id: AgentId, endpoint: String },
}

/// Metadata key marking a request forwarded by a follower.
pub const FORWARDED_BY: &str = "agentmesh-forwarded-by";

/// How long connecting to the leader may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a follower forwarded this request here.
pub fn was_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_BY)
}

/// Clients of the coordinators this node forwarded to, by endpoint; one
/// HTTP/2 connection each, made on first use.
pub struct Forwarder {
    max_message_bytes: usize,
    security: Security,
    clients: Mutex<HashMap<String, TaskServiceClient<Channel>>>,
    events: Mutex<HashMap<String, EventServiceClient<Channel>>>,
}

impl Forwarder {
    pub fn new(max_message_bytes: usize, security: Security) -> Self {
        Self {
            max_message_bytes,
            security,
            clients: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
        }
    }

    /// Forwards a submit of `submitter`'s, named as the client this node
    /// resolved (the leader would otherwise see this node's address), on
    /// behalf of `caller`.
    pub async fn submit(
        &self,
        leader: &Route,
        request: pb::SubmitRequest,
        submitter: &ClientId,
        caller: &Caller,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let span = forward_span(leader, "Submit");
        let (mut client, mut request) = span.in_scope(|| self.prepare(leader, request))?;
        super::client::name_request(&mut request, submitter);
        caller.forward_with(&mut request);
        client
            .submit(request)
            .instrument(span)
            .await
            .map_err(|s| explain(leader, s))
    }

    /// Forwards a cancel on behalf of `caller`; the leader decides whether
    /// the caller may cancel the task.
    pub async fn cancel(
        &self,
        leader: &Route,
        request: pb::CancelTaskRequest,
        caller: &Caller,
    ) -> Result<Response<pb::CancelReply>, Status> {
        let span = forward_span(leader, "Cancel");
        let (mut client, mut request) = span.in_scope(|| self.prepare(leader, request))?;
        caller.forward_with(&mut request);
        client
            .cancel(request)
            .instrument(span)
            .await
            .map_err(|s| explain(leader, s))
    }

    /// Forwards an event publish on behalf of `caller`, naming the
    /// client this node resolved as its publisher.
    pub async fn publish(
        &self,
        leader: &Route,
        request: pb::PublishEventRequest,
        publisher: &ClientId,
        caller: &Caller,
    ) -> Result<Response<pb::PublishEventReply>, Status> {
        let span = forward_span(leader, "Publish");
        let (_, mut request) = span.in_scope(|| self.prepare(leader, request))?;
        let Route::Leader { id, endpoint } = leader else {
            return Err(Status::internal(
                "forwarding a request that is handled here",
            ));
        };
        let mut client = {
            let mut clients = self.events.lock().unwrap_or_else(|e| e.into_inner());
            match clients.get(endpoint) {
                Some(client) => client.clone(),
                None => {
                    let channel = channel::lazy(endpoint, CONNECT_TIMEOUT, &self.security)
                        .map_err(|e| {
                            Status::unavailable(format!("cannot forward to leader '{id}': {e}"))
                        })?;
                    let client = EventServiceClient::new(channel)
                        .max_decoding_message_size(self.max_message_bytes)
                        .max_encoding_message_size(self.max_message_bytes);
                    clients.insert(endpoint.clone(), client.clone());
                    client
                }
            }
        };
        super::client::name_request(&mut request, publisher);
        caller.forward_with(&mut request);
        client
            .publish(request)
            .instrument(span)
            .await
            .map_err(|s| explain(leader, s))
    }

    fn prepare<T>(
        &self,
        leader: &Route,
        message: T,
    ) -> Result<(TaskServiceClient<Channel>, Request<T>), Status> {
        let Route::Leader { id, endpoint } = leader else {
            return Err(Status::internal(
                "forwarding a request that is handled here",
            ));
        };
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let client = match clients.get(endpoint) {
            Some(client) => client.clone(),
            None => {
                let channel =
                    channel::lazy(endpoint, CONNECT_TIMEOUT, &self.security).map_err(|e| {
                        Status::unavailable(format!("cannot forward to leader '{id}': {e}"))
                    })?;
                let client = TaskServiceClient::new(channel)
                    // The leader's records carry structured values too.
                    .max_decoding_message_size(
                        self.max_message_bytes + crate::convert::MAX_VALUE_BYTES,
                    )
                    .max_encoding_message_size(self.max_message_bytes);
                clients.insert(endpoint.clone(), client.clone());
                client
            }
        };
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            FORWARDED_BY,
            tonic::metadata::MetadataValue::from_static("follower"),
        );
        // The leader continues this node's span of the call.
        telemetry::inject_current_metadata(request.metadata_mut());
        Ok((client, request))
    }
}

/// The span of one forwarded call.
fn forward_span(leader: &Route, method: &'static str) -> tracing::Span {
    let leader = match leader {
        Route::Leader { id, .. } => id.as_str(),
        Route::Here => "",
    };
    crate::span!("forward", rpc.method = method, leader = leader)
}

/// Keeps the leader's answer, saying where it came from when the leader
/// could not be reached at all.
fn explain(leader: &Route, status: Status) -> Status {
    match leader {
        Route::Leader { id, endpoint } if status.code() == tonic::Code::Unavailable => {
            let mut explained = Status::unavailable(format!(
                "forwarded to the coordinator leader '{id}' at {endpoint}: {}",
                status.message()
            ));
            *explained.metadata_mut() = status.metadata().clone();
            explained
        }
        _ => status,
    }
}
