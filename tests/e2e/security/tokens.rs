//! Client tokens and roles on a real cluster (etcd, coordinators started
//! with `--token-file`, a worker): calls without a valid token are
//! `UNAUTHENTICATED`, a submit token reaches only its own tasks
//! (`PERMISSION_DENIED` otherwise), read and admin tokens reach every
//! task, health stays open, a rotated tokens file takes effect without a
//! restart, and a task's owner survives a follower forwarding the submit.
//! Every test also runs an honest task to its right value.
//!
//! Tokens are made with `agentmesh token new`, as an operator would.

use std::path::PathBuf;
use std::time::Duration;

use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::cluster_service_client::ClusterServiceClient;
use agentmesh_proto::v1::task_service_client::TaskServiceClient;
use serde_json::json;
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use crate::support::cluster::{Cluster, ClusterBuilder};
use crate::support::grpc::{self, CALL_TIMEOUT};
use crate::support::{CLI_TIMEOUT, CliOutput, eventually, eventually_ok, run_cli, run_cli_with};

/// How long a task of these tests may take.
const TASK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a rewritten tokens file may take to be in force (polled every
/// second by the node).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// Two seconds of sleep, then `2500 / 100`: long enough to be interfered
/// with while it runs, and its value is known.
const SLOW_TASK: &str = "name: slow\ntasks:\n  - id: nap\n    capability: sleep\n    input: { ms: 2000 }\n  - id: after\n    capability: math.eval\n    input: { expr: \"{{nap.slept_ms}} / 100\" }\n    depends_on: [nap]\n";
const SLOW_VALUE: i64 = 20;
/// A task that runs until cancelled (well, ten minutes).
const ENDLESS_TASK: &str =
    "name: endless\ntasks:\n  - id: nap\n    capability: sleep\n    input: { ms: 600000 }\n";

/// A token made by `agentmesh token new`, and its tokens-file line.
struct Token {
    token: String,
    line: String,
}

fn new_token(role: &str, subject: &str) -> Token {
    let out = run_cli(&["token", "new", "--role", role, "--subject", subject]);
    assert!(out.success(), "token new failed: {out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let [token, line] = lines[..] else {
        panic!("token new printed {} lines, expected 2: {out}", lines.len())
    };
    assert!(token.starts_with("amt_"), "{out}");
    assert!(line.starts_with(&format!("{role} {subject} ")), "{out}");
    assert!(
        !line.contains(token),
        "the line must hold only a hash: {out}"
    );
    Token {
        token: token.to_owned(),
        line: line.to_owned(),
    }
}

/// The tokens file coordinators are started with.
struct TokensFile {
    _dir: TempDir,
    path: PathBuf,
}

impl TokensFile {
    fn new(tokens: &[&Token]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens");
        let file = Self { _dir: dir, path };
        file.write(tokens);
        file
    }

    /// Replaces the file the way an editor or a secret mount does: a new
    /// file renamed over the old one, so the node never reads half of it.
    fn write(&self, tokens: &[&Token]) {
        let text: String = tokens.iter().map(|t| format!("{}\n", t.line)).collect();
        self.write_text(&format!("# role subject sha256\n{text}"));
    }

    fn write_text(&self, text: &str) {
        let next = self.path.with_extension("next");
        std::fs::write(&next, text).expect("write tokens file");
        std::fs::rename(&next, &self.path).expect("rename tokens file");
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

/// A cluster whose nodes require the tokens in `file`; the harness
/// runs its own CLI calls (formation, status) with `admin`.
fn secured(file: &TokensFile, admin: &Token) -> ClusterBuilder {
    Cluster::builder()
        .coordinators(1)
        .coordinator_args(&["--token-file", file.path()])
        .worker_args(&["--token-file", file.path()])
        .client_env(&[("AGENTMESH_TOKEN", &admin.token)])
        .worker("worker-1", "math.eval,sleep")
}

/// `agentmesh ARGS... --endpoint ENDPOINT` with `token` in
/// `AGENTMESH_TOKEN` (none when `None`).
fn cli_as(token: Option<&Token>, endpoint: &str, args: &[&str]) -> CliOutput {
    let mut all = args.to_vec();
    all.extend(["--endpoint", endpoint]);
    match token {
        Some(token) => run_cli_with(&all, &[("AGENTMESH_TOKEN", &token.token)], CLI_TIMEOUT),
        None => run_cli_with(&all, &[], CLI_TIMEOUT),
    }
}

fn submit_as(token: &Token, endpoint: &str, file: &str) -> String {
    let out = cli_as(Some(token), endpoint, &["submit", file]);
    assert!(out.success(), "submit failed: {out}");
    out.stdout.trim().to_owned()
}

/// Waits for task `id` to end, as `token` sees it, and returns its record.
fn wait_ended_as(token: &Token, endpoint: &str, id: &str) -> serde_json::Value {
    eventually(&format!("task {id} to end"), TASK_TIMEOUT, || {
        let out = cli_as(Some(token), endpoint, &["task", "status", id]);
        out.success()
            .then(|| out.json())
            .filter(|r| !matches!(r["status"].as_str(), Some("running" | "pending")))
    })
}

/// A request carrying `token` as its bearer token, if any.
fn request<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}")).expect("ascii token"),
        );
    }
    request
}

