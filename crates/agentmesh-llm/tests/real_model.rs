//! The client against a real model: SmolLM2-135M-Instruct served by
//! llama.cpp's own OpenAI-compatible server (the `xllamacpp` wheel), both
//! installed by scripts/install-model and started here on a free loopback
//! port. A 135M model's judgement is not tested, only structure: the
//! schema constrains, answers validate, usage is counted, embeddings have
//! the model's width, and an answer the caller refuses falls back.
//!
//! A missing Python, a failed install or a server that does not come up
//! fails the test: it never skips.

use std::sync::Arc;
use std::time::Instant;

use agentmesh_llm::{
    Backend, ChatProvider, ChatRequest, DomainCheck, EmbeddingProvider, Fallback, FallbackKind,
    FinishReason, LlmError, Message, OpenAiCompatible, OpenAiConfig, chat_validated,
};
use serde_json::{Value, json};

// Shared with the end-to-end tests, which also use `node_args`.
#[allow(dead_code)]
#[path = "support/local_model.rs"]
mod local_model;
use local_model::LocalModel;

/// SmolLM2-135M's hidden size: the width of its mean-pooled embeddings.
const EMBEDDING_DIMENSION: usize = 576;

/// A bounded schema: every string has a maxLength and the object is
/// closed, so a small model cannot ramble until max_tokens.
fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": ["information_query", "action_request", "tool_usage", "general"]},
            "topic": {"type": "string", "maxLength": 40}
        },
        "required": ["kind", "topic"],
        "additionalProperties": false
    })
}

fn request() -> ChatRequest {
    ChatRequest::new(vec![
        Message::system(
            "Classify the user's request. Answer with JSON: kind is one of information_query, \
             action_request, tool_usage, general; topic is a few words.",
        ),
        Message::user("What is the weather like in Paris today?"),
    ])
    .with_schema("classification", schema())
    .with_temperature(0.0)
    .with_max_tokens(1000)
    .with_seed(42)
}

/// The stand-in built-in provider's topic, which no model writes unprompted.
const BUILTIN_TOPIC: &str = "zz-builtin-7f3a";

/// Stands in for the deterministic built-in provider.
struct Builtin;

#[async_trait::async_trait]
impl ChatProvider for Builtin {
    fn name(&self) -> &str {
        "builtin"
    }
    async fn chat(&self, _: &ChatRequest) -> Result<agentmesh_llm::ChatAnswer, LlmError> {
        Ok(agentmesh_llm::ChatAnswer {
            text: json!({"kind": "general", "topic": BUILTIN_TOPIC}).to_string(),
            finish_reason: FinishReason::Stop,
            usage: Default::default(),
            provider: "builtin".into(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_model_answers_within_the_schema() {
    let started = Instant::now();
    let server = tokio::task::spawn_blocking(LocalModel::start)
        .await
        .unwrap();
    eprintln!("model server healthy after {:?}", started.elapsed());

    let config = OpenAiConfig::new(server.base_url(), local_model::MODEL, Backend::LlamaCpp);
    let client = OpenAiCompatible::new(config).unwrap();

    // A schema-constrained answer parses and validates on the first try.
    let at = Instant::now();
    let ok = chat_validated(&client, &request(), None)
        .await
        .expect("a valid answer");
    eprintln!(
        "constrained answer {} in {:?}: {}",
        ok.answer.usage.completion_tokens,
        at.elapsed(),
        ok.answer.text
    );
    assert_eq!(ok.answer.finish_reason, FinishReason::Stop);
    assert_eq!(
        ok.attempts, 1,
        "the grammar should make the first answer valid: {}",
        ok.answer.text
    );
    assert!(ok.value["topic"].as_str().unwrap().chars().count() <= 40);
    assert!(
        ok.answer.usage.prompt_tokens > 0 && ok.answer.usage.completion_tokens > 0,
        "{:?}",
        ok.answer.usage
    );
    assert_eq!(ok.answer.provider, "llama.cpp:smollm2");
    let stats = client.stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.prompt_tokens, ok.answer.usage.prompt_tokens);
    assert_eq!(stats.completion_tokens, ok.answer.usage.completion_tokens);

    // Embeddings have the model's width.
    let texts = vec![
        "the weather in Paris".to_owned(),
        "sort a list of numbers".to_owned(),
    ];
    let embeddings = client.embed(&texts).await.expect("embeddings");
    assert_eq!(embeddings.vectors.len(), 2);
    assert!(
        embeddings
            .vectors
            .iter()
            .all(|v| v.len() == EMBEDDING_DIMENSION)
    );
    assert!(embeddings.usage.prompt_tokens > 0);
    assert_ne!(embeddings.vectors[0], embeddings.vectors[1]);

    // An answer the caller refuses is retried once with the reason, then
    // the fallback answers and the outcome says why. Only the stand-in's
    // marker topic passes, and the feedback does not reveal it.
    let refuse: DomainCheck = Arc::new(|v| match v["topic"].as_str() {
        Some(BUILTIN_TOPIC) => Ok(()),
        _ => Err("this test refuses every model answer".into()),
    });
    let both = Fallback::new(client.clone(), Builtin);
    let outcome = both
        .chat_validated(&request(), Some(&refuse))
        .await
        .expect("the fallback's answer");
    assert_eq!(outcome.provider, "builtin");
    assert_eq!(outcome.attempts, 3);
    let reason = outcome.fallback.expect("a fallback reason");
    assert_eq!(
        (reason.from.as_str(), reason.kind),
        ("llama.cpp:smollm2", FallbackKind::InvalidAnswer)
    );
    assert!(
        reason
            .detail
            .contains("this test refuses every model answer"),
        "{}",
        reason.detail
    );
    assert_eq!(
        client.stats().requests,
        4,
        "one chat and one embedding call before, then the model was asked twice: once, then with the error"
    );
    eprintln!("real-model test took {:?}", started.elapsed());
}
