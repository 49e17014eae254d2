//! A `JSONPath` subset behind the `json.query` tool.
//!
//! Supported, following RFC 9535 semantics where the two overlap:
//!
//! | syntax                         | selects                                     |
//! |--------------------------------|---------------------------------------------|
//! | `$`                            | the document itself                         |
//! | `.name`, `['name']`, `["name"]`| an object member                            |
//! | `[0]`, `[-1]`                  | an array element, negative from the end     |
//! | `.*`, `[*]`                    | every member value or array element         |
//! | `..name`, `..*`, `..[0]`       | the same, at any depth (recursive descent)  |
//! | `[start:end:step]`             | a slice with Python bounds, `step > 0`      |
//! | `[0,2]`, `['a','b']`, `[0,1:3]`| a union of the selectors above              |
//!
//! Filters (`[?(...)]`) and script expressions (`[(...)]`) are rejected with
//! [`JsonQueryError::Unsupported`] rather than misread, so callers learn that
//! the path needs rewriting instead of receiving a silently wrong answer.
//!
//! A missing member or an out-of-range index is not an error: it selects
//! nothing, as in every `JSONPath` implementation, so a query over documents
//! of varying shape does not fail on the first one that lacks a field.

use serde_json::Value;

/// Longest accepted path in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// Most values a query may select, counted after each step of the path.
///
/// Recursive descent repeated (`$..*..*..*`) selects each node once per
/// ancestor path and grows combinatorially, so a bound keeps a short path
/// from exhausting memory on a modest document.
pub const MAX_MATCHES: usize = 100_000;

/// Why a path could not be parsed or evaluated. Positions are byte offsets
/// into the path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonQueryError {
    /// The path does not start with the root selector.
    #[error("json path must start with '$'")]
    MissingRoot,
    /// The path exceeds [`MAX_PATH_LEN`].
    #[error("path too long: {len} bytes, limit {max}")]
    TooLong {
        /// Length of the path in bytes.
        len: usize,
        /// The limit that was exceeded.
        max: usize,
    },
    /// A character the grammar does not allow at this point.
    #[error("unexpected character '{ch}' at position {pos}")]
    UnexpectedChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        pos: usize,
    },
    /// The path ended in the middle of a segment.
    #[error("unexpected end of path, expected {expected}")]
    UnexpectedEnd {
        /// What the parser was looking for.
        expected: &'static str,
    },
    /// A quoted name without its closing quote.
    #[error("unterminated quoted name at position {pos}")]
    UnterminatedQuote {
        /// Byte offset of the opening quote.
        pos: usize,
    },
    /// A backslash in a quoted name followed by something other than a
    /// quote or a backslash.
    #[error("invalid escape '\\{ch}' at position {pos}")]
    InvalidEscape {
        /// The character after the backslash.
        ch: char,
        /// Byte offset of the backslash.
        pos: usize,
    },
    /// An index or slice bound that does not fit a 64-bit integer, or a
    /// lone minus sign.
    #[error("invalid integer '{text}' at position {pos}")]
    InvalidInteger {
        /// The text that failed to parse.
        text: String,
        /// Byte offset of its first character.
        pos: usize,
    },
    /// A slice step of zero, which would never advance.
    #[error("slice step must not be zero at position {pos}")]
    ZeroStep {
        /// Byte offset of the step.
        pos: usize,
    },
    /// Valid `JSONPath` that this subset deliberately does not implement.
    #[error("{feature} are not supported (position {pos})")]
    Unsupported {
        /// The construct, in the plural, such as `filter expressions`.
        feature: &'static str,
        /// Byte offset where the construct starts.
        pos: usize,
    },
    /// The query selected more than [`MAX_MATCHES`] values.
    #[error("query matched more than {max} values")]
    TooManyMatches {
        /// The limit that was exceeded.
        max: usize,
    },
}

