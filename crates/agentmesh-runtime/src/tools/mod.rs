//! Tools: what a worker can do. Each capability a worker offers is the name
//! of one [`Tool`]; users add their own by implementing the trait.

mod builtin;
mod http;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use thiserror::Error;

pub use builtin::{JsonQuery, MathEval, Sleep, WordCount};
pub use http::HttpGet;

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
    pub fn builtin(http_allow: &[String]) -> Self {
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

/// Reads a required string field of a tool's input object.
fn str_field<'a>(input: &'a Value, field: &str) -> Result<&'a str, ToolError> {
    input
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::InvalidInput(format!("field '{field}' must be a string")))
}
