//! The keep-alive task: refreshes the node's lease every TTL/3 and, when
//! the lease is lost, replaces it and re-registers the node's agents
//! (moving their keys to the new lease, as `registration.rs` describes).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::Shared;
use super::backoff::{Backoff, sleep_unless_stopped, stopped};
use crate::RegistryError;

/// Shortest refresh interval, whatever the TTL.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Why a keep-alive session ended.
enum Ended {
    Shutdown,
    Failed(String),
}

/// Runs until the registry shuts down.
pub(super) async fn keep_alive(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut backoff = Backoff::new();
    loop {
        let lease = shared.lease_id.load(Ordering::SeqCst);
        let reason = match refresh_until_failure(&shared, lease).await {
            Ended::Shutdown => return,
            Ended::Failed(reason) => reason,
        };
        warn!(lease_id = lease, error = %reason, "lease keep-alive failed; granting a new lease");
        shared.reachable.send_replace(false);
        loop {
            match renew(&shared, lease).await {
                Ok((new_lease, agents)) => {
                    info!(
                        old_lease_id = lease,
                        lease_id = new_lease,
                        agents,
                        "re-registered agents under a new lease"
                    );
                    backoff.reset();
                    shared.reachable.send_replace(true);
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "lease renewal failed");
                    if !sleep_unless_stopped(delay, &mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Refreshes `lease` every TTL/3 until a refresh fails, etcd reports the
/// lease gone, or the registry shuts down.
async fn refresh_until_failure(shared: &Shared, lease: i64) -> Ended {
    let mut shutdown = shared.shutdown.clone();
    let ttl = Duration::from_secs(u64::try_from(shared.ttl_secs).unwrap_or(1));
    let interval = (ttl / 3).max(MIN_INTERVAL);
    // A refresh slower than the TTL is too late anyway.
    let timeout = shared.options.request_timeout.min(ttl);
    let mut client = shared.client.clone();

    // Opening the stream sends the first refresh and fails when etcd no
    // longer knows the lease.
    let opened = tokio::select! {
        _ = stopped(&mut shutdown) => return Ended::Shutdown,
        opened = tokio::time::timeout(timeout, client.lease_keep_alive(lease)) => opened,
    };
    let (mut keeper, mut responses) = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Ended::Failed(format!("cannot open keep-alive stream: {e}")),
        Err(_) => {
            return Ended::Failed(format!(
                "opening the keep-alive stream timed out after {timeout:?}"
            ));
        }
    };
    debug!(lease_id = lease, interval = ?interval, "lease keep-alive running");

    loop {
        if !sleep_unless_stopped(interval, &mut shutdown).await {
            return Ended::Shutdown;
        }
        let round = async {
            keeper.keep_alive().await?;
            responses.message().await
        };
        let answer = tokio::select! {
            _ = stopped(&mut shutdown) => return Ended::Shutdown,
            answer = tokio::time::timeout(timeout, round) => answer,
        };
        match answer {
            Ok(Ok(Some(response))) if response.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return Ended::Failed("etcd reports the lease expired".into()),
            Ok(Ok(None)) => return Ended::Failed("keep-alive stream closed by etcd".into()),
            Ok(Err(e)) => return Ended::Failed(e.to_string()),
            Err(_) => return Ended::Failed(format!("no keep-alive answer within {timeout:?}")),
        }
    }
}

/// Grants a new lease and moves every agent of this node to it; returns
/// the new lease and the number of agents registered under it.
async fn renew(shared: &Shared, old_lease: i64) -> Result<(i64, usize), RegistryError> {
    let mut client = shared.client.clone();
    let granted = shared
        .request(
            || format!("grant of a lease replacing lease {old_lease} failed"),
            client.lease_grant(shared.ttl_secs, None),
        )
        .await?;
    let lease = granted.id();
    // Registrations wait while the agents move, so none lands on the old
    // lease after this point.
    let mut node = shared.node.lock().await;
    // Usually `old_lease`; a lease granted by an earlier renewal that
    // failed half-way otherwise. Either way its keys are still this node's.
    let replaced = node.lease;
    node.retired.insert(replaced);
    node.lease = lease;
    shared.lease_id.store(lease, Ordering::SeqCst);
    let registered = shared.reregister(&mut node, replaced).await?;
    Ok((lease, registered))
}
