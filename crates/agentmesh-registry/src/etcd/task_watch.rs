//! One task's record as a stream: a spawned task follows the key and feeds
//! a bounded channel, so a slow reader slows the task rather than growing a
//! buffer, and dropping the stream ends the task.

use std::sync::Arc;

use agentmesh_core::TaskId;
use agentmesh_core::task::TaskRecord;
use etcd_client::{EventType, WatchOptions};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use super::backoff::{Backoff, sleep_unless_stopped, stopped};
use super::usable_watch_response;
use super::{Shared, decode};
use crate::{RegistryError, TaskWatch, keys};

/// Records buffered between the watching task and the stream's reader.
const CHANNEL_CAPACITY: usize = 64;

type Item = Result<TaskRecord, RegistryError>;

/// Starts following task `id`, whose record was `current` at store revision
/// `read_at`.
pub(super) fn spawn(
    shared: Arc<Shared>,
    id: TaskId,
    current: Option<Item>,
    read_at: i64,
) -> TaskWatch {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(run(shared, id, current, read_at, tx));
    ReceiverStream::new(rx).boxed()
}

/// The record's `revision` of the last record yielded; only strictly newer
/// records pass, so a re-read after an interruption never repeats one.
struct Follower {
    id: TaskId,
    key: String,
    last_revision: u64,
    tx: mpsc::Sender<Item>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Follower {
    /// Sends a record if it is newer than the last one sent (and a
    /// decoding error as is); `false` when the stream was dropped or the
    /// registry shut down.
    async fn offer(&mut self, item: Item) -> bool {
        if let Ok(record) = &item {
            if record.revision <= self.last_revision {
                return true;
            }
            self.last_revision = record.revision;
        }
        tokio::select! {
            _ = stopped(&mut self.shutdown) => false,
            sent = self.tx.send(item) => sent.is_ok(),
        }
    }

    /// Sleeps for the backoff; `false` when the stream was dropped or the
    /// registry shut down meanwhile.
    async fn pause(&mut self, backoff: &mut Backoff) -> bool {
        let delay = backoff.next_delay();
        tokio::select! {
            _ = self.tx.closed() => false,
            go_on = sleep_unless_stopped(delay, &mut self.shutdown) => go_on,
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    id: TaskId,
    current: Option<Item>,
    read_at: i64,
    tx: mpsc::Sender<Item>,
) {
    let mut follower = Follower {
        key: keys::task(&id),
        id,
        last_revision: 0,
        tx,
        shutdown: shared.shutdown.clone(),
    };
    if let Some(item) = current
        && !follower.offer(item).await
    {
        return;
    }
    let mut backoff = Backoff::new();
    let mut revision = read_at;
    loop {
        match watch_from(&shared, &mut follower, revision + 1, &mut backoff).await {
            Ended::Stop => return,
            Ended::Interrupted(reason) => warn!(
                task_id = %follower.id,
                error = %reason,
                "task watch interrupted; reading the record again"
            ),
        }
        loop {
            if !follower.pause(&mut backoff).await {
                return;
            }
            let reread = tokio::select! {
                _ = follower.tx.closed() => return,
                reread = shared.read_task(&follower.id) => reread,
            };
            match reread {
                Ok((item, read_at)) => {
                    revision = read_at;
                    if let Some(item) = item
                        && !follower.offer(item).await
                    {
                        return;
                    }
                    break;
                }
                Err(e) => warn!(task_id = %follower.id, error = %e, "task record read failed"),
            }
        }
    }
}

/// Why one watch of the key ended.
enum Ended {
    Stop,
    Interrupted(String),
}

/// Watches the key from revision `start` and offers every put.
async fn watch_from(
    shared: &Shared,
    follower: &mut Follower,
    start: i64,
    backoff: &mut Backoff,
) -> Ended {
    let mut client = shared.client.clone();
    let options = WatchOptions::new().with_start_revision(start);
    let opened = tokio::select! {
        _ = stopped(&mut follower.shutdown) => return Ended::Stop,
        _ = follower.tx.closed() => return Ended::Stop,
        opened = shared.request(
            || format!("watch of task record '{}' failed", follower.id),
            client.watch(follower.key.as_str(), Some(options)),
        ) => opened,
    };
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(e) => return Ended::Interrupted(e.to_string()),
    };
    loop {
        let message = tokio::select! {
            _ = stopped(&mut follower.shutdown) => return Ended::Stop,
            _ = follower.tx.closed() => return Ended::Stop,
            message = stream.message() => message,
        };
        let response = match usable_watch_response(message, start) {
            Ok(response) => response,
            Err(reason) => return Ended::Interrupted(reason),
        };
        if response.created() {
            debug!(task_id = %follower.id, start_revision = start, "task watch running");
            backoff.reset();
        }
        for event in response.events() {
            if event.event_type() != EventType::Put {
                continue;
            }
            let Some(kv) = event.kv() else { continue };
            let item = decode::<TaskRecord>(&follower.key, kv.value());
            if !follower.offer(item).await {
                return Ended::Stop;
            }
        }
    }
}
