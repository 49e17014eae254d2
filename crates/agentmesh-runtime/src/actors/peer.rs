//! The peer actor: the collaboration side of a `--role peer` node (its
//! worker actor runs the tools).
//!
//! ```text
//! coordinator ──subtask.assign (redundancy k)──▶ proposing peer
//!   proposing peer ──collab.proposal──▶ peers offering the capability
//!   peers ──collab.bid (sealed, to the proposer only)──▶ proposing peer
//!   proposing peer ──subtask.assign──▶ the k best bidders' workers
//!   their workers ──subtask.result──▶ proposing peer
//!   proposing peer: consensus, reputation updates (CAS in the registry)
//! proposing peer ──subtask.result (agreed output + how)──▶ coordinator
//! ```
//!
//! Every decision is pure core logic: the round's phases
//! (`collaboration::Round`), the auction (`auction`), the agreement
//! (`consensus`) and the reputation evidence (`reputation`). This actor
//! moves messages between them. A peer that just joined tells the peers
//! already there (`peer.join`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agentmesh_core::auction::Bid;
use agentmesh_core::collaboration::{Next, Round};
use agentmesh_core::consensus::{self, Algorithm, Ballot, DefaultQuality};
use agentmesh_core::reputation::{Outcome, Reputation};
use agentmesh_core::{AgentId, Membership, Role};
use agentmesh_proto::v1::{
    CollaborationBid, CollaborationProposal, Envelope, PeerJoin, SubtaskAssignment, SubtaskResult,
};
use agentmesh_registry::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{Value, json};
use tracing::{Instrument, debug, info, warn};

use crate::actors::authority::Authority;
use crate::actors::report;
use crate::actors::worker::WorkerInbox;
use crate::convert;
use crate::metrics::{self, RoundOutcome};
use crate::node::config::PeerConfig;
use crate::support::background::Background;
use crate::support::clock::now_ms;
use crate::support::feeds;
use crate::telemetry::{self, TraceParent};
use crate::transport::{
    self, Backlog, BoundedMailbox, DeliverError, Inbound, Inbox, Kind, LocalMailbox, Router,
};

/// How often deadlines of open rounds are checked.
const TICK: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub enum PeerMessage {
    /// A coordinator asks this peer to run a subtask with `redundancy`
    /// peers and return the agreed result.
    Lead {
        coordinator: AgentId,
        assignment: SubtaskAssignment,
        /// The assignment's delivery: the round's proposals join its trace.
        trace: TraceParent,
    },
    Proposal {
        proposer: AgentId,
        proposal: CollaborationProposal,
        /// The proposal's delivery: the bid joins its trace.
        trace: TraceParent,
    },
    Bid(CollaborationBid),
    /// A seated peer's result for a round this peer leads.
    Replica(SubtaskResult),
    Joined(PeerJoin),
    Tick,
}

pub struct PeerArguments {
    pub id: AgentId,
    pub capabilities: Vec<String>,
    pub max_concurrency: u32,
    /// Attempts this node's worker runs now.
    pub load: Arc<AtomicU32>,
    pub endpoint: String,
    pub router: Arc<Router>,
    pub registry: Arc<dyn Registry>,
    /// Bounds the messages waiting for the actor; shared with its mailbox.
    pub backlog: Arc<Backlog>,
    pub config: PeerConfig,
    /// Owns the feeds into the actor.
    pub background: Background,
}

/// A round this peer leads, and whom it answers to.
struct Led {
    round: Round,
    coordinator: AgentId,
    assignment: SubtaskAssignment,
    algorithm: Algorithm,
    solo: Option<String>,
    /// Each bidder's reputation as read for its bid; consensus weighs the
    /// votes with it rather than reading the registry again.
    beliefs: HashMap<AgentId, Reputation>,
    /// The `peer.propose` span's context: the round's later steps (seats
    /// awarded on the last bid or at the bid deadline, the vote) happen
    /// in answer to other messages or to the clock, and join the task's
    /// trace through it.
    trace: TraceParent,
}

pub struct PeerState {
    id: AgentId,
    capabilities: Vec<String>,
    max_concurrency: u32,
    load: Arc<AtomicU32>,
    router: Arc<Router>,
    registry: Arc<dyn Registry>,
    backlog: Arc<Backlog>,
    config: PeerConfig,
    /// Rounds this peer leads, by round id.
    led: HashMap<String, Led>,
}

#[derive(Debug, Default)]
pub struct Peer;

