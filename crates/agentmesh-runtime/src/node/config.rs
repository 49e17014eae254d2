//! The node's configuration: one typed struct, validated before any port is
//! bound. The binary fills it from flags and `AGENTMESH_*` variables.

use crate::transport::channel::Security;
use std::net::SocketAddr;
use std::time::Duration;

use agentmesh_core::Role;
use agentmesh_core::auction::BidWeights;
use agentmesh_core::breaker::BreakerPolicy;
use agentmesh_core::consensus::ConsensusPolicy;
use agentmesh_core::fairness::ClientLimits;
use agentmesh_core::hierarchy::{Level, StrategicPolicy, TacticalPolicy};
use agentmesh_core::reputation::ReputationPolicy;
use agentmesh_core::retry::RetryPolicy;
use agentmesh_core::scheduling::ScoreWeights;
use agentmesh_core::task::record::{STRATEGIC_PLAN, TACTICAL_OBJECTIVE};
use agentmesh_core::task::{RecordLimits, TaskLimits};
use agentmesh_llm::OpenAiConfig;
use thiserror::Error;

use crate::actors::faults::Faults;
use crate::api::auth::TokenStore;
use crate::tools::{AllowedHost, DEFAULT_MAX_OUTPUT_BYTES, ToolBox};

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub role: Role,
    /// Hierarchy level of a `level` node.
    pub level: Option<Level>,
    /// Agent id; generated from the role when absent.
    pub id: Option<String>,
    /// Address the gRPC server binds.
    pub listen: SocketAddr,
    /// Address other nodes use to reach this one; the bound address when
    /// absent.
    pub advertise: Option<String>,
    /// Capabilities a worker offers; every available tool when empty.
    pub capabilities: Vec<String>,
    /// Subtasks a worker runs at once.
    pub max_concurrency: u32,
    /// Hosts and ports the `http.get` tool may fetch from; the tool is off
    /// when empty.
    pub http_allow: Vec<AllowedHost>,
    /// Whether `http.get` may fetch a name that resolves to a loopback,
    /// private, link-local or other non-public address. Off by default: an
    /// allowed name can be pointed inward by whoever controls its DNS.
    pub http_allow_private: bool,
    /// Largest tool output a worker reports, as JSON (`--max-output-bytes`).
    /// Checked while the output is serialized, and below the envelope
    /// limit, so an output too large to report fails its attempt at once,
    /// with the reason, instead of never reaching the coordinator.
    pub max_output_bytes: usize,
    pub coordinator: CoordinatorConfig,
    pub mailbox: MailboxConfig,
    pub connections: ConnectionConfig,
    pub peer: PeerConfig,
    /// How hard hierarchy levels try before escalating or giving up.
    pub tactical: TacticalPolicy,
    pub strategic: StrategicPolicy,
    /// Time the node waits for in-flight work when asked to stop.
    pub drain_timeout: Duration,
    /// Misbehaviour a worker or peer injects on purpose; for tests and
    /// demonstrations only, none by default.
    pub faults: Faults,
    /// Event handlers this node's agent declares (`--event-handler`);
    /// registered with the agent so the leader routes matching events
    /// here. None by default.
    pub event_handlers: Vec<agentmesh_core::events::HandlerSpec>,
    /// Client tokens, when the client API requires them (`--token-file`):
    /// `TaskService` and `ClusterService` then refuse calls without a
    /// valid bearer token, and each task is owned by its submitter. `None`
    /// (the default, and always in `agentmesh local`) leaves them open.
    pub tokens: Option<TokenStore>,
    /// Where to serve Prometheus metrics (`GET /metrics`,
    /// `--metrics-listen`); off when `None`, the default. Unauthenticated
    /// and counters only: bind it to loopback or a pod-internal address.
    pub metrics_listen: Option<SocketAddr>,
    /// The OpenAI-compatible model this node asks (`--llm-base-url` and
    /// the other `--llm-*` flags); `None`, the default, leaves the node to
    /// its deterministic built-in rules.
    pub llm: Option<OpenAiConfig>,
}

