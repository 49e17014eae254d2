//! Class 13 of the hostile inputs, and references at submit: keys given
//! twice are refused in either format, error messages stay under
//! `MAX_ERROR_BYTES` whatever the document quotes into them, and an input
//! with too many references is refused before it is accepted.

use proptest::prelude::{prop_assert, proptest};

use super::*;
use crate::task::message::MAX_ERROR_BYTES;

fn offers_all(_: &str) -> bool {
    true
}

fn none() -> Vec<String> {
    Vec::new()
}

fn check(document: &str) -> Result<TaskFile, TaskFileError> {
    parse_and_validate(document, &TaskLimits::default(), &offers_all, &none)
}

#[test]
fn a_key_given_twice_in_json_input_is_refused_by_path_and_line() {
    let err = check(
        "{\"name\":\"t\",\"tasks\":[{\"id\":\"a\",\"capability\":\"c\",\n \"input\":{\"expr\":\"1\",\n \"expr\":\"2\"}}]}",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "duplicate key 'expr' in tasks[0].input at line 3 column 7: a key may be given once"
    );
    // Nested, and in an array.
    let err = check(r#"{"name":"t","tasks":[{"id":"a","capability":"c","input":{"x":[{"k":1},{"k":1,"k":2}]}}]}"#)
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("duplicate key 'k' in tasks[0].input.x[1] "),
        "{err}"
    );
    // The task's own fields too.
    let err = check(r#"{"name":"t","name":"u","tasks":[]}"#).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("duplicate key 'name' in the top level"),
        "{err}"
    );
}

#[test]
fn a_key_given_twice_in_yaml_input_is_refused_by_line() {
    let err = check(
        "name: t\ntasks:\n  - id: a\n    capability: c\n    input:\n      expr: \"1\"\n      expr: \"2\"\n",
    )
    .unwrap_err();
    assert!(
        matches!(&err, TaskFileError::DuplicateKey { key, at } if key == "expr" && at.starts_with("at line 7")),
        "{err:?}"
    );
    assert!(err.to_string().contains("duplicate key 'expr'"), "{err}");
}

#[test]
fn equal_keys_in_different_mappings_are_fine() {
    check(
        r#"{"name":"t","tasks":[{"id":"a","capability":"c","input":{"k":{"k":1},"j":{"k":2}}}]}"#,
    )
    .unwrap();
}

#[test]
fn a_thousand_task_cycle_is_named_by_its_first_ids() {
    let n = 1024;
    let tasks: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"task-number-{i:04}","capability":"c","depends_on":["task-number-{:04}"]}}"#,
                (i + 1) % n
            )
        })
        .collect();
    let document = format!(r#"{{"name":"t","tasks":[{}]}}"#, tasks.join(","));
    let err = check(&document).unwrap_err().to_string();
    assert!(err.len() < 300, "{} bytes: {err}", err.len());
    assert!(
        err.starts_with("dependency cycle: 1024 tasks, task-number-"),
        "{err}"
    );
    assert!(err.ends_with("… 1020 more"), "{err}");
}

#[test]
fn quoted_names_are_clipped() {
    let long = "x".repeat(200_000);
    for document in [
        format!(r#"{{"name":"t","tasks":[{{"id":"{long}","capability":"c"}}]}}"#),
        format!(
            r#"{{"name":"t","tasks":[{{"id":"a","capability":"c","depends_on":["{long}"]}}]}}"#
        ),
        format!(
            r#"{{"name":"t","tasks":[{{"id":"a","capability":"c","input":{{"x":"{{{{{long}.y}}}}"}}}}]}}"#
        ),
        format!(
            r#"{{"name":"t","tasks":[{{"id":"a","capability":"c","input":{{"{long}":"{{{{zz}}}}"}}}}]}}"#
        ),
        format!(r#"{{"name":"t","tasks":[{{"id":"a","capability":"c","{long}":1}}]}}"#),
        format!(
            r#"{{"name":"t","tasks":[{{"id":"a","capability":"c","input":{{"{long}":1,"{long}":2}}}}]}}"#
        ),
        format!(
            "name: t\ntasks:\n  - id: a\n    capability: c\n    input: {{ {long}: 1, {long}: 2 }}\n"
        ),
    ] {
        let err = check(&document).unwrap_err().to_string();
        assert!(
            err.len() <= MAX_ERROR_BYTES,
            "{} bytes: {}",
            err.len(),
            &err[..200]
        );
    }
    let err = parse_and_validate(
        &format!(r#"{{"name":"t","tasks":[{{"id":"a","capability":"{long}"}}]}}"#),
        &TaskLimits::default(),
        &|_| false,
        &|| (0..1000).map(|i| format!("capability-{i}")).collect(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.len() <= MAX_ERROR_BYTES, "{} bytes", err.len());
    assert!(err.contains("capability-0, capability-1"), "{err}");
    assert!(err.contains("… 995 more"), "{err}");
}

#[test]
fn too_many_references_are_refused_at_submit() {
    let limits = TaskLimits::default();
    let expr = vec!["{{a.n}}"; limits.max_input_references + 1].join("+");
    let document = format!(
        r#"{{"name":"t","tasks":[{{"id":"a","capability":"c"}},{{"id":"b","capability":"c","depends_on":["a"],"input":{{"expr":"{expr}"}}}}]}}"#
    );
    let err = check(&document).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "tasks[1].input: holds {} references, over the limit max_input_references = {}",
            limits.max_input_references + 1,
            limits.max_input_references
        )
    );
    let fits = vec!["{{a.n}}"; limits.max_input_references].join("+");
    check(&document.replace(&expr, &fits)).unwrap();
}

proptest! {
    /// Whatever the document, its refusal stays under the bound.
    #[test]
    fn every_refusal_is_bounded(
        id in "[a-z{}. ]{0,3000}",
        key in "[a-z\"]{0,3000}",
        capability in "[a-z]{0,3000}",
    ) {
        let document = serde_json::json!({
            "name": "t",
            "tasks": [{"id": id, "capability": capability,
                       "input": {key.clone(): format!("{{{{{id}}}}}")},
                       "depends_on": [key]}],
        })
        .to_string();
        if let Err(err) = parse_and_validate(&document, &TaskLimits::default(), &|_| false, &|| vec![capability.clone(); 50]) {
            prop_assert!(err.to_string().len() <= MAX_ERROR_BYTES, "{} bytes", err.to_string().len());
        }
    }
}
