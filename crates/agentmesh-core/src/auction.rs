//! Sealed-bid auction of a role among peers.
//!
//! When peers collaborate, several may want the same role; the guide
//! resolves such conflicts "through an auction-like mechanism". Each peer
//! bids once, without seeing the others' bids, with what it knows about
//! itself (how well it offers the capability, how busy it is, how trusted
//! it is), and the best-scoring bids take the seats. Sealed bids need no
//! rounds of messages, and because the award is a pure function of the
//! bids, every peer that collects the same bids awards the same seats.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::ids::AgentId;

/// One peer's bid for a role.
///
/// Each term is expected in `[0, 1]`. Bids come from other peers, so a term
/// outside the range is clamped and NaN counts as 0: a broken or boastful
/// peer cannot outbid an honest one by sending 1e9.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bid {
    pub agent: AgentId,
    /// 1.0 when the peer offers exactly the capability; 0 never wins.
    pub capability_match: f64,
    /// `1 - load / max_concurrency`.
    pub free_load: f64,
    /// The peer's reputation for the capability.
    pub reputation: f64,
}

/// Weights of the three terms of a bid's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BidWeights {
    pub capability: f64,
    pub free_load: f64,
    pub reputation: f64,
}

impl Default for BidWeights {
    /// Capability and trust outweigh idleness: a free peer that does the
    /// job badly is a worse pick than a busy one that does it well.
    fn default() -> Self {
        Self {
            capability: 0.4,
            free_load: 0.2,
            reputation: 0.4,
        }
    }
}

impl BidWeights {
    /// Weights must be finite, non-negative and not all zero (otherwise
    /// every bid scores 0 and only the tie-break decides).
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("capability", self.capability),
            ("free_load", self.free_load),
            ("reputation", self.reputation),
        ];
        if let Some((name, w)) = all.iter().find(|(_, w)| !(w.is_finite() && *w >= 0.0)) {
            return Err(format!(
                "bid weight {name} must be finite and non-negative, got {w}"
            ));
        }
        if all.iter().all(|(_, w)| *w == 0.0) {
            return Err("bid weights must not all be zero".into());
        }
        Ok(())
    }
}

impl Bid {
    /// The weighted sum of the (clamped) terms. Weights that fail
    /// validation count as zero, so the score is always a finite number.
    pub fn score(&self, weights: &BidWeights) -> f64 {
        weight(weights.capability) * unit(self.capability_match)
            + weight(weights.free_load) * unit(self.free_load)
            + weight(weights.reputation) * unit(self.reputation)
    }

    /// A peer that does not offer the capability cannot take the role,
    /// however idle and trusted it is.
    pub fn eligible(&self) -> bool {
        self.capability_match > 0.0
    }
}

/// The outcome of an auction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Award {
    /// Highest score first; equal scores in agent id order.
    pub winners: Vec<AgentId>,
    /// Seats left unfilled for want of eligible bids.
    pub short_by: usize,
}

/// Awards up to `seats` seats to the best eligible bids.
///
/// A peer that bid more than once (a resend) counts with its best bid and
/// takes at most one seat.
pub fn award(bids: &[Bid], seats: usize, weights: &BidWeights) -> Award {
    let mut ranked: Vec<(f64, &AgentId)> = bids
        .iter()
        .filter(|b| b.eligible())
        .map(|b| (b.score(weights), &b.agent))
        .collect();
    ranked.sort_by(|a, b| by_rank(*a, *b));
    let mut seen = HashSet::new();
    let winners: Vec<AgentId> = ranked
        .into_iter()
        .filter(|(_, agent)| seen.insert(*agent))
        .take(seats)
        .map(|(_, agent)| agent.clone())
        .collect();
    Award {
        short_by: seats - winners.len(),
        winners,
    }
}

/// Higher score first, then lower agent id, so the order is total and the
/// same on every peer.
fn by_rank(a: (f64, &AgentId), b: (f64, &AgentId)) -> Ordering {
    b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
}

fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

