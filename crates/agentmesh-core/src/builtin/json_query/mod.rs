//! JSONPath as RFC 9535 defines it, behind the `json.query` tool.
//!
//! | syntax                              | selects                                          |
//! |-------------------------------------|--------------------------------------------------|
//! | `$`                                 | the document itself                              |
//! | `.name`, `['name']`, `["name"]`     | an object member (JSON escapes in quoted names)  |
//! | `[0]`, `[-1]`                       | an array element, negative from the end          |
//! | `.*`, `[*]`                         | every member value or array element              |
//! | `[start:end:step]`                  | a slice; any part optional, `step` may be negative |
//! | `[?<expr>]`                         | the children for which the filter holds          |
//! | `..name`, `..*`, `..[...]`          | the same, at the node and at any depth below it  |
//! | `[0, 'a', 1:3, ?@.b]`               | a union, in the order of its selectors           |
//!
//! Filters compare with `== != < <= > >=`, combine with `&& || !` and
//! parentheses, and test for existence (`[?@.isbn]`). Inside them `@` is
//! the current node and `$` the root; the functions are `length(v)`,
//! `count(nodes)`, `value(nodes)`, `match(s, re)` and `search(s, re)`, the
//! last two with I-Regexp patterns (RFC 9485). Paths are checked for
//! well-typedness before evaluation: a comparison needs singular queries,
//! a literal cannot be a test, and so on.
//!
//! A missing member or an out-of-range index is not an error: it selects
//! nothing, so a query over documents of varying shape does not fail on
//! the first one that lacks a field. Object members come in the order of
//! the `serde_json` map, which sorts keys; RFC 9535 leaves that order to
//! the implementation.
//!
//! Paths and documents come from agents, so the evaluator assumes them
//! hostile: the path's length and nesting are bounded before parsing
//! recurses, and evaluation runs within a step budget and a node budget
//! that are charged as it goes, so `$..*..*..*..*` over a deep document
//! stops with an error naming the limit rather than running for hours.
//! The JSON size of the result is checked before anything is cloned.
//! [`Limits`] holds the bounds; [`query`] uses the defaults.

mod eval;
mod iregexp;
mod parse;

use std::io;

use serde_json::Value;

/// Longest accepted path in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// Deepest accepted nesting of filters, parentheses and function calls;
/// parsing and evaluation recurse once per level.
pub const MAX_NESTING: usize = 32;

/// Most nodes any node list may hold: the result, each segment's output,
/// and each query inside a filter. Recursive descent repeated
/// (`$..*..*`) selects each node once per ancestor and grows
/// combinatorially; this bound keeps memory in check while it does.
pub const MAX_MATCHES: usize = 100_000;

/// Largest result, as compact JSON. The tool's output holds the matches
/// and the first match again, so this is half the default 4 MiB envelope.
pub const MAX_OUTPUT_BYTES: usize = 2 * 1024 * 1024;

/// Most evaluation steps one query may take. A step is a node visited or
/// selected, a selector or filter operand applied, a pair of values
/// compared, or 64 bytes of a string scanned; a filter over every node of
/// a 4 MiB document stays well within it, and it runs in well under a
/// second in a release build.
pub const MAX_WORK: u64 = 10_000_000;

/// Largest compiled `match()` / `search()` pattern, in bytes of the
/// `regex` crate's program and of its lazy DFA cache each: room for
/// `\p{L}{1,20}`, which a Unicode class repeated makes large. A query keeps
/// at most 8 compiled patterns, so patterns drawn from a document hold at
/// most 16 MiB between them.
pub const MAX_REGEX_BYTES: usize = 1024 * 1024;

/// The bounds one query runs within. [`Limits::default`] holds the
/// constants of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`MAX_PATH_LEN`].
    pub max_path_len: usize,
    /// See [`MAX_NESTING`].
    pub max_nesting: usize,
    /// See [`MAX_MATCHES`].
    pub max_matches: usize,
    /// See [`MAX_OUTPUT_BYTES`].
    pub max_output_bytes: usize,
    /// See [`MAX_WORK`].
    pub max_work: u64,
    /// See [`MAX_REGEX_BYTES`].
    pub max_regex_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_path_len: MAX_PATH_LEN,
            max_nesting: MAX_NESTING,
            max_matches: MAX_MATCHES,
            max_output_bytes: MAX_OUTPUT_BYTES,
            max_work: MAX_WORK,
            max_regex_bytes: MAX_REGEX_BYTES,
        }
    }
}

