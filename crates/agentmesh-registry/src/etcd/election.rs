//! Coordinator election over etcd, and how a leader notices it no longer
//! leads.
//!
//! # Protocol
//!
//! The election is etcd's own (the `concurrency.Election` recipe that
//! etcd's `Election` gRPC service and `etcdctl elect` run), spoken with
//! plain KV requests. Each node has one candidate key,
//! [`keys::coordinator_candidate`] (the election name, a slash and the
//! node's lease id in hex), holding the candidate's agent id and attached to
//! the node's lease. The candidate whose key was created first (lowest
//! create revision) leads; the others wait for every older key to go. A
//! leader key disappears when its node resigns, shuts down (lease revoked)
//! or dies (lease expired), and the next oldest candidate leads. The leader
//! key's create revision is the fence: it is unique to one term, and every
//! fenced write compares it.
//!
//! KV requests rather than the `Campaign` RPC, because that RPC blocks
//! until the candidate leads while every request of this client is bounded
//! by [`super::EtcdOptions::request_timeout`]: a cancelled campaign makes
//! etcd delete the candidate key, so waiting candidates would churn.
//! Neither does `Observe` report that nobody leads.
//!
//! # One view of the candidates
//!
//! A background task lists [`keys::ELECTION_COORDINATOR_CANDIDATES`] and
//! watches it from the list's revision + 1 (re-listing after any
//! interruption, as the membership task does), and publishes every change
//! of the candidate set. Everything else reads that view: [`leader`]
//! publishes the oldest candidate's agent id, a campaign waits until its own
//! key is the oldest, and a leader's monitor watches its key vanish. The
//! view is always the store at some revision, so "my key is the oldest in
//! the view" means this node led at that revision, and nothing but the
//! deletion of its key (which the view then shows) can end that.
//!
//! # How a leader notices the loss
//!
//! Each won term gets a monitor task that sets `held` to `false` as soon as
//! any of these happens:
//!
//! 1. the view shows the leader key deleted or created anew: a resign, a
//!    lease expiry or revoke, or someone deleting it by hand;
//! 2. the keep-alive task replaced the node's lease (after failed refreshes
//!    or an expired lease): the key lives on the old lease, which nobody
//!    refreshes any more;
//! 3. etcd reports the lease gone when the monitor asks for its remaining
//!    time (every TTL/3);
//! 4. the lease cannot be confirmed alive in time: each answer to that
//!    question moves a deadline to when the lease must have expired by
//!    etcd's account (when the question was sent + the remaining TTL + 1 s,
//!    as etcd rounds down to whole seconds), and the monitor gives up when
//!    the deadline passes without a newer answer. This is what tells a
//!    partitioned leader, which sees neither events nor answers, that a
//!    standby may lead by now;
//! 5. [`resign`] was called (before the key is deleted) or the registry
//!    shuts down (before the lease is revoked).
//!
//! After 2, 3 or 4 the leader key may still exist (an old lease that has
//! not run out yet, or one etcd restored with a fresh TTL after a restart),
//! so the monitor deletes it, retrying until etcd answers: etcd would
//! otherwise count as leader a node that no longer acts as one, and every
//! standby would wait for it. A campaign of the same node deletes such a
//! key too rather than join the lost term.
//!
//! `held` is the leader's own belief, for it to stop acting as the leader.
//! What keeps a deposed leader from doing harm is the fence: a fenced write
//! fails once the leader key with that create revision is gone, whatever
//! the deposed leader believes.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentmesh_core::AgentId;
use etcd_client::{
    Compare, CompareOp, Event, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Shared;
use super::backoff::{Backoff, sleep_unless_stopped, stopped};
use super::prefix_watch::PrefixView;
use crate::{Fence, Leadership, RegistryError, keys};

/// Shortest interval of the monitor's checks, whatever the TTL.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// etcd reports a lease's remaining time rounded down to whole seconds.
const TTL_GRANULARITY: Duration = Duration::from_secs(1);

/// The candidates of the coordinator election as one revision of the store
/// had them: candidate key → (create revision, agent id).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Candidates(BTreeMap<Vec<u8>, (i64, AgentId)>);

impl Candidates {
    fn from_kvs(kvs: &[KeyValue]) -> Self {
        let mut candidates = Self::default();
        for kv in kvs {
            candidates.put(kv);
        }
        candidates
    }

    fn put(&mut self, kv: &KeyValue) {
        // The value is whatever the candidate campaigned with; an agent id
        // for agentmesh nodes, anything for a foreign `etcdctl elect`.
        let candidate = AgentId::new(String::from_utf8_lossy(kv.value()));
        self.0
            .insert(kv.key().to_vec(), (kv.create_revision(), candidate));
    }

    /// The create revision of `key`, if it is a candidate.
    fn revision_of(&self, key: &[u8]) -> Option<i64> {
        self.0.get(key).map(|(revision, _)| *revision)
    }

    /// The leading candidate: the one created first.
    fn leader(&self) -> Option<(&[u8], &AgentId)> {
        self.0
            .iter()
            .min_by_key(|(key, (revision, _))| (*revision, *key))
            .map(|(key, (_, candidate))| (key.as_slice(), candidate))
    }
}

/// Lists the candidates; returns them and the store revision of the list.
pub(super) async fn list_candidates(shared: &Shared) -> Result<(Candidates, i64), RegistryError> {
    let mut client = shared.client.clone();
    let response = shared
        .request(
            || "listing of coordinator candidates failed".to_owned(),
            client.get(
                keys::ELECTION_COORDINATOR_CANDIDATES,
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await?;
    let revision = response.header().map_or(0, |h| h.revision());
    Ok((Candidates::from_kvs(response.kvs()), revision))
}

/// Publishes `candidates` and, when it changed, their leader.
pub(super) fn publish(shared: &Shared, candidates: &Candidates) {
    let changed = shared.candidates.send_if_modified(|current| {
        if **current == *candidates {
            false
        } else {
            *current = Arc::new(candidates.clone());
            true
        }
    });
    if !changed {
        return;
    }
    let leader = candidates.leader().map(|(_, candidate)| candidate.clone());
    shared.leader.send_if_modified(|current| {
        if *current == leader {
            false
        } else {
            debug!(leader = ?leader.as_ref().map(AgentId::as_str), "coordinator leader changed");
            *current = leader;
            true
        }
    });
}

impl PrefixView for Candidates {
    const NAME: &'static str = "coordinator candidates";
    const PREFIX: &'static str = keys::ELECTION_COORDINATOR_CANDIDATES;

    fn published(shared: &Shared) -> Self {
        (**shared.candidates.borrow()).clone()
    }

    fn list(shared: &Shared) -> impl Future<Output = Result<(Self, i64), RegistryError>> + Send {
        list_candidates(shared)
    }

    fn apply(&mut self, event: &Event) -> bool {
        let Some(kv) = event.kv() else {
            return false;
        };
        match event.event_type() {
            EventType::Put => self.put(kv),
            EventType::Delete => {
                self.0.remove(kv.key());
            }
        }
        // `publish` compares with what is published.
        true
    }

    fn publish(&self, shared: &Shared) {
        publish(shared, self);
    }
}

/// How often a campaign re-checks the lease and a monitor asks etcd about
/// it: as often as the keep-alive refreshes it.
fn check_interval(shared: &Shared) -> Duration {
    let ttl = Duration::from_secs(u64::try_from(shared.ttl_secs).unwrap_or(1));
    (ttl / 3).max(MIN_CHECK_INTERVAL)
}

/// Why one attempt of a campaign did not win.
enum Retry {
    /// The candidate key vanished or the lease changed: campaign again now.
    Again(String),
    /// A request failed: campaign again after a backoff.
    Failed(RegistryError),
}

/// Campaigns until this node leads; see [`crate::Election::campaign`].
pub(super) async fn campaign(
    shared: &Arc<Shared>,
    candidate: &AgentId,
) -> Result<Leadership, RegistryError> {
    let mut shutdown = shared.shutdown.clone();
    let mut backoff = Backoff::new();
    loop {
        if *shutdown.borrow() {
            return Err(RegistryError::Closed);
        }
        let retry = match attempt(shared, candidate).await {
            Ok(leadership) => return Ok(leadership),
            Err(Some(retry)) => retry,
            Err(None) => return Err(RegistryError::Closed),
        };
        let delay = backoff.next_delay();
        match retry {
            Retry::Again(reason) => {
                debug!(candidate = %candidate, reason = %reason, "campaigning again");
            }
            Retry::Failed(e) => {
                warn!(candidate = %candidate, error = %e, retry_in = ?delay, "campaign failed");
            }
        }
        // Also after a vanished key: a lease that is gone but not yet
        // replaced would otherwise make this loop spin.
        if !sleep_unless_stopped(delay, &mut shutdown).await {
            return Err(RegistryError::Closed);
        }
    }
}

/// One attempt: puts (or joins) this node's candidate key and waits until
/// it leads. `Err(None)` means the registry shut down.
async fn attempt(shared: &Arc<Shared>, candidate: &AgentId) -> Result<Leadership, Option<Retry>> {
    let lease = shared.lease_id.load(Ordering::SeqCst);
    let key = keys::coordinator_candidate(lease);
    let (revision, guard) = put_candidate(shared, &key, lease, candidate)
        .await
        .map_err(Some)?;
    debug!(candidate = %candidate, key = %key, revision, "campaigning");

    let mut view = shared.candidates.subscribe();
    let mut shutdown = shared.shutdown.clone();
    let interval = check_interval(shared);
    let mut seen = false;
    loop {
        if shared.lease_id.load(Ordering::SeqCst) != lease {
            return Err(Some(Retry::Again(format!(
                "lease {lease} was replaced while campaigning"
            ))));
        }
        let leads = {
            let candidates = view.borrow_and_update();
            match candidates.revision_of(key.as_bytes()) {
                Some(r) if r == revision => seen = true,
                // Deleted and created again by another campaign of this
                // node: join that one.
                Some(r) if r > revision => {
                    return Err(Some(Retry::Again("candidate key was replaced".into())));
                }
                // Not in the view yet, or an older term's key the view
                // has not seen deleted yet.
                Some(_) | None if !seen => {}
                Some(_) | None => {
                    return Err(Some(Retry::Again("candidate key was deleted".into())));
                }
            }
            seen && candidates
                .leader()
                .is_some_and(|(leader, _)| leader == key.as_bytes())
        };
        if leads {
            break;
        }
        tokio::select! {
            _ = stopped(&mut shutdown) => return Err(None),
            // The sender lives in `shared`, which this task holds.
            _ = view.changed() => {}
            _ = tokio::time::sleep(interval) => {
                // A key deleted before the view ever showed it (both events
                // in one watch response, or gone before a re-list) would
                // otherwise be waited for forever.
                if !seen && !candidate_exists(shared, &key, revision).await.map_err(Some)? {
                    return Err(Some(Retry::Again("candidate key was deleted".into())));
                }
            }
        }
    }

    let fence = Fence {
        key,
        revision,
        lease,
    };
    let deadline = match confirm_lease(shared, lease).await {
        Ok(Some(deadline)) => deadline,
        Ok(None) => {
            return Err(Some(Retry::Again(format!(
                "lease {lease} expired while campaigning"
            ))));
        }
        Err(e) => return Err(Some(Retry::Failed(e))),
    };
    guard.disarm();
    Ok(take_office(shared, candidate, fence, deadline))
}

/// Creates this node's candidate key, or joins it if the node already has
/// one (then taking over its value). Returns the key's create revision and
/// a guard that withdraws a key created here unless disarmed. A key left
/// from a term this node gave up for lost is deleted rather than joined:
/// that term is over, even though etcd has not deleted its key yet.
async fn put_candidate(
    shared: &Arc<Shared>,
    key: &str,
    lease: i64,
    candidate: &AgentId,
) -> Result<(i64, CandidacyGuard), Retry> {
    let value = candidate.as_str().as_bytes().to_vec();
    let put = || {
        TxnOp::put(
            key,
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
    };
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([put()])
        .or_else([TxnOp::get(key, None)]);
    // The creation runs in a task of its own, and a created key travels
    // back inside its withdrawal guard: if the campaign is dropped while
    // etcd applies the creation, or before it reads the answer, the guard
    // is dropped with the unread answer and withdraws the key, instead of
    // leaving a candidate nobody acts for under the node's live lease.
    let (created, creation) = tokio::sync::oneshot::channel();
    let task_shared = shared.clone();
    let task_key = key.to_owned();
    tokio::spawn(async move {
        let mut client = task_shared.client.clone();
        let outcome = task_shared
            .request(
                || format!("creation of coordinator candidate key '{task_key}' failed"),
                client.txn(txn),
            )
            .await
            .map(|response| {
                let guard = response.succeeded().then(|| {
                    let revision = response.header().map_or(0, |h| h.revision());
                    (
                        revision,
                        CandidacyGuard::new(&task_shared, &task_key, revision),
                    )
                });
                (response, guard)
            });
        // Unread or undelivered, the guard withdraws the key as it drops.
        let _ = created.send(outcome);
    });
    let mut client = shared.client.clone();
    let (response, guard) = creation
        .await
        .map_err(|_| Retry::Again("candidate key creation was interrupted".into()))?
        .map_err(Retry::Failed)?;
    if let Some((revision, guard)) = guard {
        return Ok((revision, guard));
    }
    let existing = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    });
    let Some(existing) = existing else {
        // Deleted between the compare and the get: cannot happen within one
        // transaction, but a retry sorts it out either way.
        return Err(Retry::Again("candidate key vanished".into()));
    };
    let revision = existing.create_revision();
    if shared.lock_abandoned().contains(&revision) {
        let fence = Fence {
            key: key.to_owned(),
            revision,
            lease,
        };
        delete_leader_key(shared, &fence)
            .await
            .map_err(Retry::Failed)?;
        shared.lock_abandoned().remove(&revision);
        return Err(Retry::Again(format!(
            "deleted the key of lost term {revision} before campaigning anew"
        )));
    }
    if existing.value() != value.as_slice() {
        // A put to an existing key keeps its create revision: the
        // candidacy stays where it is in the queue.
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, revision)])
            .and_then([put()]);
        shared
            .request(
                || format!("update of coordinator candidate key '{key}' failed"),
                client.txn(txn),
            )
            .await
            .map_err(Retry::Failed)?;
    }
    // The key is under this node's lease, so this node created it — in an
    // earlier attempt of this campaign whose answer was lost, typically
    // (one campaign runs per registry at a time). It is ours to withdraw.
    Ok((revision, CandidacyGuard::new(shared, key, revision)))
}

