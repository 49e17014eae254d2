//! The etcd key layout, owned here and nowhere else.
//!
//! ```text
//! /agentmesh/v1/agents/<agent-id>        registration JSON, attached to the node's lease
//! /agentmesh/v1/election/coordinator/<lease-hex>
//!                                        coordinator candidate of one node: its agent id,
//!                                        attached to the node's lease; the oldest leads
//! /agentmesh/v1/tasks/<task-id>          task record JSON
//! /agentmesh/v1/reputation/<agent-id>/<capability>
//!                                        reputation record JSON of one agent for one
//!                                        capability, updated with compare-and-swap; both
//!                                        segments escaped (see [`reputation`])
//! /agentmesh/v1/checkpoints/<task-id>    workflow checkpoints
//! /agentmesh/v1/task-index/<inverted-created>/<task-id>
//!                                        empty; one per task record, in newest-first order
//!                                        (see [`task_index`]), written with the record's
//!                                        first write and deleted with the record
//! /agentmesh/v1/idempotency/<scope>/<key>
//!                                        the task id a client's submit key named, written
//!                                        with the record's first write and deleted with it;
//!                                        the scope escaped like reputation segments
//! /agentmesh/v1/events/<seq:016x>/<event-id>
//!                                        an accepted event and its unsettled deliveries
//!                                        (docs/events.md), in publish order; deleted once
//!                                        every delivery is acknowledged or dead
//! /agentmesh/v1/dead-letters/<inverted-seq:016x>/<event-id>/<subscription>
//!                                        one delivery that ran out of attempts, newest
//!                                        first; the subscription escaped like reputation
//!                                        segments
//! /agentmesh/v1/request-memory/<task-id>
//!                                        one coordination-memory triple (request,
//!                                        decomposition, quality) of an ended request task,
//!                                        written by the leader; the id escaped like
//!                                        reputation segments
//! ```
//!
//! `docs/etcd-keys.md` documents the same layout for operators.

use agentmesh_core::task::listing::IdempotencyKey;
use agentmesh_core::{AgentId, ClientId, TaskId};

pub const ROOT: &str = "/agentmesh/v1/";
pub const AGENTS: &str = "/agentmesh/v1/agents/";
pub const TASKS: &str = "/agentmesh/v1/tasks/";
/// The name of the coordinator election, as etcd's election API takes it.
pub const ELECTION_COORDINATOR: &str = "/agentmesh/v1/election/coordinator";
/// The prefix of the coordinator candidates: [`ELECTION_COORDINATOR`] and a
/// slash, as etcd's election API lays out an election's keys.
pub const ELECTION_COORDINATOR_CANDIDATES: &str = "/agentmesh/v1/election/coordinator/";
pub const REPUTATION: &str = "/agentmesh/v1/reputation/";
pub const CHECKPOINTS: &str = "/agentmesh/v1/checkpoints/";
pub const TASK_INDEX: &str = "/agentmesh/v1/task-index/";
pub const IDEMPOTENCY: &str = "/agentmesh/v1/idempotency/";
pub const EVENTS: &str = "/agentmesh/v1/events/";
pub const DEAD_LETTERS: &str = "/agentmesh/v1/dead-letters/";
/// The coordination memory of natural-language requests (docs/requests.md).
pub const REQUEST_MEMORY: &str = "/agentmesh/v1/request-memory/";

/// The key of the coordination-memory triple of `task`.
pub fn request_memory(task: &TaskId) -> String {
    format!("{REQUEST_MEMORY}{}", escape_segment(task.as_str()))
}

/// The end of the key range of the coordination memory.
pub fn request_memory_end() -> String {
    // '/' + 1 == '0'
    format!("{}0", REQUEST_MEMORY.trim_end_matches('/'))
}

/// The key of an accepted event: its publish sequence (16 lowercase hex
/// digits, so etcd's key order is publish order and a new leader restores
/// lanes in order with one range read), then its id.
pub fn event(seq: u64, id: &str) -> String {
    format!("{EVENTS}{seq:016x}/{id}")
}

/// The publish sequence of a key [`event`] builds.
pub fn event_seq_of(key: &[u8]) -> Option<u64> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(EVENTS)?;
    let (seq, id) = rest.split_once('/')?;
    if seq.len() != 16 || id.is_empty() || id.contains('/') {
        return None;
    }
    u64::from_str_radix(seq, 16).ok()
}

/// The key of a dead letter: the event's sequence inverted (newest first,
/// as `event dead-letters` lists them), its id, and the subscription
/// escaped like a reputation segment (a subscription's task path may hold
/// `/`).
pub fn dead_letter(seq: u64, id: &str, subscription: &str) -> String {
    format!(
        "{DEAD_LETTERS}{:016x}/{id}/{}",
        u64::MAX - seq,
        escape_segment(subscription)
    )
}

/// The end of the key range of [`EVENTS`]: the prefix with its last byte
/// incremented.
pub fn events_end() -> String {
    // '/' + 1 == '0'
    format!("{}0", EVENTS.trim_end_matches('/'))
}

