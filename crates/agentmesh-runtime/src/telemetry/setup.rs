//! The process's one subscriber: log lines to stderr, and spans exported
//! over OTLP/gRPC when an endpoint is configured.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use thiserror::Error;
use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use super::logs::{JsonLines, LogFormat, colour_wanted};

/// How long [`Telemetry::shutdown`] waits for the last spans to be sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    pub log_format: LogFormat,
    /// The log filter when `RUST_LOG` is unset (`info` for nodes, `warn`
    /// for client commands).
    pub default_filter: String,
    /// The OTLP/gRPC collector spans are sent to; tracing is off without
    /// one.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// `service.instance.id` of the spans: the node's agent id.
    pub instance_id: Option<String>,
    /// `OTEL_SDK_DISABLED=true`: no spans whatever the endpoint says.
    pub sdk_disabled: bool,
}

#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("cannot export traces to {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("a log subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// The installed subscriber's exporter, if any; [`Telemetry::shutdown`]
/// sends what is still buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends buffered spans (waiting at most a few seconds) and stops the
    /// exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The provider's shutdown blocks until the batch task has run.
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(FLUSH_TIMEOUT, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "could not send the last spans"),
            Ok(Err(error)) => tracing::warn!(%error, "could not send the last spans"),
            Err(_) => tracing::warn!(
                timeout = ?FLUSH_TIMEOUT,
                "gave up sending the last spans"
            ),
        }
    }
}

/// Installs the process's subscriber. With an endpoint (and without
/// `OTEL_SDK_DISABLED`), spans of agentmesh's own crates are batched and
/// exported over OTLP/gRPC; must then run inside a Tokio runtime, which
/// the exporter's batches are sent from.
pub fn init(options: TelemetryOptions) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(&options.default_filter));
    let logs = match options.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colour_wanted())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(JsonLines)
            .boxed(),
    }
    .with_filter(filter);

    let endpoint = options
        .otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty() && !options.sdk_disabled);
    let provider = endpoint
        .map(|endpoint| provider(endpoint, &options))
        .transpose()?;
    let spans = provider.as_ref().map(|provider| {
        // No source locations, thread names or busy/idle times: a span
        // carries what the docs list, which keeps each one cheap.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("agentmesh"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(|meta| {
                meta.target().starts_with("agentmesh") && *meta.level() <= Level::INFO
            }))
    });
    Registry::default()
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    if provider.is_some() {
        super::enable();
    }
    Ok(Telemetry { provider })
}

fn provider(
    endpoint: &str,
    options: &TelemetryOptions,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            message: e.to_string(),
        })?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let mut resource = Resource::builder().with_service_name(options.service_name.clone());
    if let Some(id) = &options.instance_id {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", id.clone()));
    }
    // No sampler is set here: the SDK's default is `ParentBased(AlwaysOn)`
    // (a caller's sampling decision is kept, a new trace is recorded), and
    // it honours the standard `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`
    // (e.g. `parentbased_traceidratio` and `0.1`) for fleets where tracing
    // every task costs too much.
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build())
}
