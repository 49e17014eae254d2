//! Starting agents: spawn the actor linked to the node's supervisor,
//! attach its bounded mailbox to the router, register it. The one way
//! agents start, for `agentmesh node` and `agentmesh local` alike.

use crate::llm::Providers;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agentmesh_core::hierarchy::{Level, StrategicPolicy, TacticalPolicy};
use agentmesh_core::{AgentId, AgentRegistration, Role};
use agentmesh_registry::{AgentDirectory, Registry};
use ractor::{Actor, ActorCell, ActorRef};
use tokio::sync::watch;
use tracing::{info, warn};

use super::config::{CoordinatorConfig, PeerConfig};
use super::error::NodeError;
use super::supervisor::{NodeSupervisor, SupervisorMessage};
use crate::actors::authority::Authority;
use crate::actors::coordinator::leadership::LeadershipLoop;
use crate::actors::coordinator::{
    Coordinator, CoordinatorArguments, CoordinatorHandle, CoordinatorInbox, RecordHub,
};
use crate::actors::faults::Faults;
use crate::actors::hierarchy::SeatArguments;
use crate::actors::peer::{Peer, PeerArguments, PeerInbox, PeerMessage};
use crate::actors::strategic::{Strategic, StrategicArguments, StrategicInbox, StrategicMessage};
use crate::actors::tactical::{
    Directors, Tactical, TacticalArguments, TacticalInbox, TacticalMessage,
};
use crate::actors::worker::{Worker, WorkerArguments, WorkerInbox, WorkerMessage};
use crate::support::background::Background;
use crate::tools::ToolBox;
use crate::transport::channel::Security;
use crate::transport::{Backlog, BoundedMailbox, Inbox, Router};

/// Version every agent reports in its registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often a worker's load is published when it changed.
const LOAD_PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// A new agent id: the role and a random suffix.
pub fn generate_id(role: Role) -> AgentId {
    AgentId::new(format!("{role}-{:08x}", rand::random::<u32>()))
}

/// Starts the agents of one node: every actor linked to the node's
/// supervisor, every background task owned by the node's [`Background`].
pub struct Spawner {
    registry: Arc<dyn Registry>,
    router: Arc<Router>,
    supervisor: ActorRef<SupervisorMessage>,
    /// The reason, once an agent failed.
    failed: watch::Receiver<Option<String>>,
    background: Background,
    /// The node's models, handed to the agents that think.
    providers: Providers,
}

/// A running coordinator and its election loop (it owns tasks only while
/// it leads).
pub struct StartedCoordinator {
    pub handle: CoordinatorHandle,
    pub leadership: LeadershipLoop,
}

/// A running worker (of a worker, peer or operational-level node).
pub struct StartedWorker {
    pub actor: ActorRef<WorkerMessage>,
    pub load: Arc<AtomicU32>,
    /// The peer actor of a `--role peer` node.
    pub peer: Option<ActorRef<PeerMessage>>,
}

impl Spawner {
    /// Starts the node's supervisor; agents started through this spawner
    /// are its children.
    pub async fn new(registry: Arc<dyn Registry>, router: Arc<Router>) -> Result<Self, NodeError> {
        let (report, failed) = watch::channel(None);
        let (supervisor, _) = Actor::spawn(None, NodeSupervisor, report)
            .await
            .map_err(|e| NodeError::Spawn(format!("node supervisor: {e}")))?;
        Ok(Self {
            registry,
            router,
            supervisor,
            failed,
            background: Background::new(),
            providers: Providers::none(),
        })
    }

    /// The node's models (none, the built-in rules only, by default).
    pub fn with_providers(mut self, providers: Providers) -> Self {
        self.providers = providers;
        self
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn background(&self) -> &Background {
        &self.background
    }

    /// Resolves with the reason once an agent of this node has failed.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut failed = self.failed.clone();
        async move {
            let reason = failed
                .wait_for(Option::is_some)
                .await
                .map(|reason| reason.clone().unwrap_or_default());
            match reason {
                Ok(reason) => reason,
                // The supervisor is gone: nothing can fail any more.
                Err(_) => std::future::pending().await,
            }
        }
    }

    fn link(&self) -> ActorCell {
        self.supervisor.get_cell()
    }

    /// Stops the supervisor (after its agents) and the background tasks.
    pub async fn stop(&self, timeout: Duration) {
        self.background.stop(timeout).await;
        self.supervisor.stop(Some("node shutdown".into()));
    }

