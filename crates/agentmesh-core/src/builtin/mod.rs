//! Algorithms behind the built-in tools `math.eval`, `text.word_count` and
//! `json.query`.
//!
//! They live in core rather than beside the tool wrappers because they are
//! pure functions over strings and JSON values: no IO, no async, no actor
//! state. Keeping them here lets them be unit- and property-tested in
//! isolation, lets every crate that exposes or simulates a tool reuse the
//! same implementation, and leaves the wrappers with nothing to do but
//! decode arguments and encode results.

pub mod expr;
pub mod json_query;
pub mod word_count;
