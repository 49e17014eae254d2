//! A hierarchical task across three levels of separate processes: a
//! strategic agent, two tactical agents and two operational agents, one of
//! which fails every task on purpose. The tactical level may not retry
//! elsewhere (`--tactical-retries 0`), so a failure is escalated; the
//! strategic level re-plans the objective on the other tactical agent,
//! which avoids the failed operational agent, and the task completes. The
//! result shows every level's part.

use std::time::Duration;

use serde_json::json;

use crate::support::cluster::{Cluster, NodeSpec};

#[test]
fn a_hierarchical_task_crosses_three_levels_and_recovers_from_an_escalation() {
    let no_retries = ["--tactical-retries", "0"];
    let cluster = Cluster::builder()
        .coordinators(1)
        .level("strategic-1", "strategic")
        .node(NodeSpec::level("tactical-1", "tactical").args(&no_retries))
        .node(NodeSpec::level("tactical-2", "tactical").args(&no_retries))
        // Ids order placement: the faulty operational agent is tried first.
        .node(NodeSpec::level("operational-a", "operational").args(&["--fault", "fail:1"]))
        .level("operational-b", "operational")
        .start();

    let example = format!(
        "{}/../../examples/hierarchical-market-study.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let record = cluster.submit_wait(&example);
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

    cluster.assert_no_panic();
}

/// A tactical agent that dies mid-objective loses it: once its lease runs
/// out the strategic agent re-plans the objective on the other tactical
/// agent, without waiting for the plan's deadline.
#[test]
fn a_tactical_agent_that_dies_has_its_objective_replanned() {
    let cluster = Cluster::builder()
        .coordinators(1)
        .level("strategic-1", "strategic")
        .level("tactical-1", "tactical")
        .level("tactical-2", "tactical")
        .level("operational-1", "operational")
        .lease_ttl(2)
        .start();
    let file = cluster.task_file(
        "nap.yaml",
        "name: long-objective\npattern: hierarchical\nobjectives:\n  - id: wait\n    tasks:\n      \
         - id: nap\n        capability: sleep\n        input: { ms: 1500 }\n",
    );
    let id = cluster.submit(&file);
    // Ids order placement: tactical-1 gets the objective first.
    let tactical = cluster.node("tactical-1");
    tactical
        .process
        .wait_for_line("directive received", Duration::from_secs(10));
    cluster.kill("tactical-1");

    let done = cluster.wait_ended(&id, Duration::from_secs(30));
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
    // The killed tactical agent included: it must not have panicked before.
    cluster.assert_no_panic();
}
