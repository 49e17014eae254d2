//! `EtcdRegistry` against a real etcd: membership through leases, lease
//! expiry as failure detection, task records and their watches, recovery
//! from an etcd outage, coordinator election with fenced writes, listing
//! unfinished tasks, reputation records updated by compare-and-swap, and a
//! clear error when etcd is not there.
//!
//! Tests are plain `#[test]` functions (the harness is blocking); each
//! builds its own tokio runtime and `block_on`s the async calls, while the
//! registries' background tasks run on the runtime's workers. Waits poll
//! with a deadline (`support::eventually`).

mod support;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use agentmesh_core::reputation::Reputation;
use agentmesh_core::task::{Status, TaskLimits, TaskRecord, parse_and_validate};
use agentmesh_core::{AgentId, AgentRegistration, Role, TaskId};
use agentmesh_registry::{
    EtcdOptions, EtcdRegistry, Leadership, MAX_REPUTATION_CAS_ATTEMPTS, Registry, RegistryError,
    ReputationEntry, TaskWatch, keys,
};
use etcd_client::{Client, GetOptions};
use futures::StreamExt;
use support::{Etcd, eventually, free_port};

/// How long a watch may take to deliver one change.
const DELIVERY: Duration = Duration::from_secs(5);

/// A tokio runtime for one test. Also installs a log subscriber writing
/// through the test harness, so a failing test shows what the registry did
/// (`RUST_LOG` overrides the default filter).
fn runtime() -> tokio::runtime::Runtime {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("agentmesh_registry=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build tokio runtime")
}

fn options(etcd: &Etcd, lease_ttl: Duration) -> EtcdOptions {
    EtcdOptions::new(vec![etcd.client_url()])
        .with_lease_ttl(lease_ttl)
        .with_connect_timeout(Duration::from_secs(5))
        .with_request_timeout(Duration::from_secs(2))
}

fn connect(rt: &tokio::runtime::Runtime, etcd: &Etcd, lease_ttl: Duration) -> EtcdRegistry {
    rt.block_on(EtcdRegistry::connect(options(etcd, lease_ttl)))
        .unwrap_or_else(|e| panic!("connect to {}: {e}", etcd.client_url()))
}

fn agent(id: &str) -> AgentRegistration {
    AgentRegistration {
        id: AgentId::new(id),
        role: Role::Worker,
        level: None,
        capabilities: vec!["echo".into()],
        endpoint: "127.0.0.1:1".into(),
        load: 0,
        max_concurrency: 1,
        version: "test".into(),
    }
}

fn sees(registry: &EtcdRegistry, id: &str) -> bool {
    registry
        .membership()
        .borrow()
        .agents
        .contains_key(&AgentId::new(id))
}

fn record(id: &str) -> TaskRecord {
    let file = parse_and_validate(
        r#"{"name":"t","tasks":[{"id":"a","capability":"echo","input":{"n":1}}]}"#,
        &TaskLimits::default(),
        &|_| true,
        &Vec::new,
    )
    .expect("valid task file");
    TaskRecord::new(TaskId::new(id), file, 0)
}

/// `record` at a later revision.
fn revised(record: &TaskRecord, revision: u64) -> TaskRecord {
    let mut next = record.clone();
    next.revision = revision;
    next.updated_ms = revision;
    next
}

fn put(rt: &tokio::runtime::Runtime, registry: &EtcdRegistry, records: &[TaskRecord]) {
    let records: Vec<Arc<TaskRecord>> = records.iter().cloned().map(Arc::new).collect();
    rt.block_on(registry.put_tasks(&records))
        .expect("put_tasks");
}

/// The next record of a task watch, within [`DELIVERY`].
fn next_record(rt: &tokio::runtime::Runtime, watch: &mut TaskWatch) -> TaskRecord {
    match rt.block_on(async { tokio::time::timeout(DELIVERY, watch.next()).await }) {
        Ok(Some(Ok(record))) => record,
        Ok(Some(Err(e))) => panic!("task watch yielded an error: {e}"),
        Ok(None) => panic!("task watch ended"),
        Err(_) => panic!("task watch yielded nothing within {DELIVERY:?}"),
    }
}

/// Asserts that a watch yields nothing for `window` (letting time pass is
/// the point of the check).
fn assert_quiet(rt: &tokio::runtime::Runtime, watch: &mut TaskWatch, window: Duration) {
    if let Ok(item) = rt.block_on(async { tokio::time::timeout(window, watch.next()).await }) {
        panic!("task watch yielded {item:?}; expected nothing");
    }
}

/// Asserts that `probe` holds at every poll for `window`: a condition that
/// must *stay* true cannot be checked without letting time pass.
fn assert_stays(what: &str, window: Duration, mut probe: impl FnMut() -> bool) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert!(probe(), "{what} stopped holding");
        thread::sleep(support::POLL_INTERVAL);
    }
}

/// A plain etcd client, to look at the stored keys themselves.
fn raw_client(rt: &tokio::runtime::Runtime, etcd: &Etcd) -> Client {
    rt.block_on(Client::connect([etcd.client_url()], None))
        .expect("raw etcd client")
}

