//! The client against a scripted HTTP server on 127.0.0.1.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;

use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::provider::{Message, Role};
use crate::validate::{Fallback, FallbackKind};

/// One scripted response.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::from_static(b"{\"error\":\"scripted\"}"),
            delay: Duration::ZERO,
        }
    }
    fn body(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            ..Self::status(200)
        }
    }
    /// A chat completion whose answer is `content`.
    fn chat(content: &str) -> Self {
        Self::body(
            json!({
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
            })
            .to_string(),
        )
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A request as the server received it.
#[derive(Debug, Clone)]
struct Received {
    at: std::time::Instant,
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct ServerState {
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
}

struct FakeServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
}

impl FakeServer {
    async fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState {
            script: Mutex::new(script.into()),
            ..Default::default()
        });
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(state.clone(), request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

async fn handle(
    state: Arc<ServerState>,
    request: http::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = std::time::Instant::now();
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let bytes = request.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    state.received.lock().unwrap().push(Received {
        at,
        path,
        headers,
        body,
    });
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Reply::status(599));
    tokio::time::sleep(reply.delay).await;
    let mut response = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    Ok(response.body(Full::new(reply.body)).unwrap())
}

/// A config for `server` with short backoffs, so retries cost little time.
fn config(server: &FakeServer, backend: Backend) -> OpenAiConfig {
    let mut config = OpenAiConfig::new(server.base_url(), "test-model", backend);
    config.retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
    };
    config.timeout = Duration::from_secs(20);
    config
}

fn request() -> ChatRequest {
    ChatRequest::new(vec![
        Message::system("answer in JSON"),
        Message::user("classify: weather in Paris?"),
    ])
    .with_schema(
        "kind",
        json!({
            "type": "object",
            "properties": {"kind": {"type": "string", "enum": ["query", "action"]}},
            "required": ["kind"],
            "additionalProperties": false
        }),
    )
    .with_temperature(0.0)
    .with_max_tokens(1000)
    .with_seed(7)
}

