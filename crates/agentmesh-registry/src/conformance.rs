//! The registry contract as tests: one suite, run unchanged against every
//! backend.
//!
//! Each clause of the contract is one `pub async fn` taking a [`Backend`],
//! which makes nodes of one cluster whose store starts empty. A backend's
//! tests run every clause with
//! [`conformance_tests!`](crate::conformance_tests), one test per clause: this crate's unit tests against [`MemoryRegistry`]
//! nodes, the workspace's `registry_etcd` tests against
//! [`EtcdRegistry`](crate::EtcdRegistry) nodes on a real etcd process. What
//! only one backend does (lease expiry, outages, pagination, etcd's key
//! layout, the in-memory node's handles) is tested beside that backend.
//!
//! The clauses wait for what they expect (a view, a watch, a campaign) with
//! a deadline, [`DELIVERY`], so they hold for a backend that delivers
//! asynchronously as well as for one that delivers at once. The one
//! exception is a campaign that must *not* win while another node leads,
//! which can only be watched for a while ([`QUIET`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::reputation::Reputation;
use agentmesh_core::task::{Status, TaskFile, TaskRecord};
use agentmesh_core::{AgentId, AgentRegistration, Membership, Role, TaskId};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::watch;

use crate::{MemoryRegistry, Registry, RegistryError, ReputationEntry, TaskWatch};

/// Makes the nodes of one cluster for a clause.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A new node of the cluster. It shares the store with every other
    /// node this backend made, and owns what it registers and the
    /// leadership it wins, as a separate process would.
    async fn node(&self) -> Arc<dyn Registry>;
}

/// The cluster of a [`MemoryRegistry`]: every node is a
/// [`MemoryRegistry::join`] of it.
#[async_trait]
impl Backend for MemoryRegistry {
    async fn node(&self) -> Arc<dyn Registry> {
        Arc::new(self.join())
    }
}

/// A clause, as [`conformance_tests!`](crate::conformance_tests) hands it
/// to a backend's runner.
pub type Clause = for<'a> fn(&'a dyn Backend) -> ClauseFuture<'a>;

/// What a [`Clause`] returns: run it to completion; it panics on a breach
/// of the contract.
pub type ClauseFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Defines one `#[test]` per clause of the suite, each calling `$run` with
/// the clause. `$run` is a `fn(Clause)` that makes a fresh backend (an
/// empty store), runs the clause on a multi-threaded tokio runtime, and
/// tears the backend down:
///
/// ```ignore
/// fn run(clause: agentmesh_registry::conformance::Clause) {
///     let runtime = tokio::runtime::Builder::new_multi_thread()
///         .enable_all()
///         .build()
///         .unwrap();
///     runtime.block_on(clause(&agentmesh_registry::MemoryRegistry::new()));
/// }
///
/// mod conformance {
///     agentmesh_registry::conformance_tests!(super::run);
/// }
/// ```
///
/// A clause added to the suite is added here, and so runs on every
/// backend.
#[macro_export]
macro_rules! conformance_tests {
    ($run:path) => {
        $crate::conformance_tests!(
            @clauses $run;
            membership,
            unique_agent_ids,
            task_records,
            task_watch,
            unfinished_tasks,
            ended_tasks,
            task_listing,
            idempotency_keys,
            fenced_writes,
            election,
            reputation_records,
            concurrent_reputation_updates,
            event_records,
            request_memory,
        );
    };
    (@clauses $run:path; $($clause:ident),* $(,)?) => {
        $(
            #[test]
            fn $clause() {
                fn clause<'a>(
                    backend: &'a dyn $crate::conformance::Backend,
                ) -> $crate::conformance::ClauseFuture<'a> {
                    ::std::boxed::Box::pin($crate::conformance::$clause(backend))
                }
                $run(clause);
            }
        )*
    };
}

/// How long a change may take to reach another node's view or watch.
pub const DELIVERY: Duration = Duration::from_secs(5);

/// How long a clause watches a campaign that must keep waiting.
pub const QUIET: Duration = Duration::from_millis(300);

/// Agents register, update and deregister; every node's view follows,
/// through its watch; a node's shutdown takes its agents out of every view
/// and closes it for registrations.
pub async fn membership(backend: &dyn Backend) {
    let a = backend.node().await;
    let b = backend.node().await;
    // Taken before anything is registered: the view follows by its watch.
    let mut b_view = b.membership();
    let mut a_view = a.membership();

    a.register(agent("a-1", "a:1")).await.expect("register a-1");
    a.register(agent("a-2", "a:1")).await.expect("register a-2");
    b.register(agent("b-1", "b:1")).await.expect("register b-1");
    until("a-1, a-2 and b-1 in b's view", &mut b_view, |view| {
        ["a-1", "a-2", "b-1"].iter().all(|id| has(view, id))
    })
    .await;
    until("b-1 in a's view", &mut a_view, |view| has(view, "b-1")).await;
    assert_eq!(
        b_view.borrow().get(&AgentId::new("a-1")),
        Some(&agent("a-1", "a:1")),
        "a registration reaches other nodes as it was registered"
    );

    let mut busy = agent("a-2", "a:1");
    busy.load = 7;
    a.register(busy.clone()).await.expect("update a-2");
    until("a-2's new load in b's view", &mut b_view, |view| {
        view.get(&AgentId::new("a-2")) == Some(&busy)
    })
    .await;

    a.deregister(&AgentId::new("a-1"))
        .await
        .expect("deregister a-1");
    until("a-1 gone from b's view", &mut b_view, |view| {
        !has(view, "a-1")
    })
    .await;
    assert!(
        has(&b_view.borrow(), "a-2"),
        "deregistering a-1 must not remove a-2"
    );
    a.deregister(&AgentId::new("never-registered"))
        .await
        .expect("deregistering an unknown id is not an error");

    a.shutdown().await;
    until("a's agents gone from b's view", &mut b_view, |view| {
        !has(view, "a-2")
    })
    .await;
    assert!(
        has(&b_view.borrow(), "b-1"),
        "a's shutdown must not touch b's agents"
    );
    assert!(
        matches!(
            a.register(agent("a-3", "a:1")).await,
            Err(RegistryError::Closed)
        ),
        "a shut-down node registers nothing"
    );
    b.shutdown().await;
}

