//! etcd's space: the index of ended tasks that retention deletes from, and
//! the `NOSPACE` alarm that makes etcd refuse writes.
//!
//! # Ended tasks
//!
//! The index of ended tasks ([`EndedIndex`]: end time and record size,
//! oldest end first) is kept in memory, not in etcd, so that ending a task
//! costs etcd no more than its record. It is exact for the writes of this
//! node, noted as each transaction succeeds, and for what a listing of the
//! records saw. It may miss writes of another node, so every campaign this
//! node wins marks it stale; the new leader's listing of unfinished records
//! reads every record anyway and rebuilds it, and [`Shared::ended_tasks`]
//! lists the records itself if asked while the index is stale. A delete
//! removes the records in fenced transactions, then their entries. The
//! index holds one entry per ended record in etcd: retention keeps that to
//! `--max-ended-tasks`, and etcd's quota bounds it in any case.
//!
//! # NOSPACE
//!
//! Once etcd's database reaches `--quota-backend-bytes` it raises the
//! `NOSPACE` alarm and refuses every request that writes (puts, and
//! transactions with puts, and lease grants) with "database space
//! exceeded", until an operator frees space and disarms the alarm; reads
//! and deletes still work. A refused request of this node marks the store
//! full at once ([`Shared::note_refusal`]); a background check asks etcd
//! for its alarms every [`ALARM_CHECK_FULL`] while the store is full, to
//! see it come back, and every [`ALARM_CHECK`] otherwise, so a node that
//! writes nothing also sees another node's refusal.

use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use agentmesh_core::task::TaskRecord;
use etcd_client::{AlarmAction, AlarmType, TxnOp};
use tracing::{info, warn};

use super::Shared;
use super::backoff::sleep_unless_stopped;
use crate::ended_index::EndedIndex;
use crate::{EndedTask, EndedTasks, Fence, RegistryError, TaskKeys, keys};

/// How often the alarms are checked while etcd takes writes.
pub(super) const ALARM_CHECK: Duration = Duration::from_secs(5);
/// How often the alarms are checked while etcd refuses writes: how soon a
/// node serves again after an operator disarmed the alarm.
pub(super) const ALARM_CHECK_FULL: Duration = Duration::from_secs(1);

/// Tasks deleted per transaction: each is up to three deletes (the record,
/// its listing index key and its idempotency key), well under etcd's
/// default `--max-txn-ops` of 128.
const DELETES_PER_TXN: usize = 40;

/// The index of ended tasks and whether it can be trusted.
#[derive(Default)]
pub(super) struct EndedState {
    index: EndedIndex,
    /// Bumped each time the index may have missed writes.
    generation: u64,
    /// The generation a listing last rebuilt the index in; the index is
    /// current while this is `generation`.
    listed: Option<u64>,
}

/// Whether an etcd error is the `NOSPACE` refusal ("etcdserver: mvcc:
/// database space exceeded", `RESOURCE_EXHAUSTED`). etcd's other
/// `RESOURCE_EXHAUSTED` ("too many requests") is not.
pub(super) fn is_no_space(error: &etcd_client::Error) -> bool {
    matches!(
        error,
        etcd_client::Error::GRpcStatus(status)
            if status.code() == tonic::Code::ResourceExhausted
                && status.message().contains("space exceeded")
    )
}

impl Shared {
    /// Marks the store full after a refusal for lack of space.
    pub(super) fn note_refusal(&self, reason: &str) {
        let reason = reason.to_owned();
        self.full.send_if_modified(|full| {
            if full.is_some() {
                return false;
            }
            warn!(reason = %reason, "etcd refuses writes: out of space (NOSPACE)");
            *full = Some(reason);
            true
        });
    }

    fn lock_ended(&self) -> MutexGuard<'_, EndedState> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the index stale: another node may have written since.
    pub(super) fn ended_may_have_missed_writes(&self) {
        let mut state = self.lock_ended();
        state.generation += 1;
    }

    /// The generation a listing starting now rebuilds the index for.
    pub(super) fn ended_generation(&self) -> u64 {
        self.lock_ended().generation
    }

