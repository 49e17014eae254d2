//! Location-transparent delivery of envelopes between agents.
//!
//! Every node serves one `AgentMailbox` endpoint for all its agents. The
//! [`Router`] delivers an envelope straight into the target actor when the
//! agent lives in this process, and over gRPC to the target's node
//! otherwise, looking the endpoint up in the live membership view. Senders
//! never know which of the two happened. Between nodes, envelopes travel on
//! one long-lived stream per pair of nodes (see [`link`]).
//!
//! ```text
//! envelope   Kind, building, decoding, fire-and-forget sends
//! bounded    LocalMailbox, Backlog, the BoundedMailbox adapter every agent uses
//! router     (this module) local mailboxes, links by endpoint, size checks
//! link       one Link stream per remote node, acks by seq
//! service    the AgentMailbox gRPC service
//! channel    the one place that builds gRPC channels and servers
//! accept     the server's connections: limit, idle timeout, accept backoff
//! tls        mTLS between nodes, TLS for clients, certificate reloading
//! ```

pub mod accept;
pub mod bounded;
pub mod channel;
pub mod envelope;
mod link;
pub mod service;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use agentmesh_core::{AgentId, Membership};
use agentmesh_proto::v1::Envelope;
use thiserror::Error;
use tokio::sync::{broadcast, watch};

pub use self::bounded::{Backlog, BoundedMailbox, Inbound, Inbox, LocalMailbox};
pub use self::envelope::{Kind, decode, envelope, tell};
use self::link::{Link, LinkError};
pub use self::service::MailboxService;
use crate::node::config::MailboxConfig;
use crate::support::background::Background;

/// Why an envelope could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeliverError {
    #[error("no agent '{0}' in the cluster")]
    UnknownAgent(AgentId),
    #[error("unknown message kind '{kind}' for agent '{agent}' (accepts: {accepts})")]
    UnknownKind {
        agent: AgentId,
        kind: String,
        accepts: String,
    },
    #[error("undecodable '{kind}' payload: {message}")]
    BadPayload { kind: String, message: String },
    #[error("envelope payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("agent '{0}' has stopped")]
    Stopped(AgentId),
    #[error("agent '{agent}' has {limit} messages waiting; retry later")]
    Busy { agent: AgentId, limit: usize },
    #[error("agent '{agent}' at {endpoint} is unreachable: {message}")]
    Unreachable {
        agent: AgentId,
        endpoint: String,
        message: String,
    },
    /// A message of a kind its sender's role may not send (a worker sending
    /// assignments, say).
    #[error("agent '{sender}' may not send '{kind}': {why}")]
    NotAllowed {
        sender: AgentId,
        kind: String,
        why: String,
    },
    /// An assignment or cancellation from a coordinator that is not the
    /// leader this node sees: a deposed leader, or a new one this node
    /// has not heard of yet (its sender tries again shortly).
    #[error(
        "agent '{sender}' may not send '{kind}': it is not the leader coordinator (this node \
         sees {})",
        leader.as_ref().map_or_else(|| "no leader".to_owned(), |l| format!("'{l}' leading"))
    )]
    NotLeader {
        sender: AgentId,
        kind: String,
        leader: Option<AgentId>,
    },
    /// A message about work that belongs to another agent: a directive for
    /// a task another strategic level directs here.
    #[error("agent '{sender}' may not send '{kind}' for task '{task}': it belongs to '{owner}'")]
    NotOwner {
        sender: AgentId,
        kind: String,
        task: String,
        owner: AgentId,
    },
    /// The receiving node read the envelope and refused it with `code`.
    #[error("agent '{agent}' refused the message: {code:?}: {message}")]
    Refused {
        agent: AgentId,
        code: tonic::Code,
        message: String,
    },
    /// An envelope whose `from` the sending connection may not speak for.
    #[error(
        "envelope from '{claimed}' refused: the sending node's certificate speaks for \
         {authenticated}"
    )]
    ForgedSender {
        claimed: AgentId,
        authenticated: String,
    },
}

impl DeliverError {
    /// Whether the receiver refused the envelope because its sender is not
    /// the leader coordinator it sees: here, or on the receiving node.
    pub fn sender_not_leader(&self) -> bool {
        match self {
            Self::NotLeader { .. } => true,
            Self::Refused { code, .. } => *code == tonic::Code::FailedPrecondition,
            _ => false,
        }
    }

