//! Language-model providers for agentmesh.
//!
//! - [`ChatProvider`] and [`EmbeddingProvider`]: the seams every user of a
//!   model goes through (the `llm.chat` tool, a coordinator's decomposition,
//!   a reactive agent's classifier). A deterministic built-in provider is a
//!   [`ChatProvider`] like any other.
//! - [`OpenAiCompatible`]: chat completions and embeddings over HTTP for
//!   OpenAI, vLLM, llama.cpp's server and Ollama, with bounded sizes,
//!   retries honouring `Retry-After`, a time budget per call and a
//!   concurrency limit shared by every clone.
//! - [`validate`]: an answer is parsed, checked against its JSON schema,
//!   then by the caller's domain check; [`chat_validated`] retries an
//!   invalid answer once with the error fed back, and [`Fallback`] then
//!   turns to a second provider, recording why in an [`Outcome`].
//!
//! Cancellation is by dropping the future: every call is a plain `async fn`,
//! so `tokio::select!` against a shutdown signal, `tokio::time::timeout` or
//! an aborted task cancels it at its next await point, closing the HTTP
//! connection and releasing the concurrency permit. A cancellation token in
//! the request would add a second way to do what dropping already does.

mod openai;
mod provider;
mod validate;

pub use openai::{
    ApiKey, Backend, OpenAiCompatible, OpenAiConfig, ProviderStats, RetryPolicy, SizeLimits,
    StatsSnapshot, backoff_delay, chat_request_body, error_chain, parse_chat_response,
    parse_embedding_response, parse_retry_after, structured_output_fields,
};
pub use provider::{
    ChatAnswer, ChatProvider, ChatRequest, EmbeddingProvider, Embeddings, FinishReason, LlmError,
    Message, OutputSchema, Role, Usage,
};
pub use validate::{
    DomainCheck, Fallback, FallbackKind, FallbackReason, InvalidAnswer, Outcome, Stage,
    ValidatedAnswer, ValidationFailure, chat_validated, compile_schema, retry_request, validate,
};
