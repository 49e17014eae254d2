//! Seeing what a cluster does.
//!
//! * `list`: `task list`, idempotent submits and grpcurl against nodes.

mod list;
