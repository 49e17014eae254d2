//! An OpenAI-compatible HTTP client: `POST {base}/chat/completions` and
//! `POST {base}/embeddings`, as served by OpenAI, vLLM, llama.cpp's server
//! and Ollama (`base` ends in `/v1`).
//!
//! Bodies are built and parsed by plain functions ([`chat_request_body`],
//! [`parse_chat_response`], ...); [`OpenAiCompatible`] only moves them over
//! hyper (rustls on ring), with sizes bounded before the work, transient
//! failures retried with jittered exponential backoff that honours
//! `Retry-After`, one time budget per call, and a concurrency limit shared
//! by every clone of a client.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::provider::{
    ChatAnswer, ChatProvider, ChatRequest, EmbeddingProvider, Embeddings, FinishReason, LlmError,
    Usage,
};

/// How an error body is quoted in [`LlmError::Status`]: enough for the
/// provider's message, bounded.
const MAX_ERROR_BODY_CHARS: usize = 300;

/// Which server is behind the URL: they differ in how structured output is
/// asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `response_format: {type: json_schema, json_schema: {name, strict, schema}}`.
    OpenAi,
    /// llama.cpp's server: OpenAI's `response_format` (it also takes a
    /// top-level `json_schema`).
    LlamaCpp,
    /// vLLM: `structured_outputs: {json: schema}` (the `guided_json` of
    /// old versions was removed in vLLM 0.12).
    Vllm,
    /// Ollama: `format: schema`.
    Ollama,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::LlamaCpp => "llama.cpp",
            Self::Vllm => "vllm",
            Self::Ollama => "ollama",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = LlmError;
    fn from_str(s: &str) -> Result<Self, LlmError> {
        match s {
            "openai" => Ok(Self::OpenAi),
            "llama.cpp" | "llamacpp" | "llama-cpp" => Ok(Self::LlamaCpp),
            "vllm" => Ok(Self::Vllm),
            "ollama" => Ok(Self::Ollama),
            other => Err(LlmError::Config(format!(
                "unknown backend {other:?}: expected openai, llama.cpp, vllm or ollama"
            ))),
        }
    }
}

/// An API key. Its `Debug` never shows it, and nothing in this crate logs
/// it: it only leaves the process in the `Authorization` header.
#[derive(Clone)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Result<Self, LlmError> {
        let key = key.into();
        let key = key.trim();
        if key.is_empty() {
            return Err(LlmError::Config("the API key is empty".into()));
        }
        http::HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            LlmError::Config("the API key has characters a header cannot carry".into())
        })?;
        Ok(Self(key.into()))
    }

    /// The key in environment variable `var`, or `None` when unset.
    pub fn from_env(var: &str) -> Result<Option<Self>, LlmError> {
        match std::env::var(var) {
            Ok(key) => Self::new(key)
                .map(Some)
                .map_err(|e| LlmError::Config(format!("{var}: {e}"))),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(LlmError::Config(format!("{var} is not valid UTF-8")))
            }
        }
    }

    /// The key in `path` (surrounding whitespace trimmed), as mounted
    /// secrets are.
    pub fn from_file(path: &Path) -> Result<Self, LlmError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            LlmError::Config(format!(
                "cannot read the API key file {}: {e}",
                path.display()
            ))
        })?;
        Self::new(text).map_err(|e| LlmError::Config(format!("{}: {e}", path.display())))
    }

    fn bearer(&self) -> http::HeaderValue {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", self.0))
            .expect("checked in ApiKey::new");
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Bounds checked before the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// Message contents plus schema of one chat request: refused before
    /// anything is sent.
    pub max_prompt_bytes: usize,
    /// A response body: reading stops at this many bytes.
    pub max_response_bytes: usize,
    /// Texts of one embedding request.
    pub max_embedding_inputs: usize,
}

impl Default for SizeLimits {
    fn default() -> Self {
        Self {
            // 256 KiB of prompt is far beyond a small model's context and
            // still sane for a large one.
            max_prompt_bytes: 256 * 1024,
            // An answer of a few thousand tokens is tens of KiB; embeddings
            // of a batch of 64 texts at 4096 dimensions are about 5 MiB.
            max_response_bytes: 8 * 1024 * 1024,
            max_embedding_inputs: 64,
        }
    }
}