#[test]
fn membership_follows_registration_deregistration_and_shutdown() {
    let etcd = Etcd::start();
    let rt = runtime();
    // A long TTL, so only the revoke of shutdown can explain a prompt exit.
    let ttl = Duration::from_secs(10);
    let a = connect(&rt, &etcd, ttl);
    let b = connect(&rt, &etcd, ttl);

    rt.block_on(a.register(agent("a-1"))).expect("register a-1");
    rt.block_on(a.register(agent("a-2"))).expect("register a-2");
    rt.block_on(b.register(agent("b-1"))).expect("register b-1");
    eventually("a-1 and a-2 in B's view", DELIVERY, || {
        (sees(&b, "a-1") && sees(&b, "a-2")).then_some(())
    });
    eventually("b-1 in A's view", DELIVERY, || {
        sees(&a, "b-1").then_some(())
    });
    let stored = b.membership().borrow().get(&AgentId::new("a-1")).cloned();
    assert_eq!(stored, Some(agent("a-1")));

    // An update replaces the registration in every view.
    let mut busy = agent("a-2");
    busy.load = 7;
    rt.block_on(a.register(busy)).expect("update a-2");
    eventually("a-2's new load in B's view", DELIVERY, || {
        let view = b.membership().borrow().clone();
        (view.get(&AgentId::new("a-2")).map(|r| r.load) == Some(7)).then_some(())
    });

    // A corrupt entry is skipped, by the watch and by a fresh listing,
    // without disturbing the rest of the view.
    let mut raw = raw_client(&rt, &etcd);
    rt.block_on(raw.put(format!("{}bogus", keys::AGENTS), "{not json", None))
        .expect("put corrupt registration");
    rt.block_on(a.register(agent("a-3"))).expect("register a-3");
    eventually("a-3 in B's view", DELIVERY, || {
        sees(&b, "a-3").then_some(())
    });
    assert!(!sees(&b, "bogus"), "a corrupt registration must be skipped");
    let c = connect(&rt, &etcd, ttl);
    assert!(sees(&c, "a-3") && sees(&c, "b-1") && !sees(&c, "bogus"));
    rt.block_on(c.shutdown());
    rt.block_on(a.deregister(&AgentId::new("a-3")))
        .expect("deregister a-3");

    rt.block_on(a.deregister(&AgentId::new("a-1")))
        .expect("deregister a-1");
    eventually("a-1 gone from B's view", DELIVERY, || {
        (!sees(&b, "a-1")).then_some(())
    });
    assert!(sees(&b, "a-2"), "deregistering a-1 must not remove a-2");

    let started = Instant::now();
    rt.block_on(a.shutdown());
    eventually(
        "A's agents gone from B's view",
        Duration::from_secs(3),
        || (!sees(&b, "a-2")).then_some(()),
    );
    let took = started.elapsed();
    assert!(
        took < ttl / 2,
        "shutdown took {took:?} to clear A's agents; the revoke should beat the {ttl:?} ttl"
    );
    assert!(sees(&b, "b-1"), "A's shutdown must not touch B's agents");

    // Shut down is final and idempotent.
    rt.block_on(a.shutdown());
    assert!(matches!(
        rt.block_on(a.register(agent("a-4"))),
        Err(RegistryError::Closed)
    ));
    rt.block_on(b.shutdown());
}

#[test]
fn lease_expiry_removes_the_agents_of_a_silent_node() {
    let etcd = Etcd::start();
    let rt = runtime();
    let ttl = Duration::from_secs(2);
    let silent = connect(&rt, &etcd, ttl);
    let alive = connect(&rt, &etcd, ttl);
    rt.block_on(silent.register(agent("silent-1")))
        .expect("register silent-1");
    rt.block_on(alive.register(agent("alive-1")))
        .expect("register alive-1");
    eventually("silent-1 in the live node's view", DELIVERY, || {
        sees(&alive, "silent-1").then_some(())
    });

    silent.stop_keep_alive_for_tests();
    let stopped = Instant::now();
    eventually(
        "silent-1 to expire from the live node's view",
        ttl + Duration::from_secs(2),
        || (!sees(&alive, "silent-1")).then_some(()),
    );
    let took = stopped.elapsed();
    // The last refresh was at most ttl/3 before the stop, so anything much
    // faster than that was not the lease expiring.
    assert!(
        took >= ttl / 2,
        "silent-1 vanished after {took:?}, before its lease could expire"
    );

    // The node whose keep-alive runs keeps its agent well past the TTL.
    assert_stays("alive-1 in the live node's view", ttl, || {
        sees(&alive, "alive-1")
    });
    rt.block_on(alive.shutdown());
    rt.block_on(silent.shutdown());
}

