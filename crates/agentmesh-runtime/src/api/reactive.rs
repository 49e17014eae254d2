//! Routing of reactive requests at submit, off the coordinator actor:
//! keywords first (the node's routing table, see
//! [`route_with`]), and for a request they cannot place, the node's chat
//! provider, asked once under a JSON schema (the request's kind, one tool
//! of the table that a live worker offers, and its input), with the answer
//! validated (JSON, schema, then the tool checked against the table) and
//! retried once with the error fed back (`agentmesh_llm::chat_validated`).
//! A breaker around the provider skips it for a cool-down after failures
//! in a row, so a dead model does not slow every unplaceable request to
//! its timeout. Without a provider, or when it fails, the request is
//! refused naming why: there is no built-in rule that answers what the
//! keywords could not place.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_core::breaker::{BreakerPolicy, CircuitBreaker};
use agentmesh_core::reactive::{
    Extractor, RequestKind, Routed, RoutingTable, ToolChoice, ToolRoute,
};
use agentmesh_core::task::{TaskFile, TaskFileError};
use agentmesh_core::{Membership, Role};
use agentmesh_llm::{ChatProvider, ChatRequest, DomainCheck, Message, chat_validated};
use serde_json::{Value, json};

pub use agentmesh_core::patterns::reactive::route_with;

use crate::metrics;
use crate::support::clock::now_ms;

/// Time one provider call may take; a reactive answer that waits longer
/// is no longer fast, and the refusal says so.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(20);
/// Tokens of the provider's answer: a kind, a tool name and a small input.
const MAX_ANSWER_TOKENS: u32 = 200;

/// The roles that run reactive tools: reactive agents first, workers.
const RUNNERS: [Role; 2] = [Role::Reactive, Role::Worker];

/// Refuses `tool` unless a live reactive agent or worker offers it, in
/// the words of the validator's refusal.
pub fn check_offered(membership: &Membership, tool: &str) -> Result<(), TaskFileError> {
    if RUNNERS.iter().any(|role| membership.offers_as(*role, tool)) {
        return Ok(());
    }
    let mut available: Vec<String> = RUNNERS
        .iter()
        .flat_map(|role| membership.capabilities_of(*role))
        .collect();
    available.sort();
    available.dedup();
    Err(TaskFileError::CapabilityUnavailable {
        field: "request".into(),
        capability: tool.to_owned(),
        runner: "worker or reactive agent",
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    })
}

/// A tool the provider chose.
#[derive(Debug, Clone)]
pub struct Placed {
    pub choice: ToolChoice,
    pub kind: RequestKind,
    /// The provider's name.
    pub provider: String,
    /// Why the provider was asked (and whether its first answer was
    /// retried).
    pub why: String,
}

/// The node's provider fallback for reactive requests, and its breaker.
pub struct ProviderFallback {
    chat: Option<Arc<dyn ChatProvider>>,
    breaker: Mutex<CircuitBreaker>,
}

impl ProviderFallback {
    /// No provider: requests the keywords cannot place are refused.
    pub fn none() -> Self {
        Self {
            chat: None,
            breaker: Mutex::new(CircuitBreaker::new(BreakerPolicy::default())),
        }
    }

    pub fn new(chat: Option<Arc<dyn ChatProvider>>, policy: BreakerPolicy) -> Self {
        Self {
            chat,
            breaker: Mutex::new(CircuitBreaker::new(policy)),
        }
    }

    /// Asks the provider to place the request of `file`, which the
    /// keywords of `table` could not route; `Err` says why nothing did.
    pub async fn place(
        &self,
        file: &TaskFile,
        routed: &Routed,
        table: &RoutingTable,
        offered: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Placed, String> {
        let Some(chat) = &self.chat else {
            return Err("no provider fallback is configured to answer it (--llm-base-url)".into());
        };
        let tools: Vec<&str> = table
            .tools
            .iter()
            .map(|t| t.tool.as_str())
            .filter(|t| offered(t))
            .collect();
        if tools.is_empty() {
            return Err("no live worker offers a tool of the routing table".into());
        }
        {
            let mut breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
            let now = now_ms();
            if !breaker.admits(now) {
                return Err(format!(
                    "the provider '{}' is skipped: its breaker is open after failures in a row",
                    chat.name()
                ));
            }
            breaker.on_dispatch(now);
        }
        let request = file.request.as_deref().unwrap_or_default();
        let why = match routed.classification.kind() {
            None => "the keywords could not place the request".to_owned(),
            Some(kind) => format!(
                "the keywords placed the request as {kind} but no tool's input could be read out of it"
            ),
        };
        let outcome = ask(chat.as_ref(), request, table, &tools).await;
        let mut breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok((value, retried)) => {
                breaker.record_success(now_ms());
                metrics::reactive_provider_breaker(breaker.state());
                let kind: RequestKind =
                    serde_json::from_value(value["kind"].clone()).unwrap_or(RequestKind::General);
                let tool = value["call"]["tool"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                Ok(Placed {
                    choice: ToolChoice {
                        tool,
                        input: value["call"]
                            .get("input")
                            .cloned()
                            .unwrap_or_else(|| json!({})),
                        keywords: Vec::new(),
                    },
                    kind,
                    provider: chat.name().to_owned(),
                    why: match retried {
                        Some(error) => {
                            format!("{why}; the provider's first answer was retried: {error}")
                        }
                        None => why,
                    },
                })
            }
            Err(error) => {
                breaker.record_failure(now_ms());
                metrics::reactive_provider_breaker(breaker.state());
                Err(format!("the provider '{}' failed: {error}", chat.name()))
            }
        }
    }
}

/// The schema of the provider's answer: a kind, and a call of one of
/// `tools` with an input of the shape that tool's extractor reads, every
/// string bounded. The call is one object per tool (`anyOf`), so the input
/// is bound to the tool chosen; a schema-constrained decoder (llama.cpp's
/// grammar, vLLM's structured outputs) then cannot ramble inside an open
/// object until the token bound cuts the JSON short, which is what a small
/// model does with a bare `{"type": "object"}`. The root stays a plain
/// object, as OpenAI's structured outputs require.
pub fn answer_schema(table: &RoutingTable, tools: &[&str]) -> Value {
    let mut calls: Vec<Value> = Vec::new();
    for route in offered_routes(table, tools) {
        let call = json!({
            "type": "object",
            "properties": {
                "tool": {"type": "string", "const": route.tool},
                "input": route.extract.input_schema(),
            },
            "required": ["tool", "input"],
            "additionalProperties": false,
        });
        if !calls.contains(&call) {
            calls.push(call);
        }
    }
    json!({
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": RequestKind::ALL.map(RequestKind::as_str)},
            "call": {"anyOf": calls},
        },
        "required": ["kind", "call"],
        "additionalProperties": false,
    })
}

