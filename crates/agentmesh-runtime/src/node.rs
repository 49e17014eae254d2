//! One cluster node: its agents, its gRPC server, and an orderly stop.
//!
//! ```text
//! Node
//!  ├─ gRPC server: AgentMailbox, TaskService, ClusterService, health, reflection
//!  ├─ Router ── local mailboxes of the agents below
//!  ├─ Coordinator actor (role coordinator)
//!  └─ Worker actor (role worker) + load publisher
//! ```
//!
//! The listener is injected so tests and the binary bind where they like
//! (port 0 included) and learn the address before anything is served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agentmesh_core::{AgentId, AgentRegistration, Role};
use agentmesh_proto::v1::FILE_DESCRIPTOR_SET;
use agentmesh_proto::v1::agent_mailbox_server::AgentMailboxServer;
use agentmesh_proto::v1::cluster_service_server::ClusterServiceServer;
use agentmesh_proto::v1::task_service_server::TaskServiceServer;
use agentmesh_registry::{Registry, RegistryError};
use ractor::ActorRef;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::agents::{self, StartedWorker, VERSION};
use crate::config::{ConfigError, NodeConfig};
use crate::coordinator::CoordinatorMessage;
use crate::coordinator::leadership::LeadershipLoop;
use crate::level::LevelMessage;
use crate::mailbox::{MailboxService, Router};
use crate::services::cluster::ClusterGrpc;
use crate::services::task::{TaskApi, TaskGrpc};
use crate::tools::ToolBox;
use crate::worker::WorkerMessage;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("failed to start actor {0}")]
    Spawn(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("failed to read the listener's address: {0}")]
    Listener(#[from] std::io::Error),
    #[error("gRPC server failed: {0}")]
    Serve(String),
}

