//! Tools: what a worker can do. Each capability a worker offers is the name
//! of one [`Tool`]; a node keeps its tools in a [`ToolBox`].
//!
//! This crate sits between `agentmesh-core` (the pure algorithms the
//! built-in tools wrap) and `agentmesh-runtime` (the worker that calls
//! them), so a crate of your own tools needs neither actors nor gRPC. The
//! runtime re-exports it as `agentmesh_runtime::tools`: an embedding binary
//! depends on the runtime alone and names the same types.
//!
//! # Writing a tool
//!
//! A tool has a capability name and an async `call` from a JSON input to a
//! JSON output. Refuse input that does not fit with
//! [`ToolError::InvalidInput`]; report a run that failed on this input
//! (an upstream said no, the computation has no answer) with
//! [`ToolError::Failed`]; report a fault of the worker itself (a
//! dependency it needs is down, a bug) with [`ToolError::Internal`]. The
//! message reaches the task's record as is (cut to [`MAX_ERROR_BYTES`]).
//! Only internal errors count against the worker's circuit breaker and are
//! tried again on another worker ([`ToolError::blame`]).
//!
//! # Output cap
//!
//! A worker runs its tools through [`ToolBox::run`], which serializes the
//! output into a buffer that stops growing at the box's output cap
//! ([`ToolBox::max_output_bytes`], the node's `--max-output-bytes`); an
//! output over it fails the attempt with [`ToolError::OutputTooLarge`],
//! naming the cap and the size. The built-in tools hold their own work to
//! the same cap as they produce it (`json.query` sizes its matches before
//! it clones them, `http.get` stops reading the body at the cap).
//!
//! ```
//! use agentmesh_tools::{Tool, ToolBox, ToolError, async_trait, str_field};
//! use serde_json::{Value, json};
//!
//! /// `text.greet`: `{"name": "ada"}` → `{"greeting": "hello, ada"}`.
//! struct Greet;
//!
//! #[async_trait]
//! impl Tool for Greet {
//!     fn name(&self) -> &str {
//!         "text.greet"
//!     }
//!
//!     async fn call(&self, input: Value) -> Result<Value, ToolError> {
//!         let name = str_field(&input, "name")?;
//!         Ok(json!({ "greeting": format!("hello, {name}") }))
//!     }
//! }
//!
//! let tools = ToolBox::builtin(&[]).with(Greet);
//! assert!(tools.has("math.eval") && tools.has("text.greet"));
//!
//! let greet = tools.get("text.greet").unwrap();
//! let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let out = runtime.block_on(greet.call(json!({ "name": "ada" })));
//! assert_eq!(out, Ok(json!({ "greeting": "hello, ada" })));
//!
//! let refused = runtime.block_on(greet.call(json!({ "name": 7 })));
//! assert_eq!(
//!     refused.unwrap_err().to_string(),
//!     "invalid input: field 'name' must be a string"
//! );
//! ```

mod builtin;
pub mod http;
pub mod llm;

use std::collections::BTreeMap;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

pub use agentmesh_core::breaker::Blame;
use futures::FutureExt;
use serde_json::Value;
use thiserror::Error;

/// The attribute a [`Tool`] impl carries, re-exported so that a crate of
/// tools needs no `async-trait` dependency of its own.
pub use async_trait::async_trait;
pub use builtin::{JsonQuery, MAX_SLEEP_MS, MathEval, Sleep, WordCount};
pub use http::{AllowedHost, AllowedHostError, HttpAccess, HttpGet, HttpLimits};
pub use llm::{LLM_CHAT, LLM_EMBED, LlmChat, LlmEmbed};

/// Default of [`ToolBox::max_output_bytes`]: the coordinator's per-subtask
/// output cap, so a worker stops an output the coordinator would refuse to
/// store; far under the 4 MiB envelope, so a result always fits it.
pub use agentmesh_core::task::budget::DEFAULT_MAX_OUTPUT_BYTES;

/// Longest error message a tool call reports; longer ones are cut, so a
/// tool's error (which lands in the task record and in gRPC metadata)
/// cannot be an output by another name.
pub const MAX_ERROR_BYTES: usize = 4 * 1024;

