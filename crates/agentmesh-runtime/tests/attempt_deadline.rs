//! A worker that takes an assignment and never answers (hung, or cut off
//! while its lease lives on) must not hold a task forever: after the
//! attempt timeout the coordinator starts the subtask on another worker
//! and tells the silent one to cancel.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_core::task::Status;
use agentmesh_core::{AgentId, AgentRegistration, Role};
use agentmesh_proto::v1::Envelope;
use agentmesh_registry::{MemoryRegistry, Registry};
use agentmesh_runtime::CoordinatorConfig;
use agentmesh_runtime::MailboxConfig;
use agentmesh_runtime::api::task::TaskApi;
use agentmesh_runtime::node::agents::{Spawner, VERSION};
use agentmesh_runtime::tools::ToolBox;
use agentmesh_runtime::transport::{DeliverError, LocalMailbox, Router};

/// Accepts every envelope and does nothing with it.
struct Silent(Mutex<Vec<String>>);

impl LocalMailbox for Silent {
    fn deliver(&self, envelope: Envelope) -> Result<(), DeliverError> {
        self.0.lock().unwrap().push(envelope.kind);
        Ok(())
    }
}

fn registration(id: &str, max_concurrency: u32) -> AgentRegistration {
    AgentRegistration {
        id: AgentId::new(id),
        role: Role::Worker,
        level: None,
        capabilities: vec!["math.eval".into()],
        endpoint: "in-process".into(),
        load: 0,
        max_concurrency,
        version: VERSION.into(),
        faults: Vec::new(),
        insecure: false,
        event_handlers: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_loses_its_attempt_to_another_after_the_attempt_timeout() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let router = Router::new(registry.membership(), MailboxConfig::default());
    // The silent worker registers first and alone, so it gets the first attempt.
    let silent = Arc::new(Silent(Mutex::new(Vec::new())));
    router.add_local(AgentId::new("silent"), silent.clone());
    registry.register(registration("silent", 1)).await.unwrap();
    let config = CoordinatorConfig {
        attempt_timeout: Duration::from_millis(300),
        ..CoordinatorConfig::default()
    };
    let limits = config.limits.clone();
    let spawner = Spawner::new(registry.clone(), router.clone())
        .await
        .unwrap();
    let coordinator = spawner
        .coordinator(AgentId::new("coordinator"), config, "in-process")
        .await
        .unwrap();
    let api = TaskApi::new(registry.clone(), Some(coordinator.handle.clone()), limits);
    let id = api
        .submit(
            r#"{"name":"t","tasks":[{"id":"x","capability":"math.eval","input":{"expr":"6*7"}}]}"#,
        )
        .await
        .unwrap();
    let started = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if !silent.0.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        started.is_ok(),
        "the silent worker never got the assignment"
    );
    // Now a real worker joins.
    let _worker = spawner
        .worker(
            registration("honest", 4),
            &ToolBox::builtin(&[]),
            Default::default(),
            None,
        )
        .await
        .unwrap();
    let record = tokio::time::timeout(Duration::from_secs(10), api.outcome(&id, 0))
        .await
        .expect("the task to end")
        .unwrap();
    assert_eq!(record.status, Status::Completed, "{record:?}");
    let subtask = &record.subtasks[0];
    assert_eq!(subtask.attempts, 2);
    assert_eq!(
        subtask.tried,
        vec![AgentId::new("silent"), AgentId::new("honest")]
    );
    assert_eq!(
        *silent.0.lock().unwrap(),
        vec!["subtask.assign".to_owned(), "subtask.cancel".to_owned()],
        "the silent worker is told to cancel its attempt"
    );
}
