//! The JSONPath Compliance Test Suite (`tests/jsonpath-cts/cts.json`, see
//! the README beside it) run against `json_query`: every valid selector
//! must give the suite's result (or one of its results, where RFC 9535
//! leaves the order open), and every invalid selector must be refused as
//! invalid, not stopped by a limit.

use std::path::PathBuf;

use agentmesh_core::builtin::json_query::{self, JsonQueryError};
use serde_json::Value;

fn suite() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/jsonpath-cts/cts.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut suite: Value = serde_json::from_str(&text).expect("cts.json is JSON");
    match suite["tests"].take() {
        Value::Array(cases) => cases,
        other => panic!("cts.json has no tests array: {other}"),
    }
}

/// Runs one case; `Err` says why it failed.
fn run(case: &Value) -> Result<(), String> {
    let selector = case["selector"].as_str().ok_or("no selector")?;
    let document = case.get("document").unwrap_or(&Value::Null);
    let outcome = json_query::query(document, selector);
    if case["invalid_selector"] == Value::Bool(true) {
        return match outcome {
            Err(error) if !error.is_limit() => Ok(()),
            Err(error) => Err(format!("refused by a limit, not as invalid: {error}")),
            Ok(got) => Err(format!("accepted, returned {}", Value::Array(got))),
        };
    }
    let got = Value::Array(outcome.map_err(|e: JsonQueryError| format!("refused: {e}"))?);
    let expected: Vec<&Value> = match (case.get("result"), case.get("results")) {
        (Some(result), _) => vec![result],
        (None, Some(Value::Array(results))) => results.iter().collect(),
        _ => return Err("case has neither result nor results".into()),
    };
    if expected.contains(&&got) {
        Ok(())
    } else {
        Err(format!(
            "returned {got}, expected {}",
            expected
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        ))
    }
}

#[test]
fn every_compliance_case_passes() {
    let cases = suite();
    assert!(cases.len() > 700, "suite has only {} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            run(case).err().map(|why| {
                format!(
                    "{} ({}): {why}",
                    case["name"].as_str().unwrap_or("?"),
                    case["selector"]
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    println!("{} of {} compliance cases pass", cases.len(), cases.len());
}
