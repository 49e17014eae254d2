//! The leader's delivery state: which event goes to which subscription
//! next, and what happens when a handler answers, fails or goes silent.
//!
//! Deliveries queue in *lanes*, one per (subscription, key), in the order
//! events were offered. Only a lane's head is ever in flight, so a
//! subscription sees one key's events in order; lanes proceed
//! independently. A head is in one of three states:
//!
//! ```text
//!            dispatch (an agent is live)          ack ok
//!   Queued ───────────────────────────> InFlight ───────> settled (removed)
//!     ^                                   │  failed, ack timeout, agent left
//!     │            backoff over           v
//!     └──────────────────────────────── Backoff ──(attempts spent)──> dead letter
//! ```
//!
//! A head with no live agent for its subscription stays `Queued` and
//! spends no attempt. The router keeps every undelivered (event,
//! subscription) pair until it is acknowledged or dead-lettered, and
//! [`Router::record`] gives what to persist, so a new leader that
//! [`Router::restore`]s the records loses nothing: what was in flight is
//! sent again (at least once).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{Event, Subscription};
use crate::ids::AgentId;
use crate::retry::RetryPolicy;

/// Bounds and timings of a router; knobs of the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterLimits {
    /// Deliveries queued or in flight over all lanes
    /// (`--max-pending-events`).
    pub max_pending: usize,
    /// Deliveries in one (subscription, key) lane (`--max-events-per-key`).
    pub max_per_lane: usize,
    /// How long an agent has to acknowledge a delivery before the attempt
    /// counts as failed (`--event-ack-timeout`).
    pub ack_timeout_ms: u64,
    /// Attempts per delivery and the backoff between them
    /// (`--event-max-attempts`).
    pub retry: RetryPolicy,
}

impl Default for RouterLimits {
    fn default() -> Self {
        Self {
            max_pending: 10_000,
            max_per_lane: 1_000,
            ack_timeout_ms: 30_000,
            retry: RetryPolicy {
                max_attempts: 5,
                base_delay_ms: 100,
                max_delay_ms: 5_000,
            },
        }
    }
}

/// Why an event was not accepted; nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("event queue is full: {pending} deliveries pending (--max-pending-events {limit})")]
    QueueFull { pending: usize, limit: usize },
    #[error(
        "event queue of subscription '{subscription}' for key '{key}' is full: {queued} \
         deliveries queued (--max-events-per-key {limit})"
    )]
    LaneFull {
        subscription: Subscription,
        key: String,
        queued: usize,
        limit: usize,
    },
    #[error("event '{id}' is already queued")]
    Duplicate { id: String },
}

/// Where a delivery stands; only a lane's head leaves `Queued`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryState {
    Queued,
    InFlight {
        agent: AgentId,
        attempt: u32,
        deadline_ms: u64,
    },
    Backoff {
        until_ms: u64,
    },
}

/// A delivery not yet settled, as persisted in its event's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Attempts made so far (started, whatever their end).
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What the leader persists per event (`/agentmesh/v1/events/...`): the
/// event and its unsettled deliveries. An event with none left is deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub event: Event,
    pub pending: BTreeMap<Subscription, Delivery>,
}

/// A delivery that ran out of attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub event: Event,
    pub subscription: Subscription,
    pub attempts: u32,
    pub last_error: String,
    pub dead_ms: u64,
}

/// One delivery to send now.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub event: Event,
    pub subscription: Subscription,
    pub agent: AgentId,
    /// 1-based; the ack names it, so a late ack of an older attempt is
    /// told apart.
    pub attempt: u32,
}

/// A delivery that ended, acknowledged or dead-lettered.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub event_id: String,
    pub subscription: Subscription,
    /// What to persist for the event now; `None`: delete its record.
    pub record: Option<EventRecord>,
    /// Set when the delivery was dead-lettered.
    pub dead: Option<DeadLetter>,
}

/// An agent's answer to attempt `attempt` of delivering `event_id` to
/// `subscription`: `Ok` when the handler succeeded, else its error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub event_id: String,
    pub subscription: Subscription,
    pub attempt: u32,
    pub from: AgentId,
    pub result: Result<(), String>,
}