/// Knobs of the coordinator role.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub limits: TaskLimits,
    pub weights: ScoreWeights,
    /// Subtasks waiting for a free worker, over all tasks; a submit that
    /// would exceed it is refused with `RESOURCE_EXHAUSTED`.
    pub max_queued_subtasks: usize,
    /// Tasks not yet finished.
    pub max_active_tasks: usize,
    /// What one client may hold of the two limits above, so one client's
    /// backlog cannot lock the others out; submits over it are refused
    /// with `RESOURCE_EXHAUSTED` naming the limit. Ready subtasks are then
    /// placed round-robin between clients.
    pub client_limits: ClientLimits,
    /// Attempts of one subtask before the task fails (a new attempt starts
    /// when a worker is lost, unreachable, silent or hands it back), and the
    /// backoff between them.
    pub retry: RetryPolicy,
    /// When a worker is taken out of placement after failures in a row,
    /// and for how long.
    pub breaker: BreakerPolicy,
    /// Byte budgets of a task record and of each subtask's output in it:
    /// a record must fit in one etcd request.
    pub records: RecordLimits,
    /// Record updates persisted in one registry transaction.
    pub write_batch: usize,
    /// Bytes of records persisted in one registry transaction; under
    /// etcd's `--max-request-bytes` (1.5 MiB by default), which refuses
    /// the whole transaction otherwise. A record larger than this is
    /// written alone.
    pub write_batch_bytes: usize,
    /// Bytes of ended tasks' final records (as stored) the coordinator
    /// keeps in memory to answer Status and Watch without an etcd read;
    /// the oldest are dropped first and then read from etcd. Bounds the
    /// cache by size, not only by its 4,096 records.
    pub ended_cache_bytes: usize,
    /// Record transactions in flight at once (a task is never in two).
    pub write_concurrency: usize,
    /// How long an attempt of a subtask without its own `timeout_ms` may
    /// go without a result before it is started again elsewhere (a hung
    /// or partitioned worker). Subtasks with `timeout_ms` get that plus
    /// [`ATTEMPT_GRACE`].
    pub attempt_timeout: Duration,
    /// Takeovers by a new leader a task may go through without a subtask
    /// completing before it is failed. A task that takes its coordinator
    /// down would otherwise be resumed by every new leader and take each
    /// one down in turn; an honest task makes progress between takeovers.
    pub max_task_resumes: u32,
    /// Task documents parsed and validated at once, on blocking threads
    /// off the async runtime: an expensive parse must not hold a runtime
    /// worker, where it would delay lease keep-alives and every other
    /// call, and a burst of them must not take every blocking thread.
    pub parse_concurrency: usize,
    /// Natural-language requests: the quality threshold, refinement
    /// rounds, decomposition size and coordination memory (see
    /// `docs/requests.md`).
    pub requests: agentmesh_core::request::RequestOptions,
    /// How long an ended task's record stays in etcd (and answers Status
    /// and Watch) after it ended. Records are never rewritten once ended,
    /// but they stay until deleted, and etcd's database is bounded: without
    /// a window a busy cluster fills it and etcd refuses every write.
    pub task_retention: Duration,
    /// Ended task records kept at most, whatever their age; the oldest are
    /// deleted first beyond it. Bounds etcd's share of task records under
    /// bursts the time window alone would let through: at most this many
    /// times the record budget.
    pub max_ended_tasks: usize,
    /// Bounds on events and the leader's event router (docs/events.md).
    pub events: EventsConfig,
    /// Bounds of the leader's response cache for reactive requests
    /// (entries, bytes, TTL): a repeat is answered from it without any
    /// work, and the bounds keep a stream of distinct requests from
    /// growing it without end.
    pub response_cache: agentmesh_core::reactive::CachePolicy,
    /// The routing table reactive requests are routed with at submit
    /// (`--routing-table`; the built-in table by default).
    pub routing_table: std::sync::Arc<agentmesh_core::reactive::RoutingTable>,
}

