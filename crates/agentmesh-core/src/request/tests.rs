use proptest::prelude::*;
use serde_json::json;

use super::builtin::{clauses, decompose};
use super::memory::{MemoryEntry, best_match, evictions, lexical_similarity};
use super::post::{Aggregation, aggregate, rule_score};
use super::*;
use crate::task::file::Strategy;
use crate::task::record::Applied;
use crate::task::record::TaskRecord;
use crate::task::validate::parse;
use crate::task::{Status, TaskLimits, validate};

const OFFERED: [&str; 4] = ["math.eval", "text.word_count", "json.query", "http.get"];

fn offered() -> Vec<String> {
    OFFERED.iter().map(|s| (*s).to_owned()).collect()
}

fn builtin(request: &str, strategy: Strategy) -> builtin::BuiltinDecomposition {
    decompose(request, strategy, &|c| OFFERED.contains(&c), &offered(), 16).unwrap()
}

/// The example's request file, decomposed and validated like a submit.
fn example_record() -> TaskRecord {
    let file = parse(
        include_str!("../../../../examples/request.yaml"),
        &TaskLimits::default(),
    )
    .unwrap();
    assert!(is_request(&file));
    let request = check_request_file(&file).unwrap();
    let made = builtin(request, file.strategy);
    let tasks = made.decomposition.task_file(&file);
    let valid = validate(
        tasks,
        &TaskLimits::default(),
        &|c| OFFERED.contains(&c),
        &offered,
    )
    .expect("the built-in decomposition passes the task-file validator");
    let mut record = TaskRecord::new(crate::TaskId::new("t"), valid, 0);
    let mut plan = RequestPlan::new(
        &file,
        made.decomposition,
        "builtin",
        &RequestOptions::default(),
    );
    plan.skipped = made.skipped;
    record.request = Some(Box::new(plan));
    record
}

#[test]
fn the_example_decomposes_into_a_dag_with_a_reference() {
    let record = example_record();
    let ids: Vec<&str> = record.subtasks.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["t1_word_count", "t2_eval", "t3_eval"]);
    assert_eq!(record.subtasks[1].depends_on, ["t1_word_count"]);
    assert_eq!(
        record.subtasks[1].input,
        json!({"expr": "{{t1_word_count.words}} * 3"})
    );
    assert!(
        record.subtasks[2].depends_on.is_empty(),
        "'also' is parallel"
    );
    assert_eq!(record.subtasks[2].input, json!({"expr": "2 ^ 10"}));
    let plan = record.request.as_ref().unwrap();
    assert_eq!(plan.decomposition.tasks[0].specialist, "text analyst");
    assert!(plan.skipped.is_empty());
}

fn run(record: &mut TaskRecord, outputs: &dyn Fn(&str) -> serde_json::Value) {
    let worker = crate::AgentId::new("w");
    for _ in 0..10 {
        let ready = record.ready();
        if ready.is_empty() {
            break;
        }
        for i in ready {
            let attempt = record.start_attempt(i, 1, worker.clone(), 1);
            let output = outputs(&record.subtasks[i].capability);
            let by = crate::task::AppliedResult {
                term: 1,
                attempt,
                worker: worker.clone(),
            };
            record.complete(i, by, output, 2);
        }
    }
}

#[test]
fn good_outputs_complete_with_one_score_and_the_merged_result() {
    let mut record = example_record();
    run(&mut record, &|c| match c {
        "math.eval" => json!({"value": 27}),
        _ => json!({"words": 9, "top_words": [{"word": "the", "count": 2}]}),
    });
    assert_eq!(record.status, Status::Completed);
    let plan = record.request.as_ref().unwrap();
    assert_eq!((plan.rounds, plan.scores.clone()), (0, vec![1.0]));
    let result = record.result().unwrap();
    assert_eq!(result["t2_eval"], json!({"value": 27}));
}

fn low_outputs(capability: &str) -> serde_json::Value {
    match capability {
        "math.eval" => json!({"value": 1}),
        _ => json!({"words": 3, "top_words": []}),
    }
}

/// What the record's next round is planned from.
fn review_of(record: &TaskRecord) -> Review {
    post::review(
        &record.subtasks,
        record.request.as_deref().unwrap(),
        &record.name,
    )
}

/// The record's built-in next round.
fn builtin_round(record: &TaskRecord) -> Refinement {
    let review = review_of(record);
    Refinement {
        round: review.round,
        provider: "builtin".into(),
        fallback: None,
        retried_because: None,
        tasks: refine::builtin(&review),
    }
}

