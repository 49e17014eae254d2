//! The background tasks of a node: every one is spawned through
//! [`Background`], stops on the node's one shutdown signal and is awaited
//! when the node stops, so nothing outlives the node it belongs to and
//! nothing is spawned and forgotten.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Owns a node's background tasks and their shutdown signal. Clones share
/// both.
#[derive(Debug, Clone, Default)]
pub struct Background {
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until it ends by itself or the node shuts down.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = shutdown.cancelled() => debug!(task = name, "background task stopped"),
            }
        });
    }

    /// Resolves once the node shuts down; for loops that must finish a
    /// step (a write, a report) rather than be dropped mid-way.
    pub fn shutdown_signal(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Signals shutdown and waits up to `timeout` for every task to end.
    /// Returns how many were still running when the time was up (they end
    /// with the runtime).
    pub async fn stop(&self, timeout: Duration) -> usize {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            let left = self.tracker.len();
            warn!(left, "background tasks did not stop in time");
            return left;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_every_task_and_waits_for_them() {
        let background = Background::new();
        let (done_tx, mut done) = tokio::sync::mpsc::channel::<()>(4);
        for _ in 0..3 {
            let done_tx = done_tx.clone();
            background.spawn("forever", async move {
                let _keep = done_tx;
                std::future::pending::<()>().await;
            });
        }
        drop(done_tx);
        assert_eq!(background.stop(Duration::from_secs(5)).await, 0);
        // Every task dropped its sender: the channel is closed.
        assert!(done.recv().await.is_none());
    }
}
