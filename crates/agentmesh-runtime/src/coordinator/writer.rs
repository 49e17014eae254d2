//! Persists task records in batches.
//!
//! Every change of a record is queued here; the writer drains whatever has
//! queued up, keeps the newest revision of each task, and writes the batch
//! in one registry transaction. Under load many changes share one write;
//! when idle a change is written at once. Acknowledgements fire only after
//! the write succeeded, so a client told "accepted" can rely on the record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::TaskId;
use agentmesh_core::task::TaskRecord;
use agentmesh_registry::{Registry, RegistryError};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::hub::RecordHub;

/// Changes waiting to be written; a full queue makes the coordinator wait,
/// which is the back-pressure that keeps memory bounded.
const QUEUE: usize = 4096;
/// Attempts of one batch before its acknowledgements report the error.
const MAX_WRITE_ATTEMPTS: u32 = 5;

pub type WriteAck = oneshot::Sender<Result<(), String>>;

struct Write {
    record: Arc<TaskRecord>,
    ack: Option<WriteAck>,
}

#[derive(Clone)]
pub struct RecordWriter {
    queue: mpsc::Sender<Write>,
}

impl RecordWriter {
    pub fn spawn(registry: Arc<dyn Registry>, batch: usize, hub: RecordHub) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(registry, rx, batch.max(1), hub));
        Self { queue }
    }

    /// Queues a record; `ack` hears when it is durable.
    pub async fn write(&self, record: Arc<TaskRecord>, ack: Option<WriteAck>) {
        if let Err(mpsc::error::SendError(write)) = self.queue.send(Write { record, ack }).await
            && let Some(ack) = write.ack
        {
            let _ = ack.send(Err("record writer has stopped".into()));
        }
    }
}

async fn run(
    registry: Arc<dyn Registry>,
    mut rx: mpsc::Receiver<Write>,
    batch: usize,
    hub: RecordHub,
) {
    let mut pending = Vec::with_capacity(batch);
    while rx.recv_many(&mut pending, batch).await > 0 {
        let mut latest: HashMap<TaskId, Arc<TaskRecord>> = HashMap::with_capacity(pending.len());
        let mut acks = Vec::new();
        for write in pending.drain(..) {
            let slot = latest
                .entry(write.record.id.clone())
                .or_insert_with(|| write.record.clone());
            if write.record.revision > slot.revision {
                *slot = write.record;
            }
            acks.extend(write.ack);
        }
        let records: Vec<Arc<TaskRecord>> = latest.into_values().collect();
        let outcome = write_with_retry(registry.as_ref(), &records).await;
        if outcome.is_ok() {
            for record in records {
                hub.publish(record);
            }
        }
        for ack in acks {
            let _ = ack.send(outcome.clone().map_err(|e| e.to_string()));
        }
    }
}

async fn write_with_retry(
    registry: &dyn Registry,
    records: &[Arc<TaskRecord>],
) -> Result<(), String> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match registry.put_tasks(records).await {
            Ok(()) => return Ok(()),
            Err(error @ RegistryError::Closed) => return Err(error.to_string()),
            Err(error) if attempt >= MAX_WRITE_ATTEMPTS => {
                warn!(%error, records = records.len(), attempt, "giving up on task record write");
                return Err(error.to_string());
            }
            Err(error) => {
                warn!(%error, records = records.len(), attempt, "task record write failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
        }
    }
}
