//! The reactive fast path, after the guide's reactive agent: a request is
//! answered from the [`cache`] when a similar one was answered before, and
//! otherwise [classified](route::classify) by keywords, routed to a tool
//! picked by keywords from a [`RoutingTable`], with the tool's input read
//! out of the request by pattern matching ([`extract`]), and run once.
//!
//! ```text
//!  request ─▶ check bounds ─▶ cache ──hit──▶ answer
//!                               │ miss
//!                               ▼
//!            classify (keywords) ─▶ select tool (keywords) ─▶ extract input
//!                 │ unplaced              │ none fits            │
//!                 ▼                       ▼                      ▼
//!      IntentFallback (provider,   needs the provider     run the tool (its
//!      behind a breaker)                                   breaker) ─▶ answer,
//!                                                                      cache it
//! ```
//!
//! Everything here is pure: time comes in as `now_ms`, the provider is the
//! [`IntentFallback`] seam the runtime implements, and each input is
//! bounded ([`ReactiveLimits`]) before any work, with refusals naming the
//! limit.

pub mod cache;
pub mod extract;
pub mod provenance;
pub mod route;
pub mod table;
pub mod text;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

pub use self::cache::{
    CacheCounters, CacheHit, CacheKey, CachePolicy, DEFAULT_THRESHOLD, ResponseCache,
};
pub use self::provenance::{AnswerPath, ReactiveRecord};
pub use self::route::{
    Classification, FallbackOutcome, IntentFallback, Routed, ToolChoice, classify,
    resolve_unplaced, route,
};
pub use self::table::{Extractor, IntentRule, RequestKind, RoutingTable, ToolRoute};
use crate::breaker::{BreakerPolicy, CircuitBreaker};

/// Bounds on what the fast path reads, each checked before the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReactiveLimits {
    /// Bytes of one request. A reactive request is a sentence or two, and
    /// every step scans it: 4 KiB keeps the fast path fast.
    pub max_request_bytes: usize,
    /// Bytes of a routing table document.
    pub max_table_bytes: usize,
    /// Tools in a routing table; each is tried on every request.
    pub max_table_tools: usize,
    /// Keywords of one intent rule or tool route.
    pub max_keywords: usize,
    /// Bytes of one keyword.
    pub max_keyword_bytes: usize,
}

impl Default for ReactiveLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: 4096,
            max_table_bytes: 64 * 1024,
            max_table_tools: 64,
            max_keywords: 64,
            max_keyword_bytes: 64,
        }
    }
}

/// Why the fast path refused a request or a table.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReactiveError {
    #[error("{found}, over the limit {limit} = {max}")]
    OverLimit {
        limit: &'static str,
        max: usize,
        found: String,
    },
    #[error("the request is empty")]
    EmptyRequest,
    #[error("routing table: {0}")]
    Table(String),
}

impl ReactiveError {
    pub(crate) fn over_limit(limit: &'static str, max: usize, found: String) -> Self {
        ReactiveError::OverLimit { limit, max, found }
    }
}

/// At most `max` bytes of `text`, cut on a character boundary.
pub(crate) fn clip(text: &str, max: usize) -> String {
    crate::task::message::clip(text, max)
}

/// The cache guard of a tool-routed request: its tool and input, so only
/// a request routed to the same tool with the same input shares an
/// answer.
pub fn guard(choice: &ToolChoice) -> String {
    json!({ "tool": choice.tool, "input": choice.input }).to_string()
}

/// The answer to a tool-routed request, in the guide's shape.
pub fn answer(choice: &ToolChoice, output: &Value) -> Value {
    json!({
        "response": format!("I used {} and found: {}", choice.tool, output),
        "tool_used": choice.tool,
        "result": output,
    })
}

/// A breaker per tool of the routing table and one for the provider, so a
/// failing tool or model is skipped for a cool-down instead of slowing
/// every request. Tools outside the table have no breaker, which bounds
/// the map by `max_table_tools`.
#[derive(Debug, Clone)]
pub struct Breakers {
    tools: BTreeMap<String, CircuitBreaker>,
    pub provider: CircuitBreaker,
}

impl Breakers {
    pub fn new(table: &RoutingTable, policy: BreakerPolicy) -> Self {
        Self {
            tools: table
                .tools
                .iter()
                .map(|t| (t.tool.clone(), CircuitBreaker::new(policy)))
                .collect(),
            provider: CircuitBreaker::new(policy),
        }
    }

    /// Whether `tool` may run at `now_ms`; a tool without a breaker may.
    pub fn admits(&self, tool: &str, now_ms: u64) -> bool {
        self.tools.get(tool).is_none_or(|b| b.admits(now_ms))
    }

    /// Records the start of a call of `tool`.
    pub fn on_call(&mut self, tool: &str, now_ms: u64) {
        if let Some(b) = self.tools.get_mut(tool) {
            b.on_dispatch(now_ms);
        }
    }

    /// Records how a call of `tool` ended: only failures of the tool
    /// itself count (a bad input says nothing about the tool; see
    /// [`crate::breaker::Blame`]).
    pub fn on_result(
        &mut self,
        tool: &str,
        outcome: Result<(), crate::breaker::Blame>,
        now_ms: u64,
    ) {
        let Some(b) = self.tools.get_mut(tool) else {
            return;
        };
        match outcome {
            Ok(()) => b.record_success(now_ms),
            Err(blame) if blame.counts_against_worker() => b.record_failure(now_ms),
            Err(_) => b.record_abandoned(now_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Blame;

    #[test]
    fn a_failing_tool_is_skipped_for_a_cool_down_and_bad_inputs_do_not_count() {
        let table = RoutingTable::builtin();
        let policy = BreakerPolicy {
            failures_to_open: 2,
            cool_down_ms: 50,
        };
        let mut breakers = Breakers::new(&table, policy);
        for now in 0..5 {
            breakers.on_call("math.eval", now);
            breakers.on_result("math.eval", Err(Blame::Task), now);
        }
        assert!(
            breakers.admits("math.eval", 5),
            "bad inputs are the task's fault"
        );
        breakers.on_call("math.eval", 6);
        breakers.on_result("math.eval", Err(Blame::Worker), 6);
        breakers.on_call("math.eval", 7);
        breakers.on_result("math.eval", Err(Blame::Worker), 7);
        assert!(!breakers.admits("math.eval", 8));
        assert!(breakers.admits("http.get", 8), "one breaker per tool");
        assert!(
            breakers.admits("math.eval", 57),
            "a probe after the cool-down"
        );
        assert!(breakers.admits("not.in.table", 8));
    }

    #[test]
    fn the_whole_fast_path_answers_a_repeat_from_the_cache() {
        let (table, limits) = (RoutingTable::builtin(), ReactiveLimits::default());
        let mut cache = ResponseCache::new(CachePolicy::default());
        let request = "what is 2 + 3 * 4?";
        let routed = route(request, &table, &limits).unwrap();
        let choice = routed.tool.unwrap();
        let key = CacheKey::new(request, Some(guard(&choice)));
        assert!(cache.get(&key, DEFAULT_THRESHOLD, 0).is_none());
        let output = json!({"value": 14});
        cache.insert(key, answer(&choice, &output), 0);
        let again = "What is 2 + 3 * 4";
        let choice = route(again, &table, &limits).unwrap().tool.unwrap();
        let hit = cache
            .get(
                &CacheKey::new(again, Some(guard(&choice))),
                DEFAULT_THRESHOLD,
                1,
            )
            .unwrap();
        assert_eq!(hit.response["result"], output);
        assert_eq!(hit.response["tool_used"], "math.eval");
    }
}