/// What an acknowledgement, a timeout or a lost agent did.
// One outcome is returned per answer and consumed at once, so the size of
// the rare small variants costs nothing; boxing would allocate per ack.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum AckOutcome {
    Settled(Settled),
    /// The attempt failed and the delivery will be sent again from
    /// `at_ms`; `record` carries the spent attempt.
    Retry {
        at_ms: u64,
        record: EventRecord,
    },
    /// The ack names an attempt that is no longer current (already
    /// settled, timed out, or superseded): ignored.
    Stale,
    /// The ack came from an agent other than the one holding the attempt.
    WrongAgent {
        holder: AgentId,
    },
}

#[derive(Debug)]
struct Stored {
    event: Event,
    pending: BTreeMap<Subscription, Delivery>,
}

#[derive(Debug, Clone)]
struct LaneEntry {
    event_id: String,
    state: DeliveryState,
}

type LaneKey = (Subscription, String);

/// The leader's routing state. See the module documentation.
#[derive(Debug)]
pub struct Router {
    limits: RouterLimits,
    events: BTreeMap<String, Stored>,
    lanes: BTreeMap<LaneKey, VecDeque<LaneEntry>>,
    pending: usize,
}

impl Router {
    pub fn new(limits: RouterLimits) -> Self {
        Self {
            limits,
            events: BTreeMap::new(),
            lanes: BTreeMap::new(),
            pending: 0,
        }
    }

    pub fn limits(&self) -> &RouterLimits {
        &self.limits
    }

    /// Deliveries queued or in flight.
    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Queues one delivery of `event` per subscription, all or none:
    /// checked against the bounds first. Returns the record to persist
    /// before the publisher is answered. With no subscription nothing is
    /// queued and the record has no deliveries (the caller counts the event
    /// as unhandled and stores nothing).
    pub fn offer(
        &mut self,
        event: Event,
        subscriptions: &[Subscription],
    ) -> Result<EventRecord, Refusal> {
        if self.events.contains_key(&event.id) {
            return Err(Refusal::Duplicate { id: event.id });
        }
        let mut subscriptions = subscriptions.to_vec();
        subscriptions.sort();
        subscriptions.dedup();
        if self.pending + subscriptions.len() > self.limits.max_pending {
            return Err(Refusal::QueueFull {
                pending: self.pending,
                limit: self.limits.max_pending,
            });
        }
        for subscription in &subscriptions {
            let queued = self
                .lanes
                .get(&(subscription.clone(), event.key.clone()))
                .map_or(0, VecDeque::len);
            if queued >= self.limits.max_per_lane {
                return Err(Refusal::LaneFull {
                    subscription: subscription.clone(),
                    key: event.key.clone(),
                    queued,
                    limit: self.limits.max_per_lane,
                });
            }
        }
        let pending = subscriptions
            .into_iter()
            .map(|subscription| {
                (
                    subscription,
                    Delivery {
                        attempts: 0,
                        last_error: None,
                    },
                )
            })
            .collect();
        let record = EventRecord { event, pending };
        if !record.pending.is_empty() {
            self.insert(record.clone());
        }
        Ok(record)
    }

    /// Takes back what an earlier leader persisted, ignoring the bounds
    /// (the events were accepted already). Records are queued in `seq`
    /// order whatever order they come in; an id already held is skipped.
    ///
    /// A record may count an attempt that was in flight when the old
    /// leader stopped, and whose answer nobody will ever apply: a delivery
    /// whose attempts are all spent that way keeps one more, so it is sent
    /// again rather than dead-lettered without a known failure (at least
    /// once), and no attempt number exceeds the policy.
    pub fn restore(&mut self, records: impl IntoIterator<Item = EventRecord>) {
        let last = self.limits.retry.max_attempts.saturating_sub(1);
        let mut records: Vec<EventRecord> = records
            .into_iter()
            .filter(|record| !record.pending.is_empty())
            .map(|mut record| {
                for delivery in record.pending.values_mut() {
                    delivery.attempts = delivery.attempts.min(last);
                }
                record
            })
            .collect();
        records.sort_by_key(|record| record.event.seq);
        for record in records {
            if !self.events.contains_key(&record.event.id) {
                self.insert(record);
            }
        }
    }

