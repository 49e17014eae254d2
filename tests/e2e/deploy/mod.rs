//! Deployments as their users run them.
//!
//! * `chart`: the Helm chart's rendered pods run as processes.
//! * `scaling`: the queue-depth signal worker pools scale on.

mod chart;
mod scaling;
