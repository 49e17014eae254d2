//! Fault injection, for tests and demonstrations only (off by default):
//! `agentmesh node --fault wrong-result:P --fault empty-result:P --fault fail:P --fault slow:MS`
//! makes a worker or peer misbehave on purpose, so that honest tests can
//! show consensus out-voting a wrong peer, reputation falling, breakers
//! opening and retries at work.
//!
//! The binary refuses `--fault` unless the node is also started with
//! `--allow-fault-injection` (or built with its `fault-injection`
//! feature), and a faulty agent carries its faults in its registration
//! (`AgentRegistration::faults`), so `agents` never shows it as normal.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::{Rng, RngExt};
use serde_json::Value;

/// One kind of misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// With probability P, a successful output is replaced by a wrong one
    /// (every number +1, every string marked, every boolean flipped).
    WrongResult(f64),
    /// With probability P, a successful output is replaced by an empty
    /// object: a tool that found nothing, which a request's quality rule
    /// scores 0 whatever the capability.
    EmptyResult(f64),
    /// With probability P, the attempt fails instead of running.
    Fail(f64),
    /// Every attempt takes this much longer.
    Slow(Duration),
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, value) = text.split_once(':').ok_or_else(|| {
            format!("fault '{text}' must be KIND:VALUE (wrong-result:P, empty-result:P, fail:P or slow:MS)")
        })?;
        let probability = || -> Result<f64, String> {
            let p: f64 = value
                .parse()
                .map_err(|_| format!("fault '{text}': '{value}' is not a number"))?;
            if (0.0..=1.0).contains(&p) {
                Ok(p)
            } else {
                Err(format!("fault '{text}': probability must be in [0, 1]"))
            }
        };
        match kind {
            "wrong-result" => Ok(Fault::WrongResult(probability()?)),
            "empty-result" => Ok(Fault::EmptyResult(probability()?)),
            "fail" => Ok(Fault::Fail(probability()?)),
            "slow" => value
                .parse()
                .map(|ms| Fault::Slow(Duration::from_millis(ms)))
                .map_err(|_| format!("fault '{text}': '{value}' is not a whole number of ms")),
            other => Err(format!(
                "unknown fault '{other}' (known: wrong-result:P, empty-result:P, fail:P, slow:MS)"
            )),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::WrongResult(p) => write!(f, "wrong-result:{p}"),
            Fault::EmptyResult(p) => write!(f, "empty-result:{p}"),
            Fault::Fail(p) => write!(f, "fail:{p}"),
            Fault::Slow(d) => write!(f, "slow:{}", d.as_millis()),
        }
    }
}

/// The faults a node injects; empty (no fault) by default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults(pub Vec<Fault>);

impl Faults {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The extra time every attempt takes.
    pub fn delay(&self) -> Duration {
        self.0
            .iter()
            .map(|f| match f {
                Fault::Slow(d) => *d,
                _ => Duration::ZERO,
            })
            .sum()
    }

    /// Whether this attempt fails on purpose (drawn per attempt).
    pub fn fails(&self) -> bool {
        self.fails_with(&mut rand::rng())
    }

    /// [`Faults::fails`], drawing from `rng` so tests can seed it.
    pub fn fails_with<R: Rng + ?Sized>(&self, rng: &mut R) -> bool {
        self.0
            .iter()
            .any(|f| matches!(f, Fault::Fail(p) if chance(*p, rng)))
    }

    /// The output to report: `output`, or a wrong version of it.
    pub fn corrupt(&self, output: Value) -> Value {
        self.corrupt_with(output, &mut rand::rng())
    }

    /// [`Faults::corrupt`], drawing from `rng` so tests can seed it.
    pub fn corrupt_with<R: Rng + ?Sized>(&self, output: Value, rng: &mut R) -> Value {
        let empty = self
            .0
            .iter()
            .any(|f| matches!(f, Fault::EmptyResult(p) if chance(*p, rng)));
        if empty {
            return Value::Object(Default::default());
        }
        let wrong = self
            .0
            .iter()
            .any(|f| matches!(f, Fault::WrongResult(p) if chance(*p, rng)));
        if wrong { falsify(output) } else { output }
    }
}

