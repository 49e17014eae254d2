//! Deployments as their users run them.
//!
//! * `chart`: the Helm chart's rendered pods run as processes.

mod chart;
