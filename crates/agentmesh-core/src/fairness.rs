//! Sharing a coordinator fairly between clients.
//!
//! A coordinator used to keep one FIFO queue of ready subtasks: a client
//! that submitted nine tasks of 1,024 subtasks had every free worker slot
//! until all 9,216 were placed, and another client's one-subtask task
//! waited behind them until its deadline. Two things stop that:
//!
//! - **Per-client limits** ([`ClientLimits`]), checked when a task is
//!   submitted: subtasks a client may have queued, tasks it may have
//!   unfinished. One client cannot fill the coordinator's global queue, so
//!   another can always submit.
//! - **Round-robin dispatch** ([`FairQueue`]): ready subtasks wait in one
//!   FIFO per client, and free worker slots go to the clients in turn.
//!
//! # The bound
//!
//! While a client `B` has a queued subtask that a free slot could take, at
//! most `n - 1` placements go to other clients before `B`'s next placement,
//! where `n` is the number of clients with queued subtasks when `B` joined
//! the rotation or was last served; each of those other clients is served
//! at most once in between. A client that arrives later, or comes back
//! after its queue emptied, joins behind `B`. So `B`'s one-subtask task
//! waits for at most one placement per other client with queued work,
//! however long their backlogs are: behind one client's 9,216 subtasks, for
//! one placement. The property test
//! `a_client_waits_at_most_one_placement_per_other_client` checks this over
//! random backlogs, retries and slot counts.
//!
//! The bound counts placements, not time: a placement's slot frees when
//! the other client's subtask ends, so the wait in time is at most `n - 1`
//! of the other clients' subtask durations spread over the free slots.
//!
//! Until clients authenticate, a client is whoever it says it is
//! ([`ClientId`]): a client that changes its name at will gets a share per
//! name. The per-client limits still bound what each name holds, and the
//! coordinator's global limits bound the total.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The longest client name accepted, in bytes: enough for `user@host` or
/// an IPv6 address, small enough to sit in every task record and log line.
pub const MAX_CLIENT_ID_BYTES: usize = 64;

/// Who submitted a task, for per-client limits and fair dispatch.
///
/// Built by [`ClientId::parse`], which accepts only short names of ASCII
/// letters, digits and `. _ - @ :` (so an IP address or `user@host` fits),
/// because the name arrives from the network and ends up in records, logs
/// and error messages. Deserialised without that check: records are
/// written by coordinators, which only store parsed names, and a record
/// must stay readable if the rule is ever tightened.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(String);

/// Why a client name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientIdError {
    #[error("client name must not be empty")]
    Empty,
    #[error("client name is {len} bytes, over the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error(
        "client name may only hold ASCII letters, digits and '.', '_', '-', '@', ':' (found {found:?} at byte {at})"
    )]
    BadCharacter { found: char, at: usize },
}

impl ClientId {
    /// Checks a name that came from outside.
    pub fn parse(name: &str) -> Result<Self, ClientIdError> {
        if name.is_empty() {
            return Err(ClientIdError::Empty);
        }
        if name.len() > MAX_CLIENT_ID_BYTES {
            return Err(ClientIdError::TooLong {
                len: name.len(),
                limit: MAX_CLIENT_ID_BYTES,
            });
        }
        if let Some((at, found)) = name.char_indices().find(|(_, c)| !Self::allowed(*c)) {
            return Err(ClientIdError::BadCharacter { found, at });
        }
        Ok(Self(name.to_owned()))
    }

    /// `name` with every character [`ClientId::parse`] refuses replaced by
    /// `-` and cut to [`MAX_CLIENT_ID_BYTES`]; `fallback` when nothing is
    /// left. For names a program makes up for itself (a user and a host
    /// name), where refusing would only annoy.
    pub fn sanitized(name: &str, fallback: &str) -> Self {
        let clean: String = name
            .chars()
            .map(|c| if Self::allowed(c) { c } else { '-' })
            .take(MAX_CLIENT_ID_BYTES)
            .collect();
        Self::parse(&clean).unwrap_or_else(|_| Self(fallback.to_owned()))
    }

