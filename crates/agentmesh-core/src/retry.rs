//! How often, and after how long, a failed subtask is tried again.
//!
//! Subtasks that fail together (a worker crashing under many attempts, a
//! dependency going down) would otherwise come back together and hit the
//! cluster in one burst, so the delay grows exponentially and is spread with
//! "equal jitter": half of the backoff is fixed, the other half scaled by a
//! random factor. The fixed half keeps a retry from coming back almost at
//! once, which full jitter allows.
//!
//! The policy is pure: the caller passes the generator the jitter is drawn
//! from, so a seeded one makes every delay reproducible in tests.

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::ids::AgentId;

/// The retry budget of one subtask and the backoff between its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included; 1 means no retry.
    pub max_attempts: u32,
    /// Backoff after the first failed attempt.
    pub base_delay_ms: u64,
    /// Cap on the backoff, however many attempts failed.
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay_ms: 100,
            max_delay_ms: 5_000,
        }
    }
}

impl RetryPolicy {
    /// A policy needs at least one attempt and a base delay of at least
    /// 1 ms that does not exceed the cap.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry max_attempts must be at least 1".into());
        }
        if self.base_delay_ms == 0 {
            return Err("retry base_delay_ms must be at least 1".into());
        }
        if self.base_delay_ms > self.max_delay_ms {
            return Err(format!(
                "retry base_delay_ms ({}) must not exceed max_delay_ms ({})",
                self.base_delay_ms, self.max_delay_ms
            ));
        }
        Ok(())
    }

    /// Whether a subtask that has made `attempts_made` attempts may make
    /// another.
    pub fn allows(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts
    }

    /// The backoff after attempt `failed_attempt` (1-based) failed, before
    /// jitter: `base * 2^(failed_attempt - 1)`, capped at `max_delay_ms`.
    /// Saturates to the cap instead of overflowing, whatever the attempt.
    pub fn backoff_ms(&self, failed_attempt: u32) -> u64 {
        let doublings = failed_attempt.saturating_sub(1);
        2u64.checked_pow(doublings)
            .and_then(|factor| self.base_delay_ms.checked_mul(factor))
            .map_or(self.max_delay_ms, |delay| delay.min(self.max_delay_ms))
    }

    /// The delay before the next attempt after attempt `failed_attempt`
    /// (1-based) failed, with equal jitter drawn from `rng`: see
    /// [`RetryPolicy::delay_with_jitter_ms`].
    pub fn delay_ms<R: Rng + ?Sized>(&self, failed_attempt: u32, rng: &mut R) -> u64 {
        self.delay_with_jitter_ms(failed_attempt, rng.random::<f64>())
    }

    /// The delay before the next attempt after attempt `failed_attempt`
    /// (1-based) failed, with equal jitter: the upper half of the backoff
    /// is always waited, the lower half scaled by `jitter`.
    ///
    /// `jitter` is a uniform draw from [0, 1); values outside are clamped
    /// and NaN counts as 0, so a bad draw cannot shorten or stretch the wait
    /// beyond [backoff / 2, backoff]. For a fixed `jitter` the delay never
    /// decreases as attempts fail.
    pub fn delay_with_jitter_ms(&self, failed_attempt: u32, jitter: f64) -> u64 {
        let backoff = self.backoff_ms(failed_attempt);
        let half = backoff / 2;
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        // Beyond 2^53 the float product may round above `half`; the `min`
        // keeps the bound (and monotonicity, as every step is monotone).
        let spread = ((half as f64 * jitter) as u64).min(half);
        backoff - half + spread
    }
}

/// A subtask ran out of attempts.
///
/// Carries every worker tried, in attempt order with repeats, because the
/// pattern tells an operator whether one bad worker or the subtask itself is
/// at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "subtask '{subtask}' failed after {attempts} attempt{}{}; last cause: {last_cause}",
    plural(*.attempts),
    on_workers(.workers_tried)
)]
pub struct RetriesExhausted {
    pub subtask: String,
    pub attempts: u32,
    pub workers_tried: Vec<AgentId>,
    pub last_cause: String,
}

