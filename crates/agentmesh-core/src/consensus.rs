//! Result consensus among k redundant executions of one subtask.
//!
//! One agent's answer may be wrong (a bug, a bad model, a lying peer), so a
//! subtask can run on several agents and the answers are reconciled here:
//! they are grouped into clusters of [`equivalent`] results, each ballot is
//! given a weight by the algorithm, and the heaviest cluster wins when its
//! share of the total weight exceeds the quorum.
//!
//! The share the winner gets is the consensus quality. A thin win is not
//! trusted: when it is below `min_quality`, the guide's rule applies ("if
//! consensus quality < 0.6, try hybrid"), and hybrid tries the algorithms
//! in a fixed order until one is convincing:
//!
//! ```text
//!   requested ──share ≥ min_quality──▶ decided
//!       │ below, or no quorum
//!       ▼
//!   hybrid: voting ─▶ reputation_weighted ─▶ quality_based
//!           (first with share ≥ min_quality decides; if none does, the
//!            highest share that reached quorum; if none did, no agreement)
//! ```
//!
//! Everything is deterministic: clusters follow input order, comparisons of
//! shares allow for rounding, and a tie between the heaviest clusters is no
//! agreement rather than a coin flip, so every coordinator that sees the
//! same ballots, in any order, reaches the same verdict.

mod equivalence;
mod quality;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::AgentId;

pub use equivalence::{clusters, equivalent};
pub use quality::{DefaultQuality, QualityScorer};

/// Shares within this of each other are equal. Sums of the same weights in
/// another order differ in the last bits; without the margin, shuffling the
/// ballots could turn a tie into a win or a bare quorum into none.
const SHARE_EPSILON: f64 = 1e-9;

/// How ballots are weighed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// One ballot, one vote.
    Voting,
    /// Each ballot weighs its agent's reputation for the capability.
    ReputationWeighted,
    /// Each ballot weighs the [`QualityScorer`]'s score of its output.
    QualityBased,
    /// Voting, then the others in turn while the agreement is too thin.
    Hybrid,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Voting,
        Algorithm::ReputationWeighted,
        Algorithm::QualityBased,
        Algorithm::Hybrid,
    ];

    /// The order in which hybrid tries the others.
    const HYBRID_ORDER: [Algorithm; 3] = [
        Algorithm::Voting,
        Algorithm::ReputationWeighted,
        Algorithm::QualityBased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Voting => "voting",
            Algorithm::ReputationWeighted => "reputation_weighted",
            Algorithm::QualityBased => "quality_based",
            Algorithm::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown consensus algorithm '{s}' \
                     (expected voting, reputation_weighted, quality_based or hybrid)"
                )
            })
    }
}

/// How consensus is reached, and how convincing it must be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsensusPolicy {
    pub algorithm: Algorithm,
    /// The share of the total weight a cluster must exceed to win; 0.5 is a
    /// strict majority.
    pub quorum: f64,
    /// Relative (and, near zero, absolute) tolerance of [`equivalent`].
    pub tolerance: f64,
    /// The least winning share that is trusted without falling back.
    pub min_quality: f64,
}

impl Default for ConsensusPolicy {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Hybrid,
            quorum: 0.5,
            tolerance: 1e-9,
            min_quality: 0.6,
        }
    }
}

impl ConsensusPolicy {
    /// `quorum` in `[0, 1)` (no share exceeds 1), `tolerance` finite and
    /// non-negative, `min_quality` in `[0, 1]`.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.quorum) {
            return Err(format!(
                "consensus quorum must be in [0, 1), got {}",
                self.quorum
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(format!(
                "consensus tolerance must be finite and non-negative, got {}",
                self.tolerance
            ));
        }
        if !(0.0..=1.0).contains(&self.min_quality) {
            return Err(format!(
                "consensus min_quality must be in [0, 1], got {}",
                self.min_quality
            ));
        }
        Ok(())
    }
}

