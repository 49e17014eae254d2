//! The leader's side of the coordination memory (docs/requests.md): a
//! natural-language request task that completed with a quality score at
//! or above its threshold leaves its (request, decomposition, quality)
//! triple in the registry, embedded by the node's embedding provider when
//! it has one, for [`crate::api::request::RequestPlanner`] to reuse. The
//! write runs off the actor; a failed write costs only a later reuse.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::request::memory::{MemoryEntry, worth_remembering};
use agentmesh_core::task::{Status, TaskRecord};
use agentmesh_registry::Registry;
use tracing::{debug, warn};

use crate::llm::Providers;
use crate::support::background::Background;

/// Time the embedding of one request may take before the triple is kept
/// without it (and matched lexically).
pub const EMBED_TIMEOUT: Duration = Duration::from_secs(10);

/// The triple `record` leaves, if it is a completed request whose last
/// score reached its threshold and whose decomposition was not itself
/// taken from the memory.
pub fn triple(record: &TaskRecord, now_ms: u64) -> Option<MemoryEntry> {
    let plan = record.request.as_deref()?;
    if record.status != Status::Completed || plan.reused.is_some() {
        return None;
    }
    let quality = *plan.scores.last()?;
    if !worth_remembering(quality, plan.threshold) {
        return None;
    }
    Some(MemoryEntry {
        task: record.id.clone(),
        request: plan.request.clone(),
        decomposition: plan.decomposition.clone(),
        quality,
        provider: plan.provider.clone(),
        created_ms: now_ms,
        embedding: None,
    })
}

/// Writes `record`'s triple, if it leaves one, keeping at most `max`.
pub fn remember(
    background: &Background,
    registry: &Arc<dyn Registry>,
    providers: &Providers,
    record: &TaskRecord,
    max: usize,
    now_ms: u64,
) {
    if max == 0 {
        return;
    }
    let Some(mut entry) = triple(record, now_ms) else {
        return;
    };
    let registry = registry.clone();
    let embed = providers.embed.clone();
    background.spawn("request memory write", async move {
        if let Some(embed) = embed {
            match tokio::time::timeout(EMBED_TIMEOUT, embed.embed(&[entry.request.clone()])).await {
                Ok(Ok(mut embeddings)) if embeddings.vectors.len() == 1 => {
                    entry.embedding = embeddings.vectors.pop();
                }
                Ok(Ok(_)) => warn!("the embedding provider answered no vector for a request"),
                Ok(Err(error)) => warn!(%error, "a request is remembered without its embedding"),
                Err(_) => warn!("a request is remembered without its embedding: timed out"),
            }
        }
        let task = entry.task.clone();
        match registry.remember_request(entry, max).await {
            Ok(evicted) => debug!(task_id = %task, evicted = evicted.len(), "request remembered"),
            Err(error) => warn!(task_id = %task, %error, "request not remembered"),
        }
    });
}
