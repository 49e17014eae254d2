//! The etcd backend of [`Registry`].
//!
//! # Liveness: one lease per node
//!
//! [`EtcdRegistry::connect`] grants one etcd lease per node, and every agent
//! the node registers is stored under [`keys::agent`] *attached to that
//! lease*. Lease expiry is the cluster's failure detector: a node that dies,
//! hangs or loses its network stops refreshing the lease, etcd deletes the
//! lease and every key on it once the TTL runs out, and every other node's
//! membership watch sees the agents vanish. Nothing else needs to agree on
//! who is alive, and a clean [`Registry::shutdown`] revokes the lease so the
//! node's agents leave every view at once instead of after the TTL.
//!
//! # Keep-alive and re-registration
//!
//! A background task refreshes the lease every TTL/3 over etcd's keep-alive
//! stream (see `lease.rs`). When a refresh fails, or etcd answers that the
//! lease is gone (TTL ≤ 0), the task grants a *new* lease, retrying with
//! capped exponential backoff while etcd is unreachable, and re-puts every
//! agent of this node under it. The registry keeps its own agents in a local
//! map for exactly this. So an etcd outage longer than the TTL — after which
//! the old lease, and with it the node's agents, may be gone — heals by
//! itself once etcd is back, without the runtime noticing. The map and the
//! current lease id sit behind one async mutex, so a `register` racing a
//! renewal can never leave an agent on the abandoned lease.
//!
//! # One agent per id
//!
//! An agent key is written and deleted only by the node that owns it: a
//! transaction compares that the key is absent or attached to one of the
//! node's own leases (its current one, or one it replaced, whose keys it
//! moves to the new lease after an outage). A key on any other lease is a
//! live agent of another node: [`AgentDirectory::register`] fails with
//! [`RegistryError::DuplicateAgent`] and [`AgentDirectory::deregister`]
//! leaves it alone. `registration.rs` has the details.
//!
//! # Membership view
//!
//! Another task lists [`keys::AGENTS`], publishes the view on a
//! `tokio::sync::watch` channel, then watches the prefix from the list's
//! revision + 1, so no change is missed between the two. It publishes only
//! when the view actually changed. On a watch error, the stream's end, or a
//! compaction of the revision it watches from, it lists and watches again
//! (with backoff): the list is the truth, the watch only keeps it current.
//!
//! # Task records
//!
//! Task records are plain keys under [`keys::TASKS`] (no lease: they outlive
//! their coordinator). [`TaskStore::put_tasks`] writes a batch in one
//! transaction. [`TaskStore::watch_task`] reads the record, then follows the
//! key from a spawned task that feeds a bounded channel; after an
//! interruption it re-reads and re-watches, and the record's own `revision`
//! field (strictly increasing) filters out anything it already yielded.
//!
//! [`TaskStore::put_tasks_fenced`] adds to each transaction a compare that
//! the writer's leader key still exists with its fence's create revision
//! (see `election.rs`), and [`TaskStore::unfinished_tasks`] reads the prefix
//! in pages of [`EtcdOptions::task_page_size`] keys, all at the revision of
//! the first page, so a listing of 100k records is neither one huge
//! response nor a mix of different moments.
//!
//! # Coordinator election
//!
//! Each campaigning node puts one candidate key,
//! [`keys::coordinator_candidate`], on its lease; the oldest key (lowest
//! create revision) leads, and its create revision is the [`Fence`]. A
//! background list-and-watch of [`keys::ELECTION_COORDINATOR_CANDIDATES`]
//! keeps [`Election::leader`] current and is what campaigns wait on.
//! A [`Leadership`]'s `held` flag turns `false` when its node
//!
//! - sees the leader key deleted or re-created (resign, lease expiry or
//!   revoke, a delete by hand),
//! - has replaced its lease (the keep-alive lost the old one),
//! - hears from etcd that the lease is gone (it asks every TTL/3), or
//! - cannot confirm the lease alive in time: unless refreshed, etcd has
//!   expired it by the time of the last answered question plus the
//!   remaining TTL it reported plus 1 s (a partitioned leader sees nothing
//!   else),
//!
//! and at once when it resigns or shuts down. In all but the first case
//! the key may outlive the term, so the node then deletes it itself: etcd
//! must not keep a leader that no longer acts as one. `election.rs` has
//! the details.
//!
//! # Reputation records
//!
//! One key per agent and capability, [`keys::reputation`] (no lease: a
//! reputation outlives the node it is about and the coordinators that
//! wrote it). [`ReputationStore::update_reputation`] is a compare-and-swap
//! loop: a transaction puts the new record only if the key's mod revision is
//! still the one read (0 for "absent": etcd compares a missing key as
//! revision 0), and otherwise reads the key in the same transaction, so a
//! conflict costs one round trip and the retry starts from the record that
//! won. `reputation.rs` has the details.
//!
//! # Space
//!
//! An index of ended tasks, kept in memory and rebuilt from the records
//! whenever this node may have missed a write, answers
//! [`TaskStore::ended_tasks`] without reading etcd; a background check
//! follows etcd's
//! `NOSPACE` alarm for [`TaskStore::store_full`]. `space.rs` has the
//! details. etcd's history of every key is not compacted here: compaction
//! is global to the etcd cluster, so it is left to etcd's own
//! `--auto-compaction-*` settings, which `docs/guarantees.md` requires.
//!
//! # Access
//!
//! [`EtcdOptions::tls`] makes the connection TLS, trusting only the given
//! CA (and presenting a client certificate if one is given), and
//! [`EtcdOptions::credentials`] an etcd user: the client authenticates at
//! connect, so a wrong password fails the start, and again whenever etcd
//! says the token expired. `access.rs` has the checks, `rbac.rs` the roles
//! each kind of node holds and the setup that creates them.
//!
//! Every request is bounded by [`EtcdOptions::request_timeout`], and every
//! failure maps to a [`RegistryError`] naming what was attempted: etcd's
//! refusal for lack of space to [`RegistryError::NoSpace`], its refusals
//! of the request itself (too large, invalid) to
//! [`RegistryError::Refused`], everything else to
//! [`RegistryError::Unavailable`] (see `classify`).

