//! `TaskService`: submit, get, watch and cancel tasks.
//!
//! [`TaskApi`] holds the logic and is called in-process by `agentmesh
//! local`; [`TaskGrpc`] exposes it over gRPC.
//!
//! Any coordinator answers every call. `Submit` and `Cancel` change a task,
//! which only the leader may do: a follower forwards them to the leader
//! (one hop; see [`super::forward`]). `Get` and `Watch` are answered from
//! the leader's memory on the leader and from the registry elsewhere.
//!
//! When the node has client tokens, every call is authenticated first and
//! authorized by the caller's role (see [`super::auth`]): a task is owned
//! by the subject that submitted it, and a submit token reaches only the
//! tasks it owns.

use crate::llm::Providers;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::access::Action;
use agentmesh_core::patterns;
use agentmesh_core::reactive::{ReactiveLimits, Routed, RoutingTable};
use agentmesh_core::task::listing::{
    IdempotencyKey, ListCursor, TaskFilter, TaskPage, TaskQuery, idempotency_scope,
};
use agentmesh_core::task::validate::parse;
use agentmesh_core::task::{Pattern, Status, TaskFile, TaskLimits, TaskRecord, validate};
use agentmesh_core::{ClientId, Membership, Role, TaskId};
use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::task_service_server::{SERVICE_NAME, TaskService, TaskServiceServer};
use agentmesh_registry::Registry;
use futures::{Stream, StreamExt};
use ractor::ActorRef;
use ractor::rpc::CallResult;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response};
use tracing::Instrument;

use super::auth::{Authenticator, Caller};
use super::client;
pub use super::forward::Route;
use super::forward::{self, Forwarder};
use super::reactive;

use crate::actors::coordinator::{
    Accepted, CoordinatorHandle, CoordinatorMessage, RecordHub, SubmitError,
};
use crate::api::error::ApiError;
use crate::convert;
use crate::support::clock::now_ms;
use crate::telemetry::{self, TraceParent};
use crate::transport::channel::Security;

/// Time allowed for the coordinator to accept or cancel a task, including
/// the durable write of its record.
const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a call that needs the leader waits for an election to end
/// before it is refused with UNAVAILABLE.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Task documents parsed at once unless the node says otherwise
/// (`--parse-concurrency`).
pub const DEFAULT_PARSE_CONCURRENCY: usize = 2;

/// Documents up to this size are parsed and validated on the calling
/// runtime thread: with nesting and alias expansion bounded while parsing,
/// their cost is bounded by their size (well under a millisecond), less
/// than handing them to a blocking thread and back, which cost a quarter
/// of the trivial shape's throughput. Larger ones go to blocking threads.
pub const INLINE_PARSE_BYTES: usize = 16 * 1024;

/// Who a task is submitted for: the client its per-client limits and fair
/// share count it under, and its owner when the submitter was
/// authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitter {
    pub client: ClientId,
    /// Set only from a verified token (see [`TaskRecord::owner`]).
    pub owner: Option<ClientId>,
    /// The submit's idempotency key, if the client sent one.
    pub idempotency_key: Option<IdempotencyKey>,
}

impl Submitter {
    /// A client that named itself, or was named by its address; owns
    /// nothing.
    pub fn anonymous(client: ClientId) -> Self {
        Self {
            client,
            owner: None,
            idempotency_key: None,
        }
    }

    /// An authenticated subject: its own client and the task's owner, so
    /// a token cannot pass its tasks off as another client's.
    pub fn authenticated(subject: ClientId) -> Self {
        Self {
            client: subject.clone(),
            owner: Some(subject),
            idempotency_key: None,
        }
    }

    /// The same submitter, naming this submit with `key` (see
    /// [`IdempotencyKey`]).
    pub fn with_idempotency_key(mut self, key: Option<IdempotencyKey>) -> Self {
        self.idempotency_key = key;
        self
    }
}

/// What handing a new task to the leader gave.
enum Handed {
    Accepted(Accepted),
    /// The submit's idempotency key named this task already.
    Existing(TaskId),
}

/// A stream of task records that ends after the first terminal one.
pub type RecordStream = Pin<Box<dyn Stream<Item = Result<Arc<TaskRecord>, ApiError>> + Send>>;

