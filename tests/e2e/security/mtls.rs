//! Mutual TLS between nodes: forged envelopes against a coordinator's
//! `AgentMailbox` (a node whose certificate, signed by the cluster CA,
//! names only `rogue-*` and claims to be `worker-1`; a client with no
//! certificate; a certificate of another CA; plaintext), each refused with
//! a precise status or not let in at all; and certificates rotated while
//! tasks run, loaded without a restart and losing no task. An honest task
//! completes with the right value throughout.

use agentmesh_proto::v1::Envelope;
use agentmesh_runtime::transport::channel::{ClientTls, Security};
use agentmesh_runtime::transport::tls;
use tonic::Code;

use super::{assert_honest_sum, deliver, forged, node_security};
use crate::support::cluster::Cluster;
use crate::support::grpc;
use crate::support::scratch_dir;
use crate::support::tls as test_tls;

/// A forged `subtask.result` in the name of `from`. The mailbox checks the
/// sender before it reads the payload, so the payload need not decode.
fn forged_result(from: &str) -> Envelope {
    forged(from, "coordinator-1", "subtask.result", vec![1, 2, 3])
}

#[test]
fn envelopes_are_taken_only_from_the_agents_a_peers_certificate_names() {
    let cluster = Cluster::builder()
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .start();
    let addr = cluster.node("coordinator-1").addr.clone();

    // A node of the cluster (its certificate chains to the cluster CA) that
    // may speak only for rogue-*, claiming to be worker-1.
    let dir = scratch_dir("rogue");
    test_tls::copy_shared_ca(dir.path());
    let rogue = test_tls::issue_into(dir.path(), "rogue", "rogue-*", &["127.0.0.1"]);
    let refused = deliver(&addr, &node_security(&rogue), forged_result("worker-1"))
        .expect_err("a forged sender must be refused");
    assert!(
        refused.starts_with(&format!("{:?}", Code::PermissionDenied))
            && refused.contains("envelope from 'worker-1' refused")
            && refused.contains("rogue-*"),
        "{refused}"
    );

    // TLS without a client certificate: a client, not a node.
    let client = Security::Client(ClientTls(
        tls::client_config(&test_tls::shared().ca).expect("client TLS"),
    ));
    let refused = deliver(&addr, &client, forged_result("worker-1"))
        .expect_err("a connection without a node certificate must be refused");
    assert!(
        refused.starts_with(&format!("{:?}", Code::Unauthenticated))
            && refused.contains("certificate of this cluster's CA"),
        "{refused}"
    );

    // A certificate of another CA is not let in at all.
    let stranger = scratch_dir("stranger");
    let stranger = test_tls::issue_into(stranger.path(), "node", "*", &["127.0.0.1"]);
    let refused = deliver(&addr, &node_security(&stranger), forged_result("worker-1"))
        .expect_err("a certificate of another CA must be refused");
    assert!(
        !refused.contains("PermissionDenied") && !refused.contains("Ok"),
        "{refused}"
    );

    // Nor is plaintext.
    let refused = deliver(
        &format!("http://{addr}"),
        &Security::Plaintext,
        forged_result("worker-1"),
    )
    .expect_err("plaintext must be refused");
    assert!(!refused.contains("PermissionDenied"), "{refused}");

    assert_honest_sum(&cluster);
}

/// The certificate a TLS server at `addr` presents to a client that trusts
/// `ca`.
fn presented_certificate(addr: &str, ca: &std::path::Path) -> Vec<u8> {
    let config = tls::client_config(ca).expect("client TLS");
    grpc::runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the node");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("a server certificate")[0]
            .to_vec()
    })
}

#[test]
fn certificates_rotated_while_tasks_run_lose_nothing() {
    let dir = scratch_dir("rotation");
    test_tls::copy_shared_ca(dir.path());
    let certs = test_tls::issue_into(dir.path(), "node", "*", &["localhost", "127.0.0.1"]);
    let args = certs.node_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::builder()
        .coordinators(1)
        .coordinator_args(&args)
        .worker_args(&args)
        .worker("worker-1", "sleep,math.eval")
        .start();
    let coordinator = cluster.node("coordinator-1").addr.clone();
    let old = std::fs::read(&certs.cert).expect("the certificate");
    let old_der = presented_certificate(&coordinator, &certs.ca);

    // Tasks in flight across the rotation.
    let slow = cluster.task_file(
        "slow.yaml",
        "name: slow\ntasks:\n  - id: nap\n    capability: sleep\n    input: { ms: 1500 }\n  \
         - id: sum\n    capability: math.eval\n    input: { expr: \"{{nap.slept_ms}} / 300\" }\n    \
         depends_on: [nap]\n",
    );
    let ids: Vec<String> = (0..4).map(|_| cluster.submit(&slow)).collect();

    // A new certificate and key for every node, in place (renamed over the
    // old files, as `agentmesh certs` writes them).
    test_tls::issue_into(dir.path(), "node", "*", &["localhost", "127.0.0.1"]);
    assert_ne!(old, std::fs::read(&certs.cert).expect("the certificate"));
    for id in ["coordinator-1", "worker-1"] {
        cluster.node(id).process.wait_for_line(
            "loaded new TLS material",
            std::time::Duration::from_secs(30),
        );
    }
    // New connections get the new certificate.
    let new_der = presented_certificate(&coordinator, &certs.ca);
    assert_ne!(
        old_der, new_der,
        "the node still presents its old certificate"
    );

    for id in &ids {
        let record = cluster.wait_ended(id, std::time::Duration::from_secs(60));
        assert_eq!(record["status"], "completed", "{record}");
        assert_eq!(
            record["result"],
            serde_json::json!({"value": 5}),
            "{record}"
        );
    }
    assert_honest_sum(&cluster);
}

