//! Cost of worker selection as the pool grows.
//!
//! A coordinator makes one decision per ready subtask: `select` the best
//! worker for the subtask's capability, `acquire` it, and later `release` it
//! with a verdict. The three together are measured as one decision, because
//! `acquire` and `release` are where the per-capability index is updated;
//! `select` alone is measured too. Sizes go from 10 to 10,000 workers so the
//! report shows the cost is not linear in the pool's size (the requirement
//! is at most 20 µs per decision at 10,000 workers).
//!
//! `sync` is measured as well: membership is republished every time any
//! worker's load changes, so an unchanged membership must cost a walk, not a
//! rebuild of the index (`sync/rebuild` is the from-scratch cost, for
//! comparison).
//!
//! Time stands still at [`NOW_MS`], so no cool-down ends during a run and
//! every iteration measures the same steady state. With the default breaker
//! (five failures in a row) hardly any worker opens here; a decision pays
//! the breaker's bookkeeping and the look at the head of the cooling set.

use std::hint::black_box;
use std::time::Duration;

use agentmesh_core::scheduling::WorkerPool;
use agentmesh_core::{AgentId, AgentRegistration, Membership, Role};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};

/// Verdicts of released attempts, in turn: mostly successes, some failures,
/// so scores keep moving.
const VERDICTS: [bool; 5] = [true, true, false, true, true];

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

/// The one instant every call is made at.
const NOW_MS: u64 = 1_000_000;

/// The built-in tools, as a small cluster would offer them.
const CAPABILITIES: [&str; 4] = ["math.eval", "text.word_count", "json.query", "sleep"];

/// A small deterministic generator, so every run benchmarks the same pool.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` workers offering one to three of the four capabilities, with a
/// `max_concurrency` of 2 to 8.
fn membership(n: usize) -> Membership {
    let mut rng = SplitMix(n as u64);
    let agents = (0..n)
        .map(|i| {
            let first = rng.below(4) as usize;
            let count = 1 + rng.below(3) as usize;
            let capabilities = (0..count)
                .map(|k| CAPABILITIES[(first + k) % 4].to_owned())
                .collect();
            let registration = AgentRegistration {
                id: AgentId::new(format!("worker-{i:05}")),
                role: Role::Worker,
                level: None,
                capabilities,
                endpoint: format!("127.0.0.1:{}", 20_000 + i),
                load: 0,
                max_concurrency: 2 + rng.below(7) as u32,
                version: "bench".into(),
                faults: Vec::new(),
                insecure: false,
                event_handlers: Vec::new(),
            };
            (registration.id.clone(), registration)
        })
        .collect();
    Membership { agents }
}

/// A pool over `membership` with a history: varied success and failure
/// counters and some attempts still in flight (a few workers full).
fn busy_pool(membership: &Membership) -> WorkerPool {
    let mut pool = WorkerPool::default();
    pool.sync(membership);
    let mut rng = SplitMix(0xA6E7);
    for (id, registration) in &membership.agents {
        for _ in 0..rng.below(12) {
            pool.acquire(id, NOW_MS);
            pool.release(id, Some(rng.below(5) != 0), NOW_MS);
        }
        for _ in 0..rng.below(u64::from(registration.max_concurrency) + 1) {
            pool.acquire(id, NOW_MS);
        }
    }
    pool
}

/// A group sized so the whole bench run stays short: the operations are
/// micro- to nanosecond-scale, so 1.5 s of samples is plenty.
fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500));
    group
}

fn selection(c: &mut Criterion) {
    let mut pools: Vec<(usize, WorkerPool)> = SIZES
        .iter()
        .map(|&n| (n, busy_pool(&membership(n))))
        .collect();

    let mut select = group(c, "select");
    for (n, pool) in &mut pools {
        select.bench_function(BenchmarkId::from_parameter(*n), |b| {
            let mut turn = 0usize;
            b.iter(|| {
                turn = turn.wrapping_add(1);
                black_box(pool.select(black_box(CAPABILITIES[turn % 4]), NOW_MS))
            });
        });
    }
    select.finish();

    let mut decision = group(c, "select+acquire+release");
    for (n, pool) in &mut pools {
        decision.bench_function(BenchmarkId::from_parameter(*n), |b| {
            let mut turn = 0usize;
            b.iter(|| {
                turn = turn.wrapping_add(1);
                let chosen = pool.select(black_box(CAPABILITIES[turn % 4]), NOW_MS);
                if let Some(id) = &chosen {
                    pool.acquire(id, NOW_MS);
                    pool.release(id, Some(VERDICTS[turn % VERDICTS.len()]), NOW_MS);
                }
                black_box(chosen)
            });
        });
    }
    decision.finish();
}

fn sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("sync");
    group
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for n in SIZES {
        let view = membership(n);
        // Load is republished; nothing the pool tracks changed.
        let mut republished = view.clone();
        for registration in republished.agents.values_mut() {
            registration.load += 1;
        }
        let mut pool = busy_pool(&view);
        group.bench_with_input(BenchmarkId::new("unchanged", n), &n, |b, _| {
            b.iter(|| black_box(pool.sync(black_box(&republished))));
        });
        group.bench_with_input(BenchmarkId::new("rebuild", n), &n, |b, _| {
            b.iter(|| {
                let mut fresh = WorkerPool::default();
                black_box(fresh.sync(black_box(&view)));
                fresh
            });
        });
    }
    group.finish();
}

criterion_group!(benches, selection, sync);
criterion_main!(benches);
