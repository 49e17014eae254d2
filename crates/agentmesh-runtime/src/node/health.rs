//! gRPC health of a node: which services serve, and `NOT_SERVING` for all
//! of them while the registry's store cannot be reached or refuses writes
//! for lack of space (etcd's NOSPACE alarm).
//!
//! The same verdict is published on a `watch` as [`Ready`], for probes
//! that cannot speak gRPC over TLS (Kubernetes' `grpc` probes cannot):
//! the metrics port answers `/readyz` from it.

use agentmesh_proto::v1::agent_mailbox_server::AgentMailboxServer;
use agentmesh_proto::v1::cluster_service_server::ClusterServiceServer;
use agentmesh_proto::v1::task_service_server::TaskServiceServer;
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tracing::{info, warn};

use crate::api::cluster::ClusterGrpc;
use crate::api::task::TaskGrpc;
use crate::support::background::Background;
use crate::transport::MailboxService;

/// Where a node is in its life, as readiness probes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Not serving yet.
    Starting,
    /// Serving: ready.
    Serving,
    /// Its store is unreachable or refuses writes: not ready until it is
    /// back.
    StoreDown,
    /// Leaving the cluster: never ready again.
    Leaving,
}

impl Readiness {
    pub fn is_ready(self) -> bool {
        self == Self::Serving
    }
}

/// Publishes a node's [`Readiness`].
pub type Ready = watch::Sender<Readiness>;

/// The health service of a node and the handle that sets its statuses.
pub struct Health {
    reporter: HealthReporter,
    task_service: bool,
    ready: Ready,
}

impl Health {
    /// Every service serving (`TaskService` only where a coordinator runs),
    /// and a follower of `reachable` and `full` owned by `background` that
    /// keeps the statuses and `ready` current.
    pub async fn start(
        task_service: bool,
        reachable: watch::Receiver<bool>,
        full: watch::Receiver<Option<String>>,
        ready: Ready,
        background: &Background,
    ) -> (Self, HealthServer<HealthService>) {
        let reporter = HealthReporter::new();
        let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let health = Self {
            reporter,
            task_service,
            ready,
        };
        health.set_all(ServingStatus::Serving).await;
        health.ready.send_replace(Readiness::Serving);
        background.spawn(
            "store health",
            follow_store(
                health.reporter.clone(),
                health.ready.clone(),
                reachable,
                full,
                task_service,
            ),
        );
        (health, service)
    }

    /// Tells probes and load balancers the node is leaving.
    pub async fn not_serving(&self) {
        self.ready.send_replace(Readiness::Leaving);
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
/// while the registry's store cannot be reached or refuses writes for lack
/// of space, `SERVING` again once it can and does: load balancers and
/// probes then steer away from a node that cannot register, persist or
/// discover anything. Runs until both feeds are gone.
async fn follow_store(
    reporter: HealthReporter,
    ready: Ready,
    mut reachable: watch::Receiver<bool>,
    mut full: watch::Receiver<Option<String>>,
    task_service: bool,
) {
    let (mut reachable_open, mut full_open) = (true, true);
    let mut serving = true;
    while reachable_open || full_open {
        tokio::select! {
            changed = reachable.changed(), if reachable_open => reachable_open = changed.is_ok(),
            changed = full.changed(), if full_open => full_open = changed.is_ok(),
        }
        let up = *reachable.borrow_and_update();
        let refusal = full.borrow_and_update().clone();
        let now_serving = up && refusal.is_none();
        if now_serving == serving {
            continue;
        }
        serving = now_serving;
        let status = if serving {
            info!("registry store reachable and taking writes again: serving");
            ServingStatus::Serving
        } else if let Some(reason) = refusal {
            warn!(%reason, "etcd refuses writes for lack of space: reporting NOT_SERVING");
            ServingStatus::NotServing
        } else {
            warn!("registry store unreachable: reporting NOT_SERVING");
            ServingStatus::NotServing
        };
        // A node that is leaving stays so whatever its store does.
        let now = if serving {
            Readiness::Serving
        } else {
            Readiness::StoreDown
        };
        ready.send_if_modified(|ready| {
            let changed = *ready != Readiness::Leaving && *ready != now;
            if changed {
                *ready = now;
            }
            changed
        });
        reporter.set_service_status("", status).await;
        set_all(&reporter, status, task_service).await;
    }
}

fn service_name<S: tonic::server::NamedService>() -> &'static str {
    S::NAME
}