    /// The refusal of a sender this error is, counted by the mailbox as
    /// `agentmesh_envelopes_refused_total{reason}`; `None` for errors that
    /// say nothing of who sent the envelope (a full mailbox, an unknown
    /// agent, a bad payload), and for [`Self::Refused`], which the sender
    /// sees and the receiving node has counted. No wildcard: a new variant
    /// must say which it is.
    pub fn refusal(&self) -> Option<crate::metrics::RefusalReason> {
        use crate::metrics::RefusalReason;
        match self {
            DeliverError::ForgedSender { .. } => Some(RefusalReason::ForgedSender),
            DeliverError::NotAllowed { .. } => Some(RefusalReason::NotAllowed),
            DeliverError::NotLeader { .. } => Some(RefusalReason::NotLeader),
            DeliverError::NotOwner { .. } => Some(RefusalReason::NotOwner),
            DeliverError::UnknownAgent(_)
            | DeliverError::UnknownKind { .. }
            | DeliverError::BadPayload { .. }
            | DeliverError::TooLarge { .. }
            | DeliverError::Stopped(_)
            | DeliverError::Busy { .. }
            | DeliverError::Unreachable { .. }
            | DeliverError::Refused { .. } => None,
        }
    }
}

/// Resolves agent ids to local mailboxes or remote endpoints.
pub struct Router {
    local: RwLock<HashMap<AgentId, Arc<dyn LocalMailbox>>>,
    membership: watch::Receiver<Arc<Membership>>,
    /// Streams to other nodes, by endpoint.
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// Turns true when the node stops serving: inbound links end, so the
    /// server's graceful shutdown is not held up by streams that never end.
    closing: watch::Sender<bool>,
    /// Endpoints whose link broke with an error, for whoever tracks work
    /// sent there (see [`Router::broken_links`]).
    broken: broadcast::Sender<BrokenLink>,
    config: MailboxConfig,
    background: Background,
}

/// A link to another node that failed (reset, refused, timed out) rather
/// than being closed by its peer.
#[derive(Debug, Clone)]
pub struct BrokenLink {
    pub endpoint: String,
    pub reason: String,
}