/// Evaluates the `JSONPath` `path` against `document` and returns clones of
/// the selected values.
///
/// Results come in document order as RFC 9535 defines it: each segment
/// processes its input nodes in order, and within a union values follow
/// the order of the selectors, so `$[2,0]` yields the third element first.
/// Recursive descent visits a node before its descendants and selects from
/// each visited node in turn, so `$..*` lists a node's children before its
/// grandchildren.
///
/// # Errors
///
/// Returns a [`JsonQueryError`] when the path is malformed, too long, uses
/// an unsupported construct such as a filter, or selects more than
/// [`MAX_MATCHES`] values. Selecting nothing is not an error.
pub fn query(document: &Value, path: &str) -> Result<Vec<Value>, JsonQueryError> {
    let segments = parse(path)?;
    let mut nodes = vec![document];
    for segment in &segments {
        nodes = segment.apply(&nodes)?;
    }
    Ok(nodes.into_iter().cloned().collect())
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// Applies the selectors to each input node.
    Child(Vec<Selector>),
    /// Applies the selectors to each input node and all its descendants.
    Descendant(Vec<Selector>),
}

#[derive(Debug, Clone, PartialEq)]
enum Selector {
    Name(String),
    Index(i64),
    Slice(Slice),
    Wildcard,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Slice {
    start: Option<i64>,
    end: Option<i64>,
    step: usize,
}

fn parse(path: &str) -> Result<Vec<Segment>, JsonQueryError> {
    if path.len() > MAX_PATH_LEN {
        return Err(JsonQueryError::TooLong {
            len: path.len(),
            max: MAX_PATH_LEN,
        });
    }
    let mut cursor = Cursor { path, pos: 0 };
    if !cursor.eat('$') {
        return Err(JsonQueryError::MissingRoot);
    }
    let mut segments = Vec::new();
    while let Some(ch) = cursor.peek() {
        segments.push(match ch {
            '.' => cursor.parse_dotted()?,
            '[' => Segment::Child(cursor.parse_bracket()?),
            _ => return Err(cursor.unexpected(ch)),
        });
    }
    Ok(segments)
}

struct Cursor<'a> {
    path: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.path[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let ch = self.peek()?;
        self.pos += ch.len_utf8();
        Some(ch)
    }