/// A forged `subtask.assign` from `from` to `to`.
fn forged_assign(from: &str, to: &str) -> Envelope {
    forged(from, to, "subtask.assign", Vec::new())
}

#[test]
fn workers_take_assignments_only_from_agents_that_hand_out_work() {
    let cluster = Cluster::builder()
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .worker("worker-2", "math.eval")
        .start();
    let worker = cluster.node("worker-1").addr.clone();
    let dir = scratch_dir("assigners");
    test_tls::copy_shared_ca(dir.path());

    // worker-2's credentials, stolen: a worker does not hand out work.
    let stolen = test_tls::issue_into(dir.path(), "stolen", "worker-2", &["127.0.0.1"]);
    let refused = deliver(
        &worker,
        &node_security(&stolen),
        forged_assign("worker-2", "worker-1"),
    )
    .expect_err("a worker's assignment must be refused");
    assert!(
        refused.starts_with(&format!("{:?}", Code::PermissionDenied))
            && refused.contains("agent 'worker-2' may not send 'subtask.assign'")
            && refused.contains("it is a worker"),
        "{refused}"
    );

    // A certificate of the cluster for an agent that never registered.
    let rogue = test_tls::issue_into(dir.path(), "rogue", "rogue-*", &["127.0.0.1"]);
    let refused = deliver(
        &worker,
        &node_security(&rogue),
        forged_assign("rogue-1", "worker-1"),
    )
    .expect_err("an unregistered agent's assignment must be refused");
    assert!(
        refused.starts_with(&format!("{:?}", Code::PermissionDenied))
            && refused.contains("not a registered agent"),
        "{refused}"
    );

    assert_honest_sum(&cluster);
}

#[test]
fn agents_show_which_nodes_run_insecure() {
    let secure = Cluster::builder()
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .start();
    for agent in secure.agents() {
        assert_eq!(agent["insecure"], false, "{agent}");
    }
    drop(secure);

    let insecure = Cluster::builder()
        .coordinators(1)
        .coordinator_args(&["--insecure"])
        .worker_args(&["--insecure"])
        .worker("worker-1", "math.eval")
        .start();
    for agent in insecure.agents() {
        assert_eq!(agent["insecure"], true, "{agent}");
    }
    let table = insecure.cli(&["agents", "--endpoint", insecure.endpoint()]);
    assert!(table.success(), "{table}");
    let rows: Vec<&str> = table.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows.iter().all(|row| row.contains(" INSECURE ")), "{table}");
    let started = insecure
        .node("worker-1")
        .process
        .wait_for_line("running INSECURE", std::time::Duration::from_secs(5));
    assert!(started.contains("WARN"), "{started}");
    assert_honest_sum(&insecure);
}

#[test]
fn a_peer_may_bid_only_in_its_own_name() {
    use prost::Message;
    let cluster = Cluster::builder()
        .coordinators(1)
        .node(crate::support::cluster::NodeSpec::peer(
            "peer-1",
            "math.eval",
        ))
        .node(crate::support::cluster::NodeSpec::peer(
            "peer-2",
            "math.eval",
        ))
        .worker("worker-1", "math.eval")
        .start();
    let peer = cluster.node("peer-1").addr.clone();
    let dir = scratch_dir("bidder");
    test_tls::copy_shared_ca(dir.path());
    let rogue = test_tls::issue_into(dir.path(), "rogue", "rogue-*", &["127.0.0.1"]);
    // A bid in peer-2's name, sent by rogue-1 (whom the mailbox lets in).
    let bid = agentmesh_proto::v1::CollaborationBid {
        round_id: "round-1".into(),
        agent_id: "peer-2".into(),
        capability_match: 1.0,
        free_load: 1.0,
        reputation: 1.0,
    };
    let envelope = forged("rogue-1", "peer-1", "collab.bid", bid.encode_to_vec());
    let refused = deliver(&peer, &node_security(&rogue), envelope)
        .expect_err("a bid in another peer's name must be refused");
    assert!(
        refused.starts_with(&format!("{:?}", Code::PermissionDenied))
            && refused.contains("envelope from 'peer-2' refused"),
        "{refused}"
    );
    assert_honest_sum(&cluster);
}
