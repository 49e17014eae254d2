//! Handler declarations (`--event-handler TYPE=ACTION`) and matching.
//!
//! A [`HandlerSpec`] is what a node declares; its text form is also its
//! [`Subscription`]: every agent declaring the same spec shares one
//! subscription, so each event reaches the subscription once and any of
//! its live agents may take the delivery.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::check_type;

/// Which event types a handler takes: one exact type, or every type under a
/// dotted prefix (`order.*` takes `order.created` and `order.line.added`,
/// not `order` or `orders.x`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypePattern {
    Exact(String),
    /// The prefix with its trailing dot (`order.`).
    Prefix(String),
}

impl TypePattern {
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            TypePattern::Exact(exact) => exact == event_type,
            TypePattern::Prefix(prefix) => {
                event_type.len() > prefix.len() && event_type.starts_with(prefix.as_str())
            }
        }
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypePattern::Exact(exact) => f.write_str(exact),
            TypePattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// What a handler does with an event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandlerAction {
    /// Call the tool with the event as input.
    Tool(String),
    /// Submit the task file at this path, `{{event.*}}` filled in.
    Task(String),
}

impl fmt::Display for HandlerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerAction::Tool(tool) => write!(f, "tool:{tool}"),
            HandlerAction::Task(path) => write!(f, "task:{path}"),
        }
    }
}

/// One declared handler: `TYPE=tool:CAPABILITY` or `TYPE=task:PATH`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandlerSpec {
    pub pattern: TypePattern,
    pub action: HandlerAction,
}

impl HandlerSpec {
    /// The subscription every agent declaring this spec shares.
    pub fn subscription(&self) -> Subscription {
        Subscription(self.to_string())
    }
}

impl fmt::Display for HandlerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.pattern, self.action)
    }
}

impl FromStr for HandlerSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |why: &str| format!("event handler '{text}' is invalid: {why}");
        let (pattern, action) = text
            .split_once('=')
            .ok_or_else(|| refuse("expected TYPE=tool:CAPABILITY or TYPE=task:PATH"))?;
        let pattern = match pattern.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('.') && prefix.len() > 1 => {
                check_type(prefix.trim_end_matches('.')).map_err(|e| refuse(&e.to_string()))?;
                TypePattern::Prefix(prefix.to_owned())
            }
            Some(_) => return Err(refuse("a wildcard is a dotted prefix, e.g. 'order.*'")),
            None => {
                check_type(pattern).map_err(|e| refuse(&e.to_string()))?;
                TypePattern::Exact(pattern.to_owned())
            }
        };
        let action = match action.split_once(':') {
            Some(("tool", tool)) if !tool.is_empty() => HandlerAction::Tool(tool.to_owned()),
            Some(("task", path)) if !path.is_empty() => HandlerAction::Task(path.to_owned()),
            _ => return Err(refuse("the action is 'tool:CAPABILITY' or 'task:PATH'")),
        };
        Ok(HandlerSpec { pattern, action })
    }
}

impl Serialize for HandlerSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HandlerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A subscription: the text of a [`HandlerSpec`]. Each event is delivered
/// once per matching subscription.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Subscription(String);

impl Subscription {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The spec this subscription names; `None` for text that is not one
    /// (a record written by a newer node).
    pub fn spec(&self) -> Option<HandlerSpec> {
        self.0.parse().ok()
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The distinct subscriptions among `declared` (every live agent's
/// handlers) that take `event_type`, sorted, so the same membership always
/// gives the same deliveries in the same order.
pub fn matching<'a>(
    declared: impl IntoIterator<Item = &'a HandlerSpec>,
    event_type: &str,
) -> Vec<Subscription> {
    let mut found: Vec<Subscription> = declared
        .into_iter()
        .filter(|spec| spec.pattern.matches(event_type))
        .map(HandlerSpec::subscription)
        .collect();
    found.sort();
    found.dedup();
    found
}
