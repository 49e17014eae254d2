//! Parsing within limits: hostile YAML and JSON are refused while they are
//! read, naming the limit, and honest files mean what they meant before.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

/// A bound that only a return to unbounded work can miss, whatever the
/// load on a shared machine: these inputs are refused in milliseconds to a
/// few seconds of a debug build, while expanding them would take minutes
/// and gigabytes (an alias bomb) or never end. Where the refusal is made is
/// asserted too, which shows the parser stopped early.
const QUICKLY: Duration = Duration::from_secs(30);

fn parse_timed(document: &str) -> (Result<TaskFile, TaskFileError>, Duration) {
    let started = Instant::now();
    let parsed = parse(document, &TaskLimits::default());
    (parsed, started.elapsed())
}

fn over_limit(result: Result<TaskFile, TaskFileError>) -> (&'static str, usize, String) {
    match result {
        Err(TaskFileError::OverLimit { limit, max, found }) => (limit, max, found),
        other => panic!("expected a refusal over a limit, got {other:?}"),
    }
}

/// One subtask whose input is `input`, indented as YAML under `input:`.
fn with_yaml_input(input: &str) -> String {
    format!("name: t\ntasks:\n  - id: a\n    capability: c\n    input:\n{input}")
}

/// Nine levels of ten aliases each: 10^9 scalars once expanded, from a
/// file of under a kilobyte.
fn billion_laughs() -> String {
    let mut input =
        String::from("      l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..=9 {
        let previous = format!("*l{}", level - 1);
        let items = [previous.as_str(); 10].join(", ");
        input.push_str(&format!("      l{level}: &l{level} [{items}]\n"));
    }
    with_yaml_input(&input)
}

#[test]
fn a_yaml_alias_bomb_is_refused_quickly_naming_the_limit() {
    let bomb = billion_laughs();
    assert!(bomb.len() < 1024, "{} bytes", bomb.len());
    let (parsed, took) = parse_timed(&bomb);
    let (limit, max, found) = over_limit(parsed);
    assert_eq!((limit, max), ("max_alias_expansion", 100_000));
    assert!(found.contains("aliases"), "{found}");
    assert!(took < QUICKLY, "took {took:?}");
    let message = parse(&bomb, &TaskLimits::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("over the limit max_alias_expansion = 100000"),
        "{message}"
    );
}

/// About 108 KB: one anchor of 10 000 scalars used 14 000 times, 140
/// million scalars once expanded. Each use alone is a modest expansion,
/// so a limit on repetitions relative to the document's size lets it by.
fn wide_alias_fan_out() -> String {
    let anchor = vec!["lol"; 10_000].join(", ");
    let uses = vec!["*a"; 14_000].join(", ");
    with_yaml_input(&format!("      a: &a [{anchor}]\n      b: [{uses}]\n"))
}

#[test]
fn a_wide_alias_fan_out_is_refused_quickly_naming_the_limit() {
    let doc = wide_alias_fan_out();
    assert!(
        (100_000..120_000).contains(&doc.len()),
        "{} bytes",
        doc.len()
    );
    let (parsed, took) = parse_timed(&doc);
    let (limit, _, _) = over_limit(parsed);
    assert_eq!(limit, "max_alias_expansion");
    assert!(took < QUICKLY, "took {took:?}");
}

#[test]
fn an_alias_bomb_of_long_scalars_is_held_to_its_text() {
    // Few events, much text: a 64 KiB scalar repeated through aliases.
    let long = "x".repeat(64 * 1024);
    let uses = vec!["*s"; 100].join(", ");
    let doc = with_yaml_input(&format!("      s: &s {long}\n      all: [{uses}]\n"));
    let (parsed, took) = parse_timed(&doc);
    let (limit, max, _) = over_limit(parsed);
    assert!(limit.contains("max_document_bytes"), "{limit}");
    assert_eq!(max, 4 * TaskLimits::default().max_document_bytes);
    assert!(took < QUICKLY, "took {took:?}");
}

#[test]
fn the_parser_s_own_caps_are_named_too() {
    // 300 000 nodes in 600 KB: within max_document_bytes, over the
    // parser's node budget.
    let nodes = vec!["0"; 300_000].join(",");
    let (parsed, took) = parse_timed(&with_yaml_input(&format!("      x: [{nodes}]\n")));
    let (limit, max, found) = over_limit(parsed);
    assert_eq!((limit, max), ("YAML nodes", 250_000));
    assert!(found.contains("250001 YAML nodes"), "{found}");
    assert!(took < QUICKLY, "took {took:?}");
}

#[test]
fn deep_yaml_flow_nesting_is_refused_quickly_naming_the_limit() {
    let doc = "[".repeat(200 * 1024);
    let (parsed, took) = parse_timed(&doc);
    let (limit, max, found) = over_limit(parsed);
    assert_eq!((limit, max), ("max_nesting", 64));
    assert!(found.contains("line 1 column 65"), "{found}");
    assert!(took < QUICKLY, "took {took:?}");
}

#[test]
fn deep_yaml_block_nesting_is_refused_naming_the_limit() {
    let mut input = String::new();
    for level in 0..200 {
        input.push_str(&format!("{}k:\n", "  ".repeat(level + 3)));
    }
    let (limit, max, found) = over_limit(parse(&with_yaml_input(&input), &TaskLimits::default()));
    assert_eq!((limit, max), ("max_nesting", 64));
    assert!(found.contains("65 levels deep"), "{found}");
}

