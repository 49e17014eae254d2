//! The `AgentMailbox` gRPC service of a node: envelopes from other nodes
//! (one `Link` stream per node, or a unary `Deliver`) are handed to the
//! router's local path.
//!
//! With mutual TLS, a mailbox takes envelopes only from connections that
//! presented a node certificate of the cluster (`UNAUTHENTICATED`
//! otherwise), and only envelopes whose `from` that certificate names
//! (`PERMISSION_DENIED`). Plaintext mailboxes (`--insecure`, `agentmesh
//! local`) check nothing here.
//!
//! Every envelope refused because of its sender, here or by the agent it
//! was for ([`DeliverError::refusal`]), passes through [`refused`]: one
//! WARN naming the claimed and the authenticated identity, and one count
//! in `agentmesh_envelopes_refused_total`. A link stream refused for want
//! of a certificate is counted in `agentmesh_links_refused_total`.

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
use crate::metrics::{self, RefusalReason};

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
    fn sender<T>(&self, request: &Request<T>) -> Result<Sender, Unauthenticated> {
        if matches!(self.router.config().security, Security::Plaintext) {
            return Ok(Sender::Anyone);
        }
        request
            .extensions()
            .get::<ConnInfo>()
            .and_then(ConnInfo::peer)
            .map(|peer| Sender::Node(peer.clone()))
            .ok_or(Unauthenticated)
    }
}

/// A connection without a node certificate of the cluster.
struct Unauthenticated;

impl From<Unauthenticated> for Status {
    fn from(_: Unauthenticated) -> Self {
        Status::unauthenticated(
            "the mailbox takes envelopes only from nodes with a certificate of this cluster's CA",
        )
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
        Err(DeliverError::ForgedSender {
            claimed,
            authenticated: identity.to_string(),
        })
    }
}

impl std::fmt::Display for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sender::Anyone => f.write_str("nobody (plaintext mailbox)"),
            Sender::Node(identity) => identity.fmt(f),
        }
    }
}

/// What a refusal's WARN says of an envelope, taken before the envelope
/// is handed on.
struct Claim {
    kind: &'static str,
    from: String,
    to: String,
}

impl Claim {
    fn of(envelope: &Envelope) -> Self {
        Self {
            kind: metrics::kind_label(&envelope.kind),
            from: bounded(&envelope.from).to_owned(),
            to: bounded(&envelope.to).to_owned(),
        }
    }
}

/// Longest part of a peer's string a WARN repeats: ids are short, and a
/// hostile peer must not turn each refusal into megabytes of log.
const MAX_LOGGED_BYTES: usize = 128;

fn bounded(text: &str) -> &str {
    if text.len() <= MAX_LOGGED_BYTES {
        return text;
    }
    let mut end = MAX_LOGGED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Counts and logs `error` if it refuses the envelope because of its
/// sender; other errors (a full mailbox, an unknown agent) are the
/// sender's to handle and are not counted here.
fn refused(sender: &Sender, claim: &Claim, error: &DeliverError) {
    let Some(reason) = error.refusal() else {
        return;
    };
    metrics::refused_envelope(claim.kind, reason);
    let error = error.to_string();
    warn!(
        claimed = ?claim.from,
        authenticated = %sender,
        kind = claim.kind,
        to = ?claim.to,
        %reason,
        error = bounded(&error),
        "refused an envelope"
    );
}

/// Counts and logs an envelope (or a link, without one) refused for want
/// of a certificate.
fn refused_unauthenticated(envelope: Option<&Envelope>) {
    match envelope {
        Some(envelope) => {
            let claim = Claim::of(envelope);
            metrics::refused_envelope(claim.kind, RefusalReason::Unauthenticated);
            warn!(
                claimed = ?claim.from,
                authenticated = "nobody (no certificate of the cluster)",
                kind = claim.kind,
                to = ?claim.to,
                reason = %RefusalReason::Unauthenticated,
                "refused an envelope"
            );
        }
        None => {
            metrics::refused_link(RefusalReason::Unauthenticated);
            warn!(
                authenticated = "nobody (no certificate of the cluster)",
                reason = %RefusalReason::Unauthenticated,
                "refused a link stream"
            );
        }
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
        let sender = self.sender(&request).inspect_err(|_| {
            refused_unauthenticated(Some(request.get_ref()));
        })?;
        let envelope = request.into_inner();
        let claim = Claim::of(&envelope);
        sender
            .check(&envelope)
            .and_then(|()| self.router.deliver_local(envelope))
            .inspect_err(|error| refused(&sender, &claim, error))?;
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
        let sender = self
            .sender(&request)
            .inspect_err(|_| refused_unauthenticated(None))?;
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
    let claim = Claim::of(&envelope);
    match sender
        .check(&envelope)
        .and_then(|()| router.deliver_local(envelope))
    {
        Ok(()) => ack.accepted.push(seq),
        Err(error) => {
            refused(sender, &claim, &error);
            let status = Status::from(error);
            ack.refused.push(LinkRefusal {
                seq,
                code: status.code() as i32,
                message: status.message().to_owned(),
            });
        }
    }
}