    pub async fn coordinator(
        &self,
        id: AgentId,
        config: CoordinatorConfig,
        endpoint: &str,
    ) -> Result<StartedCoordinator, NodeError> {
        let hub = RecordHub::new(config.ended_cache_bytes);
        let backlog = self.router.new_backlog(&id);
        let args = CoordinatorArguments {
            id: id.clone(),
            registry: self.registry.clone(),
            router: self.router.clone(),
            config,
            hub: hub.clone(),
            backlog: backlog.clone(),
            background: self.background.clone(),
            providers: self.providers.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, Coordinator, args, self.link())
            .await
            .map_err(|e| NodeError::Spawn(format!("coordinator '{id}': {e}")))?;
        self.router.add_local(
            id.clone(),
            Arc::new(BoundedMailbox::new(
                id.clone(),
                CoordinatorInbox,
                actor.clone(),
                backlog,
            )),
        );
        self.registry
            .register(AgentRegistration {
                id: id.clone(),
                role: Role::Coordinator,
                level: None,
                capabilities: Vec::new(),
                endpoint: endpoint.to_owned(),
                load: 0,
                max_concurrency: 0,
                version: VERSION.to_owned(),
                faults: Vec::new(),
                insecure: self.router.config().security == Security::Plaintext,
                event_handlers: Vec::new(),
            })
            .await?;
        let leadership = LeadershipLoop::spawn(self.registry.clone(), id.clone(), actor.clone());
        info!(agent_id = %id, "coordinator started: campaigning for leadership");
        Ok(StartedCoordinator {
            handle: CoordinatorHandle {
                id,
                actor,
                hub,
                leading: leadership.leading(),
            },
            leadership,
        })
    }

    /// A worker; with `peer`, also the peer actor that proposes and bids
    /// for collaborations while the worker actor runs the tools.
    pub async fn worker(
        &self,
        registration: AgentRegistration,
        tools: &ToolBox,
        faults: Faults,
        peer: Option<PeerConfig>,
    ) -> Result<StartedWorker, NodeError> {
        let id = registration.id.clone();
        let load = Arc::new(AtomicU32::new(0));
        let backlog = self.router.new_backlog(&id);
        let args = WorkerArguments {
            id: id.clone(),
            tools: tools.restricted_to(&registration.capabilities),
            router: self.router.clone(),
            max_concurrency: registration.max_concurrency,
            load: load.clone(),
            backlog: backlog.clone(),
            faults,
            handlers: registration.event_handlers.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, Worker, args, self.link())
            .await
            .map_err(|e| NodeError::Spawn(format!("worker '{id}': {e}")))?;
        let worker_mailbox = BoundedMailbox::new(
            id.clone(),
            WorkerInbox::new(self.authority()),
            actor.clone(),
            backlog,
        );
        let mut peer_actor = None;
        match peer {
            None => self.router.add_local(id.clone(), Arc::new(worker_mailbox)),
            Some(config) => {
                let backlog = self.router.new_backlog(&id);
                let args = PeerArguments {
                    id: id.clone(),
                    capabilities: registration.capabilities.clone(),
                    max_concurrency: registration.max_concurrency,
                    load: load.clone(),
                    endpoint: registration.endpoint.clone(),
                    router: self.router.clone(),
                    registry: self.registry.clone(),
                    backlog: backlog.clone(),
                    config,
                    background: self.background.clone(),
                };
                let (peer, _) = Actor::spawn_linked(None, Peer, args, self.link())
                    .await
                    .map_err(|e| NodeError::Spawn(format!("peer '{id}': {e}")))?;
                let inbox = PeerInbox {
                    worker: worker_mailbox,
                    authority: self.authority(),
                };
                self.router.add_local(
                    id.clone(),
                    Arc::new(BoundedMailbox::new(
                        id.clone(),
                        inbox,
                        peer.clone(),
                        backlog,
                    )),
                );
                peer_actor = Some(peer);
            }
        }
        self.registry.register(registration.clone()).await?;
        info!(agent_id = %id, role = %registration.role, capabilities = ?registration.capabilities, "worker started");
        self.background.spawn(
            "load publisher",
            publish_load(registration, load.clone(), self.registry.clone()),
        );
        Ok(StartedWorker {
            actor,
            load,
            peer: peer_actor,
        })
    }

