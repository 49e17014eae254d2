//! etcd with TLS and authentication: what a process without credentials,
//! or with a worker's, can no longer write, how a node with bad
//! credentials fails, and that a node outlives its etcd auth token.
//!
//! Every cluster of the harness runs etcd with TLS and authentication on
//! and gives each node an etcd user of its own (`agentmesh etcd-setup`),
//! so these tests check the refusals; the rest of the suite checks that
//! the honest paths still work under them.

use std::fs;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, TlsOptions};
use serde_json::json;
use tonic::Code;

use crate::support::cluster::{Cluster, Role};
use crate::support::grpc::{self, runtime};
use crate::support::{CLI_TIMEOUT, eventually, run_cli_with, tls};

/// How long an honest task may take.
const TASK_TIMEOUT: Duration = Duration::from_secs(60);

/// A one-subtask `math.eval` task; it must complete with `{"value": 5}`.
fn assert_honest_task_completes(cluster: &Cluster, name: &str) {
    let file = cluster.task_file(
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\ntasks:\n  - id: a\n    capability: math.eval\n    input: {{ expr: \"2+3\" }}\n"
        ),
    );
    let id = cluster.submit(&file);
    let record = cluster.wait_ended(&id, TASK_TIMEOUT);
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["result"], json!({"value": 5}), "{record}");
}

/// A client of the cluster's etcd over TLS (it trusts the cluster's CA),
/// as `user` when given; without one it sends no credentials at all.
async fn rogue_client(cluster: &Cluster, user: Option<(&str, String)>) -> Client {
    let auth = cluster.etcd().auth().expect("the cluster's etcd is secure");
    let ca = fs::read(&auth.pki.ca_file).expect("read the CA");
    let mut options = ConnectOptions::new()
        .with_connect_timeout(grpc::CONNECT_TIMEOUT)
        .with_timeout(grpc::CALL_TIMEOUT)
        .with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(ca)));
    if let Some((name, password)) = user {
        options = options.with_user(name, password);
    }
    let url = cluster.etcd().client_url();
    Client::connect([url.as_str()], Some(options))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// The gRPC status of an etcd request that must fail.
fn refusal<T: std::fmt::Debug>(result: Result<T, etcd_client::Error>) -> tonic::Status {
    match result {
        Err(etcd_client::Error::GRpcStatus(status)) => status,
        other => panic!("expected etcd to refuse the request, got {other:?}"),
    }
}

/// A registration JSON as a worker writes it, pointing at `endpoint`.
fn forged_registration(id: &str, endpoint: &str) -> String {
    json!({
        "id": id,
        "role": "worker",
        "capabilities": ["math.eval"],
        "endpoint": endpoint,
        "load": 0,
        "max_concurrency": 64,
        "version": "0.1.0",
    })
    .to_string()
}

fn password_of(cluster: &Cluster, id: &str) -> String {
    let file = cluster
        .etcd()
        .auth()
        .expect("secure etcd")
        .password_file(id);
    fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
        .trim_end()
        .to_owned()
}

#[test]
fn writes_without_credentials_or_beyond_a_workers_role_are_refused_by_etcd() {
    let cluster = Cluster::builder()
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .worker("worker-2", "math.eval")
        .start();
    let rt = runtime();
    let forged = forged_registration("rogue", "127.0.0.1:1");

    // No credentials: etcd takes no request at all.
    let mut anonymous = rt.block_on(rogue_client(&cluster, None));
    let status =
        refusal(rt.block_on(anonymous.put("/agentmesh/v1/agents/rogue", forged.clone(), None)));
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("user name is empty"),
        "{status:?}"
    );
    let status = refusal(rt.block_on(anonymous.get(
        "/agentmesh/v1/tasks/",
        Some(GetOptions::new().with_prefix()),
    )));
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A worker's own credentials: only its own registration is writable.
    let worker = ("worker-1", password_of(&cluster, "worker-1"));
    let mut as_worker = rt.block_on(rogue_client(&cluster, Some(worker)));
    for (key, value) in [
        ("/agentmesh/v1/agents/rogue".to_owned(), forged.clone()),
        (
            "/agentmesh/v1/agents/worker-2".to_owned(),
            forged_registration("worker-2", "127.0.0.1:1"),
        ),
        (
            "/agentmesh/v1/tasks/forged".to_owned(),
            r#"{"id":"forged","status":"completed"}"#.to_owned(),
        ),
        (
            "/agentmesh/v1/reputation/worker-1/math.eval".to_owned(),
            r#"{"alpha":1000.0,"beta":1.0}"#.to_owned(),
        ),
        (
            "/agentmesh/v1/election/coordinator/1".to_owned(),
            "worker-1".to_owned(),
        ),
    ] {
        let status = refusal(rt.block_on(as_worker.put(key.as_str(), value, None)));
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "put {key}: {status:?}"
        );
        assert!(status.message().contains("permission denied"), "{status:?}");
    }
    // Nor read task records (their inputs and outputs).
    let status = refusal(rt.block_on(as_worker.get(
        "/agentmesh/v1/tasks/",
        Some(GetOptions::new().with_prefix()),
    )));
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Nothing forged reached etcd, and the cluster lists no rogue.
    for key in ["/agentmesh/v1/agents/rogue", "/agentmesh/v1/tasks/forged"] {
        assert_eq!(cluster.etcd().has_key(key), Ok(false), "{key}");
    }
    assert_eq!(
        cluster.agent_ids(),
        vec!["coordinator-1", "worker-1", "worker-2"]
    );
    assert_honest_task_completes(&cluster, "honest-after-rogue-writes");
    cluster.assert_no_panic();
}

