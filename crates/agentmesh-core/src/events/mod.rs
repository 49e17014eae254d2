//! Event-driven agents: typed events, the handlers that react to them, and
//! the leader's routing state (docs/events.md).
//!
//! - [`EventDraft`] is what a publisher sends; [`EventDraft::check`] holds
//!   it to [`EventLimits`] before anything is stored, and names the field
//!   and the limit when it refuses.
//! - [`handler`] parses `--event-handler TYPE=ACTION` declarations and
//!   matches event types against them.
//! - [`router`] is the leader's delivery state machine: one delivery in
//!   flight per (subscription, key), bounded queues, retry with backoff, ack
//!   timeouts, lost agents and dead letters.
//!
//! Everything here is plain data and plain functions: the runtime feeds
//! in the clock, the jitter and the live agents.

pub mod handler;
pub mod router;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

pub use handler::{HandlerAction, HandlerSpec, Subscription, TypePattern};
pub use router::{
    Ack, AckOutcome, DeadLetter, Delivery, DeliveryState, Dispatch, EventRecord, Refusal, Router,
    RouterLimits, Settled,
};

/// Longest event type, in characters.
pub const MAX_TYPE_CHARS: usize = 128;
/// Longest ordering key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Most events one subtask output may emit.
pub const MAX_EMITS_PER_OUTPUT: usize = 16;

/// Bounds on one event, each a knob of the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventLimits {
    /// Compact JSON text of the payload, in bytes (`--max-event-bytes`).
    /// Small enough that an event record with its delivery states stays far
    /// below etcd's request limit.
    pub max_payload_bytes: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 64 * 1024,
        }
    }
}

/// An event as a publisher sends it, before the leader accepts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDraft {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub payload: Value,
}

/// An accepted event, as stored and delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub payload: Value,
    /// Who published it: a client, or `task:<task-id>/<subtask-id>`.
    pub source: String,
    /// Acceptance order on the leader; lanes deliver in this order.
    pub seq: u64,
    pub published_ms: u64,
}

/// Why an event was refused; each names the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    #[error("event type is empty")]
    EmptyType,
    #[error("event type is {chars} characters, over the limit of {MAX_TYPE_CHARS}")]
    TypeTooLong { chars: usize },
    #[error("event type '{event_type}' holds '{bad}'; types are letters, digits and . _ : -")]
    TypeCharacter { event_type: String, bad: char },
    #[error("event key is {bytes} bytes, over the limit of {MAX_KEY_BYTES}")]
    KeyTooLong { bytes: usize },
    #[error("event key holds a control character")]
    KeyControl,
    #[error("event payload is {bytes} bytes, over the limit of {limit} (--max-event-bytes)")]
    PayloadTooLarge { bytes: usize, limit: usize },
    #[error("a subtask output emits {count} events, over the limit of {MAX_EMITS_PER_OUTPUT}")]
    TooManyEmits { count: usize },
    #[error("emit entry {index} is malformed: {message}")]
    MalformedEmit { index: usize, message: String },
}

/// Checks an event type: 1 to [`MAX_TYPE_CHARS`] characters of
/// `[A-Za-z0-9._:-]`, so a type is safe in a metric label, a log line and a
/// handler flag without escaping.
pub fn check_type(event_type: &str) -> Result<(), EventError> {
    if event_type.is_empty() {
        return Err(EventError::EmptyType);
    }
    let chars = event_type.chars().count();
    if chars > MAX_TYPE_CHARS {
        return Err(EventError::TypeTooLong { chars });
    }
    if let Some(bad) = event_type.chars().find(|c| !is_type_char(*c)) {
        return Err(EventError::TypeCharacter {
            event_type: event_type.to_owned(),
            bad,
        });
    }
    Ok(())
}

fn is_type_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

impl EventDraft {
    /// Checks the draft against `limits`; returns the payload's size, so
    /// the caller need not serialise it again to account for it.
    pub fn check(&self, limits: &EventLimits) -> Result<usize, EventError> {
        check_type(&self.event_type)?;
        if self.key.len() > MAX_KEY_BYTES {
            return Err(EventError::KeyTooLong {
                bytes: self.key.len(),
            });
        }
        if self.key.chars().any(char::is_control) {
            return Err(EventError::KeyControl);
        }
        let bytes = json_len(&self.payload);
        if bytes > limits.max_payload_bytes {
            return Err(EventError::PayloadTooLarge {
                bytes,
                limit: limits.max_payload_bytes,
            });
        }
        Ok(bytes)
    }

    /// The accepted event.
    pub fn accept(self, id: String, source: String, seq: u64, published_ms: u64) -> Event {
        Event {
            id,
            event_type: self.event_type,
            key: self.key,
            payload: self.payload,
            source,
            seq,
            published_ms,
        }
    }
}

/// The events a tool output asks to emit: its `emit` field, an array of
/// `{type, key, payload}`. `Ok(empty)` when the output has no `emit`; each
/// entry is checked against `limits`, and the whole list is refused if any
/// entry is, so a task never emits half of what it meant to.
pub fn emits_of(output: &Value, limits: &EventLimits) -> Result<Vec<EventDraft>, EventError> {
    let Some(emit) = output.get("emit") else {
        return Ok(Vec::new());
    };
    let Some(entries) = emit.as_array() else {
        return Err(EventError::MalformedEmit {
            index: 0,
            message: "`emit` must be an array".into(),
        });
    };
    if entries.len() > MAX_EMITS_PER_OUTPUT {
        return Err(EventError::TooManyEmits {
            count: entries.len(),
        });
    }
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let draft: EventDraft = serde_json::from_value(entry.clone()).map_err(|error| {
                EventError::MalformedEmit {
                    index,
                    message: error.to_string(),
                }
            })?;
            draft.check(limits)?;
            Ok(draft)
        })
        .collect()
}

/// The length of `value`'s compact JSON text, counted without building it.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The input a `tool:` handler is called with: the event's payload, so
/// any tool handles an event whose payload is its input
/// (`order.paid=tool:math.eval` with `{"expr": "2 * 21"}`).
pub fn tool_input(event: &Event) -> Value {
    event.payload.clone()
}

/// The fields `{{event.<path>}}` in a handler's task file reach.
fn template_fields(event: &Event) -> Value {
    serde_json::json!({
        "id": event.id,
        "type": event.event_type,
        "key": event.key,
        "payload": event.payload,
        "source": event.source,
    })
}

/// A `task:` handler's task file with every `{{event.<path>}}` replaced by
/// that field of the event (`{{event.key}}`, `{{event.payload.total}}`,
/// `{{event.payload.items.0}}`): a string as it is, any other value as its
/// JSON text, a missing field as the empty string. Other `{{...}}`
/// references (`{{id.field}}` between subtasks) are left for the task.
pub fn render_template(template: &str, event: &Event) -> String {
    const OPEN: &str = "{{event.";
    let fields = template_fields(event);
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let path = after[..end].trim();
        let mut value = Some(&fields);
        for part in path.split('.') {
            value = value.and_then(|v| match v {
                Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
                other => other.get(part),
            });
        }
        match value {
            Some(Value::String(text)) => out.push_str(text),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}