#[test]
fn deep_json_is_refused_quickly_naming_the_limit() {
    let doc = format!("{{\"name\": {}", "[".repeat(200 * 1024));
    let (parsed, took) = parse_timed(&doc);
    let (limit, max, found) = over_limit(parsed);
    assert_eq!((limit, max), ("max_nesting", 64));
    // The 64th `[` after the top-level `{`, at byte 9 + 63.
    assert!(found.ends_with("at byte 72"), "{found}");
    assert!(took < QUICKLY, "took {took:?}");
    // Brackets inside strings are text, not nesting.
    let doc = format!(
        r#"{{"name":"t","tasks":[{{"id":"a","capability":"c","input":{{"s":"{}\"["}}}}]}}"#,
        "[".repeat(1000)
    );
    assert!(parse(&doc, &TaskLimits::default()).is_ok());
}

/// A task whose input holds `levels` sequences inside one another: the
/// document nests `levels + 4` deep (top level, `tasks`, the subtask, its
/// input).
fn nested_input(levels: usize, json: bool) -> String {
    let inner = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    if json {
        format!(r#"{{"name":"t","tasks":[{{"id":"a","capability":"c","input":{{"x":{inner}}}}}]}}"#)
    } else {
        with_yaml_input(&format!("      x: {inner}\n"))
    }
}

#[test]
fn nesting_up_to_the_limit_parses_in_either_format_and_one_more_level_does_not() {
    let limits = TaskLimits {
        max_nesting: 10,
        ..TaskLimits::default()
    };
    for json in [false, true] {
        let at_limit = parse(&nested_input(6, json), &limits);
        assert!(at_limit.is_ok(), "json: {json}: {at_limit:?}");
        let (limit, max, _) = over_limit(parse(&nested_input(7, json), &limits));
        assert_eq!((limit, max), ("max_nesting", 10), "json: {json}");
    }
}

#[test]
fn many_subtasks_may_share_one_anchor() {
    // More aliases than ten per anchor: a ratio heuristic would refuse it.
    let mut doc = String::from(
        "name: shared\ntasks:\n  - id: t0\n    capability: c\n    input: &shared { text: \"the same words\", n: 3 }\n",
    );
    for i in 1..300 {
        doc.push_str(&format!(
            "  - id: t{i}\n    capability: c\n    input: *shared\n"
        ));
    }
    let file = parse(&doc, &TaskLimits::default()).unwrap();
    assert_eq!(file.tasks.len(), 300);
    assert!(
        file.tasks
            .iter()
            .all(|t| t.input == json!({"text": "the same words", "n": 3}))
    );
}

#[test]
fn yaml_scalars_keep_the_meaning_serde_yaml_gave_them() {
    // YAML 1.2 core schema, as serde_yaml 0.9 read it: only true/false are
    // booleans, leading zeros and underscores do not make numbers, `<<` is
    // an ordinary key.
    let doc = with_yaml_input(
        "      a: [yes, no, on, off, y, n, True, FALSE]\n\
         \x20     b: [0755, 1_000, 0x1F, 0o17, 12, -3, 1.5, 1e3, ~, null, '']\n\
         \x20     c: { \"<<\": 1 }\n\
         \x20     d: \"\\u263A\"\n",
    );
    let file = parse(&doc, &TaskLimits::default()).unwrap();
    let input = &file.tasks[0].input;
    assert_eq!(
        input["a"],
        json!(["yes", "no", "on", "off", "y", "n", true, false])
    );
    assert_eq!(
        input["b"],
        json!(["0755", "1_000", 31, 15, 12, -3, 1.5, 1000.0, null, null, ""])
    );
    assert_eq!(input["c"], json!({"<<": 1}));
    assert_eq!(input["d"], json!("☺"));
    let doc = with_yaml_input("      e: [.inf, -.inf, .nan]\n      \"~\": null-named key\n");
    let input = &parse(&doc, &TaskLimits::default()).unwrap().tasks[0].input;
    assert_eq!(input["e"], json!([null, null, null]));
    assert_eq!(input["~"], json!("null-named key"));
    let err = parse(
        &with_yaml_input("      a: 1\n      a: 2\n"),
        &TaskLimits::default(),
    );
    assert!(
        matches!(err, Err(TaskFileError::DuplicateKey { .. })),
        "{err:?}"
    );
    let err = parse(
        &with_yaml_input("      a: !custom 1\n"),
        &TaskLimits::default(),
    );
    assert!(matches!(err, Err(TaskFileError::Syntax { .. })), "{err:?}");
}

/// Task files under examples/, one level of example crates included.
fn example_task_files() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut found = Vec::new();
    let mut dirs = vec![dir];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // An example crate's own sources and build output are no task files.
                if !["src", "tests", "target"].iter().any(|n| path.ends_with(n)) {
                    dirs.push(path);
                }
            } else if path
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn every_example_parses_and_yaml_and_json_agree() {
    let files = example_task_files();
    assert!(files.len() >= 6, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = parse(&text, &TaskLimits::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let json = serde_json::to_string(&file).unwrap();
        assert_eq!(
            parse(&json, &TaskLimits::default()).unwrap(),
            file,
            "{}",
            path.display()
        );
    }
}

#[test]
fn a_syntax_error_is_reported_with_its_place() {
    let err = parse("name: t\ntasks: [\n", &TaskLimits::default()).unwrap_err();
    assert!(
        matches!(err, TaskFileError::Syntax { format: "YAML", .. }),
        "{err:?}"
    );
}