#[test]
fn task_records_round_trip_and_watch_yields_each_revision_once() {
    let etcd = Etcd::start();
    let rt = runtime();
    let registry = connect(&rt, &etcd, Duration::from_secs(5));
    let mut raw = raw_client(&rt, &etcd);

    // 100 records in one call (two transactions: 64 + 36).
    let records: Vec<TaskRecord> = (0..100).map(|i| record(&format!("bulk-{i:03}"))).collect();
    put(&rt, &registry, &records);
    for r in &records {
        let back = rt.block_on(registry.get_task(&r.id)).expect("get_task");
        assert_eq!(back.as_ref(), Some(r));
    }
    let stored = rt
        .block_on(raw.get(
            format!("{}bulk-", keys::TASKS),
            Some(GetOptions::new().with_prefix()),
        ))
        .expect("list bulk records");
    assert_eq!(stored.kvs().len(), 100);
    let mut revisions: Vec<i64> = stored.kvs().iter().map(|kv| kv.mod_revision()).collect();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        2,
        "100 records must take exactly two transactions"
    );

    // Up to 64 records are one transaction, even with an id given twice
    // (the last one wins).
    let small: Vec<TaskRecord> = (0..10).map(|i| record(&format!("small-{i}"))).collect();
    let mut batch = small.clone();
    batch.push(revised(&small[0], 2));
    put(&rt, &registry, &batch);
    let stored = rt
        .block_on(raw.get(
            format!("{}small-", keys::TASKS),
            Some(GetOptions::new().with_prefix()),
        ))
        .expect("list small records");
    let mut revisions: Vec<i64> = stored.kvs().iter().map(|kv| kv.mod_revision()).collect();
    revisions.dedup();
    assert_eq!(revisions.len(), 1, "10 records must be one transaction");
    let first = rt
        .block_on(registry.get_task(&small[0].id))
        .expect("get small-0");
    assert_eq!(first.map(|r| r.revision), Some(2));

    put(&rt, &registry, &[]);
    assert_eq!(
        rt.block_on(registry.get_task(&TaskId::new("missing")))
            .expect("get missing"),
        None
    );

    // A value that is not a task record is reported with its key.
    let bad = TaskId::new("corrupt");
    rt.block_on(raw.put(keys::task(&bad), "{not json", None))
        .expect("put corrupt value");
    match rt.block_on(registry.get_task(&bad)) {
        Err(RegistryError::Corrupt { key, .. }) => assert_eq!(key, keys::task(&bad)),
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // watch: the current record first, then each later revision in order,
    // skipping a stale write.
    let task = record("watched");
    put(&rt, &registry, std::slice::from_ref(&task));
    let mut watch = rt
        .block_on(registry.watch_task(&task.id))
        .expect("watch_task");
    assert_eq!(next_record(&rt, &mut watch), task);
    put(&rt, &registry, &[revised(&task, 2)]);
    put(&rt, &registry, &[revised(&task, 3)]);
    assert_eq!(next_record(&rt, &mut watch).revision, 2);
    assert_eq!(next_record(&rt, &mut watch).revision, 3);
    put(&rt, &registry, &[revised(&task, 2)]);
    put(&rt, &registry, &[revised(&task, 4)]);
    assert_eq!(
        next_record(&rt, &mut watch).revision,
        4,
        "a write of an older revision must not be yielded"
    );
    assert_quiet(&rt, &mut watch, Duration::from_millis(300));

    // A watch of a task that does not exist yet starts with its creation.
    let later = record("later");
    let mut pending = rt
        .block_on(registry.watch_task(&later.id))
        .expect("watch later");
    assert_quiet(&rt, &mut pending, Duration::from_millis(200));
    put(&rt, &registry, std::slice::from_ref(&later));
    assert_eq!(next_record(&rt, &mut pending), later);

    // Shutdown ends every watch.
    rt.block_on(registry.shutdown());
    let end = rt.block_on(async { tokio::time::timeout(DELIVERY, watch.next()).await });
    assert!(
        matches!(end, Ok(None)),
        "watch must end at shutdown, got {end:?}"
    );
}

#[test]
fn a_node_recovers_by_itself_from_an_etcd_outage_longer_than_its_ttl() {
    let etcd = Etcd::start();
    let rt = runtime();
    let ttl = Duration::from_secs(2);
    let node = connect(&rt, &etcd, ttl);
    rt.block_on(node.register(agent("survivor")))
        .expect("register survivor");
    let task = record("outage");
    put(&rt, &node, std::slice::from_ref(&task));
    let mut watch = rt.block_on(node.watch_task(&task.id)).expect("watch_task");
    assert_eq!(next_record(&rt, &mut watch).revision, 1);
    let lease_before = node.lease_id();

    etcd.stop();
    // The outage itself: nothing to wait for, time has to pass so that the
    // lease's TTL runs out while etcd is away.
    thread::sleep(ttl * 2);
    etcd.restart();

    // The keep-alive notices, grants a new lease and re-puts the agent.
    eventually("a new lease", Duration::from_secs(15), || {
        (node.lease_id() != lease_before).then_some(())
    });
    let mut raw = raw_client(&rt, &etcd);
    eventually("survivor stored under the new lease", DELIVERY, || {
        let got = rt
            .block_on(raw.get(keys::agent(&AgentId::new("survivor")), None))
            .ok()?;
        let kv = got.kvs().first()?;
        (kv.lease() == node.lease_id()).then_some(())
    });
    let fresh = connect(&rt, &etcd, ttl);
    assert!(sees(&fresh, "survivor"), "a fresh node must see survivor");
    // etcd restores the old lease with a fresh TTL on restart; once that
    // has run out, survivor must still be there on the new lease.
    assert_stays(
        "survivor in a fresh node's view",
        ttl + Duration::from_secs(1),
        || sees(&fresh, "survivor"),
    );

    // The old watch carries on, without repeating revision 1.
    put(&rt, &fresh, &[revised(&task, 2)]);
    assert_eq!(next_record(&rt, &mut watch).revision, 2);

    // And the node's membership watch follows the cluster again.
    rt.block_on(fresh.register(agent("newcomer")))
        .expect("register newcomer");
    eventually("newcomer in the recovered node's view", DELIVERY, || {
        sees(&node, "newcomer").then_some(())
    });

    rt.block_on(fresh.shutdown());
    rt.block_on(node.shutdown());
}

/// A campaign running on the test's runtime.
type Campaign = tokio::task::JoinHandle<Result<Leadership, RegistryError>>;