impl Actor for Peer {
    type Msg = PeerMessage;
    type State = PeerState;
    type Arguments = PeerArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PeerArguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let state = PeerState {
            id: args.id,
            capabilities: args.capabilities,
            max_concurrency: args.max_concurrency,
            load: args.load,
            router: args.router,
            registry: args.registry,
            backlog: args.backlog,
            config: args.config,
            led: HashMap::new(),
        };
        state.announce(&args.endpoint).await;
        feeds::every(&args.background, TICK, myself, || PeerMessage::Tick);
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, PeerMessage::Tick) {
            state.backlog.leave();
        }
        match message {
            PeerMessage::Lead {
                coordinator,
                assignment,
                trace,
            } => {
                let span = telemetry::child_of(
                    &trace,
                    crate::span!(
                        "peer.propose",
                        task.id = %assignment.task_id,
                        subtask.id = %assignment.subtask_id,
                        attempt = assignment.attempt,
                        agent.id = %state.id,
                    ),
                );
                state.lead(coordinator, assignment).instrument(span).await
            }
            PeerMessage::Proposal {
                proposer,
                proposal,
                trace,
            } => {
                let span = telemetry::child_of(
                    &trace,
                    crate::span!(
                        "peer.bid",
                        task.id = %proposal.task_id,
                        subtask.id = %proposal.subtask_id,
                        agent.id = %state.id,
                        proposer = %proposer,
                    ),
                );
                state.bid(proposer, proposal).instrument(span).await
            }
            PeerMessage::Bid(bid) => state.receive_bid(bid).await,
            PeerMessage::Replica(result) => state.receive_replica(result).await,
            PeerMessage::Joined(join) => {
                info!(peer = %join.agent_id, capabilities = ?join.capabilities, reputation = join.reputation, "peer joined");
            }
            PeerMessage::Tick => {
                let now = now_ms();
                let open: Vec<String> = state.led.keys().cloned().collect();
                for round_id in open {
                    let next = match state.led.get_mut(&round_id) {
                        Some(led) => led.round.tick(now),
                        None => continue,
                    };
                    state.carry_out(&round_id, next).await;
                }
            }
        }
        Ok(())
    }
}

impl PeerState {
    /// Tells every peer already registered that this one joined.
    async fn announce(&self, endpoint: &str) {
        let membership = self.registry.membership().borrow().clone();
        let reputation = self.mean_reputation().await;
        for peer in peers(&membership).filter(|p| **p != self.id) {
            let join = PeerJoin {
                agent_id: self.id.to_string(),
                capabilities: self.capabilities.clone(),
                endpoint: endpoint.to_owned(),
                reputation,
            };
            self.send(peer, Kind::PeerJoin, join);
        }
    }

    async fn mean_reputation(&self) -> f64 {
        let mut scores = Vec::new();
        for capability in &self.capabilities {
            scores.push(self.reputation_of(&self.id, capability).await);
        }
        if scores.is_empty() {
            return Reputation::new(0).score();
        }
        scores.iter().sum::<f64>() / scores.len() as f64
    }

    /// The registry's score for `agent` on `capability`, decayed to now.
    async fn reputation_of(&self, agent: &AgentId, capability: &str) -> f64 {
        self.belief(agent, capability)
            .await
            .score_at(now_ms(), &self.config.reputation)
    }

    /// The registry's record for `agent` on `capability`; the prior when
    /// none is recorded or the registry cannot answer.
    async fn belief(&self, agent: &AgentId, capability: &str) -> Reputation {
        match self.registry.reputation(agent, capability).await {
            Ok(Some(record)) => record,
            Ok(None) => Reputation::new(now_ms()),
            Err(error) => {
                debug!(%error, agent = %agent, "reputation unavailable; using the prior");
                Reputation::new(now_ms())
            }
        }
    }

