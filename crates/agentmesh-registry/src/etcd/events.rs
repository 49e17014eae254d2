//! Event records and dead letters (docs/events.md): [`keys::event`] holds
//! an accepted event with its unsettled deliveries, [`keys::dead_letter`]
//! one delivery that ran out of attempts. Both without a lease: they
//! outlive the leader that wrote them, so its successor resumes.
//!
//! Writes are fenced like task records: each transaction compares the
//! leader key's create revision, so a deposed leader writes nothing. A
//! trim (`--max-dead-letters`) deletes the oldest dead letters past the
//! bound, fenced the same way.

use std::sync::atomic::Ordering;

use agentmesh_core::events::{DeadLetter, EventRecord};
use etcd_client::{DeleteOptions, GetOptions, SortOrder, SortTarget, TxnOp, TxnOpResponse};
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
    ) -> Result<usize, RegistryError> {
        if fence.lease != self.lease_id.load(Ordering::SeqCst) {
            return Err(election::not_leader(fence, 0));
        }
        let mut written = 0;
        let mut trimmed = 0;
        // Puts and deletes go in transactions of MAX_RECORDS_PER_TXN, in
        // order; a trim reads what is stored, so the writes before it land
        // first.
        for run in writes.split_inclusive(|w| matches!(w, EventWrite::TrimDeadLetters { .. })) {
            let (ops, trim) = match run.split_last() {
                Some((EventWrite::TrimDeadLetters { keep }, ops)) => (ops, Some(*keep)),
                _ => (run, None),
            };
            for chunk in ops.chunks(MAX_RECORDS_PER_TXN) {
                self.write_chunk(chunk, fence, written).await?;
                written += chunk.len();
            }
            if let Some(keep) = trim {
                trimmed += self.trim_dead_letters(keep, fence, written).await?;
                written += 1;
            }
        }
        Ok(trimmed)
    }

    async fn write_chunk(
        &self,
        chunk: &[EventWrite],
        fence: &Fence,
        written: usize,
    ) -> Result<(), RegistryError> {
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
                EventWrite::TrimDeadLetters { .. } => {
                    unreachable!("write_events splits the writes at every trim")
                }
            });
        }
        self.fenced_txn(fence, ops, written, || {
            format!("write of {} event changes failed", chunk.len())
        })
        .await?;
        Ok(())
    }

    /// Deletes the dead letters past the newest `keep`: counts them, reads
    /// the keys of the oldest surplus (the end of the newest-first range)
    /// and deletes from the newest of those to the end of the range, fenced.
    /// Only the leader writes dead letters, so nothing lands in between.
    async fn trim_dead_letters(
        &self,
        keep: usize,
        fence: &Fence,
        written: usize,
    ) -> Result<usize, RegistryError> {
        let mut client = self.client.clone();
        let counted = self
            .request(
                || "count of dead letters failed".to_owned(),
                client.get(
                    keys::DEAD_LETTERS,
                    Some(
                        GetOptions::new()
                            .with_range(keys::dead_letters_end())
                            .with_count_only(),
                    ),
                ),
            )
            .await?;
        let surplus = usize::try_from(counted.count())
            .unwrap_or(0)
            .saturating_sub(keep);
        if surplus == 0 {
            return Ok(0);
        }
        let oldest = self
            .request(
                || format!("listing of the {surplus} oldest dead letters failed"),
                client.get(
                    keys::DEAD_LETTERS,
                    Some(
                        GetOptions::new()
                            .with_range(keys::dead_letters_end())
                            .with_keys_only()
                            .with_sort(SortTarget::Key, SortOrder::Descend)
                            .with_limit(i64::try_from(surplus).unwrap_or(i64::MAX)),
                    ),
                ),
            )
            .await?;
        let Some(from) = oldest.kvs().last().map(|kv| kv.key().to_vec()) else {
            return Ok(0);
        };
        let delete = TxnOp::delete(
            from,
            Some(DeleteOptions::new().with_range(keys::dead_letters_end())),
        );
        let response = self
            .fenced_txn(fence, vec![delete], written, || {
                format!("deletion of {surplus} dead letters failed")
            })
            .await?;
        Ok(response
            .op_responses()
            .into_iter()
            .map(|op| match op {
                TxnOpResponse::Delete(deleted) => usize::try_from(deleted.deleted()).unwrap_or(0),
                _ => 0,
            })
            .sum())
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
