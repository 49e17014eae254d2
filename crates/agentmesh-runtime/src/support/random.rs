//! Randomness where the runtime needs a little (retry jitter, fault
//! injection, auction sampling): no generator state to share, no crate.

use std::hash::{BuildHasher, RandomState};

/// A fresh number in [0, 1). `RandomState` is seeded per process and per
/// call from the OS, which is all these uses need.
pub fn unit() -> f64 {
    let bits = RandomState::new().hash_one(std::time::Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
