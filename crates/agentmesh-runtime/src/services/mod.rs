//! The client-facing gRPC services of a node.

pub mod cluster;
pub mod forward;
pub mod task;
