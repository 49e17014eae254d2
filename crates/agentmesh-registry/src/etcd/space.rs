//! etcd's space: the index of ended tasks that retention deletes from, and
//! the `NOSPACE` alarm that makes etcd refuse writes.
//!
//! # Ended tasks
//!
//! A terminal record is put together with its index key
//! [`keys::ended`] (end time, zero-padded, then the task id; the value is
//! the record's size), in the same transaction. So the oldest endings are a
//! range read with a limit, and their count a count-only read: retention
//! reads neither the records nor more index keys than it deletes. A delete
//! removes the index key and the record in one transaction, fenced like
//! every write of the leader.
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

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{AlarmAction, AlarmType, GetOptions, Txn, TxnOp};
use tracing::{info, warn};

use super::backoff::sleep_unless_stopped;
use super::{Shared, election};
use crate::{EndedTask, EndedTasks, Fence, RegistryError, keys};

/// How often the alarms are checked while etcd takes writes.
pub(super) const ALARM_CHECK: Duration = Duration::from_secs(5);
/// How often the alarms are checked while etcd refuses writes: how soon a
/// node serves again after an operator disarmed the alarm.
pub(super) const ALARM_CHECK_FULL: Duration = Duration::from_secs(1);

/// Tasks deleted per transaction: two deletes each, well under etcd's
/// default `--max-txn-ops` of 128.
const DELETES_PER_TXN: usize = 32;

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

    /// How many ended tasks there are and the `limit` oldest.
    pub(super) async fn ended_tasks(&self, limit: usize) -> Result<EndedTasks, RegistryError> {
        let end = keys::ended_end();
        let mut client = self.client.clone();
        let counted = self
            .request(
                || "count of ended tasks failed".to_owned(),
                client.get(
                    keys::ENDED,
                    Some(GetOptions::new().with_range(end.as_str()).with_count_only()),
                ),
            )
            .await?;
        let total = usize::try_from(counted.count()).unwrap_or(usize::MAX);
        if limit == 0 || total == 0 {
            return Ok(EndedTasks {
                total,
                oldest: Vec::new(),
            });
        }
        let listed = self
            .request(
                || format!("listing of the {limit} oldest ended tasks failed"),
                client.get(
                    keys::ENDED,
                    Some(
                        GetOptions::new()
                            .with_range(end.as_str())
                            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX)),
                    ),
                ),
            )
            .await?;
        let mut oldest = Vec::with_capacity(listed.kvs().len());
        for kv in listed.kvs() {
            let Some((ended_ms, id)) = keys::ended_of(kv.key()) else {
                warn!(key = %String::from_utf8_lossy(kv.key()), "skipping a malformed ended-task key");
                continue;
            };
            let bytes = std::str::from_utf8(kv.value())
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            oldest.push(EndedTask {
                id,
                ended_ms,
                bytes,
            });
        }
        Ok(EndedTasks { total, oldest })
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
                    [
                        TxnOp::delete(keys::ended(task.ended_ms, &task.id), None),
                        TxnOp::delete(keys::task(&task.id), None),
                    ]
                })
                .collect();
            let txn = Txn::new()
                .when([election::fence_compare(fence)])
                .and_then(ops);
            let mut client = self.client.clone();
            let response = self
                .request(
                    || format!("delete of {} ended tasks failed", chunk.len()),
                    client.txn(txn),
                )
                .await?;
            if !response.succeeded() {
                return Err(RegistryError::NotLeader {
                    fence_revision: fence.revision,
                    written: deleted,
                });
            }
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
