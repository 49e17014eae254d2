//! Where the load generator sends its tasks: a running cluster over gRPC,
//! or an embedded cluster in this process.

use agentmesh_runtime::transport::channel::Security;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentmesh_core::task::Status;
use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::task_service_client::TaskServiceClient;
use agentmesh_runtime::LocalCluster;
use serde_json::Value;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::client::Client;

/// Runs one task to its end and returns its result, or why it has none.
#[async_trait::async_trait]
pub trait Target: Send + Sync {
    async fn run(&self, document: &str) -> Result<Value, String>;
    /// For the report's notes.
    fn describe(&self) -> String;
}

/// A cluster reached over gRPC: one `Submit` with `wait` per task, which
/// replies with the final record.
pub struct RemoteTarget {
    clients: Vec<TaskServiceClient<Channel>>,
    next: AtomicUsize,
    endpoint: String,
    /// `Bearer <token>` for clusters that require one.
    bearer: Option<AsciiMetadataValue>,
}

impl RemoteTarget {
    /// Opens `connections` HTTP/2 connections to `endpoint`; tasks are
    /// spread over them in turn, each sent with `token` when there is one.
    pub async fn connect(
        endpoint: &str,
        connections: usize,
        security: &Security,
        token: Option<String>,
    ) -> anyhow::Result<Self> {
        let bearer = token
            .map(|t| agentmesh_runtime::api::auth::bearer_value(&t))
            .transpose()
            .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot carry"))?;
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let channel = Client::connect(endpoint, security).await?;
            clients.push(TaskServiceClient::new(channel));
        }
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
            endpoint: endpoint.to_owned(),
            bearer,
        })
    }

    fn client(&self) -> TaskServiceClient<Channel> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.clients[n % self.clients.len()].clone()
    }
}

#[async_trait::async_trait]
impl Target for RemoteTarget {
    async fn run(&self, document: &str) -> Result<Value, String> {
        let mut request = tonic::Request::new(pb::SubmitRequest {
            idempotency_key: String::new(),
            document: document.to_owned(),
            wait: true,
            task: None,
        });
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert(agentmesh_runtime::api::auth::AUTHORIZATION, bearer.clone());
        }
        let reply = self
            .client()
            .submit(request)
            .await
            .map_err(|s| format!("submit refused: {} [{:?}]", s.message(), s.code()))?
            .into_inner();
        let record = reply.record.ok_or("the reply carries no final record")?;
        match record.status() {
            pb::TaskStatus::Completed => serde_json::from_str(&record.result_json)
                .map_err(|e| format!("result is not JSON: {e}")),
            status => Err(format!("task {status:?}: {}", record.error)),
        }
    }

    fn describe(&self) -> String {
        format!(
            "endpoint {}, {} connection(s)",
            self.endpoint,
            self.clients.len()
        )
    }
}

/// A coordinator and workers in this process over the in-memory registry.
pub struct EmbeddedTarget {
    cluster: LocalCluster,
    description: String,
}

impl EmbeddedTarget {
    pub fn new(cluster: LocalCluster, description: String) -> Self {
        Self {
            cluster,
            description,
        }
    }

    pub async fn shutdown(self) {
        self.cluster.shutdown().await;
    }
}

#[async_trait::async_trait]
impl Target for EmbeddedTarget {
    async fn run(&self, document: &str) -> Result<Value, String> {
        let record = self
            .cluster
            .run(document)
            .await
            .map_err(|e| e.to_string())?;
        match record.status {
            Status::Completed => Ok(record.result().unwrap_or(Value::Null)),
            status => Err(format!(
                "task {status}: {}",
                record.error.unwrap_or_default()
            )),
        }
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}
