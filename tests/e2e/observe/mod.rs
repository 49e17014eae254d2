//! Seeing what a cluster does.
//!
//! * `dashboard`: the live dashboard in headless Chromium.
//! * `list`: `task list`, idempotent submits and grpcurl against nodes.
//! * `metrics`: a real Prometheus scrapes a coordinator and a worker.
//! * `traces`: one trace per task across processes (a real OTLP
//!   receiver); JSON log lines, no colour codes in pipes.

mod dashboard;
mod list;
mod metrics;
mod traces;