pub mod access;
mod backoff;
mod election;
mod events;
mod lease;
mod listing;
mod membership;
pub mod observe;
mod prefix_watch;
pub mod rbac;
mod registration;
mod reputation;
mod request_memory;
mod space;
mod startup;
mod task_watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_core::reputation::Reputation;
use agentmesh_core::task::TaskRecord;
use agentmesh_core::task::listing::{IdempotencyKey, TaskPage, TaskQuery};
use agentmesh_core::{AgentId, AgentRegistration, ClientId, Membership, TaskId};
use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue, Txn, TxnOp};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub use access::{AccessError, EtcdCredentials, EtcdTls, Password};
pub use observe::{ETCD_METHODS, EtcdObserver, Observer, etcd_method};

use crate::ended_index::EndedIndex;
use crate::{
    AgentDirectory, DEFAULT_LEASE_TTL, Election, EndedTask, EndedTasks, EventStore, EventWrite,
    Fence, Leadership, Registry, RegistryError, ReputationEntry, ReputationStore,
    RequestMemoryStore, TaskKeys, TaskStore, TaskWatch, keys,
};
use registration::Expect;

/// Records written per etcd transaction. etcd refuses transactions of more
/// than `--max-txn-ops` operations (128 by default); half of that leaves
/// room for a lowered limit.
const MAX_RECORDS_PER_TXN: usize = 64;

/// Operations per transaction at most: a record's first write carries its
/// listing index key and idempotency key too (see [`beside`]), and etcd
/// refuses transactions over `--max-txn-ops` (128 by default).
const MAX_OPS_PER_TXN: usize = 120;

/// Marks an operation of [`Shared::put_records`] that writes a key beside a
/// record rather than the record.
const NOT_A_RECORD: u64 = u64::MAX;

/// The keys written beside a record on its first write from this node:
/// its place in the listing order, and its idempotency key. Both hold
/// values that never change, so writing them again (after a takeover, or
/// once [`Indexed`] forgot the task) changes nothing.
fn beside(record: &TaskRecord) -> Vec<TxnOp> {
    let keys = TaskKeys::of(record);
    let mut ops = vec![TxnOp::put(
        keys::task_index(keys.created_ms, &record.id),
        Vec::new(),
        None,
    )];
    if let Some((scope, key)) = &keys.idempotency {
        ops.push(TxnOp::put(
            keys::idempotency(scope, key),
            record.id.as_str(),
            None,
        ));
    }
    ops
}

/// The unfinished tasks whose [`beside`] keys this node has written, so
/// that later writes of their records carry only the record. Forgotten
/// when a task ends, and all at once past [`Indexed::MAX`] (then written
/// once more): bounded by the tasks in flight.
#[derive(Debug, Default)]
struct Indexed(HashSet<TaskId>);

impl Indexed {
    const MAX: usize = 100_000;

    /// Which of `ids` are indexed: a copy to use without the lock.
    fn clone_for(&self, ids: &HashMap<&TaskId, usize>) -> HashSet<TaskId> {
        ids.keys()
            .filter(|id| self.0.contains(**id))
            .map(|id| (*id).clone())
            .collect()
    }

    fn note<'a>(&mut self, written: impl Iterator<Item = &'a TaskRecord>) {
        for record in written {
            if record.status.is_terminal() {
                self.0.remove(&record.id);
            } else {
                if self.0.len() >= Self::MAX {
                    self.0.clear();
                }
                self.0.insert(record.id.clone());
            }
        }
    }
}

/// Upper bound on the lease revoke during shutdown: a node that is going
/// away must not hang on an unreachable etcd (the lease then simply
/// expires).
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Interval of HTTP/2 pings on the etcd connection, which detect a
/// half-open connection that would otherwise stall the watches. etcd
/// answers pings more frequent than 5 s with GOAWAY.
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Task records per page of [`TaskStore::unfinished_tasks`] unless
/// configured: a page of records of a few KiB each stays far below the
/// client's 4 MiB limit on one response.
pub const DEFAULT_TASK_PAGE_SIZE: usize = 128;

