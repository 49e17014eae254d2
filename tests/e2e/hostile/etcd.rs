//! Class 5, second half: etcd stays healthy under sustained load. Ended
//! task records are deleted after their retention, and an etcd that is
//! out of space (its NOSPACE alarm, here on a 16 MiB quota) is reported to
//! the client at once as RESOURCE_EXHAUSTED naming etcd's space, and on
//! gRPC health as NOT_SERVING, until space is freed and the alarm
//! disarmed, when the cluster serves again by itself.

use std::time::{Duration, Instant};

use agentmesh_proto::v1::SubmitRequest;
use agentmesh_proto::v1::task_service_client::TaskServiceClient;
use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, DeleteOptions, GetOptions,
};
use tonic::Code;

use super::{HONEST_TASK_TIMEOUT, assert_survived, capped};
use crate::support::cluster::Cluster;
use crate::support::grpc::{self, runtime, serving_status};
use crate::support::{Etcd, eventually};

/// etcd's quota in the out-of-space test: small enough to fill in a second.
const QUOTA_BYTES: u64 = 16 * 1024 * 1024;
/// One filler value, under etcd's 1.5 MiB request limit.
const FILLER_BYTES: usize = 512 * 1024;
/// Filler keys written at most before etcd must have said NOSPACE.
const MAX_FILLERS: usize = 200;
const FILLER_PREFIX: &str = "/hostile-test/filler/";
/// How soon a refusal must reach the client.
const REFUSAL_BOUND: Duration = Duration::from_secs(1);

const HONEST: &str =
    "name: honest\ntasks:\n  - id: a\n    capability: math.eval\n    input: { expr: \"2+3\" }\n";

/// A client with root's rights (the cluster's etcd has authentication on).
async fn etcd(etcd: &Etcd) -> Client {
    etcd.root_client()
        .await
        .unwrap_or_else(|e| panic!("connect to etcd: {e}"))
}

/// Puts filler values until etcd refuses one for lack of space; returns
/// how many went in.
async fn fill(client: &mut Client) -> usize {
    let value = vec![b'x'; FILLER_BYTES];
    for i in 0..MAX_FILLERS {
        match client
            .put(format!("{FILLER_PREFIX}{i:04}"), value.clone(), None)
            .await
        {
            Ok(_) => {}
            Err(e) if e.to_string().contains("database space exceeded") => return i,
            Err(e) => panic!("filler put {i} failed otherwise: {e}"),
        }
    }
    panic!(
        "etcd took {MAX_FILLERS} fillers of {FILLER_BYTES} bytes under a {QUOTA_BYTES} byte quota"
    )
}

/// What an operator does: delete what filled etcd, compact its history,
/// defragment its database, then disarm the alarm.
async fn free(client: &mut Client) {
    client
        .delete(FILLER_PREFIX, Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete fillers");
    let revision = client
        .get("/", Some(GetOptions::new().with_count_only()))
        .await
        .expect("read revision")
        .header()
        .expect("header")
        .revision();
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    client.defragment().await.expect("defragment");
    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("list alarms");
    for alarm in alarms.alarms() {
        let mut options = AlarmOptions::new();
        options.with_member(alarm.member_id());
        client
            .alarm(AlarmAction::Deactivate, alarm.alarm(), Some(options))
            .await
            .expect("disarm");
    }
}

/// Submits over gRPC; the status and how long the answer took.
fn submit_grpc(endpoint: &str, document: &str) -> (Result<String, tonic::Status>, Duration) {
    runtime().block_on(async {
        let channel = grpc::connect(endpoint).await.expect("connect");
        let mut client = TaskServiceClient::new(channel);
        let started = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(30),
            client.submit(grpc::authorized(SubmitRequest {
                document: document.to_owned(),
                wait: false,
                ..Default::default()
            })),
        )
        .await
        .expect("no answer to submit within 30 s");
        (reply.map(|r| r.into_inner().task_id), started.elapsed())
    })
}

fn health(cluster: &Cluster) -> Option<String> {
    serving_status(&runtime(), cluster.endpoint())
}

