//! The in-memory registry: the embedded default of `agentmesh local` and a
//! unit-test aid.
//!
//! Every registry made by [`MemoryRegistry::new`] is one in-process cluster
//! with one node. [`MemoryRegistry::join`] adds another node to the same
//! cluster; clones are handles of the same node. All nodes see the same
//! membership and task records, exactly as they would through etcd.
//!
//! # Membership
//!
//! The cluster state remembers which node registered each agent, as etcd
//! does with the key's lease. A node may register (and update) agents under
//! ids that are free or its own; an id another node registered is refused
//! with [`RegistryError::DuplicateAgent`], and a deregistration removes
//! only the node's own agents. A node's agents leave the view when it shuts
//! down or is dropped (its last handle goes away), and a node that shut
//! down registers nothing more. `agentmesh local` registers all its agents
//! through clones of one registry: one node, which owns every id; nodes
//! made by [`MemoryRegistry::join`] play separate processes.
//!
//! # Coordinator election
//!
//! Leadership is a slot in the cluster state: [`Election::campaign`] takes
//! it when it is free and otherwise waits until it is. Each term gets the
//! next value of a counter as its fence revision. Leadership ends, and its
//! `held` flag turns `false`, when the node resigns, shuts down, or is
//! dropped (its last handle goes away): the in-process counterparts of a
//! resign, a lease revoke and a lease expiry.
//!
//! # Reputation records
//!
//! Records live in the cluster state, and
//! [`ReputationStore::update_reputation`] reads, updates and writes a record under one lock, so concurrent
//! updates from any node take turns and none is lost. It is the limit
//! case of etcd's compare-and-swap: a swap that never finds the record
//! changed, so the update runs exactly once per call and the call is never
//! [`RegistryError::Contended`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agentmesh_core::events::{DeadLetter, EventRecord, Subscription};
use agentmesh_core::reputation::Reputation;
use agentmesh_core::request::memory::MemoryEntry;
use agentmesh_core::task::TaskRecord;
use agentmesh_core::task::listing::{
    IdempotencyKey, ListCursor, Next, PageBuilder, TaskPage, TaskQuery,
};
use agentmesh_core::{AgentId, AgentRegistration, ClientId, Membership, TaskId};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tracing::info;

use crate::ended_index::EndedIndex;
use crate::{
    AgentDirectory, Election, EndedTask, EndedTasks, EventStore, EventWrite, Fence, Leadership,
    Registry, RegistryError, ReputationEntry, ReputationStore, RequestMemoryStore, TaskKeys,
    TaskStore, TaskWatch,
};

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

/// What etcd keeps beside the records (`keys::task_index`,
/// `keys::idempotency`).
#[derive(Default)]
struct Listing {
    /// Every stored task, newest first.
    order: BTreeSet<(Reverse<u64>, TaskId)>,
    idempotency: HashMap<(ClientId, IdempotencyKey), TaskId>,
}

/// The cluster state every node of one in-process cluster shares.
struct Shared {
    membership: watch::Sender<Arc<Membership>>,
    /// The node that registered each agent of `membership`. Locked before
    /// `membership` is changed, so the two always agree.
    owners: Mutex<HashMap<AgentId, u64>>,
    tasks: Mutex<HashMap<TaskId, Arc<TaskRecord>>>,
    /// Ended tasks by end time, with their record's size as JSON (what
    /// etcd would store). Locked after `tasks`.
    ended: Mutex<EndedIndex>,
    /// The listing order and idempotency keys, as etcd keeps them beside
    /// the records. Locked after `tasks`.
    listing: Mutex<Listing>,
    changes: broadcast::Sender<Arc<TaskRecord>>,
    /// Locked before `tasks` when both are needed, so a fenced write and a
    /// change of leader never interleave.
    election: Mutex<ElectionState>,
    leader: watch::Sender<Option<AgentId>>,
    next_node: AtomicU64,
    /// Reputation records by agent and capability.
    reputations: Mutex<BTreeMap<(AgentId, String), Reputation>>,
    /// Event records and dead letters, ordered as their etcd keys are.
    /// Locked after `election`.
    events: Mutex<EventState>,
    /// The coordination memory, by task.
    request_memory: Mutex<BTreeMap<TaskId, MemoryEntry>>,
}

