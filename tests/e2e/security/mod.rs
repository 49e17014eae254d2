//! Secure by default: each module tries one forgery or misuse against a
//! real cluster on real etcd, asserts it is refused with a precise error,
//! and that an honest task still completes with the right value.

mod etcd;
mod fault_injection;
mod http_get;
mod mtls;
mod tokens;