    /// Opens a round for a subtask the coordinator gave this peer.
    async fn lead(&mut self, coordinator: AgentId, assignment: SubtaskAssignment) {
        let round_id = convert::assigned_attempt(&assignment).to_string();
        let membership = self.registry.membership().borrow().clone();
        let invited: Vec<AgentId> = peers(&membership)
            .filter(|p| offers(&membership, p, &assignment.capability))
            .cloned()
            .collect();
        let now = now_ms();
        let bid_deadline = now + self.config.bid_window.as_millis() as u64;
        let execution = if assignment.timeout_ms > 0 {
            assignment.timeout_ms + 1000
        } else {
            self.config.execution_timeout.as_millis() as u64
        };
        let algorithm = assignment.consensus.parse().unwrap_or(Algorithm::Hybrid);
        let proposal = CollaborationProposal {
            round_id: round_id.clone(),
            task_id: assignment.task_id.clone(),
            subtask_id: assignment.subtask_id.clone(),
            capability: assignment.capability.clone(),
            seats: assignment.redundancy,
            bid_deadline_ms: bid_deadline,
        };
        info!(round = %round_id, invited = invited.len(), seats = assignment.redundancy, "proposing a collaboration");
        for peer in &invited {
            self.send(peer, Kind::CollabProposal, proposal.clone());
        }
        let round = Round::new(
            invited,
            assignment.redundancy as usize,
            self.config.bid_weights.clone(),
            self.config.probation,
            bid_deadline,
            execution,
        );
        self.led.insert(
            round_id,
            Led {
                round,
                coordinator,
                assignment,
                algorithm,
                solo: None,
                beliefs: HashMap::new(),
                // Called inside the `peer.propose` span.
                trace: TraceParent::current(),
            },
        );
    }

    /// Answers a proposal with a sealed bid, to the proposer only.
    async fn bid(&self, proposer: AgentId, proposal: CollaborationProposal) {
        let capability_match = if self.capabilities.contains(&proposal.capability) {
            1.0
        } else {
            0.0
        };
        let load = self.load.load(Ordering::Relaxed) as f64;
        let free_load = (1.0 - load / self.max_concurrency.max(1) as f64).clamp(0.0, 1.0);
        let bid = CollaborationBid {
            round_id: proposal.round_id,
            agent_id: self.id.to_string(),
            capability_match,
            free_load,
            reputation: self.reputation_of(&self.id, &proposal.capability).await,
        };
        self.send(&proposer, Kind::CollabBid, bid);
    }

    /// Adds a bid to its round. The bidder's reputation is read from the
    /// registry rather than taken from the bid — a peer cannot talk itself
    /// up — and drawn from its belief rather than taken as the mean, so
    /// peers with little evidence get tried (see `Reputation::sample`).
    async fn receive_bid(&mut self, bid: CollaborationBid) {
        let Some(capability) = self
            .led
            .get(&bid.round_id)
            .map(|led| led.assignment.capability.clone())
        else {
            return;
        };
        let agent = AgentId::new(bid.agent_id);
        let belief = self.belief(&agent, &capability).await;
        let reputation = belief.sample(now_ms(), &self.config.reputation, &mut rand::rng());
        let Some(led) = self.led.get_mut(&bid.round_id) else {
            return;
        };
        led.beliefs.insert(agent.clone(), belief);
        let next = led.round.bid(
            Bid {
                agent,
                capability_match: bid.capability_match,
                free_load: bid.free_load,
                reputation,
            },
            belief.updates,
            now_ms(),
        );
        self.carry_out(&bid.round_id, next).await;
    }

    async fn receive_replica(&mut self, result: SubtaskResult) {
        let round_id = convert::reported_attempt(&result).to_string();
        let Some(led) = self.led.get_mut(&round_id) else {
            debug!(round = %round_id, "result for a round that is over");
            return;
        };
        let outcome = convert::outcome(&result, "peer");
        let next = led
            .round
            .result(&AgentId::new(result.worker_id), outcome, now_ms());
        self.carry_out(&round_id, next).await;
    }

    async fn carry_out(&mut self, round_id: &str, next: Next) {
        match next {
            Next::Wait => {}
            Next::Assign { participants, solo } => {
                let Some(led) = self.led.get_mut(round_id) else {
                    return;
                };
                if let Some(reason) = &solo {
                    warn!(round = %round_id, %reason, "falling back to solo execution");
                }
                led.solo = solo;
                let replica = SubtaskAssignment {
                    redundancy: 0,
                    ..led.assignment.clone()
                };
                debug!(round = %round_id, participants = ?participants, "seats awarded");
                let span = telemetry::child_of(
                    &led.trace,
                    crate::span!(
                        "peer.award",
                        task.id = %replica.task_id,
                        subtask.id = %replica.subtask_id,
                        attempt = replica.attempt,
                        agent.id = %self.id,
                        seats = participants.len(),
                    ),
                );
                span.in_scope(|| {
                    for peer in &participants {
                        self.send(peer, Kind::SubtaskAssign, replica.clone());
                    }
                });
            }
            Next::Decide { results, missing } => {
                if let Some(led) = self.led.remove(round_id) {
                    let span = vote_span(&self.id, &led, results.len());
                    self.decide(led, results, missing).instrument(span).await;
                }
            }
            Next::Fail(reason) => {
                if let Some(led) = self.led.remove(round_id) {
                    let _entered = vote_span(&self.id, &led, 0).entered();
                    warn!(round = %round_id, %reason, "collaboration failed");
                    metrics::consensus_round(RoundOutcome::Failed, None, 0);
                    self.answer(&led, Err(reason), None);
                }
            }
        }
    }

