//! The agentmesh runtime: actors, mailboxes and services, and the
//! node that wires them together. The binary only parses flags and calls
//! into this crate, so tests start nodes in-process the same way.

pub mod agents;
pub mod clock;
pub mod config;
pub mod convert;
pub mod coordinator;
pub mod endpoint;
pub mod error;
pub mod faults;
pub mod feeds;
pub mod level;
pub mod local;
pub mod mailbox;
pub mod node;
pub mod peer;
pub mod random;
pub mod reputation;
pub mod services;
pub mod worker;

/// The tool types, so that an embedding binary depending on the runtime
/// alone names the same `Tool`, `ToolError` and `ToolBox` the node runs; a
/// crate that only defines tools depends on `agentmesh-tools` instead.
pub use agentmesh_tools as tools;

pub use config::{CoordinatorConfig, MailboxConfig, NodeConfig};
pub use local::LocalCluster;
pub use node::{Node, NodeError};
