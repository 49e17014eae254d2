//! The coordination memory: one key per remembered request task,
//! [`keys::request_memory`], holding a [`MemoryEntry`] as JSON, with no
//! lease. A write is a put, then a range read of the prefix and a delete
//! of the entries beyond the bound (see `core::request::memory::evictions`);
//! two leaders' writes racing at a term change may leave the memory one
//! entry over its bound until the next write.

use agentmesh_core::TaskId;
use agentmesh_core::request::memory::{MemoryEntry, evictions};
use tracing::warn;

use super::{Shared, decode, encode};
use crate::{RegistryError, keys};

/// Entries per range read. An entry with an embedding is a few KiB.
const PAGE: usize = 256;

impl Shared {
    pub(super) async fn request_memory(&self) -> Result<Vec<MemoryEntry>, RegistryError> {
        let mut entries = Vec::new();
        self.list_range(
            keys::REQUEST_MEMORY,
            &keys::request_memory_end(),
            PAGE,
            "coordination memory",
            |kv| {
                let key = String::from_utf8_lossy(kv.key());
                match decode::<MemoryEntry>(&key, kv.value()) {
                    Ok(entry) => entries.push(entry),
                    Err(error) => {
                        warn!(%error, "skipping a coordination-memory entry that does not decode")
                    }
                }
            },
        )
        .await?;
        Ok(entries)
    }

    pub(super) async fn remember_request(
        &self,
        entry: MemoryEntry,
        max: usize,
    ) -> Result<Vec<TaskId>, RegistryError> {
        let key = keys::request_memory(&entry.task);
        let value = encode(&key, &entry)?;
        let mut client = self.client.clone();
        self.request(
            || {
                format!(
                    "write of the coordination memory of task '{}' failed",
                    entry.task
                )
            },
            client.put(key.as_str(), value, None),
        )
        .await?;
        let evicted = evictions(&self.request_memory().await?, max);
        for task in &evicted {
            let key = keys::request_memory(task);
            let mut client = self.client.clone();
            self.request(
                || format!("eviction of the coordination memory of task '{task}' failed"),
                client.delete(key.as_str(), None),
            )
            .await?;
        }
        Ok(evicted)
    }
}