/// The direct gRPC calls whose status codes the tests check.
struct Grpc {
    rt: Runtime,
}

impl Grpc {
    fn new() -> Self {
        Self {
            rt: grpc::runtime(),
        }
    }

    fn tasks(&self, endpoint: &str) -> TaskServiceClient<tonic::transport::Channel> {
        let channel = self
            .rt
            .block_on(grpc::connect(endpoint))
            .unwrap_or_else(|e| panic!("{e}"));
        TaskServiceClient::new(channel)
    }

    fn get(&self, endpoint: &str, token: Option<&str>, id: &str) -> Result<pb::TaskRecord, Status> {
        let mut client = self.tasks(endpoint);
        let call = client.get(request(
            token,
            pb::GetTaskRequest {
                task_id: id.to_owned(),
            },
        ));
        self.bounded(call).map(|r| r.into_inner())
    }

    /// Opens a watch and reads its first record.
    fn watch(
        &self,
        endpoint: &str,
        token: Option<&str>,
        id: &str,
    ) -> Result<pb::TaskRecord, Status> {
        let mut client = self.tasks(endpoint);
        self.rt.block_on(async {
            let opened = client.watch(request(
                token,
                pb::WatchTaskRequest {
                    task_id: id.to_owned(),
                    after_revision: 0,
                },
            ));
            let mut stream = tokio::time::timeout(CALL_TIMEOUT, opened)
                .await
                .map_err(|_| Status::deadline_exceeded("watch did not open"))??
                .into_inner();
            stream
                .message()
                .await?
                .ok_or_else(|| Status::internal("empty watch"))
        })
    }

    fn cancel(
        &self,
        endpoint: &str,
        token: Option<&str>,
        id: &str,
    ) -> Result<pb::TaskStatus, Status> {
        let mut client = self.tasks(endpoint);
        let call = client.cancel(request(
            token,
            pb::CancelTaskRequest {
                task_id: id.to_owned(),
                reason: "test".to_owned(),
            },
        ));
        self.bounded(call).map(|r| r.into_inner().status())
    }

    fn submit(
        &self,
        endpoint: &str,
        token: Option<&str>,
        document: &str,
    ) -> Result<String, Status> {
        let mut client = self.tasks(endpoint);
        let call = client.submit(request(
            token,
            pb::SubmitRequest {
                document: document.to_owned(),
                wait: false,
                ..Default::default()
            },
        ));
        self.bounded(call).map(|r| r.into_inner().task_id)
    }

    fn list_agents(&self, endpoint: &str, token: Option<&str>) -> Result<usize, Status> {
        let channel = self
            .rt
            .block_on(grpc::connect(endpoint))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut client = ClusterServiceClient::new(channel);
        let call = client.list_agents(request(token, pb::ListAgentsRequest {}));
        self.bounded(call).map(|r| r.into_inner().agents.len())
    }

    fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        self.rt.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer")))
        })
    }
}

/// Panics unless `outcome` failed with `code`, with a message that does
/// not show `secret`.
fn assert_refused<T: std::fmt::Debug>(
    outcome: Result<T, Status>,
    code: Code,
    secret: Option<&str>,
    what: &str,
) -> String {
    let status = match outcome {
        Ok(value) => panic!("{what}: expected {code:?}, got {value:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{what}: {status:?}");
    if let Some(secret) = secret {
        assert!(
            !status.message().contains(secret),
            "{what}: the refusal shows the token: {}",
            status.message()
        );
    }
    status.message().to_owned()
}

#[test]
fn calls_without_a_valid_token_are_unauthenticated_and_health_stays_open() {
    let admin = new_token("admin", "ops");
    let alice = new_token("submit", "alice");
    let file = TokensFile::new(&[&admin, &alice]);
    let cluster = secured(&file, &admin).start();
    let endpoint = cluster.endpoint().to_owned();
    let grpc = Grpc::new();

    // Health answers without a token (load balancers and the CLI's
    // liveness check use it).
    assert_eq!(
        grpc::serving_status(&grpc.rt, &endpoint).as_deref(),
        Some("Serving")
    );

    let document =
        "name: t\ntasks:\n  - id: a\n    capability: math.eval\n    input: { expr: \"2+3\" }\n";
    let missing = assert_refused(
        grpc.submit(&endpoint, None, document),
        Code::Unauthenticated,
        None,
        "submit without a token",
    );
    assert!(missing.starts_with("missing bearer token"), "{missing}");
    assert_refused(
        grpc.list_agents(&endpoint, None),
        Code::Unauthenticated,
        None,
        "agents without a token",
    );
    // Near misses of a real token: a changed character, another scheme.
    let (kept, last) = alice.token.split_at(alice.token.len() - 1);
    let wrong = format!("{kept}{}", if last == "0" { "1" } else { "0" });
    let unknown = assert_refused(
        grpc.submit(&endpoint, Some(&wrong), document),
        Code::Unauthenticated,
        Some(&wrong),
        "submit with a wrong token",
    );
    assert_eq!(unknown, "unknown or revoked bearer token");
    assert_refused(
        grpc.list_agents(&endpoint, Some(&wrong)),
        Code::Unauthenticated,
        Some(&wrong),
        "agents with a wrong token",
    );

    // The CLI says the same, with the code, and never the token.
    let out = cli_as(None, &endpoint, &["agents"]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("[Unauthenticated]"), "{out}");

    // An honest client with its token is served.
    let id = grpc
        .submit(&endpoint, Some(&alice.token), document)
        .expect("alice submits");
    assert_refused(
        grpc.get(&endpoint, None, &id),
        Code::Unauthenticated,
        None,
        "get without a token",
    );
    let done = wait_ended_as(&alice, &endpoint, &id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"value": 5}));
    assert_eq!(done["owner"], "alice");
    cluster.assert_no_panic();
}