    fn eat(&mut self, expected: char) -> bool {
        let matched = self.peek() == Some(expected);
        if matched {
            self.pos += expected.len_utf8();
        }
        matched
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn unexpected(&self, ch: char) -> JsonQueryError {
        JsonQueryError::UnexpectedChar { ch, pos: self.pos }
    }

    /// Peeks at the next character, treating the end of the path as an
    /// error that names what was `expected`.
    fn require(&self, expected: &'static str) -> Result<char, JsonQueryError> {
        self.peek()
            .ok_or(JsonQueryError::UnexpectedEnd { expected })
    }

    /// Parses `.name`, `.*` or a recursive descent `..selector`.
    fn parse_dotted(&mut self) -> Result<Segment, JsonQueryError> {
        self.bump();
        if !self.eat('.') {
            return Ok(Segment::Child(vec![self.parse_shorthand()?]));
        }
        let expected = "a member name, '*' or '[' after '..'";
        if self.require(expected)? == '[' {
            Ok(Segment::Descendant(self.parse_bracket()?))
        } else {
            Ok(Segment::Descendant(vec![self.parse_shorthand()?]))
        }
    }

    /// Parses the `name` or `*` that follows a dot.
    fn parse_shorthand(&mut self) -> Result<Selector, JsonQueryError> {
        let ch = self.require("a member name or '*' after '.'")?;
        if ch == '*' {
            self.bump();
            return Ok(Selector::Wildcard);
        }
        let rest = &self.path[self.pos..];
        let len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        if len == 0 {
            return Err(self.unexpected(ch));
        }
        self.pos += len;
        Ok(Selector::Name(rest[..len].to_owned()))
    }

    /// Parses `[selector, ...]`, whitespace allowed around each selector.
    fn parse_bracket(&mut self) -> Result<Vec<Selector>, JsonQueryError> {
        self.bump();
        let mut selectors = Vec::new();
        loop {
            self.skip_whitespace();
            selectors.push(self.parse_selector()?);
            self.skip_whitespace();
            match self.require("',' or ']'")? {
                ',' => self.bump(),
                ']' => {
                    self.bump();
                    return Ok(selectors);
                }
                ch => return Err(self.unexpected(ch)),
            };
        }
    }

    fn parse_selector(&mut self) -> Result<Selector, JsonQueryError> {
        let ch = self.require("a selector")?;
        match ch {
            '\'' | '"' => self.parse_quoted(ch).map(Selector::Name),
            '*' => {
                self.bump();
                Ok(Selector::Wildcard)
            }
            '-' | ':' | '0'..='9' => self.parse_index_or_slice(),
            '?' => Err(self.unsupported("filter expressions")),
            '(' => Err(self.unsupported("script expressions")),
            _ => Err(self.unexpected(ch)),
        }
    }

    fn unsupported(&self, feature: &'static str) -> JsonQueryError {
        JsonQueryError::Unsupported {
            feature,
            pos: self.pos,
        }
    }

    /// Parses a name in `quote`s; a backslash escapes either quote or
    /// itself, which is all a member name inside a path ever needs.
    fn parse_quoted(&mut self, quote: char) -> Result<String, JsonQueryError> {
        let start = self.pos;
        self.bump();
        let mut name = String::new();
        loop {
            let escape_pos = self.pos;
            match self.bump() {
                None => return Err(JsonQueryError::UnterminatedQuote { pos: start }),
                Some(ch) if ch == quote => return Ok(name),
                Some('\\') => match self.bump() {
                    Some(ch @ ('\'' | '"' | '\\')) => name.push(ch),
                    Some(ch) => {
                        return Err(JsonQueryError::InvalidEscape {
                            ch,
                            pos: escape_pos,
                        });
                    }
                    None => return Err(JsonQueryError::UnterminatedQuote { pos: start }),
                },
                Some(ch) => name.push(ch),
            }
        }
    }

    /// Parses `index` or `start:end` or `start:end:step`, each bound
    /// optional in a slice.
    fn parse_index_or_slice(&mut self) -> Result<Selector, JsonQueryError> {
        let start = self.parse_integer()?;
        self.skip_whitespace();
        if !self.eat(':') {
            return match start {
                Some(index) => Ok(Selector::Index(index)),
                None => Err(self.unexpected_here("an index")),
            };
        }
        self.skip_whitespace();
        let end = self.parse_integer()?;
        self.skip_whitespace();
        let step = if self.eat(':') {
            self.skip_whitespace();
            self.parse_step()?
        } else {
            1
        };
        Ok(Selector::Slice(Slice { start, end, step }))
    }

    fn parse_step(&mut self) -> Result<usize, JsonQueryError> {
        let pos = self.pos;
        match self.parse_integer()? {
            None => Ok(1),
            Some(0) => Err(JsonQueryError::ZeroStep { pos }),
            Some(step) if step < 0 => Err(JsonQueryError::Unsupported {
                feature: "negative slice steps",
                pos,
            }),
            Some(step) => Ok(usize::try_from(step).unwrap_or(usize::MAX)),
        }
    }

    /// Parses an optional signed integer; `None` when no sign or digit
    /// starts here.
    fn parse_integer(&mut self) -> Result<Option<i64>, JsonQueryError> {
        let start = self.pos;
        let rest = &self.path[start..];
        let sign = usize::from(rest.starts_with('-'));
        let digits = rest[sign..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - sign);
        if sign + digits == 0 {
            return Ok(None);
        }
        let text = &rest[..sign + digits];
        self.pos += text.len();
        text.parse()
            .map(Some)
            .map_err(|_| JsonQueryError::InvalidInteger {
                text: text.to_owned(),
                pos: start,
            })
    }

    fn unexpected_here(&self, expected: &'static str) -> JsonQueryError {
        match self.peek() {
            Some(ch) => self.unexpected(ch),
            None => JsonQueryError::UnexpectedEnd { expected },
        }
    }
}

/// Characters allowed in a dotted member name: letters and digits of any
/// script, `_` and `-`, so that `.content-type` works as users expect.
fn is_name_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_' || ch == '-'
}

/// Selected nodes, refusing to grow beyond [`MAX_MATCHES`].
struct Matches<'v> {
    nodes: Vec<&'v Value>,
}

