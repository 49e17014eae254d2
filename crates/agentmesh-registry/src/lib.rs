//! Where agents find each other and where task records live.
//!
//! A registry plays five roles, one trait each, so a component asks only
//! for what it uses:
//!
//! - [`AgentDirectory`]: membership. Agents registered under their node's
//!   lease, watched by everyone; an agent id is unique among live nodes.
//! - [`TaskStore`]: durable task records, and their watches.
//! - [`Election`]: coordinator leadership. [`Election::campaign`] resolves
//!   with a [`Leadership`] once this node leads, [`Election::leader`] tells
//!   every node who leads, and [`TaskStore::put_tasks_fenced`] writes task
//!   records only while the writer's leadership still stands, so a deposed
//!   leader that has not noticed yet cannot overwrite its successor's
//!   records.
//! - [`ReputationStore`]: how far each agent is trusted for each
//!   capability. Records change only by read-modify-write under
//!   compare-and-swap ([`ReputationStore::update_reputation`]), so
//!   coordinators that update the same record at once lose none of each
//!   other's updates.
//!
//! - [`EventStore`]: accepted events with their unsettled deliveries, and
//!   dead letters (docs/events.md); written by the leader, fenced.
//!
//! [`Registry`] is all five plus [`Registry::shutdown`]: the one handle a
//! node is built with. Two backends implement it: [`EtcdRegistry`] for a
//! real cluster and [`MemoryRegistry`] for `agentmesh local` and unit
//! tests. The etcd key layout is owned by [`keys`]. One conformance suite,
//! `conformance` (behind the `testsuite` feature), states the contract as
//! tests and runs unchanged against both.

#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
mod ended_index;
pub mod etcd;
pub mod keys;
pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::ClientId;
use agentmesh_core::events::{DeadLetter, EventRecord};
use agentmesh_core::reputation::Reputation;
use agentmesh_core::request::memory::MemoryEntry;
use agentmesh_core::task::TaskRecord;
use agentmesh_core::task::listing::{IdempotencyKey, TaskPage, TaskQuery};
use agentmesh_core::{AgentId, AgentRegistration, Membership, TaskId};
use async_trait::async_trait;
use futures::stream::BoxStream;
use thiserror::Error;
use tokio::sync::watch;

pub use etcd::{
    ETCD_METHODS, EtcdCredentials, EtcdObserver, EtcdOptions, EtcdRegistry, EtcdTls, Password,
    etcd_method,
};
pub use memory::MemoryRegistry;

/// Lease time-to-live used when none is configured: a dead node's agents
/// leave every view within this time.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// How often [`ReputationStore::update_reputation`] tries to write before
/// it gives up with [`RegistryError::Contended`]. Each failed try means another
/// writer's update of the same record went through meanwhile, so it takes
/// this many updates of one record racing one call to exhaust it. (The
/// in-memory backend serialises updates and never needs a second try.)
pub const MAX_REPUTATION_CAS_ATTEMPTS: u32 = 32;