/// Retries of transient failures (429, 5xx, connection errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first backoff; doubled each retry.
    pub base_delay: Duration,
    /// No backoff is longer, and a `Retry-After` beyond it is not waited
    /// for (the call fails at once, naming it).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// The backoff before retry number `retry` (1 for the first retry):
/// `base * 2^(retry-1)` capped at `max_delay`, scaled by `jitter` in
/// [0.5, 1] so clients that failed together do not retry together; a
/// `Retry-After` replaces it when longer. Plain function.
pub fn backoff_delay(
    policy: &RetryPolicy,
    retry: u32,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
    let capped = exp.min(policy.max_delay);
    let jittered = capped.mul_f64(jitter.clamp(0.5, 1.0));
    match retry_after {
        Some(after) if after > jittered => after,
        _ => jittered,
    }
}

/// A `Retry-After` value, delay-seconds or an HTTP date, as a wait from
/// `now`; `None` when unparseable. Plain function.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The fields that ask `backend` for JSON of `schema`. Plain function.
pub fn structured_output_fields(
    backend: Backend,
    name: &str,
    schema: &Value,
) -> Map<String, Value> {
    let mut fields = Map::new();
    match backend {
        Backend::OpenAi | Backend::LlamaCpp => {
            fields.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": name, "strict": true, "schema": schema}}),
            );
        }
        Backend::Vllm => {
            fields.insert("structured_outputs".into(), json!({ "json": schema }));
        }
        Backend::Ollama => {
            fields.insert("format".into(), schema.clone());
        }
    }
    fields
}

/// The JSON body of a chat completion request. Plain function.
pub fn chat_request_body(backend: Backend, model: &str, request: &ChatRequest) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert(
        "messages".into(),
        serde_json::to_value(&request.messages).expect("messages serialise"),
    );
    body.insert("stream".into(), false.into());
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(n) = request.max_tokens {
        body.insert("max_tokens".into(), n.into());
    }
    if let Some(seed) = request.seed {
        body.insert("seed".into(), seed.into());
    }
    if let Some(schema) = &request.schema {
        body.extend(structured_output_fields(
            backend,
            &schema.name,
            &schema.schema,
        ));
    }
    Value::Object(body)
}

fn usage_of(body: &Value) -> Usage {
    let n = |k: &str| body["usage"][k].as_u64().unwrap_or(0);
    let (prompt, completion) = (n("prompt_tokens"), n("completion_tokens"));
    let total = body["usage"]["total_tokens"]
        .as_u64()
        .unwrap_or(prompt + completion);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: total,
    }
}

/// A chat completion response body → the first choice's answer. Plain
/// function.
pub fn parse_chat_response(body: &[u8], provider: &str) -> Result<ChatAnswer, LlmError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| LlmError::InvalidResponse(format!("the chat response is not JSON: {e}")))?;
    let choice = &body["choices"][0];
    let text = choice["message"]["content"].as_str().ok_or_else(|| {
        LlmError::InvalidResponse("the chat response has no choices[0].message.content".into())
    })?;
    Ok(ChatAnswer {
        text: text.to_owned(),
        finish_reason: FinishReason::from_wire(choice["finish_reason"].as_str()),
        usage: usage_of(&body),
        provider: provider.to_owned(),
    })
}

/// An embeddings response body → vectors in input order, `expected` of
/// them. Plain function.
pub fn parse_embedding_response(
    body: &[u8],
    expected: usize,
    provider: &str,
) -> Result<Embeddings, LlmError> {
    let body: Value = serde_json::from_slice(body).map_err(|e| {
        LlmError::InvalidResponse(format!("the embeddings response is not JSON: {e}"))
    })?;
    let data = body["data"].as_array().ok_or_else(|| {
        LlmError::InvalidResponse("the embeddings response has no data array".into())
    })?;
    if data.len() != expected {
        return Err(LlmError::InvalidResponse(format!(
            "{} embeddings for {expected} inputs",
            data.len()
        )));
    }
    let mut vectors = vec![Vec::new(); expected];
    for (position, item) in data.iter().enumerate() {
        let index = item["index"].as_u64().map_or(position, |i| i as usize);
        let slot = vectors.get_mut(index).ok_or_else(|| {
            LlmError::InvalidResponse(format!("embedding index {index} out of range"))
        })?;
        let numbers = item["embedding"].as_array().ok_or_else(|| {
            LlmError::InvalidResponse(format!("embedding {index} is not an array"))
        })?;
        *slot = numbers
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| {
                LlmError::InvalidResponse(format!("embedding {index} holds a non-number"))
            })?;
    }
    Ok(Embeddings {
        vectors,
        usage: usage_of(&body),
        provider: provider.to_owned(),
    })
}

