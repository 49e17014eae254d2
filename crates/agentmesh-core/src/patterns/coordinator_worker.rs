//! `coordinator_worker`: the coordinator places each ready subtask of one
//! DAG on the best-scoring worker.

use super::{PatternRules, check_flat_tasks};
use crate::Role;
use crate::task::file::{Pattern, TaskFile};
use crate::task::limits::TaskLimits;
use crate::task::validate::TaskFileError;

#[derive(Debug)]
pub struct CoordinatorWorker;

impl PatternRules for CoordinatorWorker {
    fn pattern(&self) -> Pattern {
        Pattern::CoordinatorWorker
    }

    fn runner(&self) -> Role {
        Role::Worker
    }

    fn runner_name(&self) -> &'static str {
        "worker"
    }

    fn check_shape(&self, file: &mut TaskFile, limits: &TaskLimits) -> Result<(), TaskFileError> {
        check_flat_tasks(file, limits)
    }
}
