//! The RFC 9535 grammar: a recursive-descent parser from the path text to
//! the syntax tree the evaluator walks.
//!
//! Well-typedness (RFC 9535 §2.4.3) is checked here, while parsing, so a
//! path that compares a non-singular query or passes a literal where a
//! query is needed is refused before any document is touched. Nesting is
//! counted on every construct that recurses (filters, parentheses,
//! function calls), which bounds the parser's and the evaluator's stack.

use super::{JsonQueryError, Limits};

/// The segments after `$` or `@`.
pub(super) type Segments = Vec<Segment>;

#[derive(Debug)]
pub(super) enum Segment {
    /// `.name`, `.*` or `[...]`: applies the selectors to each input node.
    Child(Vec<Selector>),
    /// `..name`, `..*` or `..[...]`: applies the selectors to each input
    /// node and to every node below it.
    Descendant(Vec<Selector>),
}

#[derive(Debug)]
pub(super) enum Selector {
    Name(String),
    Index(i64),
    Slice(Slice),
    Wildcard,
    Filter(Logical),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Slice {
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub step: Option<i64>,
}

/// A filter's logical expression.
#[derive(Debug)]
pub(super) enum Logical {
    Or(Vec<Logical>),
    And(Vec<Logical>),
    Not(Box<Logical>),
    Compare(Box<(Comparable, CompareOp, Comparable)>),
    /// A query used as a test: true when it selects at least one node.
    Exists(FilterQuery),
    /// `match(...)` or `search(...)`, the functions of logical type.
    Regex(Box<RegexCall>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A query inside a filter, relative to the current node (`@`) or to the
/// document root (`$`).
#[derive(Debug)]
pub(super) struct FilterQuery {
    pub relative: bool,
    pub segments: Segments,
}

impl FilterQuery {
    /// True when the query can select at most one node: every segment is a
    /// child segment with a single name or index selector.
    fn is_singular(&self) -> bool {
        self.segments.iter().all(|segment| {
            matches!(segment, Segment::Child(selectors)
                if matches!(selectors.as_slice(), [Selector::Name(_) | Selector::Index(_)]))
        })
    }
}

/// An operand of a comparison, and an argument of value type: it yields
/// one value or nothing.
#[derive(Debug)]
pub(super) enum Comparable {
    Literal(Literal),
    /// A query known to be singular.
    Singular(FilterQuery),
    Length(Box<Comparable>),
    Count(FilterQuery),
    Value(FilterQuery),
}

#[derive(Debug)]
pub(super) enum Literal {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
}

/// A number as JSON holds it: exact integers stay exact, so `2^63 - 1`
/// in a document compares equal to the same literal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Number {
    Int(i64),
    UInt(u64),
    Float(f64),
}

#[derive(Debug)]
pub(super) struct RegexCall {
    /// `match` (the whole string) rather than `search` (any substring).
    pub anchored: bool,
    pub subject: Comparable,
    pub pattern: Comparable,
}

/// Largest integer JSON can carry exactly (RFC 9535's I-JSON range for
/// indices and slice bounds).
const MAX_EXACT_INT: i64 = (1 << 53) - 1;

/// Parses a whole path, which must start with `$`.
pub(super) fn parse(path: &str, limits: &Limits) -> Result<Segments, JsonQueryError> {
    if path.len() > limits.max_path_len {
        return Err(JsonQueryError::TooLong {
            len: path.len(),
            max: limits.max_path_len,
        });
    }
    let mut parser = Parser {
        path,
        pos: 0,
        depth: 0,
        max_depth: limits.max_nesting,
    };
    if !parser.eat('$') {
        return Err(JsonQueryError::MissingRoot);
    }
    let segments = parser.parse_segments()?;
    match parser.peek() {
        None => Ok(segments),
        Some(ch) => Err(parser.unexpected(ch)),
    }
}

struct Parser<'a> {
    path: &'a str,
    pos: usize,
    depth: usize,
    max_depth: usize,
}

/// What a primary in a filter turned out to be, before its context decides
/// whether it is a comparison operand, a test or a function argument.
enum Atom {
    Literal(Literal),
    Query(FilterQuery),
    Function(Function),
}

/// A parsed function call, by the type of its result.
enum Function {
    /// `length`, `count` and `value` yield a value (`ValueType`).
    Value(Comparable),
    /// `match` and `search` yield a logical value (`LogicalType`).
    Logical(RegexCall),
}

/// The blank characters RFC 9535 allows between tokens.
fn is_blank(ch: char) -> bool {
    matches!(ch, ' ' | '\t' | '\n' | '\r')
}

/// First character of a member name in dot notation: a letter, `_`, or
/// any character outside ASCII.
fn is_name_first(ch: char) -> bool {
    ch.is_ascii_alphabetic() || ch == '_' || !ch.is_ascii()
}

fn is_name_char(ch: char) -> bool {
    is_name_first(ch) || ch.is_ascii_digit()
}

impl Parser<'_> {
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

