//! `ClusterService`: the cluster as this node sees it.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::reputation::ReputationPolicy;
use agentmesh_core::scheduling::WorkerState;
use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use agentmesh_registry::Registry;
use ractor::ActorRef;
use ractor::rpc::CallResult;
use tonic::{Request, Response, Status};

use crate::actors::coordinator::CoordinatorMessage;
use crate::convert;

pub struct ClusterGrpc {
    registry: Arc<dyn Registry>,
    coordinator: Option<ActorRef<CoordinatorMessage>>,
}

impl ClusterGrpc {
    pub fn server(
        registry: Arc<dyn Registry>,
        coordinator: Option<ActorRef<CoordinatorMessage>>,
    ) -> ClusterServiceServer<Self> {
        ClusterServiceServer::new(Self {
            registry,
            coordinator,
        })
    }
}

/// The scheduler's counters, when this node runs a coordinator that
/// answers in time; the listing does without them otherwise.
async fn worker_stats(coordinator: Option<&ActorRef<CoordinatorMessage>>) -> Vec<WorkerState> {
    let Some(coordinator) = coordinator else {
        return Vec::new();
    };
    match coordinator
        .call(CoordinatorMessage::Workers, Some(Duration::from_secs(2)))
        .await
    {
        Ok(CallResult::Success(stats)) => stats,
        _ => Vec::new(),
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterGrpc {
    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsReply>, Status> {
        let membership = self.registry.membership().borrow().clone();
        let leader = self.registry.leader().borrow().clone();
        let stats = worker_stats(self.coordinator.as_ref()).await;
        // The listing does without reputations the registry cannot give.
        let reputations = crate::support::reputation::mean_scores(
            self.registry.as_ref(),
            &ReputationPolicy::default(),
        )
        .await
        .unwrap_or_default();
        let agents = membership
            .agents
            .values()
            .map(|agent| {
                let stats = stats.iter().find(|s| s.id == agent.id);
                convert::agent_info(
                    agent,
                    stats,
                    leader.as_ref() == Some(&agent.id),
                    reputations.get(&agent.id).copied(),
                )
            })
            .collect();
        Ok(Response::new(pb::ListAgentsReply { agents }))
    }
}
