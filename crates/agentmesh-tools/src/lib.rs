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
//! [`ToolError::InvalidInput`]; report anything else that went wrong with
//! [`ToolError::Failed`]. The message reaches the task's record as is.
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

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use thiserror::Error;

/// The attribute a [`Tool`] impl carries, re-exported so that a crate of
/// tools needs no `async-trait` dependency of its own.
pub use async_trait::async_trait;
pub use builtin::{JsonQuery, MAX_SLEEP_MS, MathEval, Sleep, WordCount};
pub use http::{AllowedHost, AllowedHostError, HttpGet, HttpLimits};

/// Why a tool call failed. The message reaches the task record as is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ToolError {
    /// The input does not fit the tool; retrying cannot help.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The tool ran and failed.
    #[error("{0}")]
    Failed(String),
}

/// A capability a worker offers. Calls run concurrently, up to the worker's
/// `max_concurrency`, and are cancelled by dropping their future.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The capability name, e.g. `math.eval`.
    fn name(&self) -> &str;

    async fn call(&self, input: Value) -> Result<Value, ToolError>;
}

/// The tools of one node, by name.
#[derive(Clone, Default)]
pub struct ToolBox {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl std::fmt::Debug for ToolBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.keys()).finish()
    }
}

impl ToolBox {
    /// The built-in tools; `http.get` only when `http_allow` names hosts.
    pub fn builtin(http_allow: &[AllowedHost]) -> Self {
        let mut tools = Self::default()
            .with(MathEval)
            .with(WordCount)
            .with(JsonQuery)
            .with(Sleep);
        if !http_allow.is_empty() {
            tools = tools.with(HttpGet::new(http_allow.to_vec()));
        }
        tools
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
        }
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

    #[test]
    fn restricted_keeps_only_the_named_tools() {
        let tools = ToolBox::builtin(&[]).restricted_to(&["sleep".into(), "nope".into()]);
        assert_eq!(tools.names(), vec!["sleep".to_owned()]);
    }
}