fn start_campaign(rt: &tokio::runtime::Runtime, registry: &EtcdRegistry, id: &str) -> Campaign {
    let registry = registry.clone();
    let candidate = AgentId::new(id);
    rt.spawn(async move { registry.campaign(&candidate).await })
}

/// The leadership a finished campaign won.
fn won(rt: &tokio::runtime::Runtime, campaign: Campaign) -> Leadership {
    rt.block_on(campaign)
        .expect("campaign task")
        .expect("campaign")
}

fn leader_seen_by(registry: &EtcdRegistry) -> Option<AgentId> {
    registry.leader().borrow().clone()
}

/// The coordinator leader as etcd's own `Election` service reports it:
/// agentmesh's candidates must be an election etcd understands.
fn leader_by_etcd(rt: &tokio::runtime::Runtime, raw: &Client) -> Option<String> {
    let mut election = raw.election_client();
    match rt.block_on(election.leader(keys::ELECTION_COORDINATOR)) {
        Ok(response) => response
            .kv()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
        // etcd answers "election: no leader" with an error.
        Err(_) => None,
    }
}

fn candidate_keys(rt: &tokio::runtime::Runtime, raw: &mut Client) -> usize {
    rt.block_on(raw.get(
        keys::ELECTION_COORDINATOR_CANDIDATES,
        Some(GetOptions::new().with_prefix().with_count_only()),
    ))
    .expect("count candidate keys")
    .count() as usize
}

#[test]
fn one_of_two_candidates_leads_and_a_resign_hands_over_at_once() {
    let etcd = Etcd::start();
    let rt = runtime();
    // A long TTL, so only the resign can explain a prompt handover.
    let ttl = Duration::from_secs(10);
    let a = connect(&rt, &etcd, ttl);
    let b = connect(&rt, &etcd, ttl);
    let mut raw = raw_client(&rt, &etcd);
    assert_eq!(leader_seen_by(&a), None, "nobody leads before a campaign");

    let mut campaigns = vec![
        ("coord-a", &a, start_campaign(&rt, &a, "coord-a")),
        ("coord-b", &b, start_campaign(&rt, &b, "coord-b")),
    ];
    eventually("one campaign to win", DELIVERY, || {
        campaigns
            .iter()
            .any(|(_, _, c)| c.is_finished())
            .then_some(())
    });
    let first = campaigns
        .iter()
        .position(|(_, _, c)| c.is_finished())
        .expect("a finished campaign");
    let (leader_id, leader, campaign) = campaigns.remove(first);
    let (standby_id, standby, pending) = campaigns.remove(0);
    let leadership = won(&rt, campaign);
    assert_eq!(leadership.candidate, AgentId::new(leader_id));
    assert!(leadership.is_held());
    assert_stays(
        "the other campaign waiting",
        Duration::from_millis(500),
        || !pending.is_finished(),
    );
    for registry in [&a, &b] {
        eventually("the leader in every view", DELIVERY, || {
            (leader_seen_by(registry) == Some(AgentId::new(leader_id))).then_some(())
        });
    }
    assert_eq!(leader_by_etcd(&rt, &raw).as_deref(), Some(leader_id));
    assert_eq!(
        candidate_keys(&rt, &mut raw),
        2,
        "one candidate key per node"
    );

    // A third candidate that gives up before it wins leaves no key behind.
    let c = connect(&rt, &etcd, ttl);
    let dropped = start_campaign(&rt, &c, "coord-c");
    eventually("coord-c's candidate key", DELIVERY, || {
        (candidate_keys(&rt, &mut raw) == 3).then_some(())
    });
    dropped.abort();
    eventually("coord-c's key withdrawn", DELIVERY, || {
        (candidate_keys(&rt, &mut raw) == 2).then_some(())
    });

    let resigned = Instant::now();
    rt.block_on(leader.resign(&leadership)).expect("resign");
    assert!(!leadership.is_held(), "resign must end leadership at once");
    eventually("the standby to win", DELIVERY, || {
        pending.is_finished().then_some(())
    });
    let took = resigned.elapsed();
    assert!(
        took < ttl / 4,
        "the handover took {took:?}; a resign must not wait for the {ttl:?} ttl"
    );
    let successor = won(&rt, pending);
    assert_eq!(successor.candidate, AgentId::new(standby_id));
    assert!(
        successor.fence.revision > leadership.fence.revision,
        "a new term must have a newer fence"
    );
    for registry in [&a, &b] {
        eventually("the new leader in every view", DELIVERY, || {
            (leader_seen_by(registry) == Some(AgentId::new(standby_id))).then_some(())
        });
    }
    assert_eq!(leader_by_etcd(&rt, &raw).as_deref(), Some(standby_id));
    // Resigning again is harmless and touches nobody else's term.
    rt.block_on(leader.resign(&leadership))
        .expect("second resign");
    assert!(successor.is_held());

    // Shutdown ends the term before revoking the lease, and everyone sees
    // nobody lead.
    rt.block_on(standby.shutdown());
    assert!(!successor.is_held(), "shutdown must end leadership");
    eventually("no leader in the remaining view", DELIVERY, || {
        leader_seen_by(leader).is_none().then_some(())
    });
    rt.block_on(c.shutdown());
    rt.block_on(leader.shutdown());
}

/// Two nodes with a 2 s TTL where `old` leads, then stops refreshing its
/// lease; returns once `new` has taken over, with both leaderships and how
/// long the takeover took.
struct Takeover {
    old: EtcdRegistry,
    new: EtcdRegistry,
    old_leadership: Leadership,
    new_leadership: Leadership,
    took: Duration,
}

