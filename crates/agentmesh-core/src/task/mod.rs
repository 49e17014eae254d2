//! The task model: the task file a user submits, its validation into a plan,
//! `{{id.field}}` references between subtasks, and the durable task record
//! whose state machine the coordinator drives.

pub mod budget;
pub mod file;
pub mod limits;
pub mod listing;
pub mod message;
pub mod record;
pub mod reference;
pub mod validate;

pub use budget::{BudgetError, RecordLimits};
pub use file::{Pattern, Strategy, SubtaskSpec, TaskFile};
pub use limits::TaskLimits;
pub use record::{AppliedResult, Status, SubtaskRecord, TaskRecord};
pub use validate::{TaskFileError, parse_and_validate, validate};
