//! `EtcdRegistry` against a real etcd.
//!
//! First the registry contract, as the conformance suite of every backend
//! states it (`conformance::*`, the same clauses `MemoryRegistry` passes in
//! its unit tests). Then what only the etcd backend does: lease expiry as
//! failure detection, agent keys owned by their node's lease (a live
//! duplicate id refused end to end by `agentmesh node`), transactions of
//! bounded size, recovery from an etcd outage, an election etcd's own
//! `Election` service agrees with, leaders deposed by lease expiry or a
//! partition, paged listings, reputation keys and their compare-and-swap
//! retries, and a clear error when etcd is not there.
//!
//! Tests are plain `#[test]` functions (the harness is blocking); each
//! builds its own tokio runtime and `block_on`s the async calls, while the
//! registries' background tasks run on the runtime's workers. Waits poll
//! with a deadline (`support::eventually`).

use crate::support;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use agentmesh_core::reputation::Reputation;
use agentmesh_core::task::{Status, TaskRecord};
use agentmesh_core::{AgentId, AgentRegistration, Role, TaskId};
use agentmesh_registry::conformance::{Backend, Clause, record, revised};
use agentmesh_registry::{
    AgentDirectory, Election, EtcdOptions, EtcdRegistry, Leadership, MAX_REPUTATION_CAS_ATTEMPTS,
    Registry, RegistryError, ReputationStore, TaskStore, TaskWatch, keys,
};
use etcd_client::{Client, GetOptions};
use futures::StreamExt;
use support::{Etcd, eventually, free_port, run_cli, run_cli_with, start_node};

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
        faults: Vec::new(),
        insecure: false,
        event_handlers: Vec::new(),
    }
}

