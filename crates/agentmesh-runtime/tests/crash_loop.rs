//! A task that takes its coordinator down would be resumed by every new
//! leader and take each one down in turn. Each takeover is counted in the
//! record (durably, before the task's work is done again); past
//! `max_task_resumes` takeovers without a subtask completing, the new
//! leader fails the task instead of resuming it.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::task::{Status, TaskLimits, TaskRecord, parse_and_validate};
use agentmesh_core::{AgentId, AgentRegistration, Role, TaskId};
use agentmesh_registry::{MemoryRegistry, Registry};
use agentmesh_runtime::CoordinatorConfig;
use agentmesh_runtime::MailboxConfig;
use agentmesh_runtime::api::task::TaskApi;
use agentmesh_runtime::node::agents::{Spawner, VERSION};
use agentmesh_runtime::tools::ToolBox;
use agentmesh_runtime::transport::Router;

const WAIT: Duration = Duration::from_secs(10);

/// A record as a crashed leader left it: its subtask running, taken over
/// `resumes` times already.
fn left_behind(id: &str, resumes: u32) -> TaskRecord {
    let file = parse_and_validate(
        r#"{"name":"t","tasks":[{"id":"x","capability":"math.eval","input":{"expr":"6*7"}}]}"#,
        &TaskLimits::default(),
        &|_| true,
        &Vec::new,
    )
    .unwrap();
    let mut record = TaskRecord::new(TaskId::new(id), file, 1000);
    record.start_attempt(0, 1, AgentId::new("gone"), 1001);
    record.resumes = resumes;
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_resumed_too_often_is_failed_and_one_within_the_bound_completes() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let looping = left_behind("looping", 3);
    let within = left_behind("within", 2);
    registry
        .put_tasks(&[Arc::new(looping), Arc::new(within)])
        .await
        .unwrap();

    let router = Router::new(registry.membership(), MailboxConfig::default());
    let spawner = Spawner::new(registry.clone(), router.clone())
        .await
        .unwrap();
    let _worker = spawner
        .worker(
            AgentRegistration {
                id: AgentId::new("worker"),
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
            },
            &ToolBox::builtin(&[]),
            Default::default(),
            None,
        )
        .await
        .unwrap();
    let config = CoordinatorConfig::default();
    assert_eq!(config.max_task_resumes, 3);
    let limits = config.limits.clone();
    let coordinator = spawner
        .coordinator(AgentId::new("coordinator"), config, "in-process")
        .await
        .unwrap();
    let api = TaskApi::new(registry.clone(), Some(coordinator.handle.clone()), limits);

    let failed = tokio::time::timeout(WAIT, api.outcome(&TaskId::new("looping"), 0))
        .await
        .expect("the looping task to end")
        .unwrap();
    assert_eq!(failed.status, Status::Failed, "{failed:?}");
    assert_eq!(failed.resumes, 4);
    assert_eq!(
        failed.error.as_deref(),
        Some(
            "task was resumed 4 times by new coordinator leaders without a subtask finishing, over the limit --max-task-resumes = 3; failed to protect the cluster"
        )
    );
    assert_eq!(failed.subtasks[0].attempts, 1, "not started again");

    let done = tokio::time::timeout(WAIT, api.outcome(&TaskId::new("within"), 0))
        .await
        .expect("the task within the bound to end")
        .unwrap();
    assert_eq!(done.status, Status::Completed, "{done:?}");
    assert_eq!(done.resumes, 0, "progress resets the count");
    let durable = registry
        .get_task(&TaskId::new("looping"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(durable.status, Status::Failed);
}
