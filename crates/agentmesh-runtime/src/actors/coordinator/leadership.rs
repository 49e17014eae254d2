//! The election loop of one coordinator: campaign, take over, lead until
//! the term ends, campaign again.
//!
//! ```text
//! campaign ──won──▶ load unfinished records ──▶ Lead ──▶ (leading)
//!    ▲                                                      │
//!    └──────────── Relinquish ◀── term lost (lease, etcd) ──┤
//!                                                           │
//!                   step_down(): Relinquish, wait for writes, resign
//! ```
//!
//! Whether this coordinator leads is published on [`LeadershipLoop::leading`]
//! only after `Lead` is in the actor's mailbox, so a request routed here
//! because of it is handled after the takeover, never before.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::AgentId;
use agentmesh_core::task::TaskRecord;
use agentmesh_registry::{Election, Leadership, Registry, RegistryError, TaskStore};
use ractor::ActorRef;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::CoordinatorMessage;

/// How long stepping down waits for the actor to write what it queued.
const STEP_DOWN_TIMEOUT: Duration = Duration::from_secs(15);
/// Pauses between attempts to read the unfinished tasks after winning.
const LOAD_RETRY_FIRST: Duration = Duration::from_millis(100);
const LOAD_RETRY_MAX: Duration = Duration::from_secs(2);

/// The running election loop of one coordinator.
pub struct LeadershipLoop {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LeadershipLoop {
    /// Starts campaigning for `id`, whose actor is `coordinator`.
    pub fn spawn(
        registry: Arc<dyn Registry>,
        id: AgentId,
        coordinator: ActorRef<CoordinatorMessage>,
    ) -> Self {
        let (leading_tx, leading) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(registry, id, coordinator, leading_tx, stopped));
        Self {
            leading,
            stop,
            task,
        }
    }

    /// `true` while this coordinator leads and has taken its tasks over.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Gives leadership up in order — stop owning tasks, let queued records
    /// land, then resign so a standby takes over at once instead of after
    /// a lease TTL — and stops campaigning.
    pub async fn step_down(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    registry: Arc<dyn Registry>,
    id: AgentId,
    coordinator: ActorRef<CoordinatorMessage>,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let leadership = tokio::select! {
            won = registry.campaign(&id) => match won {
                Ok(leadership) => leadership,
                Err(error) => {
                    info!(%error, "coordinator stops campaigning");
                    return;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let fence = leadership.fence.revision;
        info!(agent_id = %id, fence, "coordinator leadership won: loading unfinished tasks");
        let tasks = tokio::select! {
            tasks = load_unfinished(registry.as_ref(), &leadership) => tasks,
            _ = stopped(&mut stop) => {
                resign(registry.as_ref(), &leadership).await;
                return;
            }
        };
        let Some(tasks) = tasks else {
            continue;
        };
        let lead = CoordinatorMessage::Lead {
            leadership: leadership.clone(),
            tasks,
        };
        if coordinator.cast(lead).is_err() {
            resign(registry.as_ref(), &leadership).await;
            return;
        }
        leading.send_replace(true);
        tokio::select! {
            _ = leadership.lost() => {
                leading.send_replace(false);
                let _ = coordinator.cast(CoordinatorMessage::Relinquish { done: None });
            }
            _ = stopped(&mut stop) => {
                leading.send_replace(false);
                let stepped_down = coordinator
                    .call(|done| CoordinatorMessage::Relinquish { done: Some(done) }, Some(STEP_DOWN_TIMEOUT))
                    .await;
                if !matches!(stepped_down, Ok(ractor::rpc::CallResult::Success(()))) {
                    warn!("coordinator did not step down in time; resigning anyway");
                }
                resign(registry.as_ref(), &leadership).await;
                return;
            }
        }
    }
}

/// Every unfinished task, read again until it works; `None` when the term
/// ended first.
async fn load_unfinished(
    registry: &dyn TaskStore,
    leadership: &Leadership,
) -> Option<Vec<TaskRecord>> {
    let mut delay = LOAD_RETRY_FIRST;
    loop {
        let error = tokio::select! {
            loaded = registry.unfinished_tasks() => match loaded {
                Ok(tasks) => return Some(tasks),
                Err(error) => error,
            },
            _ = leadership.lost() => return None,
        };
        if matches!(error, RegistryError::Closed) || !leadership.is_held() {
            return None;
        }
        warn!(%error, "could not load unfinished tasks; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = leadership.lost() => return None,
        }
        delay = (delay * 2).min(LOAD_RETRY_MAX);
    }
}

/// Resolves once stepping down was asked for.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn resign(registry: &dyn Election, leadership: &Leadership) {
    match registry.resign(leadership).await {
        Ok(()) => info!(
            fence = leadership.fence.revision,
            "coordinator leadership resigned"
        ),
        Err(error) => {
            warn!(%error, "could not resign coordinator leadership; it ends with the lease")
        }
    }
}
