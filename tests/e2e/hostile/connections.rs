//! Classes 10, 11 and 12: connections. Idle TCP connections at a node under
//! a low file-descriptor limit (it backed off instead of spinning, closed
//! them after its idle timeout and kept answering); more connections than
//! `--max-connections` (each refused at once, naming the limit); a frozen
//! (SIGSTOPped) coordinator first in `--endpoint A,B` (the CLI moves on to
//! B within its connect deadline); a Watch from an ended task's last
//! revision (it ends at once) and more Watch streams than a node allows
//! (refused, naming the limit).

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::task_service_client::TaskServiceClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::{HONEST_TASK_TIMEOUT, assert_survived, capped};
use crate::support::cluster::{Cluster, NodeSpec};
use crate::support::eventually;
use crate::support::grpc::{self, CALL_TIMEOUT};

fn honest(cluster: &Cluster, endpoint: &str) -> String {
    let file = cluster.task_file(
        "honest.yaml",
        "name: honest\ntasks:\n  - id: a\n    capability: math.eval\n    input: { expr: \"2+3\" }\n",
    );
    let out = cluster.cli(&["submit", "--endpoint", endpoint, &file]);
    assert!(out.success(), "honest submit failed: {out}");
    out.stdout.trim().to_owned()
}

/// utime + stime of `pid` so far (`/proc/PID/stat`, fields 14 and 15).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name (field 2) may hold spaces; fields after it are plain.
    let after_name = &stat[stat.rfind(')').expect("a ')' after the name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second: u64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Whether the server has closed `stream` (end of stream or reset);
/// whatever it sent before is read and dropped.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn addr_of(endpoint: &str) -> &str {
    endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://")
}

#[test]
fn at_the_file_descriptor_limit_a_node_backs_off_and_lets_idle_connections_go() {
    const IDLE_TIMEOUT_SECS: u64 = 2;
    const IDLE_CONNECTIONS: usize = 300;
    let cluster = capped()
        .node(
            NodeSpec::coordinator("coordinator-1")
                .args(&["--idle-timeout", &IDLE_TIMEOUT_SECS.to_string()])
                .prlimit(&["--nofile=128"]),
        )
        .worker("worker-1", "math.eval")
        .start();
    let endpoint = cluster.endpoint().to_owned();
    let before = honest(&cluster, &endpoint);
    let node = cluster.node("coordinator-1");
    let rt = grpc::runtime();

    // A client connected before the flood, with a stream open so that the
    // idle timeout leaves its connection alone.
    let channel = rt.block_on(grpc::connect(&endpoint)).unwrap();
    let mut health = HealthClient::new(channel);
    let _watching = rt
        .block_on(health.watch(HealthCheckRequest::default()))
        .expect("a health watch");

    let cpu_before = cpu_time(node.process.pid());
    let flood_started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|_| {
            let stream = TcpStream::connect(addr_of(&endpoint)).expect("a TCP connection");
            stream.set_nonblocking(true).unwrap();
            stream
        })
        .collect();

    // At the limit, the connected client is still answered.
    let answered = rt.block_on(async {
        let started = Instant::now();
        tokio::time::timeout(CALL_TIMEOUT, health.check(HealthCheckRequest::default()))
            .await
            .expect("an answer at the fd limit")
            .expect("a health status");
        started.elapsed()
    });

    // Every idle connection is closed: those accepted after their idle
    // timeout, those left in the backlog once descriptors free up.
    let mut open = IDLE_CONNECTIONS;
    eventually(
        "every idle connection to be closed by the node",
        Duration::from_secs(IDLE_TIMEOUT_SECS * 10 + 30),
        || {
            idle.retain_mut(|stream| !closed_by_server(stream));
            open = idle.len();
            idle.is_empty().then_some(())
        },
    );
    let all_closed = flood_started.elapsed();
    let cpu = cpu_time(node.process.pid()).saturating_sub(cpu_before);
    assert!(
        cpu < all_closed / 4,
        "the node used {cpu:?} of CPU in {all_closed:?} at its file-descriptor limit"
    );
    assert!(
        node.process
            .output_lines()
            .iter()
            .any(|line| line.contains("cannot accept connections")),
        "the node did not say it could not accept:\n{}",
        node.process.log_tail(40)
    );

    // New clients are served again.
    let status = cluster.wait_ended(&before, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let after = honest(&cluster, &endpoint);
    let status = cluster.wait_ended(&after, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let peak = assert_survived(&cluster);
    eprintln!(
        "HOSTILE connections: {IDLE_CONNECTIONS} idle connections at a node under --nofile=128: \
         {cpu:?} CPU in {all_closed:?} (before: 20 s in 20 s, nothing logged), connected client \
         answered in {answered:?}, all {IDLE_CONNECTIONS} closed after {all_closed:?} \
         (idle timeout {IDLE_TIMEOUT_SECS} s; before: never); largest node peak RSS {peak} KiB"
    );
}

#[test]
fn over_the_connection_limit_a_client_is_refused_with_the_limit_named() {
    const LIMIT: usize = 8;
    let cluster = capped()
        .coordinators(1)
        .coordinator_args(&["--max-connections", &LIMIT.to_string()])
        .worker("worker-1", "math.eval")
        .start();
    let endpoint = cluster.endpoint().to_owned();
    let before = honest(&cluster, &endpoint);

    // Idle connections until a client is refused: the node's own links
    // hold some of the slots.
    let mut held = Vec::new();
    let (refused, refused_in) = loop {
        assert!(
            held.len() <= LIMIT,
            "{} idle connections held and no client refused",
            held.len()
        );
        held.push(TcpStream::connect(addr_of(&endpoint)).unwrap());
        let started = Instant::now();
        let out = cluster.cli(&["agents", "--endpoint", &endpoint]);
        if !out.success() {
            break (out, started.elapsed());
        }
    };
    assert!(
        refused.stderr.contains(&format!(
            "connection limit of {LIMIT} reached (--max-connections)"
        )),
        "the refusal does not name the limit: {}",
        refused.stderr
    );
    let node = cluster.node("coordinator-1");
    assert!(
        node.process.output_lines().iter().any(|line| line
            .contains("refused connections over the connection limit")
            && line.contains(&format!("limit={LIMIT}"))),
        "no WARN naming the limit:\n{}",
        node.process.log_tail(20)
    );

    drop(held);
    let status = cluster.wait_ended(&before, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let after = honest(&cluster, &endpoint);
    let status = cluster.wait_ended(&after, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let peak = assert_survived(&cluster);
    eprintln!(
        "HOSTILE connections: over --max-connections {LIMIT}: refused in {refused_in:?} (CLI, \
         RESOURCE_EXHAUSTED naming the limit; before: no limit); largest node peak RSS {peak} KiB"
    );
}

/// Sends SIGCONT on drop, so a failing test leaves no process stopped.
struct Resume<'a>(&'a crate::support::Process);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        if self.0.is_running() {
            self.0.signal("CONT");
        }
    }
}

#[test]
fn a_frozen_first_endpoint_is_passed_over_within_the_connect_deadline() {
    const CONNECT_TIMEOUT_MS: u64 = 1_500;
    let cluster = capped()
        .coordinators(2)
        .worker("worker-1", "math.eval")
        .start();
    // The follower is frozen and named first: the CLI must pass it over.
    // (Freezing the leader instead tests the standby's forwarding to it,
    // not the CLI.)
    let endpoints = cluster.coordinator_endpoints();
    let both = format!("{},{}", endpoints[1], endpoints[0]);
    let frozen = cluster.node("coordinator-2");
    frozen.process.signal("STOP");
    let _resume = Resume(&frozen.process);

    let file = cluster.task_file(
        "honest.yaml",
        "name: honest\ntasks:\n  - id: a\n    capability: math.eval\n    input: { expr: \"2+3\" }\n",
    );
    let timeout = CONNECT_TIMEOUT_MS.to_string();
    let started = Instant::now();
    let out = cluster.cli(&[
        "submit",
        "--endpoint",
        &both,
        "--connect-timeout-ms",
        &timeout,
        "--wait",
        &file,
    ]);
    let took = started.elapsed();
    assert!(out.success(), "submit did not complete via B: {out}");
    assert_eq!(out.json()["status"], "completed", "{out}");
    // The connect deadline (once for the submit, once for the watch of
    // --wait), then the task.
    assert!(
        took < Duration::from_millis(2 * CONNECT_TIMEOUT_MS) + Duration::from_secs(10),
        "took {took:?}"
    );

    let started = Instant::now();
    let agents = cluster.cli(&[
        "agents",
        "--endpoint",
        &both,
        "--connect-timeout-ms",
        &timeout,
    ]);
    let agents_took = started.elapsed();
    assert!(agents.success(), "{agents}");
    assert!(
        agents_took < Duration::from_millis(CONNECT_TIMEOUT_MS) + Duration::from_secs(5),
        "agents took {agents_took:?}"
    );
    cluster.assert_no_panic();
    eprintln!(
        "HOSTILE connections: submit --endpoint A,B with A stopped: completed via B in {took:?} \
         (connect deadline {CONNECT_TIMEOUT_MS} ms), agents in {agents_took:?} (before: waited \
         forever)"
    );
}

#[test]
fn a_watch_of_an_ended_task_ends_at_once_and_watch_streams_are_bounded() {
    const MAX_WATCHES: usize = 2;
    let cluster = capped()
        .coordinators(2)
        .coordinator_args(&["--max-watch-streams", &MAX_WATCHES.to_string()])
        .worker("worker-1", "math.eval,sleep")
        .start();
    let endpoints = cluster.coordinator_endpoints();
    let id = honest(&cluster, &endpoints[0]);
    let record = cluster.wait_ended(&id, HONEST_TASK_TIMEOUT);
    assert_eq!(record["status"], "completed", "{record}");
    let revision = record["revision"].as_u64().expect("a revision");
    let rt = grpc::runtime();

    // On the leader (from memory) and on the follower (from etcd).
    let mut ended_in = Vec::new();
    for endpoint in &endpoints {
        let started = Instant::now();
        let received = rt.block_on(async {
            let channel = grpc::connect(endpoint).await.unwrap();
            let request = pb::WatchTaskRequest {
                task_id: id.clone(),
                after_revision: revision,
            };
            let watch = async {
                let mut stream = TaskServiceClient::new(channel)
                    .watch(grpc::authorized(request))
                    .await?
                    .into_inner();
                let mut received = 0;
                while stream.message().await?.is_some() {
                    received += 1;
                }
                Ok::<_, tonic::Status>(received)
            };
            tokio::time::timeout(CALL_TIMEOUT, watch)
                .await
                .unwrap_or_else(|_| panic!("the watch at {endpoint} did not end"))
                .unwrap()
        });
        assert_eq!(received, 0, "records after the last revision");
        ended_in.push(started.elapsed());
    }

    // Watches of a running task fill the follower's Watch limit; one more
    // is refused, naming it.
    let nap = cluster.task_file(
        "nap.yaml",
        "name: nap\ntasks:\n  - id: nap\n    capability: sleep\n    input: { ms: 3000 }\n",
    );
    let out = cluster.cli(&["submit", "--endpoint", &endpoints[0], &nap]);
    assert!(out.success(), "{out}");
    let running = out.stdout.trim().to_owned();
    let refusal = rt.block_on(async {
        let channel = grpc::connect(&endpoints[1]).await.unwrap();
        let mut client = TaskServiceClient::new(channel);
        let watch = |client: &mut TaskServiceClient<_>| {
            let request = pb::WatchTaskRequest {
                task_id: running.clone(),
                after_revision: 0,
            };
            let mut client = client.clone();
            async move { client.watch(grpc::authorized(request)).await }
        };
        let mut open = Vec::new();
        for _ in 0..MAX_WATCHES {
            open.push(watch(&mut client).await.expect("a watch under the limit"));
        }
        let refused = watch(&mut client)
            .await
            .expect_err("a watch over the limit");
        drop(open);
        refused
    });
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert!(
        refusal
            .message()
            .contains(&format!("at most {MAX_WATCHES} Watch streams")),
        "{refusal:?}"
    );
    let status = cluster.wait_ended(&running, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let peak = assert_survived(&cluster);
    eprintln!(
        "HOSTILE connections: Watch after an ended task's last revision ended in {:?} (leader) \
         and {:?} (follower) (before: never); Watch {} of {MAX_WATCHES} refused with \
         RESOURCE_EXHAUSTED; largest node peak RSS {peak} KiB",
        ended_in[0],
        ended_in[1],
        MAX_WATCHES + 1
    );
}
