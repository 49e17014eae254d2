//! Sending a subtask's result back to whoever assigned the attempt: the one
//! way workers, proposing peers and tactical levels report.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::AgentId;
use agentmesh_core::breaker::Blame;
use agentmesh_proto::v1::SubtaskResult;
use prost::Message;
use tracing::{Instrument, debug, warn};

use crate::convert;
use crate::telemetry;
use crate::transport::{self, DeliverError, Kind, Router};

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
    tokio::spawn(telemetry::in_current_span(async move {
        report(&router, &from, &coordinator, result).await
    }));
}

/// Sends a result to its coordinator, again with backoff while the
/// coordinator cannot be reached (restarting, partitioned): a result is the
/// only copy of the work, so it is not dropped at the first failure.
///
/// A result too large for an envelope is sent as a failed attempt naming
/// the limit and the size, blamed on the task: resending it could never
/// succeed, and a result that never arrives would hold the subtask until
/// the coordinator's attempt timeout, on every worker it is retried on.
pub async fn report(router: &Router, from: &AgentId, coordinator: &AgentId, result: SubtaskResult) {
    let span = crate::span!(
        "subtask.return",
        task.id = %result.task_id,
        subtask.id = %result.subtask_id,
        attempt = result.attempt,
        agent.id = %from,
    );
    send_result(router, from, coordinator, result)
        .instrument(span)
        .await
}

async fn send_result(
    router: &Router,
    from: &AgentId,
    coordinator: &AgentId,
    result: SubtaskResult,
) {
    let limit = router.config().max_envelope_bytes;
    let mut result = fit_envelope(result, limit);
    let mut delay = REPORT_FIRST_DELAY;
    for attempt in 1..=REPORT_ATTEMPTS {
        let envelope = transport::envelope(from, coordinator, Kind::SubtaskResult, result.clone());
        match router.send(envelope).await {
            Ok(()) => return,
            Err(DeliverError::TooLarge { size, limit }) => {
                // The receiving node's limit is lower than this one's.
                result = too_large(result, size, limit);
            }
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

/// `result`, or a failure in its place when it does not fit an envelope
/// of `limit` bytes.
fn fit_envelope(result: SubtaskResult, limit: usize) -> SubtaskResult {
    let size = result.encoded_len();
    if size <= limit {
        return result;
    }
    too_large(result, size, limit)
}

fn too_large(result: SubtaskResult, size: usize, limit: usize) -> SubtaskResult {
    warn!(task_id = %result.task_id, subtask = %result.subtask_id, size, limit,
          "subtask result too large for an envelope: reporting a failure instead");
    let error = format!(
        "result of {size} bytes is over the envelope limit of {limit} bytes (--max-envelope-bytes)"
    );
    convert::into_failure(result, error, Blame::Task)
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::v1::subtask_result::Outcome;

    use super::*;

    #[test]
    fn a_result_over_the_envelope_becomes_a_failure_naming_the_limit() {
        let result = SubtaskResult {
            task_id: "t1".into(),
            outcome: Some(Outcome::OutputJson("x".repeat(1000))),
            ..SubtaskResult::default()
        };
        let kept = fit_envelope(result.clone(), 2000);
        assert_eq!(kept, result);
        let failed = fit_envelope(result, 500);
        let Some(Outcome::Error(error)) = &failed.outcome else {
            panic!("{failed:?}");
        };
        assert!(
            error.starts_with("result of 1") && error.contains("envelope limit of 500 bytes"),
            "{error}"
        );
        assert_eq!(convert::blame(&failed), Some(Blame::Task));
        assert!(failed.encoded_len() <= 500);
    }
}
