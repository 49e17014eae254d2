//! The agentmesh runtime: actors, transport, services and the node that
//! wires them together. The binary only parses flags and calls into this
//! crate, so tests and embedding programs start nodes in-process the same
//! way.
//!
//! Layers, each depending only on those below it:
//!
//! ```text
//! node/       NodeBuilder, Node, LocalCluster, supervisor, config, health, errors: wiring
//! api/        client-facing gRPC services (tasks, cluster), forwarding, error → Status
//! actors/     coordinator, worker, peer, hierarchy levels: the agents themselves
//! llm         the node's language models (Providers), from its --llm-* flags
//! metrics/    Prometheus counters and the --metrics-listen endpoint
//! dashboard/  the live dashboard that coordinators serve on that endpoint
//! transport/  router, links, mailbox service, envelopes, bounded mailboxes, channels
//! convert     the one place that maps domain types to and from protobuf
//! support/    owned background tasks, feeds into actors, clock, reputation scores
//! ```

pub mod actors;
pub mod api;
pub mod convert;
pub mod dashboard;
pub mod llm;
pub mod metrics;
pub mod node;
pub mod support;
pub mod telemetry;
pub mod transport;

/// The tool types, so that an embedding binary depending on the runtime
/// alone names the same `Tool`, `ToolError` and `ToolBox` the node runs; a
/// crate that only defines tools depends on `agentmesh-tools` instead.
pub use agentmesh_tools as tools;

pub use node::config::{CoordinatorConfig, MailboxConfig, NodeConfig};
pub use node::local::LocalCluster;
pub use node::{Node, NodeError};
