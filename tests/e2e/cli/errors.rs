//! Client errors that say which endpoint failed and whether it was the
//! node or the etcd behind it; `bench` reads `AGENTMESH_ENDPOINT`;
//! completion scripts name the subcommands.

use std::time::Duration;

use super::{listening, spawn_node};
use crate::support::{CliOutput, Etcd, eventually, free_port, run_cli, run_cli_with};

#[test]
fn completion_scripts_name_the_subcommands() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef agentmesh"),
        ("fish", "complete -c agentmesh"),
    ] {
        let out = run_cli(&["completion", shell]);
        assert!(out.success(), "{shell}: {out}");
        for expected in [marker, "submit", "etcd-setup", "completion"] {
            assert!(out.stdout.contains(expected), "{shell}: no `{expected}`");
        }
    }
    let out = run_cli(&["completion", "tcsh"]);
    assert_eq!(out.code(), Some(2), "{out}");
}

#[test]
fn bench_reads_the_endpoint_variable_and_clients_blame_the_node_or_its_etcd() {
    let etcd = Etcd::start();
    let url = etcd.client_url();
    let common = ["--insecure", "--listen", "127.0.0.1:0", "--etcd", &url];
    let coordinator = spawn_node(
        "coordinator",
        &[&["--role", "coordinator"], &common[..]].concat(),
        &[],
    );
    let addr = listening(&coordinator);
    let endpoint = format!("http://{addr}");
    let worker = spawn_node(
        "worker",
        &[
            &["--role", "worker", "--capabilities", "math.eval"],
            &common[..],
        ]
        .concat(),
        &[],
    );
    listening(&worker);

    // `bench` with AGENTMESH_ENDPOINT loads that coordinator, not an
    // embedded cluster.
    let out = eventually(
        "a bench run against the node",
        Duration::from_secs(30),
        || {
            let out = run_cli_with(
                &[
                    "bench",
                    "--tasks",
                    "5",
                    "--concurrency",
                    "2",
                    "--warmup",
                    "0",
                    "--no-progress",
                ],
                &[("AGENTMESH_ENDPOINT", &endpoint)],
                Duration::from_secs(60),
            );
            out.success().then_some(out)
        },
    );
    let report: serde_json::Value =
        serde_json::from_str(out.stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(report["completed"], 5, "{report}");
    assert!(
        report["notes"].as_str().unwrap().contains(&endpoint),
        "{report}"
    );

    // A node that is not there is named as the node.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = run_cli(&["agents", "--endpoint", &format!("http://{dead}")]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr
            .contains(&format!("node http://{dead} unreachable")),
        "{out}"
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");

    // A node that answers while its etcd is down: the etcd is named.
    etcd.stop();
    let expected = format!("node {endpoint} answered, but its etcd is unreachable");
    let out: CliOutput = eventually(
        "a listing refused for etcd",
        Duration::from_secs(30),
        || {
            let out = run_cli(&["task", "list", "--endpoint", &endpoint]);
            out.stderr.contains(&expected).then_some(out)
        },
    );
    assert_eq!(out.code(), Some(2), "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    coordinator.assert_no_panic();
    worker.assert_no_panic();
}