/// The routes of the table whose tool is among `tools`.
fn offered_routes<'t>(
    table: &'t RoutingTable,
    tools: &'t [&str],
) -> impl Iterator<Item = &'t ToolRoute> {
    table
        .tools
        .iter()
        .filter(|t| tools.contains(&t.tool.as_str()))
}

/// The prompt: the tools with their keywords and what input each takes.
fn prompt(table: &RoutingTable, tools: &[&str]) -> String {
    let mut text = String::from(
        "You route a user's request to exactly one tool. Answer with JSON only: \
         {\"kind\": one of information_query, action_request, tool_usage, general; \
         \"call\": {\"tool\": the tool's name, \"input\": the tool's input object}}.\nTools:\n",
    );
    for route in offered_routes(table, tools) {
        let input = match route.extract {
            Extractor::Expression => "{\"expr\": \"an arithmetic expression\"}",
            Extractor::Text => "{\"text\": \"the text\"}",
            Extractor::Url => "{\"url\": \"an http(s) URL\"}",
            Extractor::JsonQuery => "{\"path\": \"a JSONPath\", \"document\": {}}",
        };
        text.push_str(&format!(
            "- {} (for: {}), input {input}\n",
            route.tool,
            route.keywords.join(", ")
        ));
    }
    text
}

/// One validated call; the answer and why its first attempt was retried.
async fn ask(
    chat: &dyn ChatProvider,
    request: &str,
    table: &RoutingTable,
    tools: &[&str],
) -> Result<(Value, Option<String>), String> {
    let offered: Vec<(String, &'static str)> = offered_routes(table, tools)
        .map(|route| (route.tool.clone(), route.extract.required_field()))
        .collect();
    let domain: DomainCheck = Arc::new(move |value: &Value| {
        let tool = value["call"]["tool"].as_str().unwrap_or_default();
        let Some((_, field)) = offered.iter().find(|(t, _)| t == tool) else {
            let names: Vec<&str> = offered.iter().map(|(t, _)| t.as_str()).collect();
            return Err(format!(
                "tool '{tool}' is not one of the offered tools: {}",
                names.join(", ")
            ));
        };
        if value["call"]["input"].get(*field).is_none() {
            return Err(format!("the input of '{tool}' needs the field '{field}'"));
        }
        Ok(())
    });
    let call = ChatRequest::new(vec![
        Message::system(prompt(table, tools)),
        Message::user(request.to_owned()),
    ])
    .with_schema("reactive_route", answer_schema(table, tools))
    .with_temperature(0.0)
    .with_max_tokens(MAX_ANSWER_TOKENS)
    .with_seed(0)
    .with_timeout(PROVIDER_TIMEOUT);
    let answer = chat_validated(chat, &call, Some(&domain))
        .await
        .map_err(|e| e.to_string())?;
    Ok((answer.value, answer.retried_because.map(|e| e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_offers_only_live_tools_of_the_table() {
        let schema = answer_schema(&RoutingTable::builtin(), &["math.eval"]);
        let calls = schema["properties"]["call"]["anyOf"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["properties"]["tool"]["const"], "math.eval");
        // The input is the closed, bounded object math.eval's extractor reads.
        let input = &calls[0]["properties"]["input"];
        assert_eq!(input["required"], json!(["expr"]));
        assert_eq!(input["additionalProperties"], false);
        assert_eq!(input["properties"]["expr"]["maxLength"], 200);
        agentmesh_llm::compile_schema(&schema).expect("a valid JSON schema");
        let text = prompt(&RoutingTable::builtin(), &["math.eval"]);
        assert!(text.contains("math.eval"));
        assert!(!text.contains("http.get"));
    }
}