/// The end of the key range of [`DEAD_LETTERS`].
pub fn dead_letters_end() -> String {
    format!("{}0", DEAD_LETTERS.trim_end_matches('/'))
}

/// The listing index key of a task created at `created_ms`: the time
/// inverted (`u64::MAX - created_ms`, 16 lowercase hex digits), so that
/// etcd's ascending key order is newest first and a listing is a range
/// read with a limit, then the task id.
pub fn task_index(created_ms: u64, id: &TaskId) -> String {
    format!("{TASK_INDEX}{:016x}/{id}", u64::MAX - created_ms)
}

/// The task a [`task_index`] key names, with its `created_ms`.
pub fn task_index_of(key: &[u8]) -> Option<(u64, TaskId)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(TASK_INDEX)?;
    let (inverted, id) = rest.split_once('/')?;
    if inverted.len() != 16 || id.is_empty() || id.contains('/') {
        return None;
    }
    let inverted = u64::from_str_radix(inverted, 16).ok()?;
    Some((u64::MAX - inverted, TaskId::new(id)))
}

pub fn task_index_end() -> String {
    // '/' + 1 == '0'
    format!("{}0", TASK_INDEX.trim_end_matches('/'))
}

/// The key of a client's idempotency key; `scope` (a client name or token
/// subject) escaped like a reputation segment. Keys hold no `/`.
pub fn idempotency(scope: &ClientId, key: &IdempotencyKey) -> String {
    format!("{IDEMPOTENCY}{}/{key}", escape_segment(scope.as_str()))
}

pub fn agent(id: &AgentId) -> String {
    format!("{AGENTS}{id}")
}

pub fn task(id: &TaskId) -> String {
    format!("{TASKS}{id}")
}

/// The candidate key of the node holding `lease`: the election name, a
/// slash and the lease id in lowercase hex, exactly as etcd's own election
/// API names it, so `etcdctl elect` and the `Election` gRPC service see the
/// same election.
pub fn coordinator_candidate(lease: i64) -> String {
    format!("{ELECTION_COORDINATOR_CANDIDATES}{lease:x}")
}

/// The key range of every task record: from [`TASKS`] up to, not
/// including, this key (the prefix with its last byte incremented).
pub fn tasks_end() -> String {
    // '/' + 1 == '0'
    format!("{}0", TASKS.trim_end_matches('/'))
}

/// The end of the key range of every reputation record: [`REPUTATION`]
/// with its last byte incremented.
pub fn reputation_end() -> String {
    // '/' + 1 == '0'
    format!("{}0", REPUTATION.trim_end_matches('/'))
}

/// The key of `agent`'s reputation for `capability`:
/// `/agentmesh/v1/reputation/<agent>/<capability>`.
///
/// Neither agent ids nor capability names are restricted to a character
/// set (an `--id` may hold any text), so both segments are escaped: `%`
/// becomes `%25` and `/` becomes `%2F`, and nothing else changes. An
/// escaped segment holds no `/`, so the slash after the agent is always
/// the split, and ids of the usual kind (`worker-1`, `text.word_count`)
/// read as they are. [`reputation_of`] reverses it.
pub fn reputation(agent: &AgentId, capability: &str) -> String {
    format!(
        "{REPUTATION}{}/{}",
        escape_segment(agent.as_str()),
        escape_segment(capability)
    )
}

/// The agent and capability of a key under [`REPUTATION`]; `None` for a
/// key [`reputation`] does not build (no split, a stray `/`, or an escape
/// other than `%25` and `%2F`).
pub fn reputation_of(key: &[u8]) -> Option<(AgentId, String)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(REPUTATION)?;
    let (agent, capability) = rest.split_once('/')?;
    if capability.contains('/') {
        return None;
    }
    Some((
        AgentId::new(unescape_segment(agent)?),
        unescape_segment(capability)?,
    ))
}