/// A deterministic wrong version of a value: numbers +1, strings marked,
/// booleans flipped, recursively; a wrong answer is never equal to the
/// right one, whatever the tolerance of the comparison.
pub fn falsify(value: Value) -> Value {
    match value {
        Value::Number(n) => serde_json::Number::from_f64(n.as_f64().unwrap_or(0.0) + 1.0)
            .map_or(Value::Null, Value::Number),
        Value::String(s) => Value::String(format!("{s} (wrong)")),
        Value::Bool(b) => Value::Bool(!b),
        Value::Null => Value::String("wrong".into()),
        Value::Array(items) => Value::Array(items.into_iter().map(falsify).collect()),
        Value::Object(fields) => {
            Value::Object(fields.into_iter().map(|(k, v)| (k, falsify(v))).collect())
        }
    }
}

/// True with probability `p`: the draw is in [0, 1), so 1.0 is always and
/// 0.0 (or NaN) never.
fn chance<R: Rng + ?Sized>(p: f64, rng: &mut R) -> bool {
    rng.random::<f64>() < p
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::json;

    use super::*;

    #[test]
    fn faults_parse_and_refuse_precisely() {
        assert_eq!(
            "wrong-result:1.0".parse::<Fault>(),
            Ok(Fault::WrongResult(1.0))
        );
        assert_eq!("fail:0.25".parse::<Fault>(), Ok(Fault::Fail(0.25)));
        assert_eq!(
            "slow:150".parse::<Fault>(),
            Ok(Fault::Slow(Duration::from_millis(150)))
        );
        assert!("fail:1.5".parse::<Fault>().unwrap_err().contains("[0, 1]"));
        assert!(
            "lie:1"
                .parse::<Fault>()
                .unwrap_err()
                .contains("unknown fault")
        );
        assert!("slow".parse::<Fault>().unwrap_err().contains("KIND:VALUE"));
    }

    #[test]
    fn a_wrong_result_differs_everywhere_and_certain_faults_always_fire() {
        let right = json!({"value": 42, "label": "x", "ok": true, "list": [1, null]});
        let faults = Faults(vec![Fault::WrongResult(1.0), Fault::Fail(1.0)]);
        assert_eq!(
            faults.corrupt(right.clone()),
            json!({"value": 43.0, "label": "x (wrong)", "ok": false, "list": [2.0, "wrong"]})
        );
        assert!(faults.fails());
        let none = Faults(vec![Fault::WrongResult(0.0), Fault::Fail(0.0)]);
        assert_eq!(none.corrupt(right.clone()), right);
        assert_eq!(
            Faults(vec![Fault::EmptyResult(1.0)]).corrupt(right.clone()),
            json!({})
        );
        assert_eq!(
            "empty-result:1".parse::<Fault>(),
            Ok(Fault::EmptyResult(1.0))
        );
        assert!(!none.fails());
        assert_eq!(
            Faults(vec![Fault::Slow(Duration::from_millis(5))]).delay(),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn probable_faults_fire_at_their_rate_and_replay_from_a_seed() {
        let faults = Faults(vec![Fault::Fail(0.25), Fault::WrongResult(0.5)]);
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..4000)
                .map(|_| {
                    let failed = faults.fails_with(&mut rng);
                    let wrong = faults.corrupt_with(json!(1), &mut rng) != json!(1);
                    (failed, wrong)
                })
                .collect::<Vec<_>>()
        };
        let draws = run(5);
        assert_eq!(draws, run(5), "the same seed injects the same faults");
        let failed = draws.iter().filter(|(f, _)| *f).count();
        let wrong = draws.iter().filter(|(_, w)| *w).count();
        // 1000 and 2000 expected; each band is over four standard deviations.
        assert!((890..1110).contains(&failed), "{failed} failures in 4000");
        assert!(
            (1870..2130).contains(&wrong),
            "{wrong} wrong results in 4000"
        );
    }
}
