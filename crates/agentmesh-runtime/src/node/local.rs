//! `agentmesh local`: a coordinator and workers in one process, started by
//! [`NodeBuilder::local`](super::NodeBuilder::local).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::task::TaskRecord;

use super::RunningAgents;
use super::agents::Spawner;
use crate::api::error::ApiError;
use crate::api::task::TaskApi;

/// How long an embedded cluster's workers may finish running subtasks
/// when it shuts down.
const LOCAL_DRAIN: Duration = Duration::from_secs(5);

/// A running embedded cluster.
pub struct LocalCluster {
    api: TaskApi,
    spawner: Spawner,
    running: RunningAgents,
    metrics_addr: Option<SocketAddr>,
}

impl LocalCluster {
    pub(super) fn new(
        api: TaskApi,
        spawner: Spawner,
        running: RunningAgents,
        metrics_addr: Option<SocketAddr>,
    ) -> Self {
        Self {
            api,
            spawner,
            running,
            metrics_addr,
        }
    }

    pub fn api(&self) -> &TaskApi {
        &self.api
    }

    /// Where metrics are served (`--metrics-listen`), once bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Submits a task document and waits for its terminal record.
    pub async fn run(&self, document: &str) -> Result<TaskRecord, ApiError> {
        Ok(Arc::unwrap_or_clone(self.api.run(document).await?))
    }

    /// Resolves with the reason once an agent of the cluster has failed.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        self.spawner.failed()
    }

    /// Stops in order: the coordinator steps down (its queued records
    /// land), workers finish or hand back what they run, then every actor
    /// and background task stops.
    pub async fn shutdown(self) {
        self.running.leave(&self.spawner, LOCAL_DRAIN).await;
        self.spawner.router().shutdown(LOCAL_DRAIN).await;
        self.spawner.stop(LOCAL_DRAIN).await;
    }
}
