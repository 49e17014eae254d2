//! The routing table: which keywords place a request in a kind, and which
//! keywords pick a tool and how its input is read out of the request.
//!
//! A table is data, not code, so an operator can ship their own as YAML or
//! JSON; [`RoutingTable::builtin`] is the default, written for the
//! built-in tools. Every table is validated against [`ReactiveLimits`]
//! before use, so a table of a million keywords is refused by name rather
//! than scanned on every request.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::text::tokens;
use super::{ReactiveError, ReactiveLimits};

/// What a request asks for, after the guide's reactive agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A question: "what", "how", "why".
    InformationQuery,
    /// Something to make or do: "create", "generate".
    ActionRequest,
    /// An explicit tool verb: "calculate", "search", "count".
    ToolUsage,
    /// None of the above; answered by the provider, when there is one.
    General,
}

impl RequestKind {
    pub const ALL: [RequestKind; 4] = [
        RequestKind::InformationQuery,
        RequestKind::ActionRequest,
        RequestKind::ToolUsage,
        RequestKind::General,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::InformationQuery => "information_query",
            RequestKind::ActionRequest => "action_request",
            RequestKind::ToolUsage => "tool_usage",
            RequestKind::General => "general",
        }
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The keywords that place a request in one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentRule {
    pub kind: RequestKind,
    pub keywords: Vec<String>,
}

/// How a tool's input is read out of the request text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extractor {
    /// The longest arithmetic expression (`{"expr": ...}`, `math.eval`).
    Expression,
    /// A quoted text, or the text after the first `:` (`{"text": ...}`,
    /// `text.word_count`).
    Text,
    /// The first `http://` or `https://` URL (`{"url": ...}`, `http.get`).
    Url,
    /// A JSONPath starting with `$` and a JSON object or array
    /// (`{"path": ..., "document": ...}`, `json.query`).
    JsonQuery,
}

impl Extractor {
    /// The input this extractor produces, as a closed object of bounded
    /// fields: what a model asked for such an input must follow, so a
    /// schema-constrained decoder cannot ramble inside an open object until
    /// its token bound cuts the answer short.
    pub fn input_schema(self) -> serde_json::Value {
        use serde_json::json;
        let string = |max: usize| json!({"type": "string", "minLength": 1, "maxLength": max});
        let (properties, required) = match self {
            Self::Expression => (json!({"expr": string(200)}), json!(["expr"])),
            Self::Text => (json!({"text": string(2000)}), json!(["text"])),
            Self::Url => (json!({"url": string(2048)}), json!(["url"])),
            Self::JsonQuery => (
                json!({"path": string(256), "document": {"type": "object"}}),
                json!(["path", "document"]),
            ),
        };
        json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }

    /// The field every input of this extractor has.
    pub fn required_field(self) -> &'static str {
        match self {
            Self::Expression => "expr",
            Self::Text => "text",
            Self::Url => "url",
            Self::JsonQuery => "path",
        }
    }
}

/// One tool the fast path may pick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRoute {
    /// The capability the subtask asks for.
    pub tool: String,
    /// Any one of these (whole tokens, phrases in a row) makes the tool a
    /// candidate; more matches rank it higher.
    pub keywords: Vec<String>,
    pub extract: Extractor,
}

/// The classifier's keywords and the tool table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingTable {
    #[serde(default)]
    pub intents: Vec<IntentRule>,
    #[serde(default)]
    pub tools: Vec<ToolRoute>,
}

impl Default for RoutingTable {
    fn default() -> Self {
        Self::builtin()
    }
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| (*w).to_owned()).collect()
}

impl RoutingTable {
    /// The default table: the guide's classifier keywords (without `do`,
    /// which is an auxiliary verb in most questions) and the built-in
    /// tools `math.eval`, `text.word_count`, `json.query` and `http.get`.
    pub fn builtin() -> Self {
        Self {
            intents: vec![
                IntentRule {
                    kind: RequestKind::InformationQuery,
                    keywords: words(&[
                        "what", "how", "when", "where", "why", "who", "which", "tell me", "explain",
                    ]),
                },
                IntentRule {
                    kind: RequestKind::ActionRequest,
                    keywords: words(&["create", "make", "generate", "build", "write", "send"]),
                },
                IntentRule {
                    kind: RequestKind::ToolUsage,
                    keywords: words(&[
                        "search",
                        "calculate",
                        "compute",
                        "evaluate",
                        "analyze",
                        "analyse",
                        "process",
                        "count",
                        "query",
                        "fetch",
                        "download",
                    ]),
                },
            ],
            tools: vec![
                ToolRoute {
                    tool: "math.eval".into(),
                    keywords: words(&[
                        "calculate",
                        "compute",
                        "evaluate",
                        "solve",
                        "what is",
                        "what s",
                        "how much is",
                        "sum",
                        "plus",
                        "minus",
                        "times",
                        "divided by",
                        "multiplied by",
                        "math",
                        "sqrt",
                    ]),
                    extract: Extractor::Expression,
                },
                ToolRoute {
                    tool: "text.word_count".into(),
                    keywords: words(&["words", "word count", "word", "count words"]),
                    extract: Extractor::Text,
                },
                ToolRoute {
                    tool: "json.query".into(),
                    keywords: words(&["json", "jsonpath", "query", "extract"]),
                    extract: Extractor::JsonQuery,
                },
                ToolRoute {
                    tool: "http.get".into(),
                    keywords: words(&["fetch", "download", "get", "url", "http", "https"]),
                    extract: Extractor::Url,
                },
            ],
        }
    }

