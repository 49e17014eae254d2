//! Evaluation of a parsed path against a document, within a work budget.
//!
//! Every loop charges the budget before it does its work: each node a
//! descendant segment visits, each selector applied, each node selected,
//! each filter operand, each pair of values compared, and the length of
//! every string scanned or matched. A query therefore stops with
//! [`JsonQueryError::TooMuchWork`] after a bounded number of steps however
//! its segments multiply, and every node list, the final one included,
//! stops at [`Limits::max_matches`] entries as it grows, never after.

use std::cmp::Ordering;
use std::collections::HashMap;

use regex::Regex;
use serde_json::{Map, Value};

use super::iregexp;
use super::parse::{
    Comparable, CompareOp, FilterQuery, Literal, Logical, Number, RegexCall, Segment, Selector,
    Slice,
};
use super::{JsonQueryError, Limits};

/// Compiled patterns kept per query; a document feeding a new pattern to
/// every node cannot grow the cache beyond this.
const REGEX_CACHE_ENTRIES: usize = 8;

pub(super) struct Evaluator<'a> {
    root: &'a Value,
    limits: &'a Limits,
    work: u64,
    /// `match` patterns and `search` patterns, compiled once per query;
    /// `None` records a pattern that is not an I-Regexp.
    anchored: HashMap<String, Option<Regex>>,
    unanchored: HashMap<String, Option<Regex>>,
}

