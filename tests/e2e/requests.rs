//! Natural-language requests on a cluster of separate processes with no
//! model configured: the coordinator decomposes the prose with the
//! built-in rules, the DAG runs on a worker, and the record shows the
//! decomposition, the provider, the quality score and any refinement
//! round.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::cluster::Cluster;
use crate::support::eventually;
use crate::support::model::LocalModel;

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
    // Without a model the built-in rule planned the round.
    assert_eq!(
        request["refinements"][0]["provider"], "builtin",
        "{request}"
    );
    assert!(request.get("awaiting").is_none(), "{request}");
    cluster.assert_no_panic();
}

/// The local SmolLM2 server, and a cluster whose coordinator plans with
/// it (one task a plan) and whose worker offers `capabilities`, started
/// with `worker_args`. The model serves while the first is kept.
fn model_cluster(capabilities: &str, worker_args: &[&str]) -> (LocalModel, Cluster) {
    let model = LocalModel::start();
    let model_args = model.node_args();
    let mut args: Vec<&str> = model_args.iter().map(String::as_str).collect();
    args.extend(["--request-max-subtasks", "1"]);
    let cluster = Cluster::builder()
        .coordinators(1)
        .coordinator_args(&args)
        .worker_args(worker_args)
        .worker("worker-1", capabilities)
        .start();
    (model, cluster)
}

/// The done-when: a request on a cluster whose coordinator has the
/// local SmolLM2 model is given to the model (under the schema: the
/// capability an enum of the live worker's, one short task), its answer
/// validated by the task-file validator, and the DAG run on the worker and
/// aggregated, with the record naming the model and no fallback. (The
/// retry and the fallback to the built-in decomposer are proven with
/// scripted answers in `api::request`'s tests.)
#[test]
fn a_request_is_given_to_the_local_model_and_its_dag_runs_on_a_worker() {
    let (_model, cluster) = model_cluster("math.eval", &[]);
    let file = cluster.task_file(
        "model.yaml",
        "name: model-plan\naggregation: concatenate\nrequest: Calculate 6 * 7.\n",
    );
    // The decomposition is bounded at 2 × 60 s (a call and its retry);
    // on a busy machine the tiny model may need much of it.
    let out = cluster.cli_with_timeout(
        &[
            "submit",
            "--endpoint",
            cluster.endpoint(),
            "--request-timeout-ms",
            "170000",
            &file,
            "--wait",
        ],
        Duration::from_secs(180),
    );
    assert!(out.success(), "{out}");
    let record = out.json();
    assert_eq!(record["status"], "completed", "{record}");
    let request = &record["request"];
    let provider = request["provider"].as_str().unwrap_or_default();
    eprintln!("decomposed by {provider}: {request}");
    // The schema (closed inputs of the built-in tools, short ids, no
    // dependency with one task allowed) leaves even a 135M model at
    // temperature 0 a valid plan to write.
    assert!(
        provider.contains("llama.cpp"),
        "the model decomposed it: {request}"
    );
    assert!(request["fallback"].is_null(), "{request}");
    let planned = request["decomposition"]["tasks"].as_array().expect("tasks");
    assert_eq!(
        planned.len(),
        1,
        "--request-max-subtasks bounds it: {request}"
    );
    assert_eq!(planned[0]["capability"], "math.eval", "{request}");
    assert_eq!(request["result"][0]["value"], 42, "{request}");
    let subtasks = record["subtasks"].as_array().expect("subtasks");
    assert!(!subtasks.is_empty(), "{record}");
    assert!(
        subtasks.iter().all(|s| s["status"] == "completed"),
        "{record}"
    );
    assert!(request["result"].is_array(), "aggregated: {request}");
    assert!(
        !request["scores"].as_array().unwrap().is_empty(),
        "{request}"
    );
    cluster.assert_no_panic();
}

/// The done-when, second half: on a cluster whose coordinator has
/// the local SmolLM2 model, a request that scores below its threshold
/// (its worker answers every task with an empty output, which the quality
/// rules score 0, whatever input the model chose) waits for a refinement
/// round, which the model generates from a review of what
/// ran; the round's tasks are placed in its namespace, validated with what
/// ran and run; then the model writes the summary.
#[test]
fn a_low_scoring_request_is_refined_and_summarized_by_the_local_model() {
    let (_model, cluster) = model_cluster(
        "text.word_count",
        &["--allow-fault-injection", "--fault", "empty-result:1"],
    );
    let file = cluster.task_file(
        "refine.yaml",
        "name: model-refine\naggregation: summary\nrequest: 'Count the words in \"... --- !!!\".'\n",
    );
    // Three model calls, each bounded at 2 × 60 s with its retry.
    let out = cluster.cli_with_timeout(
        &[
            "submit",
            "--endpoint",
            cluster.endpoint(),
            "--request-timeout-ms",
            "400000",
            &file,
            "--wait",
        ],
        Duration::from_secs(420),
    );
    assert!(out.success(), "{out}");
    let record = out.json();
    eprintln!("record: {record}");
    assert_eq!(record["status"], "completed", "{record}");
    let request = &record["request"];
    assert!(
        request["provider"]
            .as_str()
            .unwrap_or_default()
            .contains("llama.cpp"),
        "the model decomposed it: {request}"
    );
    assert_eq!(request["rounds"], 1, "{request}");
    let scores = request["scores"].as_array().expect("scores");
    assert_eq!(scores, &[json!(0.0), json!(0.0)], "{request}");
    let round = &request["refinements"][0];
    assert!(
        round["provider"]
            .as_str()
            .unwrap_or_default()
            .contains("llama.cpp"),
        "the model generated the round: {round}"
    );
    assert!(round["fallback"].is_null(), "{round}");
    let tasks = round["tasks"].as_array().expect("the round's tasks");
    assert!(!tasks.is_empty(), "{round}");
    let ran: Vec<&str> = record["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    for task in tasks {
        let id = task["id"].as_str().unwrap();
        assert!(id.starts_with("r1_"), "in the round's namespace: {id}");
        assert!(ran.contains(&id), "the round's task ran: {id} in {ran:?}");
    }
    assert!(
        request["summarized_by"]
            .as_str()
            .unwrap_or_default()
            .contains("llama.cpp"),
        "the model wrote the summary: {request}"
    );
    let summary = record["result"]["summary"].as_str().unwrap_or_default();
    assert!(!summary.trim().is_empty(), "{record}");
    cluster.assert_no_panic();
}