fn sees(registry: &EtcdRegistry, id: &str) -> bool {
    registry
        .membership()
        .borrow()
        .agents
        .contains_key(&AgentId::new(id))
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

/// The etcd backend of the conformance suite: every node is a connection
/// of its own, with a lease of its own, to the clause's etcd.
struct EtcdCluster {
    options: EtcdOptions,
}

#[async_trait::async_trait]
impl Backend for EtcdCluster {
    async fn node(&self) -> Arc<dyn Registry> {
        let registry = EtcdRegistry::connect(self.options.clone())
            .await
            .unwrap_or_else(|e| panic!("connect to {:?}: {e}", self.options.endpoints));
        Arc::new(registry)
    }
}

/// Runs one clause of the suite against a fresh etcd. The lease TTL is
/// longer than any wait of the suite, so whatever leaves a view in time
/// left by a deregistration or a revoke, not by a lease running out.
fn run(clause: Clause) {
    let etcd = Etcd::start();
    let rt = runtime();
    let backend = EtcdCluster {
        options: options(&etcd, Duration::from_secs(30)),
    };
    rt.block_on(clause(&backend));
}

mod conformance {
    agentmesh_registry::conformance_tests!(super::run);
}

#[test]
fn corrupt_registrations_are_skipped_and_a_shutdown_clears_its_agents_before_the_ttl() {
    let etcd = Etcd::start();
    let rt = runtime();
    // A long TTL, so only the revoke of shutdown can explain a prompt exit.
    let ttl = Duration::from_secs(10);
    let a = connect(&rt, &etcd, ttl);
    let b = connect(&rt, &etcd, ttl);
    rt.block_on(a.register(agent("a-1"))).expect("register a-1");
    rt.block_on(b.register(agent("b-1"))).expect("register b-1");

    // A corrupt entry is skipped, by the watch and by a fresh listing,
    // without disturbing the rest of the view.
    let mut raw = raw_client(&rt, &etcd);
    rt.block_on(raw.put(format!("{}bogus", keys::AGENTS), "{not json", None))
        .expect("put corrupt registration");
    rt.block_on(a.register(agent("a-2"))).expect("register a-2");
    eventually("a-2 in B's view", DELIVERY, || {
        sees(&b, "a-2").then_some(())
    });
    assert!(!sees(&b, "bogus"), "a corrupt registration must be skipped");
    let c = connect(&rt, &etcd, ttl);
    assert!(sees(&c, "a-2") && sees(&c, "b-1") && !sees(&c, "bogus"));
    rt.block_on(c.shutdown());

    let started = Instant::now();
    rt.block_on(a.shutdown());
    eventually(
        "A's agents gone from B's view",
        Duration::from_secs(3),
        || (!sees(&b, "a-1") && !sees(&b, "a-2")).then_some(()),
    );
    let took = started.elapsed();
    assert!(
        took < ttl / 2,
        "shutdown took {took:?} to clear A's agents; the revoke should beat the {ttl:?} ttl"
    );
    rt.block_on(a.shutdown());
    rt.block_on(b.shutdown());
}

/// The lease of an agent's key, and the endpoint stored in it.
fn stored_agent(rt: &tokio::runtime::Runtime, raw: &mut Client, id: &str) -> Option<(i64, String)> {
    let got = rt
        .block_on(raw.get(keys::agent(&AgentId::new(id)), None))
        .expect("get agent key");
    got.kvs().first().map(|kv| {
        let stored: AgentRegistration =
            serde_json::from_slice(kv.value()).expect("a stored registration");
        (kv.lease(), stored.endpoint)
    })
}

fn agent_at(id: &str, endpoint: &str) -> AgentRegistration {
    AgentRegistration {
        endpoint: endpoint.into(),
        ..agent(id)
    }
}

/// The compares under the contract's unique ids, at the key level: a
/// refused registration and a foreign deregistration leave the key on its
/// owner's lease; and a node that lost its lease while another node took
/// one of its ids moves its other agents to its new lease but leaves that
/// id to the other node.
#[test]
fn agent_keys_are_written_only_by_the_node_whose_lease_holds_them() {
    let etcd = Etcd::start();
    let rt = runtime();
    let ttl = Duration::from_secs(3);
    let a = connect(&rt, &etcd, ttl);
    let b = connect(&rt, &etcd, ttl);
    let mut raw = raw_client(&rt, &etcd);
    rt.block_on(a.register(agent_at("x", "a:1")))
        .expect("register x");
    rt.block_on(a.register(agent_at("a-other", "a:1")))
        .expect("register a-other");

    assert!(matches!(
        rt.block_on(b.register(agent_at("x", "b:1"))),
        Err(RegistryError::DuplicateAgent { .. })
    ));
    rt.block_on(b.deregister(&AgentId::new("x")))
        .expect("a foreign deregistration is not an error");
    assert_eq!(
        stored_agent(&rt, &mut raw, "x"),
        Some((a.lease_id(), "a:1".to_owned())),
        "x must stay on A's lease, as A registered it"
    );

    // x's key deleted by hand, and taken by B meanwhile: A's own update of
    // x is refused now, and its deregistration leaves B's key alone.
    rt.block_on(raw.delete(keys::agent(&AgentId::new("x")), None))
        .expect("delete x by hand");
    rt.block_on(b.register(agent_at("x", "b:1")))
        .expect("B registers the free id");
    let mut busy = agent_at("x", "a:1");
    busy.load = 1;
    assert!(matches!(
        rt.block_on(a.register(busy)),
        Err(RegistryError::DuplicateAgent { .. })
    ));
    rt.block_on(a.deregister(&AgentId::new("x")))
        .expect("deregister");
    assert_eq!(
        stored_agent(&rt, &mut raw, "x"),
        Some((b.lease_id(), "b:1".to_owned()))
    );

    // A loses its lease (revoked behind its back, which deletes a-other's
    // key): it grants a new one and registers a-other again, while x, held
    // by B's live lease, is left to B.
    let old_lease = a.lease_id();
    rt.block_on(raw.lease_revoke(old_lease))
        .expect("revoke A's lease");
    eventually("A on a new lease", ttl + DELIVERY, || {
        (a.lease_id() != old_lease).then_some(())
    });
    eventually("a-other on A's new lease", DELIVERY, || {
        (stored_agent(&rt, &mut raw, "a-other") == Some((a.lease_id(), "a:1".to_owned())))
            .then_some(())
    });
    // Service resumes once the new lease's registrations are all back,
    // a moment after the first of them is.
    eventually("A back in service", DELIVERY, || {
        a.store_reachable().borrow().then_some(())
    });
    assert_eq!(
        stored_agent(&rt, &mut raw, "x"),
        Some((b.lease_id(), "b:1".to_owned())),
        "A's re-registration must not take x from B"
    );
    rt.block_on(a.shutdown());
    rt.block_on(b.shutdown());
}

/// Two `agentmesh node --id dup` processes: the second exits non-zero
/// with the refusal, and leaves the first registered and listed.
#[test]
fn a_second_node_with_a_live_nodes_id_exits_with_a_clear_error() {
    let etcd = Etcd::start();
    let url = etcd.client_url();
    let first = start_node("first", &url, "worker", &["--id", "dup"]);
    let listed = || {
        let out = run_cli(&["agents", "--endpoint", &first.endpoint, "--json"]);
        assert!(out.success(), "agents failed: {out}");
        out.json()
            .as_array()
            .expect("a list of agents")
            .iter()
            .find(|agent| agent["id"] == "dup")
            .map(|agent| agent["endpoint"].as_str().unwrap_or_default().to_owned())
    };
    eventually("dup listed", DELIVERY, listed);

    let second = run_cli_with(
        &[
            "node",
            "--role",
            "worker",
            "--etcd",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--id",
            "dup",
            "--insecure",
        ],
        &[],
        Duration::from_secs(30),
    );
    assert!(!second.success(), "the second node must not run: {second}");
    assert!(
        second.stderr.contains(
            "agent id 'dup' is already registered by another live node; \
             choose another --id or stop that node"
        ),
        "the second node must say why it stopped: {second}"
    );

    // Once the second is gone, the first is still registered, as itself.
    let rt = runtime();
    let mut raw = raw_client(&rt, &etcd);
    assert_eq!(
        stored_agent(&rt, &mut raw, "dup").map(|(_, endpoint)| endpoint),
        Some(first.addr.clone()),
        "the first node's registration must be untouched"
    );
    assert_eq!(listed(), Some(first.addr.clone()));
    assert!(first.process.is_running());
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
fn task_records_are_written_in_bounded_transactions_and_watches_end_at_shutdown() {
    let etcd = Etcd::start();
    let rt = runtime();
    let registry = connect(&rt, &etcd, Duration::from_secs(5));
    let mut raw = raw_client(&rt, &etcd);

    // 100 records in one call (two transactions: 64 + 36).
    let records: Vec<TaskRecord> = (0..100).map(|i| record(&format!("bulk-{i:03}"))).collect();
    put(&rt, &registry, &records);
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
    // (etcd refuses a transaction that writes one key twice).
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

    // A value that is not a task record is reported with its key.
    let bad = TaskId::new("corrupt");
    rt.block_on(raw.put(keys::task(&bad), "{not json", None))
        .expect("put corrupt value");
    match rt.block_on(registry.get_task(&bad)) {
        Err(RegistryError::Corrupt { key, .. }) => assert_eq!(key, keys::task(&bad)),
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // Shutdown ends every watch.
    let task = record("watched");
    put(&rt, &registry, std::slice::from_ref(&task));
    let mut watch = rt
        .block_on(registry.watch_task(&task.id))
        .expect("watch_task");
    assert_eq!(next_record(&rt, &mut watch), task);
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
    // etcd restored the old lease and survivor's key on it: the
    // re-registration's compare must take that key for the node's own,
    // not refuse it as a duplicate.
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

/// The election etcd's own `Election` service sees: one candidate key per
/// node, none left by a campaign given up, and a resign that hands over
/// well before the lease TTL.
#[test]
fn the_election_is_one_etcd_understands_and_a_resign_hands_over_at_once() {
    let etcd = Etcd::start();
    let rt = runtime();
    // A long TTL, so only the resign can explain a prompt handover.
    let ttl = Duration::from_secs(10);
    let a = connect(&rt, &etcd, ttl);
    let b = connect(&rt, &etcd, ttl);
    let mut raw = raw_client(&rt, &etcd);
    assert_eq!(
        leader_by_etcd(&rt, &raw),
        None,
        "nobody leads before a campaign"
    );

    let leadership = rt
        .block_on(a.campaign(&AgentId::new("coord-a")))
        .expect("campaign");
    let pending = start_campaign(&rt, &b, "coord-b");
    eventually("both candidate keys", DELIVERY, || {
        (candidate_keys(&rt, &mut raw) == 2).then_some(())
    });
    assert_eq!(leader_by_etcd(&rt, &raw).as_deref(), Some("coord-a"));
    assert!(
        !pending.is_finished(),
        "coord-b must wait while coord-a leads"
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
    rt.block_on(a.resign(&leadership)).expect("resign");
    eventually("the standby to win", DELIVERY, || {
        pending.is_finished().then_some(())
    });
    let took = resigned.elapsed();
    assert!(
        took < ttl / 4,
        "the handover took {took:?}; a resign must not wait for the {ttl:?} ttl"
    );
    assert_eq!(won(&rt, pending).candidate, AgentId::new("coord-b"));
    assert_eq!(leader_by_etcd(&rt, &raw).as_deref(), Some("coord-b"));
    assert_eq!(candidate_keys(&rt, &mut raw), 1, "the resigned key is gone");
    for node in [&a, &b, &c] {
        rt.block_on(node.shutdown());
    }
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
fn fenced_writes_of_a_leader_deposed_by_lease_expiry_are_refused() {
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

/// Reputation records as etcd stores them: JSON on no lease, under an
/// escaped key; a corrupt record is an error of its own read and update
/// and is left as it is, and the listing skips it and any key that names
/// no record.
#[test]
fn reputation_records_are_json_on_no_lease_and_corrupt_ones_are_left_alone() {
    let etcd = Etcd::start();
    let rt = runtime();
    let registry = connect(&rt, &etcd, Duration::from_secs(5));
    let mut raw = raw_client(&rt, &etcd);
    let worker = AgentId::new("worker-1");

    let updated = rt
        .block_on(registry.update_reputation(&worker, "math.eval", &agree))
        .expect("update");
    let key = keys::reputation(&worker, "math.eval");
    assert_eq!(key, "/agentmesh/v1/reputation/worker-1/math.eval");
    let stored = rt.block_on(raw.get(key.as_str(), None)).expect("raw get");
    let kv = &stored.kvs()[0];
    assert_eq!(kv.lease(), 0, "a reputation must not be on a node's lease");
    let value: Reputation = serde_json::from_slice(kv.value()).expect("stored JSON");
    assert_eq!(value, updated);
    assert_eq!(
        keys::reputation(&AgentId::new("a/b"), "c%d"),
        "/agentmesh/v1/reputation/a%2Fb/c%25d"
    );

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
    match rt.block_on(registry.reputation(&broken, "math.eval")) {
        Err(RegistryError::Corrupt { key, .. }) => assert_eq!(key, broken_key),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match rt.block_on(registry.update_reputation(&broken, "math.eval", &agree)) {
        Err(RegistryError::Corrupt { key, .. }) => assert_eq!(key, broken_key),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let still = rt
        .block_on(raw.get(broken_key.as_str(), None))
        .expect("raw get");
    assert_eq!(still.kvs()[0].value(), b"{not json");
    let listed: Vec<(AgentId, String)> = rt
        .block_on(registry.reputations())
        .expect("reputations")
        .into_iter()
        .map(|entry| (entry.agent, entry.capability))
        .collect();
    assert_eq!(listed, [(worker, "math.eval".to_owned())]);

    rt.block_on(registry.shutdown());
    assert!(matches!(
        rt.block_on(registry.update_reputation(&AgentId::new("w"), "math.eval", &agree)),
        Err(RegistryError::Closed)
    ));
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