/// Whether `key` exists with create revision `revision`.
async fn candidate_exists(shared: &Shared, key: &str, revision: i64) -> Result<bool, Retry> {
    let mut client = shared.client.clone();
    let response = shared
        .request(
            || format!("get of coordinator candidate key '{key}' failed"),
            client.get(key, None),
        )
        .await
        .map_err(Retry::Failed)?;
    Ok(response
        .kvs()
        .first()
        .is_some_and(|kv| kv.create_revision() == revision))
}

/// Withdraws a candidacy whose campaign was dropped before it won: a
/// forgotten candidate key would otherwise lead, with nobody acting as
/// the leader, until the node's lease ends.
struct CandidacyGuard(Option<(Arc<Shared>, Fence)>);

impl CandidacyGuard {
    fn new(shared: &Arc<Shared>, key: &str, revision: i64) -> Self {
        let fence = Fence {
            key: key.to_owned(),
            revision,
            lease: 0,
        };
        Self(Some((shared.clone(), fence)))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CandidacyGuard {
    fn drop(&mut self) {
        let Some((shared, fence)) = self.0.take() else {
            return;
        };
        // Without a runtime (it is shutting down) the lease ends it anyway.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = delete_leader_key(&shared, &fence).await {
                    warn!(key = %fence.key, error = %e, "withdrawing a dropped candidacy failed");
                }
            });
        }
    }
}

