use proptest::prelude::{any, prop_assert, prop_assume, proptest};
use proptest::strategy::Strategy as _;

use super::*;
use crate::task::file::SubtaskSpec;

const AVERAGE: &str = r#"
name: average-word-count
pattern: coordinator_worker
strategy: parallel
tasks:
  - id: a
    capability: text.word_count
    input: { text: "the quick brown fox" }
  - id: b
    capability: text.word_count
    input: { text: "jumps over the lazy dog again" }
  - id: avg
    capability: math.eval
    input: { expr: "({{a.words}} + {{b.words}}) / 2" }
    depends_on: [a, b]
"#;

fn offers_all(_: &str) -> bool {
    true
}

fn none() -> Vec<String> {
    Vec::new()
}

fn check(document: &str) -> Result<TaskFile, TaskFileError> {
    parse_and_validate(document, &TaskLimits::default(), &offers_all, &none)
}

fn message(document: &str) -> String {
    check(document).unwrap_err().to_string()
}

#[test]
fn valid_yaml_and_json_parse_alike() {
    let yaml = check(AVERAGE).unwrap();
    let json = serde_json::to_string(&yaml).unwrap();
    assert_eq!(check(&json).unwrap(), yaml);
    assert_eq!(yaml.tasks[2].depends_on, vec!["a", "b"]);
}

#[test]
fn sequential_chains_each_task_to_the_previous() {
    let doc = r#"{"name":"s","strategy":"sequential","tasks":[
        {"id":"x","capability":"c"},{"id":"y","capability":"c"},{"id":"z","capability":"c"}]}"#;
    let file = check(doc).unwrap();
    assert!(file.tasks[0].depends_on.is_empty());
    assert_eq!(file.tasks[1].depends_on, vec!["x"]);
    assert_eq!(file.tasks[2].depends_on, vec!["y"]);
}

#[test]
fn unknown_field_is_named() {
    let err = message("name: t\ntasks:\n  - id: a\n    capability: c\n    inptu: {}\n");
    assert!(err.contains("unknown field `inptu`"), "{err}");
}

#[test]
fn unknown_dependency_is_named() {
    let err =
        message(r#"{"name":"t","tasks":[{"id":"a","capability":"c","depends_on":["ghost"]}]}"#);
    assert_eq!(err, "tasks[0].depends_on: unknown task id 'ghost'");
}

#[test]
fn cycle_is_reported_by_name() {
    let err = message(
        r#"{"name":"t","tasks":[
            {"id":"a","capability":"c","depends_on":["c"]},
            {"id":"b","capability":"c","depends_on":["a"]},
            {"id":"c","capability":"c","depends_on":["b"]}]}"#,
    );
    assert!(err.starts_with("dependency cycle: "), "{err}");
    for id in ["a", "b", "c"] {
        assert!(err.contains(id), "{err}");
    }
}

#[test]
fn self_dependency_is_refused() {
    let err = message(r#"{"name":"t","tasks":[{"id":"a","capability":"c","depends_on":["a"]}]}"#);
    assert_eq!(err, "tasks[0].depends_on: task 'a' depends on itself");
}

#[test]
fn reference_to_non_dependency_names_field() {
    let err = message(
        r#"{"name":"t","tasks":[
            {"id":"a","capability":"c"},
            {"id":"b","capability":"c","input":{"expr":"{{a.words}} + 1"}}]}"#,
    );
    assert_eq!(
        err,
        "tasks[1].input.expr: reference {{a.words}} names task 'a', which is not a dependency of 'b' (add it to depends_on)"
    );
}

#[test]
fn reference_to_unknown_task_is_named() {
    let err =
        message(r#"{"name":"t","tasks":[{"id":"a","capability":"c","input":{"x":["{{zz.v}}"]}}]}"#);
    assert_eq!(
        err,
        "tasks[0].input.x[0]: reference {{zz.v}} names unknown task 'zz'"
    );
}

#[test]
fn transitive_dependency_may_be_referenced() {
    check(
        r#"{"name":"t","tasks":[
            {"id":"a","capability":"c"},
            {"id":"b","capability":"c","depends_on":["a"]},
            {"id":"d","capability":"c","depends_on":["b"],"input":{"v":"{{a.x}}"}}]}"#,
    )
    .unwrap();
}

#[test]
fn unavailable_capability_is_a_precondition_error() {
    let offers = |c: &str| c == "math.eval";
    let available = || vec!["math.eval".to_owned()];
    let err = parse_and_validate(AVERAGE, &TaskLimits::default(), &offers, &available).unwrap_err();
    assert!(err.is_precondition());
    assert_eq!(
        err.to_string(),
        "tasks[0].capability: no live worker offers capability 'text.word_count' (available: math.eval)"
    );
}

#[test]
fn oversize_document_is_refused_before_parsing() {
    let limits = TaskLimits {
        max_document_bytes: 100,
        ..TaskLimits::default()
    };
    let err = parse_and_validate(AVERAGE, &limits, &offers_all, &none).unwrap_err();
    assert_eq!(
        err,
        TaskFileError::TooLarge {
            size: AVERAGE.len(),
            limit: 100
        }
    );
}

