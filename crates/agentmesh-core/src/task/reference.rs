//! `{{id.field}}` references from a subtask's input to the JSON output of an
//! earlier subtask.
//!
//! A string that is exactly one reference is replaced by the referenced
//! value with its JSON type intact (`"{{a.words}}"` becomes the number 4);
//! a reference inside a longer string is interpolated as text
//! (`"({{a.words}} + 1)"` becomes `"(4 + 1)"`).

use serde_json::Value;
use thiserror::Error;

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
    /// The reference as written, for error messages.
    pub fn display(&self) -> String {
        if self.path.is_empty() {
            format!("{{{{{}}}}}", self.task)
        } else {
            format!("{{{{{}.{}}}}}", self.task, self.path.join("."))
        }
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
}

/// Looks up the JSON output of a subtask by id.
pub type OutputLookup<'a> = dyn Fn(&str) -> Option<Value> + 'a;

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
        text: format!("{{{{{inner}}}}}"),
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

/// Replaces every reference in `input` with values from earlier outputs.
pub fn resolve(input: &Value, output_of: &OutputLookup<'_>) -> Result<Value, ReferenceError> {
    Ok(match input {
        Value::String(s) if s.contains("{{") => resolve_string(s, output_of)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| resolve(item, output_of))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), resolve(v, output_of)?)))
                .collect::<Result<_, ReferenceError>>()?,
        ),
        other => other.clone(),
    })
}

fn resolve_string(text: &str, output_of: &OutputLookup<'_>) -> Result<Value, ReferenceError> {
    let pieces = split(text)?;
    if let [Piece::Ref(reference)] = pieces.as_slice() {
        return lookup(reference, output_of);
    }
    let mut out = String::with_capacity(text.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(reference) => match lookup(&reference, output_of)? {
                Value::String(s) => out.push_str(&s),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

fn lookup(reference: &Reference, output_of: &OutputLookup<'_>) -> Result<Value, ReferenceError> {
    let mut current = output_of(&reference.task).ok_or_else(|| ReferenceError::MissingOutput {
        reference: reference.display(),
        task: reference.task.clone(),
    })?;
    for field in &reference.path {
        let next = match &current {
            Value::Object(map) => map.get(field).cloned(),
            Value::Array(items) => field
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i).cloned()),
            _ => None,
        };
        current = next.ok_or_else(|| ReferenceError::MissingField {
            reference: reference.display(),
            task: reference.task.clone(),
            field: field.clone(),
        })?;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn outputs(task: &str) -> Option<Value> {
        match task {
            "a" => Some(json!({"words": 4, "name": "fox", "list": [10, 20]})),
            "b" => Some(json!({"words": 6})),
            _ => None,
        }
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

    proptest! {
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