#[test]
fn a_low_score_waits_for_a_round_and_runs_exactly_one() {
    let mut record = example_record();
    run(&mut record, &low_outputs);
    assert_eq!(record.status, Status::Running, "the round is awaited");
    assert_eq!(record.awaiting(), Some(Awaiting::Refinement { round: 1 }));
    let round = builtin_round(&record);
    assert_eq!(round.tasks.len(), 1, "only the weak task runs again");
    assert_eq!(round.tasks[0].id, "r1_t1_word_count");
    assert_eq!(round.tasks[0].replaces.as_deref(), Some("t1_word_count"));
    // A round of another number is stale, and changes nothing.
    let mut other = round.clone();
    other.round = 2;
    assert_eq!(record.refine(other, 3), Applied::Stale);
    assert_eq!(record.refine(round.clone(), 3), Applied::Changed);
    assert_eq!(record.refine(round, 3), Applied::Stale, "applied once");
    run(&mut record, &low_outputs);
    assert_eq!(record.status, Status::Completed);
    let plan = record.request.as_ref().unwrap();
    assert_eq!(plan.rounds, 1);
    assert_eq!(plan.scores.len(), 2);
    assert!(plan.scores[0] < DEFAULT_QUALITY_THRESHOLD);
    assert_eq!(record.subtasks.len(), 4);
    assert_eq!(record.subtasks[3].id, "r1_t1_word_count");
    assert_eq!(plan.refined["r1_t1_word_count"], "t1_word_count");
    assert_eq!(plan.refinements[0].provider, "builtin");
    assert_eq!(record.awaiting(), None);
}

#[test]
fn a_generated_round_adds_tasks_that_join_the_result_and_the_score() {
    let mut record = example_record();
    run(&mut record, &low_outputs);
    let review = review_of(&record);
    assert_eq!(review.tasks[0].score, 0.0);
    assert_eq!(review.tasks[1].score, 1.0);
    // The model names its task `t1_word_count`, which ran already, and
    // reads the output of a task that ran; a second task reads the first.
    let answer: Decomposition = serde_json::from_value(json!({"tasks": [
        {"id": "t1_word_count", "specialist": "s", "description": "recount", "capability": "text.word_count",
         "input": {"text": "three real words"}, "depends_on": []},
        {"id": "sum", "specialist": "s", "description": "add", "capability": "math.eval",
         "input": {"expr": "{{t1_word_count.words}} + {{t2_eval.value}}"}, "depends_on": ["t1_word_count", "t2_eval"]},
    ]}))
    .unwrap();
    let tasks = refine::place(answer, &review).unwrap();
    assert_eq!(tasks[0].id, "r1_t1_word_count");
    assert_eq!(tasks[1].depends_on, ["r1_t1_word_count", "t2_eval"]);
    assert_eq!(
        tasks[1].input,
        json!({"expr": "{{r1_t1_word_count.words}} + {{t2_eval.value}}"}),
        "a name of the round wins over a task that ran"
    );
    validate(
        refine::refined_file(&review, &tasks),
        &TaskLimits::default(),
        &|c| OFFERED.contains(&c),
        &offered,
    )
    .expect("the placed round validates with what ran");
    // The validator's index into what ran and the round is the round's.
    let cyclic = refine::place(
        serde_json::from_value(json!({"tasks": [
            {"id": "a", "specialist": "s", "description": "d", "capability": "math.eval",
             "input": {"expr": "1"}, "depends_on": ["a"]},
        ]}))
        .unwrap(),
        &review,
    )
    .unwrap();
    let error = validate(
        refine::refined_file(&review, &cyclic),
        &TaskLimits::default(),
        &|c| OFFERED.contains(&c),
        &offered,
    )
    .unwrap_err()
    .to_string();
    assert!(error.starts_with("tasks[3]"), "{error}");
    let error = refine::round_error(&error, &review);
    assert!(error.starts_with("tasks[0]"), "{error}");
    let round = Refinement {
        round: 1,
        provider: "model".into(),
        fallback: None,
        retried_because: None,
        tasks,
    };
    assert_eq!(record.refine(round, 3), Applied::Changed);
    run(&mut record, &|c| match c {
        "math.eval" => json!({"value": 4}),
        _ => json!({"words": 3, "top_words": [{"word": "three", "count": 1}]}),
    });
    assert_eq!(record.status, Status::Completed);
    let plan = record.request.as_ref().unwrap();
    assert_eq!(
        plan.decomposition.tasks.len(),
        5,
        "both tasks joined the plan"
    );
    assert_eq!(*plan.scores.last().unwrap(), 0.8, "4 of 5 tasks score 1");
    assert_eq!(record.result().unwrap()["r1_sum"], json!({"value": 4}));
}

