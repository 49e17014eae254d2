//! The agents: each an actor with a bounded mailbox on the node's router.

pub mod coordinator;
pub mod faults;
pub mod level;
pub mod peer;
pub mod report;
pub mod worker;