    /// The client of tasks whose submitter gave no name and has no
    /// address (records written before clients were named, in-process
    /// callers).
    pub fn unnamed() -> Self {
        Self("unnamed".to_owned())
    }

    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What one client may hold in a coordinator at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Subtasks of one client waiting for a worker. Well under the global
    /// queue limit, so one client cannot fill the queue and lock the others
    /// out of submitting.
    pub max_queued_subtasks: usize,
    /// Unfinished tasks of one client, so one client cannot take all of
    /// the coordinator's task slots with tasks that wait on each other or
    /// on nothing.
    pub max_active_tasks: usize,
}

impl Default for ClientLimits {
    /// A client may queue four maximal tasks (1,024 subtasks each) and
    /// keep a thousand unfinished: far above what an honest client or the
    /// benchmark's 256 tasks in flight need, a tenth of the global limits.
    fn default() -> Self {
        Self {
            max_queued_subtasks: 4096,
            max_active_tasks: 1000,
        }
    }
}

/// A submit refused because of its client's limits.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientRefusal {
    #[error(
        "client '{client}' has {queued} subtasks queued; {ready} more from this task would exceed the per-client limit of {limit} (--max-queued-subtasks-per-client); retry later"
    )]
    QueuedSubtasks {
        client: ClientId,
        queued: usize,
        ready: usize,
        limit: usize,
    },
    #[error(
        "client '{client}' has {active} unfinished tasks, the per-client limit of {limit} (--max-active-tasks-per-client); retry later"
    )]
    ActiveTasks {
        client: ClientId,
        active: usize,
        limit: usize,
    },
    /// Retrying cannot help: the task alone is wider than a client's share.
    #[error(
        "task has {ready} subtasks ready at once, more than the per-client queue limit of {limit} (--max-queued-subtasks-per-client)"
    )]
    TooWide { ready: usize, limit: usize },
}

impl ClientRefusal {
    /// Whether the same submit may succeed later, once the client's other
    /// work has drained.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ClientRefusal::TooWide { .. })
    }
}

impl ClientLimits {
    /// Whether `client`, holding `queued` subtasks and `active` unfinished
    /// tasks, may submit a task with `ready` subtasks ready at once.
    pub fn check(
        &self,
        client: &ClientId,
        queued: usize,
        active: usize,
        ready: usize,
    ) -> Result<(), ClientRefusal> {
        if ready > self.max_queued_subtasks {
            return Err(ClientRefusal::TooWide {
                ready,
                limit: self.max_queued_subtasks,
            });
        }
        if active >= self.max_active_tasks {
            return Err(ClientRefusal::ActiveTasks {
                client: client.clone(),
                active,
                limit: self.max_active_tasks,
            });
        }
        if queued + ready > self.max_queued_subtasks {
            return Err(ClientRefusal::QueuedSubtasks {
                client: client.clone(),
                queued,
                ready,
                limit: self.max_queued_subtasks,
            });
        }
        Ok(())
    }
}

/// One FIFO queue per client, served round-robin.
///
/// Entries are taken out in *passes*: [`FairQueue::begin_pass`], then
/// [`FairQueue::next`] until it returns `None` or the caller has no room
/// left, then [`FairQueue::end_pass`]. A pass visits the clients in turn,
/// one entry each per round, starting with the client after the one served
/// last in the previous pass. The caller places each entry it is given and
/// says so ([`FairQueue::placed`]), or gives it back
/// ([`FairQueue::defer`]) when nothing can take it now (no worker offers
/// its capability with room); a deferred entry keeps its place in its
/// client's queue. A pass may stop early: entries not visited stay where
/// they were.
///
/// Costs: `next`, `defer` and `placed` are O(1) (one hash lookup);
/// `begin_pass` and `end_pass` are O(clients with queued entries), which
/// is bounded by the queue's length and is one in the common case.
#[derive(Debug, Clone)]
pub struct FairQueue<C, T> {
    clients: HashMap<C, ClientQueue<T>>,
    /// Every client of `clients`, in the order the next pass serves them.
    ring: VecDeque<C>,
    len: usize,
    pass: Option<Pass<C>>,
}

