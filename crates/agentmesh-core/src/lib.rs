//! Pure domain logic of agentmesh.
//!
//! Nothing in this crate performs IO or depends on an async runtime: the
//! task model, task-file validation, reference resolution, worker scoring and
//! the algorithms behind the built-in tools are plain functions over plain
//! data, so they are unit- and property-tested in isolation and reused by
//! every actor that needs them.

pub mod access;
pub mod agent;
pub mod auction;
pub mod breaker;
pub mod builtin;
pub mod collaboration;
pub mod consensus;
pub mod events;
pub mod fairness;
pub mod hierarchy;
pub mod ids;
pub mod patterns;
pub mod reactive;
pub mod reputation;
pub mod request;
pub mod retry;
pub mod scheduling;
pub mod task;
#[cfg(test)]
mod test_support;

pub use agent::{AgentRegistration, Membership, Role};
pub use fairness::ClientId;
pub use ids::{AgentId, AttemptId, SubtaskId, TaskId};