#[derive(Clone)]
pub struct TaskApi {
    registry: Arc<dyn Registry>,
    coordinator: Option<CoordinatorHandle>,
    limits: TaskLimits,
    /// Task documents parsed at once (see [`TaskApi::with_parse_concurrency`]).
    parsing: Arc<Semaphore>,
    /// The node's models (see [`TaskApi::with_providers`]).
    providers: Providers,
    /// Reactive requests are routed with it (see [`TaskApi::with_routing_table`]).
    routing_table: Arc<RoutingTable>,
    /// The provider fallback of reactive requests (see [`reactive`]).
    fallback: Arc<reactive::ProviderFallback>,
    /// Decomposes natural-language requests (see [`super::request`]).
    requests: super::request::RequestPlanner,
}

impl TaskApi {
    pub fn new(
        registry: Arc<dyn Registry>,
        coordinator: Option<CoordinatorHandle>,
        limits: TaskLimits,
    ) -> Self {
        Self {
            registry,
            coordinator,
            limits,
            parsing: Arc::new(Semaphore::new(DEFAULT_PARSE_CONCURRENCY)),
            providers: Providers::none(),
            routing_table: Arc::new(RoutingTable::builtin()),
            fallback: Arc::new(reactive::ProviderFallback::none()),
            requests: super::request::RequestPlanner::default(),
        }
    }

    /// Routes reactive requests with `table` instead of the built-in one
    /// (`--routing-table`).
    pub fn with_routing_table(mut self, table: Arc<RoutingTable>) -> Self {
        self.routing_table = table;
        self
    }

    /// Places a reactive request the keywords could not route: asks the
    /// provider, behind its breaker, or refuses naming why.
    async fn place(
        &self,
        record: &mut TaskRecord,
        unplaced: Unplaced,
        membership: &Membership,
    ) -> Result<(), ApiError> {
        let Unplaced { file, routed } = unplaced;
        let offered = |tool: &str| reactive::check_offered(membership, tool).is_ok();
        match self
            .fallback
            .place(&file, &routed, &self.routing_table, &offered)
            .await
        {
            Ok(placed) => {
                record.route_reactive(&placed.choice, |r| {
                    r.answered_by = agentmesh_core::reactive::AnswerPath::Provider;
                    r.kind = Some(placed.kind);
                    r.provider = Some(placed.provider);
                    r.fallback = Some(placed.why);
                });
                Ok(())
            }
            Err(why) => {
                crate::metrics::reactive_answered(crate::metrics::reactive::REFUSED);
                Err(patterns::reactive::unroutable(&file, &routed, &why).into())
            }
        }
    }

    /// The models a submit may need before its task exists (none, the
    /// built-in rules only, by default).
    pub fn with_providers(mut self, providers: Providers) -> Self {
        self.fallback = Arc::new(reactive::ProviderFallback::new(
            providers.chat.clone(),
            agentmesh_core::breaker::BreakerPolicy::default(),
        ));
        self.providers = providers;
        self
    }

    /// Decomposes `request:` files with `planner`'s knobs, by the node's
    /// chat provider (see [`TaskApi::with_providers`]) or the built-in rules.
    pub fn with_request_planner(mut self, planner: super::request::RequestPlanner) -> Self {
        self.requests = planner;
        self
    }

