//! `peer_consensus`: each subtask goes to a proposing peer, which seats
//! `redundancy` peers by sealed bids and agrees on one output with the
//! task's `consensus` algorithm (the round itself: `core::collaboration`,
//! `core::consensus`, `core::auction`).

use super::{PatternRules, check_flat_tasks};
use crate::Role;
use crate::task::file::{Pattern, TaskFile};
use crate::task::limits::TaskLimits;
use crate::task::validate::TaskFileError;

#[derive(Debug)]
pub struct PeerConsensus;

impl PatternRules for PeerConsensus {
    fn pattern(&self) -> Pattern {
        Pattern::PeerConsensus
    }

    fn fields(&self) -> &'static [&'static str] {
        &["redundancy", "consensus"]
    }

    fn runner(&self) -> Role {
        Role::Peer
    }

    fn runner_name(&self) -> &'static str {
        "peer"
    }

    fn check_shape(&self, file: &mut TaskFile, limits: &TaskLimits) -> Result<(), TaskFileError> {
        check_flat_tasks(file, limits)?;
        check_collaboration(file, limits)
    }
}

/// Peers per subtask when a `peer_consensus` task does not say.
pub const DEFAULT_REDUNDANCY: u32 = 3;
/// The consensus algorithms a task may ask for.
pub const CONSENSUS_ALGORITHMS: [&str; 4] =
    ["voting", "reputation_weighted", "quality_based", "hybrid"];

/// Fills in `redundancy` and `consensus` and checks them.
fn check_collaboration(file: &mut TaskFile, limits: &TaskLimits) -> Result<(), TaskFileError> {
    let redundancy = *file.redundancy.get_or_insert(DEFAULT_REDUNDANCY);
    if redundancy == 0 || redundancy > limits.max_redundancy {
        return Err(TaskFileError::invalid(
            "redundancy",
            format!(
                "must be between 1 and {} peers, got {redundancy}",
                limits.max_redundancy
            ),
        ));
    }
    let algorithm = file.consensus.get_or_insert_with(|| "hybrid".to_owned());
    if !CONSENSUS_ALGORITHMS.contains(&algorithm.as_str()) {
        return Err(TaskFileError::invalid(
            "consensus",
            format!(
                "unknown algorithm '{algorithm}' (known: {})",
                CONSENSUS_ALGORITHMS.join(", ")
            ),
        ));
    }
    Ok(())
}