#[derive(Debug, Error)]
pub enum RegistryError {
    /// The backing store cannot be reached or refused the request; retrying
    /// later may succeed.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The backing store refused the request for what it holds (with etcd:
    /// a request over `--max-request-bytes`, or otherwise invalid):
    /// sending the same request again fails the same way.
    #[error("registry refused the request: {0}")]
    Refused(String),
    /// The store refuses writes for lack of space (etcd's `NOSPACE` alarm:
    /// its database reached `--quota-backend-bytes`). Reads and deletes
    /// still work; writes fail until an operator frees space (compact,
    /// defragment) and disarms the alarm. Retrying later may succeed.
    #[error(
        "etcd is out of space and refuses writes ({0}); free space (compact, defragment) \
         and disarm the NOSPACE alarm"
    )]
    NoSpace(String),
    /// Stored data could not be decoded.
    #[error("corrupt registry entry at '{key}': {message}")]
    Corrupt { key: String, message: String },
    #[error("registry is shut down")]
    Closed,
    /// A fenced write found that the leadership it was fenced with no
    /// longer stands (lost, resigned, or taken over by another
    /// coordinator): the transaction that noticed wrote nothing.
    #[error(
        "not the coordinator leader: the leadership fenced at revision {fence_revision} \
         no longer stands, write refused ({written} records written before)"
    )]
    NotLeader {
        /// The create revision of the leader key the write was fenced with.
        fence_revision: i64,
        /// Records written by earlier transactions of the same call, while
        /// the leadership still stood (only a batch of more than one
        /// transaction can have any).
        written: usize,
    },
    /// A compare-and-swap lost to other writers of the same key on every
    /// attempt: nothing was written by this call. Retrying later may
    /// succeed.
    #[error("update of '{key}' gave up after {attempts} attempts: the record kept changing")]
    Contended {
        /// The key (with etcd, the full etcd key) that kept changing.
        key: String,
        /// Attempts made, each of them beaten by another writer.
        attempts: u32,
    },
    /// Another live node has registered an agent under this id: ids name
    /// one agent in the whole cluster, so this node's registration was
    /// refused and the other node's left as it is.
    #[error(
        "agent id '{id}' is already registered by another live node; choose another --id \
         or stop that node (a node that died without shutting down holds its id until \
         its lease expires)"
    )]
    DuplicateAgent { id: AgentId },
}

impl RegistryError {
    /// Whether the same request may succeed later: the store was out of
    /// reach, busy or contended. Writers retry these and give up on the
    /// rest, which no retry can fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Unavailable(_)
                | RegistryError::NoSpace(_)
                | RegistryError::Contended { .. }
        )
    }
}

/// One agent's reputation for one capability, as listed by
/// [`ReputationStore::reputations`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReputationEntry {
    pub agent: AgentId,
    pub capability: String,
    pub reputation: Reputation,
}

/// What a fenced write checks: the leader key and its create revision.
///
/// The create revision is unique to one term of leadership: a key deleted
/// (resign, lease expiry) and created again gets a new one, so a write
/// fenced with an old term fails even if the same node leads again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The leader key (with etcd,
    /// `/agentmesh/v1/election/coordinator/<lease-hex>`).
    pub key: String,
    /// The create revision of [`Fence::key`] when leadership was won.
    pub revision: i64,
    /// The node lease the leader key is attached to; a node that replaced
    /// its lease refuses writes fenced with the old one without asking etcd.
    pub lease: i64,
}

/// Coordinator leadership won by [`Election::campaign`]; the caller keeps
/// it for as long as it acts as the leader.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// The agent this node campaigned for, as published to
    /// [`Election::leader`].
    pub candidate: AgentId,
    /// The fence for [`TaskStore::put_tasks_fenced`].
    pub fence: Fence,
    /// `true` while leadership stands. It turns `false` once and for good
    /// when leadership is lost or given up; each backend documents when
    /// exactly. A `false` here means: stop acting as the leader, and
    /// campaign again to lead again.
    pub held: watch::Receiver<bool>,
}

impl Leadership {
    /// Whether leadership still stands, as far as this node knows.
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Resolves once leadership is lost (at once if it already is).
    pub async fn lost(&self) {
        let mut held = self.held.clone();
        // A dropped sender means nobody can report it held any more: lost.
        let _ = held.wait_for(|held| !*held).await;
    }
}

/// An ended task as retention weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedTask {
    pub id: TaskId,
    /// The `updated_ms` of its terminal record: when it ended.
    pub ended_ms: u64,
    /// The size of its terminal record as stored.
    pub bytes: u64,
    /// The keys stored beside its record, deleted with it.
    pub keys: TaskKeys,
}

/// What a store keeps beside a task's record, and deletes with it: its
/// place in the listing order, and its idempotency key with the scope that
/// key is unique in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskKeys {
    /// The record's `created_ms`: its place among [`TaskStore::list_tasks`].
    pub created_ms: u64,
    pub idempotency: Option<(ClientId, IdempotencyKey)>,
}

