//! The agents: each an actor with a bounded mailbox on the node's router.

pub mod authority;
pub mod coordinator;
pub mod faults;
pub mod hierarchy;
pub mod peer;
pub mod report;
pub mod strategic;
pub mod tactical;
pub mod worker;