    fn insert(&mut self, record: EventRecord) {
        for subscription in record.pending.keys() {
            self.lanes
                .entry((subscription.clone(), record.event.key.clone()))
                .or_default()
                .push_back(LaneEntry {
                    event_id: record.event.id.clone(),
                    state: DeliveryState::Queued,
                });
            self.pending += 1;
        }
        self.events.insert(
            record.event.id.clone(),
            Stored {
                event: record.event,
                pending: record.pending,
            },
        );
    }

    /// The deliveries to send at `now_ms`: every lane head that is queued,
    /// or whose backoff is over, and for whose subscription `pick` names a
    /// live agent. Each is marked in flight with its attempt counted. A head
    /// `pick` finds no agent for stays queued and spends nothing.
    pub fn dispatch(
        &mut self,
        now_ms: u64,
        mut pick: impl FnMut(&Subscription, &str) -> Option<AgentId>,
    ) -> Vec<Dispatch> {
        let mut out = Vec::new();
        for ((subscription, key), lane) in &mut self.lanes {
            let Some(head) = lane.front_mut() else {
                continue;
            };
            let due = match head.state {
                DeliveryState::Queued => true,
                DeliveryState::Backoff { until_ms } => until_ms <= now_ms,
                DeliveryState::InFlight { .. } => false,
            };
            if !due {
                continue;
            }
            let Some(agent) = pick(subscription, key) else {
                continue;
            };
            let Some(stored) = self.events.get_mut(&head.event_id) else {
                continue;
            };
            let Some(delivery) = stored.pending.get_mut(subscription) else {
                continue;
            };
            delivery.attempts += 1;
            head.state = DeliveryState::InFlight {
                agent: agent.clone(),
                attempt: delivery.attempts,
                deadline_ms: now_ms.saturating_add(self.limits.ack_timeout_ms),
            };
            out.push(Dispatch {
                event: stored.event.clone(),
                subscription: subscription.clone(),
                agent,
                attempt: delivery.attempts,
            });
        }
        out
    }

    /// An agent's answer to one attempt. `jitter` is a uniform draw from
    /// [0, 1) for the backoff.
    pub fn ack(&mut self, ack: Ack, now_ms: u64, jitter: f64) -> AckOutcome {
        let Ack {
            event_id,
            subscription,
            attempt,
            from,
            result,
        } = ack;
        let (event_id, subscription, from) = (event_id.as_str(), &subscription, &from);
        let Some(key) = self.events.get(event_id).map(|s| s.event.key.clone()) else {
            return AckOutcome::Stale;
        };
        let lane_key = (subscription.clone(), key);
        let Some(head) = self.lanes.get(&lane_key).and_then(VecDeque::front) else {
            return AckOutcome::Stale;
        };
        if head.event_id != event_id {
            return AckOutcome::Stale;
        }
        let DeliveryState::InFlight {
            agent,
            attempt: current,
            ..
        } = &head.state
        else {
            return AckOutcome::Stale;
        };
        if *current != attempt {
            return AckOutcome::Stale;
        }
        if agent != from {
            return AckOutcome::WrongAgent {
                holder: agent.clone(),
            };
        }
        match result {
            Ok(()) => AckOutcome::Settled(self.settle(&lane_key, None)),
            Err(error) => self.fail(&lane_key, error, now_ms, jitter),
        }
    }

    /// Fails every attempt in flight past its ack deadline.
    pub fn expire(&mut self, now_ms: u64, jitter: f64) -> Vec<AckOutcome> {
        let timeout = self.limits.ack_timeout_ms;
        self.fail_where(now_ms, jitter, |agent, deadline_ms| {
            (deadline_ms <= now_ms)
                .then(|| format!("agent '{agent}' did not acknowledge within {timeout} ms"))
        })
    }

    /// Fails every attempt in flight on `left`, which left the cluster.
    pub fn agent_left(&mut self, left: &AgentId, now_ms: u64, jitter: f64) -> Vec<AckOutcome> {
        self.fail_where(now_ms, jitter, |agent, _| {
            (agent == left).then(|| format!("agent '{agent}' left the cluster"))
        })
    }

    fn fail_where(
        &mut self,
        now_ms: u64,
        jitter: f64,
        mut why: impl FnMut(&AgentId, u64) -> Option<String>,
    ) -> Vec<AckOutcome> {
        let failed: Vec<(LaneKey, String)> = self
            .lanes
            .iter()
            .filter_map(|(lane_key, lane)| match &lane.front()?.state {
                DeliveryState::InFlight {
                    agent, deadline_ms, ..
                } => why(agent, *deadline_ms).map(|error| (lane_key.clone(), error)),
                _ => None,
            })
            .collect();
        failed
            .into_iter()
            .map(|(lane_key, error)| self.fail(&lane_key, error, now_ms, jitter))
            .collect()
    }

