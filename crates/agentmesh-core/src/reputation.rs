//! How much an agent is trusted for one capability: a Beta(α, β) belief
//! about the chance that its next result agrees with the consensus.
//!
//! The record is plain data, stored per agent and capability (with etcd,
//! under `keys::reputation`) and changed only by compare-and-swap, so
//! concurrent coordinators lose no update.
//!
//! Evidence fades: what lies above the prior halves every
//! [`ReputationPolicy::half_life_ms`], so an agent is judged mostly by its
//! recent results, and one that was repaired (or broke) is not held to its
//! past for ever. Time comes in as `now_ms`; nothing here reads a clock.

use std::fmt;

use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

/// The uninformed prior: Beta(1, 1), a score of 0.5.
pub const PRIOR: f64 = 1.0;

/// One agent's reputation for one capability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reputation {
    /// Evidence for: agreements with the consensus, plus the prior.
    pub alpha: f64,
    /// Evidence against: dissents, failures and timeouts, plus the prior.
    pub beta: f64,
    /// When the evidence was last updated (ms since the Unix epoch); decay
    /// is applied from here.
    pub updated_ms: u64,
    /// Updates applied so far; lets tests and operators see that no
    /// concurrent update was lost.
    #[serde(default)]
    pub updates: u64,
}

impl Reputation {
    /// The prior, as of `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            alpha: PRIOR,
            beta: PRIOR,
            updated_ms: now_ms,
            updates: 0,
        }
    }

    /// The mean of the belief, in (0, 1).
    pub fn score(&self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }
}

/// What an agent's ballot turned out to be, as evidence about the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its output was in the winning cluster.
    Agreed,
    /// Its output lost.
    Dissented,
    /// It returned an error instead of an output.
    Failed,
    /// It returned nothing in time.
    TimedOut,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Agreed,
        Outcome::Dissented,
        Outcome::Failed,
        Outcome::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Agreed => "agreed",
            Outcome::Dissented => "dissented",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much each outcome counts and how fast it is forgotten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReputationPolicy {
    /// Time after which half of the evidence above the prior is forgotten,
    /// so an agent that was fixed (or broke) is judged by what it does now.
    pub half_life_ms: u64,
    pub agree_weight: f64,
    pub dissent_weight: f64,
    pub fail_weight: f64,
    /// Less than a failure by default: a timeout is as often the network's
    /// or the load's fault as the agent's.
    pub timeout_weight: f64,
}

impl Default for ReputationPolicy {
    fn default() -> Self {
        Self {
            half_life_ms: 60 * 60 * 1000,
            agree_weight: 1.0,
            dissent_weight: 1.0,
            fail_weight: 1.0,
            timeout_weight: 0.5,
        }
    }
}

impl ReputationPolicy {
    /// A zero half-life would forget every outcome at once, so reputation
    /// would never inform anything; weights must be finite and non-negative
    /// so that agreeing never lowers a score and dissenting never raises it.
    pub fn validate(&self) -> Result<(), String> {
        if self.half_life_ms == 0 {
            return Err("reputation half_life_ms must be at least 1".into());
        }
        for (name, weight) in [
            ("agree_weight", self.agree_weight),
            ("dissent_weight", self.dissent_weight),
            ("fail_weight", self.fail_weight),
            ("timeout_weight", self.timeout_weight),
        ] {
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(format!(
                    "reputation {name} must be finite and non-negative, got {weight}"
                ));
            }
        }
        Ok(())
    }

    /// The evidence one outcome adds. A weight that fails validation counts
    /// as zero rather than corrupting the record.
    pub fn weight(&self, outcome: Outcome) -> f64 {
        let weight = match outcome {
            Outcome::Agreed => self.agree_weight,
            Outcome::Dissented => self.dissent_weight,
            Outcome::Failed => self.fail_weight,
            Outcome::TimedOut => self.timeout_weight,
        };
        if weight.is_finite() && weight > 0.0 {
            weight
        } else {
            0.0
        }
    }
}

