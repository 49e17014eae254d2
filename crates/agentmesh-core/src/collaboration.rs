//! One round of peer collaboration on one subtask, as the proposing peer
//! runs it: invite the relevant peers, collect sealed bids until all are in
//! or the bid deadline passes, seat the `seats` best bidders (or fall back
//! to a solo run when too few answered), collect their results until all
//! are in or the execution deadline passes, then hand the results to
//! consensus.
//!
//! ```text
//! Bidding ──all bids / bid deadline──▶ Executing ──all results / deadline──▶ Done
//!                                    (solo when short of seats)
//! ```
//!
//! A plain state machine: the peer actor feeds it bids, results and clock
//! ticks and carries out the [`Next`] step it returns.
//!
//! **Probation.** A peer with fewer than `probation` recorded outcomes for
//! the capability is seated ahead of proven peers, one per round: without
//! it the first peers to win would win forever, and a newcomer — honest or
//! not — would never be found out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::AgentId;
use crate::auction::{self, Bid, BidWeights};

/// Where a round stands.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Bidding { deadline_ms: u64 },
    Executing { deadline_ms: u64 },
    Done,
}

/// What the proposer does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Nothing yet.
    Wait,
    /// Send the subtask to these peers. `solo` says why the round fell back
    /// to one peer, when it did.
    Assign {
        participants: Vec<AgentId>,
        solo: Option<String>,
    },
    /// Every seated peer answered or the deadline passed: reach consensus
    /// over `results`; `missing` never answered (timed out).
    Decide {
        results: Vec<(AgentId, Result<Value, String>)>,
        missing: Vec<AgentId>,
    },
    /// The round cannot produce a result.
    Fail(String),
}

/// One collaboration round.
#[derive(Debug, Clone)]
pub struct Round {
    seats: usize,
    invited: BTreeSet<AgentId>,
    bids: BTreeMap<AgentId, Bid>,
    /// Outcomes recorded so far for each bidder.
    experience: BTreeMap<AgentId, u64>,
    probation: u64,
    weights: BidWeights,
    execution_ms: u64,
    phase: Phase,
    participants: Vec<AgentId>,
    results: BTreeMap<AgentId, Result<Value, String>>,
}

impl Round {
    /// Invites `invited` to bid for `seats` seats until `bid_deadline_ms`;
    /// seated peers then have `execution_ms` to answer. Peers with fewer
    /// than `probation` recorded outcomes are on probation.
    pub fn new(
        invited: impl IntoIterator<Item = AgentId>,
        seats: usize,
        weights: BidWeights,
        probation: u64,
        bid_deadline_ms: u64,
        execution_ms: u64,
    ) -> Self {
        Self {
            seats: seats.max(1),
            invited: invited.into_iter().collect(),
            bids: BTreeMap::new(),
            experience: BTreeMap::new(),
            probation,
            weights,
            execution_ms,
            phase: Phase::Bidding {
                deadline_ms: bid_deadline_ms,
            },
            participants: Vec::new(),
            results: BTreeMap::new(),
        }
    }

    /// The peers seated for execution (empty while bidding).
    pub fn participants(&self) -> &[AgentId] {
        &self.participants
    }

    /// The bids received, by bidder.
    pub fn bids(&self) -> impl Iterator<Item = &Bid> {
        self.bids.values()
    }

    /// A sealed bid arrived from a peer with `experience` recorded
    /// outcomes. Bids from peers not invited, repeated bids and bids after
    /// the auction closed are ignored.
    pub fn bid(&mut self, bid: Bid, experience: u64, now_ms: u64) -> Next {
        if !matches!(self.phase, Phase::Bidding { .. }) || !self.invited.contains(&bid.agent) {
            return Next::Wait;
        }
        self.experience
            .entry(bid.agent.clone())
            .or_insert(experience);
        self.bids.entry(bid.agent.clone()).or_insert(bid);
        if self.bids.len() == self.invited.len() {
            return self.close_auction(now_ms);
        }
        self.tick(now_ms)
    }