    /// The head of `lane_key` failed an attempt: back off, or dead-letter
    /// once its attempts are spent.
    fn fail(&mut self, lane_key: &LaneKey, error: String, now_ms: u64, jitter: f64) -> AckOutcome {
        let Some(head) = self.lanes.get_mut(lane_key).and_then(VecDeque::front_mut) else {
            return AckOutcome::Stale;
        };
        let Some(stored) = self.events.get_mut(&head.event_id) else {
            return AckOutcome::Stale;
        };
        let Some(delivery) = stored.pending.get_mut(&lane_key.0) else {
            return AckOutcome::Stale;
        };
        delivery.last_error = Some(error.clone());
        if self.limits.retry.allows(delivery.attempts) {
            let at_ms = now_ms.saturating_add(
                self.limits
                    .retry
                    .delay_with_jitter_ms(delivery.attempts, jitter),
            );
            head.state = DeliveryState::Backoff { until_ms: at_ms };
            let record = EventRecord {
                event: stored.event.clone(),
                pending: stored.pending.clone(),
            };
            return AckOutcome::Retry { at_ms, record };
        }
        let dead = DeadLetter {
            event: stored.event.clone(),
            subscription: lane_key.0.clone(),
            attempts: delivery.attempts,
            last_error: error,
            dead_ms: now_ms,
        };
        AckOutcome::Settled(self.settle(lane_key, Some(dead)))
    }

    /// Removes the head of `lane_key`; its lane moves on.
    fn settle(&mut self, lane_key: &LaneKey, dead: Option<DeadLetter>) -> Settled {
        let lane = self.lanes.get_mut(lane_key).expect("settled lane exists");
        let head = lane.pop_front().expect("settled lane has a head");
        if lane.is_empty() {
            self.lanes.remove(lane_key);
        }
        self.pending -= 1;
        let record = match self.events.get_mut(&head.event_id) {
            Some(stored) => {
                stored.pending.remove(&lane_key.0);
                if stored.pending.is_empty() {
                    self.events.remove(&head.event_id);
                    None
                } else {
                    Some(EventRecord {
                        event: stored.event.clone(),
                        pending: stored.pending.clone(),
                    })
                }
            }
            None => None,
        };
        Settled {
            event_id: head.event_id,
            subscription: lane_key.0.clone(),
            record,
            dead,
        }
    }

    /// The record to persist for `event_id` now; `None` once every delivery
    /// settled.
    pub fn record(&self, event_id: &str) -> Option<EventRecord> {
        self.events.get(event_id).map(|stored| EventRecord {
            event: stored.event.clone(),
            pending: stored.pending.clone(),
        })
    }

    /// When something is next due without any message arriving: a backoff
    /// ending or an ack deadline passing. Queued heads with no live agent
    /// wait for the membership to change instead.
    pub fn next_wake_ms(&self) -> Option<u64> {
        self.lanes
            .values()
            .filter_map(|lane| match lane.front()?.state {
                DeliveryState::Backoff { until_ms } => Some(until_ms),
                DeliveryState::InFlight { deadline_ms, .. } => Some(deadline_ms),
                DeliveryState::Queued => None,
            })
            .min()
    }

    /// The state of `event_id`'s delivery to `subscription`, if unsettled.
    pub fn state(&self, event_id: &str, subscription: &Subscription) -> Option<DeliveryState> {
        let key = &self.events.get(event_id)?.event.key;
        let lane = self.lanes.get(&(subscription.clone(), key.clone()))?;
        lane.iter()
            .find(|entry| entry.event_id == event_id)
            .map(|entry| entry.state.clone())
    }

    /// Deliveries in flight, as (subscription, key) lanes whose head is out.
    pub fn in_flight(&self) -> usize {
        self.lanes
            .values()
            .filter(|lane| {
                matches!(
                    lane.front().map(|entry| &entry.state),
                    Some(DeliveryState::InFlight { .. })
                )
            })
            .count()
    }
}
