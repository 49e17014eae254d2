//! Every model answer is checked before anyone uses it: parsed as JSON,
//! checked against the request's JSON schema, then by the caller's domain
//! check. An invalid answer is retried once with the error fed back to the
//! model ([`chat_validated`]); [`Fallback`] then asks a second provider
//! (the deterministic built-in one, in a node) and records why.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::provider::{ChatAnswer, ChatProvider, ChatRequest, LlmError, Message, Usage};

/// Longest error text fed back to the model or kept in a record: enough to
/// name the field and the rule, bounded so a huge answer cannot grow the
/// next prompt.
const MAX_ERROR_CHARS: usize = 500;
/// Longest invalid answer quoted back to the model in the retry.
const MAX_QUOTED_ANSWER_CHARS: usize = 2_000;

/// The caller's check of a parsed, schema-valid answer (a DAG's
/// dependencies exist, a tool name is known); `Err` says what is wrong in
/// words the model can act on.
pub type DomainCheck = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// Which check refused an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Parse,
    Schema,
    Domain,
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", match .stage {
    Stage::Parse => "the answer is not JSON",
    Stage::Schema => "the answer does not match the schema",
    Stage::Domain => "the answer is not acceptable",
})]
pub struct InvalidAnswer {
    pub stage: Stage,
    pub message: String,
}

impl InvalidAnswer {
    fn new(stage: Stage, message: impl Into<String>) -> Self {
        Self {
            stage,
            message: truncate(&message.into(), MAX_ERROR_CHARS),
        }
    }
}

/// `schema` compiled once, for [`validate`]; an invalid schema is the
/// caller's bug and refused here, not per answer.
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, LlmError> {
    jsonschema::validator_for(schema)
        .map_err(|e| LlmError::Config(format!("the output schema is not a valid JSON schema: {e}")))
}

/// The validation pipeline: `text` parsed as JSON, checked against
/// `schema`, then by `domain`. Plain function, no IO.
pub fn validate(
    text: &str,
    schema: Option<&jsonschema::Validator>,
    domain: Option<&DomainCheck>,
) -> Result<Value, InvalidAnswer> {
    let value: Value = serde_json::from_str(text.trim())
        .map_err(|e| InvalidAnswer::new(Stage::Parse, e.to_string()))?;
    if let Some(schema) = schema {
        let errors: Vec<String> = schema
            .iter_errors(&value)
            .take(3)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{e} at {path}")
                }
            })
            .collect();
        if !errors.is_empty() {
            return Err(InvalidAnswer::new(Stage::Schema, errors.join("; ")));
        }
    }
    if let Some(domain) = domain {
        domain(&value).map_err(|why| InvalidAnswer::new(Stage::Domain, why))?;
    }
    Ok(value)
}

/// An answer that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedAnswer {
    pub value: Value,
    pub answer: ChatAnswer,
    /// 1, or 2 when the first answer was invalid and retried.
    pub attempts: u32,
    /// Why the first answer was refused, when it was.
    pub retried_because: Option<InvalidAnswer>,
    /// Tokens of every attempt.
    pub usage: Usage,
}

/// Why [`chat_validated`] produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum ValidationFailure {
    #[error(transparent)]
    Provider(#[from] LlmError),
    /// Both answers were invalid; the error is the second one's.
    #[error("invalid answer after a retry: {0}")]
    Invalid(InvalidAnswer),
}

/// Asks `provider`, validates the answer, and when it is invalid asks once
/// more with the invalid answer and the error appended as messages, so the
/// model can correct itself. The schema comes from `request.schema`.
pub async fn chat_validated(
    provider: &dyn ChatProvider,
    request: &ChatRequest,
    domain: Option<&DomainCheck>,
) -> Result<ValidatedAnswer, ValidationFailure> {
    let schema = request
        .schema
        .as_ref()
        .map(|s| compile_schema(&s.schema))
        .transpose()?;
    let first = provider.chat(request).await?;
    let mut usage = first.usage;
    let error = match validate(&first.text, schema.as_ref(), domain) {
        Ok(value) => {
            return Ok(ValidatedAnswer {
                value,
                answer: first,
                attempts: 1,
                retried_because: None,
                usage,
            });
        }
        Err(error) => error,
    };
    tracing::debug!(provider = provider.name(), %error, "invalid answer, retrying once with the error");
    let retry = retry_request(request, &first.text, &error);
    let second = provider.chat(&retry).await?;
    usage.add(second.usage);
    match validate(&second.text, schema.as_ref(), domain) {
        Ok(value) => Ok(ValidatedAnswer {
            value,
            answer: second,
            attempts: 2,
            retried_because: Some(error),
            usage,
        }),
        Err(error) => Err(ValidationFailure::Invalid(error)),
    }
}