fn plural(count: u32) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn on_workers(workers: &[AgentId]) -> String {
    match workers {
        [] => String::new(),
        [only] => format!(" on worker {only}"),
        all => {
            let names: Vec<&str> = all.iter().map(AgentId::as_str).collect();
            format!(" on workers {}", names.join(", "))
        }
    }
}

/// The final failure message of a subtask whose retry budget is exhausted,
/// e.g. `subtask 'fetch' failed after 3 attempts on workers worker-a,
/// worker-b, worker-a; last cause: worker 'worker-a' left the cluster`.
pub fn exhausted_message(
    subtask: &str,
    attempts: u32,
    workers_tried: &[AgentId],
    last_cause: &str,
) -> String {
    RetriesExhausted {
        subtask: subtask.to_owned(),
        attempts,
        workers_tried: workers_tried.to_vec(),
        last_cause: last_cause.to_owned(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn policy(base: u64, max: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay_ms: base,
            max_delay_ms: max,
        }
    }

    #[test]
    fn default_policy_is_three_attempts_from_100ms_to_5s() {
        let p = RetryPolicy::default();
        assert_eq!(
            (p.max_attempts, p.base_delay_ms, p.max_delay_ms),
            (3, 100, 5_000)
        );
        assert!(p.validate().is_ok());
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_fields() {
        let p: RetryPolicy = serde_saphyr::from_str("max_attempts: 5").unwrap();
        assert_eq!(
            p,
            RetryPolicy {
                max_attempts: 5,
                ..RetryPolicy::default()
            }
        );
        assert!(serde_saphyr::from_str::<RetryPolicy>("attempts: 5").is_err());
    }

    #[test]
    fn validate_rejects_impossible_policies() {
        let ok = RetryPolicy::default();
        for bad in [
            RetryPolicy {
                max_attempts: 0,
                ..ok
            },
            RetryPolicy {
                base_delay_ms: 0,
                ..ok
            },
            RetryPolicy {
                base_delay_ms: 6_000,
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn budget_counts_the_first_attempt() {
        let p = RetryPolicy::default();
        assert!(p.allows(0));
        assert!(p.allows(2));
        assert!(!p.allows(3));
        assert!(
            !RetryPolicy {
                max_attempts: 1,
                ..p
            }
            .allows(1)
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy(100, 1_000);
        let backoffs: Vec<u64> = (1..=6).map(|n| p.backoff_ms(n)).collect();
        assert_eq!(backoffs, [100, 200, 400, 800, 1_000, 1_000]);
        // Attempt 0 is not a failed attempt; it is read as the first.
        assert_eq!(p.backoff_ms(0), 100);
    }

    #[test]
    fn huge_attempt_numbers_saturate_at_the_cap() {
        let p = policy(u64::MAX / 4, u64::MAX);
        assert_eq!(p.backoff_ms(3), u64::MAX / 4 * 4);
        assert_eq!(p.backoff_ms(4), u64::MAX);
        assert_eq!(p.backoff_ms(u32::MAX), u64::MAX);
        let delay = p.delay_with_jitter_ms(u32::MAX, 0.999_999);
        assert!(delay > u64::MAX / 4 * 3, "jitter near 1 waits near the cap");
        assert_eq!(
            p.delay_with_jitter_ms(u32::MAX, 0.0),
            u64::MAX - u64::MAX / 2
        );
    }

    #[test]
    fn equal_jitter_keeps_half_the_backoff() {
        let p = policy(100, 5_000);
        assert_eq!(p.delay_with_jitter_ms(1, 0.0), 50);
        assert_eq!(p.delay_with_jitter_ms(1, 0.5), 75);
        assert_eq!(p.delay_with_jitter_ms(3, 0.0), 200);
        assert_eq!(p.delay_with_jitter_ms(3, 0.99), 398);
        // Bad draws are clamped rather than trusted.
        assert_eq!(p.delay_with_jitter_ms(1, f64::NAN), 50);
        assert_eq!(p.delay_with_jitter_ms(1, -3.0), 50);
        assert_eq!(p.delay_with_jitter_ms(1, 7.0), 100);
    }

    #[test]
    fn jitter_drawn_from_a_seeded_generator_is_reproducible_and_spread() {
        let p = policy(1_000, 5_000);
        let draws = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200)
                .map(|_| p.delay_ms(1, &mut rng))
                .collect::<Vec<u64>>()
        };
        let delays = draws(7);
        assert_eq!(delays, draws(7), "the same seed gives the same delays");
        assert!(
            delays.iter().all(|d| (500..=1_000).contains(d)),
            "{delays:?}"
        );
        // The draws spread over the whole jittered range rather than
        // bunching: both of its halves are used.
        assert!(delays.iter().any(|&d| d < 750) && delays.iter().any(|&d| d >= 750));
        let distinct: std::collections::HashSet<u64> = delays.iter().copied().collect();
        assert!(
            distinct.len() > 100,
            "{} distinct delays of 200",
            distinct.len()
        );
    }

    #[test]
    fn exhausted_message_lists_workers_in_attempt_order() {
        let tried = [
            AgentId::new("worker-a"),
            AgentId::new("worker-b"),
            AgentId::new("worker-a"),
        ];
        assert_eq!(
            exhausted_message("fetch", 3, &tried, "worker 'worker-a' left the cluster"),
            "subtask 'fetch' failed after 3 attempts on workers worker-a, worker-b, \
             worker-a; last cause: worker 'worker-a' left the cluster"
        );
        assert_eq!(
            exhausted_message("fetch", 1, &tried[..1], "timed out"),
            "subtask 'fetch' failed after 1 attempt on worker worker-a; last cause: timed out"
        );
        assert_eq!(
            exhausted_message("fetch", 0, &[], "no worker offers 'x'"),
            "subtask 'fetch' failed after 0 attempts; last cause: no worker offers 'x'"
        );
    }

    fn policy_strategy() -> impl Strategy<Value = RetryPolicy> {
        // Bases from 1 ms to beyond any sane value, so overflow is exercised.
        (1u64..=u64::MAX / 2, 0u32..70)
            .prop_flat_map(|(base, shift)| {
                let max = base.saturating_mul(1u64 << shift.min(63));
                (Just(base), base..=max)
            })
            .prop_map(|(base, max)| RetryPolicy {
                max_attempts: 3,
                base_delay_ms: base,
                max_delay_ms: max,
            })
    }

    fn small_policy_strategy() -> impl Strategy<Value = RetryPolicy> {
        (1u64..10_000, 0u64..1_000_000).prop_map(|(base, extra)| RetryPolicy {
            max_attempts: 3,
            base_delay_ms: base,
            max_delay_ms: base + extra,
        })
    }

    proptest! {
        #[test]
        fn delay_stays_within_half_and_full_backoff(
            p in prop_oneof![policy_strategy(), small_policy_strategy()],
            attempt in 0u32..200,
            jitter in 0.0f64..1.0,
        ) {
            prop_assert!(p.validate().is_ok());
            let backoff = p.base_delay_ms
                .checked_mul(2u64.checked_pow(attempt.saturating_sub(1)).unwrap_or(u64::MAX))
                .map_or(p.max_delay_ms, |b| b.min(p.max_delay_ms));
            prop_assert_eq!(p.backoff_ms(attempt), backoff);
            let delay = p.delay_with_jitter_ms(attempt, jitter);
            prop_assert!(delay >= backoff / 2, "{} < {}/2", delay, backoff);
            prop_assert!(delay <= backoff);
            prop_assert!(delay <= p.max_delay_ms);
        }

        #[test]
        fn delay_never_decreases_with_the_attempt(
            p in prop_oneof![policy_strategy(), small_policy_strategy()],
            attempt in 0u32..200,
            jitter in 0.0f64..1.0,
        ) {
            prop_assert!(p.delay_with_jitter_ms(attempt, jitter) <= p.delay_with_jitter_ms(attempt + 1, jitter));
        }
    }
}
