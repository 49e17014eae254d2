//! Cost of the reactive fast path's pure steps: routing a request
//! (classify, select a tool, extract its input) and a cache lookup in a
//! full cache, hit and miss. The cluster's end-to-end latency adds the
//! gRPC hops and the worker on top of these.

use std::hint::black_box;

use agentmesh_core::reactive::{
    CacheKey, CachePolicy, DEFAULT_THRESHOLD, ReactiveLimits, ResponseCache, RoutingTable, guard,
    route,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;

const REQUEST: &str = "What is 2 + 3 * 4?";

fn bench(c: &mut Criterion) {
    let (table, limits) = (RoutingTable::builtin(), ReactiveLimits::default());
    c.bench_function("reactive/route", |b| {
        b.iter(|| route(black_box(REQUEST), &table, &limits).unwrap())
    });
    c.bench_function("reactive/route_unplaced", |b| {
        b.iter(|| route(black_box("bonjour tout le monde"), &table, &limits).unwrap())
    });

    let mut group = c.benchmark_group("reactive/cache_lookup");
    for entries in [16usize, 256, 1024] {
        let mut cache = ResponseCache::new(CachePolicy::default());
        for i in 0..entries {
            let request = format!("what is {i} + {i} * 4?");
            let choice = route(&request, &table, &limits).unwrap().tool.unwrap();
            cache.insert(
                CacheKey::new(&request, Some(guard(&choice))),
                json!({"value": i}),
                0,
            );
        }
        // The request at the front of a full cache: the lookup still scans
        // every entry for a better match.
        let hit = format!("what is {} + {} * 4", entries - 1, entries - 1);
        group.bench_with_input(BenchmarkId::new("hit", entries), &hit, |b, request| {
            b.iter(|| {
                let choice = route(request, &table, &limits).unwrap().tool.unwrap();
                let key = CacheKey::new(request, Some(guard(&choice)));
                cache.get(&key, DEFAULT_THRESHOLD, 1).unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("miss", entries), REQUEST, |b, request| {
            b.iter(|| {
                let key = CacheKey::new(request, None);
                cache.get(&key, DEFAULT_THRESHOLD, 1)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