const TAKEOVER_TTL: Duration = Duration::from_secs(2);

fn take_over_by_lease_expiry(rt: &tokio::runtime::Runtime, etcd: &Etcd) -> Takeover {
    let old = connect(rt, etcd, TAKEOVER_TTL);
    let new = connect(rt, etcd, TAKEOVER_TTL);
    let old_leadership = rt
        .block_on(old.campaign(&AgentId::new("coord-old")))
        .expect("first campaign");
    let pending = start_campaign(rt, &new, "coord-new");
    eventually("coord-old in the standby's view", DELIVERY, || {
        (leader_seen_by(&new) == Some(AgentId::new("coord-old"))).then_some(())
    });
    assert!(!pending.is_finished(), "the standby must wait");

    old.stop_keep_alive_for_tests();
    let stopped = Instant::now();
    eventually(
        "the standby to win once the leader's lease expired",
        TAKEOVER_TTL + Duration::from_secs(2),
        || pending.is_finished().then_some(()),
    );
    let took = stopped.elapsed();
    let new_leadership = won(rt, pending);
    Takeover {
        old,
        new,
        old_leadership,
        new_leadership,
        took,
    }
}

#[test]
fn a_standby_leads_once_a_silent_leaders_lease_expires() {
    let etcd = Etcd::start();
    let rt = runtime();
    let t = take_over_by_lease_expiry(&rt, &etcd);
    // The last refresh was at most ttl/3 before the stop: anything much
    // faster than that was not the lease expiring.
    assert!(
        t.took >= TAKEOVER_TTL / 2,
        "the standby won after {:?}, before the lease could expire",
        t.took
    );
    assert_eq!(t.new_leadership.candidate, AgentId::new("coord-new"));
    assert!(t.new_leadership.is_held());
    eventually("the old leadership to report lost", DELIVERY, || {
        (!t.old_leadership.is_held()).then_some(())
    });
    eventually("coord-new in the old leader's view", DELIVERY, || {
        (leader_seen_by(&t.old) == Some(AgentId::new("coord-new"))).then_some(())
    });
    assert_stays("the new leadership", TAKEOVER_TTL, || {
        t.new_leadership.is_held()
    });
    rt.block_on(t.new.shutdown());
    rt.block_on(t.old.shutdown());
}

