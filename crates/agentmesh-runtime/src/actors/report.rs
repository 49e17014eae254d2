//! Sending a subtask's result back to whoever assigned the attempt: the one
//! way workers, proposing peers and tactical levels report.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::AgentId;
use agentmesh_proto::v1::SubtaskResult;
use tracing::{debug, warn};

use crate::transport::{self, Kind, Router};

/// Sends of one result before the worker gives up on it.
const REPORT_ATTEMPTS: u32 = 8;
/// First pause between sends of a result; doubles up to [`REPORT_MAX_DELAY`].
const REPORT_FIRST_DELAY: Duration = Duration::from_millis(100);
const REPORT_MAX_DELAY: Duration = Duration::from_secs(5);

/// [`report`] in the background: for actors that must not wait for it.
pub fn report_later(
    router: &Arc<Router>,
    from: &AgentId,
    coordinator: &AgentId,
    result: SubtaskResult,
) {
    let (router, from, coordinator) = (router.clone(), from.clone(), coordinator.clone());
    tokio::spawn(async move { report(&router, &from, &coordinator, result).await });
}

/// Sends a result to its coordinator, again with backoff while the
/// coordinator cannot be reached (restarting, partitioned): a result is the
/// only copy of the work, so it is not dropped at the first failure.
pub async fn report(router: &Router, from: &AgentId, coordinator: &AgentId, result: SubtaskResult) {
    let mut delay = REPORT_FIRST_DELAY;
    for attempt in 1..=REPORT_ATTEMPTS {
        let envelope = transport::envelope(from, coordinator, Kind::SubtaskResult, result.clone());
        match router.send(envelope).await {
            Ok(()) => return,
            Err(error) if attempt == REPORT_ATTEMPTS => {
                // The coordinator re-dispatches the attempt when its own
                // deadline or this worker's departure tells it to.
                warn!(%error, coordinator = %coordinator, task_id = %result.task_id,
                      subtask = %result.subtask_id, "giving up on reporting a subtask result");
            }
            Err(error) => {
                debug!(%error, attempt, "result not delivered, sending again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(REPORT_MAX_DELAY);
            }
        }
    }
}
