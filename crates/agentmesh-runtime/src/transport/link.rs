//! One long-lived `Link` stream from this node to another.
//!
//! A unary call per message costs a whole HTTP/2 exchange (headers, data,
//! trailers) on both sides; a message on an open stream costs one frame.
//! Every envelope is still acknowledged by `seq` (many to one ack message
//! under load), so a sender learns exactly what it learned from `Deliver`:
//! accepted, or why not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use agentmesh_proto::v1::agent_mailbox_client::AgentMailboxClient;
use agentmesh_proto::v1::{Envelope, LinkAck};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use super::{BrokenLink, ENVELOPE_OVERHEAD};
use crate::metrics;
use crate::node::config::MailboxConfig;
use crate::support::background::Background;

/// Envelopes queued for the stream before senders wait.
const OUTBOUND_BUFFER: usize = 1024;

type AckSender = oneshot::Sender<Result<(), LinkError>>;

/// Why an envelope sent on a link was not accepted.
#[derive(Debug)]
pub(super) enum LinkError {
    /// The receiving node read the envelope and refused it, with the
    /// status its mailbox would have answered `Deliver` with.
    Refused { code: tonic::Code, message: String },
    /// The envelope may never have arrived: the connection failed or no
    /// acknowledgement came in time.
    Failed(String),
}

impl From<String> for LinkError {
    fn from(message: String) -> Self {
        Self::Failed(message)
    }
}

/// A sender waiting for its ack, and when it stops waiting.
struct Pending {
    ack: AckSender,
    deadline: Instant,
}

pub(super) struct Link {
    endpoint: String,
    outbound: mpsc::Sender<Envelope>,
    /// Senders waiting for their ack, by `seq`. Deadlines are enforced by
    /// one sweeper per link rather than a timer per envelope.
    pending: Mutex<HashMap<u64, Pending>>,
    timeout: Duration,
    next_seq: AtomicU64,
    /// Bounds the envelopes sent and not yet acknowledged.
    in_flight: Semaphore,
    closed: AtomicBool,
}

impl Link {
    /// Starts connecting in the background; envelopes sent meanwhile wait
    /// in the outbound buffer.
    pub(super) fn open(
        endpoint: &str,
        config: &MailboxConfig,
        broken: broadcast::Sender<BrokenLink>,
        background: &Background,
    ) -> Result<Arc<Self>, String> {
        let channel = super::channel::lazy(endpoint, config.deliver_timeout, &config.security)
            .map_err(|e| e.to_string())?;
        let limit = config.max_envelope_bytes + ENVELOPE_OVERHEAD;
        let client = AgentMailboxClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let (outbound, queued) = mpsc::channel(OUTBOUND_BUFFER);
        let link = Arc::new(Self {
            endpoint: endpoint.to_owned(),
            outbound,
            pending: Mutex::new(HashMap::new()),
            timeout: config.deliver_timeout,
            next_seq: AtomicU64::new(1),
            in_flight: Semaphore::new(config.max_in_flight_per_node.max(1)),
            closed: AtomicBool::new(false),
        });
        background.spawn("link", run(link.clone(), client, queued, broken));
        background.spawn("link sweeper", sweep(Arc::downgrade(&link)));
        Ok(link)
    }