#[test]
fn fenced_writes_of_a_deposed_leader_are_refused() {
    let etcd = Etcd::start();
    let rt = runtime();
    let task = record("fenced");
    let mut raw = raw_client(&rt, &etcd);
    let stored_task = |raw: &mut Client| {
        let got = rt
            .block_on(raw.get(keys::task(&task.id), None))
            .expect("get fenced record");
        got.kvs().first().map(|kv| kv.value().to_vec())
    };

    let t = take_over_by_lease_expiry(&rt, &etcd);
    // Written by the new leader, then the deposed one tries to overwrite it
    // with its old fence: its node still has the same lease id, so only
    // etcd's compare can refuse.
    let one = |r: &TaskRecord| vec![Arc::new(r.clone())];
    rt.block_on(t.new.put_tasks_fenced(&one(&task), &t.new_leadership.fence))
        .expect("the new leader's fenced put");
    let before = stored_task(&mut raw).expect("record stored");
    assert_eq!(t.old.lease_id(), t.old_leadership.fence.lease);
    match rt.block_on(
        t.old
            .put_tasks_fenced(&one(&revised(&task, 9)), &t.old_leadership.fence),
    ) {
        Err(RegistryError::NotLeader {
            fence_revision,
            written: 0,
        }) => assert_eq!(fence_revision, t.old_leadership.fence.revision),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    assert_eq!(
        stored_task(&mut raw),
        Some(before),
        "the record must be unchanged"
    );

    // More than one transaction's worth: the first one already fails, so
    // nothing at all is written.
    let batch: Vec<Arc<TaskRecord>> = (0..100)
        .map(|i| Arc::new(record(&format!("fenced-{i:03}"))))
        .collect();
    let refused = rt.block_on(t.old.put_tasks_fenced(&batch, &t.old_leadership.fence));
    assert!(
        matches!(refused, Err(RegistryError::NotLeader { written: 0, .. })),
        "got {refused:?}"
    );
    let count = |raw: &mut Client| {
        rt.block_on(raw.get(
            format!("{}fenced-", keys::TASKS),
            Some(GetOptions::new().with_prefix().with_count_only()),
        ))
        .expect("count fenced records")
        .count()
    };
    assert_eq!(count(&mut raw), 0);
    rt.block_on(t.new.put_tasks_fenced(&batch, &t.new_leadership.fence))
        .expect("the new leader's fenced put of 100 records");
    assert_eq!(count(&mut raw), 100);
    assert_eq!(
        rt.block_on(t.new.get_task(&task.id)).expect("get_task"),
        Some(task.clone())
    );

    // A term that ended by resign is fenced off too, even for its own node
    // leading again.
    rt.block_on(t.new.resign(&t.new_leadership))
        .expect("resign");
    let again = rt
        .block_on(t.new.campaign(&AgentId::new("coord-new")))
        .expect("campaign again");
    assert!(again.fence.revision > t.new_leadership.fence.revision);
    assert!(matches!(
        rt.block_on(t.new.put_tasks_fenced(&one(&task), &t.new_leadership.fence)),
        Err(RegistryError::NotLeader { .. })
    ));
    rt.block_on(
        t.new
            .put_tasks_fenced(&one(&revised(&task, 2)), &again.fence),
    )
    .expect("fenced put of the new term");
    rt.block_on(t.new.shutdown());
    rt.block_on(t.old.shutdown());
}

#[test]
fn a_leader_cut_off_from_etcd_reports_its_leadership_lost_and_can_lead_again() {
    let etcd = Etcd::start();
    let rt = runtime();
    let ttl = Duration::from_secs(2);
    let node = connect(&rt, &etcd, ttl);
    let first = rt
        .block_on(node.campaign(&AgentId::new("coord-1")))
        .expect("campaign");

    // Cut off, the leader sees no deletion and no lease change: only the
    // lease it can no longer confirm alive tells it a standby may lead.
    etcd.stop();
    let stopped = Instant::now();
    eventually(
        "the leadership to report lost",
        ttl + Duration::from_secs(2),
        || (!first.is_held()).then_some(()),
    );
    let took = stopped.elapsed();
    assert!(
        took >= ttl / 2,
        "leadership reported lost after {took:?}, while the lease may well have been alive"
    );

    // Once etcd is back, the node withdraws the lost term's key (etcd
    // restored its lease with a fresh TTL) and can lead again, in a new
    // term on a new lease.
    etcd.restart();
    let mut raw = raw_client(&rt, &etcd);
    eventually("the lost term's key withdrawn", DELIVERY, || {
        let got = rt.block_on(raw.get(first.fence.key.as_str(), None)).ok()?;
        got.kvs().is_empty().then_some(())
    });
    eventually("a new lease", Duration::from_secs(15), || {
        (node.lease_id() != first.fence.lease).then_some(())
    });
    let again = start_campaign(&rt, &node, "coord-1");
    eventually("a new term", DELIVERY, || again.is_finished().then_some(()));
    let second = won(&rt, again);
    assert!(second.is_held());
    assert!(second.fence.revision > first.fence.revision);
    assert_ne!(
        second.fence.lease, first.fence.lease,
        "the lease was replaced"
    );
    eventually("coord-1 in the node's view", DELIVERY, || {
        (leader_seen_by(&node) == Some(AgentId::new("coord-1"))).then_some(())
    });
    rt.block_on(node.shutdown());
}

#[test]
fn unfinished_tasks_are_every_pending_or_running_record_across_pages() {
    let etcd = Etcd::start();
    let rt = runtime();
    // 7 per page: 50 records take 8 pages.
    let registry = rt
        .block_on(EtcdRegistry::connect(
            options(&etcd, Duration::from_secs(5)).with_task_page_size(7),
        ))
        .expect("connect");
    assert!(
        rt.block_on(registry.unfinished_tasks())
            .expect("unfinished_tasks of an empty store")
            .is_empty()
    );
    let statuses = [
        Status::Pending,
        Status::Running,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];
    let records: Vec<TaskRecord> = (0..50)
        .map(|i| {
            let mut r = record(&format!("mix-{i:02}"));
            r.status = statuses[i % statuses.len()];
            r
        })
        .collect();
    put(&rt, &registry, &records);
    // Neighbours of the prefix and a corrupt record are not listed.
    let mut raw = raw_client(&rt, &etcd);
    for key in [
        format!("{}mix-corrupt", keys::TASKS),
        "/agentmesh/v1/tasks".to_owned(),
        keys::tasks_end(),
    ] {
        rt.block_on(raw.put(key, "{not json", None))
            .expect("put a stray key");
    }
    rt.block_on(registry.register(agent("not-a-task")))
        .expect("register");

    let listed = rt
        .block_on(registry.unfinished_tasks())
        .expect("unfinished_tasks");
    let expected: Vec<TaskRecord> = records
        .iter()
        .filter(|r| !r.status.is_terminal())
        .cloned()
        .collect();
    assert_eq!(expected.len(), 20);
    assert_eq!(listed, expected);
    rt.block_on(registry.shutdown());
}

/// The update every coordinator applies in the reputation tests: one more
/// agreement, counted.
fn agree(current: Option<Reputation>) -> Reputation {
    let mut next = current.unwrap_or_else(|| Reputation::new(0));
    next.alpha += 1.0;
    next.updates += 1;
    next.updated_ms += 1;
    next
}

fn reputation_of(
    rt: &tokio::runtime::Runtime,
    registry: &EtcdRegistry,
    agent: &str,
    capability: &str,
) -> Option<Reputation> {
    rt.block_on(registry.reputation(&AgentId::new(agent), capability))
        .expect("reputation")
}

#[test]
fn reputation_records_are_created_updated_listed_and_outlive_their_writer() {
    let etcd = Etcd::start();
    let rt = runtime();
    let writer = connect(&rt, &etcd, Duration::from_secs(5));
    let reader = connect(&rt, &etcd, Duration::from_secs(5));
    let mut raw = raw_client(&rt, &etcd);
    let worker = AgentId::new("worker-1");

    assert_eq!(reputation_of(&rt, &reader, "worker-1", "math.eval"), None);
    assert!(
        rt.block_on(reader.reputations())
            .expect("reputations of an empty store")
            .is_empty()
    );

    // Created from nothing, then updated from what is stored.
    let created = rt
        .block_on(writer.update_reputation(&worker, "math.eval", &|current| {
            assert_eq!(current, None, "a new record starts from nothing");
            Reputation::new(1_000)
        }))
        .expect("create");
    assert_eq!(created, Reputation::new(1_000));
    let updated = rt
        .block_on(writer.update_reputation(&worker, "math.eval", &agree))
        .expect("update");
    assert_eq!(
        (
            updated.alpha,
            updated.beta,
            updated.updates,
            updated.updated_ms
        ),
        (2.0, 1.0, 1, 1_001)
    );
    assert_eq!(
        reputation_of(&rt, &reader, "worker-1", "math.eval"),
        Some(updated)
    );
    assert_eq!(reputation_of(&rt, &reader, "worker-1", "json.query"), None);

    // Stored as JSON under /reputation/<agent>/<capability>, on no lease.
    let key = keys::reputation(&worker, "math.eval");
    assert_eq!(key, "/agentmesh/v1/reputation/worker-1/math.eval");
    let stored = rt.block_on(raw.get(key.as_str(), None)).expect("raw get");
    let kv = &stored.kvs()[0];
    assert_eq!(kv.lease(), 0, "a reputation must not be on a node's lease");
    let value: Reputation = serde_json::from_slice(kv.value()).expect("stored JSON");
    assert_eq!(value, updated);

    // Ids that hold '/' or '%' keep agent and capability apart.
    let odd = [("a/b", "c"), ("a", "b/c"), ("pct%2Fagent", "x.y-z")];
    for (agent, capability) in odd {
        rt.block_on(writer.update_reputation(&AgentId::new(agent), capability, &agree))
            .expect("update an odd id");
    }
    for (agent, capability) in odd {
        assert_eq!(
            reputation_of(&rt, &reader, agent, capability).map(|r| r.updates),
            Some(1),
            "{agent} / {capability}"
        );
    }

    // A corrupt record: an error of its own read and update (left as it
    // is), skipped by the listing; so are keys that name no record.
    let broken = AgentId::new("broken");
    let broken_key = keys::reputation(&broken, "math.eval");
    rt.block_on(raw.put(broken_key.as_str(), "{not json", None))
        .expect("put corrupt record");
    for key in [
        format!("{}no-capability", keys::REPUTATION),
        format!("{}a/b/c", keys::REPUTATION),
        "/agentmesh/v1/reputation".to_owned(),
        keys::reputation_end(),
    ] {
        let value = serde_json::to_vec(&Reputation::new(0)).expect("encode");
        rt.block_on(raw.put(key, value, None))
            .expect("put a stray key");
    }
    match rt.block_on(reader.reputation(&broken, "math.eval")) {
        Err(RegistryError::Corrupt { key, .. }) => assert_eq!(key, broken_key),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match rt.block_on(writer.update_reputation(&broken, "math.eval", &agree)) {
        Err(RegistryError::Corrupt { key, .. }) => assert_eq!(key, broken_key),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let still = rt
        .block_on(raw.get(broken_key.as_str(), None))
        .expect("raw get");
    assert_eq!(still.kvs()[0].value(), b"{not json");

    let entry = |agent: &str, capability: &str, reputation| ReputationEntry {
        agent: AgentId::new(agent),
        capability: capability.to_owned(),
        reputation,
    };
    let mut expected = vec![
        entry("a/b", "c", agree(None)),
        entry("a", "b/c", agree(None)),
        entry("pct%2Fagent", "x.y-z", agree(None)),
        entry("worker-1", "math.eval", updated),
    ];
    expected.sort_by(|a, b| (&a.agent, &a.capability).cmp(&(&b.agent, &b.capability)));
    assert_eq!(expected[0].agent, AgentId::new("a"), "sorted by agent id");
    assert_eq!(
        rt.block_on(reader.reputations()).expect("reputations"),
        expected
    );

    // The writer's node goes away; its records stay.
    rt.block_on(writer.shutdown());
    assert_eq!(
        reputation_of(&rt, &reader, "worker-1", "math.eval"),
        Some(updated)
    );
    assert!(matches!(
        rt.block_on(writer.update_reputation(&worker, "math.eval", &agree)),
        Err(RegistryError::Closed)
    ));
    rt.block_on(reader.shutdown());
}

#[test]
fn concurrent_reputation_updates_from_two_coordinators_lose_nothing() {
    const PER_COORDINATOR: u64 = 50;
    let etcd = Etcd::start();
    let rt = runtime();
    let coordinators = [
        connect(&rt, &etcd, Duration::from_secs(5)),
        connect(&rt, &etcd, Duration::from_secs(5)),
    ];
    let worker = AgentId::new("worker-1");
    // Calls of the update function: above the updates made when the
    // coordinators raced and retried.
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(coordinators.len()));
    let runs: Vec<_> = coordinators
        .iter()
        .map(|coordinator| {
            let coordinator = coordinator.clone();
            let (worker, calls, start) = (worker.clone(), calls.clone(), start.clone());
            rt.spawn(async move {
                start.wait().await;
                let mut written = Vec::new();
                let mut most_attempts = 0;
                for _ in 0..PER_COORDINATOR {
                    let attempts = std::sync::atomic::AtomicU32::new(0);
                    let update = |current| {
                        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        agree(current)
                    };
                    let record = coordinator
                        .update_reputation(&worker, "math.eval", &update)
                        .await
                        .expect("update_reputation");
                    written.push(record.updates);
                    most_attempts = most_attempts.max(attempts.into_inner());
                }
                (written, most_attempts)
            })
        })
        .collect();
    let mut written = Vec::new();
    let mut most_attempts = 0;
    for run in runs {
        let (theirs, attempts) = rt.block_on(run).expect("coordinator task");
        written.extend(theirs);
        most_attempts = most_attempts.max(attempts);
    }

    let last =
        reputation_of(&rt, &coordinators[0], "worker-1", "math.eval").expect("the record exists");
    assert_eq!(last.updates, 2 * PER_COORDINATOR, "updates were lost");
    assert_eq!(
        last.alpha,
        Reputation::new(0).alpha + (2 * PER_COORDINATOR) as f64
    );
    assert_eq!(last.beta, Reputation::new(0).beta);
    // Every write built on the one before it: each count exactly once.
    written.sort_unstable();
    assert_eq!(written, (1..=2 * PER_COORDINATOR).collect::<Vec<_>>());
    let calls = calls.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{} updates took {calls} calls of the update: {} conflicts retried, \
         at most {most_attempts} attempts for one update",
        2 * PER_COORDINATOR,
        calls - 2 * PER_COORDINATOR
    );
    for coordinator in &coordinators {
        rt.block_on(coordinator.shutdown());
    }
}

/// Writes `agent`'s reputation for `capability` from another client, on a
/// thread and runtime of its own: the update functions below call it while
/// the registry's own runtime waits for them.
fn write_behind_the_back(etcd: &Etcd, agent: &AgentId, capability: &str, reputation: Reputation) {
    let url = etcd.client_url();
    let key = keys::reputation(agent, capability);
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build a runtime");
                rt.block_on(async {
                    let mut client = Client::connect([url], None).await?;
                    let value = serde_json::to_vec(&reputation).expect("encode");
                    client.put(key, value, None).await
                })
                .expect("write behind the registry's back");
            })
            .join()
            .expect("writer thread");
    });
}

