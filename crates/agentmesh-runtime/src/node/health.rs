//! gRPC health of a node: which services serve, and `NOT_SERVING` for all
//! of them while the registry's store cannot be reached.

use agentmesh_proto::v1::agent_mailbox_server::AgentMailboxServer;
use agentmesh_proto::v1::cluster_service_server::ClusterServiceServer;
use agentmesh_proto::v1::task_service_server::TaskServiceServer;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tracing::{info, warn};

use crate::api::cluster::ClusterGrpc;
use crate::api::task::TaskGrpc;
use crate::support::background::Background;
use crate::transport::MailboxService;

/// The health service of a node and the handle that sets its statuses.
pub struct Health {
    reporter: HealthReporter,
    task_service: bool,
}

impl Health {
    /// Every service serving (`TaskService` only where a coordinator runs),
    /// and a follower of `reachable` owned by `background`.
    pub async fn start(
        task_service: bool,
        reachable: tokio::sync::watch::Receiver<bool>,
        background: &Background,
    ) -> (Self, HealthServer<HealthService>) {
        let reporter = HealthReporter::new();
        let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let health = Self {
            reporter,
            task_service,
        };
        health.set_all(ServingStatus::Serving).await;
        background.spawn(
            "store health",
            follow_store(health.reporter.clone(), reachable, task_service),
        );
        (health, service)
    }

    /// Tells probes and load balancers the node is leaving.
    pub async fn not_serving(&self) {
        self.reporter
            .set_not_serving::<AgentMailboxServer<MailboxService>>()
            .await;
    }

    async fn set_all(&self, status: ServingStatus) {
        set_all(&self.reporter, status, self.task_service).await;
    }
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus, task_service: bool) {
    reporter
        .set_service_status(service_name::<AgentMailboxServer<MailboxService>>(), status)
        .await;
    reporter
        .set_service_status(service_name::<ClusterServiceServer<ClusterGrpc>>(), status)
        .await;
    if task_service {
        reporter
            .set_service_status(service_name::<TaskServiceServer<TaskGrpc>>(), status)
            .await;
    }
}

/// Reports `NOT_SERVING` for every service (and the server as a whole)
/// while the registry's store cannot be reached, `SERVING` again once it
/// can: load balancers and probes then steer away from a node that cannot
/// register, persist or discover anything.
async fn follow_store(
    reporter: HealthReporter,
    mut reachable: tokio::sync::watch::Receiver<bool>,
    task_service: bool,
) {
    while reachable.changed().await.is_ok() {
        let up = *reachable.borrow_and_update();
        let status = if up {
            info!("registry store reachable again: serving");
            ServingStatus::Serving
        } else {
            warn!("registry store unreachable: reporting NOT_SERVING");
            ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        set_all(&reporter, status, task_service).await;
    }
}

fn service_name<S: tonic::server::NamedService>() -> &'static str {
    S::NAME
}