    fn eat_str(&mut self, expected: &str) -> bool {
        let matched = self.path[self.pos..].starts_with(expected);
        if matched {
            self.pos += expected.len();
        }
        matched
    }

    fn skip_blank(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
    }

    fn unexpected(&self, ch: char) -> JsonQueryError {
        JsonQueryError::UnexpectedChar { ch, pos: self.pos }
    }

    /// The error for what is at the cursor when it is not what the grammar
    /// needs: the character found, or the end of the path.
    fn unexpected_here(&self, expected: &'static str) -> JsonQueryError {
        match self.peek() {
            Some(ch) => self.unexpected(ch),
            None => JsonQueryError::UnexpectedEnd { expected },
        }
    }

    fn expect(&mut self, ch: char, expected: &'static str) -> Result<(), JsonQueryError> {
        if self.eat(ch) {
            Ok(())
        } else {
            Err(self.unexpected_here(expected))
        }
    }

    /// Runs `parse` one nesting level deeper, refusing paths that nest
    /// beyond the limit before the recursion can grow.
    fn nested<T>(
        &mut self,
        parse: impl FnOnce(&mut Self) -> Result<T, JsonQueryError>,
    ) -> Result<T, JsonQueryError> {
        if self.depth >= self.max_depth {
            return Err(JsonQueryError::TooDeep {
                max: self.max_depth,
                pos: self.pos,
            });
        }
        self.depth += 1;
        let result = parse(self);
        self.depth -= 1;
        result
    }

    fn ill_typed(&self, pos: usize, reason: impl Into<String>) -> JsonQueryError {
        JsonQueryError::IllTyped {
            reason: reason.into(),
            pos,
        }
    }

    /// Parses segments while one follows, blanks allowed before each. Blanks
    /// not followed by a segment are left for the caller, which decides
    /// whether they are allowed there.
    fn parse_segments(&mut self) -> Result<Segments, JsonQueryError> {
        let mut segments = Vec::new();
        loop {
            let before = self.pos;
            self.skip_blank();
            match self.peek() {
                Some('[') => segments.push(Segment::Child(self.parse_bracketed()?)),
                Some('.') => segments.push(self.parse_dotted()?),
                _ => {
                    self.pos = before;
                    return Ok(segments);
                }
            }
        }
    }

    /// Parses `.name`, `.*`, or a descendant segment `..name`, `..*`,
    /// `..[...]`. No blank may follow the dots.
    fn parse_dotted(&mut self) -> Result<Segment, JsonQueryError> {
        self.bump();
        if self.eat('.') {
            if self.peek() == Some('[') {
                return Ok(Segment::Descendant(self.parse_bracketed()?));
            }
            let selector = self.parse_shorthand("a member name, '*' or '[' after '..'")?;
            return Ok(Segment::Descendant(vec![selector]));
        }
        let selector = self.parse_shorthand("a member name or '*' after '.'")?;
        Ok(Segment::Child(vec![selector]))
    }