#[test]
fn a_round_that_replaces_an_unplanned_task_or_repeats_an_id_is_refused() {
    let mut record = example_record();
    run(&mut record, &low_outputs);
    let review = review_of(&record);
    let task = |id: &str, replaces: Option<&str>| PlannedTask {
        id: id.into(),
        specialist: "s".into(),
        description: "d".into(),
        capability: "math.eval".into(),
        input: json!({"expr": "1"}),
        inputs: vec![],
        outputs: vec![],
        depends_on: vec![],
        replaces: replaces.map(str::to_owned),
    };
    let unplanned = Decomposition {
        tasks: vec![task("a", Some("nope"))],
    };
    let error = refine::place(unplanned, &review).unwrap_err();
    assert!(
        error.contains("'nope', which is not a planned task"),
        "{error}"
    );
    let twice = Decomposition {
        tasks: vec![task("a", None), task("a", None)],
    };
    let error = refine::place(twice, &review).unwrap_err();
    assert!(error.contains("'a' is given twice"), "{error}");
}

#[test]
fn an_empty_round_ends_the_request_with_the_result_it_has() {
    let mut record = example_record();
    run(&mut record, &low_outputs);
    let mut round = builtin_round(&record);
    round.tasks.clear();
    assert_eq!(record.refine(round, 3), Applied::Changed);
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.request.as_ref().unwrap().scores.len(), 1);
    assert!(record.result().is_some());
}

#[test]
fn a_summary_request_waits_for_its_summary() {
    let mut record = example_record();
    record.request.as_mut().unwrap().aggregation = Aggregation::Summary;
    run(&mut record, &|c| match c {
        "math.eval" => json!({"value": 27}),
        _ => json!({"words": 9, "top_words": [{"word": "the", "count": 2}]}),
    });
    assert_eq!(record.awaiting(), Some(Awaiting::Summary));
    assert_eq!(record.result(), None);
    let long = "x".repeat(MAX_SUMMARY_BYTES * 2);
    assert_eq!(
        record.summarize(&long, "model".into(), None, 3),
        Applied::Changed
    );
    assert_eq!(record.status, Status::Completed);
    let summary = record.result().unwrap()["summary"].as_str().unwrap().len();
    assert!(summary < MAX_SUMMARY_BYTES + 64, "clipped: {summary}");
    assert_eq!(
        record.summarize("again", "model".into(), None, 4),
        Applied::Stale
    );
    let plan = record.request.as_ref().unwrap();
    assert_eq!(plan.summarized_by.as_deref(), Some("model"));
}

#[test]
fn clauses_cut_at_sentences_and_connectors_but_not_in_quotes_or_numbers() {
    let cut = clauses(
        "Count the words in \"a. then b\", then calculate 2.5 * 2. Also fetch https://x.org",
    );
    let texts: Vec<(&str, bool)> = cut
        .iter()
        .map(|c| (c.text.as_str(), c.after_previous))
        .collect();
    assert_eq!(
        texts,
        [
            ("Count the words in \"a. then b\"", false),
            ("calculate 2.5 * 2", true),
            ("fetch https://x.org", false),
        ]
    );
}

#[test]
fn strategies_shape_the_dependencies() {
    let request = "calculate 1 + 1. Calculate 2 + 2";
    let seq = builtin(request, Strategy::Sequential).decomposition;
    assert_eq!(seq.tasks[1].depends_on, [seq.tasks[0].id.clone()]);
    let par = builtin("calculate 1 + 1, then calculate 2 + 2", Strategy::Parallel).decomposition;
    assert!(par.tasks[1].depends_on.is_empty(), "no reference, no wait");
}

#[test]
fn unplaced_clauses_are_skipped_and_lower_the_score() {
    let made = builtin("sing me a song. Calculate 6 * 7", Strategy::Auto);
    assert_eq!(made.skipped, ["sing me a song"]);
    assert_eq!(post::request_score(&[1.0], made.skipped.len()), 0.5);
    let none = decompose("sing me a song", Strategy::Auto, &|_| true, &offered(), 16).unwrap_err();
    assert!(none.to_string().contains("found no part"), "{none}");
}