fn weight(w: f64) -> f64 {
    if w.is_finite() && w > 0.0 { w } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn bid(agent: &str, capability_match: f64, free_load: f64, reputation: f64) -> Bid {
        Bid {
            agent: AgentId::new(agent),
            capability_match,
            free_load,
            reputation,
        }
    }

    fn winners(award: &Award) -> Vec<&str> {
        award.winners.iter().map(AgentId::as_str).collect()
    }

    #[test]
    fn default_weights_favour_capability_and_reputation() {
        let w = BidWeights::default();
        assert_eq!((w.capability, w.free_load, w.reputation), (0.4, 0.2, 0.4));
        assert!(w.validate().is_ok());
        assert!((bid("a", 1.0, 0.5, 0.5).score(&w) - 0.7).abs() < 1e-12);
    }

    #[test]
    fn weights_are_validated() {
        let zero = BidWeights {
            capability: 0.0,
            free_load: 0.0,
            reputation: 0.0,
        };
        assert!(zero.validate().unwrap_err().contains("all be zero"));
        let negative = BidWeights {
            free_load: -0.1,
            ..BidWeights::default()
        };
        assert!(negative.validate().unwrap_err().contains("free_load"));
        let nan = BidWeights {
            reputation: f64::NAN,
            ..BidWeights::default()
        };
        assert!(nan.validate().is_err());
        assert!(bid("a", 1.0, 1.0, 1.0).score(&nan).is_finite());
    }

    #[test]
    fn higher_reputation_beats_lower_otherwise_equal() {
        let bids = [bid("a", 1.0, 0.5, 0.4), bid("b", 1.0, 0.5, 0.9)];
        let award = award(&bids, 1, &BidWeights::default());
        assert_eq!(winners(&award), ["b"]);
        assert_eq!(award.short_by, 0);
    }

    #[test]
    fn equal_scores_are_ordered_by_agent_id() {
        let bids = [
            bid("c", 1.0, 0.5, 0.5),
            bid("a", 1.0, 0.5, 0.5),
            bid("b", 1.0, 0.5, 0.5),
        ];
        let w = BidWeights::default();
        assert_eq!(winners(&award(&bids, 2, &w)), ["a", "b"]);
        let reversed: Vec<Bid> = bids.iter().rev().cloned().collect();
        assert_eq!(award(&reversed, 2, &w), award(&bids, 2, &w));
    }

    #[test]
    fn too_few_bids_leave_seats_unfilled() {
        let bids = [bid("a", 1.0, 0.5, 0.5), bid("b", 0.0, 1.0, 1.0)];
        let award = award(&bids, 3, &BidWeights::default());
        assert_eq!(winners(&award), ["a"]);
        assert_eq!(award.short_by, 2);
        assert_eq!(super::award(&[], 0, &BidWeights::default()).short_by, 0);
    }

    #[test]
    fn peers_without_the_capability_never_win() {
        let bids = [
            bid("idle", 0.0, 1.0, 1.0),
            bid("broken", f64::NAN, 1.0, 1.0),
        ];
        let award = award(&bids, 1, &BidWeights::default());
        assert!(award.winners.is_empty());
        assert_eq!(award.short_by, 1);
    }

    #[test]
    fn boastful_terms_are_clamped() {
        let bids = [bid("boast", 1.0, 1e9, 1e9), bid("honest", 1.0, 1.0, 0.99)];
        let award = award(&bids, 1, &BidWeights::default());
        // A boast is worth no more than a perfect bid.
        assert!((bids[0].score(&BidWeights::default()) - 1.0).abs() < 1e-12);
        assert_eq!(winners(&award), ["boast"]);
        let bids = [
            bid("nan", 1.0, f64::NAN, f64::NAN),
            bid("zero", 1.0, 0.0, 0.0),
        ];
        assert_eq!(
            winners(&super::award(&bids, 2, &BidWeights::default())),
            ["nan", "zero"]
        );
    }

    #[test]
    fn a_resent_bid_takes_one_seat() {
        let bids = [
            bid("a", 1.0, 0.1, 0.5),
            bid("b", 1.0, 0.5, 0.5),
            bid("a", 1.0, 0.9, 0.5),
        ];
        let award = award(&bids, 3, &BidWeights::default());
        assert_eq!(winners(&award), ["a", "b"]);
        assert_eq!(award.short_by, 1);
    }

    fn bids() -> impl Strategy<Value = Vec<Bid>> {
        prop::collection::vec((0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0), 0..12).prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (c, f, r))| {
                    // Some bids offer no capability at all.
                    let c = if i % 4 == 3 { 0.0 } else { c };
                    bid(&format!("p{i:02}"), c, f, r)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn winners_are_the_top_scores(bids in bids(), seats in 0usize..8) {
            let w = BidWeights::default();
            let award = award(&bids, seats, &w);
            let eligible: Vec<&Bid> = bids.iter().filter(|b| b.eligible()).collect();
            prop_assert_eq!(award.winners.len(), seats.min(eligible.len()));
            prop_assert_eq!(award.short_by, seats - award.winners.len());
            let score_of = |agent: &AgentId| {
                eligible.iter().find(|b| &b.agent == agent).map(|b| b.score(&w))
            };
            let won: Vec<f64> = award.winners.iter().filter_map(score_of).collect();
            prop_assert_eq!(won.len(), award.winners.len());
            prop_assert!(won.windows(2).all(|p| p[0] >= p[1]));
            for loser in eligible.iter().filter(|b| !award.winners.contains(&b.agent)) {
                prop_assert!(won.iter().all(|&s| s >= loser.score(&w)));
            }
        }

        #[test]
        fn the_award_ignores_the_order_of_bids(
            (bids, shuffled) in bids().prop_flat_map(|b| (Just(b.clone()), Just(b).prop_shuffle())),
            seats in 0usize..8,
        ) {
            let w = BidWeights::default();
            prop_assert_eq!(award(&bids, seats, &w), award(&shuffled, seats, &w));
        }
    }
}
