//! The leader's event router (docs/events.md): a task started when this
//! coordinator wins leadership and dropped when it loses it, driving the
//! pure [`agentmesh_core::events::Router`].
//!
//! ```text
//! Publish / task emits ──▶ Coordinator ──Command──▶ EventRouter task ──fenced writes──▶ EventStore
//!                                                      │ event.deliver (mailbox)        ▲ restore on lead
//! event.ack (mailbox) ──▶ Coordinator ──Command──▶     ▼                                │
//!                                                   agents with a matching --event-handler
//! ```
//!
//! Everything the router decides is persisted before it is acted on or
//! answered: an accepted event is durable before `Publish` returns, a
//! spent attempt before the next is sent, a dead letter before its lane
//! moves on. A new leader restores the records and sends again what was in
//! flight (at least once).

use crate::api::task::Parsed;
use agentmesh_core::reactive::RoutingTable;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::events::{
    Ack, AckOutcome, Dispatch, Event, EventDraft, EventError, HandlerAction, HandlerSpec, Refusal,
    Router, Subscription, handler,
};
use agentmesh_core::task::TaskLimits;
use agentmesh_core::{AgentId, ClientId, Membership};
use agentmesh_proto::v1::{EventAck, EventDelivery};
use agentmesh_registry::{EventWrite, Leadership, Registry, RegistryError};
use ractor::ActorRef;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::CoordinatorMessage;
use crate::metrics::{self, RefusalReason, events::DeliveryOutcome};
use crate::node::config::EventsConfig;
use crate::support::clock::now_ms;
use crate::transport::{self, DeliverError, Kind};

