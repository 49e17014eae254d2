//! Bounded mailboxes: how an envelope becomes an actor's message.
//!
//! ractor's mailboxes are unbounded, so the bound is kept at the door: a
//! [`Backlog`] counts the envelopes an actor has been handed and not yet
//! handled, and past its limit senders get `RESOURCE_EXHAUSTED` and retry
//! later or elsewhere instead of growing the queue. [`BoundedMailbox`]
//! is the one adapter every agent uses: it checks the kind, lets the
//! agent's [`Inbox`] decode the payload, counts it in and casts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentmesh_core::AgentId;
use agentmesh_proto::v1::Envelope;
use prometheus_client::metrics::gauge::Gauge;
use ractor::ActorRef;

use super::DeliverError;
use super::envelope::{Kind, unknown_kind};
use crate::telemetry::{self, TraceParent};

/// An agent hosted in this process: decodes an envelope into the actor's
/// own message and enqueues it.
pub trait LocalMailbox: Send + Sync + 'static {
    fn deliver(&self, envelope: Envelope) -> Result<(), DeliverError>;
}

/// Counts the envelopes an actor has been handed and not yet handled.
///
/// The count is mirrored into a gauge (the agent's
/// `agentmesh_mailbox_backlog` series): the bound is checked on the
/// backlog's own counter, since two actors may share one series.
#[derive(Debug)]
pub struct Backlog {
    queued: AtomicUsize,
    limit: usize,
    depth: Gauge,
}

impl Backlog {
    /// A backlog whose depth is published nowhere.
    pub fn new(limit: usize) -> Arc<Self> {
        Self::observed(limit, Gauge::default())
    }

    /// A backlog whose depth is mirrored into `depth`.
    pub fn observed(limit: usize, depth: Gauge) -> Arc<Self> {
        Arc::new(Self {
            queued: AtomicUsize::new(0),
            limit: limit.max(1),
            depth,
        })
    }

    /// Counts one envelope in, or refuses it.
    pub fn enter(&self, agent: &str) -> Result<(), DeliverError> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(DeliverError::Busy {
                agent: AgentId::new(agent),
                limit: self.limit,
            });
        }
        self.depth.inc();
        Ok(())
    }

    /// The actor took one counted envelope off its queue (or it never got
    /// there).
    pub fn leave(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.depth.dec();
    }
}

/// What an agent makes of the envelopes it accepts.
pub trait Inbox: Send + Sync + 'static {
    type Message: ractor::Message;

    /// The kinds this agent accepts; any other is refused, naming these.
    fn accepts(&self) -> &'static [Kind];

    /// Decodes an envelope of an accepted kind into the actor's message,
    /// or handles it without the actor (hands it to another mailbox, drops
    /// it on purpose).
    fn decode(
        &self,
        kind: Kind,
        envelope: Envelope,
    ) -> Result<Inbound<Self::Message>, DeliverError>;
}

/// What [`Inbox::decode`] made of an envelope.
#[derive(Debug)]
pub enum Inbound<M> {
    /// Cast this into the actor, counted in its backlog; the actor calls
    /// [`Backlog::leave`] when it takes it off its queue.
    Message(M),
    /// Nothing for the actor.
    Handled,
}

/// An agent's entry in its node's router: kind check, decoding, backlog
/// bound and cast, the same for every agent.
pub struct BoundedMailbox<I: Inbox> {
    id: AgentId,
    inbox: I,
    actor: ActorRef<I::Message>,
    backlog: Arc<Backlog>,
}

impl<I: Inbox> BoundedMailbox<I> {
    pub fn new(id: AgentId, inbox: I, actor: ActorRef<I::Message>, backlog: Arc<Backlog>) -> Self {
        Self {
            id,
            inbox,
            actor,
            backlog,
        }
    }
}

impl<I: Inbox> LocalMailbox for BoundedMailbox<I> {
    fn deliver(&self, mut envelope: Envelope) -> Result<(), DeliverError> {
        let accepts = self.inbox.accepts();
        let Some(kind) = Kind::parse(&envelope.kind).filter(|kind| accepts.contains(kind)) else {
            return Err(unknown_kind(&envelope, accepts));
        };
        // The delivery continues the sender's trace, and what the agent
        // does with the message continues the delivery.
        let span = crate::span!(
            "mailbox.deliver",
            otel.name = kind.deliver_span(),
            agent.id = %self.id,
            envelope.from = %envelope.from,
        );
        // The parent is set before the span is entered: entering starts it.
        TraceParent::from_map(&envelope.trace_context).adopt(&span);
        let _entered = span.enter();
        if !span.is_none() {
            envelope.trace_context.clear();
            telemetry::inject_current_map(&mut envelope.trace_context);
        }
        let Inbound::Message(message) = self.inbox.decode(kind, envelope)? else {
            return Ok(());
        };
        self.backlog.enter(self.id.as_str())?;
        self.actor.cast(message).map_err(|_| {
            self.backlog.leave();
            DeliverError::Stopped(self.id.clone())
        })
    }
}
