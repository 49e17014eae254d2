//! Listing task records newest first, and finding a task by idempotency
//! key.
//!
//! Task ids are random, so the records' own keys have no useful order.
//! Beside each record lies its index key ([`keys::task_index`]), whose
//! name sorts newest first; a listing reads index keys in order with a
//! limit (keys only), then the records they name, a few per transaction,
//! all at the revision of its first read. It reads at most `query.scan`
//! index keys per call, however many records are stored.

use agentmesh_core::task::TaskRecord;
use agentmesh_core::task::listing::{
    IdempotencyKey, ListCursor, Next, PageBuilder, TaskPage, TaskQuery,
};
use agentmesh_core::{ClientId, TaskId};
use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};
use tracing::warn;

use super::{Shared, decode};
use crate::{RegistryError, keys};

/// Index keys read per request.
const INDEX_BATCH: usize = 64;

/// Records read per transaction: records are up to `--max-record-bytes`
/// each, and a reply must stay under the client's receive limit. A batch
/// refused for its size is read one record at a time.
const RECORD_BATCH: usize = 8;

impl Shared {
    pub(super) async fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage, RegistryError> {
        let mut start = match &query.after {
            Some(after) => {
                let mut key = keys::task_index(after.created_ms, &after.id).into_bytes();
                key.push(0);
                key
            }
            None => keys::TASK_INDEX.as_bytes().to_vec(),
        };
        let end = keys::task_index_end();
        let mut page = PageBuilder::new(query);
        let mut revision = 0;
        loop {
            let batch = page.budget().min(INDEX_BATCH);
            if batch == 0 {
                return Ok(page.finish(true));
            }
            let options = GetOptions::new()
                .with_range(end.as_str())
                .with_limit(i64::try_from(batch).unwrap_or(i64::MAX))
                .with_keys_only()
                .with_revision(revision);
            let mut client = self.client.clone();
            let response = self
                .request(
                    || "listing of the task index failed".to_owned(),
                    client.get(start.clone(), Some(options)),
                )
                .await?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            let entries: Vec<(u64, TaskId)> = response
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let entry = keys::task_index_of(kv.key());
                    if entry.is_none() {
                        warn!(key = %String::from_utf8_lossy(kv.key()), "skipping malformed task index key");
                    }
                    entry
                })
                .collect();
            let more_after_batch = response.more();
            let Some(last) = response.kvs().last() else {
                return Ok(page.finish(false));
            };
            start = last.key().to_vec();
            start.push(0);
            let records = self.read_records(&entries, revision).await?;
            for (i, ((created_ms, id), record)) in entries.into_iter().zip(records).enumerate() {
                let cursor = ListCursor { created_ms, id };
                if page.offer(cursor, record) == Next::Stop {
                    let more = more_after_batch || i + 1 < response.kvs().len();
                    return Ok(page.finish(more));
                }
            }
            if !more_after_batch {
                return Ok(page.finish(false));
            }
        }
    }

    /// The records of `entries` at `revision`, in order; `None` for one
    /// that is gone or does not decode (logged).
    async fn read_records(
        &self,
        entries: &[(u64, TaskId)],
        revision: i64,
    ) -> Result<Vec<Option<TaskRecord>>, RegistryError> {
        let mut records = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(RECORD_BATCH) {
            match self.read_batch(chunk, revision).await {
                Ok(batch) => records.extend(batch),
                Err(RegistryError::Refused(_)) if chunk.len() > 1 => {
                    for entry in chunk {
                        records.extend(
                            self.read_batch(std::slice::from_ref(entry), revision)
                                .await?,
                        );
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Ok(records)
    }

    async fn read_batch(
        &self,
        chunk: &[(u64, TaskId)],
        revision: i64,
    ) -> Result<Vec<Option<TaskRecord>>, RegistryError> {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(_, id)| {
                TxnOp::get(
                    keys::task(id),
                    Some(GetOptions::new().with_revision(revision)),
                )
            })
            .collect();
        let mut client = self.client.clone();
        let response = self
            .request(
                || format!("read of {} task records for a listing failed", chunk.len()),
                client.txn(Txn::new().and_then(ops)),
            )
            .await?;
        Ok(response
            .op_responses()
            .into_iter()
            .zip(chunk)
            .map(|(op, (_, id))| match op {
                TxnOpResponse::Get(get) => get.kvs().first().and_then(|kv| {
                    let key = keys::task(id);
                    decode::<TaskRecord>(&key, kv.value())
                        .inspect_err(
                            |e| warn!(key = %key, error = %e, "skipping corrupt task record"),
                        )
                        .ok()
                }),
                _ => None,
            })
            .collect())
    }

    pub(super) async fn task_for_idempotency_key(
        &self,
        scope: &ClientId,
        key: &IdempotencyKey,
    ) -> Result<Option<TaskId>, RegistryError> {
        let etcd_key = keys::idempotency(scope, key);
        let mut client = self.client.clone();
        let response = self
            .request(
                || format!("get of idempotency key '{key}' failed"),
                client.get(etcd_key.as_str(), None),
            )
            .await?;
        Ok(response.kvs().first().and_then(|kv| {
            std::str::from_utf8(kv.value())
                .ok()
                .filter(|id| !id.is_empty())
                .map(TaskId::new)
        }))
    }
}
