//! Fault injection is for tests: `--fault` alone is refused at start,
//! naming the flag that allows it, and a node started with the allowance
//! is marked in its registration and shown as faulty by `agents`.

use crate::support::cluster::{Cluster, NodeSpec};
use crate::support::{Etcd, NODE_START_TIMEOUT, Process, agentmesh_bin};

#[test]
fn fault_flags_are_refused_without_the_allowance() {
    let etcd = Etcd::start();
    let url = etcd.client_url();
    let node = Process::spawn(
        "faulty-unallowed",
        agentmesh_bin(),
        &[
            "node",
            "--role",
            "worker",
            "--etcd",
            url.as_str(),
            "--listen",
            "127.0.0.1:0",
            "--id",
            "faulty-unallowed",
            "--fault",
            "wrong-result:1",
        ],
        &[],
    );
    if cfg!(feature = "fault-injection") {
        // A test build accepts faults on its own.
        node.wait_for_stdout_line("listening on", NODE_START_TIMEOUT);
        return;
    }
    let status = node
        .wait_exit(NODE_START_TIMEOUT)
        .unwrap_or_else(|| node.fail("a node with --fault alone kept running"));
    assert_eq!(status.code(), Some(2), "refused at start: {status}");
    // The exit can be seen before the output reader has the last line.
    let line = node.wait_for_line("--allow-fault-injection", NODE_START_TIMEOUT);
    assert!(
        line.contains(
            "--fault wrong-result:1 refused: fault injection makes this node misbehave on \
             purpose, for tests and demonstrations only; add --allow-fault-injection"
        ),
        "{line}"
    );
    assert!(
        !node
            .stdout_lines()
            .iter()
            .any(|l| l.starts_with("listening on")),
        "the refused node bound its port"
    );
    assert!(
        !etcd
            .has_key("/agentmesh/v1/agents/faulty-unallowed")
            .expect("etcd answers"),
        "the refused node registered"
    );
}

#[test]
fn a_node_with_faults_is_shown_as_faulty() {
    let cluster = Cluster::builder()
        .coordinators(1)
        .worker("worker-honest", "math.eval")
        .node(NodeSpec::worker("worker-faulty", "sleep").args(&[
            "--fault",
            "wrong-result:1",
            "--allow-fault-injection",
        ]))
        .start();

    let agents = cluster.agents();
    let faults = |id: &str| {
        agents
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {agents:?}"))["faults"]
            .clone()
    };
    assert_eq!(
        faults("worker-faulty"),
        serde_json::json!(["wrong-result:1"])
    );
    assert_eq!(faults("worker-honest"), serde_json::json!([]));
    assert_eq!(faults("coordinator-1"), serde_json::json!([]));

    let table = cluster.cli(&["agents", "--endpoint", cluster.endpoint()]);
    assert!(table.success(), "{table}");
    let header = table.stdout.lines().next().unwrap_or_default();
    assert!(header.contains("FAULTS"), "{table}");
    let row = |id: &str| {
        table
            .stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row for {id}:\n{table}"))
            .to_owned()
    };
    assert!(row("worker-faulty").contains(" wrong-result:1 "), "{table}");
    assert!(!row("worker-honest").contains("wrong-result"), "{table}");

    // The honest worker still answers right.
    super::assert_honest_sum(&cluster);
}