impl Reputation {
    /// The record as of `now_ms`: evidence above the prior halves every
    /// `half_life_ms`, so the score drifts back toward 0.5 while an agent is
    /// not observed. Time that goes backwards (clocks of different nodes)
    /// decays nothing. A record read from storage with evidence below the
    /// prior, or not a number, is repaired to the prior rather than trusted.
    pub fn decayed(&self, now_ms: u64, policy: &ReputationPolicy) -> Reputation {
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        let factor = if elapsed == 0 || policy.half_life_ms == 0 {
            1.0
        } else {
            0.5f64.powf(elapsed as f64 / policy.half_life_ms as f64)
        };
        Reputation {
            alpha: PRIOR + excess(self.alpha) * factor,
            beta: PRIOR + excess(self.beta) * factor,
            updated_ms: self.updated_ms.max(now_ms),
            updates: self.updates,
        }
    }

    /// Decays the record to `now_ms`, then adds the outcome as evidence.
    pub fn record(&self, outcome: Outcome, now_ms: u64, policy: &ReputationPolicy) -> Reputation {
        let mut next = self.decayed(now_ms, policy);
        let weight = policy.weight(outcome);
        match outcome {
            Outcome::Agreed => next.alpha += weight,
            Outcome::Dissented | Outcome::Failed | Outcome::TimedOut => next.beta += weight,
        }
        next.updates = next.updates.saturating_add(1);
        next
    }

    /// The score as of `now_ms`, in (0, 1).
    pub fn score_at(&self, now_ms: u64, policy: &ReputationPolicy) -> f64 {
        self.decayed(now_ms, policy).score()
    }

    /// A draw from the belief as of `now_ms` (Thompson sampling), for
    /// auctions: a peer with little evidence sometimes outbids a proven
    /// one, so every peer gets tried and a wrong one is found out, while a
    /// peer with much evidence against it almost never wins. The mean
    /// alone would seat the first winners forever.
    pub fn sample<R: Rng + ?Sized>(
        &self,
        now_ms: u64,
        policy: &ReputationPolicy,
        rng: &mut R,
    ) -> f64 {
        let belief = self.decayed(now_ms, policy);
        // Decay keeps both parameters finite and at least the prior, so the
        // distribution always exists; the mean stands in should it not.
        match Beta::new(belief.alpha.max(PRIOR), belief.beta.max(PRIOR)) {
            Ok(beta) => beta.sample(rng),
            Err(_) => belief.score(),
        }
    }
}

/// Evidence beyond the prior; 0 for anything that is not a sane count.
fn excess(evidence: f64) -> f64 {
    if evidence.is_finite() && evidence > PRIOR {
        evidence - PRIOR
    } else {
        0.0
    }
}

