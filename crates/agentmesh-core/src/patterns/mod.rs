//! Task patterns, one module each: what a pattern's task file may hold,
//! which agents run its subtasks, and what the coordinator schedules for
//! it. Validation, placement and the record ask the pattern's
//! [`PatternRules`] instead of matching on [`Pattern`], so a new pattern is
//! one module here plus one line in [`PATTERNS`] (and, if it needs them,
//! its own task-file fields and agents).

mod coordinator_worker;
mod hierarchical;
mod peer_consensus;
pub mod reactive;

pub use self::coordinator_worker::CoordinatorWorker;
pub use self::hierarchical::Hierarchical;
pub use self::peer_consensus::{CONSENSUS_ALGORITHMS, DEFAULT_REDUNDANCY, PeerConsensus};
pub use self::reactive::{ANSWER, Reactive, cache_options, choose};
use crate::task::file::{Pattern, SubtaskSpec, TaskFile};
use crate::task::limits::TaskLimits;
use crate::task::validate::{Dag, TaskFileError};
use crate::{Membership, Role};

/// What one task pattern decides.
pub trait PatternRules: Sync {
    fn pattern(&self) -> Pattern;

    /// Task-file fields only this pattern uses; another pattern's task
    /// that sets one is refused.
    fn fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// The role of the agents that run this pattern's subtasks: the pool
    /// the coordinator places them in, and whose capabilities validation
    /// checks.
    fn runner(&self) -> Role;

    /// How errors name those agents.
    fn runner_name(&self) -> &'static str;

    /// Counts and pattern fields, with their defaults filled in; runs
    /// before the subtasks are checked.
    fn check_shape(&self, file: &mut TaskFile, limits: &TaskLimits) -> Result<(), TaskFileError>;

    /// The subtasks: ids, dependencies, references, capabilities (`dag`
    /// holds the shared checks), normalised for the strategy.
    fn check_tasks(&self, file: &mut TaskFile, dag: &Dag<'_>) -> Result<(), TaskFileError> {
        dag.check(&mut file.tasks)
    }

    /// Agents that must be live beyond those offering the subtasks'
    /// capabilities (gRPC `FAILED_PRECONDITION` when they are not).
    fn check_cluster(&self, _membership: &Membership) -> Result<(), TaskFileError> {
        Ok(())
    }

    /// What the coordinator schedules for a validated file.
    fn subtasks(&self, file: &TaskFile) -> Vec<SubtaskSpec> {
        file.tasks.clone()
    }

    /// Whether subtask inputs go to their runners as written, rather than
    /// with their `{{id.field}}` references resolved by the coordinator.
    fn input_as_written(&self) -> bool {
        false
    }
}

/// Every pattern this cluster runs: one line per pattern.
pub static PATTERNS: &[&dyn PatternRules] =
    &[&CoordinatorWorker, &PeerConsensus, &Hierarchical, &Reactive];

/// The rules of `pattern`, if this cluster runs it.
pub fn rules(pattern: Pattern) -> Option<&'static dyn PatternRules> {
    PATTERNS
        .iter()
        .copied()
        .find(|rules| rules.pattern() == pattern)
}

/// The names of the patterns this cluster runs.
pub fn supported() -> Vec<&'static str> {
    PATTERNS
        .iter()
        .map(|rules| rules.pattern().as_str())
        .collect()
}

/// The pattern a task-file field belongs to, if only one uses it.
pub fn owner_of(field: &str) -> Option<Pattern> {
    PATTERNS
        .iter()
        .find(|rules| rules.fields().contains(&field))
        .map(|rules| rules.pattern())
}

/// Checks shared by the patterns whose subtasks are one flat `tasks`
/// list: at least one, at most `max_subtasks`.
fn check_flat_tasks(file: &TaskFile, limits: &TaskLimits) -> Result<(), TaskFileError> {
    if file.tasks.is_empty() {
        return Err(TaskFileError::invalid(
            "tasks",
            "must list at least one task",
        ));
    }
    if file.tasks.len() > limits.max_subtasks {
        return Err(TaskFileError::invalid(
            "tasks",
            format!(
                "lists {} tasks, over the limit of {}",
                file.tasks.len(),
                limits.max_subtasks
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_is_registered_once_and_owns_its_fields() {
        let mut seen = Vec::new();
        for registered in PATTERNS {
            let pattern = registered.pattern();
            assert!(!seen.contains(&pattern), "{pattern} twice");
            seen.push(pattern);
            assert_eq!(rules(pattern).map(|r| r.pattern()), Some(pattern));
        }
        assert_eq!(owner_of("redundancy"), Some(Pattern::PeerConsensus));
        assert_eq!(owner_of("objectives"), Some(Pattern::Hierarchical));
        assert_eq!(owner_of("request"), Some(Pattern::Reactive));
        assert_eq!(owner_of("tasks"), None);
        assert!(rules(Pattern::Workflow).is_none());
    }
}