    /// Parses and validates at most `n` task documents at once. Each runs
    /// on a blocking thread, off the async runtime, so a document that is
    /// expensive to parse (within the task limits, parsing is bounded but
    /// not free) delays no lease keep-alive or other call; the bound keeps
    /// a burst of them from taking every blocking thread and the memory
    /// of as many documents in flight.
    pub fn with_parse_concurrency(mut self, n: usize) -> Self {
        self.parsing = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    fn local(&self) -> Result<&CoordinatorHandle, ApiError> {
        self.coordinator.as_ref().ok_or(ApiError::NoCoordinator)
    }

    fn hub(&self) -> Option<&RecordHub> {
        self.coordinator.as_ref().map(|c| &c.hub)
    }

    /// Who handles a call that changes a task. Waits up to
    /// [`LEADER_WAIT`] while nobody leads or while this node's coordinator
    /// has won but not yet taken its tasks over.
    pub async fn route(&self) -> Result<Route, ApiError> {
        let local = self.local()?;
        let mut leading = local.leading.clone();
        let mut leader = self.registry.leader();
        let mut membership = self.registry.membership();
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            if *leading.borrow_and_update() {
                return Ok(Route::Here);
            }
            let current = leader.borrow_and_update().clone();
            if let Some(id) = current.filter(|id| *id != local.id)
                && let Some(agent) = membership.borrow_and_update().agents.get(&id)
            {
                return Ok(Route::Leader {
                    endpoint: agent.endpoint.clone(),
                    id,
                });
            }
            tokio::select! {
                _ = leading.changed() => {}
                _ = leader.changed() => {}
                _ = membership.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ApiError::NoLeader(LEADER_WAIT));
                }
            }
        }
    }

    /// The local coordinator's actor (leading or not).
    pub(crate) fn local_actor(&self) -> Result<&ActorRef<CoordinatorMessage>, ApiError> {
        Ok(&self.local()?.actor)
    }

    /// The local coordinator, once it leads.
    async fn leader_here(&self) -> Result<&ActorRef<CoordinatorMessage>, ApiError> {
        match self.route().await? {
            Route::Here => Ok(&self.local()?.actor),
            Route::Leader { id, .. } => Err(ApiError::NotLeader(id)),
        }
    }

    /// Validates a task document against the live cluster and hands it to
    /// the coordinator; returns once the task record is durable.
    pub async fn submit(&self, document: &str) -> Result<TaskId, ApiError> {
        self.submit_as(document, Submitter::anonymous(ClientId::unnamed()))
            .await
    }

    /// [`TaskApi::submit`] on behalf of `submitter` (see [`super::client`]).
    pub async fn submit_as(
        &self,
        document: &str,
        submitter: Submitter,
    ) -> Result<TaskId, ApiError> {
        let record = self.new_record(document, submitter).await?;
        let accepted = match self.hand_over(record).await? {
            Handed::Accepted(accepted) => accepted,
            Handed::Existing(id) => {
                self.stored(&id).await?;
                return Ok(id);
            }
        };
        let id = accepted.id.clone();
        match accepted.durable().await {
            Ok(id) => Ok(id),
            Err(SubmitError::StoreFull(reason)) => {
                // The client hears the task was refused, so it must not
                // run: its record, should it be written once space is
                // freed, says cancelled.
                self.abandon(&id, "its record could not be written: etcd is out of space");
                Err(SubmitError::StoreFull(reason).into())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Cancels a task whose submit was refused after the coordinator took
    /// it, without waiting for the answer.
    fn abandon(&self, id: &TaskId, reason: &str) {
        let Ok(local) = self.local() else { return };
        let (reply, _) = tokio::sync::oneshot::channel();
        let _ = local.actor.cast(CoordinatorMessage::Cancel {
            task: id.clone(),
            reason: reason.to_owned(),
            reply: reply.into(),
        });
    }

    /// Submits a task and waits for its end; returns the final record.
    ///
    /// Only the final record's durability is awaited — it implies the
    /// task's — so a short task has one registry write on its critical
    /// path rather than two, and its first records often merge into that
    /// one write. The caller hears of the task only once it has ended.
    pub async fn run(&self, document: &str) -> Result<Arc<TaskRecord>, ApiError> {
        self.run_as(document, Submitter::anonymous(ClientId::unnamed()))
            .await
    }

    /// [`TaskApi::run`] on behalf of `submitter` (see [`super::client`]).
    pub async fn run_as(
        &self,
        document: &str,
        submitter: Submitter,
    ) -> Result<Arc<TaskRecord>, ApiError> {
        let record = self.new_record(document, submitter).await?;
        let id = record.id.clone();
        let hub = self.hub().ok_or(ApiError::NoCoordinator)?;
        let mut early = hub.follow_new(&id);
        let accepted = match self.hand_over(record).await? {
            Handed::Accepted(accepted) => accepted,
            Handed::Existing(id) => return self.outcome(&id, 0).await,
        };
        let mut durable = accepted.durable;
        let mut full = accepted.store_full;
        let mut durable_done = false;
        let mut watching_full = true;
        let mut last = 0;
        loop {
            tokio::select! {
                refused = full.wait_for(Option::is_some), if watching_full && !durable_done => {
                    if let Ok(reason) = refused {
                        let reason = reason.clone().unwrap_or_default();
                        self.abandon(&id, "its record could not be written: etcd is out of space");
                        return Err(SubmitError::StoreFull(reason).into());
                    }
                    // Nobody reports refusals (an in-memory store).
                    watching_full = false;
                }
                written = &mut durable, if !durable_done => match written {
                    Ok(Ok(())) => durable_done = true,
                    Ok(Err(error)) => return Err(SubmitError::NotPersisted(error).into()),
                    Err(_) => {
                        return Err(SubmitError::NotPersisted("record writer has stopped".into()).into());
                    }
                },
                record = early.changes.recv() => match record {
                    Some(record) if record.status.is_terminal() => return Ok(record),
                    Some(record) => last = record.revision,
                    // Fell behind the hub: follow the rest like any watcher.
                    None => break,
                },
            }
        }
        self.outcome(&id, last).await
    }

    /// Parses and validates `document`: at once if it is small (see
    /// [`INLINE_PARSE_BYTES`]), else on a blocking thread once one of the
    /// parse permits is free (see [`TaskApi::with_parse_concurrency`]).
    async fn new_record(
        &self,
        document: &str,
        submitter: Submitter,
    ) -> Result<TaskRecord, ApiError> {
        let span = crate::span!("validation", bytes = document.len());
        if document.len() <= INLINE_PARSE_BYTES {
            let membership = self.registry.membership().borrow().clone();
            let parsed = span.in_scope(|| {
                new_record(document, &self.limits, &membership, &self.routing_table)
            })?;
            let mut record = self.planned(parsed, &membership).await?;
            submitter.stamp(&mut record, document);
            return Ok(record);
        }
        // The permit goes with the work: a caller that gives up does not
        // free it while the parse still runs.
        let permit = self
            .parsing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Coordinator("task parsing has stopped".into()))?;
        let membership = self.registry.membership().borrow().clone();
        let limits = self.limits.clone();
        let owned = document.to_owned();
        let table = self.routing_table.clone();
        let view = membership.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            span.in_scope(|| new_record(&owned, &limits, &view, &table))
        })
        .await
        .map_err(|e| ApiError::Coordinator(format!("task parsing failed: {e}")))??;
        let mut record = self.planned(parsed, &membership).await?;
        submitter.stamp(&mut record, document);
        Ok(record)
    }

    /// The record of a parsed file: as it is, or, for a request, once it
    /// is decomposed (asynchronously: a model may take seconds).
    async fn planned(
        &self,
        parsed: Parsed,
        membership: &Membership,
    ) -> Result<TaskRecord, ApiError> {
        match parsed {
            Parsed::Record(record) => Ok(record),
            Parsed::Unplaced(mut record, unplaced) => {
                self.place(&mut record, *unplaced, membership).await?;
                Ok(record)
            }
            Parsed::Request(file) => {
                let span = crate::span!("decomposition");
                let (tasks, plan) = self
                    .requests
                    .plan(
                        self.providers.chat.as_ref(),
                        self.providers.embed.as_ref(),
                        Some(self.registry.as_ref()),
                        file,
                        &self.limits,
                        membership,
                    )
                    .instrument(span)
                    .await?;
                let mut record = TaskRecord::new(
                    TaskId::new(uuid::Uuid::new_v4().to_string()),
                    tasks,
                    now_ms(),
                );
                record.request = Some(Box::new(plan));
                Ok(record)
            }
        }
    }

    /// Hands `record` to the leader here, unless its idempotency key names
    /// a task already: in the store (any term), or among the tasks the
    /// leader accepted in this term (checked by the coordinator, which
    /// sees submits one at a time).
    async fn hand_over(&self, record: TaskRecord) -> Result<Handed, ApiError> {
        if telemetry::enabled() {
            tracing::Span::current().record("task.id", record.id.as_str());
        }
        let trace = TraceParent::current();
        let coordinator = self.leader_here().await?;
        // Looked up once this node leads: every earlier leader's writes
        // are in the store by then (they were fenced).
        if let Some(key) = &record.idempotency_key {
            let scope = idempotency_scope(&record);
            if let Some(task) = self.registry.task_for_idempotency_key(&scope, key).await?
                && let Some(first) = self.find(&task).await?
            {
                same_document(&record, &first)?;
                return Ok(Handed::Existing(task));
            }
        }
        let key = record.idempotency_key.clone();
        let outcome = coordinator
            .call(
                |reply| CoordinatorMessage::Submit {
                    record,
                    trace,
                    reply,
                },
                Some(COORDINATOR_TIMEOUT),
            )
            .await;
        match answer(outcome)? {
            Ok(accepted) => Ok(Handed::Accepted(accepted)),
            Err(SubmitError::Duplicate {
                task,
                same_document: true,
            }) => Ok(Handed::Existing(task)),
            Err(SubmitError::Duplicate { task, .. }) => Err(ApiError::IdempotencyConflict {
                key: key.map(|k| k.to_string()).unwrap_or_default(),
                task,
            }),
            Err(error) => Err(error.into()),
        }
    }

    /// A task's record from memory or the store; `None` when it is gone.
    async fn find(&self, id: &TaskId) -> Result<Option<TaskRecord>, ApiError> {
        match self.get(id).await {
            Ok(record) => Ok(Some(record)),
            Err(ApiError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Waits until a task another submit created is in the store, so a
    /// repeated submit is answered no sooner than the first would be.
    async fn stored(&self, id: &TaskId) -> Result<(), ApiError> {
        let mut watch = self.registry.watch_task(id).await?;
        match tokio::time::timeout(COORDINATOR_TIMEOUT, watch.next()).await {
            Ok(Some(Ok(_))) => Ok(()),
            Ok(Some(Err(error))) => Err(error.into()),
            Ok(None) | Err(_) => Err(ApiError::Coordinator(format!(
                "task {id}, named by the same idempotency key, was not stored within \
                 {COORDINATOR_TIMEOUT:?}"
            ))),
        }
    }

    /// One page of task records, newest first, from the store (see
    /// [`agentmesh_registry::TaskStore::list_tasks`]).
    pub async fn list(&self, query: &TaskQuery) -> Result<TaskPage, ApiError> {
        Ok(self.registry.list_tasks(query).await?)
    }

    /// Served from memory for tasks this node owns, from the registry
    /// otherwise.
    pub async fn get(&self, id: &TaskId) -> Result<TaskRecord, ApiError> {
        check_id(id)?;
        if let Some(record) = self.hub().and_then(|hub| hub.latest(id)) {
            return Ok((*record).clone());
        }
        self.registry
            .get_task(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(id.clone()))
    }

    /// The record, then every later change, ending after the terminal
    /// record. Only records with a revision above `after_revision` are sent;
    /// a task that has ended by then ends the stream at once, even when the
    /// caller has its last record already.
    ///
    /// A task this node owns is followed in memory through the record hub;
    /// any other task, or a watcher that fell behind the hub, through the
    /// registry's watch. Records are deduplicated by revision, so the
    /// switch from one source to the other neither skips nor repeats one.
    pub async fn watch(&self, id: &TaskId, after_revision: u64) -> Result<RecordStream, ApiError> {
        check_id(id)?;
        let registry = self.registry.clone();
        let remote_id = id.clone();
        let remote = futures::stream::once(async move { registry.watch_task(&remote_id).await })
            .flat_map(|watch| match watch {
                Ok(records) => records
                    .map(|item| item.map(Arc::new).map_err(ApiError::from))
                    .boxed(),
                Err(error) => futures::stream::iter([Err(ApiError::from(error))]).boxed(),
            });
        let local = self.hub().and_then(|hub| hub.subscribe(id));
        let merged = match local {
            Some(subscription) => {
                let first = futures::stream::iter([Ok(subscription.latest)]);
                let changes = ReceiverStream::new(subscription.changes).map(Ok);
                first.chain(changes).chain(remote).boxed()
            }
            None => {
                // Answer NOT_FOUND at once rather than as a stream error.
                let current = self.get(id).await?;
                if current.status.is_terminal() {
                    // An ended task changes no more: its final record (if
                    // the caller lacks it) is all there is, and no registry
                    // watcher is opened for it.
                    futures::stream::iter([Ok(Arc::new(current))]).boxed()
                } else {
                    remote.boxed()
                }
            }
        };
        let stream = futures::stream::unfold(
            (merged, after_revision, false),
            |(mut merged, mut last, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    let item = merged.next().await?;
                    match item {
                        // A terminal record the caller has already seen
                        // ends the stream: nothing follows it, and waiting
                        // would hold the stream (and a watcher) forever.
                        Ok(record) if record.revision <= last => {
                            if record.status.is_terminal() {
                                return None;
                            }
                            continue;
                        }
                        Ok(record) => {
                            last = record.revision;
                            let ended = record.status.is_terminal();
                            return Some((Ok(record), (merged, last, ended)));
                        }
                        Err(error) => return Some((Err(error), (merged, last, true))),
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }

    /// Waits for the task to end and returns its final record.
    pub async fn outcome(
        &self,
        id: &TaskId,
        after_revision: u64,
    ) -> Result<Arc<TaskRecord>, ApiError> {
        let mut records = self.watch(id, after_revision).await?;
        let mut last = None;
        while let Some(record) = records.next().await {
            last = Some(record?);
        }
        match last {
            Some(record) => Ok(record),
            None => self.get(id).await.map(Arc::new),
        }
    }

    pub async fn cancel(&self, id: &TaskId, reason: String) -> Result<Status, ApiError> {
        check_id(id)?;
        let coordinator = self.leader_here().await?;
        let task = id.clone();
        let outcome = coordinator
            .call(
                |reply| CoordinatorMessage::Cancel {
                    task,
                    reason,
                    reply,
                },
                Some(COORDINATOR_TIMEOUT),
            )
            .await;
        match answer(outcome)? {
            Some(status) => Ok(status),
            // Not active here: already ended, or never existed.
            None => Ok(self.get(id).await?.status),
        }
    }
}

/// Refuses a repeated idempotency key whose document differs from the
/// first submit's.
fn same_document(record: &TaskRecord, first: &TaskRecord) -> Result<(), ApiError> {
    if record.document_sha256 == first.document_sha256 {
        return Ok(());
    }
    Err(ApiError::IdempotencyConflict {
        key: record
            .idempotency_key
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        task: first.id.clone(),
    })
}

impl Submitter {
    /// Records who submitted `record` and with which key; the document's
    /// digest goes with a key, to tell a retry from a reuse.
    fn stamp(self, record: &mut TaskRecord, document: &str) {
        if self.idempotency_key.is_some() {
            let digest = ring::digest::digest(&ring::digest::SHA256, document.as_bytes());
            record.document_sha256 =
                Some(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect());
        }
        record.client = Some(self.client);
        record.owner = self.owner;
        record.idempotency_key = self.idempotency_key;
    }
}

fn check_id(id: &TaskId) -> Result<(), ApiError> {
    if id.as_str().is_empty() {
        return Err(ApiError::InvalidArgument(
            "task_id must not be empty".into(),
        ));
    }
    Ok(())
}

fn answer<T, E: std::fmt::Display>(outcome: Result<CallResult<T>, E>) -> Result<T, ApiError> {
    match outcome {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(ApiError::Coordinator(format!(
            "no answer within {COORDINATOR_TIMEOUT:?}"
        ))),
        Ok(CallResult::SenderError) => Err(ApiError::Coordinator(
            "the coordinator dropped the request".into(),
        )),
        Err(e) => Err(ApiError::Coordinator(e.to_string())),
    }
}

/// Parses and validates a task document against a view of the cluster;
/// blocking work, run off the async runtime by [`TaskApi`].
pub(crate) fn new_record(
    document: &str,
    limits: &TaskLimits,
    membership: &Membership,
    table: &RoutingTable,
) -> Result<Parsed, ApiError> {
    let file = parse(document, limits)?;
    if agentmesh_core::request::is_request(&file) {
        return Ok(Parsed::Request(file));
    }
    // Unsupported patterns are refused by `validate`, naming the ones
    // this cluster runs.
    let runner = match patterns::rules(file.pattern) {
        Some(rules) => {
            rules.check_cluster(membership)?;
            rules.runner()
        }
        None => Role::Worker,
    };
    let file = validate(
        file,
        limits,
        &|capability| membership.offers_as(runner, capability),
        &|| membership.capabilities_of(runner),
    )?;
    let reactive = (file.pattern == Pattern::Reactive).then(|| file.clone());
    let mut record = TaskRecord::new(
        TaskId::new(uuid::Uuid::new_v4().to_string()),
        file,
        now_ms(),
    );
    let Some(file) = reactive else {
        return Ok(Parsed::Record(record));
    };
    let routed = reactive::route_with(&file, table, &ReactiveLimits::default())?;
    let Some(choice) = &routed.tool else {
        return Ok(Parsed::Unplaced(
            record,
            Box::new(Unplaced { file, routed }),
        ));
    };
    reactive::check_offered(membership, &choice.tool)?;
    let kind = routed.classification.kind();
    record.route_reactive(choice, |r| r.kind = kind);
    Ok(Parsed::Record(record))
}

/// A parsed document: a validated task, one whose reactive request needs
/// the provider to place it, or a natural-language request to decompose
/// first.
pub(crate) enum Parsed {
    Record(TaskRecord),
    Unplaced(TaskRecord, Box<Unplaced>),
    Request(agentmesh_core::task::TaskFile),
}

/// A reactive request the routing table's keywords could not route: the
/// provider's to place, or refused.
pub(crate) struct Unplaced {
    file: TaskFile,
    routed: Routed,
}

/// Puts a task sent as a `google.protobuf.Struct` into the request as its
/// JSON text, so that from here on (forwarding to the leader included) it
/// is a document like any other: the same limits, validation and
/// idempotency digest. Refuses a request with both forms or neither.
fn as_document(request: &mut pb::SubmitRequest, limits: &TaskLimits) -> Result<(), ApiError> {
    match (request.document.is_empty(), request.task.take()) {
        (true, Some(task)) => {
            request.document = convert::task_document(&task, limits)?;
            Ok(())
        }
        (false, None) => Ok(()),
        (false, Some(_)) => Err(ApiError::InvalidArgument(
            "both document and task are set: send the task file once, as document (JSON or \
             YAML text) or as task (a structured message)"
                .into(),
        )),
        (true, None) => Err(ApiError::InvalidArgument(
            "neither document nor task is set: send the task file as document (JSON or YAML \
             text) or as task (a structured message)"
                .into(),
        )),
    }
}

/// The query a `List` request asks for; refuses malformed filters and
/// tokens.
pub(crate) fn list_query(request: &pb::ListTasksRequest) -> Result<TaskQuery, ApiError> {
    let bad = |what: String| ApiError::InvalidArgument(what);
    let statuses = request
        .status
        .iter()
        .map(|&n| match pb::TaskStatus::try_from(n) {
            Ok(pb::TaskStatus::Pending) => Ok(Status::Pending),
            Ok(pb::TaskStatus::Running) => Ok(Status::Running),
            Ok(pb::TaskStatus::Completed) => Ok(Status::Completed),
            Ok(pb::TaskStatus::Failed) => Ok(Status::Failed),
            Ok(pb::TaskStatus::Cancelled) => Ok(Status::Cancelled),
            _ => Err(bad(format!("status {n} is not a task status"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pattern = match request.pattern.as_str() {
        "" => None,
        name => Some(
            serde_json::from_value::<Pattern>(serde_json::Value::String(name.to_owned())).map_err(
                |_| {
                    bad(format!(
                        "unknown pattern '{}' (coordinator_worker, peer_consensus, hierarchical, \
                         workflow, reactive, auto)",
                        name.chars().take(64).collect::<String>()
                    ))
                },
            )?,
        ),
    };
    if request.name_prefix.len() > 256 {
        return Err(bad("name_prefix is over 256 bytes".into()));
    }
    let owner = match request.owner.as_str() {
        "" => None,
        name => Some(ClientId::parse(name).map_err(|e| bad(format!("owner: {e}")))?),
    };
    let after = match request.page_token.as_str() {
        "" => None,
        token => Some(ListCursor::decode(token).map_err(|e| bad(e.to_string()))?),
    };
    let filter = TaskFilter {
        statuses,
        pattern,
        name_prefix: Some(request.name_prefix.clone()).filter(|p| !p.is_empty()),
        owner,
        created_after_ms: Some(request.created_after_unix_ms).filter(|&t| t > 0),
    };
    let page_size = usize::try_from(request.page_size).unwrap_or(usize::MAX);
    Ok(TaskQuery::new(filter, after, page_size))
}

/// The gRPC face of [`TaskApi`]; forwards what only the leader may do
/// when this node's coordinator does not lead.
pub struct TaskGrpc {
    api: TaskApi,
    /// Who may call; everybody when the node has no client tokens.
    auth: Authenticator,
    forwarder: Forwarder,
    /// One permit per open Watch stream (each may hold a registry
    /// watcher), so many Watches cannot exhaust the node or etcd.
    watches: Arc<Semaphore>,
    max_watches: usize,
}

impl TaskGrpc {
    /// `max_watches` bounds the Watch streams open at once on this node;
    /// `security` protects forwarding to the leader.
    pub fn server(
        api: TaskApi,
        auth: Authenticator,
        max_message_bytes: usize,
        max_watches: usize,
        security: Security,
    ) -> TaskServiceServer<Self> {
        TaskServiceServer::new(Self {
            api,
            auth: auth.for_service(SERVICE_NAME),
            forwarder: Forwarder::new(max_message_bytes, security),
            watches: Arc::new(Semaphore::new(max_watches)),
            max_watches,
        })
        .max_decoding_message_size(max_message_bytes)
        // Records carry their outputs twice, as JSON text and as
        // structured values, which have a budget of their own.
        .max_encoding_message_size(max_message_bytes + convert::MAX_VALUE_BYTES)
    }

    /// `None` when this node leads; otherwise the leader to forward to. A
    /// request that was forwarded already is not forwarded again: two
    /// coordinators that disagree on who leads must not bounce it forever.
    async fn forward_to<T>(&self, request: &Request<T>) -> Result<Option<Route>, tonic::Status> {
        match self.api.route().await? {
            Route::Here => Ok(None),
            Route::Leader { id, .. } if forward::was_forwarded(request) => {
                Err(ApiError::NotLeader(id).into())
            }
            leader => Ok(Some(leader)),
        }
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, ApiError> {
        Ok(self.auth.authenticate(request)?)
    }

    /// Whether `caller` may read (or with `cancel`, cancel) task `id`. The
    /// task's owner is looked up only when the caller's role depends on it.
    async fn check_task(&self, caller: &Caller, id: &TaskId, cancel: bool) -> Result<(), ApiError> {
        let owner = if caller.needs_owner() {
            self.api.get(id).await?.owner
        } else {
            None
        };
        let owner = owner.as_ref();
        let action = if cancel {
            Action::Cancel { owner }
        } else {
            Action::Read { owner }
        };
        Ok(caller.authorize(action)?)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::TaskRecord, tonic::Status>> + Send>>;

impl TaskGrpc {
    async fn submit_traced(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, tonic::Status> {
        let caller = self.authenticate(&request)?;
        caller.authorize(Action::Submit).map_err(ApiError::from)?;
        // An authenticated subject is the client: a name the client sends
        // for itself counts only when nobody is authenticated.
        let submitter = match &caller.principal {
            Some(principal) => Submitter::authenticated(principal.subject.clone()),
            None => Submitter::anonymous(client::identify(&request)?),
        };
        let key = IdempotencyKey::parse(&request.get_ref().idempotency_key)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let submitter = submitter.with_idempotency_key(key);
        let mut request = request;
        as_document(request.get_mut(), &self.api.limits)?;
        if let Some(leader) = self.forward_to(&request).await? {
            return self
                .forwarder
                .submit(&leader, request.into_inner(), &submitter.client, &caller)
                .await;
        }
        let request = request.into_inner();
        let reply = if request.wait {
            let record = self.api.run_as(&request.document, submitter).await?;
            pb::SubmitReply {
                task_id: record.id.to_string(),
                record: Some(convert::task_record(&record)),
            }
        } else {
            pb::SubmitReply {
                task_id: self
                    .api
                    .submit_as(&request.document, submitter)
                    .await?
                    .to_string(),
                record: None,
            }
        };
        Ok(Response::new(reply))
    }
}

#[tonic::async_trait]
impl TaskService for TaskGrpc {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, tonic::Status> {
        // The client's trace (its `traceparent`) continues here; the task
        // id is recorded once the task has one.
        let span = crate::span!(
            "Submit",
            rpc.system = "grpc",
            rpc.service = SERVICE_NAME,
            rpc.method = "Submit",
            task.id = tracing::field::Empty,
        );
        TraceParent::from_metadata(request.metadata()).adopt(&span);
        self.submit_traced(request).instrument(span).await
    }

    async fn get(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::TaskRecord>, tonic::Status> {
        let caller = self.authenticate(&request)?;
        let record = self
            .api
            .get(&TaskId::new(request.into_inner().task_id))
            .await?;
        caller
            .authorize(Action::Read {
                owner: record.owner.as_ref(),
            })
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::task_record(&record)))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchStream>, tonic::Status> {
        let caller = self.authenticate(&request)?;
        // Checked before any work; held until the stream is dropped.
        let permit = self
            .watches
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyWatches(self.max_watches))?;
        let request = request.into_inner();
        let id = TaskId::new(request.task_id);
        self.check_task(&caller, &id, false).await?;
        let records = self.api.watch(&id, request.after_revision).await?;
        let stream = records.map(move |item| {
            let _held = &permit;
            item.map(|r| convert::task_record(&r))
                .map_err(tonic::Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    /// Answered here, leader or not: a read of the store, like `Get`.
    async fn list(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksReply>, tonic::Status> {
        let caller = self.authenticate(&request)?;
        let request = request.into_inner();
        let mut query = list_query(&request)?;
        query.filter.owner = caller
            .list_owner(query.filter.owner.take())
            .map_err(ApiError::from)?;
        let page = self.api.list(&query).await?;
        Ok(Response::new(pb::ListTasksReply {
            tasks: page.records.iter().map(convert::task_summary).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelReply>, tonic::Status> {
        let caller = self.authenticate(&request)?;
        if let Some(leader) = self.forward_to(&request).await? {
            // The leader authenticates the caller again and decides.
            return self
                .forwarder
                .cancel(&leader, request.into_inner(), &caller)
                .await;
        }
        let request = request.into_inner();
        let id = TaskId::new(request.task_id);
        self.check_task(&caller, &id, true).await?;
        let reason = if request.reason.is_empty() {
            "cancelled by request".to_owned()
        } else {
            request.reason
        };
        let status = self.api.cancel(&id, reason).await?;
        Ok(Response::new(pb::CancelReply {
            status: convert::status(status).into(),
        }))
    }
}