    /// A seated peer's result (or its error). Anything else is ignored.
    pub fn result(&mut self, agent: &AgentId, outcome: Result<Value, String>, now_ms: u64) -> Next {
        if !matches!(self.phase, Phase::Executing { .. }) || !self.participants.contains(agent) {
            return Next::Wait;
        }
        self.results.entry(agent.clone()).or_insert(outcome);
        if self.results.len() == self.participants.len() {
            return self.decide();
        }
        self.tick(now_ms)
    }

    /// Moves on when a deadline has passed.
    pub fn tick(&mut self, now_ms: u64) -> Next {
        match self.phase {
            Phase::Bidding { deadline_ms } if now_ms >= deadline_ms => self.close_auction(now_ms),
            Phase::Executing { deadline_ms } if now_ms >= deadline_ms => self.decide(),
            _ => Next::Wait,
        }
    }

    /// The least experienced eligible bidder on probation, best bid first
    /// among equals.
    fn on_probation(&self) -> Option<&Bid> {
        let experience = |b: &Bid| self.experience.get(&b.agent).copied().unwrap_or(0);
        self.bids
            .values()
            .filter(|b| b.eligible() && experience(b) < self.probation)
            .min_by(|a, b| {
                experience(a)
                    .cmp(&experience(b))
                    .then(b.score(&self.weights).total_cmp(&a.score(&self.weights)))
                    .then(a.agent.cmp(&b.agent))
            })
    }

    fn close_auction(&mut self, now_ms: u64) -> Next {
        let probation = self.on_probation().cloned();
        let others: Vec<Bid> = self
            .bids
            .values()
            .filter(|b| probation.as_ref().is_none_or(|p| p.agent != b.agent))
            .cloned()
            .collect();
        let seats = self.seats - usize::from(probation.is_some());
        let mut award = auction::award(&others, seats, &self.weights);
        if let Some(newcomer) = probation {
            award.winners.insert(0, newcomer.agent);
        }
        if award.winners.is_empty() {
            self.phase = Phase::Done;
            return Next::Fail(format!(
                "no peer able to run it answered the collaboration proposal ({} invited, {} bids)",
                self.invited.len(),
                self.bids.len()
            ));
        }
        let solo = (award.winners.len() < self.seats).then(|| {
            format!(
                "only {} of {} peers needed answered before the bid deadline; ran solo",
                award.winners.len(),
                self.seats,
            )
        });
        // Alone, the best bid runs it, never a peer on probation.
        self.participants = if solo.is_some() {
            let all: Vec<Bid> = self.bids.values().cloned().collect();
            auction::award(&all, 1, &self.weights).winners
        } else {
            award.winners
        };
        self.phase = Phase::Executing {
            deadline_ms: now_ms.saturating_add(self.execution_ms),
        };
        Next::Assign {
            participants: self.participants.clone(),
            solo,
        }
    }

