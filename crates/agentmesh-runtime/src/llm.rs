//! The language models a node may ask: built once per node from its
//! `--llm-*` flags and shared by everything that thinks (the coordinator's
//! decomposition of natural-language requests, the reactive fallback, the
//! `llm.chat` and `llm.embed` tools), so the node's concurrency limit and
//! usage counters cover every call.

use std::fmt;
use std::sync::Arc;

use agentmesh_llm::{ChatProvider, EmbeddingProvider, LlmError, OpenAiCompatible, OpenAiConfig};

/// The node's configured models. `None` means no model is configured:
/// callers use the deterministic built-in rules instead, so a node without
/// a model still answers everything the built-in rules can.
#[derive(Clone, Default)]
pub struct Providers {
    pub chat: Option<Arc<dyn ChatProvider>>,
    pub embed: Option<Arc<dyn EmbeddingProvider>>,
}

impl Providers {
    /// No model: the built-in rules only.
    pub fn none() -> Self {
        Self::default()
    }

    /// One OpenAI-compatible client for both chat and embeddings when
    /// `config` is set; its clones share the connection pool and the
    /// per-node concurrency limit.
    pub fn from_config(config: Option<&OpenAiConfig>) -> Result<Self, LlmError> {
        let Some(config) = config else {
            return Ok(Self::none());
        };
        let client = OpenAiCompatible::new(config.clone())?;
        Ok(Self {
            chat: Some(Arc::new(client.clone())),
            embed: Some(Arc::new(client)),
        })
    }

    /// The chat provider's name, or `builtin` when no model is configured.
    pub fn chat_name(&self) -> &str {
        self.chat.as_ref().map_or(BUILTIN, |p| p.name())
    }
}

/// The name records give the deterministic built-in rules.
pub const BUILTIN: &str = "builtin";

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Providers")
            .field("chat", &self.chat.as_ref().map(|p| p.name().to_owned()))
            .field("embed", &self.embed.as_ref().map(|p| p.name().to_owned()))
            .finish()
    }
}