/// What [`TaskStore::ended_tasks`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndedTasks {
    /// Ended tasks stored, in all.
    pub total: usize,
    /// The ones that ended first, oldest first, as many as asked for.
    pub oldest: Vec<EndedTask>,
}

/// A stream of a task's record: the current record first, then one per
/// persisted change.
pub type TaskWatch = BoxStream<'static, Result<TaskRecord, RegistryError>>;

/// Agents and their registrations: the membership role of a registry.
///
/// An agent id names one agent in the whole cluster. A node registers its
/// agents under its own liveness (with etcd, its lease), and owns each
/// registration until it deregisters it or its liveness ends. So
/// registering an id another live node owns fails with
/// [`RegistryError::DuplicateAgent`] and changes nothing, and deregistering
/// an id another node owns removes nothing: a second node started by
/// mistake with a live node's id can neither take over nor delete the
/// live agent.
#[async_trait]
pub trait AgentDirectory: Send + Sync {
    /// Registers an agent, or updates this node's registration of it, under
    /// this node's liveness.
    ///
    /// Fails with [`RegistryError::DuplicateAgent`] when another live node
    /// owns the id. The id is free again once that node deregisters it or
    /// its liveness ends (with etcd: its lease is revoked or expires, which
    /// for a node that died without shutting down takes up to its lease
    /// TTL). Fails with [`RegistryError::Closed`] after [`Registry::shutdown`].
    async fn register(&self, agent: AgentRegistration) -> Result<(), RegistryError>;

    /// Removes an agent this node registered. An id this node does not own
    /// (never registered here, already gone, or owned by another node) is
    /// left as it is, and that is not an error.
    async fn deregister(&self, id: &AgentId) -> Result<(), RegistryError>;

    /// The live view of every registered agent, kept current by a watch.
    fn membership(&self) -> watch::Receiver<Arc<Membership>>;

    /// Whether the backing store answers: `false` from the moment the
    /// node's lease could not be refreshed until the node has a lease again
    /// and its agents are re-registered. Nodes report `NOT_SERVING` on gRPC
    /// health meanwhile.
    fn store_reachable(&self) -> watch::Receiver<bool>;
}

/// Durable task records: the task store role of a registry.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Persists task records, all in one transaction.
    async fn put_tasks(&self, records: &[Arc<TaskRecord>]) -> Result<(), RegistryError>;

    /// Persists task records like [`TaskStore::put_tasks`], but only while
    /// `fence`'s leadership stands: every transaction carries the check,
    /// and one that finds the leadership gone writes nothing and fails with
    /// [`RegistryError::NotLeader`].
    async fn put_tasks_fenced(
        &self,
        records: &[Arc<TaskRecord>],
        fence: &Fence,
    ) -> Result<(), RegistryError>;

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, RegistryError>;

    /// Follows one task's record. Yields nothing until the task exists.
    async fn watch_task(&self, id: &TaskId) -> Result<TaskWatch, RegistryError>;

    /// How many ended tasks are stored, and the `limit` that ended first,
    /// oldest first: what retention deletes from. A task counts as ended
    /// from the put of a record with a terminal status, at that record's
    /// `updated_ms`, until [`TaskStore::delete_tasks_fenced`] deletes it.
    /// Exact for this node's own writes; another node's writes and deletes
    /// are seen by the time this node has won a campaign (an answer given
    /// while another node leads may be out of date).
    async fn ended_tasks(&self, limit: usize) -> Result<EndedTasks, RegistryError>;

    /// Deletes ended tasks (their records and their places among
    /// [`TaskStore::ended_tasks`]), only while `fence`'s leadership stands,
    /// like [`TaskStore::put_tasks_fenced`]. Deleting a task already gone
    /// is not an error. Works while the store refuses writes for lack of
    /// space: deleting is how space is freed.
    async fn delete_tasks_fenced(
        &self,
        tasks: &[EndedTask],
        fence: &Fence,
    ) -> Result<(), RegistryError>;

    /// Why the store refuses writes for lack of space, `None` while it
    /// takes them. Turns `Some` as soon as any write of this node is
    /// refused with [`RegistryError::NoSpace`] (and, with etcd, when a
    /// periodic check finds the `NOSPACE` alarm raised by anyone), and
    /// `None` again once the alarm is gone. Coordinators refuse submits
    /// meanwhile, and nodes report `NOT_SERVING` on gRPC health.
    fn store_full(&self) -> watch::Receiver<Option<String>>;

    /// Returns every task record whose status is not terminal (pending or
    /// running), in task id order: what a new leader resumes. Records that
    /// do not decode are logged and skipped, so one bad record cannot stop
    /// a takeover.
    async fn unfinished_tasks(&self) -> Result<Vec<TaskRecord>, RegistryError>;

    /// One page of task records, newest first (by `created_ms`, then id),
    /// after `query.after`, keeping those `query.filter` matches: up to
    /// `query.limit` of them, reading at most `query.scan` records, so a
    /// call costs the same however many tasks are stored. The page's
    /// cursor is set when records may follow. Records that do not decode
    /// are skipped with a warning. Records are listed once their first
    /// write is in the store; with etcd, records written by a release
    /// without the listing index are listed once they are written again.
    async fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage, RegistryError>;

    /// The task a record was put for with this idempotency key in this
    /// scope (see [`TaskKeys::idempotency`]), while that record is stored.
    /// The key is written with the task's first record and deleted with it.
    async fn task_for_idempotency_key(
        &self,
        scope: &ClientId,
        key: &IdempotencyKey,
    ) -> Result<Option<TaskId>, RegistryError>;
}