/// One key segment with `%` and `/` percent-encoded.
fn escape_segment(segment: &str) -> String {
    let mut escaped = String::with_capacity(segment.len());
    for c in segment.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            '/' => escaped.push_str("%2F"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The inverse of [`escape_segment`]; `None` for any other `%` sequence,
/// so every segment has exactly one spelling.
fn unescape_segment(segment: &str) -> Option<String> {
    let mut plain = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(at) = rest.find('%') {
        plain.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3)?;
        plain.push(match escape {
            "%25" => '%',
            "%2F" => '/',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    plain.push_str(rest);
    Some(plain)
}

/// The agent id of a key under [`AGENTS`].
pub fn agent_id_of(key: &[u8]) -> Option<AgentId> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(AGENTS)
        .filter(|id| !id.is_empty())
        .map(AgentId::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_keys_round_trip() {
        let id = AgentId::new("worker-1");
        assert_eq!(agent(&id), "/agentmesh/v1/agents/worker-1");
        assert_eq!(agent_id_of(agent(&id).as_bytes()), Some(id));
        assert_eq!(agent_id_of(b"/agentmesh/v1/tasks/x"), None);
        assert_eq!(agent_id_of(AGENTS.as_bytes()), None);
    }

    #[test]
    fn every_prefix_lives_under_the_root() {
        for prefix in [
            AGENTS,
            TASKS,
            ELECTION_COORDINATOR,
            ELECTION_COORDINATOR_CANDIDATES,
            REPUTATION,
            CHECKPOINTS,
            TASK_INDEX,
            IDEMPOTENCY,
            EVENTS,
            DEAD_LETTERS,
            REQUEST_MEMORY,
        ] {
            assert!(prefix.starts_with(ROOT));
        }
    }

    #[test]
    fn index_keys_sort_newest_first_and_round_trip() {
        let (old, new) = (TaskId::new("b"), TaskId::new("a"));
        let older = task_index(1_000, &old);
        let newer = task_index(2_000, &new);
        assert!(newer < older, "{newer} sorts before {older}");
        assert!(task_index(2_000, &TaskId::new("a")) < task_index(2_000, &TaskId::new("b")));
        assert_eq!(task_index_of(older.as_bytes()), Some((1_000, old)));
        assert_eq!(task_index_of(b"/agentmesh/v1/task-index/zz/a"), None);
        assert!(task_index_end().as_str() > newer.as_str());
        assert_eq!(
            idempotency(
                &ClientId::parse("alice@box").unwrap(),
                &IdempotencyKey::parse("k-1").unwrap().unwrap()
            ),
            "/agentmesh/v1/idempotency/alice@box/k-1"
        );
    }

    #[test]
    fn candidate_keys_follow_the_etcd_election_layout() {
        assert_eq!(
            ELECTION_COORDINATOR_CANDIDATES,
            format!("{ELECTION_COORDINATOR}/")
        );
        assert_eq!(
            coordinator_candidate(0x694d_8a2b_1c3d_4e5f),
            "/agentmesh/v1/election/coordinator/694d8a2b1c3d4e5f"
        );
    }

    #[test]
    fn reputation_keys_round_trip_and_split_unambiguously() {
        let key = reputation(&AgentId::new("worker-1"), "text.word_count");
        assert_eq!(key, "/agentmesh/v1/reputation/worker-1/text.word_count");
        assert_eq!(
            reputation_of(key.as_bytes()),
            Some((AgentId::new("worker-1"), "text.word_count".to_owned()))
        );
        // Without escaping, ("a/b", "c") and ("a", "b/c") would share a key.
        let odd = [
            ("a/b", "c"),
            ("a", "b/c"),
            ("a%2Fb", "c"),
            ("100%", "%"),
            ("", ""),
            ("ünï.cödé-1", "x.y-z_w"),
            ("/", "//"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (agent_id, capability) in odd {
            let id = AgentId::new(agent_id);
            let key = reputation(&id, capability);
            assert!(key.starts_with(REPUTATION) && key.as_str() < reputation_end().as_str());
            assert!(seen.insert(key.clone()), "two records share '{key}'");
            assert_eq!(
                reputation_of(key.as_bytes()),
                Some((id, capability.to_owned())),
                "{key}"
            );
        }
        assert_eq!(
            reputation(&AgentId::new("a/b"), "c"),
            "/agentmesh/v1/reputation/a%2Fb/c"
        );
    }

    #[test]
    fn keys_not_built_by_reputation_name_no_record() {
        for key in [
            "/agentmesh/v1/reputation/no-capability",
            "/agentmesh/v1/reputation/a/b/c",
            "/agentmesh/v1/reputation/a%2fb/c",
            "/agentmesh/v1/reputation/a%41/c",
            "/agentmesh/v1/reputation/a%2/c",
            "/agentmesh/v1/reputation/a/c%",
            "/agentmesh/v1/tasks/a/b",
        ] {
            assert_eq!(reputation_of(key.as_bytes()), None, "{key}");
        }
        assert_eq!(reputation_end(), "/agentmesh/v1/reputation0");
    }

    #[test]
    fn tasks_end_bounds_exactly_the_task_keys() {
        let end = tasks_end();
        assert_eq!(end, "/agentmesh/v1/tasks0");
        let inside = task(&TaskId::new("\u{10ffff}"));
        assert!(TASKS < end.as_str() && inside.as_str() < end.as_str());
    }

    #[test]
    fn event_keys_sort_in_publish_order_and_dead_letters_newest_first() {
        assert_eq!(event(1, "e"), "/agentmesh/v1/events/0000000000000001/e");
        assert!(event(2, "a") < event(10, "a"));
        assert_eq!(event_seq_of(event(0xabc, "x").as_bytes()), Some(0xabc));
        assert_eq!(event_seq_of(b"/agentmesh/v1/events/12/x"), None);
        assert!(event(u64::MAX, "z").as_str() < events_end().as_str());
        assert!(dead_letter(2, "a", "t=tool:x") < dead_letter(1, "a", "t=tool:x"));
        assert_eq!(
            dead_letter(0, "e", "t=task:a/b.yaml"),
            "/agentmesh/v1/dead-letters/ffffffffffffffff/e/t=task:a%2Fb.yaml"
        );
        assert!(dead_letter(0, "e", "x").as_str() < dead_letters_end().as_str());
    }
}
