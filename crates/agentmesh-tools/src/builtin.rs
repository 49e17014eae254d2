//! Built-in tools over the pure algorithms of `agentmesh_core::builtin`.

use std::time::Duration;

use agentmesh_core::builtin::{expr, json_query, word_count};
use async_trait::async_trait;
use serde_json::{Value, json};

use crate::{Tool, ToolError, str_field};

/// Longest `sleep` accepted, so a typo cannot park a worker slot for days.
pub const MAX_SLEEP_MS: u64 = 10 * 60 * 1000;

/// `math.eval`: `{"expr": "(4 + 6) / 2"}` → `{"value": 5}`.
#[derive(Debug, Clone, Copy)]
pub struct MathEval;

#[async_trait]
impl Tool for MathEval {
    fn name(&self) -> &str {
        "math.eval"
    }

    async fn call(&self, input: Value) -> Result<Value, ToolError> {
        let source = match input.get("expr") {
            Some(Value::Number(n)) => n.to_string(),
            _ => str_field(&input, "expr")?.to_owned(),
        };
        let value = expr::eval(&source).map_err(|e| ToolError::Failed(e.to_string()))?;
        Ok(json!({ "value": number(value) }))
    }
}

/// Integral results print as integers (`5`, not `5.0`).
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        json!(value as i64)
    } else {
        json!(value)
    }
}

/// `text.word_count`: `{"text": "..."}` → `{"words", "chars", "lines", "top_words"}`.
#[derive(Debug, Clone, Copy)]
pub struct WordCount;

#[async_trait]
impl Tool for WordCount {
    fn name(&self) -> &str {
        "text.word_count"
    }

    async fn call(&self, input: Value) -> Result<Value, ToolError> {
        let text = str_field(&input, "text")?;
        let top = match input.get("top") {
            None => word_count::DEFAULT_TOP_N,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    ToolError::InvalidInput("field 'top' must be a non-negative integer".into())
                })?,
        };
        serde_json::to_value(word_count::count_words(text, top))
            .map_err(|e| ToolError::Failed(e.to_string()))
    }
}

/// `json.query`: `{"document": {...}, "path": "$.a[0]"}` → `{"matches": [...]}`.
///
/// Its evaluation counts and sizes matches as it goes (see
/// [`json_query`]); [`JsonQuery::within`] ties those budgets to the
/// worker's output cap, so a query whose output could not be reported
/// stops before it clones anything.
#[derive(Debug, Clone, Copy)]
pub struct JsonQuery {
    limits: json_query::Limits,
    max_output_bytes: usize,
}

impl Default for JsonQuery {
    fn default() -> Self {
        Self::within(crate::DEFAULT_MAX_OUTPUT_BYTES)
    }
}

/// Room for the output's keys, braces and `count` around the matches.
const JSON_QUERY_FRAME: usize = 64;

impl JsonQuery {
    /// A `json.query` whose whole output fits `max_output_bytes`. The
    /// output holds the matches, commas between them, and the first match
    /// again, so matches are limited to a quarter of the cap in number and
    /// their JSON to half of what is left.
    pub fn within(max_output_bytes: usize) -> Self {
        let defaults = json_query::Limits::default();
        let max_matches = defaults.max_matches.min(max_output_bytes / 4).max(1);
        let max_result = max_output_bytes.saturating_sub(max_matches + JSON_QUERY_FRAME) / 2;
        Self {
            limits: json_query::Limits {
                max_matches,
                max_output_bytes: defaults.max_output_bytes.min(max_result),
                ..defaults
            },
            max_output_bytes,
        }
    }

    /// The bounds each query runs within.
    pub fn limits(&self) -> &json_query::Limits {
        &self.limits
    }
}

#[async_trait]
impl Tool for JsonQuery {
    fn name(&self) -> &str {
        "json.query"
    }

    async fn call(&self, input: Value) -> Result<Value, ToolError> {
        let path = str_field(&input, "path")?;
        let document = input
            .get("document")
            .ok_or_else(|| ToolError::InvalidInput("field 'document' is required".into()))?;
        let matches = json_query::query_with(document, path, &self.limits).map_err(|e| {
            if e.is_limit() {
                ToolError::Failed(format!(
                    "{e} (json.query's share of --max-output-bytes {})",
                    self.max_output_bytes
                ))
            } else {
                ToolError::InvalidInput(e.to_string())
            }
        })?;
        let first = matches.first().cloned().unwrap_or(Value::Null);
        Ok(json!({ "matches": matches, "first": first, "count": matches.len() }))
    }
}

/// `sleep`: `{"ms": 10}` → `{"slept_ms": 10}`; for tests and demos.
#[derive(Debug, Clone, Copy)]
pub struct Sleep;

#[async_trait]
impl Tool for Sleep {
    fn name(&self) -> &str {
        "sleep"
    }

    async fn call(&self, input: Value) -> Result<Value, ToolError> {
        let ms = input.get("ms").and_then(Value::as_u64).ok_or_else(|| {
            ToolError::InvalidInput("field 'ms' must be a non-negative integer".into())
        })?;
        if ms > MAX_SLEEP_MS {
            return Err(ToolError::InvalidInput(format!(
                "ms = {ms} is over the limit of {MAX_SLEEP_MS}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(json!({ "slept_ms": ms }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn math_eval_returns_integral_values_as_integers() {
        assert_eq!(
            MathEval.call(json!({"expr": "(4 + 6) / 2"})).await,
            Ok(json!({"value": 5}))
        );
        assert_eq!(
            MathEval.call(json!({"expr": "1 / 4"})).await,
            Ok(json!({"value": 0.25}))
        );
        let err = MathEval.call(json!({"expr": "1 / 0"})).await.unwrap_err();
        assert!(err.to_string().contains("division by zero"), "{err}");
        assert!(matches!(
            MathEval.call(json!({})).await,
            Err(ToolError::InvalidInput(_))
        ));
    }

    #[tokio::test]
    async fn word_count_counts() {
        let out = WordCount
            .call(json!({"text": "the quick brown fox"}))
            .await
            .unwrap();
        assert_eq!(out["words"], json!(4));
        assert_eq!(out["lines"], json!(1));
    }

    #[tokio::test]
    async fn json_query_returns_matches() {
        let out = JsonQuery::default()
            .call(json!({"document": {"a": [1, 2]}, "path": "$.a[*]"}))
            .await
            .unwrap();
        assert_eq!(out, json!({"matches": [1, 2], "first": 1, "count": 2}));
    }

    #[tokio::test]
    async fn sleep_is_bounded() {
        assert_eq!(
            Sleep.call(json!({"ms": 1})).await,
            Ok(json!({"slept_ms": 1}))
        );
        assert!(Sleep.call(json!({"ms": MAX_SLEEP_MS + 1})).await.is_err());
    }
}
