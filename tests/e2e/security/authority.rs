//! Authority over work: an assignment or cancellation only from the leader
//! coordinator (a standby's credentials get `FAILED_PRECONDITION`), and a
//! directive for a task only from the strategic level that directs it (a
//! second strategic level's credentials, or a stranger's, get
//! `PERMISSION_DENIED`). The honest work completes with its right value.

use std::time::Duration;

use agentmesh_proto::v1::Envelope;
use agentmesh_proto::v1::hierarchy_message::Direction;
use agentmesh_proto::v1::{HierarchyMessage, SubtaskCancel};
use prost::Message;
use tonic::Code;

use super::{assert_honest_sum, deliver, forged, node_security};
use crate::support::cluster::Cluster;
use crate::support::scratch_dir;
use crate::support::tls::{self as test_tls, Certs};

/// Credentials of the cluster's CA that speak for `agents`: what an
/// attacker holds after taking over the node those agents run on.
fn credentials_for(dir: &tempfile::TempDir, agents: &str) -> Certs {
    test_tls::copy_shared_ca(dir.path());
    test_tls::issue_into(dir.path(), "stolen", agents, &["127.0.0.1"])
}

#[test]
fn only_the_leader_coordinator_assigns_and_cancels() {
    let cluster = Cluster::builder()
        .coordinators(2)
        .worker("worker-1", "math.eval")
        .start();
    let leader =
        crate::support::eventually("a leader", Duration::from_secs(20), || cluster.leader());
    let standby = ["coordinator-1", "coordinator-2"]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a standby");
    let dir = scratch_dir("standby");
    let stolen = node_security(&credentials_for(&dir, standby));
    let worker = cluster.node("worker-1").addr.clone();

    // A registered coordinator that does not lead: not a forgery of who it
    // is, but it may not hand out work.
    let cancel = SubtaskCancel::default().encode_to_vec();
    for (kind, payload) in [("subtask.assign", Vec::new()), ("subtask.cancel", cancel)] {
        let refused = deliver(&worker, &stolen, forged(standby, "worker-1", kind, payload))
            .expect_err("a standby's message must be refused");
        assert!(
            refused.starts_with(&format!("{:?}", Code::FailedPrecondition))
                && refused.contains(&format!("agent '{standby}' may not send '{kind}'"))
                && refused.contains("not the leader coordinator")
                && refused.contains(&format!("'{leader}' leading")),
            "{refused}"
        );
    }
    assert_honest_sum(&cluster);
}

/// A directive for `task` (its objective runs nothing: the refusal comes
/// before the payload is read).
fn directive(from: &str, task: &str) -> Envelope {
    let message = HierarchyMessage {
        task_id: task.into(),
        direction: Direction::Downward as i32,
        from_level: "strategic".into(),
        payload_json: r#"{"objective": {"id": "o1", "tasks": []}, "avoid": []}"#.into(),
        ..HierarchyMessage::default()
    };
    forged(
        from,
        "tactical-1",
        "hierarchy.message",
        message.encode_to_vec(),
    )
}

#[test]
fn only_the_strategic_level_directing_a_task_gives_directives_for_it() {
    let cluster = Cluster::builder()
        .coordinators(1)
        .level("strategic-1", "strategic")
        .level("strategic-2", "strategic")
        .level("tactical-1", "tactical")
        .level("operational-1", "operational")
        .worker("worker-1", "math.eval")
        .start();
    let tactical = cluster.node("tactical-1");
    let file = cluster.task_file(
        "nap.yaml",
        "name: directed\npattern: hierarchical\nobjectives:\n  - id: wait\n    tasks:\n      \
         - id: nap\n        capability: sleep\n        input: { ms: 2000 }\n",
    );
    let id = cluster.submit(&file);
    let received = tactical
        .process
        .wait_for_line("directive received", Duration::from_secs(20));
    let (director, other) = if received.contains("from=strategic-1") {
        ("strategic-1", "strategic-2")
    } else {
        ("strategic-2", "strategic-1")
    };
    assert!(received.contains(&format!("from={director}")), "{received}");
    assert!(received.contains(&id), "{received}");

    // The other strategic level's credentials: it may direct tasks of its
    // own, not take this one over (and have its report sent to itself).
    let dir = scratch_dir("strategic");
    let stolen = node_security(&credentials_for(&dir, other));
    let refused = deliver(&tactical.addr, &stolen, directive(other, &id))
        .expect_err("a directive for another level's task must be refused");
    assert!(
        refused.starts_with(&format!("{:?}", Code::PermissionDenied))
            && refused.contains(&format!("for task '{id}': it belongs to '{director}'")),
        "{refused}"
    );

    // A cluster certificate for an agent that is not a strategic level.
    let rogue = node_security(&credentials_for(&dir, "rogue-*"));
    let refused = deliver(&tactical.addr, &rogue, directive("rogue-1", "forged-task"))
        .expect_err("a directive from a stranger must be refused");
    assert!(
        refused.starts_with(&format!("{:?}", Code::PermissionDenied))
            && refused.contains("agent 'rogue-1' may not send 'hierarchy.message'")
            && refused.contains("not a registered agent"),
        "{refused}"
    );

    let done = cluster.wait_ended(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["result"]["strategic_summary"]["objectives"][0]["outputs"]["nap"],
        serde_json::json!({"slept_ms": 2000}),
        "{done}"
    );
    assert_eq!(
        tactical
            .process
            .output_lines()
            .iter()
            .filter(|line| line.contains("directive received"))
            .count(),
        1,
        "the tactical level acted on a forged directive"
    );
    assert_honest_sum(&cluster);
}