/// How to reach etcd and how long this node's lease lives.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`, or `https://` ones with
    /// [`EtcdOptions::tls`].
    pub endpoints: Vec<String>,
    /// TLS towards etcd: required by `https://` endpoints, refused with
    /// `http://` ones (see [`access`]).
    pub tls: Option<EtcdTls>,
    /// The etcd user this node authenticates as, when etcd has
    /// authentication on.
    pub credentials: Option<EtcdCredentials>,
    /// Time-to-live of the node's lease, rounded up to whole seconds (at
    /// least 1): how long a dead node's agents stay visible.
    pub lease_ttl: Duration,
    /// How long one attempt of [`EtcdRegistry::connect`] waits for etcd
    /// to answer.
    pub connect_timeout: Duration,
    /// How long [`EtcdRegistry::connect`] keeps trying while etcd cannot
    /// be reached (a refusal fails at once), with jittered backoff
    /// between attempts; zero (the default) makes one attempt. A node
    /// started beside its etcd (one compose file, one Helm release) then
    /// waits for it instead of failing.
    pub connect_patience: Duration,
    /// Bound on every single request once connected.
    pub request_timeout: Duration,
    /// Task records per request when listing them (at least 1).
    pub task_page_size: usize,
    /// Told of every etcd request (see [`observe`]); none by default.
    pub observer: Option<Observer>,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            credentials: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            connect_timeout: Duration::from_secs(5),
            connect_patience: Duration::ZERO,
            request_timeout: Duration::from_secs(5),
            task_page_size: DEFAULT_TASK_PAGE_SIZE,
            observer: None,
        }
    }

    /// Tells `observer` of every etcd request.
    pub fn with_observer(mut self, observer: Arc<dyn EtcdObserver>) -> Self {
        self.observer = Some(Observer(observer));
        self
    }

    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn with_credentials(mut self, credentials: EtcdCredentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Whether the endpoints, TLS and credentials fit together: `https://`
    /// needs a CA, `http://` refuses one, a user needs a password.
    pub fn check_access(&self) -> Result<(), AccessError> {
        access::check(
            &self.endpoints,
            self.tls.as_ref(),
            self.credentials.as_ref(),
        )
    }

    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Keeps [`EtcdRegistry::connect`] trying for `patience` while etcd
    /// cannot be reached.
    pub fn with_connect_patience(mut self, patience: Duration) -> Self {
        self.connect_patience = patience;
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn with_task_page_size(mut self, records: usize) -> Self {
        self.task_page_size = records;
        self
    }

    /// The lease TTL in whole seconds as etcd takes it: rounded up, at
    /// least 1.
    fn ttl_secs(&self) -> i64 {
        let secs = self.lease_ttl.as_secs() + u64::from(self.lease_ttl.subsec_nanos() > 0);
        i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
    }

    fn endpoint_list(&self) -> String {
        self.endpoints.join(", ")
    }

    /// `error` with the password scrubbed and, when etcd wants a user this
    /// node was not given ("user name is empty"), which flags give one.
    fn explain(&self, error: RegistryError) -> RegistryError {
        let hint = |message: String| {
            let message = self.redact(&message);
            if self.credentials.is_none() && message.contains("user name is empty") {
                format!(
                    "{message} (etcd has authentication on: give the node an etcd user with \
                     --etcd-user and --etcd-password-file)"
                )
            } else {
                message
            }
        };
        match error {
            RegistryError::Unavailable(m) => RegistryError::Unavailable(hint(m)),
            RegistryError::Refused(m) => RegistryError::Refused(hint(m)),
            other => other,
        }
    }

    /// `text` without the password, should anything have echoed it.
    fn redact(&self, text: &str) -> String {
        match &self.credentials {
            Some(credentials) => credentials.password.redact(text),
            None => text.to_owned(),
        }
    }
}

/// A client of the etcd `options` name, with their TLS and user, within
/// [`EtcdOptions::connect_timeout`].
///
/// With a user, the client authenticates here, so a wrong user or
/// password fails now, as [`RegistryError::Refused`] naming the user (and
/// never the password). Without one it connects lazily: the first request
/// is the reachability check.
pub(crate) async fn connect_client(options: &EtcdOptions) -> Result<Client, RegistryError> {
    if options.endpoints.is_empty() {
        return Err(RegistryError::Unavailable(
            "no etcd endpoints configured".into(),
        ));
    }
    options
        .check_access()
        .map_err(|e| RegistryError::Refused(e.to_string()))?;
    let endpoints = options.endpoint_list();
    let connect_options = access::apply(
        ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(HTTP2_KEEP_ALIVE_INTERVAL, options.request_timeout)
            .with_keep_alive_while_idle(false),
        options.tls.as_ref(),
        options.credentials.as_ref(),
    );
    let connect = async {
        match &options.observer {
            Some(observer) => {
                Client::connect_with_balanced_channel(
                    &options.endpoints,
                    Some(connect_options),
                    observe::ObservedChannel(observer.clone()),
                )
                .await
            }
            None => Client::connect(&options.endpoints, Some(connect_options)).await,
        }
    };
    match tokio::time::timeout(options.connect_timeout, connect).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => {
            let reason = options.redact(&access::describe(&e));
            Err(match &options.credentials {
                Some(credentials) if access::is_refusal(&e) => RegistryError::Refused(format!(
                    "etcd at {endpoints} refused user '{}': {reason}",
                    credentials.user
                )),
                _ if access::is_tls_failure(&e) => RegistryError::Refused(format!(
                    "cannot connect to etcd at {endpoints}: {reason}"
                )),
                _ => RegistryError::Unavailable(format!(
                    "cannot connect to etcd at {endpoints}: {reason}"
                )),
            })
        }
        Err(_) => Err(RegistryError::Unavailable(format!(
            "cannot connect to etcd at {endpoints}: no answer within {:?}",
            options.connect_timeout
        ))),
    }
}

/// A node's connection to etcd. Clones share the connection, the lease and
/// the background tasks.
#[derive(Clone)]
pub struct EtcdRegistry {
    inner: Arc<Inner>,
}

/// Owned by the registry handles only. Dropping the last handle stops the
/// background tasks (the lease then expires by itself, as for a crashed
/// node); [`Registry::shutdown`] also revokes it.
struct Inner {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    closed: AtomicBool,
    keep_alive: Mutex<Option<JoinHandle<()>>>,
    membership_task: Mutex<Option<JoinHandle<()>>>,
    election_task: Mutex<Option<JoinHandle<()>>>,
    alarm_task: Mutex<Option<JoinHandle<()>>>,
}