/// Why a path was refused or its evaluation stopped. Positions are byte
/// offsets into the path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonQueryError {
    /// The path does not start with the root identifier.
    #[error("json path must start with '$'")]
    MissingRoot,
    /// The path is longer than [`Limits::max_path_len`].
    #[error("path too long: {len} bytes, limit {max}")]
    TooLong {
        /// Length of the path in bytes.
        len: usize,
        /// The limit that was exceeded.
        max: usize,
    },
    /// Filters, parentheses or function calls nest deeper than
    /// [`Limits::max_nesting`].
    #[error("path nests deeper than the limit of {max} levels at position {pos}")]
    TooDeep {
        /// The limit that was exceeded.
        max: usize,
        /// Where the level beyond the limit starts.
        pos: usize,
    },
    /// A character the grammar does not allow at this point.
    #[error("unexpected character {ch:?} at position {pos}")]
    UnexpectedChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        pos: usize,
    },
    /// The path ended in the middle of a construct.
    #[error("unexpected end of path, expected {expected}")]
    UnexpectedEnd {
        /// What the parser was looking for.
        expected: &'static str,
    },
    /// A string literal without its closing quote.
    #[error("unterminated string at position {pos}")]
    UnterminatedString {
        /// Byte offset of the opening quote.
        pos: usize,
    },
    /// A backslash not followed by one of JSON's escapes (`\b \f \n \r \t
    /// \/ \\`, the enclosing quote, or `\uXXXX` forming a Unicode scalar
    /// value).
    #[error("invalid escape at position {pos}")]
    InvalidEscape {
        /// Byte offset of the backslash.
        pos: usize,
    },
    /// An index or slice bound with a leading zero, `-0`, or outside
    /// ±(2^53 - 1).
    #[error("invalid integer '{text}' at position {pos}")]
    InvalidInteger {
        /// The text that failed to parse.
        text: String,
        /// Byte offset of its first character.
        pos: usize,
    },
    /// A number literal that is not written as JSON writes numbers.
    #[error("invalid number '{text}' at position {pos}")]
    InvalidNumber {
        /// The text that failed to parse.
        text: String,
        /// Byte offset of its first character.
        pos: usize,
    },
    /// A comparison operand that may select more than one node.
    #[error("a comparison needs a singular query (names and indices only) at position {pos}")]
    NonSingularQuery {
        /// Byte offset of the query.
        pos: usize,
    },
    /// A function name RFC 9535 does not define.
    #[error("unknown function '{name}' at position {pos}")]
    UnknownFunction {
        /// The name as written.
        name: String,
        /// Byte offset of the name.
        pos: usize,
    },
    /// An expression used where its type is not allowed, such as a
    /// literal as a test or a query as `length`'s argument that may select
    /// several nodes.
    #[error("{reason} at position {pos}")]
    IllTyped {
        /// What is wrong, in words.
        reason: String,
        /// Byte offset of the expression.
        pos: usize,
    },
    /// A node list grew beyond [`Limits::max_matches`].
    #[error("query selects more than {max} nodes, the match limit")]
    TooManyMatches {
        /// The limit that was exceeded.
        max: usize,
    },
    /// The result is larger than [`Limits::max_output_bytes`] as JSON.
    #[error("query result is larger than {max} bytes of JSON, the output limit")]
    OutputTooLarge {
        /// The limit that was exceeded.
        max: usize,
    },
    /// Evaluation took more than [`Limits::max_work`] steps.
    #[error("query needs more than {max} evaluation steps, the work limit")]
    TooMuchWork {
        /// The limit that was exceeded.
        max: u64,
    },
    /// A `match()` or `search()` pattern nests groups too deeply or
    /// compiles beyond [`Limits::max_regex_bytes`].
    #[error("regular expression exceeds the limit of {max} compiled bytes")]
    RegexTooLarge {
        /// The limit that was exceeded.
        max: usize,
    },
}

impl JsonQueryError {
    /// True when a limit stopped a valid path, false when the path itself
    /// is not valid JSONPath.
    #[must_use]
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Self::TooLong { .. }
                | Self::TooDeep { .. }
                | Self::TooManyMatches { .. }
                | Self::OutputTooLarge { .. }
                | Self::TooMuchWork { .. }
                | Self::RegexTooLarge { .. }
        )
    }
}

/// Evaluates the `JSONPath` `path` against `document` within the default
/// [`Limits`] and returns clones of the selected values.
///
/// Results come in the order RFC 9535 defines: each segment processes its
/// input nodes in order, and within a union values follow the order of
/// the selectors, so `$[2,0]` yields the third element first. A
/// descendant segment visits a node before its descendants and selects
/// from each visited node in turn, so `$..*` lists a node's children
/// before its grandchildren.
///
/// # Errors
///
/// Returns a [`JsonQueryError`] when the path is not valid RFC 9535
/// JSONPath or evaluation crosses a limit ([`JsonQueryError::is_limit`]
/// tells the two apart). Selecting nothing is not an error.
pub fn query(document: &Value, path: &str) -> Result<Vec<Value>, JsonQueryError> {
    query_with(document, path, &Limits::default())
}

/// [`query`] within the given `limits`.
///
/// # Errors
///
/// As [`query`].
pub fn query_with(
    document: &Value,
    path: &str,
    limits: &Limits,
) -> Result<Vec<Value>, JsonQueryError> {
    let segments = parse::parse(path, limits)?;
    let nodes = eval::Evaluator::new(document, limits).run(&segments, document)?;
    let mut budget = limits.max_output_bytes;
    for node in &nodes {
        budget = json_len_within(node, budget).ok_or(JsonQueryError::OutputTooLarge {
            max: limits.max_output_bytes,
        })?;
    }
    Ok(nodes.into_iter().cloned().collect())
}

/// Subtracts the compact JSON length of `value` from `budget`, or `None`
/// as soon as the budget is exceeded, so sizing a huge value costs no more
/// than the budget. Iterative, for documents of any depth.
fn json_len_within(value: &Value, budget: usize) -> Option<usize> {
    let mut left = budget;
    let mut charge = |bytes: usize| -> Option<()> {
        left = left.checked_sub(bytes)?;
        Some(())
    };
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::Null | Value::Bool(true) => charge(4)?,
            Value::Bool(false) => charge(5)?,
            Value::Number(n) => charge(n.to_string().len())?,
            Value::String(s) => charge(escaped_len(s))?,
            Value::Array(items) => {
                charge(2 + items.len().saturating_sub(1))?;
                pending.extend(items);
            }
            Value::Object(members) => {
                charge(2 + members.len().saturating_sub(1))?;
                for (key, member) in members {
                    charge(escaped_len(key) + 1)?;
                    pending.push(member);
                }
            }
        }
    }
    Some(left)
}

/// Length of `s` as a JSON string, quotes and escapes included.
fn escaped_len(s: &str) -> usize {
    let mut counter = ByteCounter(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, s);
    counter.0
}

struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
