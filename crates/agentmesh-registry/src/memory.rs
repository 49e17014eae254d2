//! The in-memory registry: the embedded default of `agentmesh local` and a
//! unit-test aid.
//!
//! Every registry made by [`MemoryRegistry::new`] is one in-process cluster
//! with one node. [`MemoryRegistry::join`] adds another node to the same
//! cluster; clones are handles of the same node. All nodes see the same
//! membership and task records, exactly as they would through etcd.
//!
//! # Coordinator election
//!
//! Leadership is a slot in the cluster state: [`Registry::campaign`] takes
//! it when it is free and otherwise waits until it is. Each term gets the
//! next value of a counter as its fence revision. Leadership ends, and its
//! `held` flag turns `false`, when the node resigns, shuts down, or is
//! dropped (its last handle goes away): the in-process counterparts of a
//! resign, a lease revoke and a lease expiry.
//!
//! # Reputation records
//!
//! Records live in the cluster state, and [`Registry::update_reputation`]
//! reads, updates and writes a record under one lock, so concurrent
//! updates from any node take turns and none is lost. It is the limit
//! case of etcd's compare-and-swap: a swap that never finds the record
//! changed, so the update runs exactly once per call and the call is never
//! [`RegistryError::Contended`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agentmesh_core::reputation::Reputation;
use agentmesh_core::task::TaskRecord;
use agentmesh_core::{AgentId, AgentRegistration, Membership, TaskId};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tracing::info;

use crate::{Fence, Leadership, Registry, RegistryError, ReputationEntry, TaskWatch};

/// Record changes buffered for slow watchers; a watcher that falls further
/// behind re-reads the current record instead of failing.
const WATCH_BUFFER: usize = 1024;

/// The fence key of every in-memory leadership; terms differ by revision.
const FENCE_KEY: &str = "memory/election/coordinator";

#[derive(Clone)]
pub struct MemoryRegistry {
    shared: Arc<Shared>,
    node: Arc<Node>,
}

/// The cluster state every node of one in-process cluster shares.
struct Shared {
    membership: watch::Sender<Arc<Membership>>,
    tasks: Mutex<HashMap<TaskId, Arc<TaskRecord>>>,
    changes: broadcast::Sender<Arc<TaskRecord>>,
    /// Locked before `tasks` when both are needed, so a fenced write and a
    /// change of leader never interleave.
    election: Mutex<Election>,
    leader: watch::Sender<Option<AgentId>>,
    next_node: AtomicU64,
    /// Reputation records by agent and capability.
    reputations: Mutex<BTreeMap<(AgentId, String), Reputation>>,
}

#[derive(Default)]
struct Election {
    holder: Option<Holder>,
    /// Terms begun so far; the latest term's fence revision.
    terms: i64,
}

struct Holder {
    node: u64,
    fence: Fence,
    held: watch::Sender<bool>,
}

/// One node; dropped with its last handle, which frees its leadership.
struct Node {
    id: u64,
    shared: Arc<Shared>,
    /// Turns `true` at shutdown, ending waiting campaigns.
    closed: watch::Sender<bool>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shared.release_node(self.id, "node dropped");
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    /// A new in-process cluster, and its first node.
    pub fn new() -> Self {
        let (membership, _) = watch::channel(Arc::new(Membership::default()));
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        let (leader, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            membership,
            tasks: Mutex::new(HashMap::new()),
            changes,
            election: Mutex::new(Election::default()),
            leader,
            next_node: AtomicU64::new(1),
            reputations: Mutex::new(BTreeMap::new()),
        });
        Self {
            node: Node::new(shared.clone()),
            shared,
        }
    }

    /// Another node of the same cluster: it shares membership, task records
    /// and the election, but campaigns, resigns and shuts down on its own.
    pub fn join(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            node: Node::new(self.shared.clone()),
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

    fn write(&self, records: &[Arc<TaskRecord>]) {
        let mut tasks = self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            tasks.insert(record.id.clone(), record.clone());
            // No receiver is not an error: nobody watches.
            let _ = self.shared.changes.send(record.clone());
        }
    }

    /// Takes leadership for `candidate` if it is free or already this
    /// node's; `None` while another node leads.
    fn try_lead(&self, candidate: &AgentId) -> Option<Leadership> {
        let mut election = self.shared.lock_election();
        let (fence, held) = match &election.holder {
            Some(holder) if holder.node == self.node.id => {
                (holder.fence.clone(), holder.held.subscribe())
            }
            Some(_) => return None,
            None => {
                election.terms += 1;
                let fence = Fence {
                    key: FENCE_KEY.to_owned(),
                    revision: election.terms,
                    lease: i64::try_from(self.node.id).unwrap_or(i64::MAX),
                };
                let (held, receiver) = watch::channel(true);
                election.holder = Some(Holder {
                    node: self.node.id,
                    fence: fence.clone(),
                    held,
                });
                info!(candidate = %candidate, term = fence.revision, "won coordinator leadership");
                (fence, receiver)
            }
        };
        self.shared.leader.send_if_modified(|leader| {
            let changed = leader.as_ref() != Some(candidate);
            *leader = Some(candidate.clone());
            changed
        });
        Some(Leadership {
            candidate: candidate.clone(),
            fence,
            held,
        })
    }
}

