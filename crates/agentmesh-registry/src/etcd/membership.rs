//! The membership task: keeps the node's view of every registered agent
//! current with a list followed by a watch of [`keys::AGENTS`].

use std::sync::Arc;

use agentmesh_core::{AgentRegistration, Membership};
use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use tracing::{debug, warn};

use super::Shared;
use super::backoff::{Backoff, sleep_unless_stopped, stopped};
use super::usable_watch_response;
use crate::{RegistryError, keys};

/// Reads every registration; returns the view and the store revision it
/// was read at. Corrupt entries are logged and left out.
pub(super) async fn list_agents(shared: &Shared) -> Result<(Membership, i64), RegistryError> {
    let mut client = shared.client.clone();
    let response = shared
        .request(
            || "listing of registered agents failed".to_owned(),
            client.get(keys::AGENTS, Some(GetOptions::new().with_prefix())),
        )
        .await?;
    let mut view = Membership::default();
    for kv in response.kvs() {
        if let Some(agent) = registration_of(kv) {
            view.agents.insert(agent.id.clone(), agent);
        }
    }
    let revision = response.header().map_or(0, |h| h.revision());
    Ok((view, revision))
}

/// The registration stored in `kv`, or `None` (with a warning) when the key
/// or value is not a valid registration.
fn registration_of(kv: &KeyValue) -> Option<AgentRegistration> {
    let key = String::from_utf8_lossy(kv.key());
    let Some(id) = keys::agent_id_of(kv.key()) else {
        warn!(key = %key, "skipping entry with no agent id under the agents prefix");
        return None;
    };
    match serde_json::from_slice::<AgentRegistration>(kv.value()) {
        Ok(agent) if agent.id == id => Some(agent),
        Ok(agent) => {
            warn!(key = %key, agent_id = %agent.id, "skipping registration stored under another agent's key");
            None
        }
        Err(e) => {
            warn!(key = %key, error = %e, "skipping corrupt agent registration");
            None
        }
    }
}

/// Why one watch of the prefix ended.
enum Ended {
    Shutdown,
    Interrupted(String),
}

/// Follows the prefix from `revision` + 1 (the revision of the list that
/// produced the published view), re-listing after every interruption.
/// Runs until the registry shuts down.
pub(super) async fn follow(shared: Arc<Shared>, mut revision: i64) {
    let mut shutdown = shared.shutdown.clone();
    let mut backoff = Backoff::new();
    let mut view = (**shared.membership.borrow()).clone();
    loop {
        match watch_from(&shared, revision + 1, &mut view, &mut backoff).await {
            Ended::Shutdown => return,
            Ended::Interrupted(reason) => {
                warn!(error = %reason, "membership watch interrupted; listing agents again");
            }
        }
        loop {
            if !sleep_unless_stopped(backoff.next_delay(), &mut shutdown).await {
                return;
            }
            match list_agents(&shared).await {
                Ok((listed, listed_at)) => {
                    revision = listed_at;
                    view = listed;
                    publish(&shared, &view);
                    break;
                }
                Err(e) => warn!(error = %e, "membership listing failed"),
            }
        }
    }
}

/// Watches the prefix from `start`, applying every event to `view` and
/// publishing each change, until the watch ends.
async fn watch_from(
    shared: &Shared,
    start: i64,
    view: &mut Membership,
    backoff: &mut Backoff,
) -> Ended {
    let mut shutdown = shared.shutdown.clone();
    let mut client = shared.client.clone();
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    let opened = tokio::select! {
        _ = stopped(&mut shutdown) => return Ended::Shutdown,
        opened = shared.request(
            || format!("watch of registered agents from revision {start} failed"),
            client.watch(keys::AGENTS, Some(options)),
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
            debug!(start_revision = start, "membership watch running");
            backoff.reset();
        }
        let mut changed = false;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            changed |= match event.event_type() {
                EventType::Put => match registration_of(kv) {
                    Some(agent) => {
                        let previous = view.agents.insert(agent.id.clone(), agent.clone());
                        previous.as_ref() != Some(&agent)
                    }
                    // A corrupt value replaced whatever was there.
                    None => keys::agent_id_of(kv.key())
                        .is_some_and(|id| view.agents.remove(&id).is_some()),
                },
                EventType::Delete => {
                    keys::agent_id_of(kv.key()).is_some_and(|id| view.agents.remove(&id).is_some())
                }
            };
        }
        if changed {
            shared.membership.send_replace(Arc::new(view.clone()));
        }
    }
}

/// Publishes `view` if it differs from the published one.
fn publish(shared: &Shared, view: &Membership) {
    shared.membership.send_if_modified(|current| {
        if **current == *view {
            false
        } else {
            *current = Arc::new(view.clone());
            true
        }
    });
}
