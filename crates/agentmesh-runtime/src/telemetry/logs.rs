//! Log lines: text for people, JSON lines for log pipelines.
//!
//! A JSON line is one object: `timestamp` (RFC 3339, UTC), `level`,
//! `target`, `message`, `fields` (the event's other fields), `span` (the
//! innermost span's name, when there is one) and, while tracing is on and
//! the event happens inside a traced span, `trace_id` and `span_id`, so a
//! log line leads to its trace.

use std::fmt;
use std::io::IsTerminal;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether text logs may be coloured: stderr is a terminal and `NO_COLOR`
/// is unset or empty (<https://no-color.org>). Files and pipes never get
/// escape codes.
pub fn colour_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// The JSON-lines event format (see the module's doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::with_capacity(32);
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut visitor = JsonFields::default();
        event.record(&mut visitor);

        // Written key by key, so every line reads in the same order.
        let text = |value: &str| Value::String(value.to_owned()).to_string();
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":");
        line.push_str(&text(&timestamp));
        line.push_str(",\"level\":");
        line.push_str(&text(meta.level().as_str()));
        line.push_str(",\"target\":");
        line.push_str(&text(meta.target()));
        line.push_str(",\"message\":");
        line.push_str(&text(visitor.message.as_deref().unwrap_or_default()));
        line.push_str(",\"fields\":");
        line.push_str(&Value::Object(visitor.fields).to_string());
        if let Some(span) = ctx.lookup_current() {
            line.push_str(",\"span\":");
            line.push_str(&text(span.name()));
        }
        if super::enabled() {
            let cx = tracing::Span::current().context();
            let span = cx.span();
            let context = span.span_context();
            if context.is_valid() {
                line.push_str(",\"trace_id\":\"");
                line.push_str(&context.trace_id().to_string());
                line.push_str("\",\"span_id\":\"");
                line.push_str(&context.span_id().to_string());
                line.push('"');
            }
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// An event's fields as JSON: `message` apart, numbers and booleans as
/// themselves, everything else as its `Display`/`Debug` text.
#[derive(Default)]
struct JsonFields {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl JsonFields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(text) => text,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for JsonFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, serde_json::json!(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn an_event_is_one_json_object_with_its_fields() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("submit", task.id = "t1");
            let _entered = span.enter();
            tracing::info!(
                task_id = "t1",
                subtasks = 3u64,
                ok = true,
                "task \"accepted\""
            );
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "task \"accepted\"");
        assert_eq!(line["fields"]["task_id"], "t1");
        assert_eq!(line["fields"]["subtasks"], 3);
        assert_eq!(line["fields"]["ok"], true);
        assert_eq!(line["span"], "submit");
        assert!(
            line["target"]
                .as_str()
                .unwrap()
                .starts_with("agentmesh_runtime")
        );
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        assert!(!text.contains('\u{1b}'));
        assert!(text.starts_with("{\"timestamp\":"), "{text}");
    }
}