#[test]
fn the_schema_offers_only_live_capabilities_and_accepts_the_builtin_plan() {
    let schema = decomposition_schema(&offered(), 4);
    assert_eq!(
        schema["properties"]["tasks"]["items"]["properties"]["capability"]["enum"],
        json!(OFFERED)
    );
    let validator = jsonschema::validator_for(&schema).unwrap();
    let plan = serde_json::to_value(
        builtin(
            "calculate 1 + 2, then calculate the result times 3",
            Strategy::Auto,
        )
        .decomposition,
    )
    .unwrap();
    assert!(validator.is_valid(&plan), "{plan}");
    let foreign = json!({"tasks": [{"id": "a", "specialist": "x", "description": "d", "capability": "shell", "input": {}, "depends_on": []}]});
    assert!(!validator.is_valid(&foreign));
}

#[test]
fn a_cyclic_decomposition_is_refused_by_the_task_file_validator() {
    let file = parse("name: n\nrequest: x\n", &TaskLimits::default()).unwrap();
    let task = |id: &str, dep: &str| PlannedTask {
        id: id.into(),
        specialist: "s".into(),
        description: "d".into(),
        capability: "math.eval".into(),
        input: json!({"expr": "1"}),
        inputs: vec![],
        outputs: vec![],
        depends_on: vec![dep.into()],
        replaces: None,
    };
    let cyclic = Decomposition {
        tasks: vec![task("a", "b"), task("b", "a")],
    };
    let err = validate(
        cyclic.task_file(&file),
        &TaskLimits::default(),
        &|_| true,
        &Vec::new,
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("dependency cycle"), "{err}");
}

