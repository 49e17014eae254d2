//! Classify, select a tool, extract its input: the pattern-matching half
//! of the fast path.
//!
//! Keywords first, as the guide's pitfalls section recommends; what they
//! cannot place is [`Classification::Unplaced`], and the caller may ask a
//! provider ([`IntentFallback`]) behind a breaker. A request whose keywords
//! pick a tool and whose text yields that tool's input is routed to it
//! whatever its kind: "what is 2 + 3 * 4?" is a question answered by
//! `math.eval`.

use serde::Serialize;
use serde_json::Value;

use super::extract::extract;
use super::table::{RequestKind, RoutingTable};
use super::text::{contains_phrase, tokens};
use super::{ReactiveError, ReactiveLimits};
use crate::breaker::CircuitBreaker;

/// Where the keyword patterns placed a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Classification {
    /// The keywords of one kind matched; `keywords` are those that did.
    Keywords {
        kind: RequestKind,
        keywords: Vec<String>,
    },
    /// A provider placed it after the keywords could not.
    Provider { kind: RequestKind },
    /// Neither keywords nor (yet) a provider placed it.
    Unplaced,
}

impl Classification {
    pub fn kind(&self) -> Option<RequestKind> {
        match self {
            Classification::Keywords { kind, .. } | Classification::Provider { kind } => {
                Some(*kind)
            }
            Classification::Unplaced => None,
        }
    }
}

/// The tool a request was routed to, with its input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolChoice {
    pub tool: String,
    pub input: Value,
    /// The table keywords that picked it.
    pub keywords: Vec<String>,
}

/// What the fast path decided for one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Routed {
    pub classification: Classification,
    /// `None` when no candidate tool's input could be read out of the
    /// request: the request needs the provider.
    pub tool: Option<ToolChoice>,
}

/// Refuses a request over `max_request_bytes` or empty, before any work.
pub fn check_request(request: &str, limits: &ReactiveLimits) -> Result<(), ReactiveError> {
    if request.len() > limits.max_request_bytes {
        return Err(ReactiveError::over_limit(
            "max_request_bytes",
            limits.max_request_bytes,
            format!("request is {} bytes", request.len()),
        ));
    }
    if request.trim().is_empty() {
        return Err(ReactiveError::EmptyRequest);
    }
    Ok(())
}

fn matched<'k>(request: &[String], keywords: &'k [String]) -> Vec<&'k String> {
    keywords
        .iter()
        .filter(|k| contains_phrase(request, &tokens(k)))
        .collect()
}

/// The kind whose keywords match most often; ties go to the earlier rule
/// of the table. `Unplaced` when none matches.
pub fn classify(
    request: &str,
    table: &RoutingTable,
    limits: &ReactiveLimits,
) -> Result<Classification, ReactiveError> {
    check_request(request, limits)?;
    Ok(classify_tokens(&tokens(request), table))
}

fn classify_tokens(request: &[String], table: &RoutingTable) -> Classification {
    let mut best: Option<(RequestKind, Vec<&String>)> = None;
    for rule in &table.intents {
        let hits = matched(request, &rule.keywords);
        if !hits.is_empty() && best.as_ref().is_none_or(|(_, b)| hits.len() > b.len()) {
            best = Some((rule.kind, hits));
        }
    }
    match best {
        Some((kind, hits)) => Classification::Keywords {
            kind,
            keywords: hits.into_iter().cloned().collect(),
        },
        None => Classification::Unplaced,
    }
}

/// Classifies `request` and picks a tool: candidates are the tools with
/// at least one matching keyword, most matches first (table order breaks
/// ties), and the first whose input can be read out of the request wins.
pub fn route(
    request: &str,
    table: &RoutingTable,
    limits: &ReactiveLimits,
) -> Result<Routed, ReactiveError> {
    check_request(request, limits)?;
    let request_tokens = tokens(request);
    let classification = classify_tokens(&request_tokens, table);
    let mut candidates: Vec<(usize, Vec<&String>)> = table
        .tools
        .iter()
        .enumerate()
        .map(|(i, route)| (i, matched(&request_tokens, &route.keywords)))
        .filter(|(_, hits)| !hits.is_empty())
        .collect();
    // Stable: equal counts keep table order.
    candidates.sort_by_key(|(_, hits)| std::cmp::Reverse(hits.len()));
    let tool = candidates.into_iter().find_map(|(i, hits)| {
        let route = &table.tools[i];
        extract(route.extract, request).map(|input| ToolChoice {
            tool: route.tool.clone(),
            input,
            keywords: hits.into_iter().cloned().collect(),
        })
    });
    Ok(Routed {
        classification,
        tool,
    })
}

