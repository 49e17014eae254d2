//! Natural-language requests on a cluster of separate processes with no
//! model configured: the coordinator decomposes the prose with the
//! built-in rules, the DAG runs on a worker, and the record shows the
//! decomposition, the provider, the quality score and any refinement
//! round.

use serde_json::json;

use crate::support::cluster::Cluster;

fn cluster() -> Cluster {
    Cluster::builder()
        .coordinators(1)
        .worker("worker-1", "math.eval,text.word_count,json.query")
        .start()
}

#[test]
fn the_example_request_runs_with_the_builtin_decomposer() {
    let cluster = cluster();
    let example = format!("{}/../../examples/request.yaml", env!("CARGO_MANIFEST_DIR"));
    let record = cluster.submit_wait(&example);
    assert_eq!(record["status"], "completed", "{record}");
    let request = &record["request"];
    assert_eq!(request["provider"], "builtin", "{request}");
    assert!(
        request.get("fallback").is_none(),
        "no model, no fallback: {request}"
    );
    let ids: Vec<&str> = record["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t1_word_count", "t2_eval", "t3_eval"], "{record}");
    // The reference to the word count resolved across the DAG: 9 * 3.
    assert_eq!(
        record["result"]["t2_eval"],
        json!({"value": 27}),
        "{record}"
    );
    assert_eq!(
        record["result"]["t3_eval"],
        json!({"value": 1024}),
        "{record}"
    );
    assert_eq!(request["scores"], json!([1.0]), "{request}");
    assert_eq!(request["rounds"], 0);
    // `task status` shows the same decomposition.
    let id = record["task_id"].as_str().unwrap();
    let status = cluster.status(id);
    assert_eq!(
        status["request"]["decomposition"]["tasks"][0]["specialist"],
        "text analyst"
    );
    cluster.assert_no_panic();
}

#[test]
fn a_low_quality_score_runs_exactly_one_refinement_round() {
    let cluster = cluster();
    // Punctuation only: the word count finds no real word, which the
    // text.word_count rule scores 0.
    let file = cluster.task_file(
        "low.yaml",
        "name: low\nrequest: 'Count the words in \"... --- !!!\"'\n",
    );
    let record = cluster.submit_wait(&file);
    assert_eq!(record["status"], "completed", "{record}");
    let request = &record["request"];
    assert_eq!(request["rounds"], 1, "{request}");
    assert_eq!(request["scores"], json!([0.0, 0.0]), "{request}");
    let ids: Vec<&str> = record["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t1_word_count", "r1_t1_word_count"], "{record}");
    assert_eq!(request["refined"]["r1_t1_word_count"], "t1_word_count");
    cluster.assert_no_panic();
}
