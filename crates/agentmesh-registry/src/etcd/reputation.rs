//! Reputation records: one key per agent and capability,
//! [`keys::reputation`], holding a [`Reputation`] as JSON, with no lease.
//!
//! # Compare-and-swap
//!
//! [`Shared::update_reputation`] never writes blindly. Each attempt is one
//! transaction:
//!
//! ```text
//! if   mod_revision(key) == <revision read>     (0 when the key was absent)
//! then put(key, update(<record read>))
//! else get(key)
//! ```
//!
//! etcd compares a missing key as if its revisions were 0, and a key that
//! exists always has a mod revision above 0, so the same compare covers
//! "still absent" and "still unchanged" — including a key deleted and
//! created again meanwhile, which has a new mod revision. When the compare
//! fails, another writer's update went through; the `else` branch returns
//! the record that won, so the next attempt starts from it without another
//! request. After [`MAX_REPUTATION_CAS_ATTEMPTS`] lost attempts the update
//! fails with [`RegistryError::Contended`].

use agentmesh_core::AgentId;
use agentmesh_core::reputation::Reputation;
use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse};
use tracing::{debug, warn};

use super::{Shared, decode, encode};
use crate::{MAX_REPUTATION_CAS_ATTEMPTS, RegistryError, ReputationEntry, keys};

/// Records per request when listing them. A record is about 100 bytes, key
/// included, so a page stays far below the client's 4 MiB response limit.
const PAGE_SIZE: usize = 1024;

/// A stored record as read: its mod revision and its value.
struct Stored {
    mod_revision: i64,
    value: Vec<u8>,
}

impl From<&KeyValue> for Stored {
    fn from(kv: &KeyValue) -> Self {
        Self {
            mod_revision: kv.mod_revision(),
            value: kv.value().to_vec(),
        }
    }
}

impl Shared {
    pub(super) async fn reputation(
        &self,
        agent: &AgentId,
        capability: &str,
    ) -> Result<Option<Reputation>, RegistryError> {
        let key = keys::reputation(agent, capability);
        self.read_reputation(&key, agent, capability)
            .await?
            .map(|stored| decode(&key, &stored.value))
            .transpose()
    }

    /// Every record under [`keys::REPUTATION`], read at one revision and
    /// sorted by agent, then capability (key order differs: a `/` after
    /// the agent sorts after `-` and `.`). Keys that do not name an agent
    /// and capability, and values that do not decode, are skipped with a
    /// warning.
    pub(super) async fn reputations(&self) -> Result<Vec<ReputationEntry>, RegistryError> {
        let mut entries = Vec::new();
        let (pages, revision) = self
            .list_range(
                keys::REPUTATION,
                &keys::reputation_end(),
                PAGE_SIZE,
                "reputation records",
                |kv| {
                    if let Some(entry) = entry_of(kv) {
                        entries.push(entry);
                    }
                },
            )
            .await?;
        entries.sort_by(|a, b| (&a.agent, &a.capability).cmp(&(&b.agent, &b.capability)));
        debug!(
            records = entries.len(),
            pages, revision, "listed reputation records"
        );
        Ok(entries)
    }

    pub(super) async fn update_reputation(
        &self,
        agent: &AgentId,
        capability: &str,
        update: &(dyn Fn(Option<Reputation>) -> Reputation + Send + Sync),
    ) -> Result<Reputation, RegistryError> {
        let key = keys::reputation(agent, capability);
        let mut current = self.read_reputation(&key, agent, capability).await?;
        for attempt in 1..=MAX_REPUTATION_CAS_ATTEMPTS {
            let (revision, previous) = match &current {
                Some(stored) => (stored.mod_revision, Some(decode(&key, &stored.value)?)),
                None => (0, None),
            };
            let next = update(previous);
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key.as_str(), encode(&key, &next)?, None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let mut client = self.client.clone();
            let response = self
                .request(
                    || {
                        format!(
                            "update of the reputation of agent '{agent}' for '{capability}' \
                             failed (attempt {attempt})"
                        )
                    },
                    client.txn(txn),
                )
                .await?;
            if response.succeeded() {
                debug!(agent_id = %agent, capability, attempt, "updated reputation");
                return Ok(next);
            }
            // The record changed since it was read: go on from the one
            // that won, as the `else` branch read it.
            current = response
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(get) => Some(get.kvs().first().map(Stored::from)),
                    _ => None,
                })
                .ok_or_else(|| {
                    RegistryError::Unavailable(format!(
                        "update of the reputation of agent '{agent}' for '{capability}': \
                         etcd answered a failed compare without the record's current value"
                    ))
                })?;
            debug!(
                agent_id = %agent,
                capability,
                attempt,
                "reputation changed meanwhile; retrying with the newer record"
            );
        }
        warn!(
            key = %key,
            attempts = MAX_REPUTATION_CAS_ATTEMPTS,
            "reputation update gave up: the record kept changing"
        );
        Err(RegistryError::Contended {
            key,
            attempts: MAX_REPUTATION_CAS_ATTEMPTS,
        })
    }

    /// The stored record at `key`, undecoded.
    async fn read_reputation(
        &self,
        key: &str,
        agent: &AgentId,
        capability: &str,
    ) -> Result<Option<Stored>, RegistryError> {
        let mut client = self.client.clone();
        let response = self
            .request(
                || format!("get of the reputation of agent '{agent}' for '{capability}' failed"),
                client.get(key, None),
            )
            .await?;
        Ok(response.kvs().first().map(Stored::from))
    }
}

/// The entry stored in `kv`, or `None` (with a warning) when the key or
/// value is not a valid reputation record.
fn entry_of(kv: &KeyValue) -> Option<ReputationEntry> {
    let key = String::from_utf8_lossy(kv.key());
    let Some((agent, capability)) = keys::reputation_of(kv.key()) else {
        warn!(key = %key, "skipping key under the reputation prefix that names no agent and capability");
        return None;
    };
    match serde_json::from_slice::<Reputation>(kv.value()) {
        Ok(reputation) => Some(ReputationEntry {
            agent,
            capability,
            reputation,
        }),
        Err(e) => {
            warn!(key = %key, error = %e, "skipping corrupt reputation record");
            None
        }
    }
}