/// A running node.
pub struct Node {
    addr: SocketAddr,
    agents: Vec<AgentId>,
    registry: Arc<dyn Registry>,
    router: Arc<Router>,
    coordinator: Option<ActorRef<CoordinatorMessage>>,
    /// A strategic or tactical level's actor.
    level: Option<ActorRef<LevelMessage>>,
    /// The coordinator's election loop, to step down before leaving.
    leadership: Option<LeadershipLoop>,
    worker: Option<StartedWorker>,
    health: HealthReporter,
    /// Mirrors etcd's reachability into gRPC health until shutdown.
    store_health: JoinHandle<()>,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Node {
    /// Validates the configuration, starts the node's agents, registers
    /// them and serves gRPC on `listener`.
    pub async fn start(
        mut config: NodeConfig,
        registry: Arc<dyn Registry>,
        listener: TcpListener,
    ) -> Result<Self, NodeError> {
        let tools = ToolBox::builtin(&config.http_allow);
        config.validate(&tools)?;
        if !config.faults.is_empty() {
            let faults: Vec<String> = config.faults.0.iter().map(ToString::to_string).collect();
            warn!(faults = %faults.join(","), "fault injection is on: this node misbehaves on purpose");
        }
        let addr = listener.local_addr()?;
        let endpoint = config.advertise.clone().unwrap_or_else(|| addr.to_string());
        let router = Router::new(registry.membership(), config.mailbox.clone());
        let id = config
            .id
            .clone()
            .map(AgentId::from)
            .unwrap_or_else(|| agents::generate_id(config.role));

        let mut started_coordinator = None;
        let mut worker = None;
        let mut level_actor = None;
        match config.role {
            Role::Coordinator => {
                started_coordinator = Some(
                    agents::start_coordinator(
                        id.clone(),
                        registry.clone(),
                        router.clone(),
                        config.coordinator.clone(),
                        &endpoint,
                    )
                    .await?,
                );
            }
            // Peers and hierarchy levels execute work like workers until
            // their own protocols exist; they register with their role.
            Role::Worker | Role::Peer | Role::Level => {
                let registration = AgentRegistration {
                    id: id.clone(),
                    role: config.role,
                    level: config.level.clone(),
                    capabilities: config.capabilities.clone(),
                    endpoint: endpoint.clone(),
                    load: 0,
                    max_concurrency: config.max_concurrency,
                    version: VERSION.to_owned(),
                };
                let faults = config.faults.clone();
                if config.coordinating_level().is_some() {
                    let level = config
                        .level
                        .as_deref()
                        .unwrap_or_default()
                        .parse()
                        .map_err(|e| NodeError::Spawn(format!("{e}")))?;
                    level_actor = Some(
                        agents::start_level(
                            registration,
                            level,
                            registry.clone(),
                            router.clone(),
                            config.tactical,
                            config.strategic,
                        )
                        .await?,
                    );
                } else {
                    worker = Some(if config.role == Role::Peer {
                        agents::start_peer(
                            registration,
                            tools,
                            faults,
                            registry.clone(),
                            router.clone(),
                            config.peer.clone(),
                        )
                        .await?
                    } else {
                        agents::start_worker(
                            registration,
                            tools,
                            faults,
                            registry.clone(),
                            router.clone(),
                        )
                        .await?
                    });
                }
            }
        }

        let coordinator = started_coordinator.as_ref().map(|c| c.actor.clone());
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<AgentMailboxServer<MailboxService>>()
            .await;
        health
            .set_serving::<ClusterServiceServer<ClusterGrpc>>()
            .await;
        if coordinator.is_some() {
            health.set_serving::<TaskServiceServer<TaskGrpc>>().await;
        }
        let store_health = tokio::spawn(follow_store_health(
            health.clone(),
            registry.store_reachable(),
            coordinator.is_some(),
        ));
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| NodeError::Serve(format!("reflection: {e}")))?;
        let api = TaskApi::new(
            registry.clone(),
            started_coordinator.as_ref(),
            config.coordinator.limits.clone(),
        );
        let leadership = started_coordinator.map(|c| c.leadership);
        let max_message = config.coordinator.limits.max_document_bytes + 64 * 1024;
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(MailboxService::server(router.clone()))
            .add_service(TaskGrpc::server(api, max_message))
            .add_service(ClusterGrpc::server(registry.clone(), coordinator.clone()))
            .add_service(health_service)
            .add_service(reflection)
            // Accepted sockets get TCP_NODELAY here: the builder's own
            // setting only applies to listeners it binds itself, and without
            // it multi-frame HTTP/2 writes stall on delayed ACKs (~40 ms).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stopped.await;
                },
            );
        let server = tokio::spawn(server);
        info!(%addr, %endpoint, agent_id = %id, role = %config.role, "node serving");
        Ok(Self {
            addr,
            agents: vec![id],
            registry,
            router,
            coordinator,
            level: level_actor,
            leadership,
            worker,
            health,
            store_health,
            stop_server,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn agents(&self) -> &[AgentId] {
        &self.agents
    }

    /// Leaves the cluster in order: a coordinator steps down first (its
    /// queued records land, then it resigns, so a standby takes over at
    /// once); a worker stops taking work (new attempts are
    /// handed back to their coordinator), lets running subtasks finish for
    /// up to `drain_timeout`, hand back what is still running, then
    /// deregister, stop the actors and the server, and revoke the lease.
    /// Deregistering last keeps coordinators from treating the attempts
    /// still running here as lost and starting them twice.
    pub async fn shutdown(self, drain_timeout: Duration) -> Result<(), NodeError> {
        info!(addr = %self.addr, "node stopping");
        self.store_health.abort();
        self.health
            .set_not_serving::<AgentMailboxServer<MailboxService>>()
            .await;
        if let Some(leadership) = self.leadership {
            leadership.step_down().await;
        }
        if let Some(worker) = &self.worker {
            worker.publisher.abort();
            let running = worker
                .actor
                .call(WorkerMessage::Drain, Some(drain_timeout))
                .await;
            if let Ok(ractor::rpc::CallResult::Success(running)) = running {
                info!(running, "draining running subtasks");
            }
            let deadline = Instant::now() + drain_timeout;
            while worker.load.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if worker.load.load(Ordering::Relaxed) > 0 {
                warn!("drain grace period over: handing running subtasks back");
                let _ = worker
                    .actor
                    .call(WorkerMessage::HandBack, Some(drain_timeout))
                    .await;
            }
        }
        for id in &self.agents {
            if let Err(error) = self.registry.deregister(id).await {
                warn!(%error, agent_id = %id, "could not deregister");
            }
        }
        if let Some(worker) = &self.worker {
            worker.actor.stop(Some("node shutdown".into()));
            if let Some(peer) = &worker.peer {
                peer.stop(Some("node shutdown".into()));
            }
        }
        if let Some(coordinator) = &self.coordinator {
            coordinator.stop(Some("node shutdown".into()));
        }
        if let Some(level) = &self.level {
            level.stop(Some("node shutdown".into()));
        }
        for id in &self.agents {
            self.router.remove_local(id);
        }
        self.router.stop_serving();
        let _ = self.stop_server.send(());
        let outcome = match tokio::time::timeout(drain_timeout, self.server).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(NodeError::Serve(e.to_string())),
            Ok(Err(e)) => Err(NodeError::Serve(e.to_string())),
            Err(_) => {
                warn!("gRPC server did not stop within the drain timeout");
                Ok(())
            }
        };
        self.registry.shutdown().await;
        info!("node stopped");
        outcome
    }
}

/// Reports `NOT_SERVING` for every service (and the server as a whole)
/// while the registry's store cannot be reached, `SERVING` again once it
/// can: load balancers and probes then steer away from a node that cannot
/// register, persist or discover anything.
async fn follow_store_health(
    health: HealthReporter,
    mut reachable: tokio::sync::watch::Receiver<bool>,
    task_service: bool,
) {
    use tonic_health::ServingStatus;
    while reachable.changed().await.is_ok() {
        let up = *reachable.borrow_and_update();
        let status = if up {
            info!("registry store reachable again: serving");
            ServingStatus::Serving
        } else {
            warn!("registry store unreachable: reporting NOT_SERVING");
            ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        health
            .set_service_status(service_name::<AgentMailboxServer<MailboxService>>(), status)
            .await;
        health
            .set_service_status(service_name::<ClusterServiceServer<ClusterGrpc>>(), status)
            .await;
        if task_service {
            health
                .set_service_status(service_name::<TaskServiceServer<TaskGrpc>>(), status)
                .await;
        }
    }
}

fn service_name<S: tonic::server::NamedService>() -> &'static str {
    S::NAME
}
