//! The provider traits and the plain data they exchange.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A JSON schema the answer must follow; `name` is what OpenAI's
/// `json_schema.name` asks for (letters, digits, `_` and `-`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSchema {
    pub name: String,
    pub schema: Value,
}

/// A chat request. Unset knobs are left to the provider.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// Constrains the answer to JSON of this schema (structured output).
    pub schema: Option<OutputSchema>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    /// Asks for reproducible sampling where the backend supports it.
    pub seed: Option<u64>,
    /// The time budget of the whole call, retries and their waits
    /// included; `None` takes the provider's default.
    pub timeout: Option<Duration>,
}

impl ChatRequest {
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }
    pub fn with_schema(mut self, name: impl Into<String>, schema: Value) -> Self {
        self.schema = Some(OutputSchema {
            name: name.into(),
            schema,
        });
        self
    }
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Bytes of prompt the request carries: message contents and the
    /// schema, what a prompt limit bounds.
    pub fn prompt_bytes(&self) -> usize {
        let messages: usize = self.messages.iter().map(|m| m.content.len()).sum();
        let schema = self
            .schema
            .as_ref()
            .map_or(0, |s| s.name.len() + s.schema.to_string().len());
        messages + schema
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A natural end (or a stop sequence).
    Stop,
    /// `max_tokens` ran out: the answer is probably cut short.
    Length,
    ContentFilter,
    ToolCalls,
    /// Anything else a backend reports, verbatim.
    Other(String),
}

impl FinishReason {
    pub fn from_wire(reason: Option<&str>) -> Self {
        match reason {
            Some("stop") | Some("eos") => Self::Stop,
            Some("length") => Self::Length,
            Some("content_filter") => Self::ContentFilter,
            Some("tool_calls") | Some("function_call") => Self::ToolCalls,
            Some(other) => Self::Other(other.to_owned()),
            None => Self::Other(String::new()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ContentFilter => "content_filter",
            Self::ToolCalls => "tool_calls",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tokens a call consumed, as the provider reported them (zero when it
/// did not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatAnswer {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// [`ChatProvider::name`] of the provider that answered.
    pub provider: String,
}

/// Vectors for texts, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub usage: Usage,
    pub provider: String,
}

/// What can go wrong asking a provider. Messages name the limit or the
/// status that refused, never a key.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// Refused before any work: the request exceeds a configured bound.
    #[error("{what} is {size} {unit}, over the limit of {limit} {unit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
        unit: &'static str,
    },
    /// The answer body exceeded the response limit while being read.
    #[error("the response body is over the limit of {limit} bytes")]
    ResponseTooLarge { limit: usize },
    #[error("no answer within the time budget of {0:?}")]
    Timeout(Duration),
    #[error("the provider answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot reach the provider: {0}")]
    Connect(String),
    #[error("the provider's response is not what was expected: {0}")]
    InvalidResponse(String),
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted { attempts: u32, last: Box<LlmError> },
    #[error("invalid provider configuration: {0}")]
    Config(String),
    /// What a provider that cannot serve a request (no model configured,
    /// a capability it lacks) answers.
    #[error("{0}")]
    Unsupported(String),
}

impl LlmError {
    /// Whether another attempt may succeed: 429, 5xx and connection
    /// failures are transient; anything the request itself caused is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || (500..600).contains(status),
            Self::Connect(_) => true,
            _ => false,
        }
    }
}

/// A model that answers chat requests.
#[async_trait]
pub trait ChatProvider: Send + Sync {
    /// A short name recorded with every answer (`llama.cpp:smollm2`,
    /// `builtin`).
    fn name(&self) -> &str;

    /// Answers `request`. Dropping the future cancels the call.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatAnswer, LlmError>;
}

/// A model that turns texts into vectors.
#[async_trait]
pub trait EmbeddingProvider: Send + Sync {
    fn name(&self) -> &str;

    /// One vector per text, in order. Dropping the future cancels the call.
    async fn embed(&self, texts: &[String]) -> Result<Embeddings, LlmError>;
}

#[async_trait]
impl<T: ChatProvider + ?Sized> ChatProvider for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn chat(&self, request: &ChatRequest) -> Result<ChatAnswer, LlmError> {
        (**self).chat(request).await
    }
}

#[async_trait]
impl<T: EmbeddingProvider + ?Sized> EmbeddingProvider for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn embed(&self, texts: &[String]) -> Result<Embeddings, LlmError> {
        (**self).embed(texts).await
    }
}