/// Knobs of event routing on the leader coordinator (docs/events.md).
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// One event's payload bound (`--max-event-bytes`).
    pub limits: agentmesh_core::events::EventLimits,
    /// Queue bounds, ack timeout and retry policy of deliveries
    /// (`--max-pending-events`, `--max-events-per-key`,
    /// `--event-ack-timeout`, `--event-max-attempts`).
    pub router: agentmesh_core::events::RouterLimits,
    /// Dead letters kept at most; the oldest are deleted past it
    /// (`--max-dead-letters`).
    pub max_dead_letters: usize,
}

/// Default of [`EventsConfig::max_dead_letters`]: 10,000 dead letters of a
/// 64 KiB payload at most are about 650 MB, a third of etcd's default
/// 2 GiB quota, and far more than an operator reads.
pub const DEFAULT_MAX_DEAD_LETTERS: usize = 10_000;

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            limits: Default::default(),
            router: Default::default(),
            max_dead_letters: DEFAULT_MAX_DEAD_LETTERS,
        }
    }
}

/// Time for a result to travel back after a worker's own timeout fired.
pub const ATTEMPT_GRACE: Duration = Duration::from_secs(2);

/// Default of [`CoordinatorConfig::task_retention`]: a day, long enough to
/// read a result the next morning.
pub const DEFAULT_TASK_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Default of [`CoordinatorConfig::max_ended_tasks`]: 10,000 records of
/// 100 KB are 1 GB, half of etcd's default 2 GiB quota.
pub const DEFAULT_MAX_ENDED_TASKS: usize = 10_000;

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            limits: TaskLimits::default(),
            weights: ScoreWeights::default(),
            max_queued_subtasks: 10_000,
            max_active_tasks: 10_000,
            client_limits: ClientLimits::default(),
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy::default(),
            records: RecordLimits::default(),
            write_batch: 64,
            write_batch_bytes: 1280 * 1024,
            write_concurrency: 1,
            ended_cache_bytes: 32 * 1024 * 1024,
            attempt_timeout: Duration::from_secs(600),
            max_task_resumes: 3,
            parse_concurrency: crate::api::task::DEFAULT_PARSE_CONCURRENCY,
            requests: agentmesh_core::request::RequestOptions::default(),
            task_retention: DEFAULT_TASK_RETENTION,
            max_ended_tasks: DEFAULT_MAX_ENDED_TASKS,
            events: EventsConfig::default(),
            response_cache: Default::default(),
            routing_table: Default::default(),
        }
    }
}

/// Knobs of the peer role: how long a collaboration round waits for bids
/// and results, how bids are scored, how results are agreed on and how
/// reputation moves.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Bids arriving later than this after a proposal are not considered;
    /// with too few bids by then the subtask runs solo.
    pub bid_window: Duration,
    /// How long seated peers have to answer a subtask without its own
    /// `timeout_ms`.
    pub execution_timeout: Duration,
    pub bid_weights: BidWeights,
    /// Outcomes a peer needs on record for a capability before it competes
    /// on reputation alone; until then it gets one seat per round ahead of
    /// proven peers, so every newcomer is tried and a wrong one found out.
    pub probation: u64,
    /// Quorum, tolerance and minimum agreement (the algorithm comes from
    /// the task).
    pub consensus: ConsensusPolicy,
    pub reputation: ReputationPolicy,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            bid_window: Duration::from_millis(500),
            execution_timeout: Duration::from_secs(30),
            bid_weights: BidWeights::default(),
            probation: 3,
            consensus: ConsensusPolicy::default(),
            reputation: ReputationPolicy::default(),
        }
    }
}

/// Knobs of the node's mailbox.
#[derive(Debug, Clone)]
pub struct MailboxConfig {
    /// Largest envelope payload accepted or sent.
    pub max_envelope_bytes: usize,
    /// Time allowed for one remote delivery.
    pub deliver_timeout: Duration,
    /// Envelopes sent to one node and not yet acknowledged; a sender waits
    /// for room beyond this, which bounds memory when a peer is slow.
    pub max_in_flight_per_node: usize,
    /// Messages one agent may have waiting in its mailbox; beyond it,
    /// deliveries are refused with `RESOURCE_EXHAUSTED`.
    pub max_backlog_per_agent: usize,
    /// How the node's connections are protected, both ways: the links and
    /// forwarding it dials, and the server it listens on (mutual TLS with
    /// `--tls-*`, plaintext with `--insecure` and in `agentmesh local`).
    pub security: Security,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        Self {
            max_envelope_bytes: 4 * 1024 * 1024,
            deliver_timeout: Duration::from_secs(5),
            max_in_flight_per_node: 4096,
            max_backlog_per_agent: 10_000,
            security: Security::Plaintext,
        }
    }
}

