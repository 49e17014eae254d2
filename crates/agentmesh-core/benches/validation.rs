//! Cost of validating a submitted task file as it grows.
//!
//! Every submission is parsed and validated at the edge before the cluster is
//! touched, so this is on the path of every `submit`. The documents are
//! realistic parallel DAGs: layers of subtasks, each depending on one or two
//! subtasks of the layer before and reading their outputs through
//! `{{id.field}}` references. Each document is built as a JSON string once,
//! outside the measured loop; the measured work is
//! `task::parse_and_validate` (JSON parsing, ids, dependencies, cycle and
//! depth checks, transitive ancestors, references, input sizes and
//! capability checks).

use std::hint::black_box;
use std::time::Duration;

use agentmesh_core::task::{TaskLimits, parse_and_validate};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

const SIZES: [usize; 3] = [10, 100, 1_000];

/// Capabilities the (imagined) cluster offers.
const CAPABILITIES: [&str; 4] = ["math.eval", "text.word_count", "json.query", "sleep"];

/// A parallel task of `n` subtasks in layers of about √n subtasks (for 1,000
/// subtasks: 32 layers of 32). Subtask `j` of a layer depends on subtask `j`
/// of the layer before and, for odd `j`, also on a second one.
fn document(n: usize) -> String {
    let width = (n as f64).sqrt().ceil() as usize;
    let id = |i: usize| format!("l{:02}-t{:02}", i / width, i % width);
    let tasks: Vec<Value> = (0..n)
        .map(|i| {
            let (layer, j) = (i / width, i % width);
            let capability = CAPABILITIES[i % CAPABILITIES.len()];
            if layer == 0 {
                return json!({
                    "id": id(i),
                    "capability": capability,
                    "input": match capability {
                        "math.eval" => json!({ "expr": format!("{i} * 2 + 1") }),
                        "text.word_count" => json!({ "text": "to be or not to be" }),
                        "json.query" => json!({ "document": { "items": [1, 2, 3] }, "query": "$.items[0]" }),
                        _ => json!({ "ms": 10 }),
                    },
                });
            }
            let previous = (layer - 1) * width;
            let first = id(previous + j);
            let mut depends_on = vec![first.clone()];
            if j % 2 == 1 {
                depends_on.push(id(previous + (j + 1) % width));
            }
            let second = depends_on.last().unwrap().clone();
            let input = match capability {
                "math.eval" => json!({ "expr": format!("{{{{{first}.value}}}} + {{{{{second}.value}}}}") }),
                "text.word_count" => json!({ "text": format!("summary of {{{{{first}.words}}}} words") }),
                "json.query" => json!({ "document": format!("{{{{{first}}}}}"), "query": "$.value" }),
                _ => json!({ "ms": format!("{{{{{second}.slept_ms}}}}"), "label": "wait" }),
            };
            json!({
                "id": id(i),
                "capability": capability,
                "input": input,
                "depends_on": depends_on,
                "timeout_ms": 30_000,
            })
        })
        .collect();
    json!({
        "name": format!("bench-dag-{n}"),
        "pattern": "coordinator_worker",
        "strategy": "parallel",
        "timeout_ms": 600_000,
        "tasks": tasks,
    })
    .to_string()
}

fn validation(c: &mut Criterion) {
    // The default limits already admit the largest document: 1,000 subtasks
    // is under `max_subtasks` (1,024), 32 layers under `max_depth` (64), and
    // the ~130 KB document under `max_document_bytes` (1 MiB). Checked below
    // so a tighter default would fail loudly rather than benchmark an error.
    let limits = TaskLimits::default();
    let offers = |capability: &str| CAPABILITIES.contains(&capability);
    let available = || CAPABILITIES.iter().map(|c| c.to_string()).collect();

    let mut group = c.benchmark_group("validate");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in SIZES {
        let doc = document(n);
        let task = parse_and_validate(&doc, &limits, &offers, &available)
            .unwrap_or_else(|e| panic!("benchmark document of {n} subtasks is invalid: {e}"));
        assert_eq!(task.tasks.len(), n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &doc, |b, doc| {
            b.iter(|| parse_and_validate(black_box(doc), &limits, &offers, &available).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, validation);
criterion_main!(benches);
