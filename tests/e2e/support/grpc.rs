//! The few gRPC calls tests make themselves instead of through the CLI:
//! a node's health, and a channel with short timeouts for clients that
//! must not hang on a dead or partitioned node.

use std::time::Duration;

use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Limit of one connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Limit of one unary call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A single-threaded runtime for blocking tests that make async calls.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A channel to `endpoint`, or why there is none, within
/// 2 × [`CONNECT_TIMEOUT`].
pub async fn connect(endpoint: &str) -> Result<Channel, String> {
    let target = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("bad endpoint {endpoint}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, target.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(format!("cannot connect to {endpoint}: {e}")),
        Err(_) => Err(format!("connecting to {endpoint} timed out")),
    }
}

/// The gRPC health of a whole node (`Serving`, `NotServing`...), `None`
/// when it does not answer.
pub fn serving_status(rt: &Runtime, endpoint: &str) -> Option<String> {
    rt.block_on(async {
        let channel = connect(endpoint).await.ok()?;
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let reply = tokio::time::timeout(CALL_TIMEOUT, HealthClient::new(channel).check(request))
            .await
            .ok()?
            .ok()?
            .into_inner();
        Some(format!("{:?}", reply.status()))
    })
}