/// One agent's result for the subtask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ballot {
    pub agent: AgentId,
    pub output: Value,
    /// The agent's reputation score for the subtask's capability, in (0, 1).
    /// Out-of-range values are clamped to `[0, 1]` and NaN counts as 0, so a
    /// corrupt record silences its agent rather than letting it dominate.
    pub reputation: f64,
}

/// How one ballot counted in the deciding algorithm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub agent: AgentId,
    pub weight: f64,
    /// Whether the ballot's output is in the winning cluster.
    pub agreed: bool,
}

/// The verdict, kept with the task's result so operators can see how it was
/// reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consensus {
    /// The winning cluster's first output in ballot order.
    pub output: Value,
    /// The algorithm that decided; differs from `requested` after a
    /// fall-back. Hybrid delegates, so this is never `Hybrid`, except for a
    /// single ballot: nothing was weighed and the request is reported.
    pub algorithm: Algorithm,
    pub requested: Algorithm,
    /// One per ballot, in ballot order.
    pub votes: Vec<Vote>,
    /// The winner's share of the total weight, in `[0, 1]`.
    pub agreement: f64,
    /// Agents whose output is not in the winning cluster, in ballot order.
    pub dissenters: Vec<AgentId>,
    /// Why the requested algorithm did not decide on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fell_back: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConsensusError {
    #[error("no ballots to reach consensus on")]
    NoBallots,
    /// One agent's result must not count twice; a retried execution on the
    /// same agent replaces its earlier ballot before consensus.
    #[error("agent {agent} cast more than one ballot")]
    DuplicateAgent { agent: AgentId },
    #[error("invalid consensus policy: {0}")]
    InvalidPolicy(String),
    #[error(
        "no agreement among {votes} votes in {clusters} clusters \
         (best share {best_share:.2})"
    )]
    NoAgreement {
        votes: usize,
        clusters: usize,
        best_share: f64,
    },
}

/// Reconciles the ballots of one subtask of `capability`.
///
/// A single ballot is its own consensus. Otherwise the requested algorithm
/// decides if its winner's share reaches `policy.min_quality`; if not (or
/// if it finds no winner), hybrid takes over as the module doc describes.
pub fn reach(
    capability: &str,
    ballots: &[Ballot],
    policy: &ConsensusPolicy,
    quality: &dyn QualityScorer,
) -> Result<Consensus, ConsensusError> {
    policy.validate().map_err(ConsensusError::InvalidPolicy)?;
    check_ballots(ballots)?;
    let round = Round {
        capability,
        ballots,
        clusters: clusters(ballots.iter().map(|b| &b.output), policy.tolerance),
        policy,
        quality,
    };
    if ballots.len() == 1 {
        return Ok(round.single());
    }
    if policy.algorithm == Algorithm::Hybrid {
        return round.hybrid(Algorithm::Hybrid, None, Vec::new());
    }
    let attempt = round.attempt(policy.algorithm);
    match attempt.verdict {
        Verdict::Won { cluster, share } if round.convincing(share) => {
            Ok(round.conclude(&attempt, cluster, share, policy.algorithm, None))
        }
        _ => {
            let notes = vec![round.describe(&attempt), "fell back to hybrid".to_owned()];
            round.hybrid(policy.algorithm, Some(attempt), notes)
        }
    }
}

fn check_ballots(ballots: &[Ballot]) -> Result<(), ConsensusError> {
    if ballots.is_empty() {
        return Err(ConsensusError::NoBallots);
    }
    let mut seen = HashSet::with_capacity(ballots.len());
    match ballots.iter().find(|b| !seen.insert(&b.agent)) {
        Some(b) => Err(ConsensusError::DuplicateAgent {
            agent: b.agent.clone(),
        }),
        None => Ok(()),
    }
}

/// What one algorithm made of the ballots.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Won { cluster: usize, share: f64 },
    NoQuorum { best_share: f64 },
}

impl Verdict {
    fn share(self) -> f64 {
        match self {
            Verdict::Won { share, .. } => share,
            Verdict::NoQuorum { best_share } => best_share,
        }
    }
}

