//! The node's supervisor: the parent of every agent actor of the node.
//!
//! ```text
//! NodeSupervisor
//!  ├─ Coordinator          (role coordinator; `local`: one)
//!  ├─ Worker               (role worker, peer, operational level; `local`: --workers of them)
//!  ├─ Peer                 (role peer, beside its Worker)
//!  ├─ Strategic            (strategic level)
//!  └─ Tactical             (tactical level)
//! ```
//!
//! Agents are spawned linked to it, so a panic in an agent is not lost in
//! a log line while the node goes on half-alive. The policy is deliberate:
//! an agent that fails stops the node. Everything an agent owns that
//! matters is durable (task records, reputation) or re-created by the
//! cluster (a lost worker's attempts run elsewhere, a lost leader's tasks
//! are resumed by the next one), so a clean process restart — by its
//! orchestrator — is safer than restarting one actor inside a process whose
//! other parts still hold references to the old one. Agents stopped on
//! purpose during shutdown are not failures.

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;
use tracing::error;

/// The supervisor takes no messages of its own.
#[derive(Debug)]
pub enum SupervisorMessage {}

#[derive(Debug, Default)]
pub struct NodeSupervisor;

pub struct SupervisorState {
    /// Set to the reason once an agent failed.
    failed: watch::Sender<Option<String>>,
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = watch::Sender<Option<String>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        failed: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState { failed })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(actor, reason) = event {
            let reason = format!("actor {} failed: {reason}", actor.get_id());
            error!(%reason, "an agent failed: stopping the node");
            state.failed.send_replace(Some(reason));
        }
        Ok(())
    }
}
