//! The etcd backend (being written).

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::task::TaskRecord;
use agentmesh_core::{AgentId, AgentRegistration, Membership, TaskId};
use async_trait::async_trait;
use tokio::sync::watch;

use crate::{DEFAULT_LEASE_TTL, Registry, RegistryError, TaskWatch};

/// How to reach etcd and how long this node's lease lives.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    pub lease_ttl: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            lease_ttl: DEFAULT_LEASE_TTL,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
pub struct EtcdRegistry {
    membership: watch::Receiver<Arc<Membership>>,
}

impl EtcdRegistry {
    pub async fn connect(options: EtcdOptions) -> Result<Self, RegistryError> {
        let _ = options;
        Err(RegistryError::Unavailable("etcd backend not written yet".into()))
    }
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn register(&self, _agent: AgentRegistration) -> Result<(), RegistryError> {
        Err(RegistryError::Closed)
    }
    async fn deregister(&self, _id: &AgentId) -> Result<(), RegistryError> {
        Err(RegistryError::Closed)
    }
    fn membership(&self) -> watch::Receiver<Arc<Membership>> {
        self.membership.clone()
    }
    async fn put_tasks(&self, _records: &[Arc<TaskRecord>]) -> Result<(), RegistryError> {
        Err(RegistryError::Closed)
    }
    async fn get_task(&self, _id: &TaskId) -> Result<Option<TaskRecord>, RegistryError> {
        Err(RegistryError::Closed)
    }
    async fn watch_task(&self, _id: &TaskId) -> Result<TaskWatch, RegistryError> {
        Err(RegistryError::Closed)
    }
    async fn shutdown(&self) {}
}