/// Coordinator leadership: the election role of a registry.
#[async_trait]
pub trait Election: Send + Sync {
    /// Campaigns for coordinator leadership with `candidate` as the value
    /// others see in [`Election::leader`], and resolves once this node
    /// leads. While another node leads it waits, for as long as that takes.
    ///
    /// Leadership is tied to this node's liveness: a leader that dies is
    /// replaced once its node's lease runs out. A node is one candidate:
    /// run one campaign per registry at a time — a second one would share
    /// the first's candidacy, and dropping either withdraws it.
    ///
    /// Fails only with [`RegistryError::Closed`] when the registry shuts
    /// down meanwhile; an unreachable store is retried with backoff.
    /// Dropping the future withdraws the candidacy.
    async fn campaign(&self, candidate: &AgentId) -> Result<Leadership, RegistryError>;

    /// Gives leadership up at once, so a standby takes over without
    /// waiting for a lease to run out. `leadership.held` is `false` when
    /// this returns; resigning a leadership already lost is not an error.
    async fn resign(&self, leadership: &Leadership) -> Result<(), RegistryError>;

    /// The coordinator leader as this node last observed it, kept current
    /// in the background; `None` while nobody leads. Followers forward
    /// leader-only requests to it.
    fn leader(&self) -> watch::Receiver<Option<AgentId>>;
}

/// Durable reputation records: the reputation store role of a registry.
#[async_trait]
pub trait ReputationStore: Send + Sync {
    /// The reputation of `agent` for `capability`, if any was recorded.
    ///
    /// A record that does not decode fails with [`RegistryError::Corrupt`].
    async fn reputation(
        &self,
        agent: &AgentId,
        capability: &str,
    ) -> Result<Option<Reputation>, RegistryError>;

    /// Every recorded reputation, ordered by agent id, then capability:
    /// for `agentmesh agents` and auctions. Records that do not decode are
    /// logged and skipped.
    async fn reputations(&self) -> Result<Vec<ReputationEntry>, RegistryError>;

