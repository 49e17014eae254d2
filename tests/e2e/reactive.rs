//! Reactive requests (`pattern: reactive`) through a real cluster: the
//! leader's response cache answers repeats without running anything, its
//! guards and `cache: false` keep it honest, `--routing-table` replaces the
//! built-in table (and a bad one stops the node, naming the problem), a
//! `--role reactive` node is listed and runs the tools, and with the local
//! SmolLM2 server a request the keywords cannot place goes to the provider.

use serde_json::Value;

use crate::support::cluster::{Cluster, NodeSpec};
use crate::support::model::LocalModel;

/// A table of our own: `math.eval` as in the built-in one, and
/// `text.word_count` picked by "tally", a word the built-in table does not
/// know.
const TABLE: &str = r#"
tools:
  - tool: math.eval
    keywords: ["what is", "calculate"]
    extract: expression
  - tool: text.word_count
    keywords: ["tally"]
    extract: text
"#;

fn request(cluster: &Cluster, name: &str, body: &str) -> Value {
    let file = cluster.task_file(
        &format!("{name}.yaml"),
        &format!("name: {name}\npattern: reactive\n{body}"),
    );
    cluster.submit_wait(&file)
}

/// Tasks the reactive agent `fast` has completed, as the leader counts.
fn succeeded(cluster: &Cluster) -> u64 {
    let agents = cluster.agents();
    let fast = agents
        .iter()
        .find(|a| a["id"] == "fast")
        .unwrap_or_else(|| panic!("the reactive node is listed: {agents:#?}"));
    fast["succeeded"].as_u64().unwrap_or(0)
}

#[test]
fn repeats_are_answered_from_the_cache_and_only_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table.yaml");
    std::fs::write(&table, TABLE).unwrap();
    let table = table.to_string_lossy().into_owned();
    let cluster = Cluster::builder()
        .coordinators(1)
        .coordinator_args(&["--routing-table", &table])
        .node(NodeSpec::reactive("fast", "math.eval,text.word_count"))
        .start();

    let agents = cluster.agents();
    let fast = agents.iter().find(|a| a["id"] == "fast").unwrap();
    assert_eq!(fast["role"], "reactive", "{agents:#?}");

    let first = request(&cluster, "first", "request: what is 2 + 3 * 4?\n");
    assert_eq!(first["status"], "completed", "{first:#}");
    assert_eq!(first["result"]["value"], 14, "{first:#}");
    assert_eq!(first["reactive"]["answered_by"], "keyword", "{first:#}");
    assert_eq!(first["subtasks"][0]["worker"], "fast", "{first:#}");
    let ran = eventually_succeeded(&cluster, 1);

    let repeat = request(&cluster, "repeat", "request: What is 2 + 3 * 4\n");
    assert_eq!(repeat["status"], "completed", "{repeat:#}");
    assert_eq!(repeat["result"]["value"], 14, "{repeat:#}");
    let reactive = &repeat["reactive"];
    assert_eq!(reactive["answered_by"], "cache", "{repeat:#}");
    assert_eq!(reactive["source"], first["task_id"], "{repeat:#}");
    assert!(
        reactive["similarity"].as_f64().unwrap() >= 0.8,
        "{repeat:#}"
    );
    assert_eq!(repeat["subtasks"][0]["attempts"], 0, "{repeat:#}");
    assert!(repeat["subtasks"][0]["worker"].is_null(), "{repeat:#}");
    // Durable like any task: readable afterwards.
    let stored = cluster.status(repeat["task_id"].as_str().unwrap());
    assert_eq!(stored["reactive"]["answered_by"], "cache", "{stored:#}");

    // The guard: another number is another question.
    let other = request(&cluster, "other", "request: what is 2 + 3 * 5?\n");
    assert_eq!(other["result"]["value"], 17, "{other:#}");
    assert_eq!(other["reactive"]["answered_by"], "keyword", "{other:#}");

    // `cache: false` neither reads nor fills it.
    let bypass = request(
        &cluster,
        "bypass",
        "request: what is 2 + 3 * 4?\ncache: false\n",
    );
    assert_eq!(bypass["reactive"]["answered_by"], "keyword", "{bypass:#}");
    assert_eq!(bypass["result"]["value"], 14, "{bypass:#}");

    // The table took effect: "tally" routes to text.word_count.
    let tally = request(&cluster, "tally", "request: 'tally: one two three'\n");
    assert_eq!(tally["status"], "completed", "{tally:#}");
    assert_eq!(tally["subtasks"][0]["capability"], "text.word_count");
    assert_eq!(tally["result"]["words"], 3, "{tally:#}");

    // Only the cache hit ran nothing: other, bypass and tally did run.
    eventually_succeeded(&cluster, ran + 3);
    cluster.assert_no_panic();
}

/// Waits until `fast` has completed `n` subtasks (the leader's count moves
/// with each result) and checks it did not go past.
fn eventually_succeeded(cluster: &Cluster, n: u64) -> u64 {
    crate::support::eventually(
        &format!("the reactive node to have completed {n} subtasks"),
        std::time::Duration::from_secs(10),
        || (succeeded(cluster) >= n).then_some(()),
    );
    let count = succeeded(cluster);
    assert_eq!(count, n, "no subtask ran for the cached answer");
    count
}

#[test]
fn a_bad_routing_table_stops_the_node_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "tools:\n  - tool: 'not a tool!'\n    keywords: [x]\n    extract: text\n",
    )
    .unwrap();
    let huge = dir.path().join("huge.yaml");
    std::fs::write(&huge, format!("# {}\n", "x".repeat(70_000))).unwrap();
    for (file, problem) in [
        (&bad, "tools[0].tool: 'not a tool!' is not a tool name"),
        (&huge, "max_table_bytes = 65536"),
    ] {
        let out = crate::support::run_cli(&[
            "node",
            "--role",
            "coordinator",
            "--etcd",
            "http://127.0.0.1:9",
            "--routing-table",
            file.to_str().unwrap(),
        ]);
        assert!(!out.success(), "{out}");
        assert!(out.stderr.contains("--routing-table"), "{out}");
        assert!(out.stderr.contains(problem), "{out}");
    }
}

#[test]
fn a_request_the_keywords_cannot_place_goes_to_the_model() {
    let model = LocalModel::start();
    let mut args = model.node_args();
    args.extend(["--llm-timeout".to_owned(), "60".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::builder()
        .coordinators(1)
        .coordinator_args(&args)
        .worker("w1", "text.word_count")
        .start();
    let file = cluster.task_file(
        "unplaced.yaml",
        "name: unplaced\npattern: reactive\nrequest: 'bonjour, ceci est un petit texte'\n",
    );
    // The model is tiny: what it picks and whether the tool likes its
    // input is not asserted, only the path and the reason on the record.
    let out = cluster.cli(&["submit", "--endpoint", cluster.endpoint(), &file, "--wait"]);
    if out.success() {
        let record = out.json();
        let reactive = &record["reactive"];
        assert_eq!(reactive["answered_by"], "provider", "{record:#}");
        assert_eq!(record["subtasks"][0]["capability"], "text.word_count");
        assert!(reactive["provider"].as_str().is_some(), "{record:#}");
        assert!(
            reactive["fallback"]
                .as_str()
                .unwrap()
                .contains("the keywords could not place the request"),
            "{record:#}"
        );
    } else {
        assert!(
            out.stderr.contains("the provider") && out.stderr.contains("failed"),
            "{out}"
        );
    }
    cluster.assert_no_panic();
}
