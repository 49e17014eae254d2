//! The CLI's gRPC client: tries each given endpoint in turn, so a client
//! survives the loss of one coordinator, and resumes a watch where it left
//! off.

use std::future::Future;
use std::time::Duration;

use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::cluster_service_client::ClusterServiceClient;
use agentmesh_proto::v1::task_service_client::TaskServiceClient;
use agentmesh_runtime::convert;
use anyhow::{Context, anyhow, bail};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection rounds of a watch over all endpoints before giving up.
const WATCH_ROUNDS: u32 = 10;

pub struct Client {
    endpoints: Vec<String>,
}

/// Whether another endpoint might answer where this one did not.
fn worth_another_endpoint(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

/// A one-line error for a refused request.
pub fn describe(status: &Status) -> anyhow::Error {
    anyhow!("{} [{:?}]", status.message(), status.code())
}

impl Client {
    pub fn new(endpoints: Vec<String>) -> anyhow::Result<Self> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .filter(|e| !e.trim().is_empty())
            .collect();
        if endpoints.is_empty() {
            bail!("no endpoint given (--endpoint or AGENTMESH_ENDPOINT)");
        }
        Ok(Self { endpoints })
    }

    async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
        let uri = if endpoint.contains("://") {
            endpoint.to_owned()
        } else {
            format!("http://{endpoint}")
        };
        Endpoint::from_shared(uri)
            .with_context(|| format!("bad endpoint '{endpoint}'"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {endpoint}"))
    }

    /// Runs `call` against each endpoint until one answers.
    async fn call<T, F, Fut>(&self, mut call: F) -> anyhow::Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            let channel = match Self::connect(endpoint).await {
                Ok(channel) => channel,
                Err(e) => {
                    failures.push(format!("{e:#}"));
                    continue;
                }
            };
            match call(channel).await {
                Ok(value) => return Ok(value),
                Err(status) if worth_another_endpoint(&status) => {
                    failures.push(format!("{endpoint}: {}", status.message()));
                }
                Err(status) => return Err(describe(&status)),
            }
        }
        bail!("no endpoint answered: {}", failures.join("; "))
    }

    pub async fn submit(&self, document: String) -> anyhow::Result<String> {
        self.call(|channel| {
            let document = document.clone();
            async move {
                let reply = TaskServiceClient::new(channel)
                    .max_encoding_message_size(usize::MAX)
                    .submit(pb::SubmitRequest {
                        document,
                        wait: false,
                    })
                    .await?;
                Ok(reply.into_inner().task_id)
            }
        })
        .await
    }

    pub async fn get(&self, task_id: &str) -> anyhow::Result<pb::TaskRecord> {
        self.call(|channel| async move {
            let request = pb::GetTaskRequest {
                task_id: task_id.to_owned(),
            };
            Ok(TaskServiceClient::new(channel)
                .get(request)
                .await?
                .into_inner())
        })
        .await
    }

    pub async fn cancel(&self, task_id: &str, reason: &str) -> anyhow::Result<pb::TaskStatus> {
        self.call(|channel| async move {
            let request = pb::CancelTaskRequest {
                task_id: task_id.to_owned(),
                reason: reason.to_owned(),
            };
            Ok(TaskServiceClient::new(channel)
                .cancel(request)
                .await?
                .into_inner()
                .status())
        })
        .await
    }

    pub async fn list_agents(&self) -> anyhow::Result<Vec<pb::AgentInfo>> {
        self.call(|channel| async move {
            let reply = ClusterServiceClient::new(channel)
                .list_agents(pb::ListAgentsRequest {})
                .await?;
            Ok(reply.into_inner().agents)
        })
        .await
    }

    /// Calls `on_record` for every change of the task until it ends and
    /// returns the terminal record. A broken stream is resumed, on the next
    /// endpoint, after the last revision seen.
    pub async fn watch(
        &self,
        task_id: &str,
        mut on_record: impl FnMut(&pb::TaskRecord),
    ) -> anyhow::Result<pb::TaskRecord> {
        let mut last: Option<pb::TaskRecord> = None;
        let mut failures = Vec::new();
        for round in 0..WATCH_ROUNDS {
            for endpoint in &self.endpoints {
                let after_revision = last.as_ref().map_or(0, |r| r.revision);
                let channel = match Self::connect(endpoint).await {
                    Ok(channel) => channel,
                    Err(e) => {
                        failures.push(format!("{e:#}"));
                        continue;
                    }
                };
                let request = pb::WatchTaskRequest {
                    task_id: task_id.to_owned(),
                    after_revision,
                };
                let mut stream = match TaskServiceClient::new(channel).watch(request).await {
                    Ok(response) => response.into_inner(),
                    Err(status) if worth_another_endpoint(&status) => {
                        failures.push(format!("{endpoint}: {}", status.message()));
                        continue;
                    }
                    Err(status) => return Err(describe(&status)),
                };
                loop {
                    match stream.message().await {
                        Ok(Some(record)) => {
                            on_record(&record);
                            let done = convert::is_terminal(record.status());
                            last = Some(record);
                            if done {
                                // Read to the end rather than reset the stream.
                                while let Ok(Some(_)) = stream.message().await {}
                                return last.context("terminal record");
                            }
                        }
                        Ok(None) => break,
                        Err(status) if worth_another_endpoint(&status) => {
                            failures.push(format!("{endpoint}: {}", status.message()));
                            break;
                        }
                        Err(status) => return Err(describe(&status)),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(round + 1))).await;
        }
        bail!(
            "lost the watch of task {task_id} on every endpoint: {}",
            failures.join("; ")
        )
    }
}
