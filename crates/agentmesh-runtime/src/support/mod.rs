//! Small helpers the actors and the node share.

pub mod background;
pub mod clock;
pub mod feeds;
pub mod reputation;
