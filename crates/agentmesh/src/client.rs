//! The CLI's gRPC client: tries each given endpoint in turn, so a client
//! survives the loss of one coordinator, and resumes a watch where it left
//! off.
//!
//! Every endpoint gets two deadlines ([`Deadlines`]). Connecting includes a
//! health check: the kernel completes the TCP handshake of a frozen
//! (SIGSTOPped) or wedged process, and only an answer shows that the node
//! reads what it is sent. A node that gives none within the connect
//! deadline has taken nothing, so any request moves on to the next
//! endpoint. Once a request was sent, the request deadline bounds the wait
//! for its answer. Reads (status, watch, agents) and cancel are idempotent
//! and move on after it too. A submit does not: a node that answered the
//! health check and then went silent may have accepted the task, and
//! sending it to the next endpoint could run it twice, so the client says
//! so and stops. The same holds when the connection breaks after a submit
//! was sent; a refusal the node itself sent (no leader, not persisted) is
//! safe to take elsewhere.

use std::error::Error as _;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use agentmesh_core::ClientId;
use agentmesh_core::task::listing::IdempotencyKey;
use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::cluster_service_client::ClusterServiceClient;
use agentmesh_proto::v1::event_service_client::EventServiceClient;
use agentmesh_proto::v1::task_service_client::TaskServiceClient;
use agentmesh_runtime::api::error::{STORE_FULL, store_failure};
use agentmesh_runtime::convert;
use agentmesh_runtime::telemetry::{self, TraceParent};
use agentmesh_runtime::transport::channel::{self, Security};
use anyhow::{Context, bail};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The trace the command continues (`--traceparent`, `TRACEPARENT`), set
/// once at start.
pub static GIVEN_TRACE: OnceLock<TraceParent> = OnceLock::new();
/// Reconnection rounds of a watch over all endpoints before giving up.
const WATCH_ROUNDS: u32 = 10;

/// How long the client waits on one endpoint (`--connect-timeout-ms`,
/// `--request-timeout-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// To connect and have a health check answered.
    pub connect: Duration,
    /// For the answer to one request (a Watch: its first response; later
    /// silence is found by HTTP/2 keep-alive).
    pub request: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            connect: CONNECT_TIMEOUT,
            request: Duration::from_secs(60),
        }
    }
}

pub struct Client {
    endpoints: Vec<String>,
    deadlines: Deadlines,
    security: Security,
    /// Sent with every submit, for the coordinator's per-client limits and
    /// fair dispatch; without it the coordinator names the client by its
    /// address.
    name: Option<ClientId>,
    /// `Bearer <token>`, sent with every call but the health check, for
    /// nodes that require a token (`--token-file`).
    bearer: Option<AsciiMetadataValue>,
}

/// Whether another endpoint might answer where this one did not.
fn worth_another_endpoint(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

/// Whether a failed call may have reached the node: the status came from
/// the connection breaking (it has a transport error as its source), not
/// from the node, which sends its refusals as plain statuses.
fn maybe_delivered(status: &Status) -> bool {
    status.source().is_some()
}

/// A status's message with the errors beneath it (a GOAWAY's reason is
/// only in its source), each once.
fn status_text(status: &Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = status.source();
    while let Some(error) = source {
        let line = error.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = error.source();
    }
    text
}

/// Whether a request may be sent again to the next endpoint after it may
/// have reached this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Reads, cancel: doing it twice changes nothing.
    Safe,
    /// Submit: a second copy is a second task.
    Unsafe,
}