#[test]
fn a_reputation_update_retries_on_conflict_and_gives_up_when_always_beaten() {
    let etcd = Etcd::start();
    let rt = runtime();
    let registry = connect(&rt, &etcd, Duration::from_secs(5));
    let worker = AgentId::new("worker-1");

    // One conflicting write between the read and the write: the update
    // runs again on the newer record, and nothing is lost.
    let seen = std::sync::Mutex::new(Vec::new());
    let update = |current: Option<Reputation>| {
        let mut seen = seen.lock().unwrap();
        seen.push(current.map(|r| r.updates));
        if seen.len() == 1 {
            write_behind_the_back(&etcd, &worker, "math.eval", agree(Some(agree(None))));
        }
        agree(current)
    };
    let written = rt
        .block_on(registry.update_reputation(&worker, "math.eval", &update))
        .expect("update_reputation");
    assert_eq!(*seen.lock().unwrap(), [None, Some(2)]);
    assert_eq!(written.updates, 3);
    assert_eq!(
        reputation_of(&rt, &registry, "worker-1", "math.eval"),
        Some(written)
    );

    // A conflict on every attempt: Contended, and this call wrote nothing.
    let calls = std::sync::atomic::AtomicU32::new(0);
    let update = |current: Option<Reputation>| {
        let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut theirs = Reputation::new(0);
        theirs.updates = 100 + u64::from(n);
        write_behind_the_back(&etcd, &worker, "math.eval", theirs);
        let mut mine = agree(current);
        mine.beta = 1_000.0;
        mine
    };
    match rt.block_on(registry.update_reputation(&worker, "math.eval", &update)) {
        Err(RegistryError::Contended { key, attempts }) => {
            assert_eq!(key, keys::reputation(&worker, "math.eval"));
            assert_eq!(attempts, MAX_REPUTATION_CAS_ATTEMPTS);
        }
        other => panic!("expected Contended, got {other:?}"),
    }
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::Relaxed),
        MAX_REPUTATION_CAS_ATTEMPTS
    );
    let last = reputation_of(&rt, &registry, "worker-1", "math.eval").expect("record");
    assert_eq!(last.beta, 1.0, "the beaten update must not be written");
    assert_eq!(
        last.updates,
        100 + u64::from(MAX_REPUTATION_CAS_ATTEMPTS) - 1
    );
    rt.block_on(registry.shutdown());
}