#[test]
fn etcd_out_of_space_is_refused_at_once_and_the_cluster_recovers() {
    let quota = format!("--quota-backend-bytes={QUOTA_BYTES}");
    let cluster = capped()
        .etcd_args(&[&quota])
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .start();
    let honest = cluster.task_file("honest.yaml", HONEST);
    let before = cluster.submit(&honest);
    let status = cluster.wait_ended(&before, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");

    let rt = runtime();
    let mut client = rt.block_on(etcd(cluster.etcd()));
    let fillers = rt.block_on(fill(&mut client));

    // The first submit finds out: its record is refused by etcd.
    let (first, first_took) = submit_grpc(cluster.endpoint(), HONEST);
    let refusal = first.expect_err("a submit to an etcd out of space was accepted");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("etcd is out of space"),
        "the refusal does not name etcd's space: {}",
        refusal.message()
    );
    assert!(
        first_took < REFUSAL_BOUND,
        "the refusal took {first_took:?}"
    );
    // Every later one is refused before anything is accepted.
    let (second, second_took) = submit_grpc(cluster.endpoint(), HONEST);
    let second = second.expect_err("a second submit was accepted");
    assert_eq!(second.code(), Code::ResourceExhausted, "{second:?}");
    assert!(
        second_took < REFUSAL_BOUND,
        "the refusal took {second_took:?}"
    );
    // The CLI shows it and does not retry it as back-pressure.
    let started = Instant::now();
    let cli = cluster.cli(&["submit", "--endpoint", cluster.endpoint(), &honest]);
    let cli_took = started.elapsed();
    assert!(!cli.success(), "the CLI's submit was accepted: {cli}");
    assert!(
        cli.stderr.contains("etcd is out of space") && cli.stderr.contains("ResourceExhausted"),
        "{}",
        cli.stderr
    );

    let full_at = Instant::now();
    eventually("health to say NOT_SERVING", Duration::from_secs(10), || {
        (health(&cluster).as_deref() == Some("NotServing")).then_some(())
    });
    let not_serving_after = full_at.elapsed();

    rt.block_on(free(&mut client));
    let freed_at = Instant::now();
    eventually(
        "health to say SERVING again",
        Duration::from_secs(15),
        || (health(&cluster).as_deref() == Some("Serving")).then_some(()),
    );
    let serving_after = freed_at.elapsed();
    let after = cluster.submit(&honest);
    let status = cluster.wait_ended(&after, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");

    let peak = assert_survived(&cluster);
    eprintln!(
        "HOSTILE etcd-nospace: quota {QUOTA_BYTES} B filled by {fillers} values of {FILLER_BYTES} B; \
         submit refused RESOURCE_EXHAUSTED in {first_took:?} (first), {second_took:?} (next), \
         CLI {cli_took:?}; NOT_SERVING within {not_serving_after:?}; SERVING {serving_after:?} \
         after space was freed; largest node peak RSS {peak} KiB"
    );
}

/// Keys under `prefix`, counted by a fresh client.
fn count(server: &Etcd, prefix: &str) -> i64 {
    runtime().block_on(async {
        etcd(server)
            .await
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .expect("count keys")
            .count()
    })
}

#[test]
fn ended_task_records_are_deleted_after_retention() {
    let cluster = capped()
        .coordinators(1)
        .coordinator_args(&["--task-retention", "1s"])
        .worker("worker-1", "math.eval")
        .start();
    let honest = cluster.task_file("honest.yaml", HONEST);
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let record = cluster.submit_wait(&honest);
            assert_eq!(record["status"], "completed", "{record}");
            record["task_id"].as_str().expect("a task id").to_owned()
        })
        .collect();
    let ended_at = Instant::now();

    eventually(
        "etcd to hold no ended task records",
        Duration::from_secs(30),
        || {
            let left = count(cluster.etcd(), "/agentmesh/v1/tasks/");
            (left == 0).then_some(())
        },
    );
    let deleted_after = ended_at.elapsed();

    let status = cluster.cli(&["task", "status", &ids[0], "--endpoint", cluster.endpoint()]);
    assert!(!status.success(), "a deleted task still answers: {status}");
    assert!(
        status.stderr.contains("deleted after its retention") && status.stderr.contains("NotFound"),
        "{}",
        status.stderr
    );
    let peak = assert_survived(&cluster);
    eprintln!(
        "HOSTILE etcd-retention: 3 ended tasks with --task-retention 1s deleted from etcd within \
         {deleted_after:?}; Status answers NOT_FOUND; largest node peak RSS {peak} KiB"
    );
}
