//! Capped exponential backoff with jitter, and sleeps that end early on
//! shutdown.

use std::time::Duration;

use tokio::sync::watch;

/// First delay after a failure.
pub(super) const INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between two attempts: short enough that a node is back
/// within a couple of seconds of etcd, long enough not to hammer it.
pub(super) const MAX_DELAY: Duration = Duration::from_secs(2);

/// Delays that double after every failure up to a cap. Each delay is
/// "equal jitter": half fixed, half random, so nodes that lost etcd at the
/// same moment do not all come back at the same moment.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self {
            next: INITIAL_DELAY,
        }
    }

    pub(super) fn reset(&mut self) {
        self.next = INITIAL_DELAY;
    }

    /// The delay to wait before the next attempt.
    pub(super) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        let half = base / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Resolves once the registry shuts down (or the registry is dropped, which
/// drops the sender).
pub(super) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: that is a shutdown too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Sleeps for `delay`; `false` when the registry shut down meanwhile.
pub(super) async fn sleep_unless_stopped(
    delay: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = stopped(shutdown) => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let mut backoff = Backoff::new();
        let first = backoff.next_delay();
        assert!(first >= INITIAL_DELAY / 2 && first <= INITIAL_DELAY);
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(delay <= MAX_DELAY);
        }
        let capped = backoff.next_delay();
        assert!(capped >= MAX_DELAY / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= INITIAL_DELAY);
    }
}
