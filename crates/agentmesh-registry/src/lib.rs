//! Where agents find each other and where task records live.
//!
//! [`Registry`] is the one interface the runtime uses for membership (agents
//! registered under their node's lease, watched by everyone) and for durable
//! task records. Two backends implement it: [`EtcdRegistry`] for a real
//! cluster and [`MemoryRegistry`] for `agentmesh local` and unit tests. The
//! etcd key layout is owned by [`keys`].

pub mod etcd;
pub mod keys;
pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::task::TaskRecord;
use agentmesh_core::{AgentId, AgentRegistration, Membership, TaskId};
use async_trait::async_trait;
use futures::stream::BoxStream;
use thiserror::Error;
use tokio::sync::watch;

pub use etcd::{EtcdOptions, EtcdRegistry};
pub use memory::MemoryRegistry;

/// Lease time-to-live used when none is configured: a dead node's agents
/// leave every view within this time.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum RegistryError {
    /// The backing store cannot be reached or refused the request; retrying
    /// later may succeed.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("corrupt registry entry at '{key}': {message}")]
    Corrupt { key: String, message: String },
    #[error("registry is shut down")]
    Closed,
}

/// A stream of a task's record: the current record first, then one per
/// persisted change.
pub type TaskWatch = BoxStream<'static, Result<TaskRecord, RegistryError>>;

/// Membership and durable records, as seen by one node.
///
/// A registry instance belongs to one node: agents it registers live as long
/// as the node's lease, and [`Registry::shutdown`] removes them at once.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers an agent, or updates its registration, under this node's
    /// lease.
    async fn register(&self, agent: AgentRegistration) -> Result<(), RegistryError>;

    /// Removes an agent registered by this node.
    async fn deregister(&self, id: &AgentId) -> Result<(), RegistryError>;

    /// The live view of every registered agent, kept current by a watch.
    fn membership(&self) -> watch::Receiver<Arc<Membership>>;

    /// Persists task records, all in one transaction.
    async fn put_tasks(&self, records: &[Arc<TaskRecord>]) -> Result<(), RegistryError>;

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, RegistryError>;

    /// Follows one task's record. Yields nothing until the task exists.
    async fn watch_task(&self, id: &TaskId) -> Result<TaskWatch, RegistryError>;

    /// Revokes this node's lease (its agents leave every view at once) and
    /// stops background work.
    async fn shutdown(&self);
}