impl Node {
    fn new(shared: Arc<Shared>) -> Arc<Self> {
        let id = shared.next_node.fetch_add(1, Ordering::Relaxed);
        let (closed, _) = watch::channel(false);
        Arc::new(Self { id, shared, closed })
    }
}

impl Shared {
    fn lock_election(&self) -> std::sync::MutexGuard<'_, Election> {
        self.election.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_reputations(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(AgentId, String), Reputation>> {
        self.reputations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the leadership of `node`, if it leads.
    fn release_node(&self, node: u64, why: &str) {
        let mut election = self.lock_election();
        if election.holder.as_ref().is_some_and(|h| h.node == node) {
            self.release(&mut election, why);
        }
    }

    fn release(&self, election: &mut Election, why: &str) {
        if let Some(holder) = election.holder.take() {
            holder.held.send_replace(false);
            self.leader.send_replace(None);
            info!(
                term = holder.fence.revision,
                reason = why,
                "coordinator leadership ended"
            );
        }
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
        self.write(records);
        Ok(())
    }

    async fn put_tasks_fenced(
        &self,
        records: &[Arc<TaskRecord>],
        fence: &Fence,
    ) -> Result<(), RegistryError> {
        let election = self.shared.lock_election();
        if election.holder.as_ref().map(|h| &h.fence) != Some(fence) {
            return Err(RegistryError::NotLeader {
                fence_revision: fence.revision,
                written: 0,
            });
        }
        // The election lock is held across the write: no resign or
        // takeover can slip in between the check and the write.
        self.write(records);
        drop(election);
        Ok(())
    }

    async fn unfinished_tasks(&self) -> Result<Vec<TaskRecord>, RegistryError> {
        let tasks = self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let mut unfinished: Vec<TaskRecord> = tasks
            .values()
            .filter(|r| !r.status.is_terminal())
            .map(|r| (**r).clone())
            .collect();
        drop(tasks);
        unfinished.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(unfinished)
    }

    async fn campaign(&self, candidate: &AgentId) -> Result<Leadership, RegistryError> {
        let mut leader = self.shared.leader.subscribe();
        let mut closed = self.node.closed.subscribe();
        loop {
            if *closed.borrow_and_update() {
                return Err(RegistryError::Closed);
            }
            // Mark the current leader seen before looking, so a release
            // right after the look wakes the wait below.
            leader.mark_unchanged();
            if let Some(leadership) = self.try_lead(candidate) {
                return Ok(leadership);
            }
            tokio::select! {
                // The sender lives in `shared`, which this handle keeps.
                _ = leader.changed() => {}
                _ = closed.changed() => {}
            }
        }
    }

    async fn resign(&self, leadership: &Leadership) -> Result<(), RegistryError> {
        let mut election = self.shared.lock_election();
        if election.holder.as_ref().map(|h| &h.fence) == Some(&leadership.fence) {
            self.shared.release(&mut election, "resigned");
        }
        Ok(())
    }

    fn leader(&self) -> watch::Receiver<Option<AgentId>> {
        self.shared.leader.subscribe()
    }

    /// Memory is always there.
    fn store_reachable(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
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

    async fn reputation(
        &self,
        agent: &AgentId,
        capability: &str,
    ) -> Result<Option<Reputation>, RegistryError> {
        Ok(self
            .shared
            .lock_reputations()
            .get(&(agent.clone(), capability.to_owned()))
            .copied())
    }

    async fn reputations(&self) -> Result<Vec<ReputationEntry>, RegistryError> {
        Ok(self
            .shared
            .lock_reputations()
            .iter()
            .map(|((agent, capability), reputation)| ReputationEntry {
                agent: agent.clone(),
                capability: capability.clone(),
                reputation: *reputation,
            })
            .collect())
    }

    /// Runs `update` under the lock of the cluster's records: writers of
    /// every node take turns, so there is never a conflict to retry and
    /// never [`RegistryError::Contended`]. (Computing outside the lock and
    /// comparing versions, as etcd must, lets a writer that is slower
    /// between read and write lose every attempt to a faster one; in one
    /// process nothing requires that.) `update` must not call into the
    /// registry's reputation methods, as the trait requires: here that
    /// would deadlock.
    async fn update_reputation(
        &self,
        agent: &AgentId,
        capability: &str,
        update: &(dyn Fn(Option<Reputation>) -> Reputation + Send + Sync),
    ) -> Result<Reputation, RegistryError> {
        let mut records = self.shared.lock_reputations();
        let slot = (agent.clone(), capability.to_owned());
        // A panicking `update` leaves the record as it was.
        let next = update(records.get(&slot).copied());
        records.insert(slot, next);
        Ok(next)
    }

    async fn shutdown(&self) {
        self.node.closed.send_replace(true);
        self.shared.release_node(self.node.id, "node shut down");
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_core::Role;
    use agentmesh_core::task::{Status, TaskLimits, parse_and_validate};

    use futures::FutureExt;

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

    fn pending_campaign(
        registry: &MemoryRegistry,
        id: &str,
    ) -> tokio::task::JoinHandle<Result<Leadership, RegistryError>> {
        let registry = registry.clone();
        let id = AgentId::new(id);
        tokio::spawn(async move { registry.campaign(&id).await })
    }

    /// Lets spawned tasks run until none can make progress.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn one_node_leads_until_it_resigns_or_goes_away() {
        let a = MemoryRegistry::new();
        let b = a.join();
        let c = a.join();
        assert_eq!(*b.leader().borrow(), None);

        let first = a.campaign(&AgentId::new("coord-a")).await.unwrap();
        assert!(first.is_held());
        assert_eq!(*b.leader().borrow(), Some(AgentId::new("coord-a")));
        // The same node campaigning again is the same term.
        let same = a.clone().campaign(&AgentId::new("coord-a")).await.unwrap();
        assert_eq!(same.fence, first.fence);

        let waiting = pending_campaign(&b, "coord-b");
        settle().await;
        assert!(!waiting.is_finished(), "b must wait while a leads");

        a.resign(&first).await.unwrap();
        assert!(!first.is_held() && !same.is_held());
        let second = waiting.await.unwrap().unwrap();
        assert!(second.fence.revision > first.fence.revision);
        assert_eq!(*a.leader().borrow(), Some(AgentId::new("coord-b")));
        a.resign(&first).await.unwrap();
        assert!(second.is_held(), "a stale resign must not end b's term");

        // Dropping every handle of the leading node frees leadership.
        let waiting = pending_campaign(&c, "coord-c");
        settle().await;
        assert!(!waiting.is_finished());
        drop(b);
        let third = waiting.await.unwrap().unwrap();
        assert!(!second.is_held());
        assert_eq!(third.candidate, AgentId::new("coord-c"));

        // So does shutdown, which also ends the node's own campaigns.
        let waiting = pending_campaign(&a, "coord-a");
        settle().await;
        c.shutdown().await;
        assert!(!third.is_held());
        let fourth = waiting.await.unwrap().unwrap();
        assert!(fourth.is_held());
        assert_eq!(*a.leader().borrow(), Some(AgentId::new("coord-a")));
        assert!(matches!(
            c.campaign(&AgentId::new("coord-c")).await,
            Err(RegistryError::Closed)
        ));
    }

    #[tokio::test]
    async fn fenced_writes_need_the_current_term() {
        let a = MemoryRegistry::new();
        let b = a.join();
        let r = Arc::new(record());
        let old = a.campaign(&AgentId::new("coord-a")).await.unwrap();
        a.put_tasks_fenced(std::slice::from_ref(&r), &old.fence)
            .await
            .unwrap();
        a.resign(&old).await.unwrap();
        let new = b.campaign(&AgentId::new("coord-b")).await.unwrap();

        let mut changed = (*r).clone();
        changed.revision = 2;
        match a
            .put_tasks_fenced(&[Arc::new(changed.clone())], &old.fence)
            .await
        {
            Err(RegistryError::NotLeader {
                fence_revision,
                written: 0,
            }) => assert_eq!(fence_revision, old.fence.revision),
            other => panic!("expected NotLeader, got {other:?}"),
        }
        assert_eq!(
            a.get_task(&r.id).await.unwrap().map(|r| r.revision),
            Some(1)
        );
        b.put_tasks_fenced(&[Arc::new(changed)], &new.fence)
            .await
            .unwrap();
        assert_eq!(
            a.get_task(&r.id).await.unwrap().map(|r| r.revision),
            Some(2)
        );
    }

    #[tokio::test]
    async fn unfinished_tasks_leave_out_terminal_records() {
        let registry = MemoryRegistry::new();
        let statuses = [
            Status::Completed,
            Status::Running,
            Status::Failed,
            Status::Pending,
            Status::Cancelled,
        ];
        let records: Vec<Arc<TaskRecord>> = statuses
            .iter()
            .enumerate()
            .map(|(i, status)| {
                let mut r = record();
                r.id = TaskId::new(format!("t{i}"));
                r.status = *status;
                Arc::new(r)
            })
            .collect();
        registry.put_tasks(&records).await.unwrap();
        let ids: Vec<String> = registry
            .unfinished_tasks()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id.to_string())
            .collect();
        assert_eq!(ids, ["t1", "t3"]);
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

    /// The update every coordinator applies in the tests below: one more
    /// agreement, counted.
    fn agree(current: Option<Reputation>) -> Reputation {
        let mut next = current.unwrap_or_else(|| Reputation::new(0));
        next.alpha += 1.0;
        next.updates += 1;
        next.updated_ms += 1;
        next
    }

    #[tokio::test]
    async fn reputation_updates_create_then_change_the_record() {
        let a = MemoryRegistry::new();
        let b = a.join();
        let worker = AgentId::new("worker-1");
        assert_eq!(a.reputation(&worker, "math.eval").await.unwrap(), None);
        assert!(a.reputations().await.unwrap().is_empty());

        let created = a
            .update_reputation(&worker, "math.eval", &|current| {
                assert_eq!(current, None, "a new record starts from nothing");
                Reputation::new(7)
            })
            .await
            .unwrap();
        assert_eq!(created, Reputation::new(7));
        let updated = b
            .update_reputation(&worker, "math.eval", &agree)
            .await
            .unwrap();
        assert_eq!(
            (updated.alpha, updated.beta, updated.updates),
            (2.0, 1.0, 1)
        );
        assert_eq!(
            a.reputation(&worker, "math.eval").await.unwrap(),
            Some(updated)
        );
        assert_eq!(a.reputation(&worker, "json.query").await.unwrap(), None);

        let other = b
            .update_reputation(&AgentId::new("worker-0"), "math.eval", &agree)
            .await
            .unwrap();
        let listed = a.reputations().await.unwrap();
        assert_eq!(
            listed,
            [
                ReputationEntry {
                    agent: AgentId::new("worker-0"),
                    capability: "math.eval".into(),
                    reputation: other,
                },
                ReputationEntry {
                    agent: worker,
                    capability: "math.eval".into(),
                    reputation: updated,
                },
            ]
        );
    }

    /// Two nodes on two OS threads, each making 50 updates of one record
    /// at the same time (the memory registry never waits, so no runtime is
    /// needed to drive its futures).
    #[test]
    fn concurrent_reputation_updates_from_two_nodes_lose_nothing() {
        const PER_NODE: u64 = 50;
        let first = MemoryRegistry::new();
        let nodes = [first.clone(), first.join()];
        let calls = AtomicU64::new(0);
        let start = std::sync::Barrier::new(nodes.len());
        let mut written: Vec<u64> = std::thread::scope(|scope| {
            let runs: Vec<_> = nodes
                .iter()
                .map(|node| {
                    let (calls, start) = (&calls, &start);
                    scope.spawn(move || {
                        start.wait();
                        let update = |current| {
                            calls.fetch_add(1, Ordering::Relaxed);
                            // Widens the window between read and write, as
                            // a network round trip would: a blind
                            // read-then-write loses updates here.
                            std::thread::yield_now();
                            agree(current)
                        };
                        (0..PER_NODE)
                            .map(|_| {
                                node.update_reputation(&AgentId::new("w"), "c", &update)
                                    .now_or_never()
                                    .expect("the memory registry never waits")
                                    .unwrap()
                                    .updates
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            runs.into_iter()
                .flat_map(|run| run.join().unwrap())
                .collect()
        });
        let last = first
            .reputation(&AgentId::new("w"), "c")
            .now_or_never()
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(last.updates, 2 * PER_NODE, "updates were lost");
        assert_eq!(last.alpha, 1.0 + (2 * PER_NODE) as f64);
        // Every write built on the one before it: each count once.
        written.sort_unstable();
        assert_eq!(written, (1..=2 * PER_NODE).collect::<Vec<_>>());
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2 * PER_NODE,
            "one call per update"
        );
    }
}
