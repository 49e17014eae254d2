//! A hierarchical task across three levels of separate processes: a
//! strategic agent, two tactical agents and two operational agents, one of
//! which fails every task on purpose. The tactical level may not retry
//! elsewhere (`--tactical-retries 0`), so a failure is escalated; the
//! strategic level re-plans the objective on the other tactical agent,
//! which avoids the failed operational agent, and the task completes. The
//! result shows every level's part.

mod support;

use std::time::Duration;

use serde_json::json;

use support::{Etcd, eventually, run_cli, start_node};

#[test]
fn a_hierarchical_task_crosses_three_levels_and_recovers_from_an_escalation() {
    let etcd = Etcd::start();
    let url = etcd.client_url();
    let mut nodes = vec![start_node(
        "coordinator",
        &url,
        "coordinator",
        &["--id", "coordinator-1"],
    )];
    let levels: [(&str, &[&str]); 5] = [
        ("strategic-1", &["--level", "strategic"]),
        (
            "tactical-1",
            &["--level", "tactical", "--tactical-retries", "0"],
        ),
        (
            "tactical-2",
            &["--level", "tactical", "--tactical-retries", "0"],
        ),
        // Ids order placement: the faulty operational agent is tried first.
        (
            "operational-a",
            &["--level", "operational", "--fault", "fail:1"],
        ),
        ("operational-b", &["--level", "operational"]),
    ];
    for (id, args) in levels {
        let args: Vec<&str> = ["--id", id].iter().chain(args).copied().collect();
        nodes.push(start_node(id, &url, "level", &args));
    }
    let endpoint = nodes[0].endpoint.clone();
    eventually("every level registered", Duration::from_secs(15), || {
        let out = run_cli(&["agents", "--endpoint", &endpoint, "--json"]);
        (out.success() && out.json().as_array().map_or(0, Vec::len) == 6).then_some(())
    });

    let example = format!(
        "{}/../../examples/hierarchical-market-study.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = run_cli(&["submit", "--endpoint", &endpoint, &example, "--wait"]);
    assert!(out.success(), "{out}");
    let record = out.json();
    let report = &record["result"];

    // Operational results, inside each objective's tactical summary.
    let objectives = report["strategic_summary"]["objectives"]
        .as_array()
        .unwrap();
    assert_eq!(objectives.len(), 2, "{report}");
    assert_eq!(objectives[0]["objective"], "demand");
    assert_eq!(objectives[0]["outputs"]["score"], json!({"value": 12}));
    assert_eq!(objectives[1]["objective"], "cost");
    assert_eq!(objectives[1]["outputs"]["unit"], json!({"value": 21.5}));
    for objective in objectives {
        assert!(
            objective["summary"].as_str().unwrap().contains(" met"),
            "{objective}"
        );
    }
    // The strategic summary and the final assessment.
    assert_eq!(report["strategic_summary"]["completed"], 2);
    assert_eq!(report["strategic_summary"]["failed"], 0);
    assert_eq!(report["assessment"]["outcome"], "succeeded", "{report}");
    // The operational failure was escalated and the objective re-planned.
    let replans = report["strategic_summary"]["replans"].as_u64().unwrap();
    assert!(replans >= 1, "{report}");
    let notes = report["assessment"]["notes"].to_string();
    assert!(
        notes.contains("re-planned away from tactical agent"),
        "{notes}"
    );
    assert!(notes.contains("operational-a"), "{notes}");

    for node in &nodes {
        node.process.assert_no_panic();
    }
}

/// A tactical agent that dies mid-objective loses it: once its lease runs
/// out the strategic agent re-plans the objective on the other tactical
/// agent, without waiting for the plan's deadline.
#[test]
fn a_tactical_agent_that_dies_has_its_objective_replanned() {
    let etcd = Etcd::start();
    let url = etcd.client_url();
    let coordinator = start_node(
        "coordinator",
        &url,
        "coordinator",
        &["--id", "coordinator-1"],
    );
    let mut levels = Vec::new();
    for (id, level) in [
        ("strategic-1", "strategic"),
        ("tactical-1", "tactical"),
        ("tactical-2", "tactical"),
        ("operational-1", "operational"),
    ] {
        levels.push(start_node(
            id,
            &url,
            "level",
            &["--id", id, "--level", level, "--lease-ttl", "2"],
        ));
    }
    let endpoint = coordinator.endpoint.clone();
    eventually("every level registered", Duration::from_secs(15), || {
        let out = run_cli(&["agents", "--endpoint", &endpoint, "--json"]);
        (out.success() && out.json().as_array().map_or(0, Vec::len) == 5).then_some(())
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nap.yaml");
    std::fs::write(
        &file,
        "name: long-objective\npattern: hierarchical\nobjectives:\n  - id: wait\n    tasks:\n      \
         - id: nap\n        capability: sleep\n        input: { ms: 1500 }\n",
    )
    .unwrap();
    let out = run_cli(&["submit", "--endpoint", &endpoint, file.to_str().unwrap()]);
    assert!(out.success(), "{out}");
    let id = out.stdout.trim().to_owned();
    // Ids order placement: tactical-1 gets the objective first.
    levels[1]
        .process
        .wait_for_line("directive received", Duration::from_secs(10));
    levels[1].process.kill();

    let done = eventually("the task to end", Duration::from_secs(30), || {
        let out = run_cli(&["task", "status", &id, "--endpoint", &endpoint]);
        let record = out.success().then(|| out.json())?;
        (record["status"] != "running" && record["status"] != "pending").then_some(record)
    });
    assert_eq!(done["status"], "completed", "{done}");
    let report = &done["result"];
    assert_eq!(
        report["strategic_summary"]["objectives"][0]["outputs"]["nap"],
        json!({"slept_ms": 1500})
    );
    assert_eq!(report["strategic_summary"]["replans"], 1, "{report}");
    assert!(
        report["assessment"]["notes"]
            .to_string()
            .contains("tactical-1"),
        "{report}"
    );
    coordinator.process.assert_no_panic();
    for (i, node) in levels.iter().enumerate() {
        if i != 1 {
            node.process.assert_no_panic();
        }
    }
}
