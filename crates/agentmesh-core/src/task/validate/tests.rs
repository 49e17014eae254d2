use crate::task::Pattern;
use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_assume, proptest};

use super::*;
use crate::task::file::{ObjectiveSpec, SubtaskSpec};

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

fn dag() -> impl proptest::strategy::Strategy<Value = Vec<Vec<usize>>> {
    crate::test_support::dag(40, 4)
}

fn file_from(deps: &[Vec<usize>]) -> TaskFile {
    TaskFile::of_tasks(
        "p",
        crate::task::Strategy::Parallel,
        deps.iter()
            .enumerate()
            .map(|(i, ds)| SubtaskSpec {
                id: format!("t{i}"),
                capability: "c".into(),
                input: serde_json::json!({}),
                depends_on: ds.iter().map(|d| format!("t{d}")).collect(),
                timeout_ms: None,
            })
            .collect(),
    )
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

const MARKET_STUDY: &str = include_str!("../../../../../examples/hierarchical-market-study.yaml");

/// A `hierarchical` task whose objectives are given as JSON text.
fn hierarchical(objectives: &str) -> String {
    format!(r#"{{"name":"h","pattern":"hierarchical","objectives":{objectives}}}"#)
}

#[test]
fn the_hierarchical_example_is_valid_and_keeps_tasks_per_objective() {
    let file = check(MARKET_STUDY).unwrap();
    assert_eq!(file.pattern, Pattern::Hierarchical);
    assert!(file.tasks.is_empty());
    let ids: Vec<&str> = file.objectives.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["demand", "cost"]);
    assert_eq!(file.objectives[1].tasks[2].depends_on, ["parts", "labour"]);
    let json = serde_json::to_string(&file).unwrap();
    assert!(!json.contains(r#""tasks":[]"#), "{json}");
    assert_eq!(check(&json).unwrap(), file);
}

#[test]
fn sequential_chains_within_each_objective_only() {
    let doc = r#"{"name":"h","pattern":"hierarchical","strategy":"sequential","objectives":[
        {"id":"o1","tasks":[{"id":"x","capability":"c"},{"id":"y","capability":"c"}]},
        {"id":"o2","tasks":[{"id":"z","capability":"c"},{"id":"x","capability":"c"}]}]}"#;
    let file = check(doc).unwrap();
    assert!(file.objectives[0].tasks[0].depends_on.is_empty());
    assert_eq!(file.objectives[0].tasks[1].depends_on, ["x"]);
    assert!(
        file.objectives[1].tasks[0].depends_on.is_empty(),
        "not chained to the previous objective"
    );
    assert_eq!(file.objectives[1].tasks[1].depends_on, ["z"]);
}

#[test]
fn hierarchical_needs_objectives_and_no_top_level_tasks() {
    assert_eq!(
        message(r#"{"name":"h","pattern":"hierarchical"}"#),
        "objectives: must list at least one objective with pattern hierarchical"
    );
    assert_eq!(
        message(
            r#"{"name":"h","pattern":"hierarchical","tasks":[{"id":"a","capability":"c"}],
                "objectives":[{"id":"o","tasks":[{"id":"a","capability":"c"}]}]}"#
        ),
        "tasks: must be empty with pattern hierarchical (list the operational tasks under objectives[].tasks)"
    );
    // An explicitly empty list is the same as none.
    check(
        r#"{"name":"h","pattern":"hierarchical","tasks":[],
            "objectives":[{"id":"o","tasks":[{"id":"a","capability":"c"}]}]}"#,
    )
    .unwrap();
    assert_eq!(
        message(&hierarchical(r#"[{"id":"o","tasks":[]}]"#)),
        "objectives[0].tasks: must list at least one task"
    );
}

#[test]
fn objectives_belong_to_the_hierarchical_pattern_only() {
    let objectives = r#""objectives":[{"id":"o","tasks":[{"id":"a","capability":"c"}]}]"#;
    for pattern in ["coordinator_worker", "peer_consensus"] {
        let err = message(&format!(
            r#"{{"name":"t","pattern":"{pattern}","tasks":[{{"id":"a","capability":"c"}}],{objectives}}}"#
        ));
        assert_eq!(
            err,
            format!(
                "objectives: applies to pattern hierarchical only (this task's pattern is {pattern})"
            )
        );
    }
    // Without objectives a flat task still needs tasks.
    assert_eq!(
        message(r#"{"name":"t"}"#),
        "tasks: must list at least one task"
    );
}

#[test]
fn objective_ids_are_checked_like_task_ids() {
    let task = r#"[{"id":"a","capability":"c"}]"#;
    assert_eq!(
        message(&hierarchical(&format!(
            r#"[{{"id":"o","tasks":{task}}},{{"id":"o","tasks":{task}}}]"#
        ))),
        "objectives[1].id: duplicate id 'o' (first used by objectives[0])"
    );
    let err = message(&hierarchical(&format!(
        r#"[{{"id":"o/1","tasks":{task}}}]"#
    )));
    assert!(
        err.starts_with("objectives[0].id: 'o/1' is not a valid id"),
        "{err}"
    );
    let err = message(&hierarchical(&format!(
        r#"[{{"id":"o","goal":"x","tasks":{task}}}]"#
    )));
    assert!(err.contains("unknown field `goal`"), "{err}");
}

#[test]
fn errors_inside_an_objective_name_its_path() {
    let ok = r#"{"id":"fine","tasks":[{"id":"a","capability":"c"}]}"#;
    let cases = [
        (
            r#"{"id":"o","tasks":[{"id":"a","capability":"c","depends_on":["ghost"]}]}"#,
            "objectives[1].tasks[0].depends_on: unknown task id 'ghost'",
        ),
        (
            r#"{"id":"o","tasks":[{"id":"a","capability":"c"},{"id":"a","capability":"c"}]}"#,
            "objectives[1].tasks[1].id: duplicate id 'a' (first used by objectives[1].tasks[0])",
        ),
        (
            r#"{"id":"o","tasks":[{"id":"a","capability":" "}]}"#,
            "objectives[1].tasks[0].capability: must not be empty",
        ),
        (
            r#"{"id":"o","tasks":[{"id":"a","capability":"c","timeout_ms":0}]}"#,
            "objectives[1].tasks[0].timeout_ms: must be greater than 0",
        ),
        (
            r#"{"id":"o","tasks":[{"id":"a","capability":"c"},
                {"id":"b","capability":"c","input":{"x":["{{a.v}}"]}}]}"#,
            "objectives[1].tasks[1].input.x[0]: reference {{a.v}} names task 'a', which is not a dependency of 'b' (add it to depends_on)",
        ),
        (
            r#"{"id":"o","tasks":[
                {"id":"a","capability":"c","depends_on":["b"]},
                {"id":"b","capability":"c","depends_on":["a"]}]}"#,
            "objectives[1].tasks: dependency cycle: 2 tasks, b -> a -> b",
        ),
    ];
    for (objective, expected) in cases {
        assert_eq!(
            message(&hierarchical(&format!("[{ok},{objective}]"))),
            expected
        );
    }
}