/// The provider seam: places a request the keywords could not. The
/// runtime implements it over its chat provider; core never calls a model.
pub trait IntentFallback {
    /// The kind of `request`, or why the provider could not say (its
    /// error text, already free of secrets).
    fn classify(&mut self, request: &str) -> Result<RequestKind, String>;
}

impl<F: FnMut(&str) -> Result<RequestKind, String>> IntentFallback for F {
    fn classify(&mut self, request: &str) -> Result<RequestKind, String> {
        self(request)
    }
}

/// Why an unplaced request stays unplaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackOutcome {
    /// The provider placed it.
    Placed(RequestKind),
    /// The provider's breaker is open: the provider was not asked.
    BreakerOpen,
    /// The provider was asked and failed; counted by its breaker.
    Failed(String),
}

/// Asks `fallback` to place an `Unplaced` request, behind `breaker`: an
/// open breaker refuses without calling, a failure counts against it and
/// a success closes it. A request already placed is returned as is.
pub fn resolve_unplaced(
    classification: Classification,
    request: &str,
    fallback: &mut dyn IntentFallback,
    breaker: &mut CircuitBreaker,
    now_ms: u64,
) -> (Classification, Option<FallbackOutcome>) {
    if classification != Classification::Unplaced {
        return (classification, None);
    }
    if !breaker.admits(now_ms) {
        return (Classification::Unplaced, Some(FallbackOutcome::BreakerOpen));
    }
    breaker.on_dispatch(now_ms);
    match fallback.classify(request) {
        Ok(kind) => {
            breaker.record_success(now_ms);
            (
                Classification::Provider { kind },
                Some(FallbackOutcome::Placed(kind)),
            )
        }
        Err(reason) => {
            breaker.record_failure(now_ms);
            (
                Classification::Unplaced,
                Some(FallbackOutcome::Failed(reason)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::breaker::BreakerPolicy;

    fn limits() -> ReactiveLimits {
        ReactiveLimits::default()
    }

    fn kind(request: &str) -> Option<RequestKind> {
        classify(request, &RoutingTable::builtin(), &limits())
            .unwrap()
            .kind()
    }

    #[test]
    fn keywords_place_the_guides_kinds_and_leave_the_rest_unplaced() {
        assert_eq!(
            kind("What is the capital of France?"),
            Some(RequestKind::InformationQuery)
        );
        assert_eq!(kind("generate a report"), Some(RequestKind::ActionRequest));
        assert_eq!(kind("calculate 2 + 2"), Some(RequestKind::ToolUsage));
        // Whole tokens: "document" holds "do", "showhow" holds "how".
        assert_eq!(kind("the document, showhow"), None);
        assert_eq!(kind("bonjour"), None);
    }

    #[test]
    fn more_matches_win_and_ties_keep_table_order() {
        // One information keyword, two tool keywords.
        assert_eq!(
            kind("how do I search and count"),
            Some(RequestKind::ToolUsage)
        );
        // One each: information_query comes first in the table.
        assert_eq!(kind("how to search"), Some(RequestKind::InformationQuery));
    }

    fn routed(request: &str) -> Option<(String, Value)> {
        route(request, &RoutingTable::builtin(), &limits())
            .unwrap()
            .tool
            .map(|t| (t.tool, t.input))
    }

    #[test]
    fn keyword_routed_tools_get_their_inputs() {
        assert_eq!(
            routed("what is 2 + 3 * 4?"),
            Some(("math.eval".into(), json!({"expr": "2 + 3 * 4"})))
        );
        assert_eq!(
            routed("count the words in \"to be or not to be\""),
            Some((
                "text.word_count".into(),
                json!({"text": "to be or not to be"})
            ))
        );
        assert_eq!(
            routed("fetch https://example.com/x"),
            Some(("http.get".into(), json!({"url": "https://example.com/x"})))
        );
        assert_eq!(
            routed("query $.a in {\"a\": 1}"),
            Some((
                "json.query".into(),
                json!({"path": "$.a", "document": {"a": 1}})
            ))
        );
    }

    #[test]
    fn a_candidate_without_its_input_falls_through() {
        // "what is" picks math.eval, which finds no expression; nothing
        // else matches, so the request needs the provider.
        let r = route(
            "what is the capital of France",
            &RoutingTable::builtin(),
            &limits(),
        )
        .unwrap();
        assert_eq!(r.tool, None);
        assert_eq!(r.classification.kind(), Some(RequestKind::InformationQuery));
        // Three word-count keywords rank text.word_count first, but there
        // is no text to count; math.eval's "what is" comes next.
        assert_eq!(
            routed("what is 6 * 7 in words, word count")
                .map(|t| t.0)
                .as_deref(),
            Some("math.eval")
        );
    }

    #[test]
    fn oversized_and_empty_requests_are_refused_by_name() {
        let limits = ReactiveLimits {
            max_request_bytes: 8,
            ..ReactiveLimits::default()
        };
        let err = route("what is 1 + 1", &RoutingTable::builtin(), &limits).unwrap_err();
        assert!(err.to_string().contains("max_request_bytes = 8"), "{err}");
        assert_eq!(
            route("  ", &RoutingTable::builtin(), &limits).unwrap_err(),
            ReactiveError::EmptyRequest
        );
    }

    #[test]
    fn the_provider_places_unplaced_requests_behind_a_breaker() {
        let mut breaker = CircuitBreaker::new(BreakerPolicy {
            failures_to_open: 2,
            cool_down_ms: 100,
        });
        let calls = std::cell::Cell::new(0);
        let mut failing = |_: &str| -> Result<RequestKind, String> {
            calls.set(calls.get() + 1);
            Err("model unreachable".into())
        };
        for now in [0, 1] {
            let (c, outcome) = resolve_unplaced(
                Classification::Unplaced,
                "hm",
                &mut failing,
                &mut breaker,
                now,
            );
            assert_eq!(c, Classification::Unplaced);
            assert!(matches!(outcome, Some(FallbackOutcome::Failed(_))));
        }
        let (_, outcome) = resolve_unplaced(
            Classification::Unplaced,
            "hm",
            &mut failing,
            &mut breaker,
            2,
        );
        assert_eq!(outcome, Some(FallbackOutcome::BreakerOpen));
        assert_eq!(calls.get(), 2, "an open breaker does not call the provider");
        let mut working = |_: &str| -> Result<RequestKind, String> { Ok(RequestKind::General) };
        let (c, _) = resolve_unplaced(
            Classification::Unplaced,
            "hm",
            &mut working,
            &mut breaker,
            101,
        );
        assert_eq!(
            c,
            Classification::Provider {
                kind: RequestKind::General
            }
        );
        assert!(breaker.admits(102), "the probe's success closed it");
        // Placed requests never reach the provider.
        let placed = Classification::Keywords {
            kind: RequestKind::ToolUsage,
            keywords: vec![],
        };
        let (c, outcome) = resolve_unplaced(placed.clone(), "x", &mut failing, &mut breaker, 103);
        assert_eq!((c, outcome), (placed, None));
    }

    proptest! {
        #[test]
        fn routing_never_panics_and_respects_the_limit(request in ".{0,300}") {
            let limits = ReactiveLimits { max_request_bytes: 256, ..ReactiveLimits::default() };
            match route(&request, &RoutingTable::builtin(), &limits) {
                Ok(r) => {
                    prop_assert!(request.len() <= 256);
                    if let Some(tool) = r.tool {
                        prop_assert!(RoutingTable::builtin().tools.iter().any(|t| t.tool == tool.tool));
                    }
                }
                Err(ReactiveError::OverLimit { .. }) => prop_assert!(request.len() > 256),
                Err(e) => prop_assert_eq!(e, ReactiveError::EmptyRequest),
            }
        }

        #[test]
        fn extracted_arithmetic_is_the_arithmetic_asked(a in 0u32..1000, b in 1u32..1000, op in prop::sample::select(vec!["+", "-", "*", "/"])) {
            let request = format!("what is {a} {op} {b}?");
            let (tool, input) = routed(&request).unwrap();
            prop_assert_eq!(tool, "math.eval");
            prop_assert_eq!(input, json!({"expr": format!("{a} {op} {b}")}));
        }
    }
}
