//! `{{id.field}}` references from a subtask's input to the JSON output of an
//! earlier subtask.
//!
//! A string that is exactly one reference is replaced by the referenced
//! value with its JSON type intact (`"{{a.words}}"` becomes the number 4);
//! a reference inside a longer string is interpolated as text
//! (`"({{a.words}} + 1)"` becomes `"(4 + 1)"`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;

use serde_json::Value;
use thiserror::Error;

use super::limits::TaskLimits;
use super::message::{MAX_QUOTED, clip};

/// One `{{task.path.to.field}}` occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The referenced subtask id.
    pub task: String,
    /// Field names or array indices below the subtask's output; empty means
    /// the whole output.
    pub path: Vec<String>,
}

impl Reference {
    /// The reference as written, for error messages (clipped to
    /// [`MAX_QUOTED`] bytes).
    pub fn display(&self) -> String {
        let mut text = self.task.clone();
        for field in &self.path {
            if text.len() > MAX_QUOTED {
                break;
            }
            text.push('.');
            text.push_str(field);
        }
        format!("{{{{{}}}}}", clip(&text, MAX_QUOTED))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReferenceError {
    #[error("unterminated reference starting at byte {0} (missing '}}}}')")]
    Unterminated(usize),
    #[error("empty reference '{{{{}}}}' at byte {0}")]
    Empty(usize),
    #[error("malformed reference '{text}': {reason}")]
    Malformed { text: String, reason: &'static str },
    #[error("reference {reference} names task '{task}', which has no output")]
    MissingOutput { reference: String, task: String },
    #[error("reference {reference}: output of '{task}' has no field '{field}'")]
    MissingField {
        reference: String,
        task: String,
        field: String,
    },
    /// Computed before the input is built; `exact` is false when a
    /// referenced value alone was past the limit and measuring stopped.
    #[error(
        "input would resolve to {}{size} bytes as JSON, over the limit max_input_bytes = {limit}",
        if *exact { "" } else { "more than " }
    )]
    TooLarge {
        size: usize,
        exact: bool,
        limit: usize,
    },
    #[error("input holds more references than the limit max_input_references = {limit}")]
    TooManyReferences { limit: usize },
}

/// Looks up the JSON output of a subtask by id, borrowed: a reference
/// copies the value it names once, where it is placed, never the whole
/// output it sits in.
pub type OutputLookup<'a> = dyn Fn(&str) -> Option<&'a Value> + 'a;

/// Receives the field path of a string holding references and what parsing
/// them gave.
pub type ReferenceVisitor<'a> = dyn FnMut(&str, Result<Vec<Reference>, ReferenceError>) + 'a;

/// A piece of a string split at its references.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Ref(Reference),
}

fn split(text: &str) -> Result<Vec<Piece<'_>>, ReferenceError> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or(ReferenceError::Unterminated(offset + start))?;
        pieces.push(Piece::Ref(parse_reference(&after[..end], offset + start)?));
        let consumed = start + 2 + end + 2;
        rest = &rest[consumed..];
        offset += consumed;
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

fn parse_reference(inner: &str, at: usize) -> Result<Reference, ReferenceError> {
    let inner = inner.trim();
    if inner.is_empty() {
        return Err(ReferenceError::Empty(at));
    }
    let mut parts = inner.split('.');
    let task = parts.next().unwrap_or_default().to_owned();
    let path: Vec<String> = parts.map(str::to_owned).collect();
    let malformed = |reason| ReferenceError::Malformed {
        text: format!("{{{{{}}}}}", clip(inner, MAX_QUOTED)),
        reason,
    };
    if task.is_empty() || path.iter().any(String::is_empty) {
        return Err(malformed("empty name between dots"));
    }
    if inner.contains(char::is_whitespace) {
        return Err(malformed("names must not contain spaces"));
    }
    Ok(Reference { task, path })
}