/// Asks etcd how long `lease` has left. `Some(deadline)`: the instant by
/// which, by etcd's account, it must have expired unless refreshed;
/// `None`: etcd no longer knows the lease.
async fn confirm_lease(shared: &Shared, lease: i64) -> Result<Option<Instant>, RegistryError> {
    let mut client = shared.client.clone();
    let asked = Instant::now();
    let response = shared
        .request(
            || format!("time-to-live query of lease {lease} failed"),
            client.lease_time_to_live(lease, None),
        )
        .await?;
    // -1 for a lease etcd does not know (expired or revoked).
    let Ok(remaining) = u64::try_from(response.ttl()) else {
        return Ok(None);
    };
    Ok(Some(
        asked + Duration::from_secs(remaining) + TTL_GRANULARITY,
    ))
}

/// Registers a won term and starts its monitor; a term this node already
/// holds (a second campaign of the same node) shares the first one's flag.
fn take_office(
    shared: &Arc<Shared>,
    candidate: &AgentId,
    fence: Fence,
    deadline: Instant,
) -> Leadership {
    let mut terms = shared.lock_terms();
    let held = if let Some(held) = terms.get(&fence.revision) {
        held.subscribe()
    } else {
        let (sender, receiver) = watch::channel(true);
        let sender = Arc::new(sender);
        terms.insert(fence.revision, sender.clone());
        tokio::spawn(monitor(shared.clone(), fence.clone(), deadline, sender));
        info!(
            candidate = %candidate,
            key = %fence.key,
            fence = fence.revision,
            "won coordinator leadership"
        );
        receiver
    };
    Leadership {
        candidate: candidate.clone(),
        fence,
        held,
    }
}