    /// Parses the `*` or member name that follows a dot.
    fn parse_shorthand(&mut self, expected: &'static str) -> Result<Selector, JsonQueryError> {
        match self.peek() {
            Some('*') => {
                self.bump();
                Ok(Selector::Wildcard)
            }
            Some(ch) if is_name_first(ch) => {
                let rest = &self.path[self.pos..];
                let len = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
                self.pos += len;
                Ok(Selector::Name(rest[..len].to_owned()))
            }
            _ => Err(self.unexpected_here(expected)),
        }
    }

    /// Parses `[selector, ...]`, blanks allowed around each selector.
    fn parse_bracketed(&mut self) -> Result<Vec<Selector>, JsonQueryError> {
        self.bump();
        let mut selectors = Vec::new();
        loop {
            self.skip_blank();
            selectors.push(self.parse_selector()?);
            self.skip_blank();
            match self.bump() {
                Some(',') => {}
                Some(']') => return Ok(selectors),
                Some(ch) => {
                    self.pos -= ch.len_utf8();
                    return Err(self.unexpected(ch));
                }
                None => {
                    return Err(JsonQueryError::UnexpectedEnd {
                        expected: "',' or ']'",
                    });
                }
            }
        }
    }

    fn parse_selector(&mut self) -> Result<Selector, JsonQueryError> {
        match self.peek() {
            Some(quote @ ('\'' | '"')) => self.parse_string(quote).map(Selector::Name),
            Some('*') => {
                self.bump();
                Ok(Selector::Wildcard)
            }
            Some('?') => self.nested(|parser| {
                parser.bump();
                parser.skip_blank();
                parser.parse_or().map(Selector::Filter)
            }),
            Some('-' | ':' | '0'..='9') => self.parse_index_or_slice(),
            _ => Err(self.unexpected_here("a selector")),
        }
    }

    /// Parses `index`, or a slice `start:end:step` with every part optional.
    fn parse_index_or_slice(&mut self) -> Result<Selector, JsonQueryError> {
        let start = self.parse_optional_int()?;
        self.skip_blank();
        if !self.eat(':') {
            return match start {
                Some(index) => Ok(Selector::Index(index)),
                None => Err(self.unexpected_here("an index")),
            };
        }
        self.skip_blank();
        let end = self.parse_optional_int()?;
        self.skip_blank();
        let step = if self.eat(':') {
            self.skip_blank();
            self.parse_optional_int()?
        } else {
            None
        };
        Ok(Selector::Slice(Slice { start, end, step }))
    }

    /// Parses an integer as RFC 9535 writes indices: no `+`, no leading
    /// zero, no `-0`, and within ±(2^53 - 1). `None` when no integer starts
    /// here.
    fn parse_optional_int(&mut self) -> Result<Option<i64>, JsonQueryError> {
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
        let invalid = || JsonQueryError::InvalidInteger {
            text: text.to_owned(),
            pos: start,
        };
        let magnitude = &text[sign..];
        let leading_zero = magnitude.len() > 1 && magnitude.starts_with('0');
        if magnitude.is_empty() || leading_zero || text == "-0" {
            return Err(invalid());
        }
        match text.parse::<i64>() {
            Ok(value) if (-MAX_EXACT_INT..=MAX_EXACT_INT).contains(&value) => Ok(Some(value)),
            _ => Err(invalid()),
        }
    }

    /// Parses a string literal in `quote`s with JSON's escapes; the other
    /// quote appears unescaped, and control characters must be escaped.
    fn parse_string(&mut self, quote: char) -> Result<String, JsonQueryError> {
        let start = self.pos;
        self.bump();
        let mut text = String::new();
        loop {
            let pos = self.pos;
            match self.bump() {
                None => return Err(JsonQueryError::UnterminatedString { pos: start }),
                Some(ch) if ch == quote => return Ok(text),
                Some('\\') => text.push(self.parse_escape(quote, pos)?),
                Some(ch) if ch < ' ' => {
                    self.pos = pos;
                    return Err(self.unexpected(ch));
                }
                Some(ch) => text.push(ch),
            }
        }
    }

