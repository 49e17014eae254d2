//! Starting agents: spawn the actor, attach its mailbox to the router,
//! register it. Shared by a cluster node and by `agentmesh local`, so both
//! run the same actors the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agentmesh_core::{AgentId, AgentRegistration, Role};
use agentmesh_registry::{AgentDirectory, Registry};
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::CoordinatorConfig;
use crate::config::PeerConfig;
use crate::coordinator::leadership::LeadershipLoop;
use crate::coordinator::{
    Coordinator, CoordinatorArguments, CoordinatorMailbox, CoordinatorMessage, RecordHub,
};
use crate::faults::Faults;
use crate::level::{Level, LevelArguments, LevelMailbox, LevelMessage};
use crate::mailbox::Router;
use crate::node::NodeError;
use crate::peer::{Peer, PeerArguments, PeerMailbox, PeerMessage};
use crate::tools::ToolBox;
use crate::worker::{Worker, WorkerArguments, WorkerMailbox, WorkerMessage};

/// Version every agent reports in its registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often a worker's load is published when it changed.
const LOAD_PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// A new agent id: the role and a random suffix.
pub fn generate_id(role: Role) -> AgentId {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    AgentId::new(format!("{role}-{}", &uuid[..8]))
}

/// A running coordinator, the hub of its tasks' durable records and its
/// election loop (it owns tasks only while it leads).
pub struct StartedCoordinator {
    pub id: AgentId,
    pub actor: ActorRef<CoordinatorMessage>,
    pub hub: RecordHub,
    pub leadership: LeadershipLoop,
}

pub async fn start_coordinator(
    id: AgentId,
    registry: Arc<dyn Registry>,
    router: Arc<Router>,
    config: CoordinatorConfig,
    endpoint: &str,
) -> Result<StartedCoordinator, NodeError> {
    let hub = RecordHub::default();
    let backlog = router.new_backlog();
    let args = CoordinatorArguments {
        id: id.clone(),
        registry: registry.clone(),
        router: router.clone(),
        config,
        hub: hub.clone(),
        backlog: backlog.clone(),
    };
    let (actor, _) = Actor::spawn(None, Coordinator, args)
        .await
        .map_err(|e| NodeError::Spawn(format!("coordinator '{id}': {e}")))?;
    router.add_local(
        id.clone(),
        Arc::new(CoordinatorMailbox(actor.clone(), backlog)),
    );
    registry
        .register(AgentRegistration {
            id: id.clone(),
            role: Role::Coordinator,
            level: None,
            capabilities: Vec::new(),
            endpoint: endpoint.to_owned(),
            load: 0,
            max_concurrency: 0,
            version: VERSION.to_owned(),
        })
        .await?;
    let leadership = LeadershipLoop::spawn(registry, id.clone(), actor.clone());
    info!(agent_id = %id, "coordinator started: campaigning for leadership");
    Ok(StartedCoordinator {
        id,
        actor,
        hub,
        leadership,
    })
}

/// A running worker and the task that publishes its load.
pub struct StartedWorker {
    pub actor: ActorRef<WorkerMessage>,
    pub load: Arc<AtomicU32>,
    pub publisher: JoinHandle<()>,
    /// The peer actor of a `--role peer` node.
    pub peer: Option<ActorRef<PeerMessage>>,
}

pub async fn start_worker(
    registration: AgentRegistration,
    tools: ToolBox,
    faults: Faults,
    registry: Arc<dyn Registry>,
    router: Arc<Router>,
) -> Result<StartedWorker, NodeError> {
    start_worker_with(registration, tools, faults, registry, router, None).await
}

/// A worker that also collaborates as a peer: its peer actor proposes and
/// bids for collaborations, its worker actor runs the tools.
pub async fn start_peer(
    registration: AgentRegistration,
    tools: ToolBox,
    faults: Faults,
    registry: Arc<dyn Registry>,
    router: Arc<Router>,
    config: PeerConfig,
) -> Result<StartedWorker, NodeError> {
    start_worker_with(registration, tools, faults, registry, router, Some(config)).await
}

async fn start_worker_with(
    registration: AgentRegistration,
    tools: ToolBox,
    faults: Faults,
    registry: Arc<dyn Registry>,
    router: Arc<Router>,
    peer: Option<PeerConfig>,
) -> Result<StartedWorker, NodeError> {
    let id = registration.id.clone();
    let load = Arc::new(AtomicU32::new(0));
    let backlog = router.new_backlog();
    let args = WorkerArguments {
        id: id.clone(),
        tools: tools.restricted_to(&registration.capabilities),
        router: router.clone(),
        max_concurrency: registration.max_concurrency,
        load: load.clone(),
        backlog: backlog.clone(),
        faults,
    };
    let (actor, _) = Actor::spawn(None, Worker, args)
        .await
        .map_err(|e| NodeError::Spawn(format!("worker '{id}': {e}")))?;
    let worker_mailbox = WorkerMailbox(actor.clone(), backlog);
    let mut peer_actor = None;
    match peer {
        None => router.add_local(id.clone(), Arc::new(worker_mailbox)),
        Some(config) => {
            let args = PeerArguments {
                id: id.clone(),
                capabilities: registration.capabilities.clone(),
                max_concurrency: registration.max_concurrency,
                load: load.clone(),
                endpoint: registration.endpoint.clone(),
                router: router.clone(),
                registry: registry.clone(),
                backlog: router.new_backlog(),
                config,
            };
            let backlog = args.backlog.clone();
            let (peer, _) = Actor::spawn(None, Peer, args)
                .await
                .map_err(|e| NodeError::Spawn(format!("peer '{id}': {e}")))?;
            router.add_local(
                id.clone(),
                Arc::new(PeerMailbox {
                    worker: worker_mailbox,
                    peer: peer.clone(),
                    backlog,
                }),
            );
            peer_actor = Some(peer);
        }
    }
    registry.register(registration.clone()).await?;
    info!(agent_id = %id, role = %registration.role, capabilities = ?registration.capabilities, "worker started");
    let publisher = tokio::spawn(publish_load(registration, load.clone(), registry));
    Ok(StartedWorker {
        actor,
        load,
        publisher,
        peer: peer_actor,
    })
}

/// A strategic or tactical level agent: it coordinates the level below
/// and runs no tools.
pub async fn start_level(
    registration: AgentRegistration,
    level: agentmesh_core::hierarchy::Level,
    registry: Arc<dyn Registry>,
    router: Arc<Router>,
    tactical: agentmesh_core::hierarchy::TacticalPolicy,
    strategic: agentmesh_core::hierarchy::StrategicPolicy,
) -> Result<ActorRef<LevelMessage>, NodeError> {
    let id = registration.id.clone();
    let backlog = router.new_backlog();
    let args = LevelArguments {
        id: id.clone(),
        level,
        router: router.clone(),
        registry: registry.clone(),
        backlog: backlog.clone(),
        tactical,
        strategic,
    };
    let (actor, _) = Actor::spawn(None, Level, args)
        .await
        .map_err(|e| NodeError::Spawn(format!("{level} level '{id}': {e}")))?;
    router.add_local(
        id.clone(),
        Arc::new(LevelMailbox {
            actor: actor.clone(),
            backlog,
        }),
    );
    registry.register(registration).await?;
    info!(agent_id = %id, %level, "hierarchy level started");
    Ok(actor)
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