/// Knobs of the node's gRPC server: how many connections and Watch streams
/// it holds, and when it closes connections that are idle or dead. Every
/// accepted connection costs a file descriptor and memory whether or not it
/// is used, so without these a client (or a crowd of forgotten ones) could
/// hold the node at its file-descriptor limit.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Open client connections; a connection over it is accepted, its
    /// requests answered `RESOURCE_EXHAUSTED` naming the limit, and closed
    /// within a second. Keep it below
    /// the process's file-descriptor limit (`ulimit -n`), less what etcd
    /// and the other nodes' links use.
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed; a
    /// client reconnects when it next needs to (gRPC's MAX_CONNECTION_IDLE).
    pub idle_timeout: Duration,
    /// Interval of the HTTP/2 PINGs the server sends on every connection,
    /// so a peer that vanished (host down, frozen, cable pulled) is found
    /// out even while its streams are open.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Watch streams open at once on this node; each may hold an etcd
    /// watcher, so a Watch over it is refused with `RESOURCE_EXHAUSTED`.
    pub max_watch_streams: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_watch_streams: 1024,
        }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("--max-concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("--level is required with --role level (strategic, tactical or operational)")]
    MissingLevel,
    #[error("unknown capability '{capability}' (this node's tools: {available})")]
    UnknownCapability {
        capability: String,
        available: String,
    },
    #[error("invalid score weights: {0}")]
    Weights(String),
    #[error("invalid policy: {0}")]
    Policy(String),
    #[error("{0} must be greater than 0")]
    Zero(&'static str),
    #[error(
        "--max-output-bytes {output} leaves no room in an envelope of --max-envelope-bytes {envelope} (at most {max})"
    )]
    OutputOverEnvelope {
        output: usize,
        envelope: usize,
        max: usize,
    },
}

/// Room a subtask result needs beside its output (ids, the worker's id,
/// timings): the output cap must leave this much of an envelope free.
pub const RESULT_HEADROOM: usize = 16 * 1024;

impl NodeConfig {
    /// A worker or coordinator listening on `listen` with default knobs.
    pub fn new(role: Role, listen: SocketAddr) -> Self {
        Self {
            role,
            level: None,
            id: None,
            listen,
            advertise: None,
            capabilities: Vec::new(),
            max_concurrency: 4,
            http_allow: Vec::new(),
            http_allow_private: false,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            coordinator: CoordinatorConfig::default(),
            mailbox: MailboxConfig::default(),
            connections: ConnectionConfig::default(),
            peer: PeerConfig::default(),
            tactical: TacticalPolicy::default(),
            strategic: StrategicPolicy::default(),
            drain_timeout: Duration::from_secs(10),
            faults: Faults::default(),
            llm: None,
            event_handlers: Vec::new(),
            tokens: None,
            metrics_listen: None,
        }
    }

    /// Checks every value and resolves the worker's capabilities against the
    /// tools the node has.
    pub fn validate(&mut self, tools: &ToolBox) -> Result<(), ConfigError> {
        if self.max_concurrency == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        if self.role == Role::Level && self.level.is_none() {
            return Err(ConfigError::MissingLevel);
        }
        if let Some(level) = self.coordinating_level() {
            // Strategic and tactical agents coordinate; they run no tools.
            let offer = if level == Level::Strategic {
                STRATEGIC_PLAN
            } else {
                TACTICAL_OBJECTIVE
            };
            self.capabilities = vec![offer.to_owned()];
            return self.validate_policies();
        }
        if let Some(unknown) = self.capabilities.iter().find(|c| !tools.has(c)) {
            return Err(ConfigError::UnknownCapability {
                capability: unknown.clone(),
                available: tools.names().join(", "),
            });
        }
        if self.capabilities.is_empty() {
            self.capabilities = tools.names();
        }
        self.validate_policies()
    }