/// Counters of one client (shared by its clones): what a node's metrics or
/// a status page reports.
#[derive(Debug, Default)]
pub struct ProviderStats {
    requests: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

/// A copy of [`ProviderStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Calls made (a call's retries are not counted again).
    pub requests: u64,
    pub retries: u64,
    /// Calls that ended in an error.
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl ProviderStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
        }
    }
    fn record_usage(&self, usage: Usage) {
        self.prompt_tokens
            .fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(usage.completion_tokens, Ordering::Relaxed);
    }
}

/// Where and how to reach an OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Up to and including `/v1`: `http://127.0.0.1:8080/v1`,
    /// `https://api.openai.com/v1`, `http://127.0.0.1:11434/v1` (Ollama).
    pub base_url: String,
    pub model: String,
    /// The model for embeddings; `None` uses `model`.
    pub embedding_model: Option<String>,
    pub backend: Backend,
    /// Sent as `Authorization: Bearer`; local servers need none.
    pub api_key: Option<ApiKey>,
    /// The time budget of a call whose request sets none.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub limits: SizeLimits,
    /// Calls in flight at once from this client and its clones; more
    /// wait. One client per node makes it a per-node limit.
    pub max_concurrency: usize,
}

impl OpenAiConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>, backend: Backend) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            embedding_model: None,
            backend,
            api_key: None,
            // A small CPU model writes ~100 tokens/s: 1000 tokens and a
            // retry fit in two minutes.
            timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            limits: SizeLimits::default(),
            max_concurrency: 4,
        }
    }
}

type Connector = HttpsConnector<HttpConnector>;

/// The OpenAI-compatible client. Cheap to clone; clones share the
/// connection pool, the concurrency limit and the stats.
#[derive(Clone)]
pub struct OpenAiCompatible {
    config: Arc<OpenAiConfig>,
    name: Arc<str>,
    chat_uri: Uri,
    embeddings_uri: Uri,
    client: Client<Connector, Full<Bytes>>,
    permits: Arc<Semaphore>,
    stats: Arc<ProviderStats>,
}

impl fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The config's Debug redacts the key.
        f.debug_struct("OpenAiCompatible")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed, and how long the server asked us to wait.
struct AttemptError {
    error: LlmError,
    retry_after: Option<Duration>,
}