/// How a term ended.
enum TermEnd {
    KeyDeleted,
    /// Lost while the leader key may still exist.
    Lost(String),
    Resigned,
    Shutdown,
}

/// Watches one term until it ends (see the module doc for what ends it),
/// then sets its flag to `false`.
async fn monitor(
    shared: Arc<Shared>,
    fence: Fence,
    mut deadline: Instant,
    held: Arc<watch::Sender<bool>>,
) {
    let mut view = shared.candidates.subscribe();
    let mut shutdown = shared.shutdown.clone();
    let mut flag = held.subscribe();
    let interval = check_interval(&shared);
    let mut next_check = Instant::now() + interval;
    let end = loop {
        if shared.lease_id.load(Ordering::SeqCst) != fence.lease {
            break TermEnd::Lost("the node's lease was replaced".into());
        }
        if view.borrow_and_update().revision_of(fence.key.as_bytes()) != Some(fence.revision) {
            break TermEnd::KeyDeleted;
        }
        tokio::select! {
            _ = stopped(&mut shutdown) => break TermEnd::Shutdown,
            _ = ended(&mut flag) => break TermEnd::Resigned,
            _ = view.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                break TermEnd::Lost(format!(
                    "lease {} could not be confirmed alive before etcd expires it unrefreshed",
                    fence.lease
                ));
            }
            _ = tokio::time::sleep_until(next_check) => {
                next_check = Instant::now() + interval;
                let answer = tokio::time::timeout_at(deadline, confirm_lease(&shared, fence.lease));
                match answer.await {
                    Ok(Ok(Some(confirmed))) => deadline = deadline.max(confirmed),
                    Ok(Ok(None)) => {
                        break TermEnd::Lost(format!("etcd reports lease {} gone", fence.lease));
                    }
                    Ok(Err(e)) => debug!(error = %e, "lease check of the coordinator leader failed"),
                    // The deadline branch reports it on the next round.
                    Err(_) => {}
                }
            }
        }
    };
    if matches!(end, TermEnd::Lost(_)) {
        shared.lock_abandoned().insert(fence.revision);
    }
    shared.lock_terms().remove(&fence.revision);
    let was_held = held.send_replace(false);
    match &end {
        TermEnd::KeyDeleted if was_held => warn!(
            key = %fence.key,
            fence = fence.revision,
            reason = "the leader key was deleted",
            "coordinator leadership lost"
        ),
        TermEnd::Lost(reason) if was_held => warn!(
            key = %fence.key,
            fence = fence.revision,
            reason = %reason,
            "coordinator leadership lost"
        ),
        TermEnd::Shutdown if was_held => info!(
            key = %fence.key,
            fence = fence.revision,
            "coordinator leadership ended by shutdown"
        ),
        // Whoever ended it first (resign, shutdown) has said so.
        _ => {}
    }
    if matches!(end, TermEnd::Lost(_)) {
        withdraw(&shared, &fence).await;
    }
}

