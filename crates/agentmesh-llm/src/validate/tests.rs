use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::provider::{FinishReason, Role};

/// A provider that answers from a script and records what it was asked.
struct Scripted {
    name: &'static str,
    answers: Mutex<VecDeque<Result<&'static str, LlmError>>>,
    seen: Mutex<Vec<ChatRequest>>,
}

impl Scripted {
    fn new(name: &'static str, answers: Vec<Result<&'static str, LlmError>>) -> Self {
        Self {
            name,
            answers: Mutex::new(answers.into()),
            seen: Mutex::new(Vec::new()),
        }
    }
    fn seen(&self) -> Vec<ChatRequest> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl ChatProvider for Scripted {
    fn name(&self) -> &str {
        self.name
    }
    async fn chat(&self, request: &ChatRequest) -> Result<ChatAnswer, LlmError> {
        self.seen.lock().unwrap().push(request.clone());
        let text = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .expect("the script has an answer")?;
        Ok(ChatAnswer {
            text: text.to_owned(),
            finish_reason: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
            },
            provider: self.name.to_owned(),
        })
    }
}

fn request() -> ChatRequest {
    ChatRequest::new(vec![Message::user("classify")]).with_schema(
        "kind",
        json!({
            "type": "object",
            "properties": {"kind": {"type": "string", "enum": ["query", "action"]}},
            "required": ["kind"],
            "additionalProperties": false
        }),
    )
}

