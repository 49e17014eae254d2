//! The `AgentMailbox` gRPC service of a node: envelopes from other nodes
//! (one `Link` stream per node, or a unary `Deliver`) are handed to the
//! router's local path.
//!
//! With mutual TLS, a mailbox takes envelopes only from connections that
//! presented a node certificate of the cluster (`UNAUTHENTICATED`
//! otherwise), and only envelopes whose `from` that certificate names
//! (`PERMISSION_DENIED`, a WARN with the claimed and the authenticated
//! identity). Plaintext
//! mailboxes (`--insecure`, `agentmesh local`) check nothing.

use std::sync::Arc;

use agentmesh_proto::v1::agent_mailbox_server::{AgentMailbox, AgentMailboxServer};
use agentmesh_proto::v1::{DeliverAck, Envelope, LinkAck, LinkRefusal};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use tracing::warn;

use super::accept::ConnInfo;
use super::channel::Security;
use super::tls::PeerIdentity;
use super::{DeliverError, ENVELOPE_OVERHEAD, Router};

/// The `AgentMailbox` gRPC service of a node.
#[derive(Debug, Clone)]
pub struct MailboxService {
    router: Arc<Router>,
}

impl MailboxService {
    pub fn server(router: Arc<Router>) -> AgentMailboxServer<Self> {
        let limit = router.config().max_envelope_bytes + ENVELOPE_OVERHEAD;
        AgentMailboxServer::new(Self { router })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    /// Who may send on the connection of `request`: anyone on a plaintext
    /// mailbox; on a TLS one, the agents its certificate names, and no
    /// connection without one.
    fn sender<T>(&self, request: &Request<T>) -> Result<Sender, Status> {
        if matches!(self.router.config().security, Security::Plaintext) {
            return Ok(Sender::Anyone);
        }
        request
            .extensions()
            .get::<ConnInfo>()
            .and_then(ConnInfo::peer)
            .map(|peer| Sender::Node(peer.clone()))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "the mailbox takes envelopes only from nodes with a certificate of this \
                     cluster's CA",
                )
            })
    }
}

/// Who may send envelopes on one connection.
#[derive(Clone)]
enum Sender {
    Anyone,
    Node(Arc<PeerIdentity>),
}

impl Sender {
    /// Refuses `envelope` unless its `from` is one this sender speaks for.
    fn check(&self, envelope: &Envelope) -> Result<(), DeliverError> {
        let Sender::Node(identity) = self else {
            return Ok(());
        };
        let claimed = agentmesh_core::AgentId::new(envelope.from.as_str());
        if identity.speaks_for(&claimed) {
            return Ok(());
        }
        warn!(
            claimed = %claimed,
            authenticated = %identity,
            kind = %envelope.kind,
            to = %envelope.to,
            "refused an envelope whose sender the connection's certificate does not name"
        );
        Err(DeliverError::ForgedSender {
            claimed,
            authenticated: identity.to_string(),
        })
    }
}

/// Ack messages a node may owe a peer that does not read them before it
/// stops reading that peer's envelopes.
const ACK_BUFFER: usize = 256;
/// Envelopes answered by one ack message at most.
const ACK_BATCH: usize = 1024;

#[tonic::async_trait]
impl AgentMailbox for MailboxService {
    async fn deliver(&self, request: Request<Envelope>) -> Result<Response<DeliverAck>, Status> {
        let sender = self.sender(&request)?;
        let envelope = request.into_inner();
        sender.check(&envelope)?;
        self.router.deliver_local(envelope)?;
        Ok(Response::new(DeliverAck {}))
    }

    type LinkStream = ReceiverStream<Result<LinkAck, Status>>;

    /// Hands each envelope to its agent as it arrives and answers everything
    /// read so far in one ack: under load one ack covers many envelopes,
    /// when idle each envelope is answered at once.
    async fn link(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let sender = self.sender(&request)?;
        let mut inbound = request.into_inner();
        let (acks, stream) = mpsc::channel(ACK_BUFFER);
        let router = self.router.clone();
        let mut closing = self.router.closing();
        self.router.background().spawn("inbound link", async move {
            loop {
                let first = tokio::select! {
                    next = inbound.next() => match next {
                        Some(Ok(first)) => first,
                        _ => break,
                    },
                    _ = closing.wait_for(|closing| *closing) => break,
                };
                let mut ack = LinkAck::default();
                answer(&router, &sender, first, &mut ack);
                // Whatever else has already arrived shares this ack.
                while ack.accepted.len() + ack.refused.len() < ACK_BATCH
                    && let Some(Some(Ok(envelope))) = inbound.next().now_or_never()
                {
                    answer(&router, &sender, envelope, &mut ack);
                }
                if acks.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

fn answer(router: &Router, sender: &Sender, envelope: Envelope, ack: &mut LinkAck) {
    let seq = envelope.seq;
    match sender
        .check(&envelope)
        .and_then(|()| router.deliver_local(envelope))
    {
        Ok(()) => ack.accepted.push(seq),
        Err(error) => {
            let status = Status::from(error);
            ack.refused.push(LinkRefusal {
                seq,
                code: status.code() as i32,
                message: status.message().to_owned(),
            });
        }
    }
}