impl<'v> Matches<'v> {
    fn push(&mut self, node: &'v Value) -> Result<(), JsonQueryError> {
        if self.nodes.len() >= MAX_MATCHES {
            return Err(JsonQueryError::TooManyMatches { max: MAX_MATCHES });
        }
        self.nodes.push(node);
        Ok(())
    }

    fn extend(&mut self, nodes: impl IntoIterator<Item = &'v Value>) -> Result<(), JsonQueryError> {
        nodes.into_iter().try_for_each(|node| self.push(node))
    }
}

impl Segment {
    fn apply<'v>(&self, inputs: &[&'v Value]) -> Result<Vec<&'v Value>, JsonQueryError> {
        let mut matches = Matches { nodes: Vec::new() };
        for &input in inputs {
            match self {
                Self::Child(selectors) => select_all(input, selectors, &mut matches)?,
                Self::Descendant(selectors) => {
                    for node in descendants(input) {
                        select_all(node, selectors, &mut matches)?;
                    }
                }
            }
        }
        Ok(matches.nodes)
    }
}

/// Lists `root` and everything below it in document order (pre-order).
/// An explicit stack keeps deeply nested documents from overflowing the
/// call stack.
fn descendants(root: &Value) -> Vec<&Value> {
    let mut ordered = Vec::new();
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        ordered.push(node);
        match node {
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Object(members) => stack.extend(members.values().rev()),
            _ => {}
        }
    }
    ordered
}

fn select_all<'v>(
    node: &'v Value,
    selectors: &[Selector],
    matches: &mut Matches<'v>,
) -> Result<(), JsonQueryError> {
    selectors
        .iter()
        .try_for_each(|selector| selector.select(node, matches))
}

impl Selector {
    fn select<'v>(&self, node: &'v Value, matches: &mut Matches<'v>) -> Result<(), JsonQueryError> {
        match (self, node) {
            (Self::Name(name), Value::Object(members)) => matches.extend(members.get(name)),
            (Self::Index(index), Value::Array(items)) => {
                let item = resolve_index(*index, items.len()).and_then(|i| items.get(i));
                matches.extend(item)
            }
            (Self::Slice(slice), Value::Array(items)) => matches.extend(slice.select(items)),
            (Self::Wildcard, Value::Array(items)) => matches.extend(items.iter()),
            (Self::Wildcard, Value::Object(members)) => matches.extend(members.values()),
            _ => Ok(()),
        }
    }
}

/// Maps a possibly negative index to a position in an array of `len`
/// elements, or `None` when it falls outside.
fn resolve_index(index: i64, len: usize) -> Option<usize> {
    if index < 0 {
        len.checked_sub(saturating_usize(index.unsigned_abs()))
    } else {
        Some(saturating_usize(index.unsigned_abs())).filter(|&i| i < len)
    }
}

impl Slice {
    fn select<'v>(&self, items: &'v [Value]) -> impl Iterator<Item = &'v Value> {
        let len = items.len();
        let start = self.start.map_or(0, |bound| clamp_bound(bound, len));
        let end = self.end.map_or(len, |bound| clamp_bound(bound, len));
        items
            .get(start..end.max(start))
            .unwrap_or_default()
            .iter()
            .step_by(self.step)
    }
}

/// Clamps a slice bound into `0..=len` the way Python does: negative
/// bounds count from the end, and bounds past either end stop there.
fn clamp_bound(bound: i64, len: usize) -> usize {
    if bound < 0 {
        len.saturating_sub(saturating_usize(bound.unsigned_abs()))
    } else {
        saturating_usize(bound.unsigned_abs()).min(len)
    }
}

