//! The membership task: keeps the node's view of every registered agent
//! current with a list followed by a watch of [`keys::AGENTS`].

use std::future::Future;
use std::sync::Arc;

use agentmesh_core::{AgentRegistration, Membership};
use etcd_client::{Event, EventType, GetOptions, KeyValue};
use tracing::warn;

use super::Shared;
use super::prefix_watch::PrefixView;
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

impl PrefixView for Membership {
    const NAME: &'static str = "registered agents";
    const PREFIX: &'static str = keys::AGENTS;

    fn published(shared: &Shared) -> Self {
        (**shared.membership.borrow()).clone()
    }

    fn list(shared: &Shared) -> impl Future<Output = Result<(Self, i64), RegistryError>> + Send {
        list_agents(shared)
    }

    fn apply(&mut self, event: &Event) -> bool {
        let Some(kv) = event.kv() else {
            return false;
        };
        match event.event_type() {
            EventType::Put => match registration_of(kv) {
                Some(agent) => {
                    let previous = self.agents.insert(agent.id.clone(), agent.clone());
                    previous.as_ref() != Some(&agent)
                }
                // A corrupt value replaced whatever was there.
                None => {
                    keys::agent_id_of(kv.key()).is_some_and(|id| self.agents.remove(&id).is_some())
                }
            },
            EventType::Delete => {
                keys::agent_id_of(kv.key()).is_some_and(|id| self.agents.remove(&id).is_some())
            }
        }
    }

    fn publish(&self, shared: &Shared) {
        publish(shared, self);
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
