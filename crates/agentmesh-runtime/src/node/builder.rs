//! [`NodeBuilder`]: the one way to start agentmesh in a process, used by
//! `agentmesh node`, `agentmesh local`, the load generator and embedding
//! programs alike.
//!
//! ```no_run
//! # use agentmesh_runtime::node::NodeBuilder;
//! # use agentmesh_runtime::NodeConfig;
//! # use agentmesh_core::Role;
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = NodeConfig::new(Role::Worker, "127.0.0.1:0".parse()?);
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! let node = NodeBuilder::new(config)
//!     // .tool(MyTool)            a capability of your own
//!     // .registry(etcd)          an EtcdRegistry; in memory by default
//!     .serve(listener)
//!     .await?;
//! node.shutdown(std::time::Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use agentmesh_core::{AgentId, AgentRegistration, Role};
use agentmesh_registry::{MemoryRegistry, Registry};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::agents::{self, Spawner, VERSION};
use super::config::NodeConfig;
use super::error::NodeError;
use super::local::LocalCluster;
use super::{Node, RunningAgents};
use crate::api::auth::Authenticator;
use crate::api::events::EventApi;
use crate::api::task::TaskApi;
use crate::dashboard::{Dashboard, Slot};
use crate::llm::Providers;
use crate::metrics;
use crate::node::health::{Readiness, Ready};
use crate::tools::{HttpAccess, LlmChat, LlmEmbed, Tool, ToolBox};
use crate::transport::Router;
use crate::transport::channel::Security;
use crate::transport::tls;

/// Endpoint recorded for agents that are reached only in process.
const IN_PROCESS: &str = "in-process";

/// Configures and starts a node: its agents, their tools, the registry.
pub struct NodeBuilder {
    config: NodeConfig,
    tools: ToolBox,
    registry: Option<Arc<dyn Registry>>,
    providers: Option<Providers>,
}

impl NodeBuilder {
    /// A node with the built-in tools (`http.get` only when the config's
    /// `http_allow` names hosts) and an in-memory registry.
    pub fn new(config: NodeConfig) -> Self {
        let http = HttpAccess {
            allow: config.http_allow.clone(),
            allow_private: config.http_allow_private,
        };
        let tools = ToolBox::builtin_within(&http, config.max_output_bytes);
        Self {
            config,
            tools,
            registry: None,
            providers: None,
        }
    }

    /// Adds a tool: its name becomes a capability the node's workers offer
    /// (all tools when the config lists no capabilities).
    pub fn tool(mut self, tool: impl Tool) -> Self {
        self.tools = self.tools.with(tool);
        self
    }

    /// Adds every tool of `tools`.
    pub fn tools(mut self, tools: &ToolBox) -> Self {
        self.tools.extend(tools);
        self
    }

    /// Where agents register and records live; an in-memory registry (one
    /// process, nothing durable) when not set.
    pub fn registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The models the node asks; built from the config's `llm` when not
    /// set (a test or an embedding program brings its own provider here).
    pub fn providers(mut self, providers: Providers) -> Self {
        self.providers = Some(providers);
        self
    }

    /// Starts the node's agent (by the config's role), registers it and
    /// serves gRPC on `listener`.
    pub async fn serve(self, listener: TcpListener) -> Result<Node, NodeError> {
        let (mut config, mut tools) = (self.config, self.tools);
        let providers = providers_of(self.providers, &config)?;
        add_model_tools(&mut tools, &providers);
        config.validate(&tools)?;
        warn_about_faults(&config);
        let metrics = bind_metrics(&config).await?;
        let registry = self
            .registry
            .unwrap_or_else(|| Arc::new(MemoryRegistry::new()));
        let addr = listener.local_addr()?;
        let endpoint = config.advertise.clone().unwrap_or_else(|| addr.to_string());
        let router = Router::new(registry.membership(), config.mailbox.clone());
        let spawner = Spawner::new(registry, router)
            .await?
            .with_providers(providers);
        let ready = Ready::new(Readiness::Starting);
        // Filled by `Node::serve` once the coordinator's services exist.
        let dashboard = Slot::new(config.role == Role::Coordinator);
        let metrics_addr = serve_metrics(metrics, &ready, &dashboard, &spawner)?;
        let id = config
            .id
            .clone()
            .map(AgentId::from)
            .unwrap_or_else(|| agents::generate_id(config.role));
        // A certificate that does not name this node's agent would have
        // every envelope it sends refused: say so now.
        if let Some(tls) = config.mailbox.security.node_tls() {
            tls.check_speaks_for([&id])?;
            tls.spawn_reloader(tls::RELOAD_INTERVAL, spawner.background());
        }
        let mut running = RunningAgents::default();
        match config.role {
            Role::Coordinator => {
                let coordinator = spawner
                    .coordinator(id.clone(), config.coordinator.clone(), &endpoint)
                    .await?;
                running.add_coordinator(coordinator);
            }
            Role::Worker | Role::Peer | Role::Level | Role::Reactive => {
                let registration = registration(&config, id.clone(), &endpoint);
                match config.coordinating_level() {
                    Some(level) => {
                        let actor = spawner
                            .level(registration, level, config.tactical, config.strategic)
                            .await?;
                        running.add_level(id.clone(), actor);
                    }
                    None => {
                        let peer = (config.role == Role::Peer).then(|| config.peer.clone());
                        let worker = spawner
                            .worker(registration, &tools, config.faults.clone(), peer)
                            .await?;
                        running.add_worker(id.clone(), worker);
                    }
                }
            }
        }
        let mut node = Node::serve(spawner, running, &config, listener, ready, &dashboard).await?;
        node.metrics_addr = metrics_addr;
        info!(addr = %node.addr(), %endpoint, agent_id = %id, role = %config.role, "node serving");
        Ok(node)
    }