/// Broken-link notices a slow subscriber may fall behind by.
const BROKEN_LINK_BACKLOG: usize = 256;

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    pub fn new(membership: watch::Receiver<Arc<Membership>>, config: MailboxConfig) -> Arc<Self> {
        Arc::new(Self {
            local: RwLock::new(HashMap::new()),
            membership,
            links: Mutex::new(HashMap::new()),
            broken: broadcast::channel(BROKEN_LINK_BACKLOG).0,
            closing: watch::Sender::new(false),
            config,
            background: Background::new(),
        })
    }

    /// Owns the router's tasks: link streams and their sweepers, inbound
    /// links, fire-and-forget sends. [`Router::shutdown`] stops them.
    pub fn background(&self) -> &Background {
        &self.background
    }

    /// Ends inbound links, then stops every task of the router (outbound
    /// links, pending fire-and-forget sends) and waits up to `timeout`.
    pub async fn shutdown(&self, timeout: std::time::Duration) {
        self.stop_serving();
        self.background.stop(timeout).await;
    }

    /// A backlog bound for a new agent of this node, sized by the config.
    /// Announces every link to another node that breaks: the connection
    /// to that node failed, so what was delivered there may be lost. A
    /// coordinator starts such attempts elsewhere without waiting for the
    /// node's lease to run out.
    pub fn broken_links(&self) -> broadcast::Receiver<BrokenLink> {
        self.broken.subscribe()
    }

    /// Its depth is published as `agentmesh_mailbox_backlog{agent}` (one
    /// series per agent id: a peer's two actors share theirs).
    pub fn new_backlog(&self, agent: &AgentId) -> Arc<Backlog> {
        Backlog::observed(
            self.config.max_backlog_per_agent,
            crate::metrics::mailbox_backlog(agent.as_str()),
        )
    }

    pub fn add_local(&self, id: AgentId, mailbox: Arc<dyn LocalMailbox>) {
        self.local
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, mailbox);
    }

    pub fn remove_local(&self, id: &AgentId) {
        self.local
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        crate::metrics::mailbox_gone(id.as_str());
    }

    fn local(&self, id: &str) -> Option<Arc<dyn LocalMailbox>> {
        self.local
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn check_size(&self, envelope: &Envelope) -> Result<(), DeliverError> {
        let limit = self.config.max_envelope_bytes;
        if envelope.payload.len() > limit {
            return Err(DeliverError::TooLarge {
                size: envelope.payload.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Delivers to an agent of this process only; used by the gRPC service.
    pub fn deliver_local(&self, envelope: Envelope) -> Result<(), DeliverError> {
        self.check_size(&envelope)?;
        match self.local(&envelope.to) {
            Some(mailbox) => mailbox.deliver(envelope),
            None => Err(DeliverError::UnknownAgent(AgentId::new(envelope.to))),
        }
    }

    /// Delivers to any agent of the cluster.
    pub async fn send(&self, envelope: Envelope) -> Result<(), DeliverError> {
        self.check_size(&envelope)?;
        if let Some(mailbox) = self.local(&envelope.to) {
            return mailbox.deliver(envelope);
        }
        let link = {
            let view = self.membership.borrow();
            let Some(agent) = view.agents.get(envelope.to.as_str()) else {
                return Err(DeliverError::UnknownAgent(AgentId::new(envelope.to)));
            };
            self.link(&agent.endpoint)
                .map_err(|message| DeliverError::Unreachable {
                    agent: AgentId::new(envelope.to.clone()),
                    endpoint: agent.endpoint.clone(),
                    message,
                })?
        };
        let to = envelope.to.clone();
        link.deliver(envelope).await.map_err(|error| match error {
            LinkError::Refused { code, message } => DeliverError::Refused {
                agent: AgentId::new(to),
                code,
                message,
            },
            LinkError::Failed(message) => DeliverError::Unreachable {
                agent: AgentId::new(to),
                endpoint: link.endpoint().to_owned(),
                message,
            },
        })
    }

    pub fn config(&self) -> &MailboxConfig {
        &self.config
    }

    /// Turns true when the node stops serving.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every inbound link stream; peers reconnect elsewhere or learn
    /// this node is gone.
    pub fn stop_serving(&self) {
        self.closing.send_replace(true);
    }

    /// The open stream to `endpoint`, or a new one when there is none or
    /// the last one closed.
    fn link(&self, endpoint: &str) -> Result<Arc<Link>, String> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = links.get(endpoint)
            && !link.is_closed()
        {
            return Ok(link.clone());
        }
        let link = Link::open(
            endpoint,
            &self.config,
            self.broken.clone(),
            &self.background,
        )?;
        links.insert(endpoint.to_owned(), link.clone());
        Ok(link)
    }
}

/// Room for an envelope's header fields above its payload limit, so the
/// router's precise size check runs before tonic's generic one.
pub(crate) const ENVELOPE_OVERHEAD: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use agentmesh_proto::v1::agent_mailbox_server::{AgentMailbox, AgentMailboxServer};
    use agentmesh_proto::v1::{DeliverAck, LinkAck};
    use futures::StreamExt;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    struct Recorder(Mutex<Vec<String>>);

    impl LocalMailbox for Recorder {
        fn deliver(&self, envelope: Envelope) -> Result<(), DeliverError> {
            if envelope.kind != "ping" {
                return Err(DeliverError::UnknownKind {
                    agent: AgentId::new(envelope.to),
                    kind: envelope.kind,
                    accepts: "ping".into(),
                });
            }
            self.0.lock().unwrap().push(envelope.id);
            Ok(())
        }
    }

    fn router() -> (Arc<Router>, Arc<Recorder>) {
        let (_tx, membership) = watch::channel(Arc::new(Membership::default()));
        let router = Router::new(
            membership,
            MailboxConfig {
                max_envelope_bytes: 8,
                ..MailboxConfig::default()
            },
        );
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        router.add_local(AgentId::new("a"), recorder.clone());
        (router, recorder)
    }

    fn env(to: &str, kind: &str, payload: Vec<u8>) -> Envelope {
        Envelope {
            id: "e1".into(),
            to: to.into(),
            kind: kind.into(),
            payload,
            ..Envelope::default()
        }
    }

    /// A node serving `router`'s mailbox on a free loopback port.
    async fn serve(router: Arc<Router>) -> String {
        serve_mailbox(MailboxService::server(router)).await
    }

    /// `mailbox` served on a free loopback port; returns its endpoint.
    async fn serve_mailbox<M: AgentMailbox>(mailbox: AgentMailboxServer<M>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(mailbox)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        addr.to_string()
    }

    fn view(agents: &[(&str, &str)]) -> Arc<Membership> {
        let agents = agents
            .iter()
            .map(|(id, endpoint)| {
                let registration = agentmesh_core::AgentRegistration {
                    id: AgentId::new(*id),
                    role: agentmesh_core::Role::Worker,
                    level: None,
                    capabilities: Vec::new(),
                    endpoint: (*endpoint).to_owned(),
                    load: 0,
                    max_concurrency: 1,
                    version: "test".into(),
                    faults: Vec::new(),
                    insecure: false,
                    event_handlers: Vec::new(),
                };
                (registration.id.clone(), registration)
            })
            .collect();
        Arc::new(Membership { agents })
    }

    #[tokio::test]
    async fn remote_agents_get_every_envelope_over_one_link() {
        let (remote, recorder) = router();
        let endpoint = serve(remote).await;
        let (_view, membership) = watch::channel(view(&[("a", &endpoint)]));
        let sender = Router::new(membership, MailboxConfig::default());
        let numbered = |n: usize| Envelope {
            id: n.to_string(),
            ..env("a", "ping", vec![])
        };
        // One after the other: they arrive in that order.
        for n in 0..50 {
            sender.send(numbered(n)).await.unwrap();
        }
        // All at once: every one arrives, acknowledged.
        let sends = (50..250).map(|n| sender.send(numbered(n)));
        for outcome in futures::future::join_all(sends).await {
            outcome.unwrap();
        }
        let ids = recorder.0.lock().unwrap().clone();
        let expected: Vec<String> = (0..50).map(|n| n.to_string()).collect();
        assert_eq!(ids[..50], expected[..]);
        let mut rest: Vec<usize> = ids[50..].iter().map(|id| id.parse().unwrap()).collect();
        rest.sort_unstable();
        assert_eq!(rest, (50..250).collect::<Vec<_>>());
        assert_eq!(sender.links.lock().unwrap().len(), 1, "one stream per node");
    }

    #[tokio::test]
    async fn a_remote_refusal_names_its_cause_and_a_dead_node_is_unreachable() {
        let (remote, _) = router();
        let endpoint = serve(remote).await;
        let (_view, membership) = watch::channel(view(&[
            ("ghost", &endpoint),
            ("a", &endpoint),
            ("gone", "127.0.0.1:1"),
        ]));
        let sender = Router::new(membership, MailboxConfig::default());
        let error = sender.send(env("ghost", "ping", vec![])).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "agent 'ghost' refused the message: NotFound: no agent 'ghost' in the cluster"
        );
        assert!(
            matches!(&error, DeliverError::Refused { code, .. } if *code == tonic::Code::NotFound),
            "a refusal is not an unreachable node: {error:?}"
        );
        let error = sender.send(env("a", "pong", vec![])).await.unwrap_err();
        assert!(
            error.to_string().contains("unknown message kind 'pong'"),
            "{error}"
        );
        let error = sender.send(env("gone", "ping", vec![])).await.unwrap_err();
        assert!(
            matches!(&error, DeliverError::Unreachable { endpoint, .. } if endpoint == "127.0.0.1:1"),
            "{error}"
        );
        // The link to the live node still works after the refusals.
        sender.send(env("a", "ping", vec![])).await.unwrap();
    }

    /// A node that reads envelopes and never answers them.
    struct Silent;

    #[tonic::async_trait]
    impl AgentMailbox for Silent {
        async fn deliver(&self, _: Request<Envelope>) -> Result<Response<DeliverAck>, Status> {
            std::future::pending().await
        }

        type LinkStream = ReceiverStream<Result<LinkAck, Status>>;

        async fn link(
            &self,
            request: Request<Streaming<Envelope>>,
        ) -> Result<Response<Self::LinkStream>, Status> {
            let (acks, stream) = mpsc::channel(1);
            let mut inbound = request.into_inner();
            tokio::spawn(async move {
                while let Some(Ok(_)) = inbound.next().await {}
                drop(acks);
            });
            Ok(Response::new(ReceiverStream::new(stream)))
        }
    }

    #[tokio::test]
    async fn an_unanswered_envelope_fails_after_the_delivery_timeout() {
        let endpoint = serve_mailbox(AgentMailboxServer::new(Silent)).await;
        let (_view, membership) = watch::channel(view(&[("mute", &endpoint)]));
        let config = MailboxConfig {
            deliver_timeout: std::time::Duration::from_millis(200),
            ..MailboxConfig::default()
        };
        let sender = Router::new(membership, config);
        let error = sender.send(env("mute", "ping", vec![])).await.unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("no acknowledgement within 200ms"),
            "{error}"
        );
    }

    /// A node whose link ends after the first envelope: with an error
    /// (`crash`), or closed in order.
    struct EndsAfterOne {
        crash: bool,
    }

    #[tonic::async_trait]
    impl AgentMailbox for EndsAfterOne {
        async fn deliver(&self, _: Request<Envelope>) -> Result<Response<DeliverAck>, Status> {
            Err(Status::unimplemented("links only"))
        }

        type LinkStream = ReceiverStream<Result<LinkAck, Status>>;

        async fn link(
            &self,
            request: Request<Streaming<Envelope>>,
        ) -> Result<Response<Self::LinkStream>, Status> {
            let (acks, stream) = mpsc::channel(1);
            let mut inbound = request.into_inner();
            let crash = self.crash;
            tokio::spawn(async move {
                let _ = inbound.next().await;
                if crash {
                    let _ = acks.send(Err(Status::unavailable("node crashed"))).await;
                }
            });
            Ok(Response::new(ReceiverStream::new(stream)))
        }
    }

    async fn link_ending(crash: bool) -> (String, broadcast::Receiver<BrokenLink>, Arc<Router>) {
        let endpoint = serve_mailbox(AgentMailboxServer::new(EndsAfterOne { crash })).await;
        let (_view, membership) = watch::channel(view(&[("w", &endpoint)]));
        let sender = Router::new(membership, MailboxConfig::default());
        let broken = sender.broken_links();
        sender.send(env("w", "ping", vec![])).await.unwrap_err();
        (endpoint, broken, sender)
    }

    #[tokio::test]
    async fn a_link_that_fails_is_announced_and_one_closed_in_order_is_not() {
        let (endpoint, mut broken, _router) = link_ending(true).await;
        let notice = broken.try_recv().expect("a notice of the broken link");
        assert_eq!(notice.endpoint, endpoint);
        assert!(notice.reason.contains("node crashed"), "{notice:?}");

        let (_, mut closed, _router) = link_ending(false).await;
        let notice = closed.try_recv();
        assert!(
            matches!(notice, Err(broadcast::error::TryRecvError::Empty)),
            "{notice:?}"
        );
    }

    #[test]
    fn a_backlog_refuses_past_its_limit_and_frees_room_as_messages_are_handled() {
        let backlog = Backlog::new(2);
        backlog.enter("a").unwrap();
        backlog.enter("a").unwrap();
        let status = Status::from(backlog.enter("a").unwrap_err());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "agent 'a' has 2 messages waiting; retry later"
        );
        backlog.leave();
        backlog.enter("a").unwrap();
    }

    #[tokio::test]
    async fn local_agents_get_envelopes_in_process() {
        let (router, recorder) = router();
        router.send(env("a", "ping", vec![])).await.unwrap();
        assert_eq!(*recorder.0.lock().unwrap(), vec!["e1".to_owned()]);
    }

    #[tokio::test]
    async fn bad_envelopes_get_precise_errors() {
        let (router, _) = router();
        let status = Status::from(
            router
                .send(env("nobody", "ping", vec![]))
                .await
                .unwrap_err(),
        );
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "no agent 'nobody' in the cluster");
        let status = Status::from(router.deliver_local(env("a", "pong", vec![])).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "unknown message kind 'pong' for agent 'a' (accepts: ping)"
        );
        let status = Status::from(
            router
                .deliver_local(env("a", "ping", vec![0; 9]))
                .unwrap_err(),
        );
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "envelope payload of 9 bytes exceeds the limit of 8 bytes"
        );
    }
}
