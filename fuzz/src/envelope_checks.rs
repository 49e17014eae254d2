//! The envelope fuzz target: an `Envelope` as the mailbox service decodes
//! it off the wire, then its payload as the receiving agent decodes it for
//! the envelope's kind (`transport::decode`), then the conversions the
//! agent applies to it. Decoding must stay proportional to the bytes
//! received, and a payload that does not decode is refused naming its
//! kind.
//!
//! Shared with `crates/agentmesh-runtime/tests/fuzz_regressions.rs`, which
//! includes this file, so a kept input replays through the same checks.

use agentmesh_proto::v1 as pb;
use agentmesh_runtime::convert;
use agentmesh_runtime::transport::{self, Kind};
use prost::Message;
use serde_json::Value;

/// A first byte below the number of kinds makes the rest of the input the
/// payload of that kind, so the fuzzer reaches every payload type directly;
/// any other input is a whole envelope.
pub fn envelope(data: &[u8]) {
    let envelope = match data.split_first() {
        Some((&first, payload)) if usize::from(first) < Kind::ALL.len() => pb::Envelope {
            kind: Kind::ALL[usize::from(first)].as_str().to_owned(),
            payload: payload.to_vec(),
            ..pb::Envelope::default()
        },
        _ => match pb::Envelope::decode(data) {
            Ok(envelope) => {
                proportional(&envelope, data.len());
                envelope
            }
            Err(_) => return,
        },
    };
    let Some(kind) = Kind::parse(&envelope.kind) else {
        return;
    };
    match kind {
        Kind::SubtaskAssign => payload(&envelope, |a: pb::SubtaskAssignment| {
            let _ = convert::assigned_attempt(&a);
            let _ = serde_json::from_str::<Value>(&a.input_json);
        }),
        Kind::SubtaskResult => payload(&envelope, |r: pb::SubtaskResult| {
            let _ = convert::reported_attempt(&r);
            let _ = convert::outcome(&r, "worker");
            let _ = serde_json::from_str::<Value>(&r.consensus_json);
        }),
        Kind::SubtaskCancel => payload(&envelope, |c: pb::SubtaskCancel| {
            let _ = convert::cancelled_attempt(&c);
        }),
        Kind::PeerJoin => payload(&envelope, |_: pb::PeerJoin| {}),
        Kind::CollabProposal => payload(&envelope, |_: pb::CollaborationProposal| {}),
        Kind::CollabBid => payload(&envelope, |_: pb::CollaborationBid| {}),
        Kind::Hierarchy => payload(&envelope, |m: pb::HierarchyMessage| {
            let _ = serde_json::from_str::<Value>(&m.payload_json);
        }),
        Kind::EventDeliver => payload(&envelope, |d: pb::EventDelivery| {
            let _ = serde_json::from_str::<Value>(&d.payload_json);
            let _ = d
                .subscription
                .parse::<agentmesh_core::events::HandlerSpec>();
        }),
        Kind::EventAck => payload(&envelope, |_: pb::EventAck| {}),
    }
}

/// Decodes the payload as `M` and hands it on, or checks the refusal.
fn payload<M: Message + Default>(envelope: &pb::Envelope, then: impl FnOnce(M)) {
    match transport::decode::<M>(envelope) {
        Ok(message) => {
            proportional(&message, envelope.payload.len());
            then(message);
        }
        Err(error) => {
            let error = error.to_string();
            assert!(
                error.contains(&envelope.kind),
                "refusal does not name the kind: {error}"
            );
        }
    }
}

/// What was decoded from `received` bytes takes no more than twice as many
/// to encode again (a negative enum or `int32` sent in five bytes is
/// written in ten): decoding cannot amplify.
fn proportional(message: &impl Message, received: usize) {
    let len = message.encoded_len();
    assert!(
        len <= 2 * received,
        "{received} bytes decoded to a message of {len}"
    );
}