/// Connects to `url` with a 1 s connect timeout, expects `Unavailable`
/// naming the endpoint, and returns how long it took.
fn failed_connect_time(url: &str) -> Duration {
    let rt = runtime();
    let connect_timeout = Duration::from_secs(1);
    let options = EtcdOptions::new(vec![url.to_owned()]).with_connect_timeout(connect_timeout);
    let started = Instant::now();
    let result = rt.block_on(EtcdRegistry::connect(options));
    let took = started.elapsed();
    match result {
        Err(RegistryError::Unavailable(message)) => assert!(
            message.contains(url),
            "the error must name the endpoint {url}: {message}"
        ),
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("connect to {url} succeeded with no etcd there"),
    }
    assert!(
        took < connect_timeout + Duration::from_millis(500),
        "connect took {took:?}, over its {connect_timeout:?} timeout"
    );
    took
}

#[test]
fn connecting_where_no_etcd_listens_fails_at_once() {
    failed_connect_time(&format!("http://127.0.0.1:{}", free_port()));
}

#[test]
fn connecting_to_a_silent_endpoint_gives_up_at_the_connect_timeout() {
    // Accepts TCP connections (the kernel completes the handshake) but never
    // speaks HTTP/2, like a hung etcd.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
    let addr = silent.local_addr().expect("silent listener address");
    let took = failed_connect_time(&format!("http://{addr}"));
    assert!(
        took >= Duration::from_millis(900),
        "gave up after {took:?}, before the connect timeout"
    );
}
