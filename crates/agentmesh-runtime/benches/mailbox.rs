//! Agent-to-agent messaging between two processes, against bare tonic.
//!
//! The bench re-runs its own binary as the peer process (`AGENTMESH_BENCH_PEER`
//! set), which serves two things on loopback:
//! - a bare tonic `AgentMailbox` that answers every envelope at once with a
//!   message of its own — the raw baseline, same envelopes and payload,
//!   none of our machinery;
//! - a real node mailbox (router, `Link` streams) hosting an echo actor.
//!
//! Measured in one run:
//! - `mailbox_rtt/raw_unary`: one unary `Deliver` call, answered;
//! - `mailbox_rtt/agentmesh`: agent → echo actor → back to the agent, each
//!   leg through the router and a node-to-node stream, with acks;
//! - `mailbox_throughput/raw_stream`: 10,000 envelopes pipelined over one
//!   bare bidi stream, each acknowledged;
//! - `mailbox_throughput/agentmesh`: 10,000 `Router::send`s to the echo
//!   actor with up to 1,024 in flight, each acknowledged once the actor's
//!   mailbox took it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::{AgentId, AgentRegistration, Membership, Role};
use agentmesh_proto::v1::agent_mailbox_client::AgentMailboxClient;
use agentmesh_proto::v1::agent_mailbox_server::{AgentMailbox, AgentMailboxServer};
use agentmesh_proto::v1::{DeliverAck, Envelope, LinkAck};
use agentmesh_runtime::MailboxConfig;
use agentmesh_runtime::transport::{DeliverError, LocalMailbox, MailboxService, Router};
use criterion::{Criterion, Throughput};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

/// The allocator the `agentmesh` binary runs with, for both sides.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PEER_ENV: &str = "AGENTMESH_BENCH_PEER";
const CLIENT_AGENT: &str = "bench-client";
const ECHO_AGENT: &str = "bench-echo";
const BATCH: u64 = 10_000;
const WINDOW: usize = 1024;
const PAYLOAD_BYTES: usize = 128;

fn main() {
    if let Ok(client_endpoint) = std::env::var(PEER_ENV) {
        peer_main(client_endpoint);
        return;
    }
    let mut criterion = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
}

fn runtime() -> tokio::runtime::Runtime {
    // The runtime every node runs.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn envelope(kind: &str) -> Envelope {
    Envelope {
        id: "bench".into(),
        from: CLIENT_AGENT.into(),
        to: ECHO_AGENT.into(),
        kind: kind.into(),
        payload: vec![7; PAYLOAD_BYTES],
        ..Envelope::default()
    }
}

fn view(agent: &str, endpoint: &str) -> Arc<Membership> {
    let registration = AgentRegistration {
        id: AgentId::new(agent),
        role: Role::Worker,
        level: None,
        capabilities: Vec::new(),
        endpoint: endpoint.to_owned(),
        load: 0,
        max_concurrency: 1,
        version: "bench".into(),
        faults: Vec::new(),
        insecure: false,
        event_handlers: Vec::new(),
    };
    Arc::new(Membership {
        agents: BTreeMap::from([(registration.id.clone(), registration)]),
    })
}

async fn serve_mailbox(router: Arc<Router>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        Server::builder()
            .add_service(MailboxService::server(router))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    addr
}

// ---------------------------------------------------------------- peer side

/// Bare tonic: acknowledges every envelope without looking at it.
struct RawMailbox;

#[tonic::async_trait]
impl AgentMailbox for RawMailbox {
    async fn deliver(&self, request: Request<Envelope>) -> Result<Response<DeliverAck>, Status> {
        let _envelope = request.into_inner();
        Ok(Response::new(DeliverAck {}))
    }

    type LinkStream = ReceiverStream<Result<LinkAck, Status>>;

    async fn link(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let mut inbound = request.into_inner();
        let (acks, stream) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Ok(Some(envelope)) = inbound.message().await {
                // One answer per message: the bare request/response pattern.
                let ack = LinkAck {
                    accepted: vec![envelope.seq],
                    ..LinkAck::default()
                };
                if acks.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// The echo agent: answers "ping" with "pong" to the sender; takes any
/// other envelope and does nothing with it.
struct Echo;

impl Actor for Echo {
    type Msg = Envelope;
    type State = Arc<Router>;
    type Arguments = Arc<Router>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Envelope>,
        router: Arc<Router>,
    ) -> Result<Arc<Router>, ActorProcessingErr> {
        Ok(router)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Envelope>,
        envelope: Envelope,
        router: &mut Arc<Router>,
    ) -> Result<(), ActorProcessingErr> {
        if envelope.kind == "ping" {
            let pong = Envelope {
                from: ECHO_AGENT.into(),
                to: envelope.from,
                kind: "pong".into(),
                payload: envelope.payload,
                ..Envelope::default()
            };
            let router = router.clone();
            tokio::spawn(async move { router.send(pong).await });
        }
        Ok(())
    }
}

struct ActorMailbox(ActorRef<Envelope>);

impl LocalMailbox for ActorMailbox {
    fn deliver(&self, envelope: Envelope) -> Result<(), DeliverError> {
        let to = AgentId::new(envelope.to.clone());
        self.0.cast(envelope).map_err(|_| DeliverError::Stopped(to))
    }
}

fn peer_main(client_endpoint: String) {
    runtime().block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let raw_addr = listener.local_addr().expect("addr");
        tokio::spawn(
            Server::builder()
                .add_service(AgentMailboxServer::new(RawMailbox))
                .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
        );
        let (_view, membership) = watch::channel(view(CLIENT_AGENT, &client_endpoint));
        let router = Router::new(membership, MailboxConfig::default());
        let (echo, _) = Actor::spawn(None, Echo, router.clone())
            .await
            .expect("echo actor");
        router.add_local(AgentId::new(ECHO_AGENT), Arc::new(ActorMailbox(echo)));
        let node_addr = serve_mailbox(router).await;
        println!("ready {raw_addr} {node_addr}");
        // Serve until the bench closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
    });
}

