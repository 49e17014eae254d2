//! What a reactive task's record says about how it was answered: by the
//! response cache, by a keyword-routed tool, or by a tool the provider
//! chose after the keywords could not place the request.

use serde::{Deserialize, Serialize};

use super::table::RequestKind;
use crate::TaskId;

/// Which path of the fast path answered a reactive request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerPath {
    /// A cached answer of an earlier, similar request; no subtask ran.
    Cache,
    /// The routing table's keywords picked the tool and its input.
    Keyword,
    /// The provider picked the tool and its input, after the keywords
    /// could not.
    Provider,
}

impl AnswerPath {
    pub const ALL: [AnswerPath; 3] = [AnswerPath::Cache, AnswerPath::Keyword, AnswerPath::Provider];

    pub fn as_str(self) -> &'static str {
        match self {
            AnswerPath::Cache => "cache",
            AnswerPath::Keyword => "keyword",
            AnswerPath::Provider => "provider",
        }
    }
}

/// The reactive part of a task record: the request and its cache options
/// as submitted, and how it was answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReactiveRecord {
    pub request: String,
    /// Whether the answer may come from, and goes into, the cache.
    pub cache: bool,
    pub threshold: f64,
    pub answered_by: AnswerPath,
    /// The request's kind, when keywords or the provider placed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RequestKind>,
    /// `cache`: the similarity of the request to the cached one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// `cache`: the task whose answer was reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TaskId>,
    /// `provider`: the provider's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Why the path before this one did not answer (the keywords could
    /// not place the request, the provider's answer was retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl ReactiveRecord {
    /// A request as submitted, to be answered by keywords unless the
    /// runtime decides otherwise.
    pub fn new(request: String, cache: bool, threshold: f64) -> Self {
        Self {
            request,
            cache,
            threshold,
            answered_by: AnswerPath::Keyword,
            kind: None,
            similarity: None,
            source: None,
            provider: None,
            fallback: None,
        }
    }
}