fn saturating_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Keys are in alphabetical order so that wildcard results are the same
    /// whether or not serde_json preserves insertion order.
    fn store() -> Value {
        json!({
            "owner": {"address": {"city": "Lyon"}, "name": "Ada"},
            "store": {
                "bicycle": {"color": "red", "price": 19.95},
                "book": [
                    {"author": "Nigel Rees", "category": "reference", "price": 8.95,
                     "title": "Sayings of the Century"},
                    {"author": "Evelyn Waugh", "category": "fiction", "price": 12.99,
                     "title": "Sword of Honour"},
                    {"author": "Herman Melville", "category": "fiction", "isbn": "0-553-21311-3",
                     "price": 8.99, "title": "Moby Dick"},
                    {"author": "J. R. R. Tolkien", "category": "fiction", "isbn": "0-395-19395-8",
                     "price": 22.99, "title": "The Lord of the Rings"}
                ],
                "opening hours": "9-17",
                "x.y": 1
            }
        })
    }

    fn q(path: &str) -> Vec<Value> {
        match query(&store(), path) {
            Ok(values) => values,
            Err(err) => panic!("query({path:?}) failed: {err}"),
        }
    }

    fn q_err(path: &str) -> JsonQueryError {
        match query(&store(), path) {
            Ok(values) => panic!("query({path:?}) returned {values:?}, expected an error"),
            Err(err) => err,
        }
    }

    fn numbers(values: &[i64]) -> Value {
        Value::from(values.to_vec())
    }

    fn on_numbers(path: &str) -> Vec<Value> {
        query(&numbers(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), path).unwrap()
    }

    #[test]
    fn root_selects_the_document() {
        assert_eq!(q("$"), vec![store()]);
    }

    #[test]
    fn dotted_and_bracketed_children() {
        assert_eq!(q("$.owner.name"), vec![json!("Ada")]);
        assert_eq!(q("$['owner']['name']"), vec![json!("Ada")]);
        assert_eq!(q("$[\"owner\"].address[\"city\"]"), vec![json!("Lyon")]);
        assert_eq!(
            q("$.store.book[0].title"),
            vec![json!("Sayings of the Century")]
        );
    }

    #[test]
    fn unicode_and_dashed_names() {
        let doc = json!({"größe": 1, "content-type": "text/plain", "日本": [true]});
        assert_eq!(query(&doc, "$.größe").unwrap(), vec![json!(1)]);
        assert_eq!(
            query(&doc, "$.content-type").unwrap(),
            vec![json!("text/plain")]
        );
        assert_eq!(query(&doc, "$.日本[0]").unwrap(), vec![json!(true)]);
    }

    #[test]
    fn quoted_names_may_hold_dots_spaces_and_escapes() {
        assert_eq!(q("$.store['opening hours']"), vec![json!("9-17")]);
        assert_eq!(q("$.store[\"x.y\"]"), vec![json!(1)]);
        let doc = json!({"it's": 1, "say \"hi\"": 2, "back\\slash": 3, "": 4});
        assert_eq!(query(&doc, r"$['it\'s']").unwrap(), vec![json!(1)]);
        assert_eq!(query(&doc, r#"$["it's"]"#).unwrap(), vec![json!(1)]);
        assert_eq!(query(&doc, r#"$["say \"hi\""]"#).unwrap(), vec![json!(2)]);
        assert_eq!(query(&doc, r"$['back\\slash']").unwrap(), vec![json!(3)]);
        assert_eq!(query(&doc, "$['']").unwrap(), vec![json!(4)]);
    }

    #[test]
    fn indices_positive_and_negative() {
        assert_eq!(
            q("$.store.book[-1].title"),
            vec![json!("The Lord of the Rings")]
        );
        assert_eq!(
            q("$.store.book[-4].title"),
            vec![json!("Sayings of the Century")]
        );
        assert_eq!(on_numbers("$[9]"), vec![json!(9)]);
    }

    #[test]
    fn missing_members_and_indices_select_nothing() {
        for path in [
            "$.nope",
            "$.store.book[4]",
            "$.store.book[-5]",
            "$.store.book.title",
            "$.owner[0]",
            "$.owner.name.first",
            "$.owner.name[*]",
            "$['store']['nope'][0]",
            "$[9223372036854775807]",
            "$.store.book[-9223372036854775808]",
        ] {
            assert_eq!(q(path), Vec::<Value>::new(), "{path}");
        }
    }

    #[test]
    fn wildcards_over_objects_and_arrays() {
        assert_eq!(q("$.store.bicycle.*"), vec![json!("red"), json!(19.95)]);
        assert_eq!(q("$.store.bicycle[*]"), q("$.store.bicycle.*"));
        assert_eq!(
            q("$.store.book[*].author"),
            vec![
                json!("Nigel Rees"),
                json!("Evelyn Waugh"),
                json!("Herman Melville"),
                json!("J. R. R. Tolkien")
            ]
        );
        assert_eq!(q("$.store.book.*.price").len(), 4);
        assert_eq!(q("$.owner.name.*"), Vec::<Value>::new());
    }

    #[test]
    fn recursive_descent_by_name() {
        assert_eq!(
            q("$..price"),
            vec![
                json!(19.95),
                json!(8.95),
                json!(12.99),
                json!(8.99),
                json!(22.99)
            ]
        );
        assert_eq!(q("$..isbn").len(), 2);
        assert_eq!(q("$.store..color"), vec![json!("red")]);
        assert_eq!(q("$..['city','name']"), vec![json!("Ada"), json!("Lyon")]);
        assert_eq!(q("$..book[2].title"), vec![json!("Moby Dick")]);
        assert_eq!(q("$..[0].author"), vec![json!("Nigel Rees")]);
    }

    #[test]
    fn recursive_descent_wildcard_lists_every_node_below_the_root() {
        let doc = json!({"a": [1, {"b": 2}], "c": 3});
        assert_eq!(
            query(&doc, "$..*").unwrap(),
            vec![
                json!([1, {"b": 2}]),
                json!(3),
                json!(1),
                json!({"b": 2}),
                json!(2)
            ],
            "children of each node, nodes visited parent first (RFC 9535)"
        );
        assert_eq!(q("$..*").len(), 33);
    }

    #[test]
    fn slices_follow_python_semantics() {
        let cases: &[(&str, &[i64])] = &[
            ("$[2:5]", &[2, 3, 4]),
            ("$[:3]", &[0, 1, 2]),
            ("$[7:]", &[7, 8, 9]),
            ("$[:]", &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            ("$[::3]", &[0, 3, 6, 9]),
            ("$[1:8:2]", &[1, 3, 5, 7]),
            ("$[-3:]", &[7, 8, 9]),
            ("$[:-8]", &[0, 1]),
            ("$[-4:-1]", &[6, 7, 8]),
            ("$[-100:2]", &[0, 1]),
            ("$[8:100]", &[8, 9]),
            ("$[5:2]", &[]),
            ("$[100:]", &[]),
            ("$[ 1 : 3 ]", &[1, 2]),
            ("$[2:5:]", &[2, 3, 4]),
            ("$[::9223372036854775807]", &[0]),
        ];
        for (path, expected) in cases {
            assert_eq!(
                on_numbers(path),
                expected.iter().map(|&n| json!(n)).collect::<Vec<_>>(),
                "{path}"
            );
        }
        assert_eq!(
            q("$.store.book[1:3].title"),
            vec![json!("Sword of Honour"), json!("Moby Dick")]
        );
        assert_eq!(q("$.owner[0:2]"), Vec::<Value>::new());
    }

    #[test]
    fn unions_keep_selector_order() {
        assert_eq!(on_numbers("$[0,2]"), vec![json!(0), json!(2)]);
        assert_eq!(
            on_numbers("$[2, 0, -1]"),
            vec![json!(2), json!(0), json!(9)]
        );
        assert_eq!(
            on_numbers("$[0,7:]"),
            vec![json!(0), json!(7), json!(8), json!(9)]
        );
        assert_eq!(
            q("$.store.book[0]['title','price']"),
            vec![json!("Sayings of the Century"), json!(8.95)]
        );
        assert_eq!(q("$.owner[\"name\", 'missing', 0]"), vec![json!("Ada")]);
    }

    #[test]
    fn path_must_start_with_root() {
        for path in ["", "store", ".store", "['store']", " $"] {
            assert_eq!(q_err(path), JsonQueryError::MissingRoot, "{path:?}");
        }
        assert_eq!(
            JsonQueryError::MissingRoot.to_string(),
            "json path must start with '$'"
        );
    }

    #[test]
    fn path_length_is_bounded() {
        let path = format!("$.{}", "a".repeat(1998));
        let error = q_err(&path);
        assert_eq!(
            error,
            JsonQueryError::TooLong {
                len: 2000,
                max: MAX_PATH_LEN
            }
        );
        assert_eq!(error.to_string(), "path too long: 2000 bytes, limit 1024");
        let longest = format!("$.{}", "a".repeat(MAX_PATH_LEN - 2));
        assert_eq!(q(&longest), Vec::<Value>::new());
    }

    #[test]
    fn unexpected_characters() {
        let error = q_err("$.a[0]]");
        assert_eq!(error, JsonQueryError::UnexpectedChar { ch: ']', pos: 6 });
        assert_eq!(error.to_string(), "unexpected character ']' at position 6");
        let unexpected = |ch, pos| JsonQueryError::UnexpectedChar { ch, pos };
        assert_eq!(q_err("$[]"), unexpected(']', 2));
        assert_eq!(q_err("$[0,]"), unexpected(']', 4));
        assert_eq!(q_err("$[0 1]"), unexpected('1', 4));
        assert_eq!(q_err("$store"), unexpected('s', 1));
        assert_eq!(q_err("$.store book"), unexpected(' ', 7));
        assert_eq!(q_err("$.['a']"), unexpected('[', 2));
        assert_eq!(q_err("$...a"), unexpected('.', 3));
        assert_eq!(q_err("$[a]"), unexpected('a', 2));
        assert_eq!(q_err("$[1:2:3:4]"), unexpected(':', 7));
        assert_eq!(q_err("$[1.5]"), unexpected('.', 3));
        assert_eq!(q_err("$[+1]"), unexpected('+', 2));
    }

    #[test]
    fn unexpected_end() {
        let cases = [
            ("$.", "a member name or '*' after '.'"),
            ("$..", "a member name, '*' or '[' after '..'"),
            ("$[", "a selector"),
            ("$[0", "',' or ']'"),
            ("$['a',", "a selector"),
            ("$[1:2", "',' or ']'"),
        ];
        for (path, expected) in cases {
            assert_eq!(
                q_err(path),
                JsonQueryError::UnexpectedEnd { expected },
                "{path}"
            );
        }
        assert_eq!(
            q_err("$[0").to_string(),
            "unexpected end of path, expected ',' or ']'"
        );
    }

    #[test]
    fn unterminated_and_badly_escaped_quotes() {
        let error = q_err("$['store");
        assert_eq!(error, JsonQueryError::UnterminatedQuote { pos: 2 });
        assert_eq!(error.to_string(), "unterminated quoted name at position 2");
        assert_eq!(
            q_err("$.a[\"b'"),
            JsonQueryError::UnterminatedQuote { pos: 4 }
        );
        assert_eq!(
            q_err(r"$['a\"),
            JsonQueryError::UnterminatedQuote { pos: 2 }
        );
        let error = q_err(r"$['a\nb']");
        assert_eq!(error, JsonQueryError::InvalidEscape { ch: 'n', pos: 4 });
        assert_eq!(error.to_string(), r"invalid escape '\n' at position 4");
    }

    #[test]
    fn invalid_integers() {
        let error = q_err("$[99999999999999999999]");
        assert_eq!(
            error,
            JsonQueryError::InvalidInteger {
                text: "99999999999999999999".into(),
                pos: 2
            }
        );
        assert_eq!(
            error.to_string(),
            "invalid integer '99999999999999999999' at position 2"
        );
        assert_eq!(
            q_err("$[-]"),
            JsonQueryError::InvalidInteger {
                text: "-".into(),
                pos: 2
            }
        );
        assert_eq!(
            q_err("$[1:-]"),
            JsonQueryError::InvalidInteger {
                text: "-".into(),
                pos: 4
            }
        );
    }

    #[test]
    fn zero_and_negative_steps() {
        let error = q_err("$[::0]");
        assert_eq!(error, JsonQueryError::ZeroStep { pos: 4 });
        assert_eq!(
            error.to_string(),
            "slice step must not be zero at position 4"
        );
        assert_eq!(q_err("$[1:2:0]"), JsonQueryError::ZeroStep { pos: 6 });
        let error = q_err("$[::-1]");
        assert_eq!(
            error,
            JsonQueryError::Unsupported {
                feature: "negative slice steps",
                pos: 4
            }
        );
        assert_eq!(
            error.to_string(),
            "negative slice steps are not supported (position 4)"
        );
    }

    #[test]
    fn filters_and_scripts_are_unsupported() {
        let error = q_err("$[?(@.price < 10)]");
        assert_eq!(
            error,
            JsonQueryError::Unsupported {
                feature: "filter expressions",
                pos: 2
            }
        );
        assert_eq!(
            error.to_string(),
            "filter expressions are not supported (position 2)"
        );
        assert_eq!(
            q_err("$.store.book[ ?(@.isbn)]"),
            JsonQueryError::Unsupported {
                feature: "filter expressions",
                pos: 14
            }
        );
        assert_eq!(
            q_err("$..book[(@.length-1)]"),
            JsonQueryError::Unsupported {
                feature: "script expressions",
                pos: 8
            }
        );
    }

    #[test]
    fn match_count_is_bounded() {
        let wide = Value::from(vec![Value::from(vec![0; 400]); 400]);
        assert_eq!(query(&wide, "$[0]..*").unwrap().len(), 400);
        let error = query(&wide, "$..*").unwrap_err();
        assert_eq!(error, JsonQueryError::TooManyMatches { max: MAX_MATCHES });
        assert_eq!(error.to_string(), "query matched more than 100000 values");

        let mut chain = json!(0);
        for _ in 0..1000 {
            chain = Value::Array(vec![chain]);
        }
        assert_eq!(
            query(&chain, "$..*..*").unwrap_err(),
            JsonQueryError::TooManyMatches { max: MAX_MATCHES }
        );
    }

    #[test]
    fn deeply_nested_documents_do_not_overflow() {
        let mut doc = json!({"leaf": 1});
        for _ in 0..100_000 {
            doc = Value::Array(vec![doc]);
        }
        assert_eq!(query(&doc, "$..leaf").unwrap(), vec![json!(1)]);
        // Dropping a value this deep recurses inside serde_json, so it is
        // dismantled iteratively to keep the test itself within the stack.
        let mut current = doc;
        while let Value::Array(mut items) = current {
            current = items.pop().unwrap_or(Value::Null);
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-c]", inner, 0..4)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    fn path_soup() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("$".to_owned()),
            Just("..".to_owned()),
            Just(".*".to_owned()),
            Just("[*]".to_owned()),
            "[-.:,'\"\\[\\]\\\\?()*$ a-c0-9]{1,4}",
        ];
        prop::collection::vec(piece, 0..20).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn root_returns_exactly_the_document(doc in arbitrary_json()) {
            prop_assert_eq!(query(&doc, "$").unwrap(), vec![doc]);
        }

        #[test]
        fn wildcard_returns_every_element(items in prop::collection::vec(arbitrary_json(), 0..20)) {
            let n = items.len();
            let doc = Value::from(items.clone());
            prop_assert_eq!(query(&doc, "$[*]").unwrap(), items.clone());
            prop_assert_eq!(query(&doc, "$.*").unwrap().len(), n);
            prop_assert_eq!(query(&doc, "$[:]").unwrap(), items);
        }

        #[test]
        fn slices_match_rust_ranges(
            len in 0usize..30,
            start in -40i64..40,
            end in -40i64..40,
            step in 1usize..5,
        ) {
            let items: Vec<i64> = (0..len as i64).collect();
            let doc = numbers(&items);
            let got = query(&doc, &format!("$[{start}:{end}:{step}]")).unwrap();
            let resolve = |b: i64| if b < 0 { (len as i64 + b).max(0) } else { b.min(len as i64) };
            let expected: Vec<Value> = (resolve(start)..resolve(end))
                .step_by(step)
                .map(Value::from)
                .collect();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn never_panics_on_arbitrary_paths(path in ".{0,200}") {
            let _ = query(&store(), &path);
            let _ = query(&store(), &format!("${path}"));
        }

        #[test]
        fn never_panics_on_path_soup(path in path_soup(), doc in arbitrary_json()) {
            let _ = query(&doc, &path);
            let _ = query(&store(), &format!("${path}"));
        }
    }
}