/// Deletes the leader key of a term this node gave up for lost, retrying
/// until etcd answers or the registry shuts down: until then etcd still
/// counts this node as the leader (its lease may be alive, or come back
/// with etcd), and every standby would wait for a leader that no longer
/// acts as one.
async fn withdraw(shared: &Shared, fence: &Fence) {
    let mut shutdown = shared.shutdown.clone();
    let mut backoff = Backoff::new();
    loop {
        match delete_leader_key(shared, fence).await {
            Ok(deleted) => {
                debug!(key = %fence.key, fence = fence.revision, deleted, "withdrew lost leader key");
                shared.lock_abandoned().remove(&fence.revision);
                return;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                debug!(key = %fence.key, error = %e, retry_in = ?delay, "withdrawing lost leader key failed");
                if !sleep_unless_stopped(delay, &mut shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Resolves once a term's flag is `false`.
async fn ended(flag: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the term is over too.
    let _ = flag.wait_for(|held| !*held).await;
}

/// Ends a term on this node at once: its flag turns `false` before the key
/// goes, so the holder stops acting as the leader before anyone else can.
fn end_term(shared: &Shared, fence: &Fence) {
    if let Some(held) = shared.lock_terms().remove(&fence.revision) {
        held.send_replace(false);
    }
}

/// Ends every term of this node; used at shutdown, before the revoke.
pub(super) fn end_all_terms(shared: &Shared) {
    let terms = std::mem::take(&mut *shared.lock_terms());
    for held in terms.values() {
        held.send_replace(false);
    }
}

/// Gives up `leadership`; see [`crate::Election::resign`].
pub(super) async fn resign(shared: &Shared, leadership: &Leadership) -> Result<(), RegistryError> {
    end_term(shared, &leadership.fence);
    let deleted = delete_leader_key(shared, &leadership.fence).await?;
    info!(
        key = %leadership.fence.key,
        fence = leadership.fence.revision,
        deleted,
        "resigned coordinator leadership"
    );
    Ok(())
}

/// Deletes the leader key of `fence` if it is still that term's key;
/// `true` if it was.
async fn delete_leader_key(shared: &Shared, fence: &Fence) -> Result<bool, RegistryError> {
    let txn = Txn::new()
        .when([Compare::create_revision(
            fence.key.as_str(),
            CompareOp::Equal,
            fence.revision,
        )])
        .and_then([TxnOp::delete(fence.key.as_str(), None)]);
    let mut client = shared.client.clone();
    let response = shared
        .request(
            || format!("deletion of leader key '{}' failed", fence.key),
            client.txn(txn),
        )
        .await?;
    Ok(response.succeeded())
}

/// The compare every fenced transaction carries: the leader key still
/// exists with the create revision of the fence's term.
pub(super) fn fence_compare(fence: &Fence) -> Compare {
    Compare::create_revision(fence.key.as_str(), CompareOp::Equal, fence.revision)
}

/// Refusal of a fenced write: `fence`'s term is over. `written` counts what
/// the earlier transactions of the same call wrote.
pub(super) fn not_leader(fence: &Fence, written: usize) -> RegistryError {
    RegistryError::NotLeader {
        fence_revision: fence.revision,
        written,
    }
}

impl Shared {
    /// Runs `ops` in one transaction that applies only while `fence`'s
    /// term lasts; [`not_leader`] when it has ended. `what` names the
    /// attempt in an error.
    pub(super) async fn fenced_txn(
        &self,
        fence: &Fence,
        ops: Vec<TxnOp>,
        written: usize,
        what: impl FnOnce() -> String,
    ) -> Result<TxnResponse, RegistryError> {
        let txn = Txn::new().when([fence_compare(fence)]).and_then(ops);
        let mut client = self.client.clone();
        let response = self.request(what, client.txn(txn)).await?;
        if !response.succeeded() {
            return Err(not_leader(fence, written));
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(entries: &[(&str, i64, &str)]) -> Candidates {
        Candidates(
            entries
                .iter()
                .map(|(key, revision, id)| {
                    (key.as_bytes().to_vec(), (*revision, AgentId::new(*id)))
                })
                .collect(),
        )
    }

    #[test]
    fn the_oldest_candidate_leads() {
        let view = candidates(&[("c/2", 9, "b"), ("c/1", 7, "a"), ("c/3", 12, "c")]);
        let (key, leader) = view.leader().expect("a leader");
        assert_eq!((key, leader.as_str()), (b"c/1".as_slice(), "a"));
        assert_eq!(view.revision_of(b"c/2"), Some(9));
        assert_eq!(Candidates::default().leader(), None);
    }
}
