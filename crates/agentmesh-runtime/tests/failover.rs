//! Coordinator failover in one process: two coordinators on two nodes of
//! one in-memory store. When the leader dies or steps down, the standby
//! takes over the unfinished task from its durable record: the running
//! attempt starts again under a new attempt number (a restart, outside the
//! retry budget), and the task completes once, under the new leader.
//! (`tests/e2e/chaos/` does the same with etcd and processes.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_core::task::Status;
use agentmesh_core::{AgentId, AgentRegistration, Role};
use agentmesh_proto::v1::{Envelope, SubtaskAssignment, SubtaskResult, subtask_result};
use agentmesh_registry::{AgentDirectory, MemoryRegistry, Registry};
use agentmesh_runtime::CoordinatorConfig;
use agentmesh_runtime::MailboxConfig;
use agentmesh_runtime::actors::coordinator::leadership::LeadershipLoop;
use agentmesh_runtime::api::task::{Route, TaskApi};
use agentmesh_runtime::node::agents::{Spawner, StartedCoordinator, VERSION};
use agentmesh_runtime::transport::{self, DeliverError, Kind, LocalMailbox, Router};
use prost::Message;

const WAIT: Duration = Duration::from_secs(10);

/// A worker that never answers its first attempt of anything (it "dies"
/// with its coordinator) and answers later attempts with `6*7` — right
/// after a wrong answer for the same attempt number under the first
/// attempt's term, as a worker of the old leader's lost attempt would.
struct FirstAttemptLost {
    id: AgentId,
    router: Arc<Router>,
    seen: Mutex<Vec<(String, u32)>>,
    first_term: Mutex<Option<i64>>,
}

impl LocalMailbox for FirstAttemptLost {
    fn deliver(&self, envelope: Envelope) -> Result<(), DeliverError> {
        if envelope.kind != Kind::SubtaskAssign.as_str() {
            return Ok(());
        }
        let assignment = SubtaskAssignment::decode(envelope.payload.as_slice()).unwrap();
        self.seen
            .lock()
            .unwrap()
            .push((envelope.from.clone(), assignment.attempt));
        let first_term = *self
            .first_term
            .lock()
            .unwrap()
            .get_or_insert(assignment.term);
        if assignment.attempt >= 2 {
            let answer = |output: &str, term: i64| {
                let result = SubtaskResult {
                    task_id: assignment.task_id.clone(),
                    subtask_id: assignment.subtask_id.clone(),
                    attempt: assignment.attempt,
                    worker_id: self.id.to_string(),
                    outcome: Some(subtask_result::Outcome::OutputJson(output.into())),
                    term,
                    ..Default::default()
                };
                transport::envelope(
                    &self.id,
                    &AgentId::new(envelope.from.clone()),
                    Kind::SubtaskResult,
                    result,
                )
            };
            let stale = answer(r#"{"value":7}"#, first_term);
            let current = answer(r#"{"value":42}"#, assignment.term);
            let router = self.router.clone();
            tokio::spawn(async move {
                router.send(stale).await.unwrap();
                router.send(current).await.unwrap();
            });
        }
        Ok(())
    }
}

struct Cluster {
    first: MemoryRegistry,
    /// The first coordinator's election loop (dropping it steps down).
    first_leadership: Option<LeadershipLoop>,
    second_api: TaskApi,
    worker: Arc<FirstAttemptLost>,
    _second_coordinator: StartedCoordinator,
}

async fn coordinator(
    name: &str,
    registry: &MemoryRegistry,
    router: &Arc<Router>,
) -> (StartedCoordinator, TaskApi) {
    let registry: Arc<dyn Registry> = Arc::new(registry.clone());
    let config = CoordinatorConfig::default();
    let limits = config.limits.clone();
    let spawner = Spawner::new(registry.clone(), router.clone())
        .await
        .unwrap();
    let started = spawner
        .coordinator(AgentId::new(name), config, "in-process")
        .await
        .unwrap();
    let api = TaskApi::new(registry, Some(started.handle.clone()), limits);
    (started, api)
}

/// Two coordinator nodes and a worker on the second; the first leads and
/// has a task whose only attempt is running on the worker.
async fn leader_with_a_running_task() -> (Cluster, agentmesh_core::TaskId) {
    let first = MemoryRegistry::new();
    let second = first.join();
    let router = Router::new(first.membership(), MailboxConfig::default());
    let worker = Arc::new(FirstAttemptLost {
        id: AgentId::new("worker"),
        router: router.clone(),
        seen: Mutex::new(Vec::new()),
        first_term: Mutex::new(None),
    });
    router.add_local(worker.id.clone(), worker.clone());
    second
        .register(AgentRegistration {
            id: worker.id.clone(),
            role: Role::Worker,
            level: None,
            capabilities: vec!["math.eval".into()],
            endpoint: "in-process".into(),
            load: 0,
            max_concurrency: 4,
            version: VERSION.into(),
            faults: Vec::new(),
            insecure: false,
            event_handlers: Vec::new(),
        })
        .await
        .unwrap();
    let (first_coordinator, first_api) = coordinator("coordinator-1", &first, &router).await;
    assert_eq!(first_api.route().await.unwrap(), Route::Here);
    let (second_coordinator, second_api) = coordinator("coordinator-2", &second, &router).await;
    assert_eq!(
        second_api.route().await.unwrap(),
        Route::Leader {
            id: AgentId::new("coordinator-1"),
            endpoint: "in-process".into()
        },
        "the second coordinator is a standby that knows the leader"
    );
    let id = first_api
        .submit(
            r#"{"name":"t","tasks":[{"id":"x","capability":"math.eval","input":{"expr":"6*7"}}]}"#,
        )
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while worker.seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first attempt to reach the worker");
    let cluster = Cluster {
        first,
        first_leadership: Some(first_coordinator.leadership),
        second_api,
        worker,
        _second_coordinator: second_coordinator,
    };
    (cluster, id)
}

async fn assert_resumed_by_the_standby(cluster: &Cluster, id: &agentmesh_core::TaskId) {
    let record = tokio::time::timeout(WAIT, cluster.second_api.outcome(id, 0))
        .await
        .expect("the standby to finish the task")
        .unwrap();
    assert_eq!(record.status, Status::Completed, "{record:?}");
    assert_eq!(record.result(), Some(serde_json::json!({"value": 42})));
    let subtask = &record.subtasks[0];
    assert_eq!(subtask.attempts, 2, "the running attempt started again");
    assert_eq!(subtask.restarts, 1, "and counted as a restart");
    assert_eq!(
        *cluster.worker.seen.lock().unwrap(),
        vec![
            ("coordinator-1".to_owned(), 1),
            ("coordinator-2".to_owned(), 2)
        ],
        "the second attempt came from the new leader"
    );
    assert_eq!(cluster.second_api.route().await.unwrap(), Route::Here);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_resumes_the_tasks_of_a_leader_that_died() {
    let (cluster, id) = leader_with_a_running_task().await;
    // The leader's node goes away: its registrations and its term end.
    cluster.first.shutdown().await;
    assert_resumed_by_the_standby(&cluster, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_steps_down_hands_its_tasks_to_the_standby() {
    let (mut cluster, id) = leader_with_a_running_task().await;
    let leadership = cluster.first_leadership.take().unwrap();
    leadership.step_down().await;
    assert_resumed_by_the_standby(&cluster, &id).await;
}