    /// A strategic or tactical level agent: it coordinates the level below
    /// and runs no tools. Operational-level agents are workers
    /// ([`Spawner::worker`]).
    pub async fn level(
        &self,
        registration: AgentRegistration,
        level: Level,
        tactical: TacticalPolicy,
        strategic: StrategicPolicy,
    ) -> Result<StartedLevel, NodeError> {
        let id = registration.id.clone();
        let backlog = self.router.new_backlog(&id);
        let seat = SeatArguments {
            id: id.clone(),
            router: self.router.clone(),
            registry: self.registry.clone(),
            backlog: backlog.clone(),
            background: self.background.clone(),
        };
        let started = match level {
            Level::Strategic => {
                let args = StrategicArguments {
                    seat,
                    policy: strategic,
                };
                let actor = self
                    .spawn_level(
                        &id,
                        level,
                        Strategic,
                        args,
                        StrategicInbox::new(self.authority()),
                        backlog,
                    )
                    .await?;
                StartedLevel::Strategic(actor)
            }
            Level::Tactical => {
                let directors = Directors::default();
                let args = TacticalArguments {
                    seat,
                    policy: tactical,
                    directors: directors.clone(),
                    authority: self.authority(),
                };
                let inbox = TacticalInbox::new(self.authority(), directors);
                let actor = self
                    .spawn_level(&id, level, Tactical, args, inbox, backlog)
                    .await?;
                StartedLevel::Tactical(actor)
            }
            Level::Operational => {
                return Err(NodeError::Spawn(format!(
                    "operational level '{id}': operational agents are workers"
                )));
            }
        };
        self.registry.register(registration).await?;
        info!(agent_id = %id, %level, "hierarchy level started");
        Ok(started)
    }

    /// What the inboxes of this node's agents check senders against.
    fn authority(&self) -> Authority {
        Authority::new(self.registry.membership(), self.registry.leader())
    }

    /// Spawns a level actor linked to the supervisor and attaches its
    /// bounded mailbox to the router.
    async fn spawn_level<A, I>(
        &self,
        id: &AgentId,
        level: Level,
        actor: A,
        args: A::Arguments,
        inbox: I,
        backlog: Arc<Backlog>,
    ) -> Result<ActorRef<A::Msg>, NodeError>
    where
        A: Actor,
        I: Inbox<Message = A::Msg>,
    {
        let (actor, _) = Actor::spawn_linked(None, actor, args, self.link())
            .await
            .map_err(|e| NodeError::Spawn(format!("{level} level '{id}': {e}")))?;
        self.router.add_local(
            id.clone(),
            Arc::new(BoundedMailbox::new(
                id.clone(),
                inbox,
                actor.clone(),
                backlog,
            )),
        );
        Ok(actor)
    }
}

/// A running strategic or tactical agent.
pub enum StartedLevel {
    Strategic(ActorRef<StrategicMessage>),
    Tactical(ActorRef<TacticalMessage>),
}

impl StartedLevel {
    pub fn stop(&self, reason: &str) {
        match self {
            Self::Strategic(actor) => actor.stop(Some(reason.into())),
            Self::Tactical(actor) => actor.stop(Some(reason.into())),
        }
    }
}

impl StartedWorker {
    /// Stops taking work, lets running subtasks finish for up to
    /// `drain_timeout`, then hands back what is still running.
    pub async fn drain(&self, drain_timeout: Duration) {
        let running = self
            .actor
            .call(WorkerMessage::Drain, Some(drain_timeout))
            .await;
        if let Ok(ractor::rpc::CallResult::Success(running)) = running
            && running > 0
        {
            info!(running, "draining running subtasks");
        }
        let deadline = tokio::time::Instant::now() + drain_timeout;
        while self.load.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.load.load(Ordering::Relaxed) > 0 {
            warn!("drain grace period over: handing running subtasks back");
            let _ = self
                .actor
                .call(WorkerMessage::HandBack, Some(drain_timeout))
                .await;
        }
    }

    pub fn stop(&self) {
        self.actor.stop(Some("node shutdown".into()));
        if let Some(peer) = &self.peer {
            peer.stop(Some("node shutdown".into()));
        }
    }
}

/// Re-registers the worker when its load changed, at most every
/// [`LOAD_PUBLISH_INTERVAL`], so `agents` shows it without a write per
/// subtask.
async fn publish_load(
    mut registration: AgentRegistration,
    load: Arc<AtomicU32>,
    registry: Arc<dyn AgentDirectory>,
) {
    let mut interval = tokio::time::interval(LOAD_PUBLISH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let now = load.load(Ordering::Relaxed);
        if now == registration.load {
            continue;
        }
        registration.load = now;
        if let Err(error) = registry.register(registration.clone()).await {
            warn!(%error, agent_id = %registration.id, "could not publish worker load");
        }
    }
}
