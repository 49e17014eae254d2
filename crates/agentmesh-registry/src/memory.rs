//! The in-memory registry: the embedded default of `agentmesh local` and a
//! unit-test aid. Clones share one cluster state, so several nodes in one
//! process see each other exactly as they would through etcd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentmesh_core::task::TaskRecord;
use agentmesh_core::{AgentId, AgentRegistration, Membership, TaskId};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::{Registry, RegistryError, TaskWatch};

/// Record changes buffered for slow watchers; a watcher that falls further
/// behind re-reads the current record instead of failing.
const WATCH_BUFFER: usize = 1024;

#[derive(Clone)]
pub struct MemoryRegistry {
    shared: Arc<Shared>,
}

struct Shared {
    membership: watch::Sender<Arc<Membership>>,
    tasks: Mutex<HashMap<TaskId, Arc<TaskRecord>>>,
    changes: broadcast::Sender<Arc<TaskRecord>>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    pub fn new() -> Self {
        let (membership, _) = watch::channel(Arc::new(Membership::default()));
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        Self {
            shared: Arc::new(Shared {
                membership,
                tasks: Mutex::new(HashMap::new()),
                changes,
            }),
        }
    }

    fn current(&self, id: &TaskId) -> Option<Arc<TaskRecord>> {
        self.shared
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, agent: AgentRegistration) -> Result<(), RegistryError> {
        self.shared.membership.send_modify(|view| {
            Arc::make_mut(view).agents.insert(agent.id.clone(), agent);
        });
        Ok(())
    }

    async fn deregister(&self, id: &AgentId) -> Result<(), RegistryError> {
        self.shared
            .membership
            .send_if_modified(|view| Arc::make_mut(view).agents.remove(id).is_some());
        Ok(())
    }

    fn membership(&self) -> watch::Receiver<Arc<Membership>> {
        self.shared.membership.subscribe()
    }

    async fn put_tasks(&self, records: &[Arc<TaskRecord>]) -> Result<(), RegistryError> {
        let mut tasks = self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            tasks.insert(record.id.clone(), record.clone());
            // No receiver is not an error: nobody watches.
            let _ = self.shared.changes.send(record.clone());
        }
        Ok(())
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, RegistryError> {
        Ok(self.current(id).map(|r| (*r).clone()))
    }

    async fn watch_task(&self, id: &TaskId) -> Result<TaskWatch, RegistryError> {
        // Subscribe before reading the current record so no change falls in
        // between; revisions filter out what the first read already covered.
        let changes = BroadcastStream::new(self.shared.changes.subscribe());
        let first = self.current(id);
        let mut last_revision = first.as_ref().map_or(0, |r| r.revision);
        let this = self.clone();
        let id = id.clone();
        let updates = changes.filter_map(move |change| {
            let record = match change {
                Ok(record) if record.id == id => Some(record),
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(_)) => this.current(&id),
            };
            let fresh = record.filter(|r| r.revision > last_revision);
            if let Some(r) = &fresh {
                last_revision = r.revision;
            }
            futures::future::ready(fresh.map(|r| Ok((*r).clone())))
        });
        let first = futures::stream::iter(first.map(|r| Ok((*r).clone())));
        Ok(first.chain(updates).boxed())
    }

    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use agentmesh_core::Role;
    use agentmesh_core::task::{TaskLimits, parse_and_validate};

    use super::*;

    fn agent(id: &str) -> AgentRegistration {
        AgentRegistration {
            id: AgentId::new(id),
            role: Role::Worker,
            level: None,
            capabilities: vec!["c".into()],
            endpoint: "local".into(),
            load: 0,
            max_concurrency: 1,
            version: "test".into(),
        }
    }

    fn record() -> TaskRecord {
        let file = parse_and_validate(
            r#"{"name":"t","tasks":[{"id":"a","capability":"c"}]}"#,
            &TaskLimits::default(),
            &|_| true,
            &Vec::new,
        )
        .unwrap();
        TaskRecord::new(TaskId::new("t1"), file, 0)
    }

    #[tokio::test]
    async fn clones_share_membership() {
        let a = MemoryRegistry::new();
        let b = a.clone();
        let mut view = b.membership();
        a.register(agent("w1")).await.unwrap();
        view.changed().await.unwrap();
        assert!(view.borrow().agents.contains_key(&AgentId::new("w1")));
        a.deregister(&AgentId::new("w1")).await.unwrap();
        view.changed().await.unwrap();
        assert!(view.borrow().agents.is_empty());
    }

    #[tokio::test]
    async fn watch_yields_current_then_every_later_revision() {
        let registry = MemoryRegistry::new();
        let mut r = record();
        registry.put_tasks(&[Arc::new(r.clone())]).await.unwrap();
        let mut watch = registry.watch_task(&r.id).await.unwrap();
        assert_eq!(watch.next().await.unwrap().unwrap().revision, 1);
        r.start_attempt(0, AgentId::new("w"), 1);
        registry.put_tasks(&[Arc::new(r.clone())]).await.unwrap();
        assert_eq!(watch.next().await.unwrap().unwrap().revision, 2);
        assert_eq!(registry.get_task(&r.id).await.unwrap(), Some(r));
    }
}
