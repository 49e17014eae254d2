//! Seeing what a cluster does.
//!
//! * `list`: `task list`, idempotent submits and grpcurl against nodes.
//! * `traces`: one trace per task across processes (a real OTLP
//!   receiver); JSON log lines, no colour codes in pipes.

mod list;
mod traces;