/// Why a tool call failed. The message reaches the task record as is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The input does not fit the tool; retrying cannot help.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The tool ran and failed on this input: the task's outcome, not a
    /// fault of the worker.
    #[error("{0}")]
    Failed(String),
    /// The worker could not run the tool properly (a dependency it needs
    /// is down, a bug, a panic): another worker may succeed.
    #[error("internal error: {0}")]
    Internal(String),
    /// The output serializes to more than the worker's output cap.
    #[error("output of {size} bytes is over the limit of {limit} bytes (--max-output-bytes)")]
    OutputTooLarge { size: usize, limit: usize },
}

impl ToolError {
    /// Whose fault the failure is: only [`ToolError::Internal`] is the
    /// worker's; every other error follows from the task's input and would
    /// recur on any worker.
    pub fn blame(&self) -> Blame {
        match self {
            ToolError::Internal(_) => Blame::Worker,
            _ => Blame::Task,
        }
    }
}

/// A capability a worker offers. Calls run concurrently, up to the worker's
/// `max_concurrency`, and are cancelled by dropping their future.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The capability name, e.g. `math.eval`.
    fn name(&self) -> &str;

    async fn call(&self, input: Value) -> Result<Value, ToolError>;
}

/// The tools of one node, by name, and the cap on what any of them may
/// output.
#[derive(Clone)]
pub struct ToolBox {
    tools: BTreeMap<String, Arc<dyn Tool>>,
    max_output_bytes: usize,
}

impl Default for ToolBox {
    fn default() -> Self {
        Self {
            tools: BTreeMap::new(),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

impl std::fmt::Debug for ToolBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.keys()).finish()
    }
}

impl ToolBox {
    /// The built-in tools; `http.get` only when `http_allow` names hosts.
    /// Outputs are capped at [`DEFAULT_MAX_OUTPUT_BYTES`].
    /// Names that resolve to private addresses are refused.
    pub fn builtin(http_allow: &[AllowedHost]) -> Self {
        Self::builtin_within(
            &HttpAccess::new(http_allow.to_vec()),
            DEFAULT_MAX_OUTPUT_BYTES,
        )
    }

    /// The built-in tools, their outputs capped at `max_output_bytes`;
    /// `json.query` and `http.get` stop their own work at that cap.
    /// `http.get` is there only when `http` allows some host.
    pub fn builtin_within(http: &HttpAccess, max_output_bytes: usize) -> Self {
        let mut tools = Self {
            max_output_bytes,
            ..Self::default()
        }
        .with(MathEval)
        .with(WordCount)
        .with(JsonQuery::within(max_output_bytes))
        .with(Sleep);
        if !http.allow.is_empty() {
            let limits = HttpLimits::default().within(max_output_bytes);
            tools = tools.with(HttpGet::with_access(http.clone()).with_limits(limits));
        }
        tools
    }

    /// The largest output, as JSON, [`ToolBox::run`] returns.
    pub fn max_output_bytes(&self) -> usize {
        self.max_output_bytes
    }

    /// Calls the tool `name` with `input` and returns its output as JSON.
    ///
    /// The output is serialized into a buffer that stops growing at the
    /// cap; past it the bytes are only counted, so the error can give the
    /// size without holding it. A panic of the tool is caught and reported
    /// as an internal error (the worker's fault) rather than ending the
    /// attempt without a word; error messages are cut to
    /// [`MAX_ERROR_BYTES`].
    pub async fn run(&self, name: &str, input: Value) -> Result<String, ToolError> {
        let tool = self
            .get(name)
            .ok_or_else(|| ToolError::Internal(format!("no tool '{name}'")))?;
        let output = AssertUnwindSafe(tool.call(input))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(ToolError::Internal(format!(
                    "tool '{name}' panicked: {what}"
                )))
            })
            .map_err(shorten)?;
        serialize_within(&output, self.max_output_bytes)
    }

    /// Adds `tool`, replacing a tool of the same name.
    pub fn with(mut self, tool: impl Tool) -> Self {
        self.tools.insert(tool.name().to_owned(), Arc::new(tool));
        self
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools.get(name).cloned()
    }

    pub fn has(&self, name: &str) -> bool {
        self.tools.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
    }

    /// Adds every tool of `other`, replacing tools of the same name.
    pub fn extend(&mut self, other: &ToolBox) {
        self.tools.extend(
            other
                .tools
                .iter()
                .map(|(name, tool)| (name.clone(), tool.clone())),
        );
    }

    /// Only the named tools.
    pub fn restricted_to(&self, names: &[String]) -> Self {
        Self {
            tools: self
                .tools
                .iter()
                .filter(|(name, _)| names.contains(name))
                .map(|(name, tool)| (name.clone(), tool.clone()))
                .collect(),
            max_output_bytes: self.max_output_bytes,
        }
    }
}