/// Every reference in `text`, in order.
pub fn references_in(text: &str) -> Result<Vec<Reference>, ReferenceError> {
    Ok(split(text)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Ref(r) => Some(r),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Calls `visit(json_path, reference_result)` for every string in `value`
/// that holds references, where `json_path` names the field (`expr`,
/// `items[2]`). Used by validation to name the offending field.
pub fn visit_references(value: &Value, visit: &mut ReferenceVisitor<'_>) {
    fn walk(value: &Value, path: &mut String, visit: &mut ReferenceVisitor<'_>) {
        match value {
            Value::String(s) if s.contains("{{") => visit(path, references_in(s)),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, path, visit);
                    path.truncate(len);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                    walk(item, path, visit);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    walk(value, &mut String::new(), visit);
}

/// What resolving one subtask's input may cost, from [`TaskLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolveBudget {
    /// Bytes of the resolved input, serialized as JSON.
    pub max_input_bytes: usize,
    /// References in the input, every occurrence counted.
    pub max_references: usize,
}

impl From<&TaskLimits> for ResolveBudget {
    fn from(limits: &TaskLimits) -> Self {
        Self {
            max_input_bytes: limits.max_input_bytes,
            max_references: limits.max_input_references,
        }
    }
}

/// Replaces every reference in `input` with values from earlier outputs.
///
/// The size of the result is computed before any of it is built: every
/// referenced value is measured once (serialized into a counter that
/// stops past the budget, so measuring costs no more than the budget) and
/// counted once per occurrence, with the literal text around it. An input
/// that would resolve to more than `budget.max_input_bytes` is refused
/// before a byte of it is allocated, so a string splicing a large output a
/// thousand times costs a walk over the input, not a thousand copies.
/// The number of references is held to `budget.max_references` as they are
/// met.
pub fn resolve(
    input: &Value,
    output_of: &OutputLookup<'_>,
    budget: ResolveBudget,
) -> Result<Value, ReferenceError> {
    let mut sizer = Sizer {
        output_of,
        budget,
        measured: HashMap::new(),
        references: 0,
        exact: true,
    };
    let size = sizer.size(input)?;
    if size > budget.max_input_bytes {
        return Err(ReferenceError::TooLarge {
            size,
            exact: sizer.exact,
            limit: budget.max_input_bytes,
        });
    }
    build(input, output_of)
}

/// The serialized size of a value as JSON, and how many of its bytes are
/// `"` or `\`, which take two bytes each once that text is spliced into a
/// string. `exact` is false when measuring stopped at the budget.
#[derive(Debug, Clone, Copy)]
struct Size {
    bytes: usize,
    specials: usize,
    exact: bool,
}

impl Size {
    /// Bytes the value adds when spliced into a longer string: a string's
    /// text as it is, anything else as its JSON text, escaped either way.
    fn spliced(self, value: &Value) -> usize {
        match value {
            Value::String(_) => self.bytes.saturating_sub(2),
            _ => self.bytes.saturating_add(self.specials),
        }
    }
}

/// An `io::Write` that only counts, and fails once past `cap` bytes.
struct Meter {
    bytes: usize,
    specials: usize,
    cap: usize,
}

impl io::Write for Meter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes = self.bytes.saturating_add(buf.len());
        self.specials += buf.iter().filter(|&&b| b == b'"' || b == b'\\').count();
        if self.bytes > self.cap {
            return Err(io::Error::other("over the measuring budget"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn measure<T: serde::Serialize + ?Sized>(value: &T, cap: usize) -> Size {
    let mut meter = Meter {
        bytes: 0,
        specials: 0,
        cap,
    };
    let exact = serde_json::to_writer(&mut meter, value).is_ok();
    Size {
        bytes: meter.bytes,
        specials: meter.specials,
        exact,
    }
}

/// The first pass of [`resolve`]: the size the input would have.
struct Sizer<'o, 'v> {
    output_of: &'o OutputLookup<'v>,
    budget: ResolveBudget,
    /// Referenced values measured so far, by address: a value referenced
    /// many times, or under several spellings, is measured once.
    measured: HashMap<*const Value, Size>,
    references: usize,
    exact: bool,
}

impl<'v> Sizer<'_, 'v> {
    fn cap(&self) -> usize {
        self.budget.max_input_bytes.saturating_add(1)
    }

    fn size(&mut self, value: &Value) -> Result<usize, ReferenceError> {
        Ok(match value {
            Value::String(s) if s.contains("{{") => self.string(s)?,
            Value::Array(items) => {
                let mut total = 2 + items.len().saturating_sub(1);
                for item in items {
                    total = total.saturating_add(self.size(item)?);
                }
                total
            }
            Value::Object(map) => {
                let mut total = 2 + map.len().saturating_sub(1);
                for (key, item) in map {
                    let key = measure(key.as_str(), usize::MAX).bytes;
                    total = total
                        .saturating_add(key + 1)
                        .saturating_add(self.size(item)?);
                }
                total
            }
            other => measure(other, usize::MAX).bytes,
        })
    }

    fn string(&mut self, text: &str) -> Result<usize, ReferenceError> {
        let pieces = split(text)?;
        self.count(&pieces)?;
        if let [Piece::Ref(reference)] = pieces.as_slice() {
            return Ok(self.referenced(reference)?.1.bytes);
        }
        let mut total = 2usize;
        for piece in &pieces {
            let bytes = match piece {
                Piece::Text(t) => measure(*t, usize::MAX).bytes - 2,
                Piece::Ref(reference) => {
                    let (value, size) = self.referenced(reference)?;
                    size.spliced(value)
                }
            };
            total = total.saturating_add(bytes);
        }
        Ok(total)
    }

    fn count(&mut self, pieces: &[Piece<'_>]) -> Result<(), ReferenceError> {
        self.references += pieces.iter().filter(|p| matches!(p, Piece::Ref(_))).count();
        if self.references > self.budget.max_references {
            return Err(ReferenceError::TooManyReferences {
                limit: self.budget.max_references,
            });
        }
        Ok(())
    }

    fn referenced(&mut self, reference: &Reference) -> Result<(&'v Value, Size), ReferenceError> {
        let value = lookup(reference, self.output_of)?;
        let cap = self.cap();
        let size = *self
            .measured
            .entry(value as *const Value)
            .or_insert_with(|| measure(value, cap));
        self.exact &= size.exact;
        Ok((value, size))
    }
}

/// The second pass of [`resolve`], once the size is known to fit.
fn build(input: &Value, output_of: &OutputLookup<'_>) -> Result<Value, ReferenceError> {
    Ok(match input {
        Value::String(s) if s.contains("{{") => build_string(s, output_of)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| build(item, output_of))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), build(v, output_of)?)))
                .collect::<Result<_, ReferenceError>>()?,
        ),
        other => other.clone(),
    })
}

