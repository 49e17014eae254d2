//! `llm.chat` and `llm.embed`: a node's model as tools, so any task can ask
//! it through the scheduler with its retries, breakers, budgets and traces.
//! A worker offers them only when its node has a model (`--llm-base-url`):
//! the deterministic built-in rules decompose and classify, but do not chat.
//!
//! `llm.chat` input — a prompt, or messages, with optional knobs:
//!
//! ```json
//! {"prompt": "Name three primes.", "system": "Answer briefly.",
//!  "schema": {"type": "object", ...}, "temperature": 0, "max_tokens": 200, "seed": 7}
//! ```
//!
//! or `{"messages": [{"role": "user", "content": "..."}], ...}`. Output:
//! `{"text", "finish_reason", "provider", "usage"}`, plus `json` (the
//! parsed answer) when a schema was given: the answer is then parsed and
//! checked against the schema, and an invalid one is asked for again once
//! with the error fed back.
//!
//! `llm.embed` input: `{"texts": ["...", ...]}` (or `{"text": "..."}`);
//! output: `{"vectors": [[...], ...], "dimension", "provider", "usage"}`.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_llm::{
    ChatProvider, ChatRequest, EmbeddingProvider, LlmError, Message, Role, Usage,
    ValidationFailure, chat_validated,
};
use async_trait::async_trait;
use serde_json::{Value, json};

use crate::{Tool, ToolError};

/// The `llm.chat` capability.
pub const LLM_CHAT: &str = "llm.chat";
/// The `llm.embed` capability.
pub const LLM_EMBED: &str = "llm.embed";

/// Most messages one call may carry: a conversation, not a corpus.
pub const MAX_MESSAGES: usize = 64;
/// Largest `max_tokens` a task may ask for.
pub const MAX_TOKENS: u32 = 8_192;

/// `llm.chat`: the node's chat model.
pub struct LlmChat {
    provider: Arc<dyn ChatProvider>,
}

impl LlmChat {
    pub fn new(provider: Arc<dyn ChatProvider>) -> Self {
        Self { provider }
    }
}

#[async_trait]
impl Tool for LlmChat {
    fn name(&self) -> &str {
        LLM_CHAT
    }

    async fn call(&self, input: Value) -> Result<Value, ToolError> {
        let request = chat_request(&input)?;
        if request.schema.is_some() {
            let answer = chat_validated(self.provider.as_ref(), &request, None)
                .await
                .map_err(|e| match e {
                    ValidationFailure::Provider(e) => provider_error(e),
                    ValidationFailure::Invalid(e) => {
                        ToolError::Failed(format!("the model's answer was refused twice: {e}"))
                    }
                })?;
            return Ok(json!({
                "text": answer.answer.text,
                "json": answer.value,
                "finish_reason": answer.answer.finish_reason.as_str(),
                "provider": answer.answer.provider,
                "attempts": answer.attempts,
                "usage": usage(answer.usage),
            }));
        }
        let answer = self.provider.chat(&request).await.map_err(provider_error)?;
        Ok(json!({
            "text": answer.text,
            "finish_reason": answer.finish_reason.as_str(),
            "provider": answer.provider,
            "usage": usage(answer.usage),
        }))
    }
}

/// `llm.embed`: the node's embedding model.
pub struct LlmEmbed {
    provider: Arc<dyn EmbeddingProvider>,
}

impl LlmEmbed {
    pub fn new(provider: Arc<dyn EmbeddingProvider>) -> Self {
        Self { provider }
    }
}

#[async_trait]
impl Tool for LlmEmbed {
    fn name(&self) -> &str {
        LLM_EMBED
    }

    async fn call(&self, input: Value) -> Result<Value, ToolError> {
        let texts = embed_texts(&input)?;
        let embeddings = self.provider.embed(&texts).await.map_err(provider_error)?;
        let dimension = embeddings.vectors.first().map_or(0, Vec::len);
        Ok(json!({
            "vectors": embeddings.vectors,
            "dimension": dimension,
            "provider": embeddings.provider,
            "usage": usage(embeddings.usage),
        }))
    }
}