    /// Agrees on one output, updates every participant's reputation and
    /// answers the coordinator.
    async fn decide(
        &self,
        led: Led,
        results: Vec<(AgentId, Result<Value, String>)>,
        missing: Vec<AgentId>,
    ) {
        let capability = led.assignment.capability.clone();
        let mut ballots = Vec::new();
        let mut outcomes: Vec<(AgentId, Outcome)> = Vec::new();
        for (agent, result) in results {
            match result {
                Ok(output) => {
                    let reputation = led.beliefs.get(&agent).map_or_else(
                        || Reputation::new(now_ms()).score(),
                        |belief| belief.score_at(now_ms(), &self.config.reputation),
                    );
                    ballots.push(Ballot {
                        agent,
                        output,
                        reputation,
                    });
                }
                Err(_) => outcomes.push((agent, Outcome::Failed)),
            }
        }
        outcomes.extend(missing.into_iter().map(|agent| (agent, Outcome::TimedOut)));
        let policy = consensus::ConsensusPolicy {
            algorithm: led.algorithm,
            ..self.config.consensus.clone()
        };
        let decided = consensus::reach(&capability, &ballots, &policy, &DefaultQuality);
        let answer = match decided {
            Ok(agreed) => {
                outcomes.extend(agreed.votes.iter().map(|vote| {
                    let outcome = if vote.agreed {
                        Outcome::Agreed
                    } else {
                        Outcome::Dissented
                    };
                    (vote.agent.clone(), outcome)
                }));
                let mut how = serde_json::to_value(&agreed).unwrap_or(Value::Null);
                if let Value::Object(fields) = &mut how {
                    fields.insert("solo".into(), json!(led.solo));
                    fields.insert("proposer".into(), json!(self.id.to_string()));
                }
                info!(
                    task_id = %led.assignment.task_id,
                    subtask = %led.assignment.subtask_id,
                    algorithm = agreed.algorithm.as_str(),
                    agreement = agreed.agreement,
                    dissenters = ?agreed.dissenters,
                    "consensus reached"
                );
                metrics::consensus_round(
                    RoundOutcome::Agreed,
                    Some(agreed.agreement),
                    agreed.dissenters.len(),
                );
                Ok((agreed.output, how))
            }
            Err(error) => {
                outcomes.extend(
                    ballots
                        .iter()
                        .map(|b| (b.agent.clone(), Outcome::Dissented)),
                );
                // No output at all to agree on is a failed round.
                let outcome = if ballots.is_empty() {
                    RoundOutcome::Failed
                } else {
                    RoundOutcome::Disagreed
                };
                metrics::consensus_round(outcome, None, ballots.len());
                Err(format!("peers did not agree: {error}"))
            }
        };
        self.update_reputations(&capability, outcomes).await;
        match answer {
            Ok((output, how)) => self.answer(&led, Ok(output), Some(how)),
            Err(reason) => self.answer(&led, Err(reason), None),
        }
    }

    /// Records each participant's outcome under compare-and-swap, so
    /// proposers deciding at once lose no update.
    async fn update_reputations(&self, capability: &str, outcomes: Vec<(AgentId, Outcome)>) {
        let policy = self.config.reputation.clone();
        for (agent, outcome) in outcomes {
            let now = now_ms();
            let update = |current: Option<Reputation>| {
                current
                    .unwrap_or_else(|| Reputation::new(now))
                    .record(outcome, now, &policy)
            };
            match self
                .registry
                .update_reputation(&agent, capability, &update)
                .await
            {
                Ok(record) => {
                    debug!(agent = %agent, ?outcome, score = record.score(), "reputation updated")
                }
                Err(error) => warn!(%error, agent = %agent, "could not update reputation"),
            }
        }
    }

    /// Reports the round's outcome to the coordinator as the subtask's
    /// result, with retries like any worker result.
    fn answer(&self, led: &Led, outcome: Result<Value, String>, how: Option<Value>) {
        let outcome = outcome.map(|output| output.to_string());
        let mut result =
            convert::subtask_result(&self.id, &led.assignment, outcome, Duration::ZERO);
        result.consensus_json = how.map(|h| h.to_string()).unwrap_or_default();
        report::report_later(&self.router, &self.id, &led.coordinator, result);
    }

