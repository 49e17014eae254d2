//! Agent registrations: one key per agent, [`keys::agent`], attached to the
//! lease of the node that owns it and written only by that node.
//!
//! # Ownership
//!
//! An agent id names one agent in the whole cluster, and the key's lease
//! says which node owns it. A node writes an agent key only when it is
//! absent or on one of the node's own leases: the current one, or one the
//! node held before and replaced after losing it (`lease.rs`). Those are
//! the cases of a first registration, a load update, and a re-registration
//! after etcd came back with the old lease and its keys still there. Each
//! write is one transaction:
//!
//! ```text
//! if   create_revision(key) == 0      (absent)       ─┐ one of the two,
//!      lease(key) == <own lease>      (ours)         ─┘ per attempt
//! then put key <registration> lease=<current lease>
//! else get key
//! ```
//!
//! etcd has no "or" between compares, so an attempt compares what the node
//! expects (its current lease for an agent it registered before, absence
//! for a new one). When the compare fails, the `else` branch shows the key
//! as it is, and the next attempt compares that, if the key is absent or on
//! an own lease. A key on any other lease belongs to another live node (a
//! lease that ran out would have taken the key with it): the registration
//! fails with [`RegistryError::DuplicateAgent`] and leaves the key alone.
//!
//! A deregistration deletes the key the same way, only while it is on an
//! own lease; a node refused an id can therefore not delete it either.

use agentmesh_core::{AgentId, AgentRegistration};
use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use tracing::{debug, error};

use super::{MAX_RECORDS_PER_TXN, NodeState, Shared, encode};
use crate::{RegistryError, keys};

/// Attempts of one registration or deregistration. Each failed attempt
/// means the key changed between two transactions (its owner registered or
/// left meanwhile), so a few are plenty.
const MAX_ATTEMPTS: u32 = 8;

/// What an attempt compares the agent key with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// The key does not exist.
    Absent,
    /// The key is attached to this lease, one of the node's own.
    Lease(i64),
}

impl Expect {
    fn compare(self, key: &str) -> Compare {
        match self {
            // etcd compares a missing key as revision 0, and an existing
            // key's create revision is never 0.
            Self::Absent => Compare::create_revision(key, CompareOp::Equal, 0),
            // A missing key compares as lease 0, never an own lease.
            Self::Lease(lease) => Compare::lease(key, CompareOp::Equal, lease),
        }
    }
}

impl NodeState {
    /// Whether `lease` is one of this node's: the current one or one it
    /// replaced.
    fn owns(&self, lease: i64) -> bool {
        lease == self.lease || self.retired.contains(&lease)
    }

    /// What the next attempt compares, given the key as found; `None` when
    /// another node owns it.
    fn expect(&self, found: Option<&KeyValue>) -> Option<Expect> {
        match found {
            None => Some(Expect::Absent),
            Some(kv) if self.owns(kv.lease()) => Some(Expect::Lease(kv.lease())),
            Some(_) => None,
        }
    }
}

/// The key the `else` branch of a failed transaction read.
fn found_by(
    response: &etcd_client::TxnResponse,
    key: &str,
) -> Result<Option<KeyValue>, RegistryError> {
    response
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().cloned()),
            _ => None,
        })
        .ok_or_else(|| {
            RegistryError::Unavailable(format!(
                "etcd answered a failed compare on '{key}' without the key's current state"
            ))
        })
}

