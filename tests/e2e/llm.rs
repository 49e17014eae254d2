//! `llm.chat` and `llm.embed` on a worker pointed at a real model (the
//! local SmolLM2 server, see `support::model`) through its `--llm-*` flags,
//! run like any capability through the scheduler; a node without a model
//! offers neither. A 135M model's judgement is not checked, only structure:
//! the schema-constrained answer validates, embeddings have the model's
//! width, and the record names the provider.

use serde_json::Value;

use crate::support::cluster::{Cluster, NodeSpec};
use crate::support::model::LocalModel;

/// SmolLM2-135M's hidden size: the width of its mean-pooled embeddings.
const EMBEDDING_DIMENSION: usize = 576;

const ASK: &str = r#"name: ask-the-model
tasks:
  - id: classify
    capability: llm.chat
    input:
      system: "Classify the request. Answer with JSON: kind is one of question, command, other."
      prompt: "What is the capital of France?"
      schema:
        type: object
        properties:
          kind: { type: string, enum: [question, command, other] }
        required: [kind]
        additionalProperties: false
      temperature: 0
      max_tokens: 100
      seed: 42
  - id: embed
    capability: llm.embed
    input: { texts: ["a cat", "a dog"] }
"#;

#[test]
fn a_worker_with_a_model_runs_llm_chat_and_llm_embed_subtasks() {
    let model = LocalModel::start();
    let model_args = model.node_args();
    let model_args: Vec<&str> = model_args.iter().map(String::as_str).collect();
    let cluster = Cluster::builder()
        .coordinators(1)
        .node(NodeSpec::worker("thinker", "llm.chat,llm.embed").args(&model_args))
        .start();
    let file = cluster.task_file("ask.yaml", ASK);
    let record = cluster.submit_wait(&file);
    assert_eq!(record["status"], "completed", "{record}");

    let chat = &record["subtasks"][0]["output"];
    let kind = chat["json"]["kind"].as_str().unwrap_or_default();
    assert!(
        ["question", "command", "other"].contains(&kind),
        "the answer must follow the schema: {chat}"
    );
    assert!(
        chat["provider"]
            .as_str()
            .unwrap_or_default()
            .contains("llama.cpp"),
        "{chat}"
    );
    assert!(
        chat["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{chat}"
    );

    let embed = &record["subtasks"][1]["output"];
    assert_eq!(embed["dimension"], EMBEDDING_DIMENSION as u64, "{embed}");
    let vectors = embed["vectors"].as_array().expect("vectors");
    assert_eq!(vectors.len(), 2);
    assert!(
        vectors
            .iter()
            .all(|v| v.as_array().map(Vec::len) == Some(EMBEDDING_DIMENSION)),
        "every vector has the model's width"
    );
    cluster.assert_no_panic();
}

#[test]
fn without_a_model_llm_chat_is_not_offered_and_a_half_configured_model_is_refused() {
    let cluster = Cluster::builder()
        .coordinators(1)
        .worker("worker-1", "")
        .start();
    let agents = cluster.agents();
    let worker = agents
        .iter()
        .find(|a| a["id"] == "worker-1")
        .expect("the worker is listed");
    let capabilities: Vec<&str> = worker["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(capabilities.contains(&"math.eval"), "{worker}");
    assert!(!capabilities.contains(&"llm.chat"), "{worker}");

    let file = cluster.task_file(
        "ask.yaml",
        "name: ask\ntasks:\n  - id: a\n    capability: llm.chat\n    input: { prompt: hi }\n",
    );
    let out = cluster.cli(&["submit", "--endpoint", cluster.endpoint(), &file]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("llm.chat"),
        "the refusal names it: {out}"
    );

    let half = cluster.cli(&[
        "node",
        "--role",
        "worker",
        "--insecure",
        "--etcd",
        &cluster.etcd_client_url(),
        "--llm-base-url",
        "http://127.0.0.1:9/v1",
    ]);
    assert!(!half.success(), "{half}");
    assert!(half.stderr.contains("--llm-model"), "{half}");
}
