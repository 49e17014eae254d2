//! `agentmesh local`: a coordinator and workers in one process over the
//! in-memory registry. The same actors and the same envelopes as a cluster;
//! only the transport between them is an in-process channel.

use std::sync::Arc;

use agentmesh_core::task::TaskRecord;
use agentmesh_core::{AgentId, AgentRegistration, Role};
use agentmesh_registry::{MemoryRegistry, Registry};
use ractor::ActorRef;

use crate::agents::{self, StartedWorker, VERSION};
use crate::config::NodeConfig;
use crate::coordinator::CoordinatorMessage;
use crate::coordinator::leadership::LeadershipLoop;
use crate::error::ApiError;
use crate::mailbox::Router;
use crate::node::NodeError;
use crate::services::task::TaskApi;
use crate::tools::ToolBox;

/// Endpoint recorded for agents that are reached only in process.
const IN_PROCESS: &str = "in-process";

pub struct LocalCluster {
    api: TaskApi,
    coordinator: ActorRef<CoordinatorMessage>,
    /// Dropping it would step the coordinator down.
    _leadership: LeadershipLoop,
    workers: Vec<StartedWorker>,
}

impl LocalCluster {
    /// Starts a coordinator and `workers` workers, each offering every tool
    /// of `config` (or its `capabilities`).
    pub async fn start(workers: usize, mut config: NodeConfig) -> Result<Self, NodeError> {
        let tools = ToolBox::builtin(&config.http_allow);
        config.validate(&tools)?;
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let router = Router::new(registry.membership(), config.mailbox.clone());
        let coordinator = agents::start_coordinator(
            AgentId::new("coordinator"),
            registry.clone(),
            router.clone(),
            config.coordinator.clone(),
            IN_PROCESS,
        )
        .await?;
        let mut started = Vec::with_capacity(workers);
        for n in 1..=workers {
            let registration = AgentRegistration {
                id: AgentId::new(format!("worker-{n}")),
                role: Role::Worker,
                level: None,
                capabilities: config.capabilities.clone(),
                endpoint: IN_PROCESS.to_owned(),
                load: 0,
                max_concurrency: config.max_concurrency,
                version: VERSION.to_owned(),
            };
            started.push(
                agents::start_worker(
                    registration,
                    tools.clone(),
                    config.faults.clone(),
                    registry.clone(),
                    router.clone(),
                )
                .await?,
            );
        }
        let api = TaskApi::new(
            registry,
            Some(&coordinator),
            config.coordinator.limits.clone(),
        );
        Ok(Self {
            api,
            coordinator: coordinator.actor,
            _leadership: coordinator.leadership,
            workers: started,
        })
    }

    pub fn api(&self) -> &TaskApi {
        &self.api
    }

    /// Submits a task document and waits for its terminal record.
    pub async fn run(&self, document: &str) -> Result<TaskRecord, ApiError> {
        Ok(Arc::unwrap_or_clone(self.api.run(document).await?))
    }

    pub fn stop(self) {
        for worker in &self.workers {
            worker.publisher.abort();
            worker.actor.stop(None);
        }
        self.coordinator.stop(None);
    }
}