#[derive(Default)]
struct EventState {
    pending: BTreeMap<(u64, String), EventRecord>,
    dead: BTreeMap<(Reverse<u64>, String, Subscription), DeadLetter>,
}

#[derive(Default)]
struct ElectionState {
    holder: Option<Holder>,
    /// Terms begun so far; the latest term's fence revision.
    terms: i64,
}

struct Holder {
    node: u64,
    fence: Fence,
    held: watch::Sender<bool>,
}

/// One node; dropped with its last handle, which frees its leadership and
/// its agents' ids.
struct Node {
    id: u64,
    shared: Arc<Shared>,
    /// Turns `true` at shutdown, ending waiting campaigns.
    closed: watch::Sender<bool>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shared.release_node(self.id, "node dropped");
        self.shared.release_agents(self.id);
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
            owners: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            ended: Mutex::default(),
            listing: Mutex::default(),
            changes,
            election: Mutex::new(ElectionState::default()),
            leader,
            next_node: AtomicU64::new(1),
            reputations: Mutex::new(BTreeMap::new()),
            events: Mutex::new(EventState::default()),
            request_memory: Mutex::new(BTreeMap::new()),
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
        let mut ended = self.shared.lock_ended();
        let mut listing = self.shared.lock_listing();
        for record in records {
            let keys = TaskKeys::of(record);
            listing
                .order
                .insert((Reverse(keys.created_ms), record.id.clone()));
            if let Some(scoped) = keys.idempotency.clone() {
                listing
                    .idempotency
                    .entry(scoped)
                    .or_insert_with(|| record.id.clone());
            }
            let terminal = record.status.is_terminal();
            // The size etcd would store: the record as JSON.
            let bytes = if terminal {
                serde_json::to_vec(record.as_ref()).map_or(0, |json| json.len())
            } else {
                0
            };
            let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
            ended.note(&record.id, terminal, record.updated_ms, bytes, 0, keys);
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
    fn lock_election(&self) -> std::sync::MutexGuard<'_, ElectionState> {
        self.election.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_reputations(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(AgentId, String), Reputation>> {
        self.reputations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The election state, locked, if `fence`'s term still stands; held
    /// through a fenced write so that a change of leader cannot interleave.
    fn lock_fenced(
        &self,
        fence: &Fence,
    ) -> Result<std::sync::MutexGuard<'_, ElectionState>, RegistryError> {
        let election = self.lock_election();
        if election.holder.as_ref().map(|h| &h.fence) != Some(fence) {
            return Err(RegistryError::NotLeader {
                fence_revision: fence.revision,
                written: 0,
            });
        }
        Ok(election)
    }

    fn lock_ended(&self) -> std::sync::MutexGuard<'_, EndedIndex> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_listing(&self) -> std::sync::MutexGuard<'_, Listing> {
        self.listing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_owners(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, u64>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes every agent `node` registered: what a lease revoke or
    /// expiry does with etcd.
    fn release_agents(&self, node: u64) {
        let mut owners = self.lock_owners();
        let gone: Vec<AgentId> = owners
            .iter()
            .filter(|(_, owner)| **owner == node)
            .map(|(id, _)| id.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            owners.remove(id);
        }
        self.membership.send_modify(|view| {
            let view = Arc::make_mut(view);
            for id in &gone {
                view.agents.remove(id);
            }
        });
    }

    /// Ends the leadership of `node`, if it leads.
    fn release_node(&self, node: u64, why: &str) {
        let mut election = self.lock_election();
        if election.holder.as_ref().is_some_and(|h| h.node == node) {
            self.release(&mut election, why);
        }
    }

    fn release(&self, election: &mut ElectionState, why: &str) {
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
impl AgentDirectory for MemoryRegistry {
    async fn register(&self, agent: AgentRegistration) -> Result<(), RegistryError> {
        if *self.node.closed.borrow() {
            return Err(RegistryError::Closed);
        }
        let mut owners = self.shared.lock_owners();
        match owners.get(&agent.id) {
            Some(owner) if *owner != self.node.id => {
                return Err(RegistryError::DuplicateAgent { id: agent.id });
            }
            Some(_) => {}
            None => {
                owners.insert(agent.id.clone(), self.node.id);
            }
        }
        self.shared.membership.send_if_modified(|view| {
            let changed = view.agents.get(&agent.id) != Some(&agent);
            if changed {
                Arc::make_mut(view).agents.insert(agent.id.clone(), agent);
            }
            changed
        });
        Ok(())
    }

    async fn deregister(&self, id: &AgentId) -> Result<(), RegistryError> {
        if *self.node.closed.borrow() {
            return Err(RegistryError::Closed);
        }
        let mut owners = self.shared.lock_owners();
        if owners.get(id) == Some(&self.node.id) {
            owners.remove(id);
            self.shared
                .membership
                .send_if_modified(|view| Arc::make_mut(view).agents.remove(id).is_some());
        }
        Ok(())
    }

    fn membership(&self) -> watch::Receiver<Arc<Membership>> {
        self.shared.membership.subscribe()
    }

    /// Memory is always there.
    fn store_reachable(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
    }
}

#[async_trait]
impl TaskStore for MemoryRegistry {
    async fn put_tasks(&self, records: &[Arc<TaskRecord>]) -> Result<(), RegistryError> {
        self.write(records);
        Ok(())
    }

    async fn put_tasks_fenced(
        &self,
        records: &[Arc<TaskRecord>],
        fence: &Fence,
    ) -> Result<(), RegistryError> {
        let election = self.shared.lock_fenced(fence)?;
        // The election lock is held across the write: no resign or
        // takeover can slip in between the check and the write.
        self.write(records);
        drop(election);
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

    async fn ended_tasks(&self, limit: usize) -> Result<EndedTasks, RegistryError> {
        Ok(self.shared.lock_ended().oldest(limit))
    }

    async fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage, RegistryError> {
        let tasks = self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let listing = self.shared.lock_listing();
        let start = match &query.after {
            Some(after) => Bound::Excluded((Reverse(after.created_ms), after.id.clone())),
            None => Bound::Unbounded,
        };
        let mut page = PageBuilder::new(query);
        let mut order = listing.order.range((start, Bound::Unbounded));
        let mut stopped = false;
        for (Reverse(created_ms), id) in order.by_ref() {
            let cursor = ListCursor {
                created_ms: *created_ms,
                id: id.clone(),
            };
            let record = tasks.get(id).map(|r| (**r).clone());
            if page.offer(cursor, record) == Next::Stop {
                stopped = true;
                break;
            }
        }
        let more = stopped && order.next().is_some();
        Ok(page.finish(more))
    }

    async fn task_for_idempotency_key(
        &self,
        scope: &ClientId,
        key: &IdempotencyKey,
    ) -> Result<Option<TaskId>, RegistryError> {
        Ok(self
            .shared
            .lock_listing()
            .idempotency
            .get(&(scope.clone(), key.clone()))
            .cloned())
    }

    async fn delete_tasks_fenced(
        &self,
        tasks: &[EndedTask],
        fence: &Fence,
    ) -> Result<(), RegistryError> {
        // Held throughout, as for a fenced write.
        let election = self.shared.lock_fenced(fence)?;
        let mut records = self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let mut ended = self.shared.lock_ended();
        let mut listing = self.shared.lock_listing();
        for task in tasks {
            ended.remove(&task.id);
            if let Some(record) = records.remove(&task.id) {
                listing
                    .order
                    .remove(&(Reverse(record.created_ms), task.id.clone()));
            }
            if let Some(scoped) = &task.keys.idempotency {
                listing.idempotency.remove(scoped);
            }
        }
        drop((listing, ended, records, election));
        Ok(())
    }

    /// Memory never runs out of space it could refuse writes for.
    fn store_full(&self) -> watch::Receiver<Option<String>> {
        watch::channel(None).1
    }
}

#[async_trait]
impl Election for MemoryRegistry {
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
}

#[async_trait]
impl ReputationStore for MemoryRegistry {
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
}

#[async_trait]
impl EventStore for MemoryRegistry {
    async fn write_events_fenced(
        &self,
        writes: &[EventWrite],
        fence: &Fence,
    ) -> Result<usize, RegistryError> {
        let election = self.shared.lock_fenced(fence)?;
        let mut events = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut trimmed = 0;
        for write in writes {
            match write {
                EventWrite::Put(record) => {
                    events
                        .pending
                        .insert((record.event.seq, record.event.id.clone()), record.clone());
                }
                EventWrite::Delete { seq, id } => {
                    events.pending.remove(&(*seq, id.clone()));
                }
                EventWrite::Dead(dead) => {
                    events.dead.insert(
                        (
                            Reverse(dead.event.seq),
                            dead.event.id.clone(),
                            dead.subscription.clone(),
                        ),
                        dead.clone(),
                    );
                }
                EventWrite::TrimDeadLetters { keep } => {
                    // Keyed newest first: the last entries are the oldest.
                    while events.dead.len() > *keep {
                        events.dead.pop_last();
                        trimmed += 1;
                    }
                }
            }
        }
        drop(events);
        drop(election);
        Ok(trimmed)
    }

    async fn pending_events(&self) -> Result<Vec<EventRecord>, RegistryError> {
        let events = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        Ok(events.pending.values().cloned().collect())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, RegistryError> {
        let events = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        Ok(events.dead.values().take(limit).cloned().collect())
    }
}

#[async_trait]
impl RequestMemoryStore for MemoryRegistry {
    async fn request_memory(&self) -> Result<Vec<MemoryEntry>, RegistryError> {
        let memory = self
            .shared
            .request_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(memory.values().cloned().collect())
    }

    async fn remember_request(
        &self,
        entry: MemoryEntry,
        max: usize,
    ) -> Result<Vec<TaskId>, RegistryError> {
        let mut memory = self
            .shared
            .request_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        memory.insert(entry.task.clone(), entry);
        let entries: Vec<MemoryEntry> = memory.values().cloned().collect();
        let evicted = agentmesh_core::request::memory::evictions(&entries, max);
        for task in &evicted {
            memory.remove(task);
        }
        Ok(evicted)
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn shutdown(&self) {
        self.node.closed.send_replace(true);
        self.shared.release_node(self.node.id, "node shut down");
        self.shared.release_agents(self.node.id);
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_core::Role;

    use futures::FutureExt;

    use super::*;
    use crate::conformance::Clause;

    /// Runs a clause of the conformance suite on a fresh in-process
    /// cluster, on two worker threads so that concurrent clauses really
    /// run at once.
    fn run(clause: Clause) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("build a tokio runtime");
        runtime.block_on(clause(&MemoryRegistry::new()));
    }

    mod conformance {
        crate::conformance_tests!(super::run);
    }

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
            faults: Vec::new(),
            insecure: false,
            event_handlers: Vec::new(),
        }
    }

    fn has(registry: &MemoryRegistry, id: &str) -> bool {
        registry
            .membership()
            .borrow()
            .agents
            .contains_key(&AgentId::new(id))
    }

    /// Clones are handles of one node: what one registers, another updates
    /// and deregisters. `agentmesh local` registers all its agents through
    /// clones of one registry this way.
    #[tokio::test]
    async fn clones_are_one_node() {
        let a = MemoryRegistry::new();
        let b = a.clone();
        a.register(agent("w1")).await.unwrap();
        a.register(agent("w2")).await.unwrap();
        let mut busy = agent("w1");
        busy.load = 2;
        b.register(busy.clone()).await.unwrap();
        assert_eq!(b.membership().borrow().get(&busy.id), Some(&busy));
        b.deregister(&AgentId::new("w1")).await.unwrap();
        assert!(!has(&a, "w1") && has(&a, "w2"));
    }

    /// The counterpart of a lease expiry: a node whose every handle is gone
    /// leaves the view and frees its ids.
    #[tokio::test]
    async fn dropping_a_node_frees_its_agents_ids() {
        let a = MemoryRegistry::new();
        let b = a.join();
        b.register(agent("w1")).await.unwrap();
        assert!(matches!(
            a.register(agent("w1")).await,
            Err(RegistryError::DuplicateAgent { .. })
        ));
        drop(b);
        assert!(!has(&a, "w1"));
        a.register(agent("w1")).await.unwrap();
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

    /// What only the in-memory election does (the contract itself is the
    /// conformance suite's): a node campaigning again joins its own term,
    /// dropping a node's last handle ends its term, and shutdown ends the
    /// node's waiting campaigns.
    #[tokio::test]
    async fn a_node_keeps_its_term_until_it_goes_away() {
        let a = MemoryRegistry::new();
        let b = a.join();
        let c = a.join();

        let first = b.campaign(&AgentId::new("coord-b")).await.unwrap();
        let same = b.clone().campaign(&AgentId::new("coord-b")).await.unwrap();
        assert_eq!(
            same.fence, first.fence,
            "the same node's campaign joins its term"
        );

        let waiting = pending_campaign(&c, "coord-c");
        settle().await;
        assert!(!waiting.is_finished());
        drop(b);
        let second = waiting.await.unwrap().unwrap();
        assert!(!first.is_held() && !same.is_held());
        assert_eq!(second.candidate, AgentId::new("coord-c"));

        let d = a.join();
        let closed = pending_campaign(&d, "coord-d");
        settle().await;
        d.shutdown().await;
        assert!(
            matches!(closed.await.unwrap(), Err(RegistryError::Closed)),
            "shutdown ends the node's waiting campaign"
        );

        let waiting = pending_campaign(&a, "coord-a");
        settle().await;
        c.shutdown().await;
        assert!(!second.is_held());
        let third = waiting.await.unwrap().unwrap();
        assert_eq!(third.candidate, AgentId::new("coord-a"));
    }

    /// Two nodes on two OS threads, each making 50 updates of one record
    /// at the same time. The memory registry serialises updates instead of
    /// comparing and retrying, so each update runs exactly once per call
    /// (and it never waits, so no runtime is needed to drive its futures).
    #[test]
    fn reputation_updates_run_once_per_call() {
        const PER_NODE: u64 = 50;
        let first = MemoryRegistry::new();
        let nodes = [first.clone(), first.join()];
        let calls = AtomicU64::new(0);
        let start = std::sync::Barrier::new(nodes.len());
        std::thread::scope(|scope| {
            for node in &nodes {
                let (calls, start) = (&calls, &start);
                scope.spawn(move || {
                    start.wait();
                    let update = |current: Option<Reputation>| {
                        calls.fetch_add(1, Ordering::Relaxed);
                        std::thread::yield_now();
                        let mut next = current.unwrap_or_else(|| Reputation::new(0));
                        next.updates += 1;
                        next
                    };
                    for _ in 0..PER_NODE {
                        node.update_reputation(&AgentId::new("w"), "c", &update)
                            .now_or_never()
                            .expect("the memory registry never waits")
                            .unwrap();
                    }
                });
            }
        });
        let last = first
            .reputation(&AgentId::new("w"), "c")
            .now_or_never()
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(last.updates, 2 * PER_NODE, "updates were lost");
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2 * PER_NODE,
            "one call per update"
        );
    }
}