/// An agent id names one agent among live nodes: another node's
/// registration of a live id is refused with a message that says what to
/// do, and changes nothing; another node's deregistration does not remove
/// it; its owner keeps updating it; the id is free once its owner
/// deregistered it or shut down; of two nodes racing for a free id, one
/// wins.
pub async fn unique_agent_ids(backend: &dyn Backend) {
    let a = backend.node().await;
    let b = backend.node().await;
    let x = AgentId::new("x");
    let mut view = a.membership();

    a.register(agent("x", "a:1")).await.expect("a registers x");
    match b.register(agent("x", "b:1")).await {
        Err(RegistryError::DuplicateAgent { id }) => assert_eq!(id, x),
        other => panic!(
            "a second node's registration of live id x: expected DuplicateAgent, got {other:?}"
        ),
    }
    let message = RegistryError::DuplicateAgent { id: x.clone() }.to_string();
    assert!(
        message.contains("agent id 'x' is already registered by another live node")
            && message.contains("choose another --id or stop that node"),
        "the refusal must tell the user what happened and what to do: {message}"
    );
    b.deregister(&x)
        .await
        .expect("deregistering an id another node owns is not an error");
    // Views follow the store in order: once b's later registration shows,
    // anything b did to x before it would show too.
    b.register(agent("b-marker", "b:1"))
        .await
        .expect("register b-marker");
    until("b-marker in a's view", &mut view, |view| {
        has(view, "b-marker")
    })
    .await;
    assert_eq!(
        view.borrow().get(&x).map(|agent| agent.endpoint.clone()),
        Some("a:1".to_owned()),
        "b's refused registration and its deregistration must leave a's agent as it was"
    );

    let mut busy = agent("x", "a:1");
    busy.load = 3;
    a.register(busy.clone())
        .await
        .expect("a updates its own agent");
    until("x's new load in the view", &mut view, |view| {
        view.get(&x) == Some(&busy)
    })
    .await;

    a.deregister(&x).await.expect("a deregisters x");
    b.register(agent("x", "b:1"))
        .await
        .expect("an id is free once its owner deregistered it");
    until("b's x in the view", &mut view, |view| {
        view.get(&x).map(|agent| agent.endpoint.as_str()) == Some("b:1")
    })
    .await;
    assert!(
        matches!(
            a.register(agent("x", "a:1")).await,
            Err(RegistryError::DuplicateAgent { .. })
        ),
        "the former owner is refused too while b owns x"
    );

    b.shutdown().await;
    a.register(agent("x", "a:2"))
        .await
        .expect("an id is free once its owner shut down");
    until("a's x back in the view", &mut view, |view| {
        view.get(&x).map(|agent| agent.endpoint.as_str()) == Some("a:2")
    })
    .await;

    let c = backend.node().await;
    let d = backend.node().await;
    let (by_c, by_d) = tokio::join!(c.register(agent("y", "c:1")), d.register(agent("y", "d:1")));
    let winner = match (&by_c, &by_d) {
        (Ok(()), Err(RegistryError::DuplicateAgent { .. })) => "c:1",
        (Err(RegistryError::DuplicateAgent { .. }), Ok(())) => "d:1",
        other => panic!("two nodes racing for id y: expected one winner, got {other:?}"),
    };
    until("the winner's y in the view", &mut view, |view| {
        view.get(&AgentId::new("y"))
            .map(|agent| agent.endpoint.as_str())
            == Some(winner)
    })
    .await;
    for node in [a, c, d] {
        node.shutdown().await;
    }
}

