//! agentmesh's end-to-end tests: one test binary (`cargo nextest run -p
//! agentmesh --test e2e`) whose modules start real processes — an etcd,
//! `agentmesh node`s, the `agentmesh` CLI — through the shared harness in
//! [`support`].
//!
//! * `harness`: self-tests of the harness.
//! * `cli`: the command line's errors, config file, completion, and a
//!   node waiting for its etcd.
//! * `registry_etcd`: the etcd registry against a real etcd.
//! * `cluster`: coordinators and workers, driven through the CLI.
//! * `peers`: peer consensus and reputation.
//! * `hierarchy`: tasks across strategic, tactical and operational agents.
//! * `chaos`: load while workers, the leader, etcd or the network fail.
//! * `hostile`: hostile input against a cluster under memory caps.
//! * `observe`: listing tasks, idempotent submits, gRPC tooling; metrics
//!   scraped by a real Prometheus; traces and logs.
//! * `security`: forgeries and misuse refused, honest tasks unharmed
//!   (etcd with TLS and authentication included).
//! * `deploy`: the Helm chart's rendered coordinator, worker and etcd pods
//!   run as processes on loopback.
//! * `llm`: `llm.chat` and `llm.embed` on a worker pointed at a real local
//!   model.
//! * `events`: event-driven agents: publish, handlers on other nodes,
//!   order per key, dead letters and their bound, a handler node killed
//!   mid-delivery, the README's `agentmesh local --publish` demo.
//! * `reactive`: reactive requests: the response cache, the routing
//!   table, `--role reactive`, the provider fallback.
//! * `custom_tool`: a node built from `examples/custom-tool` serves its own
//!   capability to tasks submitted with the stock CLI.

mod chaos;
mod cli;
mod cluster;
mod custom_tool;
mod deploy;
mod events;
mod harness;
mod hierarchy;
mod hostile;
mod llm;
mod observe;
mod peers;
mod reactive;
mod registry_etcd;
mod requests;
mod security;
mod support;