#[cfg(test)]
mod sampling_tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn mean_of_samples(r: &Reputation, seed: u64) -> f64 {
        let policy = ReputationPolicy::default();
        let mut rng = StdRng::seed_from_u64(seed);
        let n = 4000;
        (0..n).map(|_| r.sample(0, &policy, &mut rng)).sum::<f64>() / n as f64
    }

    #[test]
    fn samples_center_on_the_score_and_stay_in_the_unit_interval() {
        let policy = ReputationPolicy::default();
        let mut rng = StdRng::seed_from_u64(3);
        for (alpha, beta) in [(1.0, 1.0), (9.0, 1.0), (1.0, 5.0), (40.0, 60.0)] {
            let r = Reputation {
                alpha,
                beta,
                updated_ms: 0,
                updates: 0,
            };
            let mean = mean_of_samples(&r, 7);
            assert!(
                (mean - r.score()).abs() < 0.02,
                "Beta({alpha}, {beta}): sample mean {mean}, score {}",
                r.score()
            );
            for _ in 0..1000 {
                let draw = r.sample(0, &policy, &mut rng);
                assert!(
                    (0.0..=1.0).contains(&draw),
                    "Beta({alpha}, {beta}) drew {draw}"
                );
            }
        }
    }

    #[test]
    fn a_proven_liar_outbids_a_newcomer_one_time_in_twelve() {
        let policy = ReputationPolicy::default();
        let liar = Reputation {
            alpha: 1.0,
            beta: 11.0,
            updated_ms: 0,
            updates: 10,
        };
        let newcomer = Reputation::new(0);
        let mut rng = StdRng::seed_from_u64(42);
        let rounds = 12_000;
        let wins = (0..rounds)
            .filter(|_| liar.sample(0, &policy, &mut rng) > newcomer.sample(0, &policy, &mut rng))
            .count();
        // Exactly: P(Beta(1, 11) > Uniform) = E[Beta(1, 11)] = 1/12, so
        // 1000 of 12000 rounds; the band is over three standard deviations
        // (about 30) wide on each side.
        assert!(
            (900..1100).contains(&wins),
            "the liar outbid a newcomer {wins} times in {rounds}, expected about 1000"
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_bids() {
        let policy = ReputationPolicy::default();
        let r = Reputation {
            alpha: 3.0,
            beta: 2.0,
            updated_ms: 0,
            updates: 3,
        };
        let draws = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| r.sample(0, &policy, &mut rng))
                .collect::<Vec<f64>>()
        };
        assert_eq!(draws(11), draws(11));
        assert_ne!(draws(11), draws(12));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOUR: u64 = 60 * 60 * 1000;

    fn policy() -> ReputationPolicy {
        ReputationPolicy::default()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn default_policy_halves_evidence_every_hour() {
        let p = policy();
        assert_eq!(p.half_life_ms, HOUR);
        assert_eq!(
            (
                p.agree_weight,
                p.dissent_weight,
                p.fail_weight,
                p.timeout_weight
            ),
            (1.0, 1.0, 1.0, 0.5)
        );
        assert!(p.validate().is_ok());
        let parsed: ReputationPolicy = serde_json::from_str(r#"{"half_life_ms": 1000}"#).unwrap();
        assert_eq!(parsed.timeout_weight, 0.5);
        assert!(serde_json::from_str::<ReputationPolicy>(r#"{"half_life": 1}"#).is_err());
    }

    #[test]
    fn policy_rejects_zero_half_life_and_bad_weights() {
        let zero = ReputationPolicy {
            half_life_ms: 0,
            ..policy()
        };
        assert!(zero.validate().unwrap_err().contains("half_life_ms"));
        for w in [-1.0, f64::NAN, f64::INFINITY] {
            let bad = ReputationPolicy {
                fail_weight: w,
                ..policy()
            };
            assert!(bad.validate().unwrap_err().contains("fail_weight"));
            assert_eq!(bad.weight(Outcome::Failed), 0.0);
        }
    }

    #[test]
    fn outcome_names_round_trip_through_serde() {
        for o in Outcome::ALL {
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                serde_json::json!(o.as_str())
            );
            assert_eq!(o.to_string(), o.as_str());
        }
    }

    #[test]
    fn stored_field_names_are_unchanged() {
        let r = Reputation {
            alpha: 3.0,
            beta: 2.0,
            updated_ms: 7,
            updates: 4,
        };
        let shown = serde_json::to_value(r).unwrap();
        assert_eq!(
            shown,
            serde_json::json!({"alpha": 3.0, "beta": 2.0, "updated_ms": 7, "updates": 4})
        );
        let old: Reputation =
            serde_json::from_str(r#"{"alpha": 1.0, "beta": 1.0, "updated_ms": 0}"#).unwrap();
        assert_eq!(old.updates, 0);
    }

    #[test]
    fn evidence_above_the_prior_halves_each_half_life() {
        let r = Reputation {
            alpha: 9.0,
            beta: 3.0,
            updated_ms: 1_000,
            updates: 10,
        };
        let d = r.decayed(1_000 + HOUR, &policy());
        assert!(close(d.alpha, 5.0) && close(d.beta, 2.0), "{d:?}");
        assert_eq!((d.updated_ms, d.updates), (1_000 + HOUR, 10));
        let d = r.decayed(1_000 + 2 * HOUR, &policy());
        assert!(close(d.alpha, 3.0) && close(d.beta, 1.5), "{d:?}");
        assert!(close(r.decayed(u64::MAX, &policy()).score(), 0.5));
    }

    #[test]
    fn time_going_backwards_decays_nothing() {
        let r = Reputation {
            alpha: 9.0,
            beta: 3.0,
            updated_ms: 5_000,
            updates: 1,
        };
        assert_eq!(r.decayed(4_000, &policy()), r);
        let next = r.record(Outcome::Agreed, 4_000, &policy());
        assert_eq!((next.alpha, next.updated_ms), (10.0, 5_000));
    }

    #[test]
    fn corrupt_evidence_is_repaired_to_the_prior() {
        let r = Reputation {
            alpha: f64::NAN,
            beta: 0.2,
            updated_ms: 0,
            updates: 0,
        };
        let d = r.decayed(0, &policy());
        assert_eq!((d.alpha, d.beta), (PRIOR, PRIOR));
        assert_eq!(r.score_at(0, &policy()), 0.5);
    }

    #[test]
    fn each_outcome_adds_its_weight() {
        let r = Reputation::new(0);
        let p = policy();
        let agreed = r.record(Outcome::Agreed, 0, &p);
        assert_eq!((agreed.alpha, agreed.beta, agreed.updates), (2.0, 1.0, 1));
        assert_eq!(r.record(Outcome::Dissented, 0, &p).beta, 2.0);
        assert_eq!(r.record(Outcome::Failed, 0, &p).beta, 2.0);
        assert_eq!(r.record(Outcome::TimedOut, 0, &p).beta, 1.5);
        assert!(close(agreed.score(), 2.0 / 3.0));
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop::sample::select(Outcome::ALL.to_vec())
    }

    /// A record built by a history of outcomes at increasing times.
    fn reputation() -> impl Strategy<Value = Reputation> {
        prop::collection::vec((outcome(), 0u64..3 * HOUR), 0..30).prop_map(|history| {
            let mut r = Reputation::new(0);
            let mut now = 0;
            for (o, dt) in history {
                now += dt;
                r = r.record(o, now, &policy());
            }
            r
        })
    }

    proptest! {
        #[test]
        fn score_stays_strictly_between_0_and_1(
            r in reputation(), o in outcome(), later in 0u64..10 * HOUR,
        ) {
            let next = r.record(o, r.updated_ms + later, &policy());
            for s in [r.score(), next.score(), next.score_at(u64::MAX, &policy())] {
                prop_assert!(s > 0.0 && s < 1.0, "{s}");
            }
        }

        #[test]
        fn agreeing_never_lowers_and_dissenting_never_raises(
            r in reputation(), later in 0u64..10 * HOUR,
        ) {
            let p = policy();
            let now = r.updated_ms + later;
            let before = r.score_at(now, &p);
            prop_assert!(r.record(Outcome::Agreed, now, &p).score() >= before);
            for bad in [Outcome::Dissented, Outcome::Failed, Outcome::TimedOut] {
                prop_assert!(r.record(bad, now, &p).score() <= before);
            }
        }

        #[test]
        fn decay_moves_the_score_monotonically_toward_one_half(
            r in reputation(), t1 in 0u64..10 * HOUR, t2 in 0u64..10 * HOUR,
        ) {
            let p = policy();
            let (early, late) = (t1.min(t2), t1.max(t2));
            let s0 = r.score() - 0.5;
            let s1 = r.score_at(r.updated_ms + early, &p) - 0.5;
            let s2 = r.score_at(r.updated_ms + late, &p) - 0.5;
            prop_assert!(s1.abs() <= s0.abs() + 1e-12 && s2.abs() <= s1.abs() + 1e-12);
            // Never past one half: decay forgets, it does not reverse.
            prop_assert!(s0 * s1 >= 0.0 && s1 * s2 >= 0.0);
        }

        #[test]
        fn decay_composes(r in reputation(), a in 0u64..5 * HOUR, b in 0u64..5 * HOUR) {
            let p = policy();
            let t = r.updated_ms;
            let stepwise = r.decayed(t + a, &p).decayed(t + a + b, &p);
            let direct = r.decayed(t + a + b, &p);
            prop_assert!((stepwise.alpha - direct.alpha).abs() < 1e-9);
            prop_assert!((stepwise.beta - direct.beta).abs() < 1e-9);
        }

        #[test]
        fn every_record_is_counted(outcomes in prop::collection::vec((outcome(), 0u64..HOUR), 0..40)) {
            let mut r = Reputation::new(0);
            let mut now = 0;
            for (o, dt) in &outcomes {
                now += dt;
                let next = r.record(*o, now, &policy());
                prop_assert_eq!(next.updates, r.updates + 1);
                prop_assert!(next.alpha >= PRIOR && next.beta >= PRIOR);
                r = next;
            }
            prop_assert_eq!(r.updates, outcomes.len() as u64);
        }
    }
}