#[test]
fn a_reference_across_objectives_says_where_the_task_lives() {
    let err = message(&hierarchical(
        r#"[{"id":"demand","tasks":[{"id":"survey","capability":"c"}]},
            {"id":"cost","tasks":[{"id":"unit","capability":"c","input":{"expr":"{{survey.words}}"}}]}]"#,
    ));
    assert_eq!(
        err,
        "objectives[1].tasks[0].input.expr: reference {{survey.words}} names unknown task 'survey' (references stay within their objective; 'survey' is a task of objective 'demand')"
    );
    let err = message(&hierarchical(
        r#"[{"id":"demand","tasks":[{"id":"survey","capability":"c"}]},
            {"id":"cost","tasks":[{"id":"unit","capability":"c","depends_on":["survey"]}]}]"#,
    ));
    assert_eq!(
        err,
        "objectives[1].tasks[0].depends_on: unknown task id 'survey' (references stay within their objective; 'survey' is a task of objective 'demand')"
    );
}

#[test]
fn an_unoffered_operational_capability_is_named_by_path() {
    let offers = |c: &str| c != "math.eval";
    let available = || vec!["text.word_count".to_owned()];
    let err =
        parse_and_validate(MARKET_STUDY, &TaskLimits::default(), &offers, &available).unwrap_err();
    assert!(err.is_precondition());
    assert_eq!(
        err.to_string(),
        "objectives[0].tasks[1].capability: no live operational-level agent offers capability 'math.eval' (available: text.word_count)"
    );
}

