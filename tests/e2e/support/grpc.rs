//! The few gRPC calls tests make themselves instead of through the CLI:
//! a node's health, and a channel with short timeouts for clients that
//! must not hang on a dead or partitioned node.

use std::time::Duration;

use agentmesh_runtime::transport::channel::{self, ClientTls, Security};
use agentmesh_runtime::transport::tls;
use tokio::runtime::Runtime;
use tonic::transport::Channel;
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
/// 2 × [`CONNECT_TIMEOUT`]; TLS checked against the test CA for an
/// `https://` endpoint.
pub async fn connect(endpoint: &str) -> Result<Channel, String> {
    let security = if endpoint.starts_with("https://") {
        let config = tls::client_config(&super::tls::shared().ca).map_err(|e| e.to_string())?;
        Security::Client(ClientTls(config))
    } else {
        Security::Plaintext
    };
    match tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        channel::connect(endpoint, CONNECT_TIMEOUT, &security),
    )
    .await
    {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("connecting to {endpoint} timed out")),
    }
}

/// `message` as a request carrying the harness's admin token, as every
/// call to a node's client API needs.
pub fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let token = &super::tls::shared_tokens().admin;
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    request
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
