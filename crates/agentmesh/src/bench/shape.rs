//! The task shapes the load generator submits, and how each one's result
//! is checked: a run that returns wrong answers fast is not a fast run.

use clap::ValueEnum;
use serde_json::{Value, json};

/// Subtasks of the fan-out shape before its join.
const FANOUT_WIDTH: u32 = 8;
/// Sleep of the sleep shape: long enough that concurrency, not CPU, sets
/// the rate.
const SLEEP_MS: u64 = 10;
/// The word the large shape's text repeats, and how often: 8 bytes ×
/// 12,800 = 100 KiB of input, so its task record is about 100 KB, the size
/// docs/guarantees.md measures etcd's database with.
const LARGE_WORD: &str = "padding ";
const LARGE_REPEAT: u64 = 12_800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// One `math.eval "1+1"`: the cost of the machinery itself.
    Trivial,
    /// Eight parallel `math.eval` subtasks and a join that sums them.
    Fanout,
    /// One `sleep` of 10 ms: how many tasks run at once.
    Sleep,
    /// One `text.word_count` of 100 KiB of text: a task record of about
    /// 100 KB, for what records cost etcd.
    Large,
    /// The same reactive request every time: after the first, each is a
    /// response cache hit, answered without any subtask.
    ReactiveCache,
    /// A reactive request with `cache: false`: classified and routed by
    /// keywords to `math.eval`, run on a worker, every time.
    ReactiveKeyword,
    /// A reactive request no keyword places, with `cache: false`: the
    /// node's model picks the tool every time (needs `--llm-base-url` on
    /// the coordinator); any completed result counts.
    ReactiveProvider,
}

/// The reactive shapes' request.
const REACTIVE_REQUEST: &str = "What is 2 + 3 * 4?";
/// A request no keyword of the built-in table places ("combien", "font"),
/// so the coordinator's model picks the tool; SmolLM2 answers it with a
/// call its tool runs.
const PROVIDER_REQUEST: &str = "combien font 6 * 7";

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Trivial => "trivial",
            Shape::Fanout => "fanout",
            Shape::Sleep => "sleep",
            Shape::Large => "large",
            Shape::ReactiveCache => "reactive-cache",
            Shape::ReactiveKeyword => "reactive-keyword",
            Shape::ReactiveProvider => "reactive-provider",
        }
    }

    /// The task file, as JSON text.
    pub fn document(self) -> String {
        let task = match self {
            Shape::Trivial => json!({
                "name": "bench-trivial",
                "tasks": [{"id": "x", "capability": "math.eval", "input": {"expr": "1+1"}}],
            }),
            Shape::Fanout => {
                let mut tasks: Vec<Value> = (1..=FANOUT_WIDTH)
                    .map(|i| {
                        json!({"id": format!("s{i}"), "capability": "math.eval",
                               "input": {"expr": format!("{i}*{i}")}})
                    })
                    .collect();
                let sum: Vec<String> = (1..=FANOUT_WIDTH)
                    .map(|i| format!("{{{{s{i}.value}}}}"))
                    .collect();
                tasks.push(json!({
                    "id": "join", "capability": "math.eval",
                    "input": {"expr": sum.join(" + ")},
                    "depends_on": (1..=FANOUT_WIDTH).map(|i| format!("s{i}")).collect::<Vec<_>>(),
                }));
                json!({"name": "bench-fanout", "strategy": "parallel", "tasks": tasks})
            }
            Shape::Sleep => json!({
                "name": "bench-sleep",
                "tasks": [{"id": "nap", "capability": "sleep", "input": {"ms": SLEEP_MS}}],
            }),
            Shape::Large => json!({
                "name": "bench-large",
                "tasks": [{"id": "count", "capability": "text.word_count",
                           "input": {"text": LARGE_WORD.repeat(LARGE_REPEAT as usize), "top": 1}}],
            }),
            Shape::ReactiveCache => json!({
                "name": "bench-reactive-cache", "pattern": "reactive", "request": REACTIVE_REQUEST,
            }),
            Shape::ReactiveKeyword => json!({
                "name": "bench-reactive-keyword", "pattern": "reactive",
                "request": REACTIVE_REQUEST, "cache": false,
            }),
            Shape::ReactiveProvider => json!({
                "name": "bench-reactive-provider", "pattern": "reactive",
                "request": PROVIDER_REQUEST, "cache": false,
            }),
        };
        task.to_string()
    }

    /// The result a correct run returns; `None` when any completed
    /// result is correct (a model's choice).
    pub fn expected(self) -> Option<Value> {
        Some(match self {
            Shape::Trivial => json!({"value": 2}),
            Shape::Fanout => json!({"value": (1..=FANOUT_WIDTH).map(|i| i * i).sum::<u32>()}),
            Shape::Sleep => json!({"slept_ms": SLEEP_MS}),
            Shape::Large => json!({
                "words": LARGE_REPEAT,
                "chars": LARGE_REPEAT * LARGE_WORD.len() as u64,
                "lines": 1,
                "top_words": [{"word": LARGE_WORD.trim(), "count": LARGE_REPEAT}],
            }),
            Shape::ReactiveCache | Shape::ReactiveKeyword => json!({"value": 14}),
            Shape::ReactiveProvider => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_core::task::{TaskLimits, parse_and_validate};

    use super::*;

    #[test]
    fn every_shape_is_a_valid_task_file() {
        for shape in Shape::value_variants() {
            let document = shape.document();
            let file = parse_and_validate(&document, &TaskLimits::default(), &|_| true, &Vec::new)
                .unwrap_or_else(|e| panic!("{}: {e}", shape.name()));
            let expected = match shape {
                Shape::Fanout => 9,
                Shape::ReactiveCache | Shape::ReactiveKeyword | Shape::ReactiveProvider => 0,
                _ => 1,
            };
            assert_eq!(file.tasks.len(), expected, "{}", shape.name());
        }
    }
}