#[test]
fn request_files_are_checked_before_any_provider() {
    let check = |doc: &str| {
        check_request_file(&parse(doc, &TaskLimits::default()).unwrap())
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(check("name: n\nrequest: ' '\n").contains("must not be empty"));
    assert!(
        check("name: n\nrequest: x\ntasks: [{id: a, capability: c}]\n").contains("replaces tasks")
    );
    assert!(check("name: n\nrequest: x\nquality_threshold: 2\n").contains("between 0 and 1"));
    assert!(
        check("name: n\npattern: peer_consensus\nrequest: x\n").contains("pattern peer_consensus")
    );
    let plain = parse(
        "name: n\nstrategy: auto\ntasks: [{id: a, capability: c}]\n",
        &TaskLimits::default(),
    )
    .unwrap();
    let err = validate(plain, &TaskLimits::default(), &|_| true, &Vec::new).unwrap_err();
    assert!(
        err.to_string().starts_with("strategy: 'auto' is a hint"),
        "{err}"
    );
}

#[test]
fn aggregation_strategies() {
    let outs = vec![
        ("a".to_owned(), "first".to_owned(), json!(1)),
        ("b".to_owned(), "second".to_owned(), json!(2)),
        ("c".to_owned(), String::new(), json!(1)),
    ];
    assert_eq!(
        aggregate(Aggregation::Merge, &outs),
        json!({"a": 1, "b": 2, "c": 1})
    );
    assert_eq!(aggregate(Aggregation::Concatenate, &outs), json!([1, 2, 1]));
    assert_eq!(
        aggregate(Aggregation::Vote, &outs),
        json!({"answer": 1, "votes": 2, "of": 3})
    );
    assert_eq!(
        aggregate(Aggregation::Summary, &outs),
        json!({"summary": "first: 1\nsecond: 2\nc: 1"})
    );
}

#[test]
fn quality_rules_per_capability() {
    assert_eq!(rule_score("math.eval", &json!({"value": 2})), 1.0);
    assert_eq!(rule_score("math.eval", &json!({"value": null})), 0.0);
    assert_eq!(
        rule_score("text.word_count", &json!({"top_words": []})),
        0.0
    );
    assert_eq!(rule_score("http.get", &json!({"status": 503})), 0.0);
    assert_eq!(rule_score("custom", &json!("")), 0.0);
    assert_eq!(rule_score("custom", &json!({"x": 1})), 1.0);
}

fn entry(task: &str, request: &str, created_ms: u64) -> MemoryEntry {
    MemoryEntry {
        task: crate::TaskId::new(task),
        request: request.into(),
        decomposition: Decomposition { tasks: vec![] },
        quality: 1.0,
        provider: "builtin".into(),
        created_ms,
        embedding: None,
    }
}

#[test]
fn memory_reuses_similar_requests_only_and_evicts_the_oldest() {
    let entries = vec![
        entry("old", "count the words in 'a b c'", 1),
        entry("calc", "calculate 2 + 2", 2),
    ];
    let hit = best_match("Count the words in 'a b c'!", None, &entries, 0.9).unwrap();
    assert_eq!((hit.entry.task.as_str(), hit.by), ("old", "lexical"));
    assert!(
        best_match("calculate 3 + 3", None, &entries, 0.9).is_none(),
        "numbers differ"
    );
    assert!(lexical_similarity("calculate 2 + 2", "calculate 2 + 2") == 1.0);
    assert_eq!(evictions(&entries, 1), [crate::TaskId::new("old")]);
    assert!(evictions(&entries, 2).is_empty());
}

proptest! {
    /// Whatever the prose, the built-in decomposition is a DAG the
    /// task-file validator accepts (or a refusal naming the request).
    #[test]
    fn builtin_output_always_validates(words in proptest::collection::vec(
        prop_oneof![
            Just("then"), Just("also"), Just("calculate"), Just("2"), Just("+"), Just("3"),
            Just("the result"), Just("times"), Just("count the words in"), Just("'a b'"),
            Just("."), Just(","), Just("fetch"), Just("https://example.com"), Just("it"),
            Just("song"), Just("\""),
        ], 1..24),
        strategy in prop_oneof![Just(Strategy::Auto), Just(Strategy::Parallel), Just(Strategy::Sequential)],
    ) {
        let request = words.join(" ");
        let file = parse("name: n\nrequest: x\n", &TaskLimits::default()).unwrap();
        let mut file = file;
        file.strategy = strategy;
        if let Ok(made) = decompose(&request, strategy, &|c| OFFERED.contains(&c), &offered(), 8) {
            prop_assert!(made.decomposition.tasks.len() <= 8);
            let tasks = made.decomposition.task_file(&file);
            let valid = validate(tasks, &TaskLimits::default(), &|c| OFFERED.contains(&c), &offered);
            prop_assert!(valid.is_ok(), "{request}: {valid:?}");
        }
    }

    #[test]
    fn scores_stay_in_range(scores in proptest::collection::vec(0.0f64..=1.0, 0..10), skipped in 0usize..5) {
        let s = post::request_score(&scores, skipped);
        prop_assert!((0.0..=1.0).contains(&s));
    }

    #[test]
    fn similarity_is_symmetric_and_bounded(a in "[a-z0-9 ]{0,40}", b in "[a-z0-9 ]{0,40}") {
        let (x, y) = (lexical_similarity(&a, &b), lexical_similarity(&b, &a));
        prop_assert!((x - y).abs() < 1e-9 && (0.0..=1.0).contains(&x));
    }
}

#[test]
fn the_decomposition_schema_bounds_the_input_of_built_in_tools() {
    let schema = decomposition_schema(&["math.eval".into(), "sleep".into()], 4);
    let input = &schema["properties"]["tasks"]["items"]["properties"]["input"];
    let shapes = input["anyOf"]
        .as_array()
        .expect("one shape per built-in tool");
    assert_eq!(shapes.len(), 2);
    assert_eq!(shapes[0]["required"], json!(["expr"]));
    assert_eq!(shapes[0]["additionalProperties"], false);
    assert_eq!(shapes[0]["properties"]["expr"]["maxLength"], 200);
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON schema");
    let task = |input: Value| {
        json!({"tasks": [{"id": "a", "specialist": "s", "description": "d",
            "capability": "math.eval", "input": input, "depends_on": []}]})
    };
    assert!(validator.is_valid(&task(json!({"expr": "6 * 7"}))));
    assert!(!validator.is_valid(&task(json!({"expr": "6 * 7", "junk": 1}))));
    // A tool of the cluster's own: its shape is not known, any object goes.
    let custom = decomposition_schema(&["math.eval".into(), "text.greet".into()], 4);
    let input = &custom["properties"]["tasks"]["items"]["properties"]["input"];
    assert_eq!(input["type"], "object");
    assert!(decomposition_prompt("x", Strategy::Auto, &["math.eval".into()]).contains("expr"));
}