    /// Starts an embedded cluster in this process: one coordinator and
    /// `workers` workers, each offering every tool (or the config's
    /// capabilities), over the registry (in memory by default). The same
    /// actors and envelopes as a cluster; only the transport is an
    /// in-process channel.
    pub async fn local(self, workers: usize) -> Result<LocalCluster, NodeError> {
        let (mut config, mut tools) = (self.config, self.tools);
        let providers = providers_of(self.providers, &config)?;
        add_model_tools(&mut tools, &providers);
        config.role = Role::Worker;
        config.validate(&tools)?;
        warn_about_faults(&config);
        let metrics = bind_metrics(&config).await?;
        let registry = self
            .registry
            .unwrap_or_else(|| Arc::new(MemoryRegistry::new()));
        let router = Router::new(registry.membership(), config.mailbox.clone());
        let spawner = Spawner::new(registry.clone(), router)
            .await?
            .with_providers(providers);
        let ready = Ready::new(Readiness::Starting);
        let dashboard = Slot::new(true);
        let metrics_addr = serve_metrics(metrics, &ready, &dashboard, &spawner)?;
        let mut running = RunningAgents::default();
        let coordinator = spawner
            .coordinator(
                AgentId::new("coordinator"),
                config.coordinator.clone(),
                IN_PROCESS,
            )
            .await?;
        let api = TaskApi::new(
            registry.clone(),
            Some(coordinator.handle.clone()),
            config.coordinator.limits.clone(),
        )
        .with_providers(spawner.providers().clone())
        .with_routing_table(config.coordinator.routing_table.clone())
        .with_request_planner(crate::api::request::RequestPlanner {
            options: config.coordinator.requests.clone(),
        });
        // In one process nobody else calls in: the dashboard is as open as
        // the embedded cluster's API.
        dashboard.set(Dashboard::new(
            api.clone(),
            registry.clone(),
            coordinator.handle.clone(),
            Authenticator::open(),
        ));
        running.add_coordinator(coordinator);
        for n in 1..=workers {
            let id = AgentId::new(format!("worker-{n}"));
            let worker = spawner
                .worker(
                    registration(&config, id.clone(), IN_PROCESS),
                    &tools,
                    config.faults.clone(),
                    None,
                )
                .await?;
            running.add_worker(id, worker);
        }
        ready.send_replace(Readiness::Serving);
        let events = EventApi::new(
            api.clone(),
            registry.clone(),
            config.coordinator.events.limits,
        );
        Ok(LocalCluster::new(
            api,
            events,
            registry,
            spawner,
            running,
            metrics_addr,
        ))
    }
}

/// The node's models: `given` by the embedding program, else one client
/// built from the config's `llm` (none without it).
fn providers_of(given: Option<Providers>, config: &NodeConfig) -> Result<Providers, NodeError> {
    match given {
        Some(providers) => Ok(providers),
        None => Ok(Providers::from_config(config.llm.as_ref())?),
    }
}

/// `llm.chat` and `llm.embed` when the node has a model; the built-in
/// rules do not chat, so without one the capabilities are not offered.
fn add_model_tools(tools: &mut ToolBox, providers: &Providers) {
    if let Some(chat) = &providers.chat {
        *tools = std::mem::take(tools).with(LlmChat::new(chat.clone()));
    }
    if let Some(embed) = &providers.embed {
        *tools = std::mem::take(tools).with(LlmEmbed::new(embed.clone()));
    }
}

/// The metrics listener, bound before anything registers so a taken port
/// stops the node before it joins; `None` without `--metrics-listen`.
async fn bind_metrics(config: &NodeConfig) -> Result<Option<TcpListener>, NodeError> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    metrics::serve::bind(addr)
        .await
        .map(Some)
        .map_err(|source| NodeError::MetricsListen { addr, source })
}

/// Serves the process's metrics, the node's probes (from `ready`) and the
/// dashboard (once `dashboard` is filled) on `listener` until the node's
/// background tasks stop; the bound address.
fn serve_metrics(
    listener: Option<TcpListener>,
    ready: &Ready,
    dashboard: &Slot,
    spawner: &Spawner,
) -> Result<Option<SocketAddr>, NodeError> {
    listener
        .map(|listener| {
            metrics::serve::spawn(
                listener,
                metrics::global(),
                ready.subscribe(),
                dashboard.clone(),
                spawner.background(),
            )
        })
        .transpose()
        .map_err(NodeError::Listener)
}

fn registration(config: &NodeConfig, id: AgentId, endpoint: &str) -> AgentRegistration {
    AgentRegistration {
        id,
        role: config.role,
        level: config.level,
        capabilities: config.capabilities.clone(),
        endpoint: endpoint.to_owned(),
        load: 0,
        max_concurrency: config.max_concurrency,
        version: VERSION.to_owned(),
        faults: config.faults.0.iter().map(ToString::to_string).collect(),
        insecure: config.mailbox.security == Security::Plaintext,
        event_handlers: config.event_handlers.clone(),
    }
}

fn warn_about_faults(config: &NodeConfig) {
    if !config.faults.is_empty() {
        let faults: Vec<String> = config.faults.0.iter().map(ToString::to_string).collect();
        warn!(faults = %faults.join(","), "fault injection is on: this node misbehaves on purpose");
    }
}
