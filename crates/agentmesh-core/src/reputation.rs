//! How much an agent is trusted for one capability: a Beta(α, β) belief
//! about the chance that its next result agrees with the consensus.
//!
//! The record is plain data, stored per agent and capability (with etcd,
//! under `keys::reputation`) and changed only by compare-and-swap, so
//! concurrent coordinators lose no update.

use serde::{Deserialize, Serialize};

/// The uninformed prior: Beta(1, 1), a score of 0.5.
pub const PRIOR: f64 = 1.0;

/// One agent's reputation for one capability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reputation {
    /// Evidence for: agreements with the consensus, plus the prior.
    pub alpha: f64,
    /// Evidence against: dissents, failures and timeouts, plus the prior.
    pub beta: f64,
    /// When the evidence was last updated (ms since the Unix epoch); decay
    /// is applied from here.
    pub updated_ms: u64,
    /// Updates applied so far; lets tests and operators see that no
    /// concurrent update was lost.
    #[serde(default)]
    pub updates: u64,
}

impl Reputation {
    /// The prior, as of `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            alpha: PRIOR,
            beta: PRIOR,
            updated_ms: now_ms,
            updates: 0,
        }
    }

    /// The mean of the belief, in (0, 1).
    pub fn score(&self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }
}