#[derive(Debug, Clone)]
struct Attempt {
    algorithm: Algorithm,
    weights: Vec<f64>,
    verdict: Verdict,
}

/// The ballots of one subtask with everything the algorithms share.
struct Round<'a> {
    capability: &'a str,
    ballots: &'a [Ballot],
    clusters: Vec<Vec<usize>>,
    policy: &'a ConsensusPolicy,
    quality: &'a dyn QualityScorer,
}

impl Round<'_> {
    fn single(&self) -> Consensus {
        let requested = self.policy.algorithm;
        let weighed_by = match requested {
            Algorithm::Hybrid => Algorithm::Voting,
            other => other,
        };
        let attempt = Attempt {
            algorithm: requested,
            weights: self.weights(weighed_by),
            verdict: Verdict::Won {
                cluster: 0,
                share: 1.0,
            },
        };
        self.conclude(&attempt, 0, 1.0, requested, None)
    }

    /// Runs one of voting, reputation_weighted or quality_based.
    fn attempt(&self, algorithm: Algorithm) -> Attempt {
        let weights = self.weights(algorithm);
        let verdict = tally(&self.clusters, &weights, self.policy.quorum);
        Attempt {
            algorithm,
            weights,
            verdict,
        }
    }

    fn weights(&self, algorithm: Algorithm) -> Vec<f64> {
        self.ballots
            .iter()
            .map(|b| match algorithm {
                Algorithm::Voting | Algorithm::Hybrid => 1.0,
                Algorithm::ReputationWeighted => unit(b.reputation),
                Algorithm::QualityBased => unit(self.quality.score(self.capability, &b.output)),
            })
            .collect()
    }

    fn convincing(&self, share: f64) -> bool {
        share + SHARE_EPSILON >= self.policy.min_quality
    }

    /// Tries the algorithms in hybrid order. `earlier` is the requested
    /// algorithm's attempt when hybrid is a fall-back, reused rather than
    /// run and reported twice; `notes` already says why hybrid runs.
    fn hybrid(
        &self,
        requested: Algorithm,
        earlier: Option<Attempt>,
        mut notes: Vec<String>,
    ) -> Result<Consensus, ConsensusError> {
        if self.clusters.len() == 1 {
            return Ok(self.unanimous(requested, notes));
        }
        let mut tried = Vec::with_capacity(Algorithm::HYBRID_ORDER.len());
        for algorithm in Algorithm::HYBRID_ORDER {
            if let Some(done) = earlier.as_ref().filter(|a| a.algorithm == algorithm) {
                tried.push(done.clone());
                continue;
            }
            let attempt = self.attempt(algorithm);
            if let Verdict::Won { cluster, share } = attempt.verdict
                && self.convincing(share)
            {
                if !notes.is_empty() {
                    notes.push(format!("{algorithm} decided with agreement {share:.2}"));
                }
                return Ok(self.conclude(&attempt, cluster, share, requested, explain(notes)));
            }
            notes.push(self.describe(&attempt));
            tried.push(attempt);
        }
        self.best_of(&tried, requested, notes)
    }

    /// All results are equivalent: every algorithm would pick the one
    /// cluster, and voting says so without consulting anything else.
    fn unanimous(&self, requested: Algorithm, mut notes: Vec<String>) -> Consensus {
        let voting = Attempt {
            algorithm: Algorithm::Voting,
            weights: self.weights(Algorithm::Voting),
            verdict: Verdict::Won {
                cluster: 0,
                share: 1.0,
            },
        };
        if !notes.is_empty() {
            notes.push("all results agree, voting decided".to_owned());
        }
        self.conclude(&voting, 0, 1.0, requested, explain(notes))
    }

    /// No algorithm was convincing: the highest share that still reached
    /// quorum is the best verdict available, preferring the earlier
    /// algorithm on a tie so the choice does not depend on rounding.
    fn best_of(
        &self,
        tried: &[Attempt],
        requested: Algorithm,
        mut notes: Vec<String>,
    ) -> Result<Consensus, ConsensusError> {
        let best = tried
            .iter()
            .fold(None::<(&Attempt, usize, f64)>, |best, a| {
                match (a.verdict, best) {
                    (Verdict::Won { cluster, share }, Some((_, _, best_share)))
                        if share > best_share + SHARE_EPSILON =>
                    {
                        Some((a, cluster, share))
                    }
                    (Verdict::Won { cluster, share }, None) => Some((a, cluster, share)),
                    (_, best) => best,
                }
            });
        match best {
            Some((attempt, cluster, share)) => {
                notes.push(format!(
                    "no algorithm reached min_quality {:.2}, kept {} with the highest agreement {share:.2}",
                    self.policy.min_quality, attempt.algorithm
                ));
                Ok(self.conclude(attempt, cluster, share, requested, explain(notes)))
            }
            None => Err(ConsensusError::NoAgreement {
                votes: self.ballots.len(),
                clusters: self.clusters.len(),
                best_share: tried.iter().map(|a| a.verdict.share()).fold(0.0, f64::max),
            }),
        }
    }

    fn describe(&self, attempt: &Attempt) -> String {
        match attempt.verdict {
            Verdict::Won { share, .. } => format!(
                "{} agreement {share:.2} below min_quality {:.2}",
                attempt.algorithm, self.policy.min_quality
            ),
            Verdict::NoQuorum { best_share } => format!(
                "{} found no agreement (best share {best_share:.2}, quorum {:.2})",
                attempt.algorithm, self.policy.quorum
            ),
        }
    }

    fn conclude(
        &self,
        attempt: &Attempt,
        cluster: usize,
        share: f64,
        requested: Algorithm,
        fell_back: Option<String>,
    ) -> Consensus {
        let winners = &self.clusters[cluster];
        let mut agreed = vec![false; self.ballots.len()];
        for &i in winners {
            agreed[i] = true;
        }
        let votes: Vec<Vote> = self
            .ballots
            .iter()
            .zip(&attempt.weights)
            .zip(&agreed)
            .map(|((ballot, &weight), &agreed)| Vote {
                agent: ballot.agent.clone(),
                weight,
                agreed,
            })
            .collect();
        let dissenters = votes
            .iter()
            .filter(|v| !v.agreed)
            .map(|v| v.agent.clone())
            .collect();
        Consensus {
            output: self.ballots[winners[0]].output.clone(),
            algorithm: attempt.algorithm,
            requested,
            votes,
            agreement: share.clamp(0.0, 1.0),
            dissenters,
            fell_back,
        }
    }
}

/// The heaviest cluster wins if it is alone at the top and its share
/// exceeds `quorum`. With no weight at all (every reputation or quality 0)
/// nobody wins: there is no evidence to decide on.
fn tally(clusters: &[Vec<usize>], weights: &[f64], quorum: f64) -> Verdict {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return Verdict::NoQuorum { best_share: 0.0 };
    }
    let shares: Vec<f64> = clusters
        .iter()
        .map(|members| members.iter().map(|&i| weights[i]).sum::<f64>() / total)
        .collect();
    let Some((best, best_share)) = shares
        .iter()
        .copied()
        .enumerate()
        .reduce(|best, next| if next.1 > best.1 { next } else { best })
    else {
        return Verdict::NoQuorum { best_share: 0.0 };
    };
    let tied = shares
        .iter()
        .enumerate()
        .any(|(i, &share)| i != best && best_share - share <= SHARE_EPSILON);
    if tied || best_share - quorum <= SHARE_EPSILON {
        Verdict::NoQuorum { best_share }
    } else {
        Verdict::Won {
            cluster: best,
            share: best_share,
        }
    }
}

fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

fn explain(notes: Vec<String>) -> Option<String> {
    if notes.is_empty() {
        None
    } else {
        Some(notes.join("; "))
    }
}