    /// Reads a table from YAML or JSON (JSON when the first non-blank
    /// character is `{`) and validates it. The document's size is checked
    /// before it is parsed.
    pub fn parse(document: &str, limits: &ReactiveLimits) -> Result<Self, ReactiveError> {
        if document.len() > limits.max_table_bytes {
            return Err(ReactiveError::over_limit(
                "max_table_bytes",
                limits.max_table_bytes,
                format!("routing table is {} bytes", document.len()),
            ));
        }
        let table: Self = if document.trim_start().starts_with('{') {
            serde_json::from_str(document).map_err(|e| ReactiveError::Table(e.to_string()))?
        } else {
            serde_saphyr::from_str(document).map_err(|e| ReactiveError::Table(e.to_string()))?
        };
        table.validate(limits)?;
        Ok(table)
    }

    /// Bounds and shape: counts within `limits`, each kind once, tool names
    /// that can be capabilities, keywords that tokenise to something.
    pub fn validate(&self, limits: &ReactiveLimits) -> Result<(), ReactiveError> {
        if self.tools.len() > limits.max_table_tools {
            return Err(ReactiveError::over_limit(
                "max_table_tools",
                limits.max_table_tools,
                format!("routing table lists {} tools", self.tools.len()),
            ));
        }
        let mut kinds = Vec::new();
        for (i, rule) in self.intents.iter().enumerate() {
            if kinds.contains(&rule.kind) {
                return Err(ReactiveError::Table(format!(
                    "intents[{i}]: kind {} is listed twice",
                    rule.kind
                )));
            }
            kinds.push(rule.kind);
            check_keywords(&format!("intents[{i}]"), &rule.keywords, limits)?;
        }
        for (i, route) in self.tools.iter().enumerate() {
            if !valid_tool(&route.tool) {
                return Err(ReactiveError::Table(format!(
                    "tools[{i}].tool: '{}' is not a tool name (1 to 128 of A-Z a-z 0-9 . _ -)",
                    super::clip(&route.tool, 64)
                )));
            }
            if route.keywords.is_empty() {
                return Err(ReactiveError::Table(format!(
                    "tools[{i}].keywords: must list at least one keyword"
                )));
            }
            check_keywords(&format!("tools[{i}]"), &route.keywords, limits)?;
        }
        Ok(())
    }
}

fn valid_tool(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn check_keywords(
    at: &str,
    keywords: &[String],
    limits: &ReactiveLimits,
) -> Result<(), ReactiveError> {
    if keywords.len() > limits.max_keywords {
        return Err(ReactiveError::over_limit(
            "max_keywords",
            limits.max_keywords,
            format!("{at}.keywords lists {} keywords", keywords.len()),
        ));
    }
    for (j, keyword) in keywords.iter().enumerate() {
        if keyword.len() > limits.max_keyword_bytes {
            return Err(ReactiveError::over_limit(
                "max_keyword_bytes",
                limits.max_keyword_bytes,
                format!("{at}.keywords[{j}] is {} bytes", keyword.len()),
            ));
        }
        if tokens(keyword).is_empty() {
            return Err(ReactiveError::Table(format!(
                "{at}.keywords[{j}]: '{}' holds no letter or digit, so it could never match",
                super::clip(keyword, 64)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_table_is_valid() {
        RoutingTable::builtin()
            .validate(&ReactiveLimits::default())
            .unwrap();
    }

    #[test]
    fn a_yaml_table_parses_and_validates() {
        let table = RoutingTable::parse(
            "intents:\n  - kind: tool_usage\n    keywords: [add up]\n\
             tools:\n  - tool: math.eval\n    keywords: [add up]\n    extract: expression\n",
            &ReactiveLimits::default(),
        )
        .unwrap();
        assert_eq!(table.tools[0].extract, Extractor::Expression);
        assert_eq!(table.intents[0].kind, RequestKind::ToolUsage);
    }

    #[test]
    fn bad_tables_are_refused_by_name() {
        let limits = ReactiveLimits::default();
        let err = |doc: &str| RoutingTable::parse(doc, &limits).unwrap_err().to_string();
        assert!(
            err("tools: [{tool: 'a b', keywords: [x], extract: url}]").contains("tools[0].tool")
        );
        assert!(err("tools: [{tool: a, keywords: [], extract: url}]").contains("at least one"));
        assert!(err("tools: [{tool: a, keywords: ['?!'], extract: url}]").contains("no letter"));
        assert!(err("tools: [{tool: a, keywords: [x], extract: url, extra: 1}]").contains("extra"));
        assert!(
            err("intents: [{kind: general, keywords: [a]}, {kind: general, keywords: [b]}]")
                .contains("twice")
        );
        let many = format!(
            "tools: [{}]",
            vec!["{tool: a, keywords: [x], extract: url}"; limits.max_table_tools + 1].join(",")
        );
        assert!(err(&many).contains("max_table_tools"));
        let long = format!(
            "tools: [{{tool: a, keywords: [{}], extract: url}}]",
            "x".repeat(65)
        );
        assert!(err(&long).contains("max_keyword_bytes"));
        let big = "#".repeat(limits.max_table_bytes + 1);
        assert!(err(&big).contains("max_table_bytes"));
    }
}
