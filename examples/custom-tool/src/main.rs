//! `custom-tool`: the whole `agentmesh` command line, plus one tool of our
//! own, `text.reverse`. Every node it starts (`custom-tool node ...`,
//! `custom-tool local ...`) offers it next to the built-in tools, and
//! tasks reach it through any coordinator, the stock `agentmesh` CLI
//! included.

use std::process::ExitCode;

use agentmesh::Agentmesh;
use agentmesh::tools::{Tool, ToolError, async_trait};
use serde_json::{Value, json};

/// Reverses a text: input `{"text": "..."}`, output
/// `{"reversed": "...", "chars": N}`.
struct Reverse;

#[async_trait]
impl Tool for Reverse {
    fn name(&self) -> &str {
        "text.reverse"
    }

    async fn call(&self, input: Value) -> Result<Value, ToolError> {
        let text = input
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::InvalidInput("expected {\"text\": \"...\"}".into()))?;
        let reversed: String = text.chars().rev().collect();
        Ok(json!({ "reversed": reversed, "chars": text.chars().count() }))
    }
}

fn main() -> ExitCode {
    Agentmesh::new().tool(Reverse).main()
}
