//! Why a node could not start or stop cleanly.

use agentmesh_registry::RegistryError;
use thiserror::Error;

use super::config::ConfigError;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("failed to start actor {0}")]
    Spawn(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("failed to bind the metrics listener {addr} (--metrics-listen)")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("failed to read the listener's address: {0}")]
    Listener(#[from] std::io::Error),
    #[error("gRPC server failed: {0}")]
    Serve(String),
    #[error("an agent of this node failed: {0}")]
    AgentFailed(String),
    #[error("the model configured with --llm-base-url: {0}")]
    Llm(#[from] agentmesh_llm::LlmError),
    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsError),
}