/// A request a node refused, kept whole so callers can look at its code
/// and metadata; shown as one line that blames the store behind the node
/// when the node says its store failed.
#[derive(Debug)]
pub struct Refused {
    /// The node that answered.
    pub endpoint: String,
    pub status: Status,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { endpoint, status } = self;
        let (message, code) = (status.message(), status.code());
        match (store_failure(status), code) {
            (Some(STORE_FULL), _) => write!(
                f,
                "node {endpoint} answered, but its etcd refuses writes (out of space): \
                 {message} [{code:?}]"
            ),
            (Some(_), _) => write!(
                f,
                "node {endpoint} answered, but its etcd is unreachable: {message} [{code:?}]"
            ),
            // The request's own faults read as they are; a failure of the
            // node names it.
            (None, Code::Internal | Code::Unknown | Code::DataLoss | Code::Unavailable) => {
                write!(f, "node {endpoint} failed: {message} [{code:?}]")
            }
            (None, _) => write!(f, "{message} [{code:?}]"),
        }
    }
}

impl std::error::Error for Refused {}

/// A one-line error for a request `endpoint` refused.
pub fn describe(endpoint: &str, status: &Status) -> anyhow::Error {
    anyhow::Error::new(Refused {
        endpoint: endpoint.to_owned(),
        status: status.clone(),
    })
}

/// Why a call to `endpoint` failed, for the list of failures: the node's
/// answer (blaming its etcd when it says so), or the broken connection.
fn failure(endpoint: &str, status: &Status) -> String {
    if maybe_delivered(status) {
        format!(
            "node {endpoint}: the connection failed: {}",
            status_text(status)
        )
    } else {
        describe(endpoint, status).to_string()
    }
}

/// The error after every endpoint failed: the one failure as it is, or
/// each of them.
fn all_failed(failures: &[String]) -> anyhow::Error {
    match failures {
        [one] => anyhow::anyhow!("{one}"),
        _ => anyhow::anyhow!(
            "no endpoint could serve the request: {}",
            failures.join("; ")
        ),
    }
}