/// The chat request `input` asks for; refuses what does not fit. Plain
/// function, so every refusal is testable without a model.
pub fn chat_request(input: &Value) -> Result<ChatRequest, ToolError> {
    let object = input
        .as_object()
        .ok_or_else(|| invalid("the input must be an object with a prompt or messages"))?;
    const KNOWN: [&str; 8] = [
        "prompt",
        "system",
        "messages",
        "schema",
        "temperature",
        "max_tokens",
        "seed",
        "timeout_ms",
    ];
    if let Some(unknown) = object.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(format!(
            "unknown field '{unknown}' (expected {})",
            KNOWN.join(", ")
        )));
    }
    let mut messages = Vec::new();
    if let Some(system) = object.get("system") {
        messages.push(Message::system(string(system, "system")?));
    }
    match (object.get("prompt"), object.get("messages")) {
        (Some(prompt), None) => messages.push(Message::user(string(prompt, "prompt")?)),
        (None, Some(list)) => {
            let list = list
                .as_array()
                .ok_or_else(|| invalid("'messages' must be a list"))?;
            if list.is_empty() || list.len() > MAX_MESSAGES {
                return Err(invalid(format!(
                    "'messages' must hold 1 to {MAX_MESSAGES} messages, not {}",
                    list.len()
                )));
            }
            for message in list {
                messages.push(message_of(message)?);
            }
        }
        (Some(_), Some(_)) => return Err(invalid("give 'prompt' or 'messages', not both")),
        (None, None) => return Err(invalid("a 'prompt' or 'messages' is required")),
    }
    let mut request = ChatRequest::new(messages);
    if let Some(schema) = object.get("schema") {
        if !schema.is_object() {
            return Err(invalid("'schema' must be a JSON schema object"));
        }
        agentmesh_llm::compile_schema(schema).map_err(|e| invalid(e.to_string()))?;
        request = request.with_schema("answer", schema.clone());
    }
    if let Some(t) = object.get("temperature") {
        let t = t
            .as_f64()
            .filter(|t| (0.0..=2.0).contains(t))
            .ok_or_else(|| invalid("'temperature' must be a number from 0 to 2"))?;
        request = request.with_temperature(t as f32);
    }
    if let Some(n) = object.get("max_tokens") {
        let n = n
            .as_u64()
            .filter(|n| (1..=u64::from(MAX_TOKENS)).contains(n))
            .ok_or_else(|| invalid(format!("'max_tokens' must be 1 to {MAX_TOKENS}")))?;
        request = request.with_max_tokens(n as u32);
    }
    if let Some(seed) = object.get("seed") {
        let seed = seed
            .as_u64()
            .ok_or_else(|| invalid("'seed' must be a non-negative integer"))?;
        request = request.with_seed(seed);
    }
    if let Some(ms) = object.get("timeout_ms") {
        let ms = ms
            .as_u64()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| invalid("'timeout_ms' must be a positive integer"))?;
        request = request.with_timeout(Duration::from_millis(ms));
    }
    Ok(request)
}

/// The texts `input` asks to embed.
pub fn embed_texts(input: &Value) -> Result<Vec<String>, ToolError> {
    match (input.get("text"), input.get("texts")) {
        (Some(text), None) => Ok(vec![string(text, "text")?]),
        (None, Some(Value::Array(texts))) if !texts.is_empty() => texts
            .iter()
            .map(|t| string(t, "texts[]"))
            .collect::<Result<_, _>>(),
        (None, Some(_)) => Err(invalid("'texts' must be a non-empty list of strings")),
        (Some(_), Some(_)) => Err(invalid("give 'text' or 'texts', not both")),
        (None, None) => Err(invalid("a 'text' or 'texts' is required")),
    }
}

