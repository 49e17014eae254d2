//! The embedded cluster end to end: same actors as a real cluster, over the
//! in-memory registry.

use std::net::SocketAddr;
use std::time::Duration;

use agentmesh_core::Role;
use agentmesh_core::task::Status;
use agentmesh_runtime::NodeConfig;
use agentmesh_runtime::actors::faults::Faults;
use agentmesh_runtime::node::NodeBuilder;
use serde_json::json;

fn config() -> NodeConfig {
    NodeConfig::new(Role::Worker, SocketAddr::from(([127, 0, 0, 1], 0)))
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("local cluster did not answer within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn average_word_count_runs_in_process() {
    let cluster = within(NodeBuilder::new(config()).local(3)).await.unwrap();
    let id = within(
        cluster
            .api()
            .submit(include_str!("../../../examples/average-word-count.yaml")),
    )
    .await
    .unwrap();
    let record = within(cluster.api().get(&id)).await.unwrap();
    assert_eq!(record.name, "average-word-count");
    let record = within(cluster.run(include_str!("../../../examples/average-word-count.yaml")))
        .await
        .unwrap();
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.result(), Some(json!({"value": 5})));
    cluster.shutdown().await;
}

/// `--fault` makes every worker misbehave on purpose: a wrong answer
/// arrives as a normal result, a failure as a failed attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_change_what_workers_answer() {
    let task =
        r#"{"name":"t","tasks":[{"id":"x","capability":"math.eval","input":{"expr":"6*7"}}]}"#;
    let mut wrong = config();
    wrong.faults = "wrong-result:1".parse().map(|f| Faults(vec![f])).unwrap();
    let cluster = within(NodeBuilder::new(wrong).local(1)).await.unwrap();
    let record = within(cluster.run(task)).await.unwrap();
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.result(), Some(json!({"value": 43.0})));
    cluster.shutdown().await;

    let mut failing = config();
    failing.faults = Faults(vec!["fail:1".parse().unwrap()]);
    failing.coordinator.retry.max_attempts = 1;
    let cluster = within(NodeBuilder::new(failing).local(1)).await.unwrap();
    let record = within(cluster.run(task)).await.unwrap();
    assert_eq!(record.status, Status::Failed);
    assert!(
        record
            .error
            .as_deref()
            .unwrap_or("")
            .contains("injected fault"),
        "{record:?}"
    );
    cluster.shutdown().await;
}

/// A hierarchical task needs level nodes: without a strategic-level agent
/// it is refused, precisely and without touching anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hierarchical_task_without_levels_is_refused() {
    let cluster = within(NodeBuilder::new(config()).local(1)).await.unwrap();
    let error = within(cluster.api().submit(include_str!(
        "../../../examples/hierarchical-market-study.yaml"
    )))
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("pattern: a hierarchical task needs a strategic-level agent"),
        "{error}"
    );
    cluster.shutdown().await;
}

/// A Watch from an ended task's last revision has nothing to wait for: it
/// ends at once, where it used to wait forever on a registry watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_an_ended_tasks_last_revision_ends_at_once() {
    use futures::StreamExt;

    let cluster = within(NodeBuilder::new(config()).local(1)).await.unwrap();
    let task =
        r#"{"name":"t","tasks":[{"id":"x","capability":"math.eval","input":{"expr":"6*7"}}]}"#;
    let ended = within(cluster.run(task)).await.unwrap();
    assert_eq!(ended.status, Status::Completed);
    for after in [ended.revision, ended.revision + 5] {
        let stream = within(cluster.api().watch(&ended.id, after)).await.unwrap();
        let records: Vec<_> = within(stream.collect::<Vec<_>>()).await;
        assert!(records.is_empty(), "{records:?}");
    }
    // From an earlier revision, the final record, then the end.
    let stream = within(cluster.api().watch(&ended.id, 0)).await.unwrap();
    let records: Vec<_> = within(stream.collect::<Vec<_>>()).await;
    let last = records.last().unwrap().as_ref().unwrap();
    assert_eq!(last.revision, ended.revision);
    cluster.shutdown().await;
}