    fn decide(&mut self) -> Next {
        self.phase = Phase::Done;
        let missing: Vec<AgentId> = self
            .participants
            .iter()
            .filter(|p| !self.results.contains_key(*p))
            .cloned()
            .collect();
        if self.results.is_empty() {
            return Next::Fail(format!(
                "none of the {} seated peers answered in time",
                self.participants.len()
            ));
        }
        Next::Decide {
            results: std::mem::take(&mut self.results).into_iter().collect(),
            missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn a(id: &str) -> AgentId {
        AgentId::new(id)
    }

    fn bid(id: &str, reputation: f64) -> Bid {
        Bid {
            agent: a(id),
            capability_match: 1.0,
            free_load: 1.0,
            reputation,
        }
    }

    fn round(peers: &[&str], seats: usize) -> Round {
        Round::new(
            peers.iter().map(|p| a(p)),
            seats,
            BidWeights::default(),
            0,
            100,
            1000,
        )
    }

    #[test]
    fn the_best_bidders_are_seated_once_every_invited_peer_bid() {
        let mut r = round(&["p1", "p2", "p3", "p4"], 3);
        assert_eq!(r.bid(bid("p1", 0.9), 100, 10), Next::Wait);
        assert_eq!(r.bid(bid("p2", 0.2), 100, 11), Next::Wait);
        assert_eq!(r.bid(bid("stranger", 1.0), 100, 12), Next::Wait);
        assert_eq!(r.bid(bid("p3", 0.8), 100, 13), Next::Wait);
        let Next::Assign { participants, solo } = r.bid(bid("p4", 0.7), 100, 14) else {
            panic!("the auction closes when every invited peer bid");
        };
        assert_eq!(participants, vec![a("p1"), a("p3"), a("p4")]);
        assert_eq!(solo, None);
    }

    #[test]
    fn a_peer_on_probation_takes_one_seat_ahead_of_proven_peers() {
        let mut r = Round::new(
            ["p1", "p2", "p3", "new"].map(a),
            2,
            BidWeights::default(),
            3,
            100,
            1000,
        );
        r.bid(bid("p1", 0.9), 50, 1);
        r.bid(bid("p2", 0.8), 50, 2);
        r.bid(bid("p3", 0.7), 50, 3);
        let Next::Assign { participants, .. } = r.bid(bid("new", 0.1), 1, 4) else {
            panic!("every invited peer bid");
        };
        assert_eq!(participants, vec![a("new"), a("p1")]);
    }

    #[test]
    fn too_few_bids_by_the_deadline_fall_back_to_solo() {
        let mut r = round(&["p1", "p2", "p3"], 3);
        r.bid(bid("p2", 0.5), 100, 10);
        assert_eq!(r.tick(99), Next::Wait);
        let Next::Assign { participants, solo } = r.tick(100) else {
            panic!("the bid deadline closes the auction");
        };
        assert_eq!(participants, vec![a("p2")]);
        assert_eq!(
            solo.as_deref(),
            Some("only 1 of 3 peers needed answered before the bid deadline; ran solo")
        );
        assert_eq!(r.bid(bid("p1", 0.9), 100, 101), Next::Wait, "too late");
    }

    #[test]
    fn results_are_decided_when_all_are_in_or_the_deadline_passed() {
        let mut r = round(&["p1", "p2", "p3"], 3);
        for p in ["p1", "p2", "p3"] {
            r.bid(bid(p, 0.5), 100, 10);
        }
        assert_eq!(r.result(&a("p1"), Ok(json!(1)), 20), Next::Wait);
        assert_eq!(
            r.result(&a("p1"), Ok(json!(9)), 21),
            Next::Wait,
            "first answer counts"
        );
        assert_eq!(r.result(&a("p2"), Err("boom".into()), 22), Next::Wait);
        let Next::Decide { results, missing } = r.tick(10 + 1000) else {
            panic!("the execution deadline decides");
        };
        assert_eq!(
            results,
            vec![(a("p1"), Ok(json!(1))), (a("p2"), Err("boom".into()))]
        );
        assert_eq!(missing, vec![a("p3")]);
    }

    #[test]
    fn a_solo_run_goes_to_the_best_bid_not_to_a_peer_on_probation() {
        let mut r = Round::new(["p1", "new"].map(a), 3, BidWeights::default(), 3, 100, 1000);
        r.bid(bid("p1", 0.9), 50, 1);
        let Next::Assign { participants, solo } = r.bid(bid("new", 0.1), 0, 2) else {
            panic!("every invited peer bid");
        };
        assert!(solo.is_some());
        assert_eq!(participants, vec![a("p1")]);
    }

    #[test]
    fn a_round_nobody_answers_fails_with_a_reason() {
        let mut r = round(&["p1"], 1);
        let Next::Fail(reason) = r.tick(100) else {
            panic!("no bids fails the round");
        };
        assert!(reason.contains("no peer"), "{reason}");
        let mut r = round(&["p1"], 1);
        r.bid(bid("p1", 0.5), 100, 1);
        assert!(matches!(r.tick(2000), Next::Fail(reason) if reason.contains("in time")));
    }
}
