//! A circuit breaker per worker, so a worker that keeps failing stops
//! receiving subtasks for a while instead of burning their retry budgets.
//!
//! ```text
//!            failures_to_open consecutive failures
//!   Closed ─────────────────────────────────────────▶ Open { until }
//!     ▲                                                 │ now ≥ until
//!     │ success                                         ▼
//!     └──────────────────────────────────────── HalfOpen { probe_in_flight }
//!                   failure: Open again for another cool-down
//! ```
//!
//! Half-open lets exactly one attempt (the probe) through; its verdict
//! decides. The breaker sees verdicts without attempt identity, so the first
//! verdict after the probe's dispatch is taken as the probe's: a success or
//! failure of an older attempt is evidence about the worker all the same.
//!
//! Time comes in as `now_ms` on every call; nothing here reads a clock.
//!
//! Only faults of the worker count ([`Blame::Worker`]): it could not be
//! reached, it let an attempt time out, it crashed, or it reported an
//! internal error. A failure the task's own input caused ([`Blame::Task`]:
//! `1/0` in `math.eval`, a bad JSONPath, an output over the cap) says
//! nothing about the worker, and counting it would let any client take
//! every worker out of placement with a handful of bad tasks.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Whose fault a failed attempt is, which decides whether it counts
/// against the worker's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Blame {
    /// The task's own input: the same input fails on any worker, so it is
    /// neither retried elsewhere nor counted against the worker.
    Task,
    /// The worker: unreachable, timed out, crashed, or an internal error
    /// of its tool. Counted by the breaker; the attempt may succeed
    /// elsewhere.
    Worker,
}

impl Blame {
    /// Whether the failure counts against the worker's breaker.
    pub fn counts_against_worker(self) -> bool {
        self == Blame::Worker
    }
}

impl fmt::Display for Blame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Blame::Task => "task",
            Blame::Worker => "worker",
        })
    }
}

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long an open breaker refuses placements before it lets a probe
    /// through.
    pub cool_down_ms: u64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures_to_open: 5,
            cool_down_ms: 10_000,
        }
    }
}

