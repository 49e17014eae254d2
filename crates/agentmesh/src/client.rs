//! The CLI's gRPC client: tries each given endpoint in turn, so a client
//! survives the loss of one coordinator, and resumes a watch where it left
//! off.

use std::future::Future;
use std::time::Duration;

use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::cluster_service_client::ClusterServiceClient;
use agentmesh_proto::v1::task_service_client::TaskServiceClient;
use agentmesh_runtime::convert;
use agentmesh_runtime::transport::channel;
use anyhow::{Context, bail};
use tonic::transport::Channel;
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

/// A request the cluster refused, kept whole so callers can look at its
/// code and metadata; shown as one line.
#[derive(Debug)]
pub struct Refused(pub Status);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{:?}]", self.0.message(), self.0.code())
    }
}

impl std::error::Error for Refused {}

/// A one-line error for a refused request.
pub fn describe(status: &Status) -> anyhow::Error {
    anyhow::Error::new(Refused(status.clone()))
}

/// Submits refused for back-pressure are tried this many times in all.
const SUBMIT_ATTEMPTS: u32 = 5;
/// The pause after a refusal that carried no hint.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(500);

/// The pause a back-pressure refusal asks for; `None` for other errors.
fn retry_after(error: &anyhow::Error) -> Option<Duration> {
    let Refused(status) = error.downcast_ref::<Refused>()?;
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let hinted = status
        .metadata()
        .get(agentmesh_runtime::api::error::RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(Duration::from_millis);
    Some(
        hinted
            .unwrap_or(DEFAULT_RETRY_AFTER)
            .min(Duration::from_secs(30)),
    )
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

    /// One HTTP/2 connection to `endpoint`.
    pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
        Ok(channel::connect(endpoint, CONNECT_TIMEOUT).await?)
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

    /// Submits a task; a refusal for back-pressure (`RESOURCE_EXHAUSTED`)
    /// is retried after the pause the coordinator asks for, a few times.
    pub async fn submit(&self, document: String) -> anyhow::Result<String> {
        let mut attempt = 1;
        loop {
            let outcome = self
                .call(|channel| {
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
                .await;
            match outcome {
                Err(error) if attempt < SUBMIT_ATTEMPTS => {
                    let Some(pause) = retry_after(&error) else {
                        return Err(error);
                    };
                    eprintln!(
                        "cluster busy ({error}); submitting again in {} ms ({attempt}/{SUBMIT_ATTEMPTS})",
                        pause.as_millis()
                    );
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_pressure_refusals_are_retried_after_the_hinted_pause() {
        let mut busy = Status::resource_exhausted("coordinator queue is full");
        busy.metadata_mut().insert(
            agentmesh_runtime::api::error::RETRY_AFTER_MS,
            tonic::metadata::MetadataValue::from(250u64),
        );
        assert_eq!(
            retry_after(&describe(&busy)),
            Some(Duration::from_millis(250))
        );
        let unhinted = Status::resource_exhausted("full");
        assert_eq!(retry_after(&describe(&unhinted)), Some(DEFAULT_RETRY_AFTER));
        // Anything else is final.
        let invalid = Status::invalid_argument("dependency cycle");
        assert_eq!(retry_after(&describe(&invalid)), None);
        assert_eq!(retry_after(&anyhow::anyhow!("connection refused")), None);
    }
}