/// The coordination memory: a request that completed with a good score
/// leaves its triple in etcd (written by the leader once the task ends),
/// and the same request submitted again reuses that decomposition — the
/// record says so, names the source task and the similarity — and runs.
#[test]
fn the_same_request_twice_reuses_the_remembered_decomposition() {
    let cluster = cluster();
    let example = format!("{}/../../examples/request.yaml", env!("CARGO_MANIFEST_DIR"));
    let first = cluster.submit_wait(&example);
    assert_eq!(first["status"], "completed", "{first}");
    assert!(first["request"].get("reused").is_none(), "{first}");
    let first_id = first["task_id"].as_str().unwrap().to_owned();
    // The leader writes the triple after the first task ended: submit
    // again until a record says it reused it (each try runs a task).
    let again = eventually(
        "a submit reusing the remembered plan",
        Duration::from_secs(10),
        || {
            let record = cluster.submit_wait(&example);
            record["request"].get("reused").is_some().then_some(record)
        },
    );
    assert_eq!(again["status"], "completed", "{again}");
    let request = &again["request"];
    assert_eq!(
        request["reused"]["from_task"],
        first_id.as_str(),
        "{request}"
    );
    assert_eq!(request["reused"]["similarity"], 1.0, "{request}");
    assert_eq!(request["reused"]["by"], "lexical", "{request}");
    assert_eq!(
        request["decomposition"], first["request"]["decomposition"],
        "the same plan"
    );
    assert_eq!(again["result"], first["result"], "and it ran again");
    cluster.assert_no_panic();
}

/// A stand-in model server: every call with a JSON schema (a plan) is
/// answered at once with text that is not JSON, so the plan falls back to
/// the built-in rules; every other call (a summary) is held unanswered
/// until [`StallingModel::release`], then answered "The answer is 42.".
struct StallingModel {
    args: Vec<String>,
    released: Arc<AtomicBool>,
}

impl StallingModel {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("the listener's address");
        let released = Arc::new(AtomicBool::new(false));
        let gate = released.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let gate = gate.clone();
                std::thread::spawn(move || serve_stalling(stream, &gate));
            }
        });
        let args = [
            "--llm-base-url",
            &format!("http://{addr}/v1"),
            "--llm-model",
            "stall",
            "--llm-backend",
            "llama.cpp",
        ]
        .map(str::to_owned)
        .into();
        Self { args, released }
    }

    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }
}

/// One connection of [`StallingModel`], with keep-alive.
fn serve_stalling(stream: TcpStream, released: &AtomicBool) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let content = if String::from_utf8_lossy(&body).contains("json_schema") {
            "this is not JSON"
        } else {
            // A summary: held until the test releases it (a wait on the
            // test's own signal, not on time).
            while !released.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_millis(20));
            }
            "The answer is 42."
        };
        let answer = json!({
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Nothing lost while a model thinks: the leader's request waits for its
/// summary (durably: `awaiting` in the record), the leader is SIGKILLed,
/// and the standby that takes the task over asks the model again, and
/// completes the task with the model's summary.
#[test]
fn a_request_waiting_for_its_summary_is_finished_by_the_next_leader() {
    let model = StallingModel::start();
    let args: Vec<&str> = model.args.iter().map(String::as_str).collect();
    let cluster = Cluster::builder()
        .coordinators(2)
        .coordinator_args(&args)
        .lease_ttl(2)
        .worker("worker-1", "math.eval")
        .start();
    let file = cluster.task_file(
        "summary.yaml",
        "name: summarized\naggregation: summary\nrequest: Calculate 6 * 7.\n",
    );
    let id = cluster.submit(&file);
    let waiting = eventually(
        "the request to wait for its summary",
        Duration::from_secs(30),
        || {
            let record = cluster.try_status(&id)?;
            (record["request"]["awaiting"]["step"] == "summary").then_some(record)
        },
    );
    let request = &waiting["request"];
    assert!(
        request["fallback"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid answer after a retry"),
        "the stand-in's plans were refused: {request}"
    );
    assert_eq!(waiting["subtasks"][0]["status"], "completed", "{waiting}");
    cluster.kill("coordinator-1");
    eventually("coordinator-2 to lead", Duration::from_secs(20), || {
        (cluster.leader().as_deref() == Some("coordinator-2")).then_some(())
    });
    model.release();
    let record = cluster.wait_ended(&id, Duration::from_secs(30));
    assert_eq!(record["status"], "completed", "{record}");
    let request = &record["request"];
    assert_eq!(request["summarized_by"], "llama.cpp:stall", "{request}");
    assert!(request.get("awaiting").is_none(), "{request}");
    assert_eq!(record["result"]["summary"], "The answer is 42.", "{record}");
    cluster.assert_no_panic();
}
