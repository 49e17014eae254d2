//! The load generator's JSON report. The peer scripts under `bench/peers/`
//! print the same shape, so `scripts/bench` compares like with like.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One benchmark run, as printed on stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `agentmesh`, `ray`, `autogen`, `etcd`…
    pub system: String,
    pub shape: String,
    pub tasks: u64,
    pub concurrency: u64,
    pub completed: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    pub latency_ms: Percentiles,
    /// Where it ran and how (embedded or endpoint, workers…).
    #[serde(default)]
    pub notes: String,
    /// The first few distinct errors, so a failed run explains itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_samples: Vec<String>,
}

/// Latency percentiles in milliseconds, nearest rank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Sorts `samples` in place; all zero when there are none.
    pub fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            // Nearest rank: the smallest sample with at least q of all at or
            // below it.
            let rank = (q * samples.len() as f64).ceil() as usize;
            millis(samples[rank.clamp(1, samples.len()) - 1])
        };
        Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: millis(samples[samples.len() - 1]),
        }
    }
}

fn millis(duration: Duration) -> f64 {
    // Three decimals: microsecond resolution is all a report needs.
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        let mut one = vec![Duration::from_micros(1500)];
        assert_eq!(Percentiles::of(&mut one).p50, 1.5);
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    /// The peer scripts write this format by hand; a line as they print it
    /// must parse, and ours must survive a round trip.
    #[test]
    fn report_format_parses() {
        let line = r#"{"system":"ray","shape":"trivial","tasks":20000,"concurrency":64,"completed":20000,"errors":0,"elapsed_s":6.51,"throughput_per_s":3072.1,"latency_ms":{"p50":19.8,"p95":25.1,"p99":31.0,"max":55.2},"notes":"1 async actor, 1 driver, num_cpus=2"}"#;
        let report: Report = serde_json::from_str(line).unwrap();
        assert_eq!(report.latency_ms.p99, 31.0);
        assert!(report.error_samples.is_empty());
        let again: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(again, report);
    }
}