#[test]
fn each_stage_refuses_what_it_checks() {
    let schema = compile_schema(&request().schema.unwrap().schema).unwrap();
    let domain: DomainCheck = Arc::new(|v| {
        if v["kind"] == "action" {
            Err("no tool for actions".into())
        } else {
            Ok(())
        }
    });
    let check = |text: &str| validate(text, Some(&schema), Some(&domain));
    assert_eq!(
        check(r#"{"kind": "query"}"#).unwrap(),
        json!({"kind": "query"})
    );
    assert_eq!(check(r#"{"kind": "que"#).unwrap_err().stage, Stage::Parse);
    let schema_error = check(r#"{"kind": "other"}"#).unwrap_err();
    assert_eq!(schema_error.stage, Stage::Schema);
    assert!(schema_error.message.contains("/kind"), "{schema_error}");
    assert_eq!(
        check(r#"{"kind": "query", "extra": 1}"#).unwrap_err().stage,
        Stage::Schema
    );
    let domain_error = check(r#"{"kind": "action"}"#).unwrap_err();
    assert_eq!(domain_error.stage, Stage::Domain);
    assert_eq!(
        domain_error.to_string(),
        "the answer is not acceptable: no tool for actions"
    );
}

#[test]
fn an_invalid_schema_is_refused_once_not_per_answer() {
    let err = compile_schema(&json!({"type": 12})).unwrap_err();
    assert!(err.to_string().contains("not a valid JSON schema"), "{err}");
}

#[tokio::test]
async fn an_invalid_answer_is_retried_once_with_the_error_fed_back() {
    let model = Scripted::new(
        "model",
        vec![Ok(r#"{"kind": "maybe"}"#), Ok(r#"{"kind": "query"}"#)],
    );
    let ok = chat_validated(&model, &request(), None).await.unwrap();
    assert_eq!(ok.value, json!({"kind": "query"}));
    assert_eq!(ok.attempts, 2);
    assert_eq!(ok.retried_because.as_ref().unwrap().stage, Stage::Schema);
    assert_eq!(ok.usage.total_tokens, 30);
    let seen = model.seen();
    assert_eq!(seen.len(), 2);
    let retry = &seen[1].messages;
    assert_eq!(retry.len(), 3);
    assert_eq!(retry[1], Message::assistant(r#"{"kind": "maybe"}"#));
    assert_eq!(retry[2].role, Role::User);
    assert!(
        retry[2].content.contains("does not match the schema"),
        "{}",
        retry[2].content
    );
    assert!(retry[2].content.contains("maybe"), "{}", retry[2].content);
}

#[tokio::test]
async fn two_invalid_answers_fall_back_and_the_outcome_says_why() {
    let primary = Scripted::new("model", vec![Ok("not json"), Ok(r#"{"kind": 3}"#)]);
    let builtin = Scripted::new("builtin", vec![Ok(r#"{"kind": "action"}"#)]);
    let both = Fallback::new(primary, builtin);
    let outcome = both.chat_validated(&request(), None).await.unwrap();
    assert_eq!(outcome.value, json!({"kind": "action"}));
    assert_eq!(outcome.provider, "builtin");
    assert_eq!(outcome.attempts, 3);
    let reason = outcome.fallback.unwrap();
    assert_eq!(reason.from, "model");
    assert_eq!(reason.kind, FallbackKind::InvalidAnswer);
    assert!(
        reason.detail.contains("does not match the schema"),
        "{}",
        reason.detail
    );
    assert_eq!(both.primary.seen().len(), 2);
    // The fallback gets the caller's request, not the primary's retry.
    assert_eq!(both.fallback.seen(), vec![request()]);
}

#[tokio::test]
async fn a_provider_error_falls_back_without_a_retry() {
    let primary = Scripted::new(
        "model",
        vec![Err(LlmError::Connect("connection refused".into()))],
    );
    let builtin = Scripted::new("builtin", vec![Ok(r#"{"kind": "query"}"#)]);
    let both = Fallback::new(primary, builtin);
    let outcome = both.chat_validated(&request(), None).await.unwrap();
    assert_eq!(outcome.provider, "builtin");
    let reason = outcome.fallback.unwrap();
    assert_eq!(reason.kind, FallbackKind::ProviderError);
    assert_eq!(
        reason.detail,
        "cannot reach the provider: connection refused"
    );
    assert_eq!(both.primary.seen().len(), 1);
}

#[tokio::test]
async fn a_valid_first_answer_never_reaches_the_fallback() {
    let primary = Scripted::new("model", vec![Ok(r#" {"kind": "query"} "#)]);
    let builtin = Scripted::new("builtin", vec![]);
    let both = Fallback::new(primary, builtin);
    let outcome = both.chat_validated(&request(), None).await.unwrap();
    assert_eq!(
        (
            outcome.provider.as_str(),
            outcome.attempts,
            outcome.fallback
        ),
        ("model", 1, None)
    );
    assert!(both.fallback.seen().is_empty());
}

#[tokio::test]
async fn the_domain_check_drives_retry_and_fallback_too() {
    let domain: DomainCheck = Arc::new(|v| match v["kind"].as_str() {
        Some("query") => Ok(()),
        _ => Err("only queries are served here".into()),
    });
    let primary = Scripted::new(
        "model",
        vec![Ok(r#"{"kind": "action"}"#), Ok(r#"{"kind": "action"}"#)],
    );
    let builtin = Scripted::new("builtin", vec![Ok(r#"{"kind": "query"}"#)]);
    let both = Fallback::new(primary, builtin);
    let outcome = both
        .chat_validated(&request(), Some(&domain))
        .await
        .unwrap();
    assert_eq!(outcome.provider, "builtin");
    assert!(
        outcome
            .fallback
            .unwrap()
            .detail
            .contains("only queries are served here")
    );
}

#[test]
fn the_outcome_is_plain_data_a_record_can_store() {
    let outcome = Outcome {
        value: json!({"kind": "query"}),
        provider: "builtin".into(),
        attempts: 3,
        retried_because: None,
        fallback: Some(FallbackReason {
            from: "m".into(),
            kind: FallbackKind::InvalidAnswer,
            detail: "x".into(),
        }),
        usage: Usage::default(),
    };
    let text = serde_json::to_string(&outcome).unwrap();
    assert!(text.contains(r#""kind":"invalid_answer""#), "{text}");
    assert_eq!(serde_json::from_str::<Outcome>(&text).unwrap(), outcome);
}

#[test]
fn long_errors_are_bounded() {
    let e = InvalidAnswer::new(Stage::Domain, "x".repeat(10_000));
    assert!(e.message.chars().count() <= MAX_ERROR_CHARS + 1);
}