    /// Parses what follows a backslash at `pos`.
    fn parse_escape(&mut self, quote: char, pos: usize) -> Result<char, JsonQueryError> {
        let invalid = JsonQueryError::InvalidEscape { pos };
        let escaped = match self.bump() {
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some(ch @ ('/' | '\\')) => ch,
            Some(ch) if ch == quote => ch,
            Some('u') => {
                let unit = self.parse_hex4().ok_or(invalid.clone())?;
                return match unit {
                    0xD800..=0xDBFF => {
                        if !self.eat_str("\\u") {
                            return Err(invalid);
                        }
                        let low = self.parse_hex4().ok_or(invalid.clone())?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(invalid);
                        }
                        let scalar = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        char::from_u32(scalar).ok_or(invalid)
                    }
                    _ => char::from_u32(unit).ok_or(invalid),
                };
            }
            _ => return Err(invalid),
        };
        Ok(escaped)
    }

    fn parse_hex4(&mut self) -> Option<u32> {
        let digits = self.path.get(self.pos..self.pos + 4)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    /// `logical-or-expr = logical-and-expr *(S "||" S logical-and-expr)`.
    fn parse_or(&mut self) -> Result<Logical, JsonQueryError> {
        let mut terms = vec![self.parse_and()?];
        while self.eat_operator("||") {
            terms.push(self.parse_and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Logical::Or(terms)
        })
    }

    /// `logical-and-expr = basic-expr *(S "&&" S basic-expr)`.
    fn parse_and(&mut self) -> Result<Logical, JsonQueryError> {
        let mut terms = vec![self.parse_basic()?];
        while self.eat_operator("&&") {
            terms.push(self.parse_basic()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Logical::And(terms)
        })
    }

    /// Consumes blanks, `operator` and blanks, or nothing when the operator
    /// does not follow.
    fn eat_operator(&mut self, operator: &str) -> bool {
        let before = self.pos;
        self.skip_blank();
        if self.eat_str(operator) {
            self.skip_blank();
            true
        } else {
            self.pos = before;
            false
        }
    }

    /// A comparison, or a parenthesised expression or a test, either of
    /// the last two possibly negated (`!@.a == 1` is not a comparison).
    fn parse_basic(&mut self) -> Result<Logical, JsonQueryError> {
        if self.eat('!') {
            self.skip_blank();
            let negated = if self.peek() == Some('(') {
                self.parse_paren()?
            } else {
                let pos = self.pos;
                let atom = self.parse_atom()?;
                self.test(atom, pos)?
            };
            return Ok(Logical::Not(Box::new(negated)));
        }
        if self.peek() == Some('(') {
            return self.parse_paren();
        }
        let left_pos = self.pos;
        let left = self.parse_atom()?;
        let before = self.pos;
        self.skip_blank();
        let Some(op) = self.parse_compare_op() else {
            self.pos = before;
            return self.test(left, left_pos);
        };
        self.skip_blank();
        let left = self.comparable(left, left_pos)?;
        let right_pos = self.pos;
        let right = self.parse_atom()?;
        let right = self.comparable(right, right_pos)?;
        Ok(Logical::Compare(Box::new((left, op, right))))
    }

    fn parse_paren(&mut self) -> Result<Logical, JsonQueryError> {
        self.nested(|parser| {
            parser.bump();
            parser.skip_blank();
            let inner = parser.parse_or()?;
            parser.skip_blank();
            parser.expect(')', "')'")?;
            Ok(inner)
        })
    }

    fn parse_compare_op(&mut self) -> Option<CompareOp> {
        let ops = [
            ("==", CompareOp::Eq),
            ("!=", CompareOp::Ne),
            ("<=", CompareOp::Le),
            (">=", CompareOp::Ge),
            ("<", CompareOp::Lt),
            (">", CompareOp::Gt),
        ];
        ops.into_iter()
            .find(|(text, _)| self.eat_str(text))
            .map(|(_, op)| op)
    }

    /// An atom standing alone as a test: a query (does it select
    /// anything?) or a function of logical type.
    fn test(&self, atom: Atom, pos: usize) -> Result<Logical, JsonQueryError> {
        match atom {
            Atom::Query(query) => Ok(Logical::Exists(query)),
            Atom::Function(Function::Logical(call)) => Ok(Logical::Regex(Box::new(call))),
            Atom::Function(Function::Value(_)) => Err(self.ill_typed(
                pos,
                "a function returning a value must be compared, not used as a test",
            )),
            Atom::Literal(_) => Err(self.ill_typed(pos, "a literal must be compared")),
        }
    }

    /// An atom used where one value is needed: a comparison operand or an
    /// argument of value type.
    fn comparable(&self, atom: Atom, pos: usize) -> Result<Comparable, JsonQueryError> {
        match atom {
            Atom::Literal(literal) => Ok(Comparable::Literal(literal)),
            Atom::Query(query) if query.is_singular() => Ok(Comparable::Singular(query)),
            Atom::Query(_) => Err(JsonQueryError::NonSingularQuery { pos }),
            Atom::Function(Function::Value(value)) => Ok(value),
            Atom::Function(Function::Logical(_)) => Err(self.ill_typed(
                pos,
                "match() and search() return a logical value, which cannot be compared",
            )),
        }
    }

    /// A literal, a query, or a function call.
    fn parse_atom(&mut self) -> Result<Atom, JsonQueryError> {
        match self.peek() {
            Some(root @ ('@' | '$')) => {
                self.bump();
                let segments = self.parse_segments()?;
                Ok(Atom::Query(FilterQuery {
                    relative: root == '@',
                    segments,
                }))
            }
            Some(quote @ ('\'' | '"')) => {
                Ok(Atom::Literal(Literal::String(self.parse_string(quote)?)))
            }
            Some('-' | '0'..='9') => Ok(Atom::Literal(Literal::Number(self.parse_number()?))),
            Some('a'..='z') => self.parse_word(),
            _ => Err(self.unexpected_here("a literal, a query or a function")),
        }
    }

    /// `true`, `false`, `null`, or a function name followed by `(`.
    fn parse_word(&mut self) -> Result<Atom, JsonQueryError> {
        let start = self.pos;
        let rest = &self.path[start..];
        let len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let word = &rest[..len];
        if rest[len..].starts_with('(') {
            self.pos += len;
            return self.parse_call(word, start).map(Atom::Function);
        }
        let literal = match word {
            "true" => Literal::Bool(true),
            "false" => Literal::Bool(false),
            "null" => Literal::Null,
            _ => return Err(self.unexpected_here("a literal, a query or a function")),
        };
        // `truex` or `nullable` is neither a literal nor a call.
        self.pos += len;
        match self.peek() {
            Some(ch) if ch.is_ascii_alphanumeric() => Err(self.unexpected(ch)),
            _ => Ok(Atom::Literal(literal)),
        }
    }

    /// Parses `name(args)` with the cursor on `(` and checks the arguments
    /// against the function's declared parameter types.
    fn parse_call(&mut self, name: &str, pos: usize) -> Result<Function, JsonQueryError> {
        let arity = match name {
            "length" | "count" | "value" => 1,
            "match" | "search" => 2,
            _ => {
                return Err(JsonQueryError::UnknownFunction {
                    name: name.to_owned(),
                    pos,
                });
            }
        };
        let args = self.nested(|parser| {
            parser.bump();
            parser.skip_blank();
            let mut args = Vec::new();
            if parser.peek() != Some(')') {
                loop {
                    let arg_pos = parser.pos;
                    args.push((parser.parse_argument(name)?, arg_pos));
                    parser.skip_blank();
                    if !parser.eat(',') {
                        break;
                    }
                    parser.skip_blank();
                }
            }
            parser.expect(')', "',' or ')' in a function call")?;
            Ok(args)
        })?;
        if args.len() != arity {
            let plural = if arity == 1 { "" } else { "s" };
            return Err(self.ill_typed(
                pos,
                format!(
                    "{name}() takes {arity} argument{plural}, not {}",
                    args.len()
                ),
            ));
        }
        let mut args = args.into_iter();
        let mut next = || args.next().unwrap_or_else(|| unreachable!("arity checked"));
        Ok(match name {
            "length" => {
                let (arg, at) = next();
                Function::Value(Comparable::Length(Box::new(self.value_arg(arg, at, name)?)))
            }
            "count" => {
                let (arg, at) = next();
                Function::Value(Comparable::Count(self.nodes_arg(arg, at, name)?))
            }
            "value" => {
                let (arg, at) = next();
                Function::Value(Comparable::Value(self.nodes_arg(arg, at, name)?))
            }
            _ => {
                let (subject, subject_at) = next();
                let (pattern, pattern_at) = next();
                Function::Logical(RegexCall {
                    anchored: name == "match",
                    subject: self.value_arg(subject, subject_at, name)?,
                    pattern: self.value_arg(pattern, pattern_at, name)?,
                })
            }
        })
    }

    /// One function argument. A logical expression (`@.a == 1`, `!@.b`)
    /// is grammatical there, but no standard function takes one, so it is
    /// refused as ill-typed when it is recognised.
    fn parse_argument(&mut self, function: &str) -> Result<Atom, JsonQueryError> {
        let pos = self.pos;
        let logical = || JsonQueryError::IllTyped {
            reason: format!("{function}() takes no logical expression"),
            pos,
        };
        if matches!(self.peek(), Some('!' | '(')) {
            return Err(logical());
        }
        let atom = self.parse_atom()?;
        let before = self.pos;
        self.skip_blank();
        let rest = &self.path[self.pos..];
        let operator = ["==", "!=", "<", ">", "&&", "||"]
            .iter()
            .any(|op| rest.starts_with(op));
        self.pos = before;
        if operator { Err(logical()) } else { Ok(atom) }
    }

    fn value_arg(
        &self,
        arg: Atom,
        pos: usize,
        function: &str,
    ) -> Result<Comparable, JsonQueryError> {
        match arg {
            Atom::Query(query) if !query.is_singular() => Err(self.ill_typed(
                pos,
                format!("{function}() needs a single value here, and this query may select several nodes"),
            )),
            other => self.comparable(other, pos),
        }
    }

    fn nodes_arg(
        &self,
        arg: Atom,
        pos: usize,
        function: &str,
    ) -> Result<FilterQuery, JsonQueryError> {
        match arg {
            Atom::Query(query) => Ok(query),
            _ => Err(self.ill_typed(pos, format!("{function}() takes a query"))),
        }
    }

    /// Parses a JSON number: `-0` is allowed here (unlike in indices), a
    /// fraction and an exponent need at least one digit each.
    fn parse_number(&mut self) -> Result<Number, JsonQueryError> {
        let start = self.pos;
        let bytes = self.path.as_bytes();
        let digits_from = |mut i: usize| {
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let mut end = start + usize::from(bytes[start] == b'-');
        let int_end = digits_from(end);
        let int_digits = &self.path[end..int_end];
        let mut valid =
            !int_digits.is_empty() && (int_digits == "0" || !int_digits.starts_with('0'));
        end = int_end;
        let mut integral = true;
        if bytes.get(end) == Some(&b'.') {
            integral = false;
            let frac_end = digits_from(end + 1);
            valid &= frac_end > end + 1;
            end = frac_end;
        }
        if matches!(bytes.get(end), Some(b'e' | b'E')) {
            integral = false;
            end += 1;
            if matches!(bytes.get(end), Some(b'+' | b'-')) {
                end += 1;
            }
            let exp_end = digits_from(end);
            valid &= exp_end > end;
            end = exp_end;
        }
        let text = &self.path[start..end];
        self.pos = end;
        let invalid = || JsonQueryError::InvalidNumber {
            text: text.to_owned(),
            pos: start,
        };
        if !valid {
            return Err(invalid());
        }
        if integral {
            if let Ok(value) = text.parse::<i64>() {
                return Ok(Number::Int(value));
            }
            if let Ok(value) = text.parse::<u64>() {
                return Ok(Number::UInt(value));
            }
        }
        text.parse::<f64>()
            .map(Number::Float)
            .map_err(|_| invalid())
    }
}