#[test]
fn objective_and_operational_task_counts_are_limited() {
    let limits = TaskLimits {
        max_objectives: 1,
        ..TaskLimits::default()
    };
    let err = parse_and_validate(MARKET_STUDY, &limits, &offers_all, &none).unwrap_err();
    assert_eq!(
        err.to_string(),
        "objectives: lists 2 objectives, over the limit of 1"
    );
    // Two objectives of 2 and 3 tasks: 5 in all, though each is under 4.
    let limits = TaskLimits {
        max_subtasks: 4,
        ..TaskLimits::default()
    };
    let err = parse_and_validate(MARKET_STUDY, &limits, &offers_all, &none).unwrap_err();
    assert_eq!(
        err.to_string(),
        "objectives: list 5 operational tasks in all, over the limit of 4"
    );
    let limits = TaskLimits {
        max_depth: 1,
        ..TaskLimits::default()
    };
    let err = parse_and_validate(MARKET_STUDY, &limits, &offers_all, &none).unwrap_err();
    assert_eq!(
        err.to_string(),
        "objectives[0].tasks[1].depends_on: task 'score' ends a dependency chain of 2 tasks, over the limit of 1"
    );
}

#[test]
fn the_hierarchical_strategy_is_still_refused_and_points_to_the_pattern() {
    for pattern in ["coordinator_worker", "hierarchical"] {
        let err = check(&format!(
            r#"{{"name":"t","pattern":"{pattern}","strategy":"hierarchical","tasks":[{{"id":"a","capability":"c"}}]}}"#
        ))
        .unwrap_err();
        assert!(err.is_precondition());
        assert!(
            err.to_string()
                .starts_with("strategy: strategy 'hierarchical' is not available")
                && err
                    .to_string()
                    .contains("use pattern 'hierarchical' with objectives"),
            "{err}"
        );
    }
    for pattern in ["workflow", "auto"] {
        let err = check(&format!(
            r#"{{"name":"t","pattern":"{pattern}","tasks":[{{"id":"a","capability":"c"}}]}}"#
        ))
        .unwrap_err();
        assert!(err.is_precondition(), "{pattern}");
    }
}

#[test]
fn collaboration_fields_do_not_apply_to_hierarchical_tasks() {
    let err = message(
        r#"{"name":"h","pattern":"hierarchical","redundancy":3,
            "objectives":[{"id":"o","tasks":[{"id":"a","capability":"c"}]}]}"#,
    );
    assert_eq!(
        err,
        "redundancy: applies to pattern peer_consensus only (this task's pattern is hierarchical)"
    );
}

/// The flat file's tasks moved into one objective (after `fine`, so the
/// objective is `objectives[1]`).
fn as_objective(flat: &TaskFile) -> TaskFile {
    let mut file = flat.clone();
    file.pattern = Pattern::Hierarchical;
    file.objectives = vec![
        ObjectiveSpec {
            id: "fine".into(),
            description: None,
            tasks: vec![SubtaskSpec {
                id: "only".into(),
                capability: "c".into(),
                input: serde_json::json!({}),
                depends_on: Vec::new(),
                timeout_ms: None,
            }],
        },
        ObjectiveSpec {
            id: "o".into(),
            description: Some("the flat tasks".into()),
            tasks: std::mem::take(&mut file.tasks),
        },
    ];
    file
}

proptest! {
    /// The checks are shared: an objective's tasks pass or fail exactly as
    /// the same tasks of a flat file do, with the error at the objective's
    /// path.
    #[test]
    fn an_objective_is_checked_like_a_flat_task_list(
        deps in dag(),
        pick in any::<proptest::sample::Index>(),
        mutation in 0u8..4,
    ) {
        let mut flat = file_from(&deps);
        let n = flat.tasks.len();
        let i = pick.index(n);
        match mutation {
            // A back edge: a cycle when i has a dependency.
            0 => if let Some(&d) = deps[i].first() {
                flat.tasks[d].depends_on.push(format!("t{i}"));
            },
            1 => flat.tasks[i].depends_on.push("ghost".into()),
            2 => flat.tasks[i].input = serde_json::json!({"x": format!("{{{{t{}.v}}}}", n - 1)}),
            _ => {}
        }
        let limits = TaskLimits::default();
        let nested = validate(as_objective(&flat), &limits, &offers_all, &none);
        match validate(flat, &limits, &offers_all, &none) {
            Ok(flat) => {
                let nested = nested.unwrap();
                prop_assert_eq!(&nested.objectives[1].tasks, &flat.tasks);
            }
            Err(TaskFileError::Cycle(ids)) => prop_assert_eq!(
                nested.unwrap_err().to_string(),
                format!("objectives[1].tasks: dependency cycle: {}", describe_cycle(&ids))
            ),
            Err(flat) => prop_assert_eq!(
                nested.unwrap_err().to_string(),
                flat.to_string().replacen("tasks[", "objectives[1].tasks[", 2)
            ),
        }
    }
}
