//! Seeing what a cluster does.
//!
//! * `list`: `task list`, idempotent submits and grpcurl against nodes.
//! * `metrics`: a real Prometheus scrapes a coordinator and a worker.

mod list;
mod metrics;
