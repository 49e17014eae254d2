//! When two results count as the same answer.
//!
//! Redundant executions of one subtask rarely produce byte-identical JSON:
//! object keys come back in another order, and one agent computes
//! `0.30000000000000004` where another prints `0.3`. Equivalence compares the
//! values as data, with a tolerance for numbers, so such results vote
//! together.

use serde_json::{Number, Value};

/// Whether `a` and `b` are the same result.
///
/// Objects must have the same keys (in any order) with equivalent values,
/// arrays the same length with equivalent elements. Two numbers match when
/// `|a - b| <= tolerance * max(1, |a|, |b|)`: relative for large magnitudes,
/// absolute near zero, where a relative test would demand exact equality.
/// Integers are compared exactly before any conversion, so ids and counts
/// beyond 2^53 are not merged by rounding. Other scalars must be equal, and
/// a number never equals a string that spells it.
///
/// A negative or NaN tolerance is taken as zero: exact comparison.
pub fn equivalent(a: &Value, b: &Value, tolerance: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => numbers_equivalent(x, y, tolerance),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| equivalent(x, y, tolerance))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(key, x)| ys.get(key).is_some_and(|y| equivalent(x, y, tolerance)))
        }
        _ => a == b,
    }
}

/// Groups `values` into clusters of equivalent results.
///
/// Each cluster is a list of indices into `values`, in input order; its
/// first index is its representative. A value joins the first cluster (in
/// order of creation) whose representative it is equivalent to, or starts a
/// new one. Clusters are ordered by their representative.
///
/// Comparing with the representative only, rather than with every member,
/// keeps the grouping deterministic although a tolerance makes equivalence
/// non-transitive (`1.0 ≈ 1.0 + t ≈ 1.0 + 2t`): a chain of near values does
/// not drift arbitrarily far from the value that founded its cluster.
pub fn clusters<'a, I>(values: I, tolerance: f64) -> Vec<Vec<usize>>
where
    I: IntoIterator<Item = &'a Value>,
{
    let mut representatives: Vec<&Value> = Vec::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        match representatives
            .iter()
            .position(|rep| equivalent(rep, value, tolerance))
        {
            Some(cluster) => groups[cluster].push(index),
            None => {
                representatives.push(value);
                groups.push(vec![index]);
            }
        }
    }
    groups
}

fn numbers_equivalent(x: &Number, y: &Number, tolerance: f64) -> bool {
    let tolerance = if tolerance > 0.0 { tolerance } else { 0.0 };
    if let (Some(a), Some(b)) = (as_integer(x), as_integer(y)) {
        if a == b {
            return true;
        }
        // The difference of two i128s built from 64-bit integers is exact;
        // only the comparison with the scaled tolerance is in floating point.
        let diff = (a - b).unsigned_abs() as f64;
        return diff <= tolerance * scale(a as f64, b as f64);
    }
    match (x.as_f64(), y.as_f64()) {
        (Some(a), Some(b)) => a == b || (a - b).abs() <= tolerance * scale(a, b),
        _ => false,
    }
}

