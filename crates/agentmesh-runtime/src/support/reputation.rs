//! Reputation as the rest of the runtime reads it: one number per agent.

use std::collections::HashMap;

use agentmesh_core::AgentId;
use agentmesh_core::reputation::ReputationPolicy;
use agentmesh_registry::{RegistryError, ReputationStore};

use crate::support::clock::now_ms;

/// Each agent's mean reputation over its capabilities, decayed to now.
pub async fn mean_scores(
    registry: &dyn ReputationStore,
    policy: &ReputationPolicy,
) -> Result<HashMap<AgentId, f64>, RegistryError> {
    let now = now_ms();
    let mut sums: HashMap<AgentId, (f64, u32)> = HashMap::new();
    for entry in registry.reputations().await? {
        let sum = sums.entry(entry.agent).or_default();
        sum.0 += entry.reputation.score_at(now, policy);
        sum.1 += 1;
    }
    Ok(sums
        .into_iter()
        .map(|(agent, (total, n))| (agent, total / f64::from(n)))
        .collect())
}
