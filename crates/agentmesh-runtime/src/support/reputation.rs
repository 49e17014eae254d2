//! Reputation as the rest of the runtime reads it: one number per agent.

use std::collections::{BTreeMap, HashMap};

use agentmesh_core::AgentId;
use agentmesh_core::reputation::ReputationPolicy;
use agentmesh_registry::{RegistryError, ReputationStore};

use crate::support::clock::now_ms;

/// Each agent's mean reputation over its capabilities, decayed to now.
pub async fn mean_scores(
    registry: &dyn ReputationStore,
    policy: &ReputationPolicy,
) -> Result<HashMap<AgentId, f64>, RegistryError> {
    Ok(means(&scores(registry, policy).await?))
}

/// Every recorded reputation, by agent and capability, decayed to now.
pub async fn scores(
    registry: &dyn ReputationStore,
    policy: &ReputationPolicy,
) -> Result<BTreeMap<(String, String), f64>, RegistryError> {
    let now = now_ms();
    Ok(registry
        .reputations()
        .await?
        .into_iter()
        .map(|entry| {
            let score = entry.reputation.score_at(now, policy);
            ((entry.agent.to_string(), entry.capability), score)
        })
        .collect())
}

/// Each agent's mean over its capabilities' `scores`.
pub fn means(scores: &BTreeMap<(String, String), f64>) -> HashMap<AgentId, f64> {
    let mut sums: HashMap<&str, (f64, u32)> = HashMap::new();
    for ((agent, _), score) in scores {
        let sum = sums.entry(agent.as_str()).or_default();
        sum.0 += score;
        sum.1 += 1;
    }
    sums.into_iter()
        .map(|(agent, (total, n))| (AgentId::new(agent), total / f64::from(n)))
        .collect()
}
