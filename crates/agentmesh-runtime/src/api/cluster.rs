//! `ClusterService`: the cluster as this node sees it. With client tokens
//! on, every role may list the agents, but only with a valid token.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::access::Action;
use agentmesh_core::reputation::ReputationPolicy;
use agentmesh_core::scheduling::WorkerState;
use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::cluster_service_server::{
    ClusterService, ClusterServiceServer, SERVICE_NAME,
};
use agentmesh_registry::Registry;
use ractor::ActorRef;
use ractor::rpc::CallResult;
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::error::ApiError;
use crate::actors::coordinator::CoordinatorMessage;
use crate::convert;

pub struct ClusterGrpc {
    registry: Arc<dyn Registry>,
    coordinator: Option<ActorRef<CoordinatorMessage>>,
    auth: Authenticator,
}

impl ClusterGrpc {
    pub fn server(
        registry: Arc<dyn Registry>,
        coordinator: Option<ActorRef<CoordinatorMessage>>,
        auth: Authenticator,
    ) -> ClusterServiceServer<Self> {
        ClusterServiceServer::new(Self {
            registry,
            coordinator,
            auth: auth.for_service(SERVICE_NAME),
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

/// Every registered agent as this node sees it: the registry's entry, the
/// local coordinator's counters and breaker when it has them, and the
/// recorded reputation. `ListAgents` and the dashboard both answer with it.
pub async fn agents(
    registry: &dyn Registry,
    coordinator: Option<&ActorRef<CoordinatorMessage>>,
) -> Vec<pb::AgentInfo> {
    let membership = registry.membership().borrow().clone();
    let leader = registry.leader().borrow().clone();
    let stats = worker_stats(coordinator).await;
    // The listing does without reputations the registry cannot give.
    let reputations =
        crate::support::reputation::mean_scores(registry, &ReputationPolicy::default())
            .await
            .unwrap_or_default();
    membership
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
        .collect()
}

#[tonic::async_trait]
impl ClusterService for ClusterGrpc {
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsReply>, Status> {
        self.auth
            .authenticate(&request)
            .and_then(|caller| caller.authorize(Action::ListAgents))
            .map_err(ApiError::from)?;
        let agents = agents(self.registry.as_ref(), self.coordinator.as_ref()).await;
        Ok(Response::new(pb::ListAgentsReply { agents }))
    }
}
