//! The command line as an operator meets it: errors that say what to do,
//! a node that waits for its etcd, host names in `--listen`, the config
//! file, shell completion, and `bench` reading `AGENTMESH_ENDPOINT`.

mod config;
mod errors;
mod etcd_connect;

use std::time::Duration;

use crate::support::{Process, agentmesh_bin};

/// `agentmesh node ARGS...` with `envs`, not waited for.
fn spawn_node(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Process {
    let mut all = vec!["node"];
    all.extend_from_slice(args);
    Process::spawn(name, agentmesh_bin(), &all, envs)
}

/// The address of the node's `listening on ADDR` line.
fn listening(node: &Process) -> String {
    let line = node.wait_for_stdout_line("listening on ", Duration::from_secs(30));
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| node.fail(&format!("not a listening line: {line:?}")))
        .to_owned()
}