#[derive(Debug, Clone)]
struct ClientQueue<T> {
    entries: VecDeque<T>,
    /// Entries given back during the current pass, in the order taken; they
    /// go back in front of `entries` when the pass ends.
    deferred: Vec<T>,
}

impl<T> ClientQueue<T> {
    fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            deferred: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len() + self.deferred.len()
    }
}

#[derive(Debug, Clone)]
struct Pass<C> {
    /// Clients with entries not yet visited in this pass; the back is the
    /// client whose entry [`FairQueue::next`] returned last.
    order: VecDeque<C>,
    last_served: Option<C>,
}

impl<C, T> Default for FairQueue<C, T> {
    fn default() -> Self {
        Self {
            clients: HashMap::new(),
            ring: VecDeque::new(),
            len: 0,
            pass: None,
        }
    }
}

impl<C: Clone + Eq + Hash, T> FairQueue<C, T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries queued, deferred ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Every entry queued, deferred ones included, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.clients
            .values()
            .flat_map(|queue| queue.entries.iter().chain(&queue.deferred))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries `client` has queued.
    pub fn len_of<Q>(&self, client: &Q) -> usize
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.clients.get(client).map_or(0, ClientQueue::len)
    }

    /// Clients with queued entries.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    fn queue_of(&mut self, client: C) -> &mut ClientQueue<T> {
        match self.clients.entry(client) {
            Entry::Occupied(queue) => queue.into_mut(),
            Entry::Vacant(vacant) => {
                // A new client joins behind every client already waiting.
                self.ring.push_back(vacant.key().clone());
                vacant.insert(ClientQueue::new())
            }
        }
    }

    /// Queues `entry` last among `client`'s.
    pub fn push_back(&mut self, client: C, entry: T) {
        self.queue_of(client).entries.push_back(entry);
        self.len += 1;
    }

    /// Queues `entry` first among `client`'s (a retry, which was ready
    /// before the client's other entries).
    pub fn push_front(&mut self, client: C, entry: T) {
        self.queue_of(client).entries.push_front(entry);
        self.len += 1;
    }

    /// Drops the entries of `client` that `keep` refuses (those of a task
    /// that ended while they waited); O(the client's entries).
    pub fn retain_of<Q>(&mut self, client: &Q, mut keep: impl FnMut(&T) -> bool)
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(queue) = self.clients.get_mut(client) else {
            return;
        };
        let before = queue.len();
        queue.entries.retain(&mut keep);
        queue.deferred.retain(&mut keep);
        self.len -= before - queue.len();
        // During a pass, `end_pass` takes an emptied client out of the ring.
        if queue.len() == 0 && self.pass.is_none() {
            self.clients.remove(client);
            self.ring.retain(|c| self.clients.contains_key(c.borrow()));
        }
    }

    /// Starts a pass (ending one left open).
    pub fn begin_pass(&mut self) {
        self.end_pass();
        self.pass = Some(Pass {
            order: self.ring.clone(),
            last_served: None,
        });
    }

    /// The next entry of the pass, from the next client in turn; `None`
    /// once every entry was visited, or outside a pass.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<T> {
        let pass = self.pass.as_mut()?;
        while let Some(client) = pass.order.pop_front() {
            let entry = self
                .clients
                .get_mut(&client)
                .and_then(|queue| queue.entries.pop_front());
            if let Some(entry) = entry {
                pass.order.push_back(client);
                self.len -= 1;
                return Some(entry);
            }
            // The client's entries were all visited: out of this pass.
        }
        None
    }

    /// The client of the entry [`FairQueue::next`] returned last.
    pub fn current(&self) -> Option<&C> {
        self.pass.as_ref()?.order.back()
    }

    /// Gives back the entry [`FairQueue::next`] returned last: it keeps its
    /// place in its client's queue.
    pub fn defer(&mut self, entry: T) {
        let Some(client) = self.pass.as_ref().and_then(|pass| pass.order.back()) else {
            return;
        };
        if let Some(queue) = self.clients.get_mut(client) {
            queue.deferred.push(entry);
            self.len += 1;
        }
    }

    /// Notes that the entry [`FairQueue::next`] returned last was placed:
    /// the next pass starts with the client after its client.
    pub fn placed(&mut self) {
        if let Some(pass) = self.pass.as_mut() {
            pass.last_served = pass.order.back().cloned();
        }
    }

    /// Ends the pass: deferred entries go back in front of their clients'
    /// queues, the rotation moves past the client served last, and clients
    /// left without entries leave it.
    pub fn end_pass(&mut self) {
        let Some(pass) = self.pass.take() else {
            return;
        };
        if let Some(served) = &pass.last_served
            && let Some(at) = self.ring.iter().position(|c| c == served)
        {
            self.ring.rotate_left(at + 1);
        }
        let clients = &mut self.clients;
        self.ring.retain(|client| {
            let Some(queue) = clients.get_mut(client) else {
                return false;
            };
            while let Some(entry) = queue.deferred.pop() {
                queue.entries.push_front(entry);
            }
            if queue.entries.is_empty() {
                clients.remove(client);
                return false;
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn client_names_are_checked() {
        assert_eq!(
            ClientId::parse("alice@host-1").unwrap().as_str(),
            "alice@host-1"
        );
        assert!(ClientId::parse("::1").is_ok());
        assert!(ClientId::parse("10.0.0.7").is_ok());
        assert_eq!(ClientId::parse(""), Err(ClientIdError::Empty));
        assert_eq!(
            ClientId::parse(&"a".repeat(65)),
            Err(ClientIdError::TooLong { len: 65, limit: 64 })
        );
        assert!(ClientId::parse(&"a".repeat(64)).is_ok());
        assert_eq!(
            ClientId::parse("bob\n"),
            Err(ClientIdError::BadCharacter { found: '\n', at: 3 })
        );
        assert!(matches!(
            ClientId::parse("é"),
            Err(ClientIdError::BadCharacter { .. })
        ));
        assert_eq!(
            ClientId::sanitized("Jane Doe@box/1", "x").as_str(),
            "Jane-Doe@box-1"
        );
        assert_eq!(ClientId::sanitized("", "anonymous").as_str(), "anonymous");
        assert_eq!(
            ClientId::sanitized(&"é".repeat(100), "x").as_str().len(),
            64
        );
    }

    #[test]
    fn limits_name_themselves() {
        let limits = ClientLimits {
            max_queued_subtasks: 10,
            max_active_tasks: 2,
        };
        let a = ClientId::parse("a").unwrap();
        assert_eq!(limits.check(&a, 0, 0, 10), Ok(()));
        let queued = limits.check(&a, 5, 0, 6).unwrap_err();
        assert!(queued.is_retryable());
        assert!(
            queued
                .to_string()
                .contains("per-client limit of 10 (--max-queued-subtasks-per-client)"),
            "{queued}"
        );
        let active = limits.check(&a, 0, 2, 1).unwrap_err();
        assert!(
            active
                .to_string()
                .contains("per-client limit of 2 (--max-active-tasks-per-client)"),
            "{active}"
        );
        let wide = limits.check(&a, 0, 0, 11).unwrap_err();
        assert!(!wide.is_retryable());
    }

    /// Drains `queue` with `slots` free slots that take anything.
    fn place(queue: &mut FairQueue<&'static str, u32>, slots: usize) -> Vec<(&'static str, u32)> {
        let mut placed = Vec::new();
        queue.begin_pass();
        while placed.len() < slots {
            let Some(entry) = queue.next() else { break };
            placed.push((*queue.current().unwrap(), entry));
            queue.placed();
        }
        queue.end_pass();
        placed
    }

    #[test]
    fn a_late_small_client_waits_one_placement_not_the_backlog() {
        let mut queue = FairQueue::new();
        for i in 0..1000 {
            queue.push_back("a", i);
        }
        assert_eq!(place(&mut queue, 3), [("a", 0), ("a", 1), ("a", 2)]);
        queue.push_back("b", 0);
        // FIFO would place a's 997 others first; b waits for one of a's.
        assert_eq!(place(&mut queue, 1), [("a", 3)]);
        assert_eq!(place(&mut queue, 2), [("b", 0), ("a", 4)]);
        assert_eq!(queue.len(), 995);
        assert_eq!(queue.len_of(&"a"), 995);
        assert_eq!(queue.len_of(&"b"), 0);
        assert_eq!(queue.clients(), 1);
    }

    #[test]
    fn passes_alternate_between_clients_one_slot_at_a_time() {
        let mut queue = FairQueue::new();
        for i in 0..3 {
            queue.push_back("a", i);
            queue.push_back("b", i);
        }
        queue.push_back("c", 0);
        let order: Vec<_> = (0..7).flat_map(|_| place(&mut queue, 1)).collect();
        assert_eq!(
            order,
            [
                ("a", 0),
                ("b", 0),
                ("c", 0),
                ("a", 1),
                ("b", 1),
                ("a", 2),
                ("b", 2)
            ]
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn deferred_entries_keep_their_place() {
        let mut queue = FairQueue::new();
        for i in 0..4 {
            queue.push_back("a", i);
        }
        queue.push_front("a", 99);
        queue.begin_pass();
        let mut seen = Vec::new();
        while let Some(entry) = queue.next() {
            seen.push(entry);
            if entry % 2 == 1 {
                queue.defer(entry);
            } else {
                queue.placed();
            }
        }
        queue.end_pass();
        assert_eq!(seen, [99, 0, 1, 2, 3]);
        assert_eq!(queue.len(), 3);
        assert_eq!(place(&mut queue, 10), [("a", 99), ("a", 1), ("a", 3)]);
    }

    #[test]
    fn an_ended_tasks_entries_can_be_dropped() {
        let mut queue = FairQueue::new();
        for i in 0..6 {
            queue.push_back("a", i);
        }
        queue.push_back("b", 0);
        queue.retain_of("a", |entry| entry % 2 == 0);
        assert_eq!((queue.len(), queue.len_of("a")), (4, 3));
        queue.retain_of("b", |_| false);
        assert_eq!(queue.clients(), 1);
        assert_eq!(place(&mut queue, 9), [("a", 0), ("a", 2), ("a", 4)]);
        assert!(queue.is_empty());
    }

    #[test]
    fn an_early_stop_leaves_unvisited_entries_in_order() {
        let mut queue = FairQueue::new();
        for i in 0..4 {
            queue.push_back("a", i);
        }
        queue.begin_pass();
        let first = queue.next().unwrap();
        queue.defer(first);
        // Stops without visiting the rest; a new pass ends this one.
        queue.begin_pass();
        queue.end_pass();
        assert_eq!(queue.len(), 4);
        assert_eq!(
            place(&mut queue, 4),
            [("a", 0), ("a", 1), ("a", 2), ("a", 3)]
        );
    }

    const CLIENTS: [&str; 5] = ["a", "b", "c", "d", "e"];

    #[derive(Debug, Clone)]
    enum Op {
        /// A client submits this many entries (a task's ready subtasks).
        Push(usize, u32),
        /// A retry comes back at the front of its client's queue.
        Retry(usize),
        /// This many slots free up; a pass fills them.
        Free(usize),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..CLIENTS.len(), prop_oneof![1u32..4, 1u32..300]).prop_map(|(c, n)| Op::Push(c, n)),
            1 => (0..CLIENTS.len()).prop_map(Op::Retry),
            4 => (0usize..6).prop_map(Op::Free),
        ]
    }

    proptest! {
        /// The bound of the module doc: while a client has queued work,
        /// each placement that goes to another client goes to one that was
        /// waiting when this client's turn began, at most once each. Also:
        /// every free slot is used while anything is queued, entries of a
        /// client come out in queue order, and lengths are exact.
        #[test]
        fn a_client_waits_at_most_one_placement_per_other_client(
            ops in proptest::collection::vec(op_strategy(), 1..200),
        ) {
            let mut queue: FairQueue<&'static str, u32> = FairQueue::new();
            // The model: each client's entries in order.
            let mut model: BTreeMap<&str, VecDeque<u32>> = BTreeMap::new();
            // Per waiting client: the others waiting when its turn began,
            // and those of them served since.
            let mut ahead: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
            let mut next_entry = 0u32;
            for op in ops {
                match op {
                    Op::Push(c, n) => {
                        let client = CLIENTS[c];
                        if !model.contains_key(client) {
                            let others = model.keys().copied().collect();
                            ahead.insert(client, (others, BTreeSet::new()));
                        }
                        for _ in 0..n {
                            queue.push_back(client, next_entry);
                            model.entry(client).or_default().push_back(next_entry);
                            next_entry += 1;
                        }
                    }
                    Op::Retry(c) => {
                        let client = CLIENTS[c];
                        if !model.contains_key(client) {
                            let others = model.keys().copied().collect();
                            ahead.insert(client, (others, BTreeSet::new()));
                        }
                        queue.push_front(client, next_entry);
                        model.entry(client).or_default().push_front(next_entry);
                        next_entry += 1;
                    }
                    Op::Free(slots) => {
                        let queued: usize = model.values().map(VecDeque::len).sum();
                        let placed = place(&mut queue, slots);
                        prop_assert_eq!(placed.len(), slots.min(queued));
                        for (client, entry) in placed {
                            let expected = model.get_mut(client).and_then(VecDeque::pop_front);
                            prop_assert_eq!(Some(entry), expected);
                            for (waiting, (others, served)) in ahead.iter_mut() {
                                if *waiting == client {
                                    continue;
                                }
                                prop_assert!(
                                    others.contains(client) && served.insert(client),
                                    "{} was served twice, or served though it came after {}, while {} waited",
                                    client, waiting, waiting
                                );
                            }
                            if model[client].is_empty() {
                                model.remove(client);
                                ahead.remove(client);
                            } else {
                                let others = model.keys().copied().filter(|c| *c != client).collect();
                                ahead.insert(client, (others, BTreeSet::new()));
                            }
                        }
                    }
                }
                prop_assert_eq!(queue.len(), model.values().map(VecDeque::len).sum::<usize>());
                prop_assert_eq!(queue.clients(), model.len());
                for client in CLIENTS {
                    prop_assert_eq!(queue.len_of(&client), model.get(client).map_or(0, VecDeque::len));
                }
            }
        }

        /// With entries only some slots can take (two capabilities), a pass
        /// still fills every slot that something queued can use, defers
        /// the rest without losing or reordering them.
        #[test]
        fn deferral_is_work_conserving_and_keeps_order(
            pushes in proptest::collection::vec((0..CLIENTS.len(), 0u8..2, 1u32..20), 1..30),
            passes in proptest::collection::vec((0usize..8, 0usize..8), 1..20),
        ) {
            let mut queue: FairQueue<&'static str, (u8, u32)> = FairQueue::new();
            let mut model: BTreeMap<(&str, u8), VecDeque<u32>> = BTreeMap::new();
            let mut seq = 0u32;
            for (c, capability, n) in pushes {
                for _ in 0..n {
                    queue.push_back(CLIENTS[c], (capability, seq));
                    model.entry((CLIENTS[c], capability)).or_default().push_back(seq);
                    seq += 1;
                }
            }
            for (zero, one) in passes {
                let mut slots = [zero, one];
                queue.begin_pass();
                while let Some((capability, seq)) = queue.next() {
                    let client = *queue.current().unwrap();
                    if slots[capability as usize] == 0 {
                        queue.defer((capability, seq));
                        continue;
                    }
                    slots[capability as usize] -= 1;
                    queue.placed();
                    let expected = model.get_mut(&(client, capability)).and_then(VecDeque::pop_front);
                    prop_assert_eq!(Some(seq), expected);
                }
                queue.end_pass();
                for capability in 0..2u8 {
                    let left = model.iter().filter(|((_, c), q)| *c == capability && !q.is_empty()).count();
                    prop_assert!(slots[capability as usize] == 0 || left == 0);
                }
                prop_assert_eq!(queue.len(), model.values().map(VecDeque::len).sum::<usize>());
            }
        }
    }
}
