//! How good a result looks on its own, before anyone agrees with it.
//!
//! Quality-based consensus weighs each result by such a score, so a
//! well-formed answer outweighs a malformed one even when fewer agents gave
//! it. The scorer is a trait because only the caller knows every
//! capability's output shape; [`DefaultQuality`] knows the built-in tools.

use serde_json::Value;

/// Scores one output of a capability.
pub trait QualityScorer {
    /// A score in `[0, 1]`; 0 means unusable. Scores outside the range (or
    /// NaN) are clamped by the consensus code, so a faulty scorer cannot
    /// give a result negative or unbounded weight.
    fn score(&self, capability: &str, output: &Value) -> f64;
}

/// Shape checks for the built-in tools, and a presence check for the rest.
///
/// | capability        | 1.0 when the output is                                   |
/// |-------------------|----------------------------------------------------------|
/// | `math.eval`       | an object whose `value` is a finite number               |
/// | `text.word_count` | an object whose `words` is a non-negative integer        |
/// | `json.query`      | an object whose `matches` is an array and whose `count`, if present, is its length |
/// | anything else     | not null and not an empty string, array or object         |
///
/// Everything else scores 0.0. Extra fields are allowed: they do not make
/// the answer wrong. `words` may be written `4.0`, because equivalence
/// already treats `4` and `4.0` as the same result and quality must not
/// split what equivalence joins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultQuality;

impl QualityScorer for DefaultQuality {
    fn score(&self, capability: &str, output: &Value) -> f64 {
        let well_formed = match capability {
            "math.eval" => output
                .get("value")
                .and_then(Value::as_f64)
                .is_some_and(f64::is_finite),
            "text.word_count" => output.get("words").is_some_and(is_count),
            "json.query" => is_query_result(output),
            _ => is_present(output),
        };
        if well_formed { 1.0 } else { 0.0 }
    }
}

fn is_count(value: &Value) -> bool {
    value.is_u64()
        || value
            .as_f64()
            .is_some_and(|n| n.is_finite() && n >= 0.0 && n.fract() == 0.0)
}

fn is_query_result(output: &Value) -> bool {
    let Some(matches) = output.get("matches").and_then(Value::as_array) else {
        return false;
    };
    match output.get("count") {
        None => true,
        Some(count) => count.as_u64() == u64::try_from(matches.len()).ok(),
    }
}

fn is_present(output: &Value) -> bool {
    match output {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn q(capability: &str, output: Value) -> f64 {
        DefaultQuality.score(capability, &output)
    }

    #[test]
    fn math_eval_needs_a_finite_numeric_value() {
        assert_eq!(q("math.eval", json!({"value": 5})), 1.0);
        assert_eq!(q("math.eval", json!({"value": -0.25, "note": "x"})), 1.0);
        assert_eq!(q("math.eval", json!({"value": "5"})), 0.0);
        assert_eq!(q("math.eval", json!({"value": null})), 0.0);
        assert_eq!(q("math.eval", json!(5)), 0.0);
        assert_eq!(q("math.eval", json!({})), 0.0);
    }

    #[test]
    fn word_count_needs_a_non_negative_integer() {
        assert_eq!(q("text.word_count", json!({"words": 4})), 1.0);
        assert_eq!(q("text.word_count", json!({"words": 0})), 1.0);
        assert_eq!(q("text.word_count", json!({"words": 4.0})), 1.0);
        assert_eq!(q("text.word_count", json!({"words": 4.5})), 0.0);
        assert_eq!(q("text.word_count", json!({"words": -1})), 0.0);
        assert_eq!(q("text.word_count", json!({"words": "4"})), 0.0);
        assert_eq!(q("text.word_count", json!([4])), 0.0);
    }

    #[test]
    fn json_query_needs_matches_consistent_with_count() {
        let ok = json!({"matches": [1, 2], "first": 1, "count": 2});
        assert_eq!(q("json.query", ok), 1.0);
        assert_eq!(q("json.query", json!({"matches": []})), 1.0);
        assert_eq!(q("json.query", json!({"matches": [1], "count": 2})), 0.0);
        assert_eq!(q("json.query", json!({"matches": 1})), 0.0);
    }

    #[test]
    fn other_capabilities_need_a_non_empty_output() {
        for present in [
            json!(0),
            json!(false),
            json!("x"),
            json!([null]),
            json!({"a": 1}),
        ] {
            assert_eq!(q("summarize", present), 1.0);
        }
        for empty in [json!(null), json!(""), json!([]), json!({})] {
            assert_eq!(q("summarize", empty), 0.0);
        }
    }
}