// -------------------------------------------------------------- bench side

/// The bench's own agent: forwards the pongs that reach it.
struct Inbox(mpsc::UnboundedSender<()>);

impl LocalMailbox for Inbox {
    fn deliver(&self, _envelope: Envelope) -> Result<(), DeliverError> {
        let _ = self.0.send(());
        Ok(())
    }
}

struct Peer {
    child: Child,
    raw: SocketAddr,
    node: SocketAddr,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_peer(client_endpoint: &str) -> Peer {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(PEER_ENV, client_endpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the peer process");
    let stdout = child.stdout.take().expect("peer stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("peer ready line");
    let addrs: Vec<SocketAddr> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let [raw, node] = addrs[..] else {
        panic!("bad ready line from the peer: {line:?}");
    };
    Peer { child, raw, node }
}

fn benches(criterion: &mut Criterion) {
    let rt = runtime();
    let (pongs_tx, pongs) = mpsc::unbounded_channel();
    let pongs = Arc::new(tokio::sync::Mutex::new(pongs));
    let (router, peer, raw, _view) = rt.block_on(async {
        // This process is a node too: the echo's pongs come back to it.
        let (view_tx, membership) = watch::channel(Arc::new(Membership::default()));
        let router = Router::new(membership, MailboxConfig::default());
        router.add_local(AgentId::new(CLIENT_AGENT), Arc::new(Inbox(pongs_tx)));
        let own_addr = serve_mailbox(router.clone()).await;
        let peer = start_peer(&own_addr.to_string());
        view_tx.send_replace(view(ECHO_AGENT, &peer.node.to_string()));
        let channel = Endpoint::from_shared(format!("http://{}", peer.raw))
            .expect("uri")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect to the raw peer");
        let raw: AgentMailboxClient<Channel> = AgentMailboxClient::new(channel);
        (router, peer, raw, view_tx)
    });

    let mut rtt = criterion.benchmark_group("mailbox_rtt");
    rtt.bench_function("raw_unary", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            async move {
                raw.deliver(envelope("ping")).await.expect("raw deliver");
            }
        })
    });
    rtt.bench_function("agentmesh", |b| {
        b.to_async(&rt).iter(|| {
            let router = router.clone();
            let pongs = pongs.clone();
            async move {
                router.send(envelope("ping")).await.expect("send ping");
                pongs.lock().await.recv().await.expect("pong");
            }
        })
    });
    rtt.finish();

    let mut throughput = criterion.benchmark_group("mailbox_throughput");
    throughput.throughput(Throughput::Elements(BATCH));
    throughput.sample_size(20);
    throughput.measurement_time(Duration::from_secs(8));
    throughput.bench_function("raw_stream", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            async move {
                let (tx, rx) = mpsc::channel(1024);
                let sender = tokio::spawn(async move {
                    for seq in 0..BATCH {
                        let mut e = envelope("count");
                        e.seq = seq;
                        if tx.send(e).await.is_err() {
                            break;
                        }
                    }
                });
                let mut acks = raw
                    .link(ReceiverStream::new(rx))
                    .await
                    .expect("raw link")
                    .into_inner();
                for _ in 0..BATCH {
                    acks.message().await.expect("ack").expect("ack");
                }
                sender.await.expect("sender");
            }
        })
    });
    throughput.bench_function("agentmesh", |b| {
        b.to_async(&rt).iter(|| {
            let router = router.clone();
            async move {
                let mut in_flight = FuturesUnordered::new();
                for _ in 0..BATCH {
                    if in_flight.len() >= WINDOW {
                        in_flight.next().await;
                    }
                    let router = router.clone();
                    in_flight.push(async move {
                        router.send(envelope("count")).await.expect("send");
                    });
                }
                while in_flight.next().await.is_some() {}
            }
        })
    });
    throughput.finish();
    drop(peer);
}