    /// The level of a strategic or tactical agent, which coordinates the
    /// level below and runs no tools; `None` for every other node.
    pub fn coordinating_level(&self) -> Option<Level> {
        match (self.role, self.level) {
            (Role::Level, Some(level @ (Level::Strategic | Level::Tactical))) => Some(level),
            _ => None,
        }
    }

    fn validate_policies(&self) -> Result<(), ConfigError> {
        self.coordinator
            .weights
            .validate()
            .map_err(ConfigError::Weights)?;
        let p = &self.peer;
        p.bid_weights.validate().map_err(ConfigError::Policy)?;
        p.consensus.validate().map_err(ConfigError::Policy)?;
        p.reputation.validate().map_err(ConfigError::Policy)?;
        let c = &self.coordinator;
        c.retry.validate().map_err(ConfigError::Policy)?;
        c.breaker.validate().map_err(ConfigError::Policy)?;
        c.records.validate().map_err(ConfigError::Policy)?;
        for (value, name) in [
            (c.max_queued_subtasks, "max queued subtasks"),
            (c.max_active_tasks, "max active tasks"),
            (
                c.client_limits.max_queued_subtasks,
                "max queued subtasks per client",
            ),
            (
                c.client_limits.max_active_tasks,
                "max active tasks per client",
            ),
            (c.write_batch, "write batch"),
            (c.write_batch_bytes, "write batch bytes"),
            (c.write_concurrency, "write concurrency"),
            (c.parse_concurrency, "parse concurrency"),
            (c.max_ended_tasks, "--max-ended-tasks"),
            (self.mailbox.max_envelope_bytes, "max envelope bytes"),
            (self.connections.max_connections, "max connections"),
            (self.connections.max_watch_streams, "max watch streams"),
            (self.max_output_bytes, "max output bytes"),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        let k = &self.connections;
        for (value, name) in [
            (k.idle_timeout, "idle timeout"),
            (k.keepalive_interval, "keep-alive interval"),
            (k.keepalive_timeout, "keep-alive timeout"),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        let envelope = self.mailbox.max_envelope_bytes;
        let max = envelope.saturating_sub(RESULT_HEADROOM);
        if self.max_output_bytes > max {
            return Err(ConfigError::OutputOverEnvelope {
                output: self.max_output_bytes,
                envelope,
                max,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig::new(Role::Worker, "127.0.0.1:0".parse().unwrap())
    }

    #[test]
    fn empty_capabilities_mean_every_tool() {
        let mut c = config();
        c.validate(&ToolBox::builtin(&[])).unwrap();
        assert!(c.capabilities.contains(&"math.eval".to_owned()));
        assert!(!c.capabilities.contains(&"http.get".to_owned()));
    }

    #[test]
    fn unknown_capability_names_the_tools() {
        let mut c = config();
        c.capabilities = vec!["math.evil".into()];
        let err = c.validate(&ToolBox::builtin(&[])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown capability 'math.evil' (this node's tools: ")
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = config();
        c.max_concurrency = 0;
        assert_eq!(
            c.validate(&ToolBox::builtin(&[])),
            Err(ConfigError::ZeroConcurrency)
        );
        let mut c = config();
        c.role = Role::Level;
        assert_eq!(
            c.validate(&ToolBox::builtin(&[])),
            Err(ConfigError::MissingLevel)
        );
        let mut c = config();
        c.max_output_bytes = c.mailbox.max_envelope_bytes;
        assert_eq!(
            c.validate(&ToolBox::builtin(&[])),
            Err(ConfigError::OutputOverEnvelope {
                output: 4 * 1024 * 1024,
                envelope: 4 * 1024 * 1024,
                max: 4 * 1024 * 1024 - RESULT_HEADROOM,
            })
        );
        let mut c = config();
        c.coordinator.retry.max_attempts = 0;
        assert!(matches!(
            c.validate(&ToolBox::builtin(&[])),
            Err(ConfigError::Policy(_))
        ));
    }
}