impl From<LlmError> for AttemptError {
    fn from(error: LlmError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

impl OpenAiCompatible {
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        let base = config.base_url.trim_end_matches('/');
        let uri = |path: &str| -> Result<Uri, LlmError> {
            let uri: Uri = format!("{base}{path}")
                .parse()
                .map_err(|e| LlmError::Config(format!("base URL {:?}: {e}", config.base_url)))?;
            match uri.scheme_str() {
                Some("http") | Some("https") if uri.host().is_some() => Ok(uri),
                _ => Err(LlmError::Config(format!(
                    "base URL {:?} is not an http or https URL",
                    config.base_url
                ))),
            }
        };
        let chat_uri = uri("/chat/completions")?;
        let embeddings_uri = uri("/embeddings")?;
        if config.max_concurrency == 0 || config.retry.max_attempts == 0 {
            return Err(LlmError::Config(
                "max_concurrency and retry.max_attempts must be at least 1".into(),
            ));
        }
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .expect("ring supports rustls's default protocol versions")
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let name = format!("{}:{}", config.backend.as_str(), config.model);
        Ok(Self {
            permits: Arc::new(Semaphore::new(config.max_concurrency)),
            config: Arc::new(config),
            name: name.into(),
            chat_uri,
            embeddings_uri,
            client,
            stats: Arc::new(ProviderStats::default()),
        })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// The counters of this client and its clones.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// POSTs `body` to `uri` with retries, within `budget`; the response
    /// body of the first success.
    async fn post(&self, uri: &Uri, body: Value, budget: Duration) -> Result<Bytes, LlmError> {
        let body = Bytes::from(serde_json::to_vec(&body).expect("a Value serialises"));
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + budget;
        let policy = self.config.retry;
        let mut attempt = 1;
        let result = loop {
            let outcome =
                match tokio::time::timeout_at(deadline, self.attempt(uri, body.clone())).await {
                    Ok(outcome) => outcome,
                    Err(_) => break Err(LlmError::Timeout(budget)),
                };
            let failure = match outcome {
                Ok(bytes) => break Ok(bytes),
                Err(failure) => failure,
            };
            if !failure.error.is_transient() {
                break Err(failure.error);
            }
            if attempt >= policy.max_attempts {
                break Err(LlmError::RetriesExhausted {
                    attempts: attempt,
                    last: Box::new(failure.error),
                });
            }
            if let Some(after) = failure
                .retry_after
                .filter(|after| *after > policy.max_delay)
            {
                break Err(LlmError::RetriesExhausted {
                    attempts: attempt,
                    last: Box::new(LlmError::InvalidResponse(format!(
                        "{} and Retry-After {after:?} is beyond the longest wait of {:?}",
                        failure.error, policy.max_delay
                    ))),
                });
            }
            let delay = backoff_delay(
                &policy,
                attempt,
                rand::random_range(0.5..=1.0),
                failure.retry_after,
            );
            if Instant::now() + delay >= deadline {
                break Err(LlmError::Timeout(budget));
            }
            tracing::debug!(provider = %self.name, attempt, ?delay, error = %failure.error, "retrying the model request");
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            attempt += 1;
        };
        if result.is_err() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// One request and its body, holding a concurrency permit throughout
    /// (not during the backoff between attempts).
    async fn attempt(&self, uri: &Uri, body: Bytes) -> Result<Bytes, AttemptError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut request = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        if let Some(key) = &self.config.api_key {
            request = request.header(header::AUTHORIZATION, key.bearer());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| LlmError::Config(format!("cannot build the request: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| LlmError::Connect(error_chain(&e)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let limit = self.config.limits.max_response_bytes;
        let bytes = match Limited::new(response.into_body(), limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(LlmError::ResponseTooLarge { limit }.into());
            }
            Err(e) => {
                return Err(LlmError::Connect(format!(
                    "reading the response: {}",
                    error_chain(&*e)
                ))
                .into());
            }
        };
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let body: String = text.chars().take(MAX_ERROR_BODY_CHARS).collect();
            return Err(AttemptError {
                error: LlmError::Status {
                    status: status.as_u16(),
                    body,
                },
                retry_after,
            });
        }
        Ok(bytes)
    }
}

/// An error with its sources: hyper's top-level message ("client error
/// (Connect)") alone does not say what failed. The tools' HTTP client
/// uses it too.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[async_trait]
impl ChatProvider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatAnswer, LlmError> {
        let limit = self.config.limits.max_prompt_bytes;
        let size = request.prompt_bytes();
        if size > limit {
            return Err(LlmError::TooLarge {
                what: "the prompt",
                size,
                limit,
                unit: "bytes",
            });
        }
        let body = chat_request_body(self.config.backend, &self.config.model, request);
        let budget = request.timeout.unwrap_or(self.config.timeout);
        let bytes = self.post(&self.chat_uri, body, budget).await?;
        let answer = parse_chat_response(&bytes, &self.name)?;
        self.stats.record_usage(answer.usage);
        Ok(answer)
    }
}

#[async_trait]
impl EmbeddingProvider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.name
    }

    async fn embed(&self, texts: &[String]) -> Result<Embeddings, LlmError> {
        let limits = self.config.limits;
        if texts.len() > limits.max_embedding_inputs {
            return Err(LlmError::TooLarge {
                what: "the embedding batch",
                size: texts.len(),
                limit: limits.max_embedding_inputs,
                unit: "texts",
            });
        }
        let size: usize = texts.iter().map(String::len).sum();
        if size > limits.max_prompt_bytes {
            return Err(LlmError::TooLarge {
                what: "the embedding input",
                size,
                limit: limits.max_prompt_bytes,
                unit: "bytes",
            });
        }
        let model = self
            .config
            .embedding_model
            .as_deref()
            .unwrap_or(&self.config.model);
        let body = json!({ "model": model, "input": texts });
        let bytes = self
            .post(&self.embeddings_uri, body, self.config.timeout)
            .await?;
        let embeddings = parse_embedding_response(&bytes, texts.len(), &self.name)?;
        self.stats.record_usage(embeddings.usage);
        Ok(embeddings)
    }
}

#[cfg(test)]
mod tests;
