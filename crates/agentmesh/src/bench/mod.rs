//! `agentmesh bench`: a load generator. Keeps C tasks of one shape in
//! flight until N have finished, against a cluster endpoint or an embedded
//! cluster it starts, and reports throughput and latency from submit to
//! the final record.

mod report;
mod shape;
mod target;

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use report::{Percentiles, Report};
pub use shape::Shape;
pub use target::{EmbeddedTarget, RemoteTarget, Target};

/// Distinct error messages kept for the report.
const ERROR_SAMPLES: usize = 5;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub shape: Shape,
    pub tasks: u64,
    pub concurrency: u64,
    /// Tasks run first and not counted, so connections, caches and the
    /// allocator are warm when the clock starts.
    pub warmup: u64,
    /// The whole run (warm-up included) stops after this long; tasks still
    /// unfinished then count as errors.
    pub time_limit: Duration,
    /// Open loop: start tasks at this many per second (still at most
    /// `concurrency` at once) instead of as fast as they finish — how
    /// latency is measured at a given load rather than at saturation.
    pub rate: Option<f64>,
    pub progress: bool,
}

/// What the concurrent loops of one phase share.
struct Phase {
    shape: Shape,
    document: String,
    expected: Option<serde_json::Value>,
    total: u64,
    claimed: AtomicU64,
    finished: AtomicU64,
    errors: AtomicU64,
    deadline: Instant,
    /// When task `i` may start, for an open-loop run: `started + i / rate`.
    pacing: Option<(Instant, f64)>,
}

struct LoopOutcome {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

/// Runs the warm-up, then the measured phase, and reports the latter.
pub async fn run(target: Arc<dyn Target>, options: &BenchOptions) -> Report {
    let deadline = Instant::now() + options.time_limit;
    if options.warmup > 0 {
        phase(&target, options, options.warmup, deadline, false).await;
    }
    let started = Instant::now();
    let (mut latencies, errors, error_samples) =
        phase(&target, options, options.tasks, deadline, options.progress).await;
    let elapsed = started.elapsed();
    let completed = latencies.len() as u64;
    Report {
        system: "agentmesh".into(),
        shape: options.shape.name().into(),
        tasks: options.tasks,
        concurrency: options.concurrency,
        completed,
        errors: errors + options.tasks.saturating_sub(completed + errors),
        elapsed_s: round3(elapsed.as_secs_f64()),
        throughput_per_s: round3(completed as f64 / elapsed.as_secs_f64().max(1e-9)),
        latency_ms: Percentiles::of(&mut latencies),
        notes: target.describe(),
        error_samples,
    }
}

/// `total` tasks with `concurrency` loops; returns the latencies of correct
/// results, the count of errors and a few distinct error messages.
async fn phase(
    target: &Arc<dyn Target>,
    options: &BenchOptions,
    total: u64,
    deadline: Instant,
    progress: bool,
) -> (Vec<Duration>, u64, Vec<String>) {
    let phase = Arc::new(Phase {
        shape: options.shape,
        document: options.shape.document(),
        expected: options.shape.expected(),
        total,
        claimed: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        deadline,
        pacing: options
            .rate
            .filter(|rate| *rate > 0.0)
            .map(|rate| (Instant::now(), rate)),
    });
    let reporter = progress.then(|| tokio::spawn(show_progress(phase.clone())));
    let loops: Vec<_> = (0..options.concurrency.min(total))
        .map(|_| tokio::spawn(run_loop(target.clone(), phase.clone())))
        .collect();
    let mut latencies = Vec::with_capacity(total as usize);
    let mut samples = BTreeSet::new();
    for handle in loops {
        match handle.await {
            Ok(outcome) => {
                latencies.extend(outcome.latencies);
                samples.extend(outcome.errors);
            }
            Err(e) => {
                samples.insert(format!("load loop panicked: {e}"));
            }
        }
    }
    if let Some(reporter) = reporter {
        reporter.abort();
        eprintln!();
    }
    let errors = phase.errors.load(Ordering::Relaxed);
    (
        latencies,
        errors,
        samples.into_iter().take(ERROR_SAMPLES).collect(),
    )
}

async fn run_loop(target: Arc<dyn Target>, phase: Arc<Phase>) -> LoopOutcome {
    let mut outcome = LoopOutcome {
        latencies: Vec::new(),
        errors: Vec::new(),
    };
    loop {
        let index = phase.claimed.fetch_add(1, Ordering::Relaxed);
        if index >= phase.total {
            break;
        }
        if let Some((started, rate)) = phase.pacing {
            let due = started + Duration::from_secs_f64(index as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let remaining = phase.deadline.saturating_duration_since(Instant::now());
        let started = Instant::now();
        let result = tokio::time::timeout(remaining, target.run(&phase.document)).await;
        let elapsed = started.elapsed();
        let error = match result {
            Ok(Ok(value)) if phase.expected.as_ref().is_none_or(|e| *e == value) => None,
            Ok(Ok(value)) => Some(format!(
                "wrong {} result: {value} (expected {})",
                phase.shape.name(),
                phase.expected.as_ref().unwrap_or(&serde_json::Value::Null)
            )),
            Ok(Err(error)) => Some(error),
            Err(_) => Some("the run's time limit was reached".to_owned()),
        };
        phase.finished.fetch_add(1, Ordering::Relaxed);
        match error {
            None => outcome.latencies.push(elapsed),
            Some(error) => {
                phase.errors.fetch_add(1, Ordering::Relaxed);
                if outcome.errors.len() < ERROR_SAMPLES {
                    outcome.errors.push(error);
                }
                if Instant::now() >= phase.deadline {
                    break;
                }
            }
        }
    }
    outcome
}

/// A one-line progress bar on stderr, redrawn a few times a second.
async fn show_progress(phase: Arc<Phase>) {
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    loop {
        interval.tick().await;
        let done = phase.finished.load(Ordering::Relaxed);
        let fraction = done as f64 / phase.total.max(1) as f64;
        let filled = (fraction * 30.0) as usize;
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r[{}{}] {done}/{} tasks  {rate:.0}/s  errors {}   ",
            "#".repeat(filled),
            ".".repeat(30 - filled.min(30)),
            phase.total,
            phase.errors.load(Ordering::Relaxed),
        );
        let _ = std::io::stderr().flush();
    }
}

/// Whether a progress bar makes sense: only for a person watching.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

fn round3(value: f64) -> f64 {
    (value * 1e3).round() / 1e3
}