/// Task records round-trip through the store, from any node; a batch
/// naming one task twice keeps the last record.
pub async fn task_records(backend: &dyn Backend) {
    let a = backend.node().await;
    let b = backend.node().await;
    assert_eq!(
        b.get_task(&TaskId::new("missing")).await.expect("get"),
        None
    );

    let records: Vec<TaskRecord> = (0..10).map(|i| record(&format!("t-{i}"))).collect();
    put(a.as_ref(), &records).await;
    for record in &records {
        assert_eq!(
            b.get_task(&record.id).await.expect("get").as_ref(),
            Some(record),
            "read back from another node"
        );
    }
    put(a.as_ref(), &[]).await;

    let twice = record("twice");
    put(a.as_ref(), &[twice.clone(), revised(&twice, 2)]).await;
    assert_eq!(
        b.get_task(&twice.id)
            .await
            .expect("get")
            .map(|r| r.revision),
        Some(2),
        "the last record of an id in a batch wins"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A watch yields the current record first, then every later revision in
/// order, never an older one than it yielded; a watch of a task that does
/// not exist yet starts with its creation.
pub async fn task_watch(backend: &dyn Backend) {
    let a = backend.node().await;
    let b = backend.node().await;
    let task = record("watched");
    put(a.as_ref(), std::slice::from_ref(&task)).await;
    let mut watch = b.watch_task(&task.id).await.expect("watch_task");
    assert_eq!(next(&mut watch).await, task, "the current record first");

    put(a.as_ref(), &[revised(&task, 2)]).await;
    put(a.as_ref(), &[revised(&task, 3)]).await;
    assert_eq!(next(&mut watch).await.revision, 2);
    assert_eq!(next(&mut watch).await.revision, 3);
    put(a.as_ref(), &[revised(&task, 2)]).await;
    put(a.as_ref(), &[revised(&task, 4)]).await;
    assert_eq!(
        next(&mut watch).await.revision,
        4,
        "a write of an older revision must not be yielded"
    );

    let later = record("later");
    let mut pending = b.watch_task(&later.id).await.expect("watch_task");
    put(a.as_ref(), std::slice::from_ref(&later)).await;
    assert_eq!(
        next(&mut pending).await,
        later,
        "a watch of a task created later yields its creation first"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// The unfinished tasks are the pending and running ones, in task id
/// order, whatever order they were written in.
pub async fn unfinished_tasks(backend: &dyn Backend) {
    let a = backend.node().await;
    assert!(
        a.unfinished_tasks()
            .await
            .expect("unfinished_tasks of an empty store")
            .is_empty()
    );
    let statuses = [
        Status::Completed,
        Status::Running,
        Status::Failed,
        Status::Pending,
        Status::Cancelled,
    ];
    let records: Vec<TaskRecord> = (0..10)
        .rev()
        .map(|i| {
            let mut r = record(&format!("t-{i:02}"));
            r.status = statuses[i % statuses.len()];
            r
        })
        .collect();
    put(a.as_ref(), &records).await;
    let listed: Vec<String> = a
        .unfinished_tasks()
        .await
        .expect("unfinished_tasks")
        .into_iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(listed, ["t-01", "t-03", "t-06", "t-08"]);
    a.shutdown().await;
}

/// Ended tasks are listed oldest end first, as many as asked for, with
/// how many there are in all and each one's record size, and unfinished
/// ones are not; the leader deletes them, records and all, under its
/// fence; a write fenced with an ended term deletes nothing; deleting a
/// task already gone is not an error; a node that wins leadership sees the
/// last leader's writes and deletes.
pub async fn ended_tasks(backend: &dyn Backend) {
    let a = backend.node().await;
    let empty = a
        .ended_tasks(10)
        .await
        .expect("ended_tasks of an empty store");
    assert_eq!(empty, crate::EndedTasks::default());

    let ended = |id: &str, status: Status, at: u64| {
        let mut r = revised(&record(id), 2);
        r.status = status;
        r.updated_ms = at;
        r
    };
    let running = record("running");
    let records = [
        ended("late", Status::Completed, 300),
        running.clone(),
        ended("early", Status::Failed, 100),
        ended("middle", Status::Cancelled, 200),
    ];
    put(a.as_ref(), &records).await;
    let listed = a.ended_tasks(2).await.expect("ended_tasks");
    assert_eq!(listed.total, 3, "three ended tasks in all: {listed:?}");
    let oldest: Vec<(&str, u64)> = listed
        .oldest
        .iter()
        .map(|t| (t.id.as_str(), t.ended_ms))
        .collect();
    assert_eq!(
        oldest,
        [("early", 100), ("middle", 200)],
        "oldest end first"
    );
    assert!(
        listed.oldest.iter().all(|t| t.bytes > 100),
        "each with its record's size: {listed:?}"
    );

    let leadership = a
        .campaign(&AgentId::new("coord-a"))
        .await
        .expect("campaign");
    a.delete_tasks_fenced(&listed.oldest, &leadership.fence)
        .await
        .expect("the leader deletes ended tasks");
    for id in ["early", "middle"] {
        assert_eq!(a.get_task(&TaskId::new(id)).await.expect("get"), None);
    }
    let rest = a.ended_tasks(10).await.expect("ended_tasks");
    assert_eq!(rest.total, 1);
    assert_eq!(rest.oldest[0].id, TaskId::new("late"));
    assert_eq!(
        a.get_task(&running.id).await.expect("get"),
        Some(running.clone()),
        "an unfinished task is not touched"
    );
    a.delete_tasks_fenced(&listed.oldest, &leadership.fence)
        .await
        .expect("deleting tasks already gone is not an error");

    a.resign(&leadership).await.expect("resign");
    match a.delete_tasks_fenced(&rest.oldest, &leadership.fence).await {
        Err(RegistryError::NotLeader { .. }) => {}
        other => panic!("a delete fenced with an ended term: expected NotLeader, got {other:?}"),
    }
    assert!(
        a.get_task(&TaskId::new("late"))
            .await
            .expect("get")
            .is_some(),
        "a refused delete deletes nothing"
    );
    assert_eq!(a.ended_tasks(10).await.expect("ended_tasks").total, 1);
    assert_eq!(*a.store_full().borrow(), None, "an empty store has room");

    // A node that wins leadership sees what the last leader wrote and
    // deleted, whatever it saw before.
    let b = backend.node().await;
    assert_eq!(b.ended_tasks(10).await.expect("ended_tasks").total, 1);
    put(a.as_ref(), &[ended("later", Status::Completed, 400)]).await;
    let leadership = a
        .campaign(&AgentId::new("coord-a"))
        .await
        .expect("campaign");
    a.delete_tasks_fenced(&rest.oldest, &leadership.fence)
        .await
        .expect("the leader deletes ended tasks");
    a.resign(&leadership).await.expect("resign");
    b.campaign(&AgentId::new("coord-b"))
        .await
        .expect("campaign");
    let seen = b.ended_tasks(10).await.expect("ended_tasks");
    let seen: Vec<&str> = seen.oldest.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(seen, ["later"], "the new leader's view of ended tasks");
    a.shutdown().await;
    b.shutdown().await;
}

/// Event records are kept in publish order until deleted, dead letters are
/// listed newest first up to a limit and trimmed oldest first, and a writer
/// whose term ended writes (and trims) nothing, so a new leader restores exactly what its predecessor left.
pub async fn event_records(backend: &dyn Backend) {
    use agentmesh_core::events::{
        DeadLetter, Delivery, EventDraft, EventRecord, HandlerSpec, Subscription,
    };

    use crate::EventWrite;

    let a = backend.node().await;
    let b = backend.node().await;
    let subscription: Subscription = "order.*=task:handlers/a b.yaml"
        .parse::<HandlerSpec>()
        .expect("spec")
        .subscription();
    let event_record = |seq: u64| {
        let event = EventDraft {
            event_type: "order.created".into(),
            key: "o/1".into(),
            payload: serde_json::json!({"seq": seq}),
        }
        .accept(format!("ev-{seq}"), "alice".into(), seq, 1_000 + seq);
        EventRecord {
            event,
            pending: [(
                subscription.clone(),
                Delivery {
                    attempts: 0,
                    last_error: None,
                },
            )]
            .into(),
        }
    };
    let first = a
        .campaign(&AgentId::new("coord-a"))
        .await
        .expect("campaign");
    // Written out of order: the listing is in publish order all the same.
    let writes: Vec<EventWrite> = [12, 3, 7]
        .into_iter()
        .map(|seq| EventWrite::Put(event_record(seq)))
        .collect();
    a.write_events_fenced(&writes, &first.fence)
        .await
        .expect("a fenced write of the standing term");
    let seqs =
        |records: Vec<EventRecord>| -> Vec<u64> { records.iter().map(|r| r.event.seq).collect() };
    assert_eq!(seqs(b.pending_events().await.expect("list")), [3, 7, 12]);

    let mut retried = event_record(7);
    retried
        .pending
        .get_mut(&subscription)
        .expect("delivery")
        .attempts = 2;
    let dead = |seq: u64| DeadLetter {
        event: event_record(seq).event,
        subscription: subscription.clone(),
        attempts: 5,
        last_error: "boom".into(),
        dead_ms: 9_000,
    };
    a.write_events_fenced(
        &[
            EventWrite::Put(retried.clone()),
            EventWrite::Delete {
                seq: 3,
                id: "ev-3".into(),
            },
            EventWrite::Dead(dead(3)),
            EventWrite::Delete {
                seq: 12,
                id: "ev-12".into(),
            },
            EventWrite::Dead(dead(12)),
        ],
        &first.fence,
    )
    .await
    .expect("settling writes");
    assert_eq!(b.pending_events().await.expect("list"), [retried]);
    let letters = b.dead_letters(10).await.expect("dead letters");
    assert_eq!(letters, [dead(12), dead(3)], "newest event first");
    assert_eq!(b.dead_letters(1).await.expect("dead letters"), [dead(12)]);

    // A trim keeps the newest letters, after the writes before it landed.
    let trimmed = a
        .write_events_fenced(
            &[
                EventWrite::Dead(dead(20)),
                EventWrite::Dead(dead(1)),
                EventWrite::TrimDeadLetters { keep: 2 },
            ],
            &first.fence,
        )
        .await
        .expect("a trim of the standing term");
    assert_eq!(trimmed, 2, "dead letters 3 and 1 are past the newest two");
    assert_eq!(
        b.dead_letters(10).await.expect("dead letters"),
        [dead(20), dead(12)],
        "the oldest went first"
    );
    let within = a
        .write_events_fenced(&[EventWrite::TrimDeadLetters { keep: 2 }], &first.fence)
        .await
        .expect("a trim within the bound");
    assert_eq!(within, 0);

    a.resign(&first).await.expect("resign");
    let second = b
        .campaign(&AgentId::new("coord-b"))
        .await
        .expect("campaign");
    match a
        .write_events_fenced(&[EventWrite::Put(event_record(99))], &first.fence)
        .await
    {
        Err(RegistryError::NotLeader { .. }) => {}
        other => panic!("an event write of an ended term: expected NotLeader, got {other:?}"),
    }
    match a
        .write_events_fenced(&[EventWrite::TrimDeadLetters { keep: 0 }], &first.fence)
        .await
    {
        Err(RegistryError::NotLeader { .. }) => {}
        other => panic!("a trim of an ended term: expected NotLeader, got {other:?}"),
    }
    assert_eq!(b.dead_letters(10).await.expect("dead letters").len(), 2);
    assert_eq!(seqs(b.pending_events().await.expect("list")), [7]);
    b.write_events_fenced(
        &[EventWrite::Delete {
            seq: 7,
            id: "ev-7".into(),
        }],
        &second.fence,
    )
    .await
    .expect("the new leader settles the rest");
    assert!(b.pending_events().await.expect("list").is_empty());
}

/// A fenced write goes through while its term stands and is refused, with
/// nothing written, once the term has ended: by a resign, under another
/// node's leadership, and when the same node leads again in a new term.
pub async fn fenced_writes(backend: &dyn Backend) {
    let a = backend.node().await;
    let b = backend.node().await;
    let task = record("fenced");
    let first = a
        .campaign(&AgentId::new("coord-a"))
        .await
        .expect("campaign");
    a.put_tasks_fenced(&[Arc::new(task.clone())], &first.fence)
        .await
        .expect("a fenced write of the standing term");
    assert_eq!(a.get_task(&task.id).await.expect("get"), Some(task.clone()));

    a.resign(&first).await.expect("resign");
    assert!(!first.is_held(), "a resigned leadership is not held");
    let refused = |result: Result<(), RegistryError>, fence: &crate::Fence| match result {
        Err(RegistryError::NotLeader {
            fence_revision,
            written: 0,
        }) => assert_eq!(fence_revision, fence.revision),
        other => panic!("a write fenced with an ended term: expected NotLeader, got {other:?}"),
    };
    refused(
        a.put_tasks_fenced(&[Arc::new(revised(&task, 2))], &first.fence)
            .await,
        &first.fence,
    );
    assert_eq!(
        a.get_task(&task.id).await.expect("get").map(|r| r.revision),
        Some(1),
        "a refused write changes nothing"
    );

    let second = b
        .campaign(&AgentId::new("coord-b"))
        .await
        .expect("campaign");
    assert!(
        second.fence.revision > first.fence.revision,
        "a new term has a newer fence"
    );
    b.put_tasks_fenced(&[Arc::new(revised(&task, 2))], &second.fence)
        .await
        .expect("the new leader's fenced write");
    refused(
        a.put_tasks_fenced(&[Arc::new(revised(&task, 3))], &first.fence)
            .await,
        &first.fence,
    );

    b.resign(&second).await.expect("resign");
    let third = a
        .campaign(&AgentId::new("coord-a"))
        .await
        .expect("campaign again");
    assert!(third.fence.revision > second.fence.revision);
    refused(
        a.put_tasks_fenced(&[Arc::new(revised(&task, 3))], &first.fence)
            .await,
        &first.fence,
    );
    a.put_tasks_fenced(&[Arc::new(revised(&task, 3))], &third.fence)
        .await
        .expect("a fenced write of the node's new term");
    assert_eq!(
        b.get_task(&task.id).await.expect("get").map(|r| r.revision),
        Some(3)
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// One candidate leads and every node sees it; a second candidate waits
/// while it leads and takes over once it resigns; a stale resign touches
/// nobody else's term; the leader's shutdown ends its term, and a
/// shut-down node campaigns no more.
pub async fn election(backend: &dyn Backend) {
    let a = backend.node().await;
    let b = backend.node().await;
    let coord_a = AgentId::new("coord-a");
    let coord_b = AgentId::new("coord-b");
    assert_eq!(*a.leader().borrow(), None, "nobody leads before a campaign");

    let first = a.campaign(&coord_a).await.expect("campaign");
    assert!(first.is_held());
    assert_eq!(first.candidate, coord_a);
    for node in [&a, &b] {
        until(
            "coord-a leading in every view",
            &mut node.leader(),
            |leader| leader.as_ref() == Some(&coord_a),
        )
        .await;
    }

    let mut pending = tokio::spawn({
        let b = b.clone();
        let coord_b = coord_b.clone();
        async move { b.campaign(&coord_b).await }
    });
    assert!(
        tokio::time::timeout(QUIET, &mut pending).await.is_err(),
        "a second candidate must wait while another node leads"
    );
    assert!(first.is_held());

    a.resign(&first).await.expect("resign");
    assert!(!first.is_held(), "resign ends leadership at once");
    let second = tokio::time::timeout(DELIVERY, pending)
        .await
        .expect("the second candidate takes over after a resign")
        .expect("campaign task")
        .expect("campaign");
    assert_eq!(second.candidate, coord_b);
    assert!(second.is_held());
    assert!(second.fence.revision > first.fence.revision);
    for node in [&a, &b] {
        until(
            "coord-b leading in every view",
            &mut node.leader(),
            |leader| leader.as_ref() == Some(&coord_b),
        )
        .await;
    }
    a.resign(&first)
        .await
        .expect("a second resign of a lost term");
    assert!(second.is_held(), "a stale resign must not end another term");

    b.shutdown().await;
    assert!(!second.is_held(), "shutdown ends the node's leadership");
    until("nobody leading", &mut a.leader(), Option::is_none).await;
    assert!(matches!(
        b.campaign(&coord_b).await,
        Err(RegistryError::Closed)
    ));
    a.shutdown().await;
}

/// Coordination-memory triples written by one node are read by another;
/// a write of the same task replaces its triple; beyond the bound the
/// oldest are evicted and named.
pub async fn request_memory(backend: &dyn Backend) {
    use agentmesh_core::request::memory::MemoryEntry;
    use agentmesh_core::request::{Decomposition, PlannedTask};
    let writer = backend.node().await;
    let reader = backend.node().await;
    assert!(reader.request_memory().await.expect("empty").is_empty());
    let entry = |task: &str, created_ms: u64| MemoryEntry {
        task: TaskId::new(task),
        request: format!("calculate {created_ms} * 2"),
        decomposition: Decomposition {
            tasks: vec![PlannedTask {
                id: "t1".into(),
                specialist: "calculator".into(),
                description: "multiply".into(),
                capability: "math.eval".into(),
                input: serde_json::json!({"expr": format!("{created_ms} * 2")}),
                inputs: Vec::new(),
                outputs: Vec::new(),
                depends_on: Vec::new(),
                replaces: None,
            }],
        },
        quality: 1.0,
        provider: "builtin".into(),
        created_ms,
        embedding: Some(vec![0.5, -0.25]),
    };
    for (task, at) in [("old", 1), ("mid", 2)] {
        let evicted = writer
            .remember_request(entry(task, at), 2)
            .await
            .expect("remember");
        assert!(evicted.is_empty());
    }
    // The same task again replaces its triple: still two.
    writer
        .remember_request(entry("mid", 2), 2)
        .await
        .expect("remember again");
    let evicted = writer
        .remember_request(entry("new", 3), 2)
        .await
        .expect("remember over the bound");
    assert_eq!(evicted, [TaskId::new("old")]);
    let mut read = reader.request_memory().await.expect("memory");
    read.sort_by_key(|e| e.created_ms);
    assert_eq!(read, [entry("mid", 2), entry("new", 3)]);
}

/// Reputation records are created from nothing, updated from what is
/// stored, read and listed (by agent, then capability) from any node, keep
/// agents and capabilities apart whatever characters their names hold, and
/// outlive the node that wrote them.
pub async fn reputation_records(backend: &dyn Backend) {
    let writer = backend.node().await;
    let reader = backend.node().await;
    let worker = AgentId::new("worker-1");
    assert_eq!(
        reader
            .reputation(&worker, "math.eval")
            .await
            .expect("reputation"),
        None
    );
    assert!(
        reader
            .reputations()
            .await
            .expect("reputations of an empty store")
            .is_empty()
    );

    let created = writer
        .update_reputation(&worker, "math.eval", &|current| {
            assert_eq!(current, None, "a new record starts from nothing");
            Reputation::new(1_000)
        })
        .await
        .expect("create");
    assert_eq!(created, Reputation::new(1_000));
    let updated = writer
        .update_reputation(&worker, "math.eval", &agree)
        .await
        .expect("update");
    assert_eq!(
        (
            updated.alpha,
            updated.beta,
            updated.updates,
            updated.updated_ms
        ),
        (2.0, 1.0, 1, 1_001),
        "an update starts from the stored record"
    );
    assert_eq!(
        reader
            .reputation(&worker, "math.eval")
            .await
            .expect("reputation"),
        Some(updated)
    );
    assert_eq!(
        reader
            .reputation(&worker, "json.query")
            .await
            .expect("reputation"),
        None
    );

    let odd = [("a/b", "c"), ("a", "b/c"), ("pct%2Fagent", "x.y-z")];
    for (agent, capability) in odd {
        writer
            .update_reputation(&AgentId::new(agent), capability, &agree)
            .await
            .expect("update an odd id");
    }
    for (agent, capability) in odd {
        assert_eq!(
            reader
                .reputation(&AgentId::new(agent), capability)
                .await
                .expect("reputation")
                .map(|r| r.updates),
            Some(1),
            "{agent} / {capability}"
        );
    }
    let entry = |agent: &str, capability: &str, reputation| ReputationEntry {
        agent: AgentId::new(agent),
        capability: capability.to_owned(),
        reputation,
    };
    let expected = vec![
        entry("a", "b/c", agree(None)),
        entry("a/b", "c", agree(None)),
        entry("pct%2Fagent", "x.y-z", agree(None)),
        entry("worker-1", "math.eval", updated),
    ];
    assert_eq!(reader.reputations().await.expect("reputations"), expected);

    writer.shutdown().await;
    assert_eq!(
        reader
            .reputation(&worker, "math.eval")
            .await
            .expect("reputation"),
        Some(updated),
        "a record outlives the node that wrote it"
    );
    reader.shutdown().await;
}

/// Two nodes updating one reputation record at the same time lose none of
/// each other's updates: every write builds on the one before it.
pub async fn concurrent_reputation_updates(backend: &dyn Backend) {
    const PER_NODE: u64 = 50;
    let nodes = [backend.node().await, backend.node().await];
    let start = Arc::new(tokio::sync::Barrier::new(nodes.len()));
    let runs: Vec<_> = nodes
        .iter()
        .map(|node| {
            let (node, start) = (node.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let mut written = Vec::new();
                for _ in 0..PER_NODE {
                    let update = |current| {
                        // Widens the window between read and write, as a
                        // round trip to a store would: a blind
                        // read-then-write loses updates here.
                        std::thread::yield_now();
                        agree(current)
                    };
                    let record = node
                        .update_reputation(&AgentId::new("w"), "c", &update)
                        .await
                        .expect("update_reputation");
                    written.push(record.updates);
                }
                written
            })
        })
        .collect();
    let mut written = Vec::new();
    for run in runs {
        written.extend(run.await.expect("updating task"));
    }

    let last = nodes[0]
        .reputation(&AgentId::new("w"), "c")
        .await
        .expect("reputation")
        .expect("the record exists");
    assert_eq!(last.updates, 2 * PER_NODE, "updates were lost");
    assert_eq!(last.alpha, Reputation::new(0).alpha + (2 * PER_NODE) as f64);
    assert_eq!(last.beta, Reputation::new(0).beta);
    written.sort_unstable();
    assert_eq!(
        written,
        (1..=2 * PER_NODE).collect::<Vec<_>>(),
        "every write must build on the one before it"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

fn agent(id: &str, endpoint: &str) -> AgentRegistration {
    AgentRegistration {
        id: AgentId::new(id),
        role: Role::Worker,
        level: None,
        capabilities: vec!["echo".into()],
        endpoint: endpoint.into(),
        load: 0,
        max_concurrency: 1,
        version: "test".into(),
        faults: Vec::new(),
        insecure: false,
        event_handlers: Vec::new(),
    }
}

fn has(view: &Membership, id: &str) -> bool {
    view.agents.contains_key(&AgentId::new(id))
}

/// Waits until `holds` is true of the value `receiver` watches, for at most
/// [`DELIVERY`].
async fn until<T: Send + Sync>(
    what: &str,
    receiver: &mut watch::Receiver<T>,
    mut holds: impl FnMut(&T) -> bool + Send,
) {
    match tokio::time::timeout(DELIVERY, receiver.wait_for(|value| holds(value))).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => panic!("waiting for {what}: the watch closed"),
        Err(_) => panic!("waiting for {what}: not within {DELIVERY:?}"),
    }
}

/// Task records list newest first (by creation time, then id), page by
/// page from a cursor; filters keep what they match; a page reads at most
/// its scan budget and then hands back a cursor; deleted tasks leave the
/// listing; a rewrite does not list a task twice; any node lists what
/// another wrote.
pub async fn task_listing(backend: &dyn Backend) {
    use agentmesh_core::ClientId;
    use agentmesh_core::task::Pattern;
    use agentmesh_core::task::listing::{TaskFilter, TaskQuery};

    let a = backend.node().await;
    let b = backend.node().await;
    let empty = a
        .list_tasks(&TaskQuery::new(TaskFilter::default(), None, 10))
        .await
        .expect("list of an empty store");
    assert!(
        empty.records.is_empty() && empty.next.is_none(),
        "{empty:?}"
    );

    let alice = ClientId::parse("alice").expect("client name");
    let mut records = Vec::new();
    for i in 0..12u64 {
        let mut r = record(&format!("t{i:02}"));
        r.created_ms = 1_000 + i;
        r.name = if i % 3 == 0 {
            format!("nightly-{i}")
        } else {
            format!("adhoc-{i}")
        };
        r.status = if i % 2 == 0 {
            Status::Completed
        } else {
            Status::Running
        };
        if i % 4 == 0 {
            r.owner = Some(alice.clone());
        }
        if i == 5 {
            r.pattern = Pattern::PeerConsensus;
        }
        records.push(r);
    }
    // Two tasks created in the same millisecond are ordered by id.
    let mut twin = record("t05b");
    twin.created_ms = 1_005;
    records.push(twin);
    put(a.as_ref(), &records).await;
    // A rewrite (a later revision) lists the task once.
    put(a.as_ref(), &[revised(&records[11], 3)]).await;

    let ids = |page: &agentmesh_core::task::listing::TaskPage| {
        page.records
            .iter()
            .map(|r| r.id.to_string())
            .collect::<Vec<_>>()
    };
    let all = TaskFilter::default();
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = b
            .list_tasks(&TaskQuery::new(all.clone(), after.clone(), 5))
            .await
            .expect("list a page");
        assert!(page.records.len() <= 5, "{page:?}");
        seen.extend(ids(&page));
        pages += 1;
        assert!(pages <= 4, "the listing ends");
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "t11", "t10", "t09", "t08", "t07", "t06", "t05", "t05b", "t04", "t03", "t02", "t01",
            "t00"
        ],
        "newest first, each once, across pages"
    );

    let only = |filter: TaskFilter| {
        let node = b.clone();
        async move {
            let page = node
                .list_tasks(&TaskQuery::new(filter, None, 100))
                .await
                .expect("list with a filter");
            assert!(page.next.is_none(), "one page holds them all: {page:?}");
            ids(&page)
        }
    };
    assert_eq!(
        only(TaskFilter {
            statuses: vec![Status::Running],
            name_prefix: Some("nightly-".into()),
            ..Default::default()
        })
        .await,
        ["t09", "t03"]
    );
    assert_eq!(
        only(TaskFilter {
            owner: Some(alice.clone()),
            ..Default::default()
        })
        .await,
        ["t08", "t04", "t00"]
    );
    assert_eq!(
        only(TaskFilter {
            pattern: Some(Pattern::PeerConsensus),
            ..Default::default()
        })
        .await,
        ["t05"]
    );
    assert_eq!(
        only(TaskFilter {
            created_after_ms: Some(1_009),
            ..Default::default()
        })
        .await,
        ["t11", "t10"]
    );

    // A selective filter with a small scan budget: a short page and a
    // cursor, never more records read than the budget.
    let mut narrow = TaskQuery::new(
        TaskFilter {
            owner: Some(alice.clone()),
            ..Default::default()
        },
        None,
        10,
    );
    narrow.scan = 5;
    let short = b
        .list_tasks(&narrow)
        .await
        .expect("list within a scan budget");
    assert_eq!(ids(&short), ["t08"], "t11 to t07 read, one of them alice's");
    let next = short.next.expect("a cursor after a budget-bound page");
    assert_eq!(next.id.as_str(), "t07", "the last record read");
    narrow.after = Some(next);
    let rest = b
        .list_tasks(&narrow)
        .await
        .expect("the next budget-bound page");
    assert_eq!(ids(&rest), ["t04"], "t06 to t04 (with t05b) read");

    // Deleted tasks leave the listing.
    let leadership = a
        .campaign(&AgentId::new("coord-a"))
        .await
        .expect("campaign");
    let ended = a.ended_tasks(100).await.expect("ended_tasks");
    a.delete_tasks_fenced(&ended.oldest, &leadership.fence)
        .await
        .expect("delete ended tasks");
    let left = only(TaskFilter::default()).await;
    assert_eq!(left, ["t11", "t09", "t07", "t05", "t05b", "t03", "t01"]);
}

/// An idempotency key names the task whose record was put with it, within
/// its scope (owner, else client), on every node, until the record is
/// deleted; a later record with the same key does not take it over.
pub async fn idempotency_keys(backend: &dyn Backend) {
    use agentmesh_core::ClientId;
    use agentmesh_core::task::listing::IdempotencyKey;

    let a = backend.node().await;
    let b = backend.node().await;
    let key = IdempotencyKey::parse("retry-1")
        .expect("a valid key")
        .expect("a key");
    let alice = ClientId::parse("alice").expect("client name");
    let bob = ClientId::parse("bob").expect("client name");
    assert_eq!(
        a.task_for_idempotency_key(&alice, &key)
            .await
            .expect("lookup"),
        None
    );

    let mut first = record("first");
    first.client = Some(alice.clone());
    first.idempotency_key = Some(key.clone());
    put(a.as_ref(), &[first.clone()]).await;
    // Another client's key of the same name is another key.
    let mut bobs = record("bobs");
    bobs.client = Some(bob.clone());
    bobs.idempotency_key = Some(key.clone());
    put(a.as_ref(), &[bobs]).await;
    for node in [&a, &b] {
        assert_eq!(
            node.task_for_idempotency_key(&alice, &key)
                .await
                .expect("lookup"),
            Some(TaskId::new("first"))
        );
        assert_eq!(
            node.task_for_idempotency_key(&bob, &key)
                .await
                .expect("lookup"),
            Some(TaskId::new("bobs"))
        );
    }
    // Rewrites keep it.
    let mut done = revised(&first, 2);
    done.status = Status::Completed;
    put(a.as_ref(), &[done]).await;
    assert_eq!(
        b.task_for_idempotency_key(&alice, &key)
            .await
            .expect("lookup"),
        Some(TaskId::new("first"))
    );

    // Deleting the record frees the key.
    let leadership = a
        .campaign(&AgentId::new("coord-a"))
        .await
        .expect("campaign");
    let ended = a.ended_tasks(10).await.expect("ended_tasks");
    assert_eq!(ended.oldest.len(), 1, "{ended:?}");
    a.delete_tasks_fenced(&ended.oldest, &leadership.fence)
        .await
        .expect("delete");
    assert_eq!(
        b.task_for_idempotency_key(&alice, &key)
            .await
            .expect("lookup"),
        None
    );
    assert_eq!(
        b.task_for_idempotency_key(&bob, &key)
            .await
            .expect("lookup"),
        Some(TaskId::new("bobs"))
    );
}

/// A one-subtask pending record with id `id`, for tests of any backend.
pub fn record(id: &str) -> TaskRecord {
    let file: TaskFile = serde_json::from_str(
        r#"{"name":"t","tasks":[{"id":"a","capability":"echo","input":{"n":1}}]}"#,
    )
    .expect("a valid task file");
    TaskRecord::new(TaskId::new(id), file, 0)
}

/// `record` at a later revision.
pub fn revised(record: &TaskRecord, revision: u64) -> TaskRecord {
    let mut next = record.clone();
    next.revision = revision;
    next.updated_ms = revision;
    next
}

async fn put(node: &dyn Registry, records: &[TaskRecord]) {
    let records: Vec<Arc<TaskRecord>> = records.iter().cloned().map(Arc::new).collect();
    node.put_tasks(&records).await.expect("put_tasks");
}

/// The next record of a task watch, within [`DELIVERY`].
async fn next(watch: &mut TaskWatch) -> TaskRecord {
    match tokio::time::timeout(DELIVERY, watch.next()).await {
        Ok(Some(Ok(record))) => record,
        Ok(Some(Err(e))) => panic!("task watch yielded an error: {e}"),
        Ok(None) => panic!("task watch ended"),
        Err(_) => panic!("task watch yielded nothing within {DELIVERY:?}"),
    }
}

/// The update the reputation clauses apply: one more agreement, counted.
fn agree(current: Option<Reputation>) -> Reputation {
    let mut next = current.unwrap_or_else(|| Reputation::new(0));
    next.alpha += 1.0;
    next.updates += 1;
    next.updated_ms += 1;
    next
}