impl BreakerPolicy {
    /// `failures_to_open` must be at least 1 (a breaker that opens with no
    /// failure would never close). A zero cool-down is allowed: the breaker
    /// then only limits a failing worker to one attempt at a time.
    pub fn validate(&self) -> Result<(), String> {
        if self.failures_to_open == 0 {
            return Err("breaker failures_to_open must be at least 1".into());
        }
        Ok(())
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Placements flow; failures in a row are counted.
    Closed { consecutive_failures: u32 },
    /// No placement until `until_ms`; then one probe.
    Open { until_ms: u64 },
    /// The cool-down is over: one probe at a time decides.
    HalfOpen { probe_in_flight: bool },
}

impl BreakerState {
    /// `closed`, `open` or `half-open`, as shown to operators.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half-open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The breaker of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: BreakerState,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(BreakerPolicy::default())
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            state: BreakerState::Closed {
                consecutive_failures: 0,
            },
        }
    }

    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// Replaces the policy and keeps the state; the new thresholds apply
    /// from the next event.
    pub fn set_policy(&mut self, policy: BreakerPolicy) {
        self.policy = policy;
    }

    /// The state as recorded. An `Open` state whose cool-down has passed is
    /// only conceptually half-open until [`CircuitBreaker::refresh`] or
    /// [`CircuitBreaker::on_dispatch`] makes it so.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether the breaker refuses placements at `now_ms`.
    pub fn is_open(&self, now_ms: u64) -> bool {
        matches!(self.state, BreakerState::Open { until_ms } if now_ms < until_ms)
    }

    /// Whether a subtask may be placed on the worker at `now_ms`. Reads
    /// only: an expired `Open` admits (the placement would be the probe)
    /// without turning half-open.
    pub fn admits(&self, now_ms: u64) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until_ms } => now_ms >= until_ms,
            BreakerState::HalfOpen { probe_in_flight } => !probe_in_flight,
        }
    }

    /// Turns an `Open` state whose cool-down has passed into half-open with
    /// no probe yet, so holders of many breakers can make the state they
    /// index by match what [`CircuitBreaker::admits`] says.
    pub fn refresh(&mut self, now_ms: u64) {
        if matches!(self.state, BreakerState::Open { until_ms } if now_ms >= until_ms) {
            self.state = BreakerState::HalfOpen {
                probe_in_flight: false,
            };
        }
    }

    /// Records that a subtask was placed on the worker. When the breaker
    /// admits only a probe, this placement is it, and no other is admitted
    /// until a verdict or [`CircuitBreaker::record_abandoned`].
    pub fn on_dispatch(&mut self, now_ms: u64) {
        self.refresh(now_ms);
        if let BreakerState::HalfOpen { .. } = self.state {
            self.state = BreakerState::HalfOpen {
                probe_in_flight: true,
            };
        }
    }

    /// An attempt on the worker succeeded: the worker works, whatever state
    /// the breaker was in, so it closes and the failure count restarts.
    pub fn record_success(&mut self, _now_ms: u64) {
        self.state = BreakerState::Closed {
            consecutive_failures: 0,
        };
    }

    /// An attempt on the worker failed.
    ///
    /// Closed counts it and opens at `failures_to_open`. Half-open re-opens
    /// for another cool-down (the probe failed). An open breaker hears of
    /// attempts placed before it opened; each is fresh evidence, so the
    /// cool-down restarts from `now_ms` unless it already ends later.
    pub fn record_failure(&mut self, now_ms: u64) {
        let reopen = now_ms.saturating_add(self.policy.cool_down_ms);
        self.state = match self.state {
            BreakerState::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= self.policy.failures_to_open.max(1) {
                    BreakerState::Open { until_ms: reopen }
                } else {
                    BreakerState::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            BreakerState::HalfOpen { .. } => BreakerState::Open { until_ms: reopen },
            BreakerState::Open { until_ms } => BreakerState::Open {
                until_ms: until_ms.max(reopen),
            },
        };
    }

    /// The worker could not be reached at all (its connection broke, or a
    /// delivery was refused at the transport): open at once for a
    /// cool-down, whatever the count. Waiting for `failures_to_open` such
    /// failures would only send more attempts into the void.
    pub fn trip(&mut self, now_ms: u64) {
        let reopen = now_ms.saturating_add(self.policy.cool_down_ms);
        self.state = match self.state {
            BreakerState::Open { until_ms } => BreakerState::Open {
                until_ms: until_ms.max(reopen),
            },
            _ => BreakerState::Open { until_ms: reopen },
        };
    }

    /// An attempt ended without a verdict (cancelled, worker lost): it says
    /// nothing about the worker, so counts stay; a half-open probe's slot is
    /// freed for the next probe.
    pub fn record_abandoned(&mut self, _now_ms: u64) {
        if let BreakerState::HalfOpen {
            probe_in_flight: true,
        } = self.state
        {
            self.state = BreakerState::HalfOpen {
                probe_in_flight: false,
            };
        }
    }
}

#[cfg(test)]
mod trip_tests {
    use super::*;

    #[test]
    fn an_unreachable_worker_is_out_at_once_and_probed_after_the_cool_down() {
        let policy = BreakerPolicy {
            failures_to_open: 5,
            cool_down_ms: 1000,
        };
        let mut breaker = CircuitBreaker::new(policy);
        breaker.trip(100);
        assert!(!breaker.admits(500));
        assert!(breaker.admits(1100), "one probe after the cool-down");
        breaker.on_dispatch(1100);
        breaker.trip(1200);
        assert!(!breaker.admits(2100));
        assert!(breaker.admits(2200));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        failures_to_open: 3,
        cool_down_ms: 1_000,
    };

    fn opened_at(now: u64) -> CircuitBreaker {
        let mut b = CircuitBreaker::new(POLICY);
        for _ in 0..POLICY.failures_to_open {
            b.record_failure(now);
        }
        b
    }

    fn half_open_with_probe() -> CircuitBreaker {
        let mut b = opened_at(0);
        b.on_dispatch(1_000);
        b
    }