#[test]
fn duplicate_and_malformed_ids_are_refused() {
    let err = message(
        r#"{"name":"t","tasks":[{"id":"a","capability":"c"},{"id":"a","capability":"c"}]}"#,
    );
    assert_eq!(
        err,
        "tasks[1].id: duplicate id 'a' (first used by tasks[0])"
    );
    let err = message(r#"{"name":"t","tasks":[{"id":"a b","capability":"c"}]}"#);
    assert!(
        err.starts_with("tasks[0].id: 'a b' is not a valid id"),
        "{err}"
    );
}

#[test]
fn unsupported_pattern_is_a_precondition_error() {
    let err = check(r#"{"name":"t","pattern":"workflow","tasks":[{"id":"a","capability":"c"}]}"#)
        .unwrap_err();
    assert!(err.is_precondition());
    assert!(
        err.to_string().starts_with("pattern: pattern 'workflow'"),
        "{err}"
    );
}

#[test]
fn depth_and_count_limits_apply() {
    let limits = TaskLimits {
        max_depth: 2,
        ..TaskLimits::default()
    };
    let doc = r#"{"name":"s","strategy":"sequential","tasks":[
        {"id":"x","capability":"c"},{"id":"y","capability":"c"},{"id":"z","capability":"c"}]}"#;
    let err = parse_and_validate(doc, &limits, &offers_all, &none).unwrap_err();
    assert!(
        err.to_string().contains("dependency chain of 3 tasks"),
        "{err}"
    );
    let limits = TaskLimits {
        max_subtasks: 2,
        ..TaskLimits::default()
    };
    let err = parse_and_validate(doc, &limits, &offers_all, &none).unwrap_err();
    assert_eq!(err.to_string(), "tasks: lists 3 tasks, over the limit of 2");
}

/// A random DAG: each task depends on a subset of the tasks before it.
fn dag() -> impl proptest::strategy::Strategy<Value = Vec<Vec<usize>>> {
    (1usize..40).prop_flat_map(|n| {
        (0..n)
            .map(|i| proptest::collection::vec(0..i.max(1), 0..=i.min(4)))
            .collect::<Vec<_>>()
            .prop_map(|deps| {
                deps.into_iter()
                    .enumerate()
                    .map(|(i, ds)| ds.into_iter().filter(|&d| d < i).collect())
                    .collect()
            })
    })
}

fn file_from(deps: &[Vec<usize>]) -> TaskFile {
    TaskFile {
        name: "p".into(),
        pattern: Pattern::CoordinatorWorker,
        strategy: crate::task::Strategy::Parallel,
        timeout_ms: None,
        redundancy: None,
        consensus: None,
        tasks: deps
            .iter()
            .enumerate()
            .map(|(i, ds)| SubtaskSpec {
                id: format!("t{i}"),
                capability: "c".into(),
                input: serde_json::json!({}),
                depends_on: ds.iter().map(|d| format!("t{d}")).collect(),
                timeout_ms: None,
            })
            .collect(),
    }
}

proptest! {
    #[test]
    fn every_dag_is_accepted(deps in dag()) {
        let file = file_from(&deps);
        prop_assert!(validate(file, &TaskLimits::default(), &offers_all, &none).is_ok());
    }

    #[test]
    fn a_back_edge_is_always_a_cycle(deps in dag(), pick in any::<proptest::sample::Index>()) {
        // Any task that has a dependency gets its descendant chain closed.
        let with_deps: Vec<usize> = (0..deps.len()).filter(|&i| !deps[i].is_empty()).collect();
        prop_assume!(!with_deps.is_empty());
        let i = with_deps[pick.index(with_deps.len())];
        let d = deps[i][0];
        let mut file = file_from(&deps);
        file.tasks[d].depends_on.push(format!("t{i}"));
        let err = validate(file, &TaskLimits::default(), &offers_all, &none).unwrap_err();
        prop_assert!(matches!(err, TaskFileError::Cycle(ref ids) if ids.first() == ids.last() && ids.len() >= 3), "{err}");
    }

    #[test]
    fn parsing_garbage_never_panics(s in ".{0,200}") {
        let _ = check(&s);
    }
}

#[test]
fn peer_consensus_tasks_get_defaults_and_bad_collaboration_fields_are_refused() {
    let check = |doc: &str| parse_and_validate(doc, &TaskLimits::default(), &|_| true, &Vec::new);
    let task = r#""tasks":[{"id":"x","capability":"math.eval","input":{"expr":"1"}}]"#;
    let file = check(&format!(
        r#"{{"name":"t","pattern":"peer_consensus",{task}}}"#
    ))
    .unwrap();
    assert_eq!(file.redundancy, Some(3));
    assert_eq!(file.consensus.as_deref(), Some("hybrid"));
    let error = check(&format!(r#"{{"name":"t","redundancy":3,{task}}}"#)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "redundancy: applies to pattern peer_consensus only (this task's pattern is coordinator_worker)"
    );
    let error = check(&format!(
        r#"{{"name":"t","pattern":"peer_consensus","redundancy":10,{task}}}"#
    ))
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "redundancy: must be between 1 and 9 peers, got 10"
    );
    let error = check(&format!(
        r#"{{"name":"t","pattern":"peer_consensus","consensus":"dice",{task}}}"#
    ))
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("consensus: unknown algorithm 'dice'")
    );
}