#[test]
fn a_submit_token_reaches_only_its_own_tasks_read_reads_all_and_admin_cancels_any() {
    let admin = new_token("admin", "ops");
    let alice = new_token("submit", "alice");
    let bob = new_token("submit", "bob");
    let audit = new_token("read", "audit");
    let file = TokensFile::new(&[&admin, &alice, &bob, &audit]);
    let cluster = secured(&file, &admin).start();
    let endpoint = cluster.endpoint().to_owned();
    let grpc = Grpc::new();

    // Alice names herself bob: with tokens, the name is ignored and the
    // task is hers.
    let slow = cluster.task_file("slow.yaml", SLOW_TASK);
    let out = cli_as(
        Some(&alice),
        &endpoint,
        &["submit", &slow, "--client", "bob"],
    );
    assert!(out.success(), "{out}");
    let alices = out.stdout.trim().to_owned();
    let record = grpc
        .get(&endpoint, Some(&alice.token), &alices)
        .expect("alice reads her task");
    assert_eq!(record.owner, "alice");
    // Placed a moment after it is accepted; it runs for seconds.
    eventually("alice's task to run", TASK_TIMEOUT, || {
        let record = grpc.get(&endpoint, Some(&alice.token), &alices).ok()?;
        (record.status() == pb::TaskStatus::Running).then_some(())
    });

    // Bob can neither read, follow nor stop it.
    for (what, outcome) in [
        (
            "get",
            grpc.get(&endpoint, Some(&bob.token), &alices).map(|_| ()),
        ),
        (
            "watch",
            grpc.watch(&endpoint, Some(&bob.token), &alices).map(|_| ()),
        ),
        (
            "cancel",
            grpc.cancel(&endpoint, Some(&bob.token), &alices)
                .map(|_| ()),
        ),
    ] {
        let message = assert_refused(outcome, Code::PermissionDenied, Some(&bob.token), what);
        assert!(
            message.starts_with("'bob' (role submit) may not"),
            "{what}: {message}"
        );
    }
    let out = cli_as(Some(&bob), &endpoint, &["task", "cancel", &alices]);
    assert!(out.stderr.contains("[PermissionDenied]"), "{out}");

    // The reader reads every task and changes none.
    let bobs = submit_as(
        &bob,
        &endpoint,
        &cluster.task_file("endless.yaml", ENDLESS_TASK),
    );
    for id in [&alices, &bobs] {
        let record = grpc
            .get(&endpoint, Some(&audit.token), id)
            .expect("audit reads any task");
        assert_eq!(&record.task_id, id);
        grpc.watch(&endpoint, Some(&audit.token), id)
            .expect("audit watches any task");
    }
    assert_refused(
        grpc.submit(&endpoint, Some(&audit.token), SLOW_TASK),
        Code::PermissionDenied,
        Some(&audit.token),
        "submit with a read token",
    );
    assert_refused(
        grpc.cancel(&endpoint, Some(&audit.token), &bobs),
        Code::PermissionDenied,
        Some(&audit.token),
        "cancel with a read token",
    );

    // The admin cancels bob's task.
    assert_eq!(
        grpc.cancel(&endpoint, Some(&admin.token), &bobs)
            .expect("admin cancels any task"),
        pb::TaskStatus::Cancelled
    );
    // Bob reads and follows his own task to its end.
    let out = cli_as(Some(&bob), &endpoint, &["task", "watch", &bobs]);
    assert!(out.stdout.contains("\"cancelled\""), "{out}");

    // Alice's task was left alone and completes with its value, followed
    // by alice through a token file.
    let token_file = cluster.task_file("alice.token", &format!("{}\n", alice.token));
    let out = run_cli(&[
        "task",
        "watch",
        &alices,
        "--endpoint",
        &endpoint,
        "--token-file",
        &token_file,
    ]);
    assert!(out.success(), "{out}");
    let last: serde_json::Value =
        serde_json::from_str(out.stdout.lines().last().expect("a record")).expect("json");
    assert_eq!(last["status"], "completed", "{out}");
    assert_eq!(last["result"], json!({"value": SLOW_VALUE}));
    assert_eq!(last["owner"], "alice");
    cluster.assert_no_panic();
}

