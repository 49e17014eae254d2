//! What an agent tells the cluster about itself when it registers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::hierarchy::Level;

use crate::ids::AgentId;

/// The part an agent plays in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Coordinator,
    Worker,
    Peer,
    Level,
    /// A worker dedicated to the reactive fast path: it runs the tools of
    /// `pattern: reactive` tasks, which are placed on reactive agents
    /// whenever one is live (on workers otherwise), so reactive requests
    /// are spread over their own pool and never wait behind long tasks.
    Reactive,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Coordinator,
        Role::Worker,
        Role::Peer,
        Role::Level,
        Role::Reactive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Worker => "worker",
            Role::Peer => "peer",
            Role::Level => "level",
            Role::Reactive => "reactive",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role '{s}' (expected coordinator, worker, peer, level or reactive)"
                )
            })
    }
}

/// One agent's registration, as stored in the registry under its node's lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRegistration {
    pub id: AgentId,
    pub role: Role,
    /// Hierarchy level of a level agent (stored as `strategic`,
    /// `tactical` or `operational`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `host:port` of the node's gRPC mailbox.
    pub endpoint: String,
    #[serde(default)]
    pub load: u32,
    #[serde(default)]
    pub max_concurrency: u32,
    pub version: String,
    /// The faults this agent injects on purpose (`wrong-result:1`), empty
    /// for an honest one. Registered so that `agents` shows a node that
    /// misbehaves by design rather than letting it look normal; absent in
    /// records written before it existed, which decode as honest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    /// Its node runs `--insecure`: no TLS, no authentication, so anyone who
    /// can reach it may speak to it. Registered so that `agents` shows it;
    /// absent (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// The event handlers the agent declared (`--event-handler`,
    /// docs/events.md), so the leader routes matching events to it and
    /// `agents` shows them; absent for an agent with none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_handlers: Vec<crate::events::HandlerSpec>,
}

impl AgentRegistration {
    pub fn offers(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// The set of live agents a node currently sees.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Membership {
    pub agents: BTreeMap<AgentId, AgentRegistration>,
}

impl Membership {
    pub fn get(&self, id: &AgentId) -> Option<&AgentRegistration> {
        self.agents.get(id)
    }

    /// Workers that offer `capability`.
    pub fn workers_offering<'a>(
        &'a self,
        capability: &'a str,
    ) -> impl Iterator<Item = &'a AgentRegistration> + 'a {
        self.offering(Role::Worker, capability)
    }

    /// Agents of `role` that offer `capability`.
    pub fn offering<'a>(
        &'a self,
        role: Role,
        capability: &'a str,
    ) -> impl Iterator<Item = &'a AgentRegistration> + 'a {
        self.agents
            .values()
            .filter(move |a| a.role == role && a.offers(capability))
    }

    /// Whether any live worker offers `capability`.
    pub fn offers(&self, capability: &str) -> bool {
        self.offers_as(Role::Worker, capability)
    }

    /// Whether any live agent of `role` offers `capability`.
    pub fn offers_as(&self, role: Role, capability: &str) -> bool {
        self.offering(role, capability).next().is_some()
    }

    /// Every capability offered by a live worker, sorted and deduplicated.
    pub fn capabilities(&self) -> Vec<String> {
        self.capabilities_of(Role::Worker)
    }

    /// Every capability offered by a live agent of `role`, sorted and
    /// deduplicated.
    pub fn capabilities_of(&self, role: Role) -> Vec<String> {
        let mut all: Vec<String> = self
            .agents
            .values()
            .filter(|a| a.role == role)
            .flat_map(|a| a.capabilities.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_without_faults_decode_as_honest_and_honest_ones_omit_them() {
        let old = r#"{"id":"w","role":"worker","endpoint":"h:1","version":"0.1"}"#;
        let agent: AgentRegistration = serde_json::from_str(old).unwrap();
        assert!(agent.faults.is_empty());
        assert!(!serde_json::to_string(&agent).unwrap().contains("faults"));
        let faulty = AgentRegistration {
            faults: vec!["wrong-result:1".into()],
            ..agent
        };
        let text = serde_json::to_string(&faulty).unwrap();
        assert!(text.contains(r#""faults":["wrong-result:1"]"#), "{text}");
        assert_eq!(
            serde_json::from_str::<AgentRegistration>(&text).unwrap(),
            faulty
        );
    }
}
