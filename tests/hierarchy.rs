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