    fn send(&self, to: &AgentId, kind: Kind, message: impl prost::Message) {
        transport::tell(
            &self.router,
            transport::envelope(&self.id, to, kind, message),
        );
    }
}

/// The span of a round's vote: the results counted, reputations updated
/// and the answer sent to the coordinator, in the task's trace.
fn vote_span(me: &AgentId, led: &Led, votes: usize) -> tracing::Span {
    telemetry::child_of(
        &led.trace,
        crate::span!(
            "peer.vote",
            task.id = %led.assignment.task_id,
            subtask.id = %led.assignment.subtask_id,
            attempt = led.assignment.attempt,
            agent.id = %me,
            votes,
        ),
    )
}

/// Every registered peer.
fn peers(membership: &Membership) -> impl Iterator<Item = &AgentId> {
    membership
        .agents
        .values()
        .filter(|a| a.role == Role::Peer)
        .map(|a| &a.id)
}

fn offers(membership: &Membership, agent: &AgentId, capability: &str) -> bool {
    membership
        .agents
        .get(agent)
        .is_some_and(|a| a.capabilities.iter().any(|c| c == capability))
}

/// Refuses a bid or a replica that names someone other than its sender
/// (whom the mailbox authenticated): one link must not bid or answer in
/// the name of every invited peer. The round itself keeps one bid per peer.
fn own_name(envelope: &Envelope, named: &str) -> Result<(), DeliverError> {
    if named == envelope.from {
        return Ok(());
    }
    debug!(
        claimed = %named,
        authenticated = %envelope.from,
        kind = %envelope.kind,
        "refused a consensus message in the name of another peer"
    );
    Err(DeliverError::ForgedSender {
        claimed: AgentId::new(named),
        authenticated: envelope.from.clone(),
    })
}

/// What a peer accepts from its mailbox. Tool runs (an assignment for one
/// peer, and cancellations) go to its worker's mailbox; the collaboration
/// goes to the peer actor.
pub struct PeerInbox {
    pub worker: BoundedMailbox<WorkerInbox>,
    /// Who may ask this peer to lead a round: the leader coordinator.
    pub authority: Authority,
}

impl Inbox for PeerInbox {
    type Message = PeerMessage;

    fn accepts(&self) -> &'static [Kind] {
        &[
            Kind::SubtaskAssign,
            Kind::SubtaskCancel,
            Kind::SubtaskResult,
            Kind::EventDeliver,
            Kind::PeerJoin,
            Kind::CollabProposal,
            Kind::CollabBid,
        ]
    }

    fn decode(&self, kind: Kind, envelope: Envelope) -> Result<Inbound<PeerMessage>, DeliverError> {
        let message = match kind {
            Kind::SubtaskAssign => {
                let assignment: SubtaskAssignment = transport::decode(&envelope)?;
                if assignment.redundancy <= 1 {
                    self.worker.deliver(envelope)?;
                    return Ok(Inbound::Handled);
                }
                let coordinator = AgentId::new(envelope.from);
                self.authority.leader_only(&coordinator, kind)?;
                PeerMessage::Lead {
                    coordinator,
                    assignment,
                    trace: TraceParent::from_map(&envelope.trace_context),
                }
            }
            // The worker runs a peer's event handlers and checks the sender.
            Kind::SubtaskCancel | Kind::EventDeliver => {
                self.worker.deliver(envelope)?;
                return Ok(Inbound::Handled);
            }
            Kind::SubtaskResult => {
                let replica: SubtaskResult = transport::decode(&envelope)?;
                own_name(&envelope, &replica.worker_id)?;
                PeerMessage::Replica(replica)
            }
            Kind::PeerJoin => PeerMessage::Joined(transport::decode(&envelope)?),
            Kind::CollabProposal => PeerMessage::Proposal {
                proposal: transport::decode(&envelope)?,
                trace: TraceParent::from_map(&envelope.trace_context),
                proposer: AgentId::new(envelope.from),
            },
            Kind::CollabBid => {
                let bid: CollaborationBid = transport::decode(&envelope)?;
                own_name(&envelope, &bid.agent_id)?;
                PeerMessage::Bid(bid)
            }
            Kind::Hierarchy | Kind::EventAck => {
                return Err(transport::envelope::unknown_kind(&envelope, self.accepts()));
            }
        };
        Ok(Inbound::Message(message))
    }
}