/// Submits refused for back-pressure are tried this many times in all.
const SUBMIT_ATTEMPTS: u32 = 5;
/// The pause a back-pressure refusal asks for; `None` for other errors.
/// Back-pressure is a `RESOURCE_EXHAUSTED` that names its pause: one
/// without (etcd out of space) lasts until an operator acts, and retrying
/// it only hides the error.
fn retry_after(error: &anyhow::Error) -> Option<Duration> {
    let Refused { status, .. } = error.downcast_ref::<Refused>()?;
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let hinted = status
        .metadata()
        .get(agentmesh_runtime::api::error::RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(Duration::from_millis)?;
    Some(hinted.min(Duration::from_secs(30)))
}

impl Client {
    pub fn new(
        endpoints: Vec<String>,
        deadlines: Deadlines,
        security: Security,
    ) -> anyhow::Result<Self> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .filter(|e| !e.trim().is_empty())
            .collect();
        if endpoints.is_empty() {
            bail!("no endpoint given (--endpoint or AGENTMESH_ENDPOINT)");
        }
        Ok(Self {
            endpoints,
            deadlines,
            security,
            name: None,
            bearer: None,
        })
    }

    /// Sends `token` as the bearer token of every call, when there is one.
    pub fn with_token(mut self, token: Option<String>) -> anyhow::Result<Self> {
        if let Some(token) = token {
            self.bearer = Some(
                agentmesh_runtime::api::auth::bearer_value(&token)
                    .context("the token holds characters a header cannot carry")?,
            );
        }
        Ok(self)
    }

    /// `message` as a request carrying the bearer token, if any, and the
    /// trace it belongs to: this command's span while tracing is on, else
    /// the `--traceparent` given, so the nodes continue that trace.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if telemetry::enabled() {
            telemetry::inject_current_metadata(request.metadata_mut());
        } else if let Some(given) = GIVEN_TRACE.get() {
            given.inject_metadata(request.metadata_mut());
        }
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert(agentmesh_runtime::api::auth::AUTHORIZATION, bearer.clone());
        }
        request
    }

    /// Submits as `name` (see [`agentmesh_runtime::api::client`]).
    pub fn named(mut self, name: ClientId) -> Self {
        self.name = Some(name);
        self
    }

    /// One HTTP/2 connection to `endpoint`.
    pub async fn connect(endpoint: &str, security: &Security) -> anyhow::Result<Channel> {
        Ok(channel::connect(endpoint, CONNECT_TIMEOUT, security).await?)
    }

    /// A connection to `endpoint` whose node answered a health check
    /// within the connect deadline (with any status: an answer is all that
    /// is asked); otherwise why not.
    async fn open(&self, endpoint: &str) -> Result<Channel, String> {
        let deadline = self.deadlines.connect;
        let attempt = async {
            let channel = channel::connect(endpoint, deadline, &self.security)
                .await
                .map_err(|e| {
                    format!(
                        "node {endpoint} unreachable: {e} (is it running, and is this its \
                         --listen address?)"
                    )
                })?;
            match HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await
            {
                Err(status) if maybe_delivered(&status) => Err(format!(
                    "node {endpoint} unreachable: {}",
                    status_text(&status)
                )),
                _ => Ok(channel),
            }
        };
        tokio::time::timeout(deadline, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "node {endpoint}: no answer within the connect timeout of {} ms \
                     (node frozen or overloaded?)",
                    deadline.as_millis()
                ))
            })
    }

    /// Runs `call` against each endpoint until one answers; see the module
    /// documentation for when it moves on.
    async fn call<T, F, Fut>(&self, repeat: Repeat, mut call: F) -> anyhow::Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = self.deadlines.request;
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            let channel = match self.open(endpoint).await {
                Ok(channel) => channel,
                Err(failure) => {
                    failures.push(failure);
                    continue;
                }
            };
            let failure = match tokio::time::timeout(deadline, call(channel)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) if !worth_another_endpoint(&status) => {
                    return Err(describe(endpoint, &status));
                }
                Ok(Err(status)) if repeat == Repeat::Unsafe && maybe_delivered(&status) => {
                    bail!(
                        "node {endpoint}: the connection failed after the request was sent ({}); \
                         it may have been accepted there, so it was not sent to another \
                         endpoint, where it could run twice{}",
                        status_text(&status),
                        tried(&failures)
                    );
                }
                Ok(Err(status)) => failure(endpoint, &status),
                Err(_) if repeat == Repeat::Unsafe => bail!(
                    "node {endpoint}: no answer within the request timeout of {} ms after the \
                     request was sent; it may have been accepted there, so it was not sent \
                     to another endpoint, where it could run twice{}",
                    deadline.as_millis(),
                    tried(&failures)
                ),
                Err(_) => format!(
                    "node {endpoint}: no answer within the request timeout of {} ms",
                    deadline.as_millis()
                ),
            };
            failures.push(failure);
        }
        Err(all_failed(&failures))
    }

    /// Submits a task; a refusal for back-pressure (`RESOURCE_EXHAUSTED`)
    /// is retried after the pause the coordinator asks for, a few times.
    ///
    /// With an idempotency key every attempt carries the same key, so the
    /// cluster creates the task at most once, and a submit whose reply was
    /// lost may go on to the next endpoint: it gets the same task back.
    /// Without one, such a submit is not sent again (it could run twice).
    pub async fn submit(
        &self,
        document: String,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> anyhow::Result<String> {
        let repeat = match idempotency_key {
            Some(_) => Repeat::Safe,
            None => Repeat::Unsafe,
        };
        let key = idempotency_key.map(ToString::to_string).unwrap_or_default();
        let mut attempt = 1;
        loop {
            let outcome = self
                .call(repeat, |channel| {
                    let mut request = self.request(pb::SubmitRequest {
                        document: document.clone(),
                        wait: false,
                        idempotency_key: key.clone(),
                        task: None,
                    });
                    if let Some(name) = &self.name {
                        agentmesh_runtime::api::client::name_request(&mut request, name);
                    }
                    async move {
                        let reply = TaskServiceClient::new(channel)
                            .max_encoding_message_size(usize::MAX)
                            .submit(request)
                            .await?;
                        Ok(reply.into_inner().task_id)
                    }
                })
                .await;
            match outcome {
                Err(error) if attempt < SUBMIT_ATTEMPTS => {
                    let Some(pause) = retry_after(&error) else {
                        return Err(error);
                    };
                    eprintln!(
                        "cluster busy ({error}); submitting again in {} ms ({attempt}/{SUBMIT_ATTEMPTS})",
                        pause.as_millis()
                    );
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    pub async fn get(&self, task_id: &str) -> anyhow::Result<pb::TaskRecord> {
        self.call(Repeat::Safe, |channel| async move {
            let request = self.request(pb::GetTaskRequest {
                task_id: task_id.to_owned(),
            });
            Ok(TaskServiceClient::new(channel)
                .get(request)
                .await?
                .into_inner())
        })
        .await
    }

    pub async fn cancel(&self, task_id: &str, reason: &str) -> anyhow::Result<pb::TaskStatus> {
        self.call(Repeat::Safe, |channel| async move {
            let request = self.request(pb::CancelTaskRequest {
                task_id: task_id.to_owned(),
                reason: reason.to_owned(),
            });
            Ok(TaskServiceClient::new(channel)
                .cancel(request)
                .await?
                .into_inner()
                .status())
        })
        .await
    }

    /// One page of tasks, newest first.
    pub async fn list_tasks(
        &self,
        request: &pb::ListTasksRequest,
    ) -> anyhow::Result<pb::ListTasksReply> {
        self.call(Repeat::Safe, |channel| async move {
            Ok(TaskServiceClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .list(self.request(request.clone()))
                .await?
                .into_inner())
        })
        .await
    }

    /// Publishes an event (docs/events.md). Not sent to another endpoint
    /// once it may have reached one: a second copy is a second event.
    pub async fn publish_event(
        &self,
        event_type: &str,
        key: &str,
        payload: &serde_json::Value,
    ) -> anyhow::Result<pb::PublishEventReply> {
        let mut budget = usize::MAX;
        let payload = agentmesh_runtime::convert::structured(payload, &mut budget)
            .ok_or_else(|| anyhow::anyhow!("the event payload cannot be sent as a value"))?;
        self.call(Repeat::Unsafe, |channel| {
            let mut request = self.request(pb::PublishEventRequest {
                r#type: event_type.to_owned(),
                key: key.to_owned(),
                payload: Some(payload.clone()),
            });
            if let Some(name) = &self.name {
                agentmesh_runtime::api::client::name_request(&mut request, name);
            }
            async move {
                Ok(EventServiceClient::new(channel)
                    .max_encoding_message_size(usize::MAX)
                    .publish(request)
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// At most `limit` dead letters (0: the server's default), newest first.
    pub async fn dead_letters(&self, limit: u32) -> anyhow::Result<Vec<pb::DeadLetter>> {
        self.call(Repeat::Safe, |channel| async move {
            Ok(EventServiceClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .list_dead_letters(self.request(pb::ListDeadLettersRequest { limit }))
                .await?
                .into_inner()
                .dead_letters)
        })
        .await
    }

    pub async fn list_agents(&self) -> anyhow::Result<Vec<pb::AgentInfo>> {
        self.call(Repeat::Safe, |channel| async move {
            let reply = ClusterServiceClient::new(channel)
                .list_agents(self.request(pb::ListAgentsRequest {}))
                .await?;
            Ok(reply.into_inner().agents)
        })
        .await
    }

    /// Calls `on_record` for every change of the task until it ends and
    /// returns the terminal record. A broken stream is resumed, on the next
    /// endpoint, after the last revision seen.
    pub async fn watch(
        &self,
        task_id: &str,
        mut on_record: impl FnMut(&pb::TaskRecord),
    ) -> anyhow::Result<pb::TaskRecord> {
        let mut last: Option<pb::TaskRecord> = None;
        let mut failures = Vec::new();
        for round in 0..WATCH_ROUNDS {
            for endpoint in &self.endpoints {
                let after_revision = last.as_ref().map_or(0, |r| r.revision);
                let channel = match self.open(endpoint).await {
                    Ok(channel) => channel,
                    Err(failure) => {
                        failures.push(failure);
                        continue;
                    }
                };
                let request = self.request(pb::WatchTaskRequest {
                    task_id: task_id.to_owned(),
                    after_revision,
                });
                let deadline = self.deadlines.request;
                let mut client = TaskServiceClient::new(channel);
                let opened = client.watch(request);
                let mut stream = match tokio::time::timeout(deadline, opened).await {
                    Ok(Ok(response)) => response.into_inner(),
                    Ok(Err(status)) if worth_another_endpoint(&status) => {
                        failures.push(failure(endpoint, &status));
                        continue;
                    }
                    Ok(Err(status)) => return Err(describe(endpoint, &status)),
                    Err(_) => {
                        failures.push(format!(
                            "node {endpoint}: no answer within the request timeout of {} ms",
                            deadline.as_millis()
                        ));
                        continue;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(record)) => {
                            on_record(&record);
                            let done = convert::is_terminal(record.status());
                            last = Some(record);
                            if done {
                                // Read to the end rather than reset the stream.
                                while let Ok(Some(_)) = stream.message().await {}
                                return last.context("terminal record");
                            }
                        }
                        Ok(None) => break,
                        Err(status) if worth_another_endpoint(&status) => {
                            failures.push(failure(endpoint, &status));
                            break;
                        }
                        Err(status) => return Err(describe(endpoint, &status)),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(round + 1))).await;
        }
        bail!(
            "lost the watch of task {task_id} on every endpoint: {}",
            failures.join("; ")
        )
    }
}

/// The endpoints that failed before, for a final error.
fn tried(failures: &[String]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!(" (before it: {})", failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_pressure_refusals_are_retried_after_the_hinted_pause() {
        let mut busy = Status::resource_exhausted("coordinator queue is full");
        busy.metadata_mut().insert(
            agentmesh_runtime::api::error::RETRY_AFTER_MS,
            tonic::metadata::MetadataValue::from(250u64),
        );
        assert_eq!(
            retry_after(&describe("e:1", &busy)),
            Some(Duration::from_millis(250))
        );
        let unhinted = Status::resource_exhausted("full");
        assert_eq!(
            retry_after(&describe("e:1", &unhinted)),
            None,
            "not back-pressure"
        );
        // Anything else is final.
        let invalid = Status::invalid_argument("dependency cycle");
        assert_eq!(retry_after(&describe("e:1", &invalid)), None);
        assert_eq!(retry_after(&anyhow::anyhow!("connection refused")), None);
    }

    #[test]
    fn errors_say_whether_the_node_or_its_etcd_failed() {
        use agentmesh_registry::RegistryError;
        use agentmesh_runtime::api::error::ApiError;

        let store_down = Status::from(ApiError::Registry(RegistryError::Unavailable(
            "lease grant failed".into(),
        )));
        assert_eq!(
            failure("127.0.0.1:7700", &store_down),
            "node 127.0.0.1:7700 answered, but its etcd is unreachable: registry unavailable: \
             lease grant failed [Unavailable]"
        );
        let no_leader = Status::unavailable("no coordinator leader was elected");
        assert_eq!(
            failure("127.0.0.1:7700", &no_leader),
            "node 127.0.0.1:7700 failed: no coordinator leader was elected [Unavailable]"
        );
        // The request's own faults read as before.
        let invalid = Status::invalid_argument("dependency cycle: a -> a");
        assert_eq!(
            describe("e:1", &invalid).to_string(),
            "dependency cycle: a -> a [InvalidArgument]"
        );
        assert_eq!(
            all_failed(&["one".into()]).to_string(),
            "one",
            "a single endpoint's failure is the error"
        );
        assert_eq!(
            all_failed(&["a".into(), "b".into()]).to_string(),
            "no endpoint could serve the request: a; b"
        );
    }
}
