//! The client-facing gRPC services of a node, and the one mapping of their
//! errors to `tonic::Status`.

pub mod auth;
pub mod client;
pub mod cluster;
pub mod error;
pub mod events;
pub mod forward;
pub mod reactive;
pub mod request;
pub mod task;
