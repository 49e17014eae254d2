//! Traces and logs: one trace per task across every process it touches,
//! and log lines a machine can read.
//!
//! Tracing is off unless an OTLP endpoint is configured ([`init`]). While it
//! is off, [`span!`](crate::span) returns [`tracing::Span::none`] and every
//! propagation helper returns at once: no span is built, no header is
//! parsed or written, nothing is exported.
//!
//! While it is on, W3C trace context travels
//!
//! ```text
//! client ──gRPC metadata (traceparent)──▶ coordinator Submit
//! follower ──gRPC metadata──▶ leader (forwarded Submit/Cancel)
//! agent ──Envelope.trace_context──▶ agent (assignments, results, peer
//!                                    proposals and bids, hierarchy messages)
//! ```
//!
//! and the coordinator keeps each task's context in memory
//! ([`TraceParent`]) so the spans of a subtask placed long after `Submit`
//! returned join the task's trace.

mod logs;
mod setup;

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use self::logs::{LogFormat, colour_wanted};
pub use self::setup::{Telemetry, TelemetryError, TelemetryOptions, init};

/// Whether spans are built and exported; set once by [`init`].
static ENABLED: AtomicBool = AtomicBool::new(false);

/// W3C Trace Context (`traceparent`, `tracestate`).
static PROPAGATOR: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

/// Whether tracing is on in this process.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns span building on; [`init`] does it once the exporter runs. Tests
/// that install a subscriber of their own call it too.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// An INFO span of the given name and fields when tracing is on, and
/// [`tracing::Span::none`] (no allocation, no subscriber call) when it is
/// off.
#[macro_export]
macro_rules! span {
    ($name:literal $(, $($fields:tt)*)?) => {
        if $crate::telemetry::enabled() {
            ::tracing::info_span!($name $(, $($fields)*)?)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// The trace context a piece of work continues: a task's, kept by the
/// coordinator for the task's later spans, or the one an envelope or a
/// request arrived with. Empty when tracing is off or nothing came.
#[derive(Clone, Default)]
pub struct TraceParent(Option<opentelemetry::Context>);

impl std::fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.trace_id() {
            Some(id) => write!(f, "TraceParent({id})"),
            None => f.write_str("TraceParent(none)"),
        }
    }
}

impl TraceParent {
    /// No parent: a span adopting it starts a trace of its own.
    pub fn none() -> Self {
        Self(None)
    }

    /// The current span's context.
    pub fn current() -> Self {
        if !enabled() {
            return Self::none();
        }
        Self::of(&tracing::Span::current())
    }

    /// `span`'s context, when it is a span being traced.
    pub fn of(span: &tracing::Span) -> Self {
        if !enabled() || span.is_none() {
            return Self::none();
        }
        Self::valid(span.context())
    }

    /// The context carried by an envelope's `trace_context`.
    pub fn from_map(map: &HashMap<String, String>) -> Self {
        if !enabled() || map.is_empty() {
            return Self::none();
        }
        Self::valid(PROPAGATOR.extract(map))
    }

    /// The context carried by a request's metadata.
    pub fn from_metadata(metadata: &MetadataMap) -> Self {
        if !enabled() {
            return Self::none();
        }
        Self::valid(PROPAGATOR.extract(&MetadataExtractor(metadata)))
    }

    /// A `traceparent` header value given by hand (the CLI's
    /// `--traceparent`); parsed whether or not this process exports spans,
    /// so the trace is continued by the nodes either way. `None` when it
    /// is not a valid W3C `traceparent`.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let headers = HashMap::from([("traceparent".to_owned(), traceparent.trim().to_owned())]);
        let parent = Self::valid(PROPAGATOR.extract(&headers));
        parent.0.is_some().then_some(parent)
    }

    fn valid(cx: opentelemetry::Context) -> Self {
        if cx.span().span_context().is_valid() {
            Self(Some(cx))
        } else {
            Self::none()
        }
    }

    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// The trace's id, 32 hex digits.
    pub fn trace_id(&self) -> Option<String> {
        self.0
            .as_ref()
            .map(|cx| cx.span().span_context().trace_id().to_string())
    }

    /// Makes `span` a child of this context; nothing when either is empty.
    pub fn adopt(&self, span: &tracing::Span) {
        if let Some(cx) = &self.0
            && !span.is_none()
        {
            let _ = span.set_parent(cx.clone());
        }
    }

    /// Writes this context into `metadata` (for a request this process
    /// sends on behalf of the context's owner, e.g. the CLI).
    pub fn inject_metadata(&self, metadata: &mut MetadataMap) {
        if let Some(cx) = &self.0 {
            PROPAGATOR.inject_context(cx, &mut MetadataInjector(metadata));
        }
    }

    /// Writes this context into an envelope's `trace_context`.
    pub fn inject_map(&self, map: &mut HashMap<String, String>) {
        if let Some(cx) = &self.0 {
            PROPAGATOR.inject_context(cx, map);
        }
    }
}

/// Writes the current span's context into a request's metadata; nothing
/// when tracing is off.
pub fn inject_current_metadata(metadata: &mut MetadataMap) {
    if enabled() {
        TraceParent::current().inject_metadata(metadata);
    }
}

/// Writes the current span's context into an envelope's `trace_context`;
/// nothing when tracing is off.
pub fn inject_current_map(map: &mut HashMap<String, String>) {
    if enabled() {
        TraceParent::current().inject_map(map);
    }
}

/// A span for work that continues `parent`: built, given the parent and
/// returned; [`tracing::Span::none`] when tracing is off.
pub fn child_of(parent: &TraceParent, span: tracing::Span) -> tracing::Span {
    parent.adopt(&span);
    span
}

/// `future`, run in the current span when tracing is on: for work spawned
/// onto another task that must stay in the caller's trace.
pub fn in_current_span<F>(future: F) -> tracing::instrument::Instrumented<F> {
    use tracing::Instrument;
    let span = if enabled() {
        tracing::Span::current()
    } else {
        tracing::Span::none()
    };
    future.instrument(span)
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_given_by_hand_is_parsed_and_written_back() {
        let parent = TraceParent::parse(PARENT).expect("valid traceparent");
        assert_eq!(
            parent.trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut metadata = MetadataMap::new();
        parent.inject_metadata(&mut metadata);
        assert_eq!(metadata.get("traceparent").unwrap(), PARENT);
        let mut map = HashMap::new();
        parent.inject_map(&mut map);
        assert_eq!(map["traceparent"], PARENT);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "not a traceparent",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn while_tracing_is_off_nothing_is_read_or_written() {
        if enabled() {
            return;
        }
        let map = HashMap::from([("traceparent".to_owned(), PARENT.to_owned())]);
        assert!(!TraceParent::from_map(&map).is_some());
        let mut out = HashMap::new();
        inject_current_map(&mut out);
        assert!(out.is_empty());
        assert!(crate::span!("off", task.id = "t").is_none());
    }
}