#[tokio::test]
async fn a_429_waits_for_its_retry_after_then_succeeds() {
    let server = FakeServer::start(vec![
        Reply::status(429).header("retry-after", "1"),
        Reply::chat(r#"{"kind":"query"}"#),
    ])
    .await;
    let client = OpenAiCompatible::new(config(&server, Backend::LlamaCpp)).unwrap();
    let answer = client.chat(&request()).await.unwrap();
    assert_eq!(answer.text, r#"{"kind":"query"}"#);
    let received = server.received();
    assert_eq!(received.len(), 2);
    let waited = received[1].at - received[0].at;
    // The backoff alone would be 10 ms at most.
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After: 1"
    );
    let stats = client.stats();
    assert_eq!((stats.requests, stats.retries, stats.failures), (1, 1, 0));
}

#[tokio::test]
async fn a_500_is_retried_and_usage_is_recorded() {
    let server = FakeServer::start(vec![
        Reply::status(500),
        Reply::chat(r#"{"kind":"action"}"#),
    ])
    .await;
    let client = OpenAiCompatible::new(config(&server, Backend::LlamaCpp)).unwrap();
    let answer = client.chat(&request()).await.unwrap();
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    assert_eq!(
        answer.usage,
        Usage {
            prompt_tokens: 11,
            completion_tokens: 7,
            total_tokens: 18
        }
    );
    assert_eq!(answer.provider, "llama.cpp:test-model");
    assert_eq!(server.received().len(), 2);
    let stats = client.stats();
    assert_eq!(
        (stats.retries, stats.prompt_tokens, stats.completion_tokens),
        (1, 11, 7)
    );
}

#[tokio::test]
async fn retries_are_bounded_and_the_error_says_so() {
    let server = FakeServer::start(vec![
        Reply::status(503),
        Reply::status(502),
        Reply::status(500),
        Reply::chat("{}"),
    ])
    .await;
    let client = OpenAiCompatible::new(config(&server, Backend::OpenAi)).unwrap();
    let err = client.chat(&request()).await.unwrap_err();
    assert!(
        matches!(err, LlmError::RetriesExhausted { attempts: 3, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        r#"gave up after 3 attempts: the provider answered HTTP 500: {"error":"scripted"}"#
    );
    assert_eq!(server.received().len(), 3);
    assert_eq!(client.stats().failures, 1);
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let server = FakeServer::start(vec![Reply::status(400), Reply::chat("{}")]).await;
    let client = OpenAiCompatible::new(config(&server, Backend::OpenAi)).unwrap();
    let err = client.chat(&request()).await.unwrap_err();
    assert!(
        matches!(err, LlmError::Status { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn a_retry_after_beyond_the_longest_wait_fails_at_once() {
    let server = FakeServer::start(vec![
        Reply::status(429).header("retry-after", "3600"),
        Reply::chat("{}"),
    ])
    .await;
    let client = OpenAiCompatible::new(config(&server, Backend::OpenAi)).unwrap();
    let err = client.chat(&request()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("Retry-After 3600s is beyond the longest wait of 5s"),
        "{err}"
    );
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn a_truncated_body_is_an_invalid_response() {
    let server = FakeServer::start(vec![Reply::body(
        r#"{"choices":[{"message":{"content":"{\"ki"#,
    )])
    .await;
    let client = OpenAiCompatible::new(config(&server, Backend::OpenAi)).unwrap();
    let err = client.chat(&request()).await.unwrap_err();
    assert!(matches!(err, LlmError::InvalidResponse(_)), "{err:?}");
    assert!(
        err.to_string().contains("the chat response is not JSON"),
        "{err}"
    );
}

/// A provider with one fixed answer: the built-in provider's seat.
struct Fixed(&'static str);

#[async_trait]
impl ChatProvider for Fixed {
    fn name(&self) -> &str {
        "builtin"
    }
    async fn chat(&self, _: &ChatRequest) -> Result<ChatAnswer, LlmError> {
        Ok(ChatAnswer {
            text: self.0.into(),
            finish_reason: FinishReason::Stop,
            usage: Usage::default(),
            provider: "builtin".into(),
        })
    }
}

#[tokio::test]
async fn a_schema_violating_answer_is_retried_with_the_error_then_falls_back() {
    let server = FakeServer::start(vec![
        Reply::chat(r#"{"kind":"maybe"}"#),
        Reply::chat(r#"{"kind":"maybe","why":1}"#),
    ])
    .await;
    let client = OpenAiCompatible::new(config(&server, Backend::LlamaCpp)).unwrap();
    let both = Fallback::new(client, Fixed(r#"{"kind":"query"}"#));
    let outcome = both.chat_validated(&request(), None).await.unwrap();
    assert_eq!(outcome.provider, "builtin");
    assert_eq!(outcome.value, json!({"kind": "query"}));
    let reason = outcome.fallback.unwrap();
    assert_eq!(
        (reason.from.as_str(), reason.kind),
        ("llama.cpp:test-model", FallbackKind::InvalidAnswer)
    );

    let received = server.received();
    assert_eq!(received.len(), 2);
    let messages = received[1].body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(
        messages[2],
        json!({"role": "assistant", "content": r#"{"kind":"maybe"}"#})
    );
    assert_eq!(messages[3]["role"], "user");
    let feedback = messages[3]["content"].as_str().unwrap();
    assert!(
        feedback.contains("does not match the schema") && feedback.contains("maybe"),
        "{feedback}"
    );
    // The retry keeps the schema constraint.
    assert_eq!(
        received[1].body["response_format"],
        received[0].body["response_format"]
    );
}

#[tokio::test]
async fn a_slow_answer_times_out_within_the_budget() {
    let server = FakeServer::start(vec![Reply::chat("{}").delayed(Duration::from_secs(30))]).await;
    let client = OpenAiCompatible::new(config(&server, Backend::OpenAi)).unwrap();
    let started = Instant::now();
    let err = client
        .chat(&request().with_timeout(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LlmError::Timeout(t) if t == Duration::from_millis(200)),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "no answer within the time budget of 200ms");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_oversized_body_is_refused_naming_the_limit() {
    let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(10_000));
    let server = FakeServer::start(vec![Reply::body(huge)]).await;
    let mut config = config(&server, Backend::OpenAi);
    config.limits.max_response_bytes = 4096;
    let client = OpenAiCompatible::new(config).unwrap();
    let err = client.chat(&request()).await.unwrap_err();
    assert!(
        matches!(err, LlmError::ResponseTooLarge { limit: 4096 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the response body is over the limit of 4096 bytes"
    );
}

#[tokio::test]
async fn an_oversized_prompt_is_refused_before_anything_is_sent() {
    let server = FakeServer::start(vec![Reply::chat("{}")]).await;
    let mut config = config(&server, Backend::OpenAi);
    config.limits.max_prompt_bytes = 1000;
    let client = OpenAiCompatible::new(config).unwrap();
    let big = ChatRequest::new(vec![Message::user("y".repeat(2000))]);
    let err = client.chat(&big).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the prompt is 2000 bytes, over the limit of 1000 bytes"
    );
    assert!(server.received().is_empty());
    let batch: Vec<String> = (0..65).map(|i| i.to_string()).collect();
    let err = client.embed(&batch).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the embedding batch is 65 texts, over the limit of 64 texts"
    );
}

/// Log lines written while a test runs, at debug level.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_key_is_sent_as_a_bearer_token_and_never_shown() {
    const KEY: &str = "sk-test-0123456789";
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = FakeServer::start(vec![Reply::status(500), Reply::chat("{}")]).await;
    let mut config = config(&server, Backend::OpenAi);
    config.api_key = Some(ApiKey::new(format!("{KEY}\n")).unwrap());
    let client = OpenAiCompatible::new(config).unwrap();
    client.chat(&request()).await.unwrap();

    for received in server.received() {
        assert_eq!(received.headers["authorization"], format!("Bearer {KEY}"));
    }
    let shown = format!(
        "{client:?} {:?} {:?}",
        client.config(),
        client.config().api_key
    );
    assert!(!shown.contains(KEY), "{shown}");
    assert!(shown.contains("ApiKey(<redacted>)"), "{shown}");
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("retrying the model request"),
        "the retry was logged: {logs}"
    );
    assert!(!logs.contains(KEY), "{logs}");
}

#[test]
fn the_key_comes_from_a_file_or_the_environment() {
    let dir = std::env::temp_dir().join(format!("agentmesh-llm-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key");
    std::fs::write(&path, "  sk-file \n").unwrap();
    let key = ApiKey::from_file(&path).unwrap();
    assert_eq!(&*key.0, "sk-file");
    std::fs::write(&path, "\n").unwrap();
    assert!(
        ApiKey::from_file(&path)
            .unwrap_err()
            .to_string()
            .contains("the API key is empty")
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        ApiKey::from_env("AGENTMESH_LLM_TEST_UNSET_VARIABLE")
            .unwrap()
            .is_none()
    );
}

#[test]
fn each_backend_asks_for_structured_output_its_own_way() {
    let schema = json!({"type": "object"});
    let fields = |backend| Value::Object(structured_output_fields(backend, "plan", &schema));
    let openai = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "plan", "strict": true, "schema": schema}}});
    assert_eq!(fields(Backend::OpenAi), openai);
    assert_eq!(fields(Backend::LlamaCpp), openai);
    assert_eq!(
        fields(Backend::Vllm),
        json!({"structured_outputs": {"json": schema}})
    );
    assert_eq!(fields(Backend::Ollama), json!({"format": schema}));
}

#[tokio::test]
async fn the_request_body_carries_the_knobs_and_the_backend_fields() {
    let server = FakeServer::start(vec![Reply::chat("{}"), Reply::chat("{}")]).await;
    OpenAiCompatible::new(config(&server, Backend::Vllm))
        .unwrap()
        .chat(&request())
        .await
        .unwrap();
    OpenAiCompatible::new(config(&server, Backend::Ollama))
        .unwrap()
        .chat(&request())
        .await
        .unwrap();
    let received = server.received();
    let (vllm, ollama) = (&received[0].body, &received[1].body);
    assert_eq!(received[0].path, "/v1/chat/completions");
    assert_eq!(vllm["model"], "test-model");
    assert_eq!(
        (
            vllm["temperature"].as_f64(),
            vllm["max_tokens"].as_u64(),
            vllm["seed"].as_u64()
        ),
        (Some(0.0), Some(1000), Some(7))
    );
    assert_eq!(
        vllm["messages"][1],
        json!({"role": "user", "content": "classify: weather in Paris?"})
    );
    assert_eq!(
        vllm["structured_outputs"]["json"],
        request().schema.unwrap().schema
    );
    assert!(vllm.get("response_format").is_none() && vllm.get("format").is_none());
    assert_eq!(ollama["format"], request().schema.unwrap().schema);
    assert!(ollama.get("response_format").is_none());
}

#[tokio::test]
async fn the_concurrency_limit_holds_and_a_dropped_call_frees_its_permit() {
    let slow = Duration::from_millis(300);
    let server = FakeServer::start(vec![
        Reply::chat("{}").delayed(Duration::from_secs(30)),
        Reply::chat("{}").delayed(slow),
        Reply::chat("{}").delayed(slow),
    ])
    .await;
    let mut config = config(&server, Backend::OpenAi);
    config.max_concurrency = 1;
    let client = OpenAiCompatible::new(config).unwrap();
    // Cancelled by dropping once the server has it: the permit must come
    // back, or the calls below wait forever.
    {
        let first = request();
        let call = client.chat(&first);
        tokio::pin!(call);
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.received().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the first call never reached the server"
            );
            tokio::select! {
                _ = &mut call => panic!("the 30 s reply came early"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }
    let (first, second) = (request(), request());
    let (a, b) = tokio::join!(client.chat(&first), client.chat(&second));
    a.unwrap();
    b.unwrap();
    let received = server.received();
    assert_eq!(received.len(), 3);
    // With one permit the joined calls ran one after the other.
    assert!(
        received[2].at - received[1].at >= slow,
        "{:?}",
        received[2].at - received[1].at
    );
}

#[tokio::test]
async fn embeddings_come_back_in_input_order() {
    let body = json!({
        "data": [{"index": 1, "embedding": [0.5, 0.25]}, {"index": 0, "embedding": [1.0, 2.0]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4}
    });
    let server = FakeServer::start(vec![Reply::body(body.to_string())]).await;
    let mut config = config(&server, Backend::LlamaCpp);
    config.embedding_model = Some("embedder".into());
    let client = OpenAiCompatible::new(config).unwrap();
    let out = client.embed(&["a".into(), "b".into()]).await.unwrap();
    assert_eq!(out.vectors, vec![vec![1.0, 2.0], vec![0.5, 0.25]]);
    assert_eq!(out.usage.total_tokens, 4);
    let received = &server.received()[0];
    assert_eq!(received.path, "/v1/embeddings");
    assert_eq!(
        received.body,
        json!({"model": "embedder", "input": ["a", "b"]})
    );
}

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(90))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let policy = RetryPolicy {
        max_attempts: 10,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
    };
    assert_eq!(
        backoff_delay(&policy, 1, 1.0, None),
        Duration::from_millis(100)
    );
    assert_eq!(
        backoff_delay(&policy, 3, 1.0, None),
        Duration::from_millis(400)
    );
    assert_eq!(
        backoff_delay(&policy, 3, 0.5, None),
        Duration::from_millis(200)
    );
    assert_eq!(backoff_delay(&policy, 9, 1.0, None), Duration::from_secs(1));
    assert_eq!(
        backoff_delay(&policy, 40, 1.0, None),
        Duration::from_secs(1)
    );
    assert_eq!(
        backoff_delay(&policy, 1, 1.0, Some(Duration::from_secs(2))),
        Duration::from_secs(2)
    );
    assert_eq!(
        backoff_delay(&policy, 3, 1.0, Some(Duration::from_millis(1))),
        Duration::from_millis(400)
    );
}

#[test]
fn bodies_parse_and_refuse() {
    let answer = parse_chat_response(
        br#"{"choices":[{"finish_reason":"length","message":{"content":"x"}}]}"#,
        "p",
    )
    .unwrap();
    assert_eq!(
        (answer.finish_reason, answer.usage),
        (FinishReason::Length, Usage::default())
    );
    assert!(
        parse_chat_response(br#"{"choices":[]}"#, "p")
            .unwrap_err()
            .to_string()
            .contains("no choices[0].message.content")
    );
    assert!(
        parse_embedding_response(br#"{"data":[]}"#, 1, "p")
            .unwrap_err()
            .to_string()
            .contains("0 embeddings for 1 inputs")
    );
    assert_eq!(Message::system("s").role, Role::System);
}

#[test]
fn a_bad_base_url_is_refused() {
    for url in ["ftp://x/v1", "not a url", "/v1"] {
        let err = OpenAiCompatible::new(OpenAiConfig::new(url, "m", Backend::OpenAi)).unwrap_err();
        assert!(matches!(err, LlmError::Config(_)), "{url}: {err:?}");
    }
    assert!("vllm".parse::<Backend>().is_ok());
    assert!(
        "tgi"
            .parse::<Backend>()
            .unwrap_err()
            .to_string()
            .contains("unknown backend")
    );
}