/// What the background tasks need; they never hold an [`Inner`], so they do
/// not keep the registry alive.
struct Shared {
    client: Client,
    options: EtcdOptions,
    /// The TTL etcd granted, in seconds.
    ttl_secs: i64,
    /// This node's lease and agents; the async mutex serialises
    /// registrations with lease renewal.
    node: tokio::sync::Mutex<NodeState>,
    /// Mirror of `node.lease` readable without awaiting.
    lease_id: AtomicI64,
    membership: watch::Sender<Arc<Membership>>,
    /// The coordinator candidates as last observed.
    candidates: watch::Sender<Arc<election::Candidates>>,
    /// The oldest of `candidates`: the coordinator leader.
    leader: watch::Sender<Option<AgentId>>,
    /// Ended tasks, for retention (see `space.rs`).
    ended: Mutex<space::EndedState>,
    /// Tasks whose listing and idempotency keys this node wrote.
    indexed: Mutex<Indexed>,
    /// The `held` flag of every term this node leads, by fence revision.
    terms: Mutex<HashMap<i64, Arc<watch::Sender<bool>>>>,
    /// Fence revisions of terms this node gave up for lost while their
    /// leader key may still exist, until the key is deleted.
    abandoned: Mutex<HashSet<i64>>,
    /// Whether etcd answers the lease keep-alive (see `AgentDirectory::store_reachable`).
    reachable: watch::Sender<bool>,
    /// Why etcd refuses writes for lack of space (see `TaskStore::store_full`).
    full: watch::Sender<Option<String>>,
    shutdown: watch::Receiver<bool>,
}

struct NodeState {
    lease: i64,
    /// Leases this node held before `lease` and replaced, whose keys may
    /// still exist until the node moved them (see `registration.rs`):
    /// agent keys on them are still this node's.
    retired: HashSet<i64>,
    agents: BTreeMap<AgentId, AgentRegistration>,
}

impl EtcdRegistry {
    /// Connects to etcd, grants this node's lease, reads the membership and
    /// starts the keep-alive and membership tasks.
    ///
    /// While etcd cannot be reached, tries again with jittered backoff for
    /// [`EtcdOptions::connect_patience`], logging each failed attempt at
    /// WARN. Fails with [`RegistryError::Unavailable`], naming the
    /// endpoints, the attempts and the last reason, when etcd has not
    /// answered by then (each attempt waits at most
    /// [`EtcdOptions::connect_timeout`]), and at once with
    /// [`RegistryError::Refused`] when the endpoints and TLS do not fit
    /// together, etcd's certificate is not trusted, or etcd refuses the
    /// node's user (a wrong password, no user while etcd has
    /// authentication on).
    pub async fn connect(options: EtcdOptions) -> Result<Self, RegistryError> {
        startup::patiently(&options, || Self::connect_once(options.clone())).await
    }

    /// One attempt of [`EtcdRegistry::connect`].
    async fn connect_once(options: EtcdOptions) -> Result<Self, RegistryError> {
        let endpoints = options.endpoint_list();
        // One deadline for building the client and the first answer.
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let client = connect_client(&options).await?;

        // The client connects lazily: granting the lease is the first
        // request, so it is also the reachability check.
        let ttl_secs = options.ttl_secs();
        let mut lease_client = client.clone();
        let lease =
            match tokio::time::timeout_at(deadline, lease_client.lease_grant(ttl_secs, None)).await
            {
                Ok(Ok(lease)) => lease,
                Ok(Err(e)) => {
                    let message = format!(
                        "cannot reach etcd at {endpoints}: lease grant failed: {}",
                        access::describe(&e)
                    );
                    let error = if access::is_refusal(&e) || access::is_tls_failure(&e) {
                        RegistryError::Refused(message)
                    } else {
                        RegistryError::Unavailable(message)
                    };
                    return Err(options.explain(error));
                }
                Err(_) => {
                    return Err(RegistryError::Unavailable(format!(
                        "cannot reach etcd at {endpoints}: no answer within {:?}",
                        options.connect_timeout
                    )));
                }
            };

        let (membership, _) = watch::channel(Arc::new(Membership::default()));
        let (candidates, _) = watch::channel(Arc::new(election::Candidates::default()));
        let (leader, _) = watch::channel(None);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            client,
            ttl_secs: lease.ttl().max(1),
            options,
            node: tokio::sync::Mutex::new(NodeState {
                lease: lease.id(),
                retired: HashSet::new(),
                agents: BTreeMap::new(),
            }),
            lease_id: AtomicI64::new(lease.id()),
            membership,
            candidates,
            leader,
            ended: Mutex::default(),
            indexed: Mutex::default(),
            terms: Mutex::new(HashMap::new()),
            abandoned: Mutex::new(HashSet::new()),
            reachable: watch::Sender::new(true),
            full: watch::Sender::new(None),
            shutdown: shutdown_rx,
        });

        let listed = async {
            let agents = membership::list_agents(&shared).await?;
            let candidates = election::list_candidates(&shared).await?;
            Ok::<_, RegistryError>((agents, candidates))
        };
        let ((view, revision), (candidates, election_revision)) = match listed.await {
            Ok(listed) => listed,
            Err(e) => {
                shared.revoke_lease(lease.id()).await;
                return Err(shared.options.explain(e));
            }
        };
        shared.membership.send_replace(Arc::new(view));
        election::publish(&shared, &candidates);

        let keep_alive = tokio::spawn(lease::keep_alive(shared.clone()));
        let membership_task =
            tokio::spawn(prefix_watch::follow::<Membership>(shared.clone(), revision));
        let election_task = tokio::spawn(prefix_watch::follow::<election::Candidates>(
            shared.clone(),
            election_revision,
        ));
        let alarm_task = tokio::spawn(space::watch_alarms(shared.clone()));
        info!(
            endpoints = %endpoints,
            lease_id = lease.id(),
            ttl_secs = shared.ttl_secs,
            "connected to etcd"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                shutdown: shutdown_tx,
                closed: AtomicBool::new(false),
                keep_alive: Mutex::new(Some(keep_alive)),
                membership_task: Mutex::new(Some(membership_task)),
                election_task: Mutex::new(Some(election_task)),
                alarm_task: Mutex::new(Some(alarm_task)),
            }),
        })
    }

    /// The lease this node's agents are attached to. It changes when the
    /// keep-alive task has to replace a lost lease, so keys that must live
    /// and die with the node should be written through the registry rather
    /// than with a lease id read once.
    pub fn lease_id(&self) -> i64 {
        self.inner.shared.lease_id.load(Ordering::SeqCst)
    }

    /// Stops refreshing the lease without revoking it, so the node looks
    /// dead to the cluster once the TTL runs out: how tests simulate a crash
    /// without killing the process.
    #[doc(hidden)]
    pub fn stop_keep_alive_for_tests(&self) {
        if let Some(task) = take_task(&self.inner.keep_alive) {
            task.abort();
        }
    }

    fn check_open(&self) -> Result<&Shared, RegistryError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(RegistryError::Closed)
        } else {
            Ok(&self.inner.shared)
        }
    }
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("endpoints", &self.inner.shared.options.endpoints)
            .field("lease_id", &self.lease_id())
            .field("closed", &self.inner.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

fn take_task(slot: &Mutex<Option<JoinHandle<()>>>) -> Option<JoinHandle<()>> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        for slot in [
            &self.keep_alive,
            &self.membership_task,
            &self.election_task,
            &self.alarm_task,
        ] {
            if let Some(task) = take_task(slot) {
                task.abort();
            }
        }
    }
}