    /// Notes records this node wrote at `revision`, with their sizes.
    pub(super) fn note_written(&self, records: &[(&TaskRecord, u64)], revision: i64) {
        let mut state = self.lock_ended();
        for (record, bytes) in records {
            let terminal = record.status.is_terminal();
            state.index.note(
                &record.id,
                terminal,
                record.updated_ms,
                *bytes,
                revision,
                TaskKeys::of(record),
            );
        }
    }

    /// Replaces the index with what a listing of every record, started in
    /// `generation`, found at `revision`.
    pub(super) fn ended_listed(&self, listed: EndedIndex, revision: i64, generation: u64) {
        let mut state = self.lock_ended();
        state.index.replace(listed, revision);
        state.listed = Some(generation);
    }

    /// How many ended tasks there are and the `limit` oldest; lists the
    /// records first if the index is stale.
    pub(super) async fn ended_tasks(&self, limit: usize) -> Result<EndedTasks, RegistryError> {
        let current = {
            let state = self.lock_ended();
            state.listed == Some(state.generation)
        };
        if !current {
            self.unfinished_tasks().await?;
        }
        Ok(self.lock_ended().index.oldest(limit))
    }

    /// Deletes ended tasks in fenced transactions of
    /// [`DELETES_PER_TXN`] tasks.
    pub(super) async fn delete_tasks(
        &self,
        tasks: &[EndedTask],
        fence: &Fence,
    ) -> Result<(), RegistryError> {
        let mut deleted = 0;
        for chunk in tasks.chunks(DELETES_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .flat_map(|task| {
                    let index =
                        TxnOp::delete(keys::task_index(task.keys.created_ms, &task.id), None);
                    let idempotency = task
                        .keys
                        .idempotency
                        .as_ref()
                        .map(|(scope, key)| TxnOp::delete(keys::idempotency(scope, key), None));
                    [
                        Some(TxnOp::delete(keys::task(&task.id), None)),
                        Some(index),
                        idempotency,
                    ]
                    .into_iter()
                    .flatten()
                })
                .collect();
            self.fenced_txn(fence, ops, deleted, || {
                format!("delete of {} ended tasks failed", chunk.len())
            })
            .await?;
            let mut state = self.lock_ended();
            for task in chunk {
                state.index.remove(&task.id);
            }
            drop(state);
            deleted += chunk.len();
        }
        Ok(())
    }

    /// Whether etcd has a `NOSPACE` alarm raised: `Some(reason)` if so.
    async fn no_space_alarm(&self) -> Result<Option<String>, RegistryError> {
        let mut client = self.client.clone();
        let response = self
            .request(
                || "alarm list failed".to_owned(),
                client.alarm(AlarmAction::Get, AlarmType::None, None),
            )
            .await?;
        let members: Vec<String> = response
            .alarms()
            .iter()
            .filter(|alarm| alarm.alarm() == AlarmType::Nospace)
            .map(|alarm| format!("{:x}", alarm.member_id()))
            .collect();
        Ok((!members.is_empty()).then(|| {
            format!(
                "NOSPACE alarm raised on member {}: database space exceeded",
                members.join(", ")
            )
        }))
    }
}

/// Follows etcd's `NOSPACE` alarm until the registry shuts down.
pub(super) async fn watch_alarms(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let full = shared.full.borrow().is_some();
        let pause = if full { ALARM_CHECK_FULL } else { ALARM_CHECK };
        if !sleep_unless_stopped(pause, &mut shutdown).await {
            return;
        }
        match shared.no_space_alarm().await {
            Ok(Some(reason)) => shared.note_refusal(&reason),
            Ok(None) => {
                shared.full.send_if_modified(|full| {
                    let was = full.take().is_some();
                    if was {
                        info!("etcd's NOSPACE alarm is gone: writes are taken again");
                    }
                    was
                });
            }
            // Unreachable is the keep-alive's to report.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_space_refusal_is_no_space() {
        let nospace = etcd_client::Error::GRpcStatus(tonic::Status::resource_exhausted(
            "etcdserver: mvcc: database space exceeded",
        ));
        assert!(is_no_space(&nospace));
        let busy = etcd_client::Error::GRpcStatus(tonic::Status::resource_exhausted(
            "etcdserver: too many requests",
        ));
        assert!(!is_no_space(&busy));
    }
}
