//! Event records and dead letters (docs/events.md): [`keys::event`] holds
//! an accepted event with its unsettled deliveries, [`keys::dead_letter`]
//! one delivery that ran out of attempts. Both without a lease: they
//! outlive the leader that wrote them, so its successor resumes.
//!
//! Writes are fenced like task records: each transaction compares the
//! leader key's create revision, so a deposed leader writes nothing.

use std::sync::atomic::Ordering;

use agentmesh_core::events::{DeadLetter, EventRecord};
use etcd_client::{GetOptions, Txn, TxnOp};
use tracing::warn;

use super::{MAX_RECORDS_PER_TXN, Shared, decode, election, encode};
use crate::{EventWrite, Fence, RegistryError, keys};

/// Event records read per page when a new leader restores them. A record
/// is at most about `--max-event-bytes` and a few hundred bytes more, so a
/// page stays under the client's receive limit with the default payload
/// bound.
const EVENT_PAGE: usize = 32;

impl Shared {
    pub(super) async fn write_events(
        &self,
        writes: &[EventWrite],
        fence: &Fence,
    ) -> Result<(), RegistryError> {
        let not_leader = |written| RegistryError::NotLeader {
            fence_revision: fence.revision,
            written,
        };
        if fence.lease != self.lease_id.load(Ordering::SeqCst) {
            return Err(not_leader(0));
        }
        let mut written = 0;
        for chunk in writes.chunks(MAX_RECORDS_PER_TXN) {
            let mut ops = Vec::with_capacity(chunk.len());
            for write in chunk {
                ops.push(match write {
                    EventWrite::Put(record) => {
                        let key = keys::event(record.event.seq, &record.event.id);
                        let value = encode(&key, record)?;
                        TxnOp::put(key, value, None)
                    }
                    EventWrite::Delete { seq, id } => TxnOp::delete(keys::event(*seq, id), None),
                    EventWrite::Dead(dead) => {
                        let key = keys::dead_letter(
                            dead.event.seq,
                            &dead.event.id,
                            dead.subscription.as_str(),
                        );
                        let value = encode(&key, dead)?;
                        TxnOp::put(key, value, None)
                    }
                });
            }
            let txn = Txn::new()
                .when([election::fence_compare(fence)])
                .and_then(ops);
            let mut client = self.client.clone();
            let response = self
                .request(
                    || format!("write of {} event changes failed", chunk.len()),
                    client.txn(txn),
                )
                .await?;
            if !response.succeeded() {
                return Err(not_leader(written));
            }
            written += chunk.len();
        }
        Ok(())
    }

    pub(super) async fn pending_events(&self) -> Result<Vec<EventRecord>, RegistryError> {
        let mut records = Vec::new();
        self.list_range(
            keys::EVENTS,
            &keys::events_end(),
            EVENT_PAGE,
            "event records",
            |kv| {
                let key = String::from_utf8_lossy(kv.key());
                match decode::<EventRecord>(&key, kv.value()) {
                    Ok(record) => records.push(record),
                    Err(error) => warn!(%error, "skipping an event record that does not decode"),
                }
            },
        )
        .await?;
        Ok(records)
    }

    pub(super) async fn dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, RegistryError> {
        let options = GetOptions::new()
            .with_range(keys::dead_letters_end())
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let mut client = self.client.clone();
        let response = self
            .request(
                || "listing of dead letters failed".to_owned(),
                client.get(keys::DEAD_LETTERS, Some(options)),
            )
            .await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                decode::<DeadLetter>(&key, kv.value())
                    .inspect_err(
                        |error| warn!(%error, "skipping a dead letter that does not decode"),
                    )
                    .ok()
            })
            .collect())
    }
}
