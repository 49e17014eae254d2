//! Secure by default: each module tries one forgery or misuse against a
//! real cluster on real etcd, asserts it is refused with a precise error,
//! and that an honest task still completes with the right value.

use agentmesh_proto::v1::Envelope;
use agentmesh_proto::v1::agent_mailbox_client::AgentMailboxClient;
use agentmesh_runtime::transport::channel::{self, Security};
use agentmesh_runtime::transport::tls::{NodeTls, TlsFiles};

use crate::support::cluster::Cluster;
use crate::support::grpc::{self, CONNECT_TIMEOUT};
use crate::support::tls::Certs;

mod authority;
mod etcd;
mod fault_injection;
mod http_get;
mod metrics;
mod mtls;
mod tokens;

/// The honest task every test runs beside its forgeries: `2 + 3`.
pub const HONEST_SUM: &str = r#"{"name": "sum", "tasks": [
    {"id": "a", "capability": "math.eval", "input": {"expr": "2 + 3"}}]}"#;

/// Submits [`HONEST_SUM`] and asserts it completes with 5, and that no
/// node panicked.
pub fn assert_honest_sum(cluster: &Cluster) {
    let file = cluster.task_file("honest-sum.json", HONEST_SUM);
    let record = cluster.submit_wait(&file);
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(
        record["result"],
        serde_json::json!({"value": 5}),
        "{record}"
    );
    cluster.assert_no_panic();
}

/// What a node holding `certs` presents when it dials another.
pub fn node_security(certs: &Certs) -> Security {
    Security::Node(
        NodeTls::load(TlsFiles {
            ca: certs.ca.clone(),
            cert: certs.cert.clone(),
            key: certs.key.clone(),
        })
        .expect("the rogue's certificate loads"),
    )
}

/// Delivers `envelope` to `addr` over `security`: the status, or the
/// connection error.
pub fn deliver(addr: &str, security: &Security, envelope: Envelope) -> Result<(), String> {
    let rt = grpc::runtime();
    rt.block_on(async {
        let channel = channel::connect(addr, CONNECT_TIMEOUT, security)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        AgentMailboxClient::new(channel)
            .deliver(envelope)
            .await
            .map(|_| ())
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
    })
}

/// An envelope from `from` to `to` of `kind`, with an id that marks it as
/// a test's forgery in the receiver's logs.
pub fn forged(from: &str, to: &str, kind: &str, payload: Vec<u8>) -> Envelope {
    Envelope {
        id: format!("forged-{kind}"),
        from: from.into(),
        to: to.into(),
        kind: kind.into(),
        payload,
        ..Envelope::default()
    }
}
