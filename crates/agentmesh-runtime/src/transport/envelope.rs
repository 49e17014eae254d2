//! Envelopes: the one message format between agents, and their kinds.
//!
//! Every message between agents is an `Envelope { id, from, to, kind,
//! trace_context, deadline_unix_ms, payload, seq }`; `kind` says which
//! protobuf message the payload holds. On the wire the kind is a string
//! (stable, readable in grpcurl); in the code it is a [`Kind`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use agentmesh_core::AgentId;
use agentmesh_proto::v1::Envelope;

use super::{DeliverError, Router};
use crate::telemetry;

/// The kinds of envelope agents exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Coordinator (or proposing peer, tactical level) → runner: run one attempt.
    SubtaskAssign,
    /// Runner → whoever assigned the attempt: its outcome.
    SubtaskResult,
    /// Assigner → runner: stop an attempt.
    SubtaskCancel,
    /// New peer → every peer.
    PeerJoin,
    /// Proposing peer → peers offering the capability.
    CollabProposal,
    /// Invited peer → proposer only (sealed).
    CollabBid,
    /// Between hierarchy levels: directives, reports, lateral notes.
    Hierarchy,
    /// Leader coordinator → an agent with a matching event handler.
    EventDeliver,
    /// That agent → the leader coordinator: the handler's outcome.
    EventAck,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::SubtaskAssign,
        Kind::SubtaskResult,
        Kind::SubtaskCancel,
        Kind::PeerJoin,
        Kind::CollabProposal,
        Kind::CollabBid,
        Kind::Hierarchy,
        Kind::EventDeliver,
        Kind::EventAck,
    ];

    /// The kind's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SubtaskAssign => "subtask.assign",
            Kind::SubtaskResult => "subtask.result",
            Kind::SubtaskCancel => "subtask.cancel",
            Kind::PeerJoin => "peer.join",
            Kind::CollabProposal => "collab.proposal",
            Kind::CollabBid => "collab.bid",
            Kind::Hierarchy => "hierarchy.message",
            Kind::EventDeliver => "event.deliver",
            Kind::EventAck => "event.ack",
        }
    }

    /// The name of the span that delivers an envelope of this kind into
    /// its agent's mailbox.
    pub fn deliver_span(self) -> &'static str {
        match self {
            Kind::SubtaskAssign => "deliver subtask.assign",
            Kind::SubtaskResult => "deliver subtask.result",
            Kind::SubtaskCancel => "deliver subtask.cancel",
            Kind::PeerJoin => "deliver peer.join",
            Kind::CollabProposal => "deliver collab.proposal",
            Kind::CollabBid => "deliver collab.bid",
            Kind::Hierarchy => "deliver hierarchy.message",
            Kind::EventDeliver => "deliver event.deliver",
            Kind::EventAck => "deliver event.ack",
        }
    }

    /// The kind named `name` on the wire, if there is one.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Envelope ids: a random prefix per process and a counter, unique without
/// asking the operating system for randomness on every message.
static ENVELOPE_PREFIX: LazyLock<String> =
    LazyLock::new(|| format!("{:012x}", rand::random::<u64>() >> 16));
static ENVELOPE_COUNTER: AtomicU64 = AtomicU64::new(1);

/// Builds an envelope with a fresh id.
pub fn envelope(
    from: &AgentId,
    to: &AgentId,
    kind: Kind,
    payload: impl prost::Message,
) -> Envelope {
    let n = ENVELOPE_COUNTER.fetch_add(1, Ordering::Relaxed);
    // The sender's span, so the receiver's spans join its trace; an empty
    // map (no allocation) while tracing is off.
    let mut trace_context = std::collections::HashMap::new();
    telemetry::inject_current_map(&mut trace_context);
    Envelope {
        id: format!("{}-{n}", *ENVELOPE_PREFIX),
        from: from.to_string(),
        to: to.to_string(),
        kind: kind.as_str().to_owned(),
        trace_context,
        deadline_unix_ms: 0,
        payload: payload.encode_to_vec(),
        seq: 0,
    }
}

/// Sends an envelope without waiting for it (tell): a failed delivery is
/// logged and otherwise left to the protocol's own deadlines.
pub fn tell(router: &Arc<Router>, envelope: Envelope) {
    let sender = router.clone();
    router.background().spawn(
        "tell",
        telemetry::in_current_span(async move {
            if let Err(error) = sender.send(envelope).await {
                tracing::debug!(%error, "message not delivered");
            }
        }),
    );
}

/// Decodes an envelope's payload as `M`.
pub fn decode<M: prost::Message + Default>(envelope: &Envelope) -> Result<M, DeliverError> {
    M::decode(envelope.payload.as_slice()).map_err(|e| DeliverError::BadPayload {
        kind: envelope.kind.clone(),
        message: e.to_string(),
    })
}

/// The error for a kind an agent does not handle.
pub fn unknown_kind(envelope: &Envelope, accepts: &[Kind]) -> DeliverError {
    DeliverError::UnknownKind {
        agent: AgentId::new(envelope.to.clone()),
        kind: envelope.kind.clone(),
        accepts: accepts
            .iter()
            .map(|kind| kind.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn every_kind_parses_back_from_its_wire_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("subtask.assign2"), None);
    }
}
