//! Refusals are counted: a coordinator started with `--metrics-listen`
//! serves `agentmesh_envelopes_refused_total` and
//! `agentmesh_requests_refused_total` on `GET /metrics`, and a forged
//! envelope, an envelope without a node certificate and a call without a
//! token each raise theirs, while an honest task completes.
//!
//! `observe::metrics` checks a whole scrape with `promtool check metrics`.

use std::time::Duration;

use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::cluster_service_client::ClusterServiceClient;
use agentmesh_runtime::transport::channel::{ClientTls, Security};
use agentmesh_runtime::transport::tls;
use tonic::Code;

use super::{assert_honest_sum, deliver, forged, node_security};
use crate::support::cluster::Cluster;
use crate::support::grpc::{self, CALL_TIMEOUT};
use crate::support::tls as test_tls;
use crate::support::{eventually, free_port, http_get, scraped, scratch_dir};

/// A forged `subtask.result` to the coordinator in the name of `from`.
fn forged_result(from: &str) -> pb::Envelope {
    forged(from, "coordinator-1", "subtask.result", vec![1, 2, 3])
}

/// How long a refusal may take to show in a scrape (counted before the
/// refusal is answered, so the first scrape after it should show it).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until `series` reaches `at_least`.
fn wait_counted(addr: &str, series: &str, at_least: f64) {
    eventually(&format!("{series} >= {at_least}"), SCRAPE_TIMEOUT, || {
        scraped(addr, series).filter(|value| *value >= at_least)
    });
}

#[test]
fn refused_envelopes_and_calls_are_counted_on_the_metrics_endpoint() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let cluster = Cluster::builder()
        .coordinators(1)
        .coordinator_args(&["--metrics-listen", &metrics])
        .worker("worker-1", "math.eval")
        .start();
    let coordinator = cluster.node("coordinator-1");
    coordinator.process.wait_for_line(
        &format!("metrics served at http://{metrics}/metrics"),
        SCRAPE_TIMEOUT,
    );

    // Before any refusal nothing is counted (a family shows once it has a
    // series).
    let (status, body) = http_get(&metrics, "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("refused_total{"), "{body}");
    let (status, _) = http_get(&metrics, "/other").expect("GET /other");
    assert_eq!(status, 404);
    // `/` is the coordinator's dashboard, whose data needs a token.
    let (status, _) = http_get(&metrics, "/api/tasks").expect("GET /api/tasks");
    assert_eq!(status, 401);
    wait_counted(
        &metrics,
        r#"agentmesh_requests_refused_total{service="dashboard",reason="unauthenticated"}"#,
        1.0,
    );

    // A node of the cluster that may speak only for rogue-*, claiming to
    // be worker-1.
    let dir = scratch_dir("metrics-rogue");
    test_tls::copy_shared_ca(dir.path());
    let rogue = test_tls::issue_into(dir.path(), "rogue", "rogue-*", &["127.0.0.1"]);
    let refused = deliver(
        &coordinator.addr,
        &node_security(&rogue),
        forged_result("worker-1"),
    )
    .expect_err("a forged sender must be refused");
    assert!(
        refused.starts_with(&format!("{:?}", Code::PermissionDenied)),
        "{refused}"
    );
    wait_counted(
        &metrics,
        r#"agentmesh_envelopes_refused_total{kind="subtask.result",reason="forged_sender"}"#,
        1.0,
    );
    // Its WARN names who it claimed to be and who it is.
    let warned = coordinator
        .process
        .wait_for_line("refused an envelope", SCRAPE_TIMEOUT);
    assert!(
        warned.contains(r#"claimed="worker-1""#)
            && warned.contains("authenticated=rogue-*")
            && warned.contains("reason=forged_sender"),
        "{warned}"
    );

    // TLS without a node certificate.
    let client = Security::Client(ClientTls(
        tls::client_config(&test_tls::shared().ca).expect("client TLS"),
    ));
    let refused = deliver(&coordinator.addr, &client, forged_result("worker-1"))
        .expect_err("a connection without a node certificate must be refused");
    assert!(
        refused.starts_with(&format!("{:?}", Code::Unauthenticated)),
        "{refused}"
    );
    wait_counted(
        &metrics,
        r#"agentmesh_envelopes_refused_total{kind="subtask.result",reason="unauthenticated"}"#,
        1.0,
    );

    // A client call without a bearer token.
    let code = grpc::runtime().block_on(async {
        let channel = grpc::connect(cluster.endpoint()).await.expect("connect");
        let mut client = ClusterServiceClient::new(channel);
        let call = client.list_agents(pb::ListAgentsRequest::default());
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => Code::Ok,
            Ok(Err(status)) => status.code(),
            Err(_) => panic!("list agents timed out"),
        }
    });
    assert_eq!(code, Code::Unauthenticated);
    wait_counted(
        &metrics,
        r#"agentmesh_requests_refused_total{service="agentmesh.v1.ClusterService",reason="unauthenticated"}"#,
        1.0,
    );

    assert_honest_sum(&cluster);
    // The honest task refused nothing.
    assert_eq!(
        scraped(
            &metrics,
            r#"agentmesh_envelopes_refused_total{kind="subtask.result",reason="forged_sender"}"#
        ),
        Some(1.0)
    );
}