#[test]
fn a_rotated_tokens_file_takes_effect_without_a_restart() {
    let admin = new_token("admin", "ops");
    let old = new_token("submit", "alice");
    let file = TokensFile::new(&[&admin, &old]);
    let cluster = secured(&file, &admin).start();
    let endpoint = cluster.endpoint().to_owned();
    let grpc = Grpc::new();
    grpc.list_agents(&endpoint, Some(&old.token))
        .expect("the old token works");

    // Rotation: alice's token is replaced.
    let new = new_token("submit", "alice");
    file.write(&[&admin, &new]);
    eventually_ok("the new token to be accepted", RELOAD_TIMEOUT, || {
        grpc.list_agents(&endpoint, Some(&new.token))
    });
    assert_refused(
        grpc.list_agents(&endpoint, Some(&old.token)),
        Code::Unauthenticated,
        Some(&old.token),
        "the replaced token",
    );

    // A bad file (a token pasted where its hash belongs) is refused, named
    // by line, without the token; the tokens in force stay.
    let leaked = new_token("submit", "mallory");
    file.write_text(&format!(
        "{}\nsubmit mallory {}\n",
        admin.line, leaked.token
    ));
    let coordinator = &cluster.node("coordinator-1").process;
    let warning = coordinator.wait_for_line("tokens file refused", RELOAD_TIMEOUT);
    assert!(warning.contains("line 2: holds a token"), "{warning}");
    assert!(!warning.contains(&leaked.token), "{warning}");
    assert!(
        coordinator
            .output_lines()
            .iter()
            .all(|l| !l.contains(&leaked.token)),
        "the node logged the token"
    );
    assert_refused(
        grpc.list_agents(&endpoint, Some(&leaked.token)),
        Code::Unauthenticated,
        Some(&leaked.token),
        "a token from a refused file",
    );
    let id = submit_as(&new, &endpoint, &cluster.task_file("slow.yaml", SLOW_TASK));
    let done = wait_ended_as(&new, &endpoint, &id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"value": SLOW_VALUE}));
    cluster.assert_no_panic();
}

#[test]
fn the_owner_survives_forwarding_from_a_follower() {
    let admin = new_token("admin", "ops");
    let alice = new_token("submit", "alice");
    let bob = new_token("submit", "bob");
    let file = TokensFile::new(&[&admin, &alice, &bob]);
    let cluster = secured(&file, &admin).coordinators(2).start();
    assert_eq!(cluster.leader().as_deref(), Some("coordinator-1"));
    let leader = cluster.node("coordinator-1").endpoint.clone();
    let follower = cluster.node("coordinator-2").endpoint.clone();
    let grpc = Grpc::new();

    // Submitted to the follower, which forwards it to the leader.
    let id = submit_as(
        &alice,
        &follower,
        &cluster.task_file("slow.yaml", SLOW_TASK),
    );
    let on_leader = grpc
        .get(&leader, Some(&alice.token), &id)
        .expect("alice reads her task on the leader");
    assert_eq!(on_leader.owner, "alice");

    // Bob's cancel through the follower reaches the leader as bob's.
    let message = assert_refused(
        grpc.cancel(&follower, Some(&bob.token), &id),
        Code::PermissionDenied,
        Some(&bob.token),
        "bob's cancel forwarded by the follower",
    );
    assert!(message.starts_with("'bob' (role submit)"), "{message}");

    // Bob names himself a follower forwarding for an admin: a leader reads
    // no principal from headers, so he is still bob, and without his token
    // nobody.
    let forged = |token: Option<&str>| {
        let mut request = request(
            token,
            pb::CancelTaskRequest {
                task_id: id.clone(),
                reason: "forged".to_owned(),
            },
        );
        let metadata = request.metadata_mut();
        metadata.insert(
            "agentmesh-forwarded-by",
            MetadataValue::from_static("follower"),
        );
        metadata.insert(
            "agentmesh-forwarded-subject",
            MetadataValue::from_static("ops"),
        );
        metadata.insert(
            "agentmesh-forwarded-role",
            MetadataValue::from_static("admin"),
        );
        let mut client = grpc.tasks(&leader);
        grpc.bounded(client.cancel(request))
            .map(|r| r.into_inner().status())
    };
    assert_refused(
        forged(Some(&bob.token)),
        Code::PermissionDenied,
        None,
        "forged forward as bob",
    );
    assert_refused(
        forged(None),
        Code::Unauthenticated,
        None,
        "forged forward without a token",
    );

    // Alice follows her task through the follower to its value.
    let done = wait_ended_as(&alice, &follower, &id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"value": SLOW_VALUE}));
    assert_eq!(done["owner"], "alice");
    cluster.assert_no_panic();
}