#[test]
fn a_node_with_bad_etcd_credentials_fails_to_start_and_never_shows_the_password() {
    let cluster = Cluster::builder()
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .start();
    let url = cluster.etcd_client_url();
    let flags = cluster.etcd_flags("worker-2", Role::Worker);
    let right = password_of(&cluster, "worker-2");
    let wrong = format!("wrong-{}", crate::support::etcd_auth::random_secret());
    let wrong_file = cluster.task_file("wrong.password", &format!("{wrong}\n"));
    let ca = flags[1].clone();
    let mut node_tls = tls::shared().node_args();
    node_tls.push("--token-file".to_owned());
    node_tls.push(tls::shared_tokens().file.to_string_lossy().into_owned());
    let node = |extra: &[&str]| {
        let mut args = vec![
            "node",
            "--role",
            "worker",
            "--id",
            "worker-2",
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            &url,
        ];
        args.extend_from_slice(extra);
        args.extend(node_tls.iter().map(String::as_str));
        run_cli_with(&args, &[], CLI_TIMEOUT)
    };

    let out = node(&[
        "--etcd-ca",
        &ca,
        "--etcd-user",
        "worker-2",
        "--etcd-password-file",
        &wrong_file,
    ]);
    assert!(
        !out.success(),
        "a node with a wrong password started: {out}"
    );
    assert!(
        out.stderr.contains("refused user 'worker-2'")
            && out
                .stderr
                .contains("authentication failed, invalid user ID or password"),
        "{out}"
    );
    let shown = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !shown.contains(&wrong),
        "the wrong password was echoed: {out}"
    );
    assert!(!shown.contains(&right), "the password was echoed: {out}");

    // No user at all: etcd says so, and the error says what is missing.
    let out = node(&["--etcd-ca", &ca]);
    assert!(!out.success(), "a node without a user started: {out}");
    assert!(
        out.stderr.contains("user name is empty")
            && out.stderr.contains("--etcd-user and --etcd-password-file"),
        "{out}"
    );
    // https:// without a CA is refused before anything is sent.
    let out = node(&[]);
    assert!(!out.success(), "a node without --etcd-ca started: {out}");
    assert!(
        out.stderr
            .contains("no CA was given to verify etcd's certificate (--etcd-ca)"),
        "{out}"
    );
    // A CA that did not sign etcd's certificate: TLS fails, naming why.
    let other_ca = crate::support::etcd_auth::Pki::new(
        &std::path::PathBuf::from(&wrong_file).with_extension("pki"),
        "another CA",
    );
    let other = other_ca.ca_file.to_string_lossy().into_owned();
    let out = node(&[
        "--etcd-ca",
        &other,
        "--etcd-user",
        "worker-2",
        "--etcd-password-file",
        &flags[5],
    ]);
    assert!(!out.success(), "a node trusting another CA started: {out}");
    assert!(out.stderr.contains("UnknownIssuer"), "{out}");
    assert!(
        !out.stderr.contains(&right),
        "the password was echoed: {out}"
    );

    assert_eq!(cluster.agent_ids(), vec!["coordinator-1", "worker-1"]);
    assert_honest_task_completes(&cluster, "honest-after-bad-credentials");
    cluster.assert_no_panic();
}