fn build_string(text: &str, output_of: &OutputLookup<'_>) -> Result<Value, ReferenceError> {
    let pieces = split(text)?;
    if let [Piece::Ref(reference)] = pieces.as_slice() {
        return Ok(lookup(reference, output_of)?.clone());
    }
    let mut out = String::with_capacity(text.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(reference) => match lookup(&reference, output_of)? {
                Value::String(s) => out.push_str(s),
                // Compact JSON, written straight into the string.
                other => {
                    let _ = write!(out, "{other}");
                }
            },
        }
    }
    Ok(Value::String(out))
}

fn lookup<'v>(
    reference: &Reference,
    output_of: &OutputLookup<'v>,
) -> Result<&'v Value, ReferenceError> {
    let mut current = output_of(&reference.task).ok_or_else(|| ReferenceError::MissingOutput {
        reference: reference.display(),
        task: clip(&reference.task, MAX_QUOTED),
    })?;
    for field in &reference.path {
        let next = match current {
            Value::Object(map) => map.get(field),
            Value::Array(items) => field.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        current = next.ok_or_else(|| ReferenceError::MissingField {
            reference: reference.display(),
            task: clip(&reference.task, MAX_QUOTED),
            field: clip(field, MAX_QUOTED),
        })?;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::LazyLock;
    use std::time::{Duration, Instant};

    static A: LazyLock<Value> =
        LazyLock::new(|| json!({"words": 4, "name": "fox", "list": [10, 20]}));
    static B: LazyLock<Value> = LazyLock::new(|| json!({"words": 6}));

    fn outputs(task: &str) -> Option<&'static Value> {
        match task {
            "a" => Some(&A),
            "b" => Some(&B),
            _ => None,
        }
    }

    fn budget() -> ResolveBudget {
        ResolveBudget::from(&TaskLimits::default())
    }

    fn resolve(input: &Value, output_of: &OutputLookup<'_>) -> Result<Value, ReferenceError> {
        super::resolve(input, output_of, budget())
    }

    #[test]
    fn whole_string_reference_keeps_json_type() {
        let got = resolve(&json!({"n": "{{a.words}}"}), &outputs).unwrap();
        assert_eq!(got, json!({"n": 4}));
    }

    #[test]
    fn embedded_references_are_interpolated() {
        let got = resolve(&json!("({{a.words}} + {{b.words}}) / 2"), &outputs).unwrap();
        assert_eq!(got, json!("(4 + 6) / 2"));
        let got = resolve(&json!("hello {{ a.name }}!"), &outputs).unwrap();
        assert_eq!(got, json!("hello fox!"));
    }

    #[test]
    fn array_indices_and_whole_outputs_resolve() {
        assert_eq!(
            resolve(&json!("{{a.list.1}}"), &outputs).unwrap(),
            json!(20)
        );
        assert_eq!(
            resolve(&json!("{{b}}"), &outputs).unwrap(),
            json!({"words": 6})
        );
        assert_eq!(
            resolve(&json!(["{{b.words}}", 1]), &outputs).unwrap(),
            json!([6, 1])
        );
    }

    #[test]
    fn missing_field_names_reference_and_field() {
        let err = resolve(&json!("{{a.nope}}"), &outputs).unwrap_err();
        assert_eq!(
            err.to_string(),
            "reference {{a.nope}}: output of 'a' has no field 'nope'"
        );
        let err = resolve(&json!("{{zz.x}}"), &outputs).unwrap_err();
        assert!(matches!(err, ReferenceError::MissingOutput { .. }));
    }

    #[test]
    fn malformed_references_are_rejected() {
        assert_eq!(
            references_in("x {{a.b").unwrap_err(),
            ReferenceError::Unterminated(2)
        );
        assert_eq!(
            references_in("{{ }}").unwrap_err(),
            ReferenceError::Empty(0)
        );
        assert!(matches!(
            references_in("{{a..b}}").unwrap_err(),
            ReferenceError::Malformed { .. }
        ));
    }

    #[test]
    fn visit_names_the_field_path() {
        let mut seen = Vec::new();
        visit_references(
            &json!({"expr": "{{a.words}}", "items": [1, "{{b.words}}"], "plain": "x"}),
            &mut |path, refs| seen.push((path.to_owned(), refs.unwrap()[0].task.clone())),
        );
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("expr".to_owned(), "a".to_owned()),
                ("items[1]".to_owned(), "b".to_owned())
            ]
        );
    }

    #[test]
    fn a_splice_bomb_is_refused_before_it_is_built() {
        // 10 KB spliced 30,000 times: 300 MB if built.
        let big = json!({"text": "x".repeat(10 * 1024)});
        let output_of = |id: &str| (id == "a").then_some(&big);
        let input = json!({"expr": "{{a.text}}-".repeat(30_000)});
        let limits = ResolveBudget {
            max_input_bytes: 256 * 1024,
            max_references: 100_000,
        };
        let started = Instant::now();
        let err = super::resolve(&input, &output_of, limits).unwrap_err();
        assert_eq!(
            err,
            ReferenceError::TooLarge {
                size: 30_000 * (10 * 1024 + 1) + "{\"expr\":\"\"}".len(),
                exact: true,
                limit: 256 * 1024,
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "input would resolve to {} bytes as JSON, over the limit max_input_bytes = 262144",
                30_000 * (10 * 1024 + 1) + 11
            )
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn an_output_alone_over_the_limit_is_measured_only_up_to_it() {
        let big = json!({"list": vec![1234567; 1_000_000]});
        let output_of = |id: &str| (id == "a").then_some(&big);
        let limits = ResolveBudget {
            max_input_bytes: 1024,
            max_references: 10,
        };
        let err = super::resolve(&json!("{{a}}"), &output_of, limits).unwrap_err();
        let ReferenceError::TooLarge { size, exact, .. } = err else {
            panic!("{err}");
        };
        assert!(!exact && size > 1024 && size < 2048, "{size}");
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn references_are_counted_against_the_limit() {
        let limits = ResolveBudget {
            max_input_bytes: 1 << 20,
            max_references: 3,
        };
        let input = json!({"x": "{{a.words}} {{a.words}}", "y": ["{{b.words}}", "{{b}}"]});
        assert_eq!(
            super::resolve(&input, &outputs, limits).unwrap_err(),
            ReferenceError::TooManyReferences { limit: 3 }
        );
        let three = json!({"x": "{{a.words}} {{a.words}}", "y": ["{{b.words}}"]});
        assert!(super::resolve(&three, &outputs, limits).is_ok());
    }

    #[test]
    fn a_lookup_storm_copies_only_what_it_names() {
        // Before, each lookup cloned the whole 1 MB output: 50 GB of
        // copying for 50,000 lookups.
        let big = json!({"count": 7, "pad": vec!["y".repeat(1000); 1000]});
        let output_of = |id: &str| (id == "a").then_some(&big);
        let input = json!({"expr": vec!["{{a.count}}"; 50_000].join("+")});
        let limits = ResolveBudget {
            max_input_bytes: 1 << 20,
            max_references: 50_000,
        };
        let started = Instant::now();
        let got = super::resolve(&input, &output_of, limits).unwrap();
        assert_eq!(got["expr"].as_str().unwrap().len(), 50_000 * 2 - 1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn long_names_are_clipped_in_errors() {
        let name = "n".repeat(100_000);
        let err = resolve(&json!(format!("{{{{{name}}}}}")), &outputs).unwrap_err();
        assert!(
            err.to_string().len() < 400,
            "{} bytes",
            err.to_string().len()
        );
        let err = references_in(&format!("{{{{a b {name}}}}}")).unwrap_err();
        assert!(
            err.to_string().len() < 400,
            "{} bytes",
            err.to_string().len()
        );
    }

    /// JSON values whose text needs escaping: quotes, backslashes, control
    /// characters, non-ASCII.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "(\\PC|[\"\\\\\n\t\u{1}\u{7f}é])*".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-c\"\\\\]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Inputs mixing literal text (some of it needing escapes) with
    /// references to `a`, `a.k` and `b`, whole or spliced.
    fn input_value() -> impl Strategy<Value = Value> {
        let piece = prop_oneof![
            "[a-z \"\\\\\n]{0,4}",
            Just("{{a}}".to_owned()),
            Just("{{a.k}}".to_owned()),
            Just("{{b}}".to_owned()),
        ];
        let text = prop::collection::vec(piece, 0..5).prop_map(|p| Value::from(p.concat()));
        let leaf = prop_oneof![text, any::<i32>().prop_map(Value::from), Just(Value::Null)];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-c\"]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The size computed before building is the size of what is built,
        /// to the byte: the input is refused exactly when it would be over.
        #[test]
        fn computed_size_is_the_built_size(
            k in json_value(),
            b in json_value(),
            input in input_value(),
            limit in 0usize..600,
        ) {
            let a = json!({"k": k});
            let output_of = |id: &str| match id {
                "a" => Some(&a),
                "b" => Some(&b),
                _ => None,
            };
            let unlimited = ResolveBudget { max_input_bytes: usize::MAX - 1, max_references: usize::MAX };
            let built = super::resolve(&input, &output_of, unlimited).unwrap();
            let size = serde_json::to_string(&built).unwrap().len();
            let limited = ResolveBudget { max_input_bytes: limit, max_references: usize::MAX };
            match super::resolve(&input, &output_of, limited) {
                Ok(value) => {
                    prop_assert!(size <= limit);
                    prop_assert_eq!(value, built);
                }
                Err(ReferenceError::TooLarge { size: computed, exact, .. }) => {
                    prop_assert!(size > limit);
                    if exact {
                        prop_assert_eq!(computed, size);
                    } else {
                        prop_assert!(computed > limit && computed <= size);
                    }
                }
                Err(other) => prop_assert!(false, "{}", other),
            }
        }

        #[test]
        fn text_without_braces_is_unchanged(s in "[^{}]{0,64}") {
            prop_assert_eq!(resolve(&json!(s.clone()), &outputs).unwrap(), json!(s));
        }

        #[test]
        fn interpolation_splices_number_text(prefix in "[a-z ]{1,8}", suffix in "[a-z ]{0,8}") {
            let got = resolve(&json!(format!("{prefix}{{{{b.words}}}}{suffix}")), &outputs).unwrap();
            prop_assert_eq!(got, json!(format!("{prefix}6{suffix}")));
        }

        #[test]
        fn splitting_never_panics(s in ".{0,64}") {
            let _ = references_in(&s);
        }
    }
}