fn as_integer(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

fn scale(a: f64, b: f64) -> f64 {
    1f64.max(a.abs()).max(b.abs())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const TOL: f64 = 1e-9;

    #[test]
    fn objects_ignore_key_order_and_need_the_same_keys() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":[1,2]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":[1,2],"a":1}"#).unwrap();
        assert!(equivalent(&a, &b, TOL));
        assert!(!equivalent(&a, &json!({"a": 1}), TOL));
        assert!(!equivalent(&json!({"a": 1}), &a, TOL));
        assert!(!equivalent(&json!({"a": 1}), &json!({"b": 1}), TOL));
    }

    #[test]
    fn arrays_compare_in_order() {
        assert!(equivalent(&json!([1, 2]), &json!([1, 2]), TOL));
        assert!(!equivalent(&json!([1, 2]), &json!([2, 1]), TOL));
        assert!(!equivalent(&json!([1, 2]), &json!([1, 2, 3]), TOL));
    }

    #[test]
    fn numbers_use_relative_and_absolute_tolerance() {
        assert!(equivalent(&json!(0.1 + 0.2), &json!(0.3), TOL));
        assert!(equivalent(&json!(5), &json!(5.0), TOL));
        assert!(equivalent(&json!(1e12), &json!(1e12 + 100.0), TOL));
        assert!(!equivalent(&json!(1e12), &json!(1e12 + 10_000.0), TOL));
        assert!(equivalent(&json!(0.0), &json!(1e-10), TOL));
        assert!(!equivalent(&json!(0.0), &json!(1e-6), TOL));
        assert!(!equivalent(&json!(1.0), &json!(1.1), 0.05));
        assert!(equivalent(&json!(1.0), &json!(1.04), 0.05));
    }

    #[test]
    fn zero_or_bad_tolerance_is_exact() {
        assert!(equivalent(&json!(0.5), &json!(0.5), 0.0));
        assert!(equivalent(&json!(0.5), &json!(0.5), -1.0));
        assert!(equivalent(&json!(0.5), &json!(0.5), f64::NAN));
        assert!(!equivalent(&json!(0.1 + 0.2), &json!(0.3), 0.0));
        assert!(!equivalent(&json!(1.0), &json!(1.5), f64::NAN));
    }

    #[test]
    fn large_integers_are_compared_exactly() {
        let big = 1u64 << 60;
        assert!(!equivalent(&json!(big), &json!(big + 1), 0.0));
        assert!(equivalent(&json!(big), &json!(big + 1), TOL));
        assert!(!equivalent(&json!(u64::MAX), &json!(-1), TOL));
    }

    #[test]
    fn scalars_of_different_kinds_differ() {
        assert!(!equivalent(&json!("1"), &json!(1), TOL));
        assert!(!equivalent(&json!(null), &json!(false), TOL));
        assert!(!equivalent(&json!(0), &json!(false), TOL));
        assert!(equivalent(&json!("x"), &json!("x"), TOL));
        assert!(equivalent(&json!(null), &json!(null), TOL));
    }

    #[test]
    fn clusters_follow_input_order() {
        let values = [json!(2), json!(1), json!(2.0), json!("2"), json!(1)];
        assert_eq!(
            clusters(&values, TOL),
            vec![vec![0, 2], vec![1, 4], vec![3]]
        );
        assert!(clusters(&[], TOL).is_empty());
    }

    #[test]
    fn a_chain_of_near_values_stays_with_its_founder() {
        let values = [json!(1.0), json!(1.04), json!(1.08)];
        assert_eq!(clusters(&values, 0.05), vec![vec![0, 1], vec![2]]);
    }

    proptest! {
        #[test]
        fn equivalence_is_reflexive_and_symmetric(
            a in -1e6f64..1e6, b in -1e6f64..1e6, tol in 0.0f64..0.1,
        ) {
            let (a, b) = (json!({"v": [a]}), json!({"v": [b]}));
            prop_assert!(equivalent(&a, &a, tol));
            prop_assert_eq!(equivalent(&a, &b, tol), equivalent(&b, &a, tol));
        }

        #[test]
        fn numbers_within_tolerance_form_one_cluster(
            base in -1e9f64..1e9,
            offsets in proptest::collection::vec(-1.0f64..1.0, 1..8),
        ) {
            let tol = 1e-6;
            // Each value is within 0.4 tolerance of `base`, the founder.
            let values: Vec<Value> = std::iter::once(base)
                .chain(offsets.iter().map(|o| base + o * 0.4 * tol * base.abs().max(1.0)))
                .map(|v| json!({"value": v}))
                .collect();
            prop_assert_eq!(clusters(&values, tol).len(), 1);
        }

        #[test]
        fn every_index_lands_in_exactly_one_cluster(
            values in proptest::collection::vec(0u8..4, 0..12),
        ) {
            let values: Vec<Value> = values.into_iter().map(|v| json!(v)).collect();
            let mut seen: Vec<usize> = clusters(&values, TOL).into_iter().flatten().collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..values.len()).collect::<Vec<_>>());
        }
    }
}