    #[test]
    fn default_policy_opens_after_five_failures_for_ten_seconds() {
        let p = BreakerPolicy::default();
        assert_eq!((p.failures_to_open, p.cool_down_ms), (5, 10_000));
        assert!(p.validate().is_ok());
        assert!(
            BreakerPolicy {
                failures_to_open: 0,
                ..p
            }
            .validate()
            .is_err()
        );
        let parsed: BreakerPolicy = serde_saphyr::from_str("cool_down_ms: 50").unwrap();
        assert_eq!(parsed.failures_to_open, 5);
        assert!(serde_saphyr::from_str::<BreakerPolicy>("cooldown: 50").is_err());
    }

    #[test]
    fn closed_counts_consecutive_failures_and_opens_at_the_threshold() {
        let mut b = CircuitBreaker::new(POLICY);
        b.record_failure(10);
        b.record_failure(20);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        assert!(b.admits(20));
        b.record_failure(30);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 1_030 });
        assert!(b.is_open(30));
        assert_eq!(b.state().to_string(), "open");
    }

    #[test]
    fn success_resets_the_count() {
        let mut b = CircuitBreaker::new(POLICY);
        b.record_failure(0);
        b.record_failure(0);
        b.record_success(0);
        b.record_failure(0);
        b.record_failure(0);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        assert_eq!(b.state().as_str(), "closed");
    }

    #[test]
    fn open_refuses_until_the_cool_down_ends_then_admits_one_probe() {
        let b = opened_at(0);
        assert!(!b.admits(0));
        assert!(!b.admits(999));
        assert!(b.is_open(999));
        assert!(b.admits(1_000));
        assert!(!b.is_open(1_000));
        // Admitting has no side effect.
        assert_eq!(b.state(), BreakerState::Open { until_ms: 1_000 });

        let mut probed = b.clone();
        probed.on_dispatch(1_000);
        assert_eq!(
            probed.state(),
            BreakerState::HalfOpen {
                probe_in_flight: true
            }
        );
        assert!(!probed.admits(1_000));
        assert_eq!(probed.state().to_string(), "half-open");
    }

    #[test]
    fn a_dispatch_before_the_cool_down_ends_is_no_probe() {
        let mut b = opened_at(0);
        b.on_dispatch(500);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 1_000 });
    }

    #[test]
    fn refresh_makes_an_expired_breaker_half_open_without_a_probe() {
        let mut b = opened_at(0);
        b.refresh(999);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 1_000 });
        b.refresh(1_000);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probe_in_flight: false
            }
        );
        assert!(b.admits(1_000));
        b.on_dispatch(1_000);
        assert!(!b.admits(1_000));
    }

    #[test]
    fn a_successful_probe_closes() {
        let mut b = half_open_with_probe();
        b.record_success(1_200);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        assert!(b.admits(1_200));
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cool_down() {
        let mut b = half_open_with_probe();
        b.record_failure(1_200);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 2_200 });
        assert!(!b.admits(2_199));
        assert!(b.admits(2_200));
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot_and_keeps_counts() {
        let mut b = half_open_with_probe();
        b.record_abandoned(1_200);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probe_in_flight: false
            }
        );
        assert!(b.admits(1_200));

        let mut closed = CircuitBreaker::new(POLICY);
        closed.record_failure(0);
        closed.record_abandoned(0);
        assert_eq!(
            closed.state(),
            BreakerState::Closed {
                consecutive_failures: 1
            }
        );
        let mut open = opened_at(0);
        open.record_abandoned(10);
        assert_eq!(open.state(), BreakerState::Open { until_ms: 1_000 });
    }

    #[test]
    fn late_failures_extend_an_open_breaker_but_never_shorten_it() {
        let mut b = opened_at(0);
        b.record_failure(400);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 1_400 });
        let mut long = CircuitBreaker::new(BreakerPolicy {
            failures_to_open: 1,
            cool_down_ms: 1_000,
        });
        long.record_failure(5_000);
        long.set_policy(BreakerPolicy {
            failures_to_open: 1,
            cool_down_ms: 10,
        });
        long.record_failure(5_100);
        assert_eq!(long.state(), BreakerState::Open { until_ms: 6_000 });
    }

    #[test]
    fn a_late_success_closes_an_open_breaker() {
        let mut b = opened_at(0);
        b.record_success(10);
        assert!(b.admits(10));
    }

    #[test]
    fn times_near_the_end_of_u64_saturate() {
        let mut b = CircuitBreaker::new(BreakerPolicy {
            failures_to_open: 1,
            cool_down_ms: u64::MAX,
        });
        b.record_failure(5);
        assert_eq!(b.state(), BreakerState::Open { until_ms: u64::MAX });
        assert!(!b.admits(u64::MAX - 1));
    }

    #[derive(Debug, Clone)]
    enum Event {
        Advance(u64),
        /// A placement, made only when the breaker admits it, as a
        /// scheduler honouring the breaker does.
        Dispatch,
        Success,
        Failure,
        Abandon,
        Refresh,
    }

    fn event_strategy() -> impl Strategy<Value = Event> {
        prop_oneof![
            2 => (0u64..400).prop_map(Event::Advance),
            3 => Just(Event::Dispatch),
            1 => Just(Event::Success),
            3 => Just(Event::Failure),
            1 => Just(Event::Abandon),
            1 => Just(Event::Refresh),
        ]
    }

    proptest! {
        /// Whatever happens, a half-open breaker lets one probe through
        /// until the breaker hears how it ended, and an open one admits
        /// nothing before its cool-down ends.
        #[test]
        fn one_probe_at_a_time_and_no_admission_before_the_cool_down(
            failures_to_open in 1u32..4,
            cool_down_ms in 0u64..500,
            events in proptest::collection::vec(event_strategy(), 1..120),
        ) {
            let policy = BreakerPolicy { failures_to_open, cool_down_ms };
            let mut b = CircuitBreaker::new(policy);
            let mut now = 0u64;
            // Probes placed since the breaker last heard of an attempt's end.
            let mut probes_in_flight = 0u32;
            // The end of the latest cool-down, from the moment it began.
            let mut cool_down_ends: Option<u64> = None;
            for event in events {
                let before = b.state();
                match event {
                    Event::Advance(dt) => now += dt,
                    Event::Dispatch => {
                        if b.admits(now) {
                            if !matches!(before, BreakerState::Closed { .. }) {
                                probes_in_flight += 1;
                            }
                            b.on_dispatch(now);
                        }
                    }
                    Event::Success => { b.record_success(now); probes_in_flight = 0; }
                    Event::Failure => { b.record_failure(now); probes_in_flight = 0; }
                    Event::Abandon => { b.record_abandoned(now); probes_in_flight = 0; }
                    Event::Refresh => b.refresh(now),
                }
                match b.state() {
                    BreakerState::Open { until_ms } => {
                        // Opening (or re-arming) is always a full cool-down
                        // from the failure that caused it.
                        if matches!(event, Event::Failure) {
                            prop_assert!(until_ms >= now + cool_down_ms);
                        }
                        cool_down_ends = Some(until_ms);
                        prop_assert!(!b.admits(until_ms.saturating_sub(1)) || until_ms == 0);
                        prop_assert_eq!(b.admits(now), now >= until_ms);
                        prop_assert_eq!(b.is_open(now), now < until_ms);
                        prop_assert_eq!(probes_in_flight, 0);
                    }
                    BreakerState::HalfOpen { probe_in_flight } => {
                        prop_assert!(probes_in_flight <= 1);
                        prop_assert_eq!(probe_in_flight, probes_in_flight == 1);
                        prop_assert_eq!(b.admits(now), !probe_in_flight);
                        if let Some(end) = cool_down_ends {
                            prop_assert!(now >= end, "half-open at {} before {}", now, end);
                        }
                    }
                    BreakerState::Closed { consecutive_failures } => {
                        prop_assert!(consecutive_failures < failures_to_open);
                        prop_assert!(b.admits(now));
                        probes_in_flight = 0;
                        cool_down_ends = None;
                    }
                }
            }
        }
    }
}