#[test]
fn a_live_duplicate_id_is_refused_even_with_its_own_credentials() {
    let cluster = Cluster::builder()
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .start();
    let url = cluster.etcd_client_url();
    let flags = cluster.etcd_flags("worker-1", Role::Worker);
    let mut args = vec![
        "node",
        "--role",
        "worker",
        "--id",
        "worker-1",
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        &url,
    ];
    args.extend(flags.iter().map(String::as_str));
    let mut node_tls = tls::shared().node_args();
    node_tls.push("--token-file".to_owned());
    node_tls.push(tls::shared_tokens().file.to_string_lossy().into_owned());
    args.extend(node_tls.iter().map(String::as_str));
    let out = run_cli_with(&args, &[], CLI_TIMEOUT);
    assert!(!out.success(), "a second worker-1 started: {out}");
    assert!(
        out.stderr
            .contains("agent id 'worker-1' is already registered by another live node"),
        "{out}"
    );
    // The first one is untouched and still serves.
    assert!(cluster.node("worker-1").process.is_running());
    assert_honest_task_completes(&cluster, "honest-after-duplicate");
    cluster.assert_no_panic();
}

/// etcd's simple tokens expire after `--auth-token-ttl` seconds unused;
/// here 1 s. A node must authenticate again by itself.
#[test]
fn nodes_keep_working_past_the_etcd_auth_token_ttl() {
    let cluster = Cluster::builder()
        .etcd_args(&["--auth-token-ttl=1"])
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .start();
    assert_honest_task_completes(&cluster, "honest-before-expiry");

    let rt = runtime();
    let password = password_of(&cluster, "worker-1");
    for round in 0..2 {
        // A token taken now and left unused must run out: proof that the
        // TTL passed for every token idle as long.
        let mut idle = rt.block_on(rogue_client(&cluster, Some(("worker-1", password.clone()))));
        eventually(
            "an idle etcd token to expire",
            Duration::from_secs(20),
            || {
                let result = rt.block_on(idle.get("/agentmesh/v1/agents/worker-1", None));
                match result {
                    Err(etcd_client::Error::GRpcStatus(s)) if s.code() == Code::Unauthenticated => {
                        Some(())
                    }
                    _ => {
                        // Each probe uses the token and restarts its TTL:
                        // probe less often than the TTL.
                        std::thread::sleep(Duration::from_millis(1500));
                        None
                    }
                }
            },
        );
        assert_honest_task_completes(&cluster, &format!("honest-after-expiry-{round}"));
    }
    assert_eq!(cluster.agent_ids(), vec!["coordinator-1", "worker-1"]);
    for node in cluster.nodes() {
        assert!(node.process.is_running(), "{} exited", node.id);
    }
    cluster.assert_no_panic();
}

/// The development path stays: a plain etcd (no TLS, no authentication)
/// and nodes without etcd flags.
#[test]
fn a_plain_etcd_still_serves_nodes_without_credentials() {
    let cluster = Cluster::builder()
        .plain_etcd()
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .start();
    assert!(cluster.etcd().auth().is_none());
    assert!(cluster.etcd_client_url().starts_with("http://"));
    assert_honest_task_completes(&cluster, "honest-on-plain-etcd");
    cluster.assert_no_panic();
}

/// Adding a node's user changes etcd's auth store, and etcd then refuses
/// requests in flight across the change ("revision of auth store is old",
/// and every request of a token issued before it with JWT tokens) until
/// they are sent again with a fresh token. Tasks whose records are being
/// written while users are added must still complete.
#[test]
fn tasks_in_flight_complete_while_etcd_users_change() {
    let cluster = Cluster::builder()
        .coordinators(1)
        .worker("worker-1", "math.eval,sleep")
        .worker_args(&["--max-concurrency", "64"])
        .start();
    let file = cluster.task_file(
        "steps.yaml",
        "name: steps\nstrategy: sequential\ntasks:\n  - id: a\n    capability: sleep\n    input: { ms: 150 }\n  - id: b\n    capability: sleep\n    input: { ms: 150 }\n  - id: c\n    capability: math.eval\n    input: { expr: \"2+3\" }\n",
    );
    let mut ids = Vec::new();
    for round in 0..6 {
        ids.extend((0..4).map(|_| cluster.submit(&file)));
        let id = format!("worker-new-{round}");
        cluster.etcd().make_node_users(&[(id.as_str(), "worker")]);
    }
    for id in &ids {
        let record = cluster.wait_ended(id, TASK_TIMEOUT);
        assert_eq!(record["status"], "completed", "{record}");
        assert_eq!(record["result"], json!({"value": 5}), "{record}");
    }
    assert_honest_task_completes(&cluster, "honest-after-new-users");
    assert_eq!(cluster.agent_ids(), vec!["coordinator-1", "worker-1"]);
    cluster.assert_no_panic();
}