/// `request` with the invalid answer and the reason appended. Plain
/// function, so the exact feedback is testable.
pub fn retry_request(request: &ChatRequest, answer: &str, error: &InvalidAnswer) -> ChatRequest {
    let mut retry = request.clone();
    retry.messages.push(Message::assistant(truncate(
        answer,
        MAX_QUOTED_ANSWER_CHARS,
    )));
    retry.messages.push(Message::user(format!(
        "That answer was refused: {error}. Answer again with only JSON that fixes this."
    )));
    retry
}

/// Why the fallback provider answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackKind {
    /// The primary failed (unreachable, timed out, retries exhausted).
    ProviderError,
    /// The primary answered twice, invalidly both times.
    InvalidAnswer,
}

/// The record of a fallback: which provider failed and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackReason {
    /// [`ChatProvider::name`] of the provider that failed.
    pub from: String,
    pub kind: FallbackKind,
    /// The error, bounded; never a key.
    pub detail: String,
}

/// Which provider produced a validated answer and why any fallback
/// happened: plain data a task record can store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub value: Value,
    /// [`ChatProvider::name`] of the provider whose answer this is.
    pub provider: String,
    /// Answers asked for in all (1 to 4).
    pub attempts: u32,
    /// Why the answering provider's first answer was retried, if it was.
    pub retried_because: Option<InvalidAnswer>,
    pub fallback: Option<FallbackReason>,
    /// Tokens of the answering provider's attempts (a failed provider
    /// reports none).
    pub usage: Usage,
}

/// Two providers: answers come from `primary` when it produces a valid
/// one (retried once), else from `fallback`. In a node the fallback is the
/// deterministic built-in provider, so a request always gets an answer.
pub struct Fallback<P, F> {
    pub primary: P,
    pub fallback: F,
}

impl<P: ChatProvider, F: ChatProvider> Fallback<P, F> {
    pub fn new(primary: P, fallback: F) -> Self {
        Self { primary, fallback }
    }

    /// [`chat_validated`] on the primary, then on the fallback. Fails only
    /// when the fallback fails too (with the fallback's error).
    pub async fn chat_validated(
        &self,
        request: &ChatRequest,
        domain: Option<&DomainCheck>,
    ) -> Result<Outcome, ValidationFailure> {
        let (reason, spent) = match chat_validated(&self.primary, request, domain).await {
            Ok(ok) => {
                return Ok(Outcome {
                    value: ok.value,
                    provider: ok.answer.provider,
                    attempts: ok.attempts,
                    retried_because: ok.retried_because,
                    fallback: None,
                    usage: ok.usage,
                });
            }
            // A broken schema is the caller's, the same for any provider.
            Err(ValidationFailure::Provider(e @ LlmError::Config(_))) => {
                return Err(ValidationFailure::Provider(e));
            }
            Err(ValidationFailure::Provider(e)) => (
                FallbackReason {
                    from: self.primary.name().to_owned(),
                    kind: FallbackKind::ProviderError,
                    detail: truncate(&e.to_string(), MAX_ERROR_CHARS),
                },
                // A provider error may come after one invalid answer; the
                // count is of answers asked for, so count at least one.
                1,
            ),
            Err(ValidationFailure::Invalid(e)) => (
                FallbackReason {
                    from: self.primary.name().to_owned(),
                    kind: FallbackKind::InvalidAnswer,
                    detail: e.to_string(),
                },
                2,
            ),
        };
        tracing::warn!(from = %reason.from, kind = ?reason.kind, detail = %reason.detail, to = self.fallback.name(), "falling back to another provider");
        let ok = chat_validated(&self.fallback, request, domain).await?;
        Ok(Outcome {
            value: ok.value,
            provider: ok.answer.provider,
            attempts: spent + ok.attempts,
            retried_because: ok.retried_because,
            fallback: Some(reason),
            usage: ok.usage,
        })
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests;