    /// Read-modify-write of `agent`'s reputation for `capability` under
    /// compare-and-swap, returning the record written.
    ///
    /// Reads the current record (`None` if there is none), calls `update`
    /// with it, and writes the result only if the record did not change
    /// meanwhile; if it did, it reads again and calls `update` again with
    /// the newer record. So `update` may run more than once per call and
    /// must compute its result from its argument alone (no side effects,
    /// no calls into the registry); no update of any writer is lost. After
    /// [`MAX_REPUTATION_CAS_ATTEMPTS`] attempts, each beaten by another
    /// writer, it fails with [`RegistryError::Contended`] having written
    /// nothing. A stored record that does not decode fails the call with
    /// [`RegistryError::Corrupt`] and is left as it is.
    ///
    /// Records are not tied to any node's lease: they outlive the agents
    /// and coordinators they are about. A call that fails with
    /// [`RegistryError::Unavailable`] after its write was sent (a timeout)
    /// may or may not have written.
    async fn update_reputation(
        &self,
        agent: &AgentId,
        capability: &str,
        update: &(dyn Fn(Option<Reputation>) -> Reputation + Send + Sync),
    ) -> Result<Reputation, RegistryError>;
}

/// Every role of a registry, as seen by one node: the handle a node is
/// built with.
///
/// A registry instance belongs to one node: agents it registers live as long
/// as the node's lease, and [`Registry::shutdown`] removes them at once.
/// Components that need one role only take that role
/// (`Arc<dyn TaskStore>` from an `Arc<dyn Registry>` by upcasting).
/// One change of the event store, written by the leader coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum EventWrite {
    /// An event and its unsettled deliveries (`keys::event`).
    Put(EventRecord),
    /// The event of this sequence and id settled: its record goes.
    Delete { seq: u64, id: String },
    /// A delivery that ran out of attempts (`keys::dead_letter`).
    Dead(DeadLetter),
    /// Keeps the newest `keep` dead letters and deletes the older ones
    /// (`--max-dead-letters`): the list only grows otherwise, and etcd's
    /// database is bounded.
    TrimDeadLetters { keep: usize },
}

/// Accepted events and dead letters (docs/events.md): the durable side of
/// the leader's event router, so a new leader resumes every unsettled
/// delivery.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Applies `writes` in order, only while `fence`'s leadership stands
    /// ([`RegistryError::NotLeader`] otherwise, as for task records).
    /// Returns how many dead letters its [`EventWrite::TrimDeadLetters`]
    /// deleted.
    async fn write_events_fenced(
        &self,
        writes: &[EventWrite],
        fence: &Fence,
    ) -> Result<usize, RegistryError>;
    /// Every stored event record, in publish (`seq`) order. Records that
    /// do not decode are skipped with a warning.
    async fn pending_events(&self) -> Result<Vec<EventRecord>, RegistryError>;
    /// At most `limit` dead letters, newest event first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, RegistryError>;
}

/// The coordination memory of natural-language requests
/// (docs/requests.md): (request, decomposition, quality) triples the
/// leader keeps after a request task ends, read at submit to reuse a
/// decomposition for a similar request. One record per task, no lease: the
/// memory outlives the coordinators that wrote it.
#[async_trait]
pub trait RequestMemoryStore: Send + Sync {
    /// Every remembered triple, in no particular order. Records that do
    /// not decode are skipped with a warning.
    async fn request_memory(&self) -> Result<Vec<MemoryEntry>, RegistryError>;

    /// Stores `entry` (replacing the one of the same task), then evicts
    /// the oldest triples beyond `max`, returning the tasks evicted. Not
    /// fenced: a triple is a hint that is revalidated before any reuse,
    /// so a deposed leader's late write does no harm.
    async fn remember_request(
        &self,
        entry: MemoryEntry,
        max: usize,
    ) -> Result<Vec<TaskId>, RegistryError>;
}

#[async_trait]
pub trait Registry:
    AgentDirectory + TaskStore + Election + ReputationStore + EventStore + RequestMemoryStore + 'static
{
    /// Revokes this node's lease (its agents leave every view at once, and
    /// its leadership, if any, ends) and stops background work.
    async fn shutdown(&self);
}