/// `value` as compact JSON, or [`ToolError::OutputTooLarge`] once it
/// passes `limit` bytes; never holds more than `limit` bytes of it.
fn serialize_within(value: &Value, limit: usize) -> Result<String, ToolError> {
    let mut out = CappedWriter {
        buffer: Vec::new(),
        limit,
        size: 0,
    };
    serde_json::to_writer(&mut out, value)
        .map_err(|e| ToolError::Internal(format!("output is not serializable: {e}")))?;
    if out.size > limit {
        return Err(ToolError::OutputTooLarge {
            size: out.size,
            limit,
        });
    }
    String::from_utf8(out.buffer)
        .map_err(|e| ToolError::Internal(format!("output is not UTF-8: {e}")))
}

/// Keeps the first `limit` bytes written and counts the rest.
struct CappedWriter {
    buffer: Vec<u8>,
    limit: usize,
    size: usize,
}

impl io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.size = self.size.saturating_add(buf.len());
        if self.size <= self.limit {
            self.buffer.extend_from_slice(buf);
        } else {
            // Over the cap: what was kept is useless, and keeping nothing
            // more is the point.
            self.buffer = Vec::new();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Cuts an error's message to [`MAX_ERROR_BYTES`], on a character
/// boundary, saying how much was left out.
fn shorten(error: ToolError) -> ToolError {
    let cut = |message: String| {
        if message.len() <= MAX_ERROR_BYTES {
            return message;
        }
        let mut end = MAX_ERROR_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        format!(
            "{}... ({} more bytes)",
            &message[..end],
            message.len() - end
        )
    };
    match error {
        ToolError::InvalidInput(m) => ToolError::InvalidInput(cut(m)),
        ToolError::Failed(m) => ToolError::Failed(cut(m)),
        ToolError::Internal(m) => ToolError::Internal(cut(m)),
        other => other,
    }
}

/// Reads a required string field of a tool's input object; the error names
/// the field.
pub fn str_field<'a>(input: &'a Value, field: &str) -> Result<&'a str, ToolError> {
    input
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::InvalidInput(format!("field '{field}' must be a string")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn http_get_is_built_in_only_with_an_allow_list() {
        assert!(!ToolBox::builtin(&[]).has("http.get"));
        let allow = ["example.com".parse().unwrap()];
        assert!(ToolBox::builtin(&allow).has("http.get"));
    }

    #[tokio::test]
    async fn a_tool_of_the_same_name_replaces_the_builtin() {
        struct Constant;
        #[async_trait]
        impl Tool for Constant {
            fn name(&self) -> &str {
                "math.eval"
            }
            async fn call(&self, _: Value) -> Result<Value, ToolError> {
                Ok(json!(42))
            }
        }
        let tools = ToolBox::builtin(&[]).with(Constant);
        let tool = tools.get("math.eval").unwrap();
        assert_eq!(tool.call(json!({"expr": "1"})).await, Ok(json!(42)));
    }

    /// Outputs `{"data": "xxx..."}` of the asked length, or panics.
    struct Blob;
    #[async_trait]
    impl Tool for Blob {
        fn name(&self) -> &str {
            "blob"
        }
        async fn call(&self, input: Value) -> Result<Value, ToolError> {
            match input["len"].as_u64() {
                Some(len) => Ok(json!({ "data": "x".repeat(len as usize) })),
                None => panic!("no len"),
            }
        }
    }

    #[tokio::test]
    async fn an_output_over_the_cap_fails_naming_the_cap_and_the_size() {
        let tools = ToolBox::builtin_within(&HttpAccess::default(), 1000).with(Blob);
        let fits = tools.run("blob", json!({"len": 900})).await.unwrap();
        assert_eq!(fits.len(), 900 + r#"{"data":""}"#.len());
        let error = tools.run("blob", json!({"len": 5000})).await.unwrap_err();
        assert_eq!(
            error,
            ToolError::OutputTooLarge {
                size: 5000 + 11,
                limit: 1000
            }
        );
        assert_eq!(
            error.to_string(),
            "output of 5011 bytes is over the limit of 1000 bytes (--max-output-bytes)"
        );
        assert_eq!(error.blame(), Blame::Task);
        // A restricted box keeps the cap.
        let restricted = tools.restricted_to(&["blob".into()]);
        assert!(restricted.run("blob", json!({"len": 5000})).await.is_err());
    }

    #[tokio::test]
    async fn a_panicking_tool_is_an_internal_error_of_the_worker() {
        let tools = ToolBox::builtin(&[]).with(Blob);
        let error = tools.run("blob", json!({})).await.unwrap_err();
        assert_eq!(
            error,
            ToolError::Internal("tool 'blob' panicked: no len".into())
        );
        assert_eq!(error.blame(), Blame::Worker);
    }

    #[tokio::test]
    async fn input_errors_are_the_tasks_and_long_messages_are_cut() {
        let tools = ToolBox::builtin(&[]);
        let division = tools
            .run("math.eval", json!({"expr": "1/0"}))
            .await
            .unwrap_err();
        assert_eq!(division.blame(), Blame::Task, "{division}");
        let path = tools
            .run("json.query", json!({"document": {}, "path": "$[?"}))
            .await
            .unwrap_err();
        assert_eq!(path.blame(), Blame::Task, "{path}");
        let missing = tools.run("sleep", json!({})).await.unwrap_err();
        assert_eq!(missing.blame(), Blame::Task, "{missing}");

        let long = shorten(ToolError::Failed("é".repeat(MAX_ERROR_BYTES)));
        let message = long.to_string();
        assert!(message.len() < MAX_ERROR_BYTES + 40, "{}", message.len());
        assert!(
            message.ends_with(&format!("... ({} more bytes)", MAX_ERROR_BYTES)),
            "{}",
            &message[message.len() - 40..]
        );
    }

    #[tokio::test]
    async fn json_query_stops_within_the_output_cap() {
        // 2,000 matches of 200 bytes: 400 KB of output, over a 64 KiB cap.
        let rows: Vec<Value> = (0..2000).map(|_| json!("y".repeat(198))).collect();
        let input = json!({"document": {"rows": rows}, "path": "$.rows[*]"});
        let cap = 64 * 1024;
        let tools = ToolBox::builtin_within(&HttpAccess::default(), cap);
        let error = tools.run("json.query", input.clone()).await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains("output limit"), "{message}");
        assert!(message.contains("--max-output-bytes 65536"), "{message}");
        // The most the query's own limits allow (every match it may
        // select, the first one as large as the result limit leaves room
        // for) still fits the cap.
        let limits = *JsonQuery::within(cap).limits();
        let rest = (limits.max_matches - 1).min(limits.max_output_bytes / 2);
        let big = "z".repeat(limits.max_output_bytes - rest - 2);
        let most: Vec<Value> = std::iter::once(json!(big))
            .chain((0..rest).map(|_| json!(1)))
            .collect();
        let out = tools
            .run("json.query", json!({"document": most, "path": "$[*]"}))
            .await
            .unwrap();
        assert!(out.len() <= cap, "{} > {cap}", out.len());
        let larger = ToolBox::builtin_within(&HttpAccess::default(), 1024 * 1024);
        assert!(larger.run("json.query", input).await.is_ok());
    }

    #[test]
    fn restricted_keeps_only_the_named_tools() {
        let tools = ToolBox::builtin(&[]).restricted_to(&["sleep".into(), "nope".into()]);
        assert_eq!(tools.names(), vec!["sleep".to_owned()]);
    }
}
