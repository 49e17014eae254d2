//! A program of the user's own — `examples/custom-tool`, the agentmesh
//! command line plus a `text.reverse` tool — joins a real cluster as a
//! worker and serves its capability to a task submitted through the stock
//! `agentmesh` CLI, chained with a built-in tool on a stock worker.

use std::path::PathBuf;
use std::process::Command;

use crate::support::agentmesh_bin;
use crate::support::cluster::{Cluster, NodeSpec};

/// The example's binary, beside the stock one. A workspace test build
/// builds it (the example has tests of its own); otherwise it is built
/// here, with the workspace's features, so nothing else recompiles.
fn custom_tool_bin() -> PathBuf {
    let bin = agentmesh_bin().with_file_name("custom-tool");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--workspace", "--bins"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the custom-tool example failed");
    }
    assert!(bin.exists(), "no {} after building it", bin.display());
    bin
}

#[test]
fn a_node_with_a_tool_of_its_own_serves_tasks_from_the_stock_cli() {
    let cluster = Cluster::builder()
        .coordinators(1)
        .worker("maths", "math.eval")
        .node(NodeSpec::worker("reverser", "text.reverse").program(custom_tool_bin()))
        .start();
    let agents = cluster.agents();
    let reverser = agents
        .iter()
        .find(|a| a["id"] == "reverser")
        .expect("the custom node is listed");
    assert_eq!(
        reverser["capabilities"],
        serde_json::json!(["text.reverse"])
    );

    // The task the example's README runs.
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/custom-tool/reverse.yaml"
    );
    let record = cluster.submit_wait(file);
    assert_eq!(record["status"], "completed", "{record:#}");
    assert_eq!(record["result"]["value"], 18, "{record:#}");
    let flip = &record["subtasks"][0];
    assert_eq!(flip["worker"], "reverser", "{record:#}");
    assert_eq!(flip["output"]["reversed"], "hsemtnega", "{record:#}");
    assert_eq!(record["subtasks"][1]["worker"], "maths", "{record:#}");
}