    pub(super) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A closed link is replaced by a new one on the next send.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Sends one envelope and waits for the peer's ack, at most the
    /// mailbox's delivery timeout.
    pub(super) async fn deliver(&self, mut envelope: Envelope) -> Result<(), LinkError> {
        let _permit = match self.in_flight.try_acquire() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(LinkError::Failed("connection closed".into()));
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                tokio::time::timeout(self.timeout, self.in_flight.acquire())
                    .await
                    .map_err(|_| self.no_ack())?
                    .map_err(|_| "connection closed".to_owned())?
            }
        };
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        envelope.seq = seq;
        let (ack, acked) = oneshot::channel();
        let deadline = Instant::now() + self.timeout;
        self.lock_pending().insert(seq, Pending { ack, deadline });
        // `run` marks the link closed before it fails what is pending, so
        // an envelope registered after that sweep is caught here.
        if self.is_closed() || self.outbound.send(envelope).await.is_err() {
            self.lock_pending().remove(&seq);
            return Err(LinkError::Failed("connection closed".to_owned()));
        }
        acked.await.unwrap_or_else(|_| {
            Err(LinkError::Failed(
                "connection closed before the acknowledgement".to_owned(),
            ))
        })
    }

    fn no_ack(&self) -> String {
        format!("no acknowledgement within {:?}", self.timeout)
    }

    fn acknowledge(&self, ack: LinkAck) {
        let mut settled = Vec::with_capacity(ack.accepted.len() + ack.refused.len());
        {
            let mut pending = self.lock_pending();
            // A missing entry's deadline has passed; its sender already knows.
            settled.extend(
                ack.accepted
                    .iter()
                    .filter_map(|seq| pending.remove(seq))
                    .map(|p| (p, Ok(()))),
            );
            settled.extend(ack.refused.into_iter().filter_map(|refusal| {
                let outcome = Err(LinkError::Refused {
                    code: tonic::Code::from(refusal.code),
                    message: refusal.message,
                });
                pending.remove(&refusal.seq).map(|p| (p, outcome))
            }));
        }
        let accepted = settled.iter().filter(|(_, o)| o.is_ok()).count();
        metrics::link_acks(accepted, settled.len() - accepted);
        for (pending, outcome) in settled {
            let _ = pending.ack.send(outcome);
        }
    }

    /// Fails the senders whose deadline has passed.
    fn expire(&self, now: Instant) {
        let expired: Vec<Pending> = {
            let mut pending = self.lock_pending();
            let late: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(seq, _)| *seq)
                .collect();
            late.iter().filter_map(|seq| pending.remove(seq)).collect()
        };
        metrics::link_ack_timeouts(expired.len());
        for pending in expired {
            let _ = pending.ack.send(Err(LinkError::Failed(self.no_ack())));
        }
    }

    fn close(&self, reason: &str) {
        self.closed.store(true, Ordering::SeqCst);
        self.in_flight.close();
        let pending: Vec<Pending> = self.lock_pending().drain().map(|(_, p)| p).collect();
        for pending in pending {
            let _ = pending.ack.send(Err(LinkError::Failed(reason.to_owned())));
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drives the stream: the request side drains the outbound buffer, the
/// response side resolves acks, until either end closes.
async fn run(
    link: Arc<Link>,
    mut client: AgentMailboxClient<tonic::transport::Channel>,
    queued: mpsc::Receiver<Envelope>,
    broken: broadcast::Sender<BrokenLink>,
) {
    let (reason, failed) = match client.link(ReceiverStream::new(queued)).await {
        Ok(response) => {
            let mut acks = response.into_inner();
            loop {
                match acks.message().await {
                    Ok(Some(ack)) => link.acknowledge(ack),
                    // The peer stops serving only after it has handed its
                    // work back: nothing sent there is lost.
                    Ok(None) => break ("the peer closed the stream".to_owned(), false),
                    Err(status) => {
                        break (format!("{}: {}", status.code(), status.message()), true);
                    }
                }
            }
        }
        Err(status) => (format!("{}: {}", status.code(), status.message()), true),
    };
    debug!(%reason, endpoint = %link.endpoint, "mailbox link closed");
    if failed {
        // Announced before the senders waiting on the link hear of it, so
        // whoever reacts to their errors finds the notice already there.
        // Nobody listening is fine: no coordinator on this node.
        let _ = broken.send(BrokenLink {
            endpoint: link.endpoint.clone(),
            reason: reason.clone(),
        });
    }
    link.close(&reason);
}

/// Enforces ack deadlines a few times per timeout, until the link closes.
async fn sweep(link: Weak<Link>) {
    let period = match link.upgrade() {
        Some(link) => (link.timeout / 4).max(Duration::from_millis(10)),
        None => return,
    };
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(link) = link.upgrade() else { return };
        if link.is_closed() {
            return;
        }
        link.expire(Instant::now());
    }
}