/// One value as a filter sees it: absent (`Nothing` in RFC 9535), or a
/// JSON value from the document, a literal, or a function's result.
#[derive(Debug, Clone, Copy)]
enum Operand<'a> {
    Nothing,
    Null,
    Bool(bool),
    Number(Number),
    String(&'a str),
    Array(&'a [Value]),
    Object(&'a Map<String, Value>),
}

impl<'a> Operand<'a> {
    fn of(value: &'a Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => Self::Number(number(n)),
            Value::String(s) => Self::String(s),
            Value::Array(items) => Self::Array(items),
            Value::Object(members) => Self::Object(members),
        }
    }

    fn of_literal(literal: &'a Literal) -> Self {
        match literal {
            Literal::Null => Self::Null,
            Literal::Bool(b) => Self::Bool(*b),
            Literal::Number(n) => Self::Number(*n),
            Literal::String(s) => Self::String(s),
        }
    }
}

fn number(n: &serde_json::Number) -> Number {
    if let Some(i) = n.as_i64() {
        Number::Int(i)
    } else if let Some(u) = n.as_u64() {
        Number::UInt(u)
    } else {
        Number::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Compares numbers by value: `1 == 1.0`, and integers beyond 2^53 stay
/// exact against each other.
fn compare_numbers(a: Number, b: Number) -> Option<Ordering> {
    match (a, b) {
        (Number::Int(x), Number::Int(y)) => Some(x.cmp(&y)),
        (Number::UInt(x), Number::UInt(y)) => Some(x.cmp(&y)),
        (Number::Int(x), Number::UInt(y)) => Some(match u64::try_from(x) {
            Ok(x) => x.cmp(&y),
            Err(_) => Ordering::Less,
        }),
        (Number::UInt(_), Number::Int(_)) => compare_numbers(b, a).map(Ordering::reverse),
        _ => as_f64(a).partial_cmp(&as_f64(b)),
    }
}

fn as_f64(n: Number) -> f64 {
    match n {
        Number::Int(i) => i as f64,
        Number::UInt(u) => u as f64,
        Number::Float(f) => f,
    }
}

/// The steps charged for scanning a string of `len` bytes.
fn string_cost(len: usize) -> u64 {
    1 + (len / 64) as u64
}

impl<'a> Evaluator<'a> {
    pub(super) fn new(root: &'a Value, limits: &'a Limits) -> Self {
        Self {
            root,
            limits,
            work: 0,
            anchored: HashMap::new(),
            unanchored: HashMap::new(),
        }
    }

    /// Charges `steps` to the budget, failing once it is spent.
    fn charge(&mut self, steps: u64) -> Result<(), JsonQueryError> {
        self.work = self.work.saturating_add(steps);
        if self.work > self.limits.max_work {
            return Err(JsonQueryError::TooMuchWork {
                max: self.limits.max_work,
            });
        }
        Ok(())
    }

    fn push(&mut self, out: &mut Vec<&'a Value>, node: &'a Value) -> Result<(), JsonQueryError> {
        self.charge(1)?;
        if out.len() >= self.limits.max_matches {
            return Err(JsonQueryError::TooManyMatches {
                max: self.limits.max_matches,
            });
        }
        out.push(node);
        Ok(())
    }

    /// Applies `segments` in turn, starting from `start`.
    pub(super) fn run(
        &mut self,
        segments: &'a [Segment],
        start: &'a Value,
    ) -> Result<Vec<&'a Value>, JsonQueryError> {
        let mut nodes = vec![start];
        for segment in segments {
            let mut out = Vec::new();
            for &input in &nodes {
                match segment {
                    Segment::Child(selectors) => self.select_all(selectors, input, &mut out)?,
                    Segment::Descendant(selectors) => {
                        self.descend(selectors, input, &mut out)?;
                    }
                }
            }
            nodes = out;
        }
        Ok(nodes)
    }

    fn select_all(
        &mut self,
        selectors: &'a [Selector],
        node: &'a Value,
        out: &mut Vec<&'a Value>,
    ) -> Result<(), JsonQueryError> {
        for selector in selectors {
            self.select(selector, node, out)?;
        }
        Ok(())
    }

    /// Visits `root` and every node below it, parents before children and
    /// array elements in order, applying `selectors` at each. The explicit
    /// stack of child iterators keeps deep documents off the call stack and
    /// never lists a subtree up front.
    fn descend(
        &mut self,
        selectors: &'a [Selector],
        root: &'a Value,
        out: &mut Vec<&'a Value>,
    ) -> Result<(), JsonQueryError> {
        enum Children<'v> {
            Array(std::slice::Iter<'v, Value>),
            Object(serde_json::map::Values<'v>),
        }
        let mut stack: Vec<Children<'a>> = Vec::new();
        let mut next = Some(root);
        loop {
            if let Some(node) = next.take() {
                self.charge(1)?;
                self.select_all(selectors, node, out)?;
                match node {
                    Value::Array(items) => stack.push(Children::Array(items.iter())),
                    Value::Object(members) => stack.push(Children::Object(members.values())),
                    _ => {}
                }
            }
            let Some(top) = stack.last_mut() else {
                return Ok(());
            };
            next = match top {
                Children::Array(items) => items.next(),
                Children::Object(values) => values.next(),
            };
            if next.is_none() {
                stack.pop();
            }
        }
    }

    fn select(
        &mut self,
        selector: &'a Selector,
        node: &'a Value,
        out: &mut Vec<&'a Value>,
    ) -> Result<(), JsonQueryError> {
        self.charge(1)?;
        match (selector, node) {
            (Selector::Name(name), Value::Object(members)) => {
                if let Some(member) = members.get(name) {
                    self.push(out, member)?;
                }
            }
            (Selector::Index(index), Value::Array(items)) => {
                if let Some(item) = resolve_index(*index, items.len()).and_then(|i| items.get(i)) {
                    self.push(out, item)?;
                }
            }
            (Selector::Slice(slice), Value::Array(items)) => {
                for i in slice_indices(*slice, items.len()) {
                    self.push(out, &items[i])?;
                }
            }
            (Selector::Wildcard, Value::Array(items)) => {
                for item in items {
                    self.push(out, item)?;
                }
            }
            (Selector::Wildcard, Value::Object(members)) => {
                for member in members.values() {
                    self.push(out, member)?;
                }
            }
            (Selector::Filter(filter), Value::Array(items)) => {
                for item in items {
                    if self.holds(filter, item)? {
                        self.push(out, item)?;
                    }
                }
            }
            (Selector::Filter(filter), Value::Object(members)) => {
                for member in members.values() {
                    if self.holds(filter, member)? {
                        self.push(out, member)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the filter expression holds for the `current` node (`@`).
    fn holds(&mut self, expr: &'a Logical, current: &'a Value) -> Result<bool, JsonQueryError> {
        self.charge(1)?;
        Ok(match expr {
            Logical::Or(terms) => {
                for term in terms {
                    if self.holds(term, current)? {
                        return Ok(true);
                    }
                }
                false
            }
            Logical::And(terms) => {
                for term in terms {
                    if !self.holds(term, current)? {
                        return Ok(false);
                    }
                }
                true
            }
            Logical::Not(inner) => !self.holds(inner, current)?,
            Logical::Exists(query) => !self.nodes(query, current)?.is_empty(),
            Logical::Compare(comparison) => {
                let (left, op, right) = comparison.as_ref();
                let left = self.operand(left, current)?;
                let right = self.operand(right, current)?;
                self.compare(left, *op, right)?
            }
            Logical::Regex(call) => self.regex(call, current)?,
        })
    }

    fn nodes(
        &mut self,
        query: &'a FilterQuery,
        current: &'a Value,
    ) -> Result<Vec<&'a Value>, JsonQueryError> {
        let start = if query.relative { current } else { self.root };
        self.run(&query.segments, start)
    }

    fn operand(
        &mut self,
        comparable: &'a Comparable,
        current: &'a Value,
    ) -> Result<Operand<'a>, JsonQueryError> {
        self.charge(1)?;
        Ok(match comparable {
            Comparable::Literal(literal) => Operand::of_literal(literal),
            Comparable::Singular(query) => self.singular(query, current)?,
            Comparable::Length(arg) => match self.operand(arg, current)? {
                Operand::String(s) => {
                    self.charge(string_cost(s.len()))?;
                    Operand::Number(count(s.chars().count()))
                }
                Operand::Array(items) => Operand::Number(count(items.len())),
                Operand::Object(members) => Operand::Number(count(members.len())),
                _ => Operand::Nothing,
            },
            Comparable::Count(query) => Operand::Number(count(self.nodes(query, current)?.len())),
            Comparable::Value(query) => match self.nodes(query, current)?.as_slice() {
                [node] => Operand::of(node),
                _ => Operand::Nothing,
            },
        })
    }

    /// Follows a singular query without building a node list.
    fn singular(
        &mut self,
        query: &'a FilterQuery,
        current: &'a Value,
    ) -> Result<Operand<'a>, JsonQueryError> {
        let mut node = if query.relative { current } else { self.root };
        for segment in &query.segments {
            self.charge(1)?;
            let found = match (segment, node) {
                (Segment::Child(selectors), Value::Object(members)) => match selectors.as_slice() {
                    [Selector::Name(name)] => members.get(name),
                    _ => None,
                },
                (Segment::Child(selectors), Value::Array(items)) => match selectors.as_slice() {
                    [Selector::Index(index)] => {
                        resolve_index(*index, items.len()).and_then(|i| items.get(i))
                    }
                    _ => None,
                },
                _ => None,
            };
            match found {
                Some(next) => node = next,
                None => return Ok(Operand::Nothing),
            }
        }
        Ok(Operand::of(node))
    }

    /// RFC 9535 §2.3.5.2.2: `==` is deep equality with numbers compared by
    /// value, `<` orders numbers and strings only, and the other operators
    /// derive from these two.
    fn compare(
        &mut self,
        left: Operand<'a>,
        op: CompareOp,
        right: Operand<'a>,
    ) -> Result<bool, JsonQueryError> {
        Ok(match op {
            CompareOp::Eq => self.equal(left, right)?,
            CompareOp::Ne => !self.equal(left, right)?,
            CompareOp::Lt => less(left, right),
            CompareOp::Gt => less(right, left),
            CompareOp::Le => less(left, right) || self.equal(left, right)?,
            CompareOp::Ge => less(right, left) || self.equal(left, right)?,
        })
    }

    /// Equality of two operands: `Nothing` equals only `Nothing`, and
    /// values are compared deeply.
    fn equal(&mut self, left: Operand<'a>, right: Operand<'a>) -> Result<bool, JsonQueryError> {
        self.charge(1)?;
        Ok(match (left, right) {
            (Operand::Nothing, Operand::Nothing) | (Operand::Null, Operand::Null) => true,
            (Operand::Bool(a), Operand::Bool(b)) => a == b,
            (Operand::Number(a), Operand::Number(b)) => {
                compare_numbers(a, b) == Some(Ordering::Equal)
            }
            (Operand::String(a), Operand::String(b)) => self.equal_strings(a, b)?,
            (Operand::Array(a), Operand::Array(b)) => {
                a.len() == b.len() && self.equal_values(a.iter().zip(b).collect())?
            }
            (Operand::Object(a), Operand::Object(b)) => {
                let mut pending = Vec::new();
                a.len() == b.len()
                    && self.pair_members(a, b, &mut pending)?
                    && self.equal_values(pending)?
            }
            _ => false,
        })
    }

    /// Deep equality of JSON values, numbers by value, one step per pair
    /// compared. Pairs wait on an explicit stack, so nesting depth costs
    /// heap, not call stack.
    fn equal_values(
        &mut self,
        mut pending: Vec<(&'a Value, &'a Value)>,
    ) -> Result<bool, JsonQueryError> {
        while let Some(pair) = pending.pop() {
            self.charge(1)?;
            let same = match pair {
                (Value::Null, Value::Null) => true,
                (Value::Bool(a), Value::Bool(b)) => a == b,
                (Value::Number(a), Value::Number(b)) => {
                    compare_numbers(number(a), number(b)) == Some(Ordering::Equal)
                }
                (Value::String(a), Value::String(b)) => self.equal_strings(a, b)?,
                (Value::Array(a), Value::Array(b)) => {
                    pending.extend(a.iter().zip(b));
                    a.len() == b.len()
                }
                (Value::Object(a), Value::Object(b)) => {
                    a.len() == b.len() && self.pair_members(a, b, &mut pending)?
                }
                _ => false,
            };
            if !same {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Pairs the members of two objects of the same size onto `pending`,
    /// or false when a key of `a` is missing from `b`.
    fn pair_members(
        &mut self,
        a: &'a Map<String, Value>,
        b: &'a Map<String, Value>,
        pending: &mut Vec<(&'a Value, &'a Value)>,
    ) -> Result<bool, JsonQueryError> {
        for (key, x) in a {
            self.charge(string_cost(key.len()))?;
            match b.get(key) {
                Some(y) => pending.push((x, y)),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    fn equal_strings(&mut self, a: &str, b: &str) -> Result<bool, JsonQueryError> {
        self.charge(string_cost(a.len().min(b.len())))?;
        Ok(a == b)
    }

    /// `match()` and `search()`: false unless both arguments are strings
    /// and the pattern is a valid I-Regexp.
    fn regex(&mut self, call: &'a RegexCall, current: &'a Value) -> Result<bool, JsonQueryError> {
        let subject = self.operand(&call.subject, current)?;
        let pattern = self.operand(&call.pattern, current)?;
        let (Operand::String(subject), Operand::String(pattern)) = (subject, pattern) else {
            return Ok(false);
        };
        let anchored = call.anchored;
        let cache = if anchored {
            &self.anchored
        } else {
            &self.unanchored
        };
        let compiled = match cache.get(pattern) {
            Some(compiled) => compiled.clone(),
            None => {
                // Compiling costs far more than a step per byte; charge it
                // so a document feeding a fresh pattern to every node runs
                // out of budget, not of time.
                self.charge(64 + 16 * pattern.len() as u64)?;
                let compiled = iregexp::compile(pattern, anchored, self.limits.max_regex_bytes)?;
                let cache = if anchored {
                    &mut self.anchored
                } else {
                    &mut self.unanchored
                };
                if cache.len() >= REGEX_CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(pattern.to_owned(), compiled.clone());
                compiled
            }
        };
        let Some(regex) = compiled else {
            return Ok(false);
        };
        self.charge(string_cost(subject.len()) * (1 + pattern.len() as u64 / 16))?;
        Ok(regex.is_match(subject))
    }
}

fn count(n: usize) -> Number {
    Number::UInt(n as u64)
}

/// `<` as RFC 9535 defines it: numbers by value, strings by code point;
/// anything else, `Nothing` included, is never less than anything.
fn less(left: Operand<'_>, right: Operand<'_>) -> bool {
    match (left, right) {
        (Operand::Number(a), Operand::Number(b)) => compare_numbers(a, b) == Some(Ordering::Less),
        // UTF-8 byte order is code point order.
        (Operand::String(a), Operand::String(b)) => a < b,
        _ => false,
    }
}

/// Maps a possibly negative index to a position in an array of `len`
/// elements, or `None` when it falls outside.
fn resolve_index(index: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let position = if index < 0 { len + index } else { index };
    usize::try_from(position).ok().filter(|&i| i < len as usize)
}

/// The positions a slice selects, in order (RFC 9535 §2.3.4.2.2).
fn slice_indices(slice: Slice, len: usize) -> impl Iterator<Item = usize> {
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    let step = slice.step.unwrap_or(1);
    let normalize = |i: i64| if i >= 0 { i } else { len + i };
    let (mut i, stop) = match step.cmp(&0) {
        Ordering::Greater => {
            let start = normalize(slice.start.unwrap_or(0)).clamp(0, len);
            let end = normalize(slice.end.unwrap_or(len)).clamp(0, len);
            (start, end)
        }
        Ordering::Less => {
            let start = slice.start.map_or(len - 1, normalize).clamp(-1, len - 1);
            let end = slice.end.map_or(-1, normalize).clamp(-1, len - 1);
            (start, end)
        }
        Ordering::Equal => (0, 0),
    };
    std::iter::from_fn(move || {
        let inside = match step.cmp(&0) {
            Ordering::Greater => i < stop,
            Ordering::Less => stop < i,
            Ordering::Equal => false,
        };
        if !inside {
            return None;
        }
        let current = i;
        i = i.saturating_add(step);
        usize::try_from(current).ok()
    })
}