/// Commands queued for the router; a publish past it is refused at once.
const COMMANDS: usize = 1024;
/// Event types whose first unhandled event is logged; later types are
/// only counted.
const MAX_LOGGED_UNHANDLED: usize = 1024;
/// Pauses between attempts to read the stored events after winning.
const RESTORE_RETRY: Duration = Duration::from_millis(200);
/// Longest task file a `task:` handler may hand back, in bytes.
pub const MAX_HANDLER_DOCUMENT_BYTES: usize = 1024 * 1024;
/// How long an agent a delivery could not reach is passed over: about
/// as long as a dead node's lease takes to expire, after which it has
/// left the membership anyway.
const UNREACHABLE_COOL_DOWN_MS: u64 = 10_000;
/// The client handler tasks are submitted as.
const HANDLER_CLIENT: &str = "events";
/// How long a handler's task may take to be accepted.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// An accepted event: its id and the subscriptions it goes to (none when
/// it was unhandled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub event_id: String,
    pub subscriptions: Vec<String>,
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublishError {
    #[error(transparent)]
    Invalid(#[from] EventError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the event router is busy: {COMMANDS} commands queued; retry later")]
    Busy,
    #[error("this coordinator is not the leader (any more); retry")]
    NotLeader,
    #[error("event could not be persisted: {0}")]
    NotPersisted(String),
}

/// What the router is told.
#[derive(Debug)]
pub enum Command {
    Publish {
        draft: EventDraft,
        source: String,
        reply: Option<oneshot::Sender<Result<Published, PublishError>>>,
    },
    /// An `event.ack`, its sender checked to be the agent it names.
    Ack(EventAck),
    /// A delivery or a handler's task that failed on this side.
    Failed {
        event_id: String,
        subscription: String,
        attempt: u32,
        agent: AgentId,
        error: String,
        /// The agent's node could not be reached: it is passed over for a
        /// while, so the retries go to another agent.
        unreachable: bool,
    },
    /// A handler's task was accepted: the delivery is done.
    Done {
        event_id: String,
        subscription: String,
        attempt: u32,
        agent: AgentId,
    },
}

/// The running router; dropping it stops the task.
pub struct EventRouterHandle {
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EventRouterHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the handlers' task files are checked with: the same as a client's
/// submit.
pub struct HandlerTasks {
    pub limits: TaskLimits,
    pub routing_table: Arc<RoutingTable>,
}

impl EventRouterHandle {
    /// Starts the router of the term `leadership` holds.
    pub fn spawn(
        id: AgentId,
        registry: Arc<dyn Registry>,
        transport: Arc<transport::Router>,
        leadership: Leadership,
        config: EventsConfig,
        tasks: HandlerTasks,
        coordinator: ActorRef<CoordinatorMessage>,
    ) -> Self {
        let (commands, inbox) = mpsc::channel(COMMANDS);
        let state = RouterTask {
            id,
            router: Router::new(config.router),
            config,
            task_limits: tasks.limits,
            routing_table: tasks.routing_table,
            membership: registry.membership().borrow().clone(),
            registry,
            transport,
            leadership,
            coordinator,
            commands: commands.clone(),
            seqs: HashMap::new(),
            next_seq: 1,
            unhandled_logged: HashSet::new(),
            unreachable: HashMap::new(),
        };
        let task = tokio::spawn(state.run(inbox));
        Self { commands, task }
    }

    /// Queues `command`; a full queue refuses a publish at once.
    pub fn send(&self, command: Command) {
        if let Err(error) = self.commands.try_send(command) {
            let command = match error {
                mpsc::error::TrySendError::Full(command) => command,
                mpsc::error::TrySendError::Closed(command) => command,
            };
            match command {
                Command::Publish {
                    reply: Some(reply), ..
                } => {
                    let _ = reply.send(Err(PublishError::Busy));
                }
                other => debug!(?other, "event router busy or stopped: command dropped"),
            }
        }
    }
}

struct RouterTask {
    id: AgentId,
    router: Router,
    config: EventsConfig,
    task_limits: TaskLimits,
    /// What a handler's reactive task is routed with, as at submit.
    routing_table: Arc<RoutingTable>,
    membership: Arc<Membership>,
    registry: Arc<dyn Registry>,
    transport: Arc<transport::Router>,
    leadership: Leadership,
    coordinator: ActorRef<CoordinatorMessage>,
    commands: mpsc::Sender<Command>,
    /// The `seq` of every unsettled event, to delete its record by key.
    seqs: HashMap<String, u64>,
    next_seq: u64,
    unhandled_logged: HashSet<String>,
    /// Agents a delivery could not reach, until when they are passed over.
    unreachable: HashMap<AgentId, u64>,
}

impl RouterTask {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        if !self.restore().await {
            return;
        }
        let mut membership = self.registry.membership();
        // Agents that joined or left since the snapshot taken at spawn:
        // a new receiver sees only later changes, so without this a
        // handler that registered meanwhile stays unknown until the
        // membership next changes.
        let view = membership.borrow_and_update().clone();
        self.membership_changed(view).await;
        loop {
            self.dispatch().await;
            let wake = self.router.next_wake_ms();
            let sleep = wake.map_or(Duration::from_secs(3600), |at| {
                Duration::from_millis(at.saturating_sub(now_ms()))
            });
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => return,
                },
                changed = membership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let view = membership.borrow_and_update().clone();
                    self.membership_changed(view).await;
                }
                _ = tokio::time::sleep(sleep) => {
                    let outcomes = self.router.expire(now_ms(), rand::random());
                    self.apply(outcomes, DeliveryOutcome::Timeout).await;
                }
                _ = self.leadership.lost() => return,
            }
            if !self.leadership.is_held() {
                return;
            }
        }
    }

    /// Takes over what earlier leaders stored; `false` when the term ended
    /// first.
    async fn restore(&mut self) -> bool {
        loop {
            let loaded = async {
                let records = self.registry.pending_events().await?;
                let newest_dead = self.registry.dead_letters(1).await?;
                Ok::<_, RegistryError>((records, newest_dead))
            };
            let error = tokio::select! {
                loaded = loaded => match loaded {
                    Ok((records, dead)) => {
                        let highest = records
                            .iter()
                            .map(|r| r.event.seq)
                            .chain(dead.iter().map(|d| d.event.seq))
                            .max()
                            .unwrap_or(0);
                        self.next_seq = highest + 1;
                        for record in &records {
                            self.seqs.insert(record.event.id.clone(), record.event.seq);
                        }
                        let count = records.len();
                        self.router.restore(records);
                        info!(events = count, pending = self.router.pending(), next_seq = self.next_seq, "event router restored");
                        return true;
                    }
                    Err(error) => error,
                },
                _ = self.leadership.lost() => return false,
            };
            if matches!(error, RegistryError::Closed) || !self.leadership.is_held() {
                return false;
            }
            warn!(%error, "could not restore stored events; retrying");
            tokio::time::sleep(RESTORE_RETRY).await;
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Publish {
                draft,
                source,
                reply,
            } => {
                let answer = self.publish(draft, source).await;
                if let Some(reply) = reply {
                    let _ = reply.send(answer);
                } else if let Err(error) = answer {
                    warn!(%error, "event emitted by a task refused");
                }
            }
            Command::Ack(ack) => self.ack(ack).await,
            Command::Failed {
                event_id,
                subscription,
                attempt,
                agent,
                error,
                unreachable,
            } => {
                if unreachable {
                    self.unreachable
                        .insert(agent.clone(), now_ms() + UNREACHABLE_COOL_DOWN_MS);
                }
                let ack = Ack {
                    event_id,
                    subscription: subscription_of(subscription),
                    attempt,
                    from: agent,
                    result: Err(error),
                };
                self.answer(ack).await;
            }
            Command::Done {
                event_id,
                subscription,
                attempt,
                agent,
            } => {
                let ack = Ack {
                    event_id,
                    subscription: subscription_of(subscription),
                    attempt,
                    from: agent,
                    result: Ok(()),
                };
                self.answer(ack).await;
            }
        }
    }

    async fn publish(
        &mut self,
        draft: EventDraft,
        source: String,
    ) -> Result<Published, PublishError> {
        // Checked again here: emits do not pass through the API.
        draft.check(&self.config.limits)?;
        let subscriptions = handler::matching(self.declared().iter(), &draft.event_type);
        let id = uuid::Uuid::new_v4().to_string();
        if subscriptions.is_empty() {
            self.unhandled(&draft.event_type);
            return Ok(Published {
                event_id: id,
                subscriptions: Vec::new(),
            });
        }
        let event = draft.accept(id.clone(), source, self.next_seq, now_ms());
        let record = self.router.offer(event, &subscriptions)?;
        self.next_seq += 1;
        self.seqs.insert(id.clone(), record.event.seq);
        metrics::event_published();
        if let Err(error) = self.write(vec![EventWrite::Put(record)]).await {
            // Queued already: it is delivered whatever the publisher hears
            // (at least once; a retried publish is a second event).
            return Err(PublishError::NotPersisted(error.to_string()));
        }
        debug!(event_id = %id, subscriptions = subscriptions.len(), "event accepted");
        Ok(Published {
            event_id: id,
            subscriptions: subscriptions.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn unhandled(&mut self, event_type: &str) {
        metrics::event_unhandled(event_type);
        if self.unhandled_logged.len() < MAX_LOGGED_UNHANDLED
            && self.unhandled_logged.insert(event_type.to_owned())
        {
            warn!(
                event_type,
                "event of a type no live agent handles: accepted, not stored (logged once per type)"
            );
        }
    }

    /// Every handler live agents declare.
    fn declared(&self) -> BTreeSet<HandlerSpec> {
        self.membership
            .agents
            .values()
            .flat_map(|agent| agent.event_handlers.iter().cloned())
            .collect()
    }

    async fn ack(&mut self, ack: EventAck) {
        let agent = AgentId::new(ack.agent.clone());
        if ack.ok && !ack.task_document.is_empty() {
            self.submit_handler_task(ack, agent);
            return;
        }
        let result = if ack.ok { Ok(()) } else { Err(ack.error) };
        self.answer(Ack {
            event_id: ack.event_id,
            subscription: subscription_of(ack.subscription),
            attempt: ack.attempt,
            from: agent,
            result,
        })
        .await;
    }

    /// Submits a `task:` handler's task as the event's publisher; the
    /// delivery is done once the task is accepted (durable).
    fn submit_handler_task(&self, ack: EventAck, agent: AgentId) {
        let current = self
            .router
            .state(&ack.event_id, &subscription_of(ack.subscription.clone()));
        if !matches!(current, Some(agentmesh_core::events::DeliveryState::InFlight { attempt, .. }) if attempt == ack.attempt)
        {
            debug!(event_id = %ack.event_id, "stale handler task ignored");
            return;
        }
        let limits = self.task_limits.clone();
        let table = self.routing_table.clone();
        let membership = self.membership.clone();
        let coordinator = self.coordinator.clone();
        let commands = self.commands.clone();
        let source = self
            .router
            .record(&ack.event_id)
            .map(|r| r.event.source)
            .unwrap_or_default();
        tokio::spawn(async move {
            let outcome = submit(
                &ack.task_document,
                &limits,
                &membership,
                &table,
                &coordinator,
                &source,
            )
            .await;
            let command = match outcome {
                Ok(task) => {
                    info!(event_id = %ack.event_id, task_id = %task, subscription = %ack.subscription, "event handler task accepted");
                    Command::Done {
                        event_id: ack.event_id,
                        subscription: ack.subscription,
                        attempt: ack.attempt,
                        agent,
                    }
                }
                Err(error) => Command::Failed {
                    event_id: ack.event_id,
                    subscription: ack.subscription,
                    attempt: ack.attempt,
                    agent,
                    error: format!("the handler's task was refused: {error}"),
                    unreachable: false,
                },
            };
            let _ = commands.send(command).await;
        });
    }

    async fn answer(&mut self, ack: Ack) {
        let ok = ack.result.is_ok();
        let outcome = self.router.ack(ack, now_ms(), rand::random());
        let kind = if ok {
            DeliveryOutcome::Ok
        } else {
            DeliveryOutcome::Failed
        };
        self.apply(vec![outcome], kind).await;
    }

    /// Persists what acks, timeouts and lost agents decided.
    async fn apply(&mut self, outcomes: Vec<AckOutcome>, kind: DeliveryOutcome) {
        let mut writes = Vec::new();
        for outcome in outcomes {
            match outcome {
                AckOutcome::Settled(settled) => {
                    metrics::event_delivered(kind);
                    if let Some(dead) = settled.dead {
                        metrics::event_dead_lettered();
                        warn!(event_id = %settled.event_id, subscription = %settled.subscription, attempts = dead.attempts, error = %dead.last_error, "event delivery ran out of attempts: dead-lettered");
                        writes.push(EventWrite::Dead(dead));
                    }
                    match settled.record {
                        Some(record) => writes.push(EventWrite::Put(record)),
                        None => {
                            if let Some(seq) = self.seqs.remove(&settled.event_id) {
                                writes.push(EventWrite::Delete {
                                    seq,
                                    id: settled.event_id,
                                });
                            }
                        }
                    }
                }
                AckOutcome::Retry { record, .. } => {
                    metrics::event_delivered(kind);
                    metrics::event_retried();
                    writes.push(EventWrite::Put(record));
                }
                AckOutcome::Stale => debug!("stale event acknowledgement ignored"),
                AckOutcome::WrongAgent { holder } => {
                    warn!(%holder, "ignored an event acknowledgement from an agent the attempt was not given to");
                    metrics::refused_envelope(Kind::EventAck.as_str(), RefusalReason::NotOwner);
                }
            }
        }
        if writes.iter().any(|w| matches!(w, EventWrite::Dead(_))) {
            writes.push(EventWrite::TrimDeadLetters {
                keep: self.config.max_dead_letters,
            });
        }
        if !writes.is_empty()
            && let Err(error) = self.write(writes).await
        {
            warn!(%error, "could not persist event deliveries");
        }
    }

    async fn membership_changed(&mut self, view: Arc<Membership>) {
        let left: Vec<AgentId> = self
            .membership
            .agents
            .keys()
            .filter(|id| !view.agents.contains_key(*id))
            .cloned()
            .collect();
        self.membership = view;
        for agent in left {
            let outcomes = self.router.agent_left(&agent, now_ms(), rand::random());
            self.apply(outcomes, DeliveryOutcome::Lost).await;
        }
    }

    /// Sends every delivery that is due, after persisting its spent attempt.
    async fn dispatch(&mut self) {
        let membership = self.membership.clone();
        let now = now_ms();
        self.unreachable.retain(|_, until| *until > now);
        let unreachable = &self.unreachable;
        let dispatches = self.router.dispatch(now, |subscription, _key| {
            pick(&membership, subscription, unreachable)
        });
        if dispatches.is_empty() {
            return;
        }
        let writes: Vec<EventWrite> = dispatches
            .iter()
            .filter_map(|d| self.router.record(&d.event.id))
            .map(EventWrite::Put)
            .collect();
        if let Err(error) = self.write(writes).await {
            warn!(%error, "could not persist event attempts; sending anyway");
        }
        for dispatch in dispatches {
            self.send(dispatch);
        }
    }

    fn send(&self, dispatch: Dispatch) {
        let Dispatch {
            event,
            subscription,
            agent,
            attempt,
        } = dispatch;
        let delivery = delivery(&event, &subscription, attempt);
        let envelope = transport::envelope(&self.id, &agent, Kind::EventDeliver, delivery);
        let transport = self.transport.clone();
        let commands = self.commands.clone();
        self.transport
            .background()
            .spawn("event deliver", async move {
                if let Err(error) = transport.send(envelope).await {
                    let _ = commands
                        .send(Command::Failed {
                            event_id: event.id,
                            subscription: subscription.to_string(),
                            attempt,
                            agent,
                            unreachable: matches!(error, DeliverError::Unreachable { .. }),
                            error: format!("not delivered: {error}"),
                        })
                        .await;
                }
            });
    }

    async fn write(&self, writes: Vec<EventWrite>) -> Result<(), RegistryError> {
        if writes.is_empty() {
            return Ok(());
        }
        let trimmed = self
            .registry
            .write_events_fenced(&writes, &self.leadership.fence)
            .await?;
        if trimmed > 0 {
            metrics::event_dead_letters_trimmed(trimmed);
            debug!(
                trimmed,
                keep = self.config.max_dead_letters,
                "oldest dead letters deleted (--max-dead-letters)"
            );
        }
        Ok(())
    }
}

/// A live agent declaring `subscription`, the least loaded first (ties by
/// id, so the choice is stable).
fn pick(
    membership: &Membership,
    subscription: &Subscription,
    unreachable: &HashMap<AgentId, u64>,
) -> Option<AgentId> {
    membership
        .agents
        .values()
        .filter(|agent| !unreachable.contains_key(&agent.id))
        .filter(|agent| {
            agent
                .event_handlers
                .iter()
                .any(|spec| spec.subscription() == *subscription)
        })
        .min_by_key(|agent| (agent.load, agent.id.clone()))
        .map(|agent| agent.id.clone())
}

fn subscription_of(text: String) -> Subscription {
    serde_json::from_value(serde_json::Value::String(text)).expect("a string is a subscription")
}

/// The `event.deliver` payload of one attempt.
pub fn delivery(event: &Event, subscription: &Subscription, attempt: u32) -> EventDelivery {
    EventDelivery {
        event_id: event.id.clone(),
        r#type: event.event_type.clone(),
        key: event.key.clone(),
        payload_json: event.payload.to_string(),
        source: event.source.clone(),
        subscription: subscription.to_string(),
        attempt,
        published_unix_ms: event.published_ms,
        seq: event.seq,
    }
}

/// The event a delivery carries.
pub fn event_of(delivery: &EventDelivery) -> Event {
    Event {
        id: delivery.event_id.clone(),
        event_type: delivery.r#type.clone(),
        key: delivery.key.clone(),
        payload: serde_json::from_str(&delivery.payload_json).unwrap_or_default(),
        source: delivery.source.clone(),
        seq: delivery.seq,
        published_ms: delivery.published_unix_ms,
    }
}

/// The handler of this agent's that `delivery` names, if it declared it.
pub fn handler_for(declared: &[HandlerSpec], delivery: &EventDelivery) -> Option<HandlerAction> {
    declared
        .iter()
        .find(|spec| {
            spec.to_string() == delivery.subscription && spec.pattern.matches(&delivery.r#type)
        })
        .map(|spec| spec.action.clone())
}

/// Validates `document` against the live cluster and hands it to the
/// coordinator as a task of `source`'s; the task's id once durable.
async fn submit(
    document: &str,
    limits: &TaskLimits,
    membership: &Membership,
    table: &RoutingTable,
    coordinator: &ActorRef<CoordinatorMessage>,
    source: &str,
) -> Result<agentmesh_core::TaskId, String> {
    if document.len() > MAX_HANDLER_DOCUMENT_BYTES {
        return Err(format!(
            "task file is {} bytes, over the limit of {MAX_HANDLER_DOCUMENT_BYTES}",
            document.len()
        ));
    }
    // The provider fallback and the decomposition of a natural-language
    // request run where a client's submit is taken: a handler's task file
    // must be one that needs neither.
    let mut record = match crate::api::task::new_record(document, limits, membership, table)
        .map_err(|e| e.to_string())?
    {
        Parsed::Record(record) => record,
        Parsed::Unplaced(..) => {
            return Err("the handler's reactive request fits no tool of the routing table".into());
        }
        Parsed::Request(_) => {
            return Err("a handler's task file gives tasks, not a natural-language request".into());
        }
    };
    // Handler tasks share one client, so they share one fair share and
    // one set of per-client limits; the record names the event's publisher.
    record.client = Some(ClientId::parse(HANDLER_CLIENT).unwrap_or_else(|_| ClientId::unnamed()));
    record.name = format!("{} (event handler for {source})", record.name);
    let answer = coordinator
        .call(
            |reply| CoordinatorMessage::Submit {
                record,
                trace: Default::default(),
                reply,
            },
            Some(SUBMIT_TIMEOUT),
        )
        .await;
    let accepted = match answer {
        Ok(ractor::rpc::CallResult::Success(Ok(accepted))) => accepted,
        Ok(ractor::rpc::CallResult::Success(Err(error))) => return Err(error.to_string()),
        Ok(_) => return Err("the coordinator did not answer in time".into()),
        Err(error) => return Err(error.to_string()),
    };
    accepted.durable().await.map_err(|e| e.to_string())
}
