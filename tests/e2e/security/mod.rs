//! Security: each module tries one kind of forgery or misuse against a
//! real cluster and asserts it is refused with a precise status while an
//! honest task still completes with the right value.
//!
//! * `tokens`: client bearer tokens and roles on the client API.

mod tokens;
