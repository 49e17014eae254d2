//! Identifier newtypes, so an agent id is never passed where a task id is
//! expected.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        // Hash, Eq and Ord are derived from the inner String, so they agree
        // with str's: maps keyed by the id can be searched with a &str.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }
    };
}

string_id!(
    /// Cluster-wide unique id of an agent (an actor with a mailbox).
    AgentId
);
string_id!(
    /// Cluster-wide unique id of a submitted task.
    TaskId
);
string_id!(
    /// Id of a subtask, unique within its task (the `id` of a task-file entry).
    SubtaskId
);

/// One attempt of one subtask under one leadership term: what a result must
/// name to be applied and what a cancellation stops. A new leader may reuse
/// an attempt number whose record the old leader never wrote, so the term
/// is part of the identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId {
    pub task: TaskId,
    pub subtask: SubtaskId,
    /// The leader's fence revision when the attempt was assigned.
    pub term: i64,
    pub attempt: u32,
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.task, self.subtask, self.term, self.attempt
        )
    }
}