impl Shared {
    fn lock_indexed(&self) -> std::sync::MutexGuard<'_, Indexed> {
        self.indexed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_terms(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<watch::Sender<bool>>>> {
        self.terms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_abandoned(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.abandoned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one etcd request within the request timeout; `what` names the
    /// attempt in the error ("put of 3 task records failed"). A request
    /// refused because the token predates a change of etcd's users or roles
    /// authenticates again and fails as [`RegistryError::Unavailable`], so
    /// that the caller's retry goes through.
    async fn request<T>(
        &self,
        what: impl FnOnce() -> String,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, RegistryError> {
        let timeout = self.options.request_timeout;
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if space::is_no_space(&e) => {
                let reason = format!("{}: {e}", what());
                self.note_refusal(&reason);
                Err(RegistryError::NoSpace(reason))
            }
            Ok(Err(e)) if access::is_stale_token(&e) => {
                // etcd's users or roles changed since this node's token was
                // issued (another node's user was added): etcd refuses every
                // checked request until the node authenticates again, as
                // etcd's own client does. A retry then succeeds.
                let refreshed = tokio::time::timeout(timeout, self.client.refresh_token()).await;
                warn!(
                    refreshed = matches!(refreshed, Ok(Ok(()))),
                    "etcd's users or roles changed: authenticated again"
                );
                Err(RegistryError::Unavailable(format!(
                    "{}: {e} (authenticated again)",
                    what()
                )))
            }
            Ok(Err(e)) => Err(classify(what(), e)),
            Err(_) => Err(RegistryError::Unavailable(format!(
                "{}: no answer from etcd within {timeout:?}",
                what()
            ))),
        }
    }

    /// Revokes `lease`, best effort and briefly: failure only means the
    /// lease expires after its TTL instead.
    async fn revoke_lease(&self, lease: i64) {
        let mut client = self.client.clone();
        let timeout = self.options.request_timeout.min(REVOKE_TIMEOUT);
        match tokio::time::timeout(timeout, client.lease_revoke(lease)).await {
            Ok(Ok(_)) => info!(lease_id = lease, "revoked lease"),
            Ok(Err(e)) => warn!(
                lease_id = lease,
                error = %e,
                "lease revoke failed; it expires after its ttl"
            ),
            Err(_) => warn!(
                lease_id = lease,
                timeout = ?timeout,
                "lease revoke timed out; it expires after its ttl"
            ),
        }
    }

    /// Writes task records in transactions of at most
    /// [`MAX_RECORDS_PER_TXN`] puts, each guarded by `fence` if given.
    async fn put_records(
        &self,
        records: &[Arc<TaskRecord>],
        fence: Option<&Fence>,
    ) -> Result<(), RegistryError> {
        let not_leader = |written| RegistryError::NotLeader {
            fence_revision: fence.map_or(0, |f| f.revision),
            written,
        };
        // A term on a lease this node has replaced is over, whatever etcd
        // still holds: the old lease is refreshed by nobody.
        if fence.is_some_and(|f| f.lease != self.lease_id.load(Ordering::SeqCst)) {
            return Err(not_leader(0));
        }
        if records.is_empty() {
            return Ok(());
        }
        // etcd refuses a transaction that writes one key twice; the last
        // record of an id wins, as it would with separate puts.
        let mut latest: HashMap<&TaskId, usize> = HashMap::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            latest.insert(&record.id, i);
        }
        let indexed = self.lock_indexed().clone_for(&latest);
        let mut puts: Vec<(&TaskRecord, TxnOp, u64)> = Vec::with_capacity(latest.len());
        for (i, record) in records.iter().enumerate() {
            if latest.get(&record.id) == Some(&i) {
                let key = keys::task(&record.id);
                let value = encode(&key, record.as_ref())?;
                let bytes = u64::try_from(value.len()).unwrap_or(u64::MAX);
                puts.push((record.as_ref(), TxnOp::put(key, value, None), bytes));
                if !indexed.contains(&record.id) {
                    puts.extend(
                        beside(record)
                            .into_iter()
                            .map(|op| (record.as_ref(), op, NOT_A_RECORD)),
                    );
                }
            }
        }
        let total = latest.len();
        let mut written = 0;
        let mut rest = puts;
        while !rest.is_empty() {
            // Ops of one record stay in one transaction.
            let mut take = 0;
            let mut records_taken = 0;
            while take < rest.len() {
                if rest[take].2 != NOT_A_RECORD {
                    let ops = 1 + rest[take + 1..]
                        .iter()
                        .take_while(|(_, _, bytes)| *bytes == NOT_A_RECORD)
                        .count();
                    if records_taken == MAX_RECORDS_PER_TXN || take + ops > MAX_OPS_PER_TXN {
                        break;
                    }
                    records_taken += 1;
                    take += ops;
                } else {
                    take += 1;
                }
            }
            let later = rest.split_off(take);
            let (ops, chunk): (Vec<TxnOp>, Vec<(&TaskRecord, u64)>) =
                std::mem::replace(&mut rest, later)
                    .into_iter()
                    .map(|(record, op, bytes)| (op, (record, bytes)))
                    .unzip();
            let chunk: Vec<(&TaskRecord, u64)> = chunk
                .into_iter()
                .filter(|(_, bytes)| *bytes != NOT_A_RECORD)
                .collect();
            let mut txn = Txn::new();
            if let Some(fence) = fence {
                txn = txn.when([election::fence_compare(fence)]);
            }
            let mut client = self.client.clone();
            let response = self
                .request(
                    || {
                        if total <= MAX_RECORDS_PER_TXN {
                            format!("put of {total} task records failed")
                        } else {
                            format!(
                                "put of task records {}..{} of {total} failed \
                                 ({written} written before)",
                                written + 1,
                                written + chunk.len()
                            )
                        }
                    },
                    client.txn(txn.and_then(ops)),
                )
                .await?;
            // Without a compare a transaction always succeeds.
            if !response.succeeded() {
                return Err(not_leader(written));
            }
            let revision = response.header().map_or(0, |h| h.revision());
            self.lock_indexed()
                .note(chunk.iter().map(|(record, _)| *record));
            self.note_written(&chunk, revision);
            written += chunk.len();
        }
        Ok(())
    }

    /// Every task record that is not terminal, in key order, read page by
    /// page at one revision. Records that do not decode are skipped with a
    /// warning.
    /// Rebuilds the index of ended tasks on the way, as the listing sees
    /// every record.
    async fn unfinished_tasks(&self) -> Result<Vec<TaskRecord>, RegistryError> {
        let mut unfinished = Vec::new();
        let mut ended = EndedIndex::default();
        let generation = self.ended_generation();
        let (pages, revision) = self
            .list_range(
                keys::TASKS,
                &keys::tasks_end(),
                self.options.task_page_size,
                "task records",
                |kv| {
                    let key = String::from_utf8_lossy(kv.key());
                    match decode::<TaskRecord>(&key, kv.value()) {
                        Ok(record) if !record.status.is_terminal() => unfinished.push(record),
                        Ok(record) => ended.note(
                            &record.id,
                            true,
                            record.updated_ms,
                            u64::try_from(kv.value().len()).unwrap_or(u64::MAX),
                            kv.mod_revision(),
                            TaskKeys::of(&record),
                        ),
                        Err(e) => warn!(key = %key, error = %e, "skipping corrupt task record"),
                    }
                },
            )
            .await?;
        self.ended_listed(ended, revision, generation);
        debug!(
            unfinished = unfinished.len(),
            pages, revision, "listed unfinished task records"
        );
        Ok(unfinished)
    }

    /// Reads every key in `[start, end)` in key order, `page` keys per
    /// request (at least 1), every page at the revision of the first, so
    /// the listing is one consistent moment however long it is. Calls
    /// `each` for every key; returns the pages read and the revision.
    /// `what` names the keys in the error ("task records").
    async fn list_range(
        &self,
        start: &str,
        end: &str,
        page: usize,
        what: &str,
        mut each: impl FnMut(&KeyValue),
    ) -> Result<(usize, i64), RegistryError> {
        let page = i64::try_from(page.max(1)).unwrap_or(i64::MAX);
        let mut start = start.as_bytes().to_vec();
        // 0 reads the newest revision; every later page reads the first's.
        let mut revision = 0;
        let mut pages = 0usize;
        loop {
            let options = GetOptions::new()
                .with_range(end)
                .with_limit(page)
                .with_revision(revision);
            let mut client = self.client.clone();
            let response = self
                .request(
                    || format!("listing of {what} failed after {pages} pages"),
                    client.get(start.clone(), Some(options)),
                )
                .await?;
            pages += 1;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            response.kvs().iter().for_each(&mut each);
            match response.kvs().last() {
                Some(last) if response.more() => {
                    // The smallest key after the last one.
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((pages, revision)),
            }
        }
    }

    /// Reads one task record and the store revision it was read at. The
    /// outer error is a failed request; the inner one a record that does
    /// not decode.
    async fn read_task(
        &self,
        id: &TaskId,
    ) -> Result<(Option<Result<TaskRecord, RegistryError>>, i64), RegistryError> {
        let key = keys::task(id);
        let mut client = self.client.clone();
        let response = self
            .request(
                || format!("get of task record '{id}' failed"),
                client.get(key.as_str(), None),
            )
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let record = response
            .kvs()
            .first()
            .map(|kv| decode::<TaskRecord>(&key, kv.value()));
        Ok((record, revision))
    }
}

/// Sorts an etcd failure into what a retry may fix and what it cannot; the
/// one place that decides. etcd refuses a request for its content with
/// `INVALID_ARGUMENT` ("request is too large", "too many operations in txn
/// request"), the gRPC layer a message over etcd's receive limit with
/// `RESOURCE_EXHAUSTED`, and the client one over its own send limit with
/// `OUT_OF_RANGE`. etcd's NOSPACE alarm shares `RESOURCE_EXHAUSTED`
/// ("database space exceeded"), but it clears once space is freed; it is
/// told apart before this, as [`RegistryError::NoSpace`].
fn classify(what: String, error: etcd_client::Error) -> RegistryError {
    let refused = match &error {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => true,
            tonic::Code::ResourceExhausted => !status.message().contains("database space exceeded"),
            _ => false,
        },
        _ => false,
    };
    let message = format!("{what}: {}", access::describe(&error));
    if refused {
        RegistryError::Refused(message)
    } else {
        RegistryError::Unavailable(message)
    }
}

fn encode<T: serde::Serialize>(key: &str, value: &T) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(value).map_err(|e| RegistryError::Corrupt {
        key: key.to_owned(),
        message: format!("cannot encode: {e}"),
    })
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

#[async_trait]
impl AgentDirectory for EtcdRegistry {
    async fn register(&self, agent: AgentRegistration) -> Result<(), RegistryError> {
        let shared = self.check_open()?;
        let mut node = shared.node.lock().await;
        // An agent registered before is expected on the current lease, a
        // new one absent; `put_agent` follows the key where it really is.
        let first = if node.agents.contains_key(&agent.id) {
            Expect::Lease(node.lease)
        } else {
            Expect::Absent
        };
        shared.put_agent(&mut node, &agent, first).await
    }

    async fn deregister(&self, id: &AgentId) -> Result<(), RegistryError> {
        let shared = self.check_open()?;
        let mut node = shared.node.lock().await;
        shared.delete_agent(&mut node, id).await
    }

    fn membership(&self) -> watch::Receiver<Arc<Membership>> {
        self.inner.shared.membership.subscribe()
    }

    fn store_reachable(&self) -> watch::Receiver<bool> {
        self.inner.shared.reachable.subscribe()
    }
}

#[async_trait]
impl TaskStore for EtcdRegistry {
    async fn put_tasks(&self, records: &[Arc<TaskRecord>]) -> Result<(), RegistryError> {
        self.check_open()?.put_records(records, None).await
    }

    async fn put_tasks_fenced(
        &self,
        records: &[Arc<TaskRecord>],
        fence: &Fence,
    ) -> Result<(), RegistryError> {
        self.check_open()?.put_records(records, Some(fence)).await
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, RegistryError> {
        let shared = self.check_open()?;
        shared.read_task(id).await?.0.transpose()
    }

    async fn watch_task(&self, id: &TaskId) -> Result<TaskWatch, RegistryError> {
        let shared = self.check_open()?;
        // Read first so an unreachable etcd is an error of this call rather
        // than a stream that silently waits.
        let (current, revision) = shared.read_task(id).await?;
        Ok(task_watch::spawn(
            self.inner.shared.clone(),
            id.clone(),
            current,
            revision,
        ))
    }

    async fn unfinished_tasks(&self) -> Result<Vec<TaskRecord>, RegistryError> {
        self.check_open()?.unfinished_tasks().await
    }

    async fn ended_tasks(&self, limit: usize) -> Result<EndedTasks, RegistryError> {
        self.check_open()?.ended_tasks(limit).await
    }

    async fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage, RegistryError> {
        self.check_open()?.list_tasks(query).await
    }

    async fn task_for_idempotency_key(
        &self,
        scope: &ClientId,
        key: &IdempotencyKey,
    ) -> Result<Option<TaskId>, RegistryError> {
        self.check_open()?
            .task_for_idempotency_key(scope, key)
            .await
    }

    async fn delete_tasks_fenced(
        &self,
        tasks: &[EndedTask],
        fence: &Fence,
    ) -> Result<(), RegistryError> {
        let shared = self.check_open()?;
        if fence.lease != shared.lease_id.load(Ordering::SeqCst) {
            return Err(RegistryError::NotLeader {
                fence_revision: fence.revision,
                written: 0,
            });
        }
        shared.delete_tasks(tasks, fence).await
    }

    fn store_full(&self) -> watch::Receiver<Option<String>> {
        self.inner.shared.full.subscribe()
    }
}

#[async_trait]
impl Election for EtcdRegistry {
    async fn campaign(&self, candidate: &AgentId) -> Result<Leadership, RegistryError> {
        self.check_open()?;
        let shared = &self.inner.shared;
        let won = election::campaign(shared, candidate).await?;
        // The last leader's writes are not in this node's index.
        shared.ended_may_have_missed_writes();
        Ok(won)
    }

    async fn resign(&self, leadership: &Leadership) -> Result<(), RegistryError> {
        match self.check_open() {
            Ok(shared) => election::resign(shared, leadership).await,
            // Shutdown ended every term and revoked the lease, and with it
            // the leader key: nothing is left to give up.
            Err(_) => Ok(()),
        }
    }

    fn leader(&self) -> watch::Receiver<Option<AgentId>> {
        self.inner.shared.leader.subscribe()
    }
}

#[async_trait]
impl ReputationStore for EtcdRegistry {
    async fn reputation(
        &self,
        agent: &AgentId,
        capability: &str,
    ) -> Result<Option<Reputation>, RegistryError> {
        self.check_open()?.reputation(agent, capability).await
    }

    async fn reputations(&self) -> Result<Vec<ReputationEntry>, RegistryError> {
        self.check_open()?.reputations().await
    }

    async fn update_reputation(
        &self,
        agent: &AgentId,
        capability: &str,
        update: &(dyn Fn(Option<Reputation>) -> Reputation + Send + Sync),
    ) -> Result<Reputation, RegistryError> {
        self.check_open()?
            .update_reputation(agent, capability, update)
            .await
    }
}

#[async_trait]
impl EventStore for EtcdRegistry {
    async fn write_events_fenced(
        &self,
        writes: &[EventWrite],
        fence: &Fence,
    ) -> Result<usize, RegistryError> {
        self.check_open()?.write_events(writes, fence).await
    }

    async fn pending_events(
        &self,
    ) -> Result<Vec<agentmesh_core::events::EventRecord>, RegistryError> {
        self.check_open()?.pending_events().await
    }

    async fn dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<agentmesh_core::events::DeadLetter>, RegistryError> {
        self.check_open()?.dead_letters(limit).await
    }
}

#[async_trait]
impl RequestMemoryStore for EtcdRegistry {
    async fn request_memory(
        &self,
    ) -> Result<Vec<agentmesh_core::request::memory::MemoryEntry>, RegistryError> {
        self.check_open()?.request_memory().await
    }

    async fn remember_request(
        &self,
        entry: agentmesh_core::request::memory::MemoryEntry,
        max: usize,
    ) -> Result<Vec<TaskId>, RegistryError> {
        self.check_open()?.remember_request(entry, max).await
    }
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.shutdown.send_replace(true);
        // Stop the keep-alive first, so it cannot grant a new lease after
        // the revoke below.
        for slot in [
            &self.inner.keep_alive,
            &self.inner.membership_task,
            &self.inner.election_task,
            &self.inner.alarm_task,
        ] {
            if let Some(task) = take_task(slot) {
                task.abort();
                // Cancelled, or a panic already logged by the runtime:
                // either way the task is over.
                let _ = task.await;
            }
        }
        let shared = &self.inner.shared;
        // Leadership ends here, before the revoke deletes the leader key,
        // so this node stops acting as the leader before anyone else starts.
        election::end_all_terms(shared);
        let lease = {
            let mut node = shared.node.lock().await;
            node.agents.clear();
            node.lease
        };
        shared.revoke_lease(lease).await;
        info!(lease_id = lease, "etcd registry shut down");
    }
}

/// The next response of a watch stream, or why the watch cannot go on
/// (stream ended, failed, compacted past `start`, or cancelled by etcd).
fn usable_watch_response(
    message: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    start: i64,
) -> Result<etcd_client::WatchResponse, String> {
    let response = match message {
        Ok(Some(response)) => response,
        Ok(None) => return Err("watch stream closed by etcd".into()),
        Err(e) => return Err(e.to_string()),
    };
    if response.compact_revision() > 0 {
        return Err(format!(
            "revision {start} was compacted (oldest kept: {})",
            response.compact_revision()
        ));
    }
    if response.canceled() {
        return Err(format!(
            "watch cancelled by etcd: {}",
            response.cancel_reason()
        ));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_rounded_up_to_whole_seconds_and_at_least_one() {
        let ttl = |d| EtcdOptions::new(vec![]).with_lease_ttl(d).ttl_secs();
        assert_eq!(ttl(Duration::from_secs(2)), 2);
        assert_eq!(ttl(Duration::from_millis(2500)), 3);
        assert_eq!(ttl(Duration::from_millis(10)), 1);
        assert_eq!(ttl(Duration::ZERO), 1);
    }

    #[tokio::test]
    async fn connect_without_endpoints_is_unavailable() {
        let err = EtcdRegistry::connect(EtcdOptions::new(vec![]))
            .await
            .expect_err("no endpoints must fail");
        assert!(
            matches!(err, RegistryError::Unavailable(ref m) if m.contains("no etcd endpoints"))
        );
    }

    #[test]
    fn etcd_refusals_of_the_request_are_permanent_and_the_rest_transient() {
        let status = |code, message: &str| {
            classify(
                "put of 1 task records failed".into(),
                etcd_client::Error::GRpcStatus(tonic::Status::new(code, message)),
            )
        };
        for refused in [
            status(
                tonic::Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            status(
                tonic::Code::ResourceExhausted,
                "grpc: received message larger than max (4980000 vs. 2097152)",
            ),
        ] {
            assert!(matches!(refused, RegistryError::Refused(_)), "{refused}");
            assert!(!refused.is_transient());
            assert!(refused.to_string().contains("put of 1 task records failed"));
        }
        for transient in [
            status(tonic::Code::Unavailable, "etcdserver: leader changed"),
            status(
                tonic::Code::DeadlineExceeded,
                "etcdserver: request timed out",
            ),
            status(
                tonic::Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            classify("get".into(), etcd_client::Error::Internal("closed".into())),
        ] {
            assert!(transient.is_transient(), "{transient}");
        }
    }
}