impl Shared {
    /// Registers `agent` under the node's current lease if the node owns
    /// its id or the id is free; `first` is the state the first attempt
    /// expects. Records the agent in `node` when it was written.
    pub(super) async fn put_agent(
        &self,
        node: &mut NodeState,
        agent: &AgentRegistration,
        first: Expect,
    ) -> Result<(), RegistryError> {
        let key = keys::agent(&agent.id);
        let value = encode(&key, agent)?;
        let lease = node.lease;
        let mut expect = first;
        for attempt in 1..=MAX_ATTEMPTS {
            let txn = Txn::new()
                .when([expect.compare(&key)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let mut client = self.client.clone();
            let response = self
                .request(
                    || format!("registration of agent '{}' failed", agent.id),
                    client.txn(txn),
                )
                .await?;
            if response.succeeded() {
                debug!(agent_id = %agent.id, lease_id = lease, attempt, "registered agent");
                node.agents.insert(agent.id.clone(), agent.clone());
                return Ok(());
            }
            let found = found_by(&response, &key)?;
            match node.expect(found.as_ref()) {
                Some(next) => expect = next,
                None => {
                    let owner = found.as_ref().map_or(0, KeyValue::lease);
                    debug!(
                        agent_id = %agent.id,
                        owner_lease_id = owner,
                        "registration refused: another node's live agent has this id"
                    );
                    return Err(RegistryError::DuplicateAgent {
                        id: agent.id.clone(),
                    });
                }
            }
        }
        Err(RegistryError::Contended {
            key,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Deletes the key of agent `id` if it is on one of the node's leases,
    /// and forgets the agent. A key of another node is left as it is.
    pub(super) async fn delete_agent(
        &self,
        node: &mut NodeState,
        id: &AgentId,
    ) -> Result<(), RegistryError> {
        let key = keys::agent(id);
        let mut expect = Expect::Lease(node.lease);
        for attempt in 1..=MAX_ATTEMPTS {
            let txn = Txn::new()
                .when([expect.compare(&key)])
                .and_then([TxnOp::delete(key.as_str(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let mut client = self.client.clone();
            let response = self
                .request(
                    || format!("deregistration of agent '{id}' failed"),
                    client.txn(txn),
                )
                .await?;
            let found = if response.succeeded() {
                debug!(agent_id = %id, attempt, "deregistered agent");
                None
            } else {
                found_by(&response, &key)?
            };
            match found.map(|kv| (node.owns(kv.lease()), kv.lease())) {
                // Deleted, or nothing there to delete.
                None => {
                    node.agents.remove(id);
                    return Ok(());
                }
                Some((true, lease)) => expect = Expect::Lease(lease),
                Some((false, lease)) => {
                    debug!(
                        agent_id = %id,
                        owner_lease_id = lease,
                        "deregistration left the agent alone: another node owns its id"
                    );
                    node.agents.remove(id);
                    return Ok(());
                }
            }
        }
        Err(RegistryError::Contended {
            key,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Moves every agent of the node to its current lease after the lease
    /// `replaced` was lost; returns how many agents are registered.
    ///
    /// The keys are usually all still on `replaced` (etcd restored it after
    /// a restart, or the keep-alive failed while the lease lived on) or all
    /// gone with it, so each batch first tries one transaction comparing
    /// every key with `replaced`, and otherwise registers its agents one by
    /// one. An agent whose id another node registered while this node had
    /// no lease is left out, with an error logged: this node's agent stays
    /// invisible to the cluster until the id is free and it registers
    /// again (its next load change or lease renewal).
    pub(super) async fn reregister(
        &self,
        node: &mut NodeState,
        replaced: i64,
    ) -> Result<usize, RegistryError> {
        let lease = node.lease;
        let agents: Vec<AgentRegistration> = node.agents.values().cloned().collect();
        let total = agents.len();
        let mut refused = 0;
        for (n, chunk) in agents.chunks(MAX_RECORDS_PER_TXN).enumerate() {
            let mut compares = Vec::with_capacity(chunk.len());
            let mut puts = Vec::with_capacity(chunk.len());
            for agent in chunk {
                let key = keys::agent(&agent.id);
                compares.push(Expect::Lease(replaced).compare(&key));
                puts.push(TxnOp::put(
                    key.as_str(),
                    encode(&key, agent)?,
                    Some(PutOptions::new().with_lease(lease)),
                ));
            }
            let mut client = self.client.clone();
            let response = self
                .request(
                    || {
                        format!(
                            "re-registration of agents {}..{} of {total} under lease {lease} failed",
                            n * MAX_RECORDS_PER_TXN + 1,
                            n * MAX_RECORDS_PER_TXN + chunk.len()
                        )
                    },
                    client.txn(Txn::new().when(compares).and_then(puts)),
                )
                .await?;
            if response.succeeded() {
                continue;
            }
            for agent in chunk {
                match self.put_agent(node, agent, Expect::Absent).await {
                    Ok(()) => {}
                    Err(RegistryError::DuplicateAgent { id }) => {
                        error!(
                            agent_id = %id,
                            "another node registered this agent's id while this node had \
                             no lease; the agent stays out of the cluster until the id is free"
                        );
                        refused += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // Every key this node owns is on the current lease now.
        node.retired.clear();
        Ok(total - refused)
    }
}
