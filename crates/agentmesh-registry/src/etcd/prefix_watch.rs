//! A view of the keys under one prefix, kept current by one list and a
//! watch from the list's revision, listing again after every interruption.
//! Membership and the coordinator election both follow a prefix this way.

use std::future::Future;
use std::sync::Arc;

use etcd_client::{Event, WatchOptions};
use tracing::{debug, warn};

use super::Shared;
use super::backoff::{Backoff, sleep_unless_stopped, stopped};
use super::usable_watch_response;
use crate::RegistryError;

pub(super) trait PrefixView: Clone + Send + Sync + 'static {
    /// What logs and errors call the view.
    const NAME: &'static str;
    /// The watched prefix.
    const PREFIX: &'static str;
    /// The view as published now.
    fn published(shared: &Shared) -> Self;
    /// Lists the prefix: the view and the revision it was read at.
    fn list(shared: &Shared) -> impl Future<Output = Result<(Self, i64), RegistryError>> + Send;
    /// Applies one watch event; `true` when the view changed.
    fn apply(&mut self, event: &Event) -> bool;
    /// Publishes the view if it differs from the published one.
    fn publish(&self, shared: &Shared);
}

/// Why one watch of the prefix ended.
enum Ended {
    Shutdown,
    Interrupted(String),
}

/// Follows the prefix from `revision` + 1 (the revision of the list that
/// produced the published view), re-listing after every interruption.
/// Runs until the registry shuts down.
pub(super) async fn follow<V: PrefixView>(shared: Arc<Shared>, mut revision: i64) {
    let mut shutdown = shared.shutdown.clone();
    let mut backoff = Backoff::new();
    let mut view = V::published(&shared);
    loop {
        match watch_from(&shared, revision + 1, &mut view, &mut backoff).await {
            Ended::Shutdown => return,
            Ended::Interrupted(reason) => {
                warn!(view = V::NAME, error = %reason, "watch interrupted; listing again");
            }
        }
        loop {
            if !sleep_unless_stopped(backoff.next_delay(), &mut shutdown).await {
                return;
            }
            match V::list(&shared).await {
                Ok((listed, listed_at)) => {
                    revision = listed_at;
                    view = listed;
                    view.publish(&shared);
                    break;
                }
                Err(e) => warn!(view = V::NAME, error = %e, "listing failed"),
            }
        }
    }
}

/// Watches the prefix from `start`, applying every event to `view` and
/// publishing each change, until the watch ends.
async fn watch_from<V: PrefixView>(
    shared: &Shared,
    start: i64,
    view: &mut V,
    backoff: &mut Backoff,
) -> Ended {
    let mut shutdown = shared.shutdown.clone();
    let mut client = shared.client.clone();
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    let opened = tokio::select! {
        _ = stopped(&mut shutdown) => return Ended::Shutdown,
        opened = shared.request(
            || format!("watch of {} from revision {start} failed", V::NAME),
            client.watch(V::PREFIX, Some(options)),
        ) => opened,
    };
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(e) => return Ended::Interrupted(e.to_string()),
    };
    loop {
        let message = tokio::select! {
            _ = stopped(&mut shutdown) => return Ended::Shutdown,
            message = stream.message() => message,
        };
        let response = match usable_watch_response(message, start) {
            Ok(response) => response,
            Err(reason) => return Ended::Interrupted(reason),
        };
        if response.created() {
            debug!(view = V::NAME, start_revision = start, "watch running");
            backoff.reset();
        }
        let mut changed = false;
        for event in response.events() {
            changed |= view.apply(event);
        }
        if changed {
            view.publish(shared);
        }
    }
}