fn message_of(message: &Value) -> Result<Message, ToolError> {
    let role = match message.get("role").and_then(Value::as_str) {
        Some("system") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        _ => {
            return Err(invalid(
                "each message needs a role of system, user or assistant",
            ));
        }
    };
    let content = string(
        message.get("content").unwrap_or(&Value::Null),
        "messages[].content",
    )?;
    Ok(Message { role, content })
}

fn string(value: &Value, field: &str) -> Result<String, ToolError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| invalid(format!("'{field}' must be a string")))
}

fn invalid(message: impl Into<String>) -> ToolError {
    ToolError::InvalidInput(message.into())
}

/// A provider's failure as a tool error: a request over a bound is the
/// task's; a provider that is down or slow is the worker's (another worker
/// may reach another server), and the rest is the outcome of this call.
fn provider_error(error: LlmError) -> ToolError {
    match error {
        LlmError::TooLarge { .. } => ToolError::InvalidInput(error.to_string()),
        e if e.is_transient() => ToolError::Internal(e.to_string()),
        e @ (LlmError::Timeout(_) | LlmError::RetriesExhausted { .. } | LlmError::Config(_)) => {
            ToolError::Internal(e.to_string())
        }
        e => ToolError::Failed(e.to_string()),
    }
}

fn usage(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_with_knobs_makes_one_request() {
        let request = chat_request(&json!({
            "prompt": "hi", "system": "be brief", "temperature": 0,
            "max_tokens": 10, "seed": 3, "timeout_ms": 500,
            "schema": {"type": "object"}
        }))
        .unwrap();
        assert_eq!(
            request.messages,
            vec![Message::system("be brief"), Message::user("hi")]
        );
        assert_eq!(request.max_tokens, Some(10));
        assert_eq!(request.seed, Some(3));
        assert_eq!(request.timeout, Some(Duration::from_millis(500)));
        assert_eq!(request.schema.unwrap().name, "answer");
    }

    #[test]
    fn refusals_name_the_field() {
        let refused = |input: Value| chat_request(&input).unwrap_err().to_string();
        assert!(refused(json!({})).contains("'prompt' or 'messages'"));
        assert!(refused(json!({"prompt": "a", "messages": []})).contains("not both"));
        assert!(refused(json!({"prompt": "a", "max_tokens": 100000})).contains("'max_tokens'"));
        assert!(refused(json!({"prompt": "a", "temperature": 9})).contains("'temperature'"));
        assert!(refused(json!({"prompt": "a", "schema": {"type": 7}})).contains("schema"));
        assert!(refused(json!({"prompt": "a", "promt": 1})).contains("unknown field 'promt'"));
        assert!(refused(json!({"messages": [{"role": "robot", "content": "x"}]})).contains("role"));
        let many: Vec<Value> = (0..=MAX_MESSAGES)
            .map(|_| json!({"role": "user", "content": "x"}))
            .collect();
        assert!(refused(json!({"messages": many})).contains("1 to 64"));
        assert!(embed_texts(&json!({"texts": []})).is_err());
        assert_eq!(
            embed_texts(&json!({"text": "a"})).unwrap(),
            vec!["a".to_owned()]
        );
    }

    #[test]
    fn a_provider_that_is_down_is_the_workers_fault_and_a_large_prompt_the_tasks() {
        use agentmesh_core::breaker::Blame;
        let down = provider_error(LlmError::Connect("refused".into()));
        assert_eq!(down.blame(), Blame::Worker);
        let large = provider_error(LlmError::TooLarge {
            what: "the prompt",
            size: 10,
            limit: 1,
            unit: "bytes",
        });
        assert_eq!(large.blame(), Blame::Task);
        let bad = provider_error(LlmError::Status {
            status: 400,
            body: "no".into(),
        });
        assert_eq!(bad.blame(), Blame::Task);
    }
}
