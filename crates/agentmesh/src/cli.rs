//! Command-line flags, their `AGENTMESH_*` variables, and their mapping
//! onto the runtime's one configuration struct.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::access::ClientRole;
use agentmesh_core::fairness::ClientLimits;
use agentmesh_core::hierarchy::Level;
use agentmesh_core::reactive::{CachePolicy, ReactiveLimits, RoutingTable};
use agentmesh_core::scheduling::ScoreWeights;
use agentmesh_core::task::listing::IdempotencyKey;
use agentmesh_core::{AgentId, ClientId, Role};
use agentmesh_llm::{ApiKey, Backend, OpenAiConfig};
use agentmesh_registry::etcd::rbac::NodeUser;
use agentmesh_registry::{EtcdCredentials, EtcdOptions, EtcdTls, Password};
use agentmesh_runtime::NodeConfig;
use agentmesh_runtime::actors::faults::{Fault, Faults};
use agentmesh_runtime::tools::{AllowedHost, AllowedHostError};
use agentmesh_runtime::transport::channel::{ClientTls, Security};
use agentmesh_runtime::transport::tls::{self, NodeTls, TlsFiles};
use anyhow::{Context, bail};
use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench::Shape;

/// `--help` of `--metrics-listen`, shared by `node` and `local`.
const METRICS_LISTEN_HELP: &str = "Serves Prometheus metrics (GET /metrics, OpenMetrics or the \
    Prometheus text format) on this address, e.g. 127.0.0.1:9464 or localhost:9464 (a host \
    name is resolved at start and its first address bound); off by default.\n\nThe \
    endpoint is plain HTTP without authentication and shows counters only (refused envelopes \
    and client calls, by reason): bind it to loopback or a pod-internal address, never to one \
    the internet reaches. The bound address is logged at INFO.";

/// `--help` of `--http-allow`, shared by `node` and `local`.
const HTTP_ALLOW_HELP: &str = "Hosts the http.get tool may fetch from, comma-separated; the tool is \
    off when empty.\n\nEach entry opens one scheme, host and port: `https://example.com` allows \
    https on port 443 only, `http://example.com:8080` http on 8080 only. Without a scheme, \
    `example.com` allows http on 80 and https on 443, `example.com:8080` port 8080 over http or \
    https. A URL whose scheme is not its entry's is refused, naming the entry. Names that \
    resolve to loopback, private, link-local or other non-public addresses are refused (see \
    --http-allow-private); an entry that is an IP address allows that address. Redirects are \
    followed up to 5 times, each target checked like the first URL. URLs with user info, \
    whitespace or control characters are refused; a body over 1 MiB or a call over 10 s fails.";

/// `--help` of `--http-allow-private`, shared by `node` and `local`.
const HTTP_ALLOW_PRIVATE_HELP: &str = "Lets http.get fetch names that resolve to loopback, \
    private (RFC 1918), link-local, unique-local or other non-public addresses.\n\nOff by \
    default: whoever controls an allowed name's DNS could point it at 127.0.0.1, a cloud \
    metadata service on 169.254.169.254 or the internal network. The check is made on the \
    addresses actually connected to, after resolution. To reach one private service, prefer \
    an --http-allow entry naming its IP address.";

/// One `--http-allow` value; an empty one (a trailing comma, a variable set
/// to nothing) names no host, as before the entries were typed.
fn allow_entry(entry: &str) -> Result<Option<AllowedHost>, AllowedHostError> {
    match entry.trim() {
        "" => Ok(None),
        entry => entry.parse().map(Some),
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "agentmesh",
    version,
    about = "A distributed, actor-based multi-agent cluster",
    long_about = "agentmesh runs agents as actors with gRPC mailboxes. Coordinators and workers find each \
                  other through etcd, tasks are submitted over gRPC, and `agentmesh local` runs the same \
                  actors in one process with no etcd.\n\nExit codes: 0 success, 1 the task failed or was \
                  cancelled, 2 the request or the input was refused."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub observe: ObserveArgs,
    /// Config file (TOML, or YAML for .yaml/.yml): keys are the command's
    /// long flags without `--` (`max-concurrency = 8`, `etcd =
    /// ["http://a:2379"]`, `insecure = true`). Flags and AGENTMESH_*
    /// variables override it; a key the command has no flag for, or a
    /// value of the wrong type, is refused naming the key and the file.
    /// None by default.
    #[arg(long, global = true, env = CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The variable naming a config file, like `--config`.
pub const CONFIG_ENV: &str = "AGENTMESH_CONFIG";

/// The variable naming the coordinators every client command talks to
/// (`--endpoint`), `bench` included.
pub const ENDPOINT_ENV: &str = "AGENTMESH_ENDPOINT";

/// How a command logs and traces; every command takes these.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// Log line format on stderr: `text` for people (coloured only when
    /// stderr is a terminal and NO_COLOR is unset), `json` for log
    /// pipelines (one object per line with timestamp, level, target,
    /// message, fields, and trace_id/span_id while tracing).
    #[arg(long, global = true, env = "AGENTMESH_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Text)]
    pub log_format: LogFormatArg,
    /// OTLP/gRPC collector to send traces to, e.g. http://127.0.0.1:4317;
    /// tracing is off (and costs nothing) without one. OTEL_SDK_DISABLED=true
    /// turns it off whatever this says.
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of this process's spans [default: agentmesh for
    /// nodes, local and bench; agentmesh-cli for client commands].
    #[arg(long, global = true, env = "OTEL_SERVICE_NAME", value_name = "NAME")]
    pub otel_service_name: Option<String>,
    /// OpenTelemetry's own off switch (`true` turns tracing off), read as
    /// the OpenTelemetry SDKs read it.
    #[arg(long, global = true, env = "OTEL_SDK_DISABLED", value_parser = BoolishValueParser::new(), default_value_t = false, hide = true)]
    pub otel_sdk_disabled: bool,
    /// W3C `traceparent` of a trace this command continues (e.g. from a
    /// CI job or a script's own span): the nodes' spans for this request
    /// join that trace, whether or not this process exports spans.
    #[arg(long, global = true, env = "TRACEPARENT", value_name = "TRACEPARENT")]
    pub traceparent: Option<String>,
    /// Prints the trace id of this command's requests on stderr (with
    /// tracing on, or a --traceparent).
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for agentmesh_runtime::telemetry::LogFormat {
    fn from(format: LogFormatArg) -> Self {
        match format {
            LogFormatArg::Text => Self::Text,
            LogFormatArg::Json => Self::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a coordinator and workers in this process (no etcd) and prints
    /// the task's result as JSON.
    Local(LocalArgs),
    /// Runs one cluster node (coordinator, worker, peer or hierarchy level)
    /// against etcd until SIGTERM or Ctrl-C.
    Node(Box<NodeArgs>),
    /// Submits a task file; prints the task id, or with --wait the final
    /// record as JSON.
    Submit(SubmitArgs),
    /// Follows or stops a submitted task.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// Lists the cluster's agents with role, capabilities and load.
    Agents(AgentsArgs),
    /// Publishes events and lists the deliveries that ran out of attempts
    /// (docs/events.md).
    Event {
        #[command(subcommand)]
        command: EventCommand,
    },
    /// Prepares an etcd for a cluster: creates etcd's root user, the roles
    /// nodes need and one etcd user per node (`--node`), then turns etcd's
    /// authentication on. Safe to run again, e.g. to add a node.
    EtcdSetup(EtcdSetupArgs),
    /// Load generator: keeps --concurrency tasks of one shape in flight
    /// until --tasks have finished, then prints a JSON report (throughput,
    /// latency percentiles from submit to final result, errors). Runs
    /// against --endpoint, or against an embedded cluster when none is given.
    Bench(BenchArgs),
    /// Makes a development CA (once per directory) and a node certificate
    /// signed by it, for mutual TLS on one machine or in tests; prints the
    /// flags to start nodes and clients with. Production clusters bring
    /// their own CA: see docs/security.md.
    Certs(CertsArgs),
    /// Makes client tokens for a node's --token-file.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Prints a shell completion script on stdout, e.g.
    /// `agentmesh completion bash > /etc/bash_completion.d/agentmesh`, or
    /// `source <(agentmesh completion bash)` in ~/.bashrc;
    /// `agentmesh completion zsh > "${fpath[1]}/_agentmesh"`;
    /// `agentmesh completion fish > ~/.config/fish/completions/agentmesh.fish`.
    Completion {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory for ca.pem, ca-key.pem, NAME.pem and NAME-key.pem; an
    /// existing CA there is reused.
    #[arg(default_value = "certs")]
    pub dir: PathBuf,
    /// Name of the node certificate's files.
    #[arg(long, default_value = "node")]
    pub name: String,
    /// Agent ids the certificate may speak for (repeat or comma-separate);
    /// a trailing `*` names every id with that prefix. The default, `*`,
    /// speaks for every agent: fine for a development cluster, not for one
    /// whose nodes do not trust each other.
    #[arg(long = "agent", value_delimiter = ',', default_value = "*")]
    pub agents: Vec<String>,
    /// Host names and IP addresses clients dial (checked by the CLI).
    #[arg(
        long = "host",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub hosts: Vec<String>,
    /// Days the node certificate is valid.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Makes a random token. Prints two lines on stdout: the token, shown
    /// this once (give it to the client, as AGENTMESH_TOKEN or in the file
    /// of its --token-file), then the line to add to the nodes' tokens
    /// file, which holds only the token's SHA-256.
    New(TokenNewArgs),
    /// Reads a token on stdin and prints its SHA-256 as the tokens file
    /// holds it (to grant an existing token another role or subject).
    Hash,
}

/// What a client token allows (see docs/security.md).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClientRoleArg {
    /// Submits tasks; reads, watches and cancels its own.
    Submit,
    /// Reads and watches every task; submits and cancels nothing.
    Read,
    /// Everything.
    Admin,
}

impl From<ClientRoleArg> for ClientRole {
    fn from(role: ClientRoleArg) -> Self {
        match role {
            ClientRoleArg::Submit => ClientRole::Submit,
            ClientRoleArg::Read => ClientRole::Read,
            ClientRoleArg::Admin => ClientRole::Admin,
        }
    }
}

#[derive(Debug, Args)]
pub struct TokenNewArgs {
    /// What the token allows.
    #[arg(long, value_enum)]
    pub role: ClientRoleArg,
    /// Who holds it: the owner of the tasks it submits, and the client its
    /// tasks are counted under for fair dispatch (up to 64 ASCII letters,
    /// digits and `. _ - @ :`).
    #[arg(long, value_parser = parse_client)]
    pub subject: ClientId,
}

/// Largest token file a client reads: a token is 68 bytes.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The bearer token of a client command.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// File holding this client's bearer token (as `agentmesh token new`
    /// printed it), sent as `authorization: Bearer <token>` with every
    /// call; needed by nodes started with --token-file. Without it the
    /// token in the AGENTMESH_TOKEN variable is sent, if set. (No flag
    /// takes the token itself: command lines are visible to every user of
    /// the machine.)
    #[arg(long = "token-file", env = "AGENTMESH_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token to send, from --token-file or else `AGENTMESH_TOKEN`.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        token_from(
            self.token_file.as_deref(),
            std::env::var("AGENTMESH_TOKEN").ok(),
        )
    }
}

/// The token in `file`, or else `variable` (the value of
/// `AGENTMESH_TOKEN`); surrounding whitespace is dropped, an empty value
/// is no token. Errors never show the token.
fn token_from(file: Option<&Path>, variable: Option<String>) -> anyhow::Result<Option<String>> {
    let Some(path) = file else {
        return Ok(variable
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty()));
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("failed to read the token file {}", path.display()))?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        bail!(
            "token file {} is over {MAX_TOKEN_FILE_BYTES} bytes: it should hold one token",
            path.display()
        );
    }
    let token = text.trim();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    if token.lines().count() > 1 {
        bail!(
            "token file {} holds more than one line: it should hold one token",
            path.display()
        );
    }
    Ok(Some(token.to_owned()))
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Coordinator to load (the first of a comma-separated list, so the
    /// AGENTMESH_ENDPOINT of the other commands serves here too); an
    /// embedded cluster (no etcd) when omitted.
    #[arg(long, env = ENDPOINT_ENV, value_delimiter = ',')]
    pub endpoint: Vec<String>,
    /// What each task does.
    #[arg(long, value_enum, default_value = "trivial")]
    pub shape: Shape,
    /// Tasks measured.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub tasks: u64,
    /// Tasks in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub concurrency: u64,
    /// Tasks run before the clock starts [default: a tenth of --tasks, at most 1000].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// HTTP/2 connections to the endpoint; tasks are spread over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub connections: u64,
    /// The whole run stops after this many seconds; unfinished tasks count as errors.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub time_limit: u64,
    /// Open loop: start this many tasks per second (at most --concurrency
    /// at once) rather than a new one as each finishes; for latency at a
    /// given load.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Workers of the embedded cluster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,
    /// Subtasks each embedded worker runs at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: u32,
    /// No progress bar (it is drawn on stderr only when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// CA certificate (PEM) of the cluster: TLS to --endpoint (see
    /// `agentmesh submit --help`).
    #[arg(long, env = "AGENTMESH_CA")]
    pub ca: Option<PathBuf>,
    /// The bearer token sent to --endpoint, for clusters that require one.
    #[command(flatten)]
    pub token: TokenArgs,
}

impl BenchArgs {
    /// The coordinator to load, if any: the first endpoint given.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint
            .iter()
            .map(|e| e.trim())
            .find(|e| !e.is_empty())
    }

    pub fn warmup(&self) -> u64 {
        self.warmup.unwrap_or((self.tasks / 10).min(1000))
    }

    /// The embedded cluster's configuration: queues sized for the load.
    pub fn to_config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(Role::Worker, SocketAddr::from(([127, 0, 0, 1], 0)));
        config.max_concurrency = self.max_concurrency;
        config
    }
}

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Task file (JSON or YAML, `-` for stdin); the built-in
    /// average-word-count example when omitted and nothing is published.
    #[arg(conflicts_with = "publish")]
    pub task_file: Option<PathBuf>,
    /// Event handlers of the workers, `TYPE=tool:CAPABILITY` or
    /// `TYPE=task:PATH`, as `agentmesh node --event-handler` takes them
    /// (docs/events.md); none by default.
    #[arg(
        long = "event-handler",
        env = "AGENTMESH_EVENT_HANDLERS",
        value_delimiter = ',',
        value_name = "TYPE=ACTION"
    )]
    pub event_handlers: Vec<agentmesh_core::events::HandlerSpec>,
    /// Publishes an event, `TYPE=JSON` (repeatable), instead of running a
    /// task: waits until every handler task and tool call it caused has
    /// ended, prints them as JSON and exits 0 only if all succeeded.
    #[arg(long, value_name = "TYPE=JSON", value_parser = parse_publish, requires = "event_handlers")]
    pub publish: Vec<(String, serde_json::Value)>,
    /// Ordering key of the --publish events (`{{event.key}}` in a task
    /// handler); none by default.
    #[arg(long, value_name = "KEY", default_value = "", requires = "publish")]
    pub publish_key: String,
    /// How long to wait for the handlers of the --publish events to end,
    /// e.g. `60s`; bounded so a handler that never finishes cannot hang
    /// the command.
    #[arg(long, env = "AGENTMESH_HANDLER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub handler_timeout: Duration,
    /// Workers to start.
    #[arg(long, env = "AGENTMESH_WORKERS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,
    /// Subtasks each worker runs at once.
    #[arg(long, env = "AGENTMESH_MAX_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: u32,
    /// Hosts the http.get tool may fetch from (comma-separated `host`,
    /// `host:port` or `scheme://host[:port]`); off when empty.
    #[arg(long, env = "AGENTMESH_HTTP_ALLOW", value_delimiter = ',', value_parser = allow_entry, long_help = HTTP_ALLOW_HELP)]
    pub http_allow: Vec<Option<AllowedHost>>,
    /// Lets http.get fetch names that resolve to private, loopback or
    /// link-local addresses (off: such names are refused).
    #[arg(long, env = "AGENTMESH_HTTP_ALLOW_PRIVATE", value_parser = BoolishValueParser::new(), long_help = HTTP_ALLOW_PRIVATE_HELP)]
    pub http_allow_private: bool,
    /// Serves Prometheus metrics on this address (GET /metrics); off by
    /// default. Unauthenticated: keep it on loopback.
    #[arg(long, env = "AGENTMESH_METRICS_LISTEN", value_name = "HOST:PORT", long_help = METRICS_LISTEN_HELP)]
    pub metrics_listen: Option<HostPort>,
    #[command(flatten)]
    pub llm: LlmArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Coordinator,
    Worker,
    Peer,
    Level,
    /// A worker for reactive requests (`pattern: reactive`), which are
    /// placed on reactive agents first.
    Reactive,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Coordinator => Role::Coordinator,
            RoleArg::Worker => Role::Worker,
            RoleArg::Peer => Role::Peer,
            RoleArg::Level => Role::Level,
            RoleArg::Reactive => Role::Reactive,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LevelArg {
    Strategic,
    Tactical,
    Operational,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// What this node's agent does.
    #[arg(long, env = "AGENTMESH_ROLE", value_enum)]
    pub role: RoleArg,
    /// Hierarchy level, required with --role level.
    #[arg(long, env = "AGENTMESH_LEVEL", value_enum)]
    pub level: Option<LevelArg>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
    /// The etcd user this node logs in as, when etcd has authentication
    /// on (`agentmesh etcd-setup` makes one per node, named by its --id);
    /// none by default, for an etcd without authentication.
    #[arg(long, env = "AGENTMESH_ETCD_USER", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding the --etcd-user's password (a trailing line break is
    /// ignored). A file rather than a flag, so the password appears in no
    /// process listing; it is never logged.
    #[arg(
        long,
        env = "AGENTMESH_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        requires = "etcd_user"
    )]
    pub etcd_password_file: Option<PathBuf>,
    /// Address the gRPC server binds, an IP address or a host name with a
    /// port (`localhost:7700`; a name binds the first of its addresses
    /// that can be bound). Port 0 picks a free port; the bound address is
    /// printed as `listening on ADDR` [default: 0.0.0.0:7700 with TLS,
    /// 127.0.0.1:7700 with --insecure].
    #[arg(long, env = "AGENTMESH_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<HostPort>,
    /// The cluster CA's certificate (PEM): every node's certificate must
    /// chain to it. With --tls-cert and --tls-key, all node-to-node
    /// connections use mutual TLS and clients speak TLS. The three files
    /// are read again when they change (certificate rotation without a
    /// restart). Make a development CA with `agentmesh certs`.
    #[arg(long, env = "AGENTMESH_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate chain (PEM), signed by --tls-ca. It must
    /// name this node's agent id as a URI SAN,
    /// `spiffe://agentmesh/agent/<id>` (a trailing `*` names every id with
    /// that prefix).
    #[arg(long, env = "AGENTMESH_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "AGENTMESH_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// Runs without TLS, for a development cluster on one machine: anyone
    /// who can reach the node can send its agents envelopes. Listens on
    /// loopback unless --listen says otherwise; warns on every start.
    #[arg(long, env = "AGENTMESH_INSECURE", value_parser = BoolishValueParser::new(), conflicts_with_all = ["tls_ca", "tls_cert", "tls_key"])]
    pub insecure: bool,
    /// Serves Prometheus metrics on this address (GET /metrics); off by
    /// default. Unauthenticated: keep it on loopback or a pod-internal
    /// address.
    #[arg(long, env = "AGENTMESH_METRICS_LISTEN", value_name = "HOST:PORT", long_help = METRICS_LISTEN_HELP)]
    pub metrics_listen: Option<HostPort>,
    /// host:port other nodes use to reach this one; the bound address by default.
    #[arg(long, env = "AGENTMESH_ADVERTISE")]
    pub advertise: Option<String>,
    /// Agent id; `<role>-<random>` by default.
    #[arg(long, env = "AGENTMESH_ID")]
    pub id: Option<String>,
    /// Capabilities a worker offers (comma-separated tool names); all
    /// built-in tools by default.
    #[arg(long, env = "AGENTMESH_CAPABILITIES", value_delimiter = ',')]
    pub capabilities: Vec<String>,
    /// Event handlers of this node's agent, `TYPE=tool:CAPABILITY` or
    /// `TYPE=task:PATH` (TYPE may end in `.*`), repeatable or
    /// comma-separated: the leader routes events of a matching type here
    /// (docs/events.md). None by default, so a node reacts to no event
    /// unless told to.
    #[arg(
        long = "event-handler",
        env = "AGENTMESH_EVENT_HANDLERS",
        value_delimiter = ',',
        value_name = "TYPE=ACTION"
    )]
    pub event_handlers: Vec<agentmesh_core::events::HandlerSpec>,
    /// Subtasks a worker runs at once.
    #[arg(long, env = "AGENTMESH_MAX_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: u32,
    /// Seconds a node's registrations outlive it: a dead node's agents
    /// leave every view within this time.
    #[arg(long, env = "AGENTMESH_LEASE_TTL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_ttl: u64,
    /// Hosts the http.get tool may fetch from (comma-separated `host`,
    /// `host:port` or `scheme://host[:port]`); off when empty.
    #[arg(long, env = "AGENTMESH_HTTP_ALLOW", value_delimiter = ',', value_parser = allow_entry, long_help = HTTP_ALLOW_HELP)]
    pub http_allow: Vec<Option<AllowedHost>>,
    /// Lets http.get fetch names that resolve to private, loopback or
    /// link-local addresses (off: such names are refused).
    #[arg(long, env = "AGENTMESH_HTTP_ALLOW_PRIVATE", value_parser = BoolishValueParser::new(), long_help = HTTP_ALLOW_PRIVATE_HELP)]
    pub http_allow_private: bool,
    /// Subtasks waiting for a free worker before submits are refused with
    /// RESOURCE_EXHAUSTED (coordinator).
    #[arg(long, env = "AGENTMESH_MAX_QUEUED_SUBTASKS", default_value_t = 10_000)]
    pub max_queued_subtasks: usize,
    /// Subtasks one client (--client) may have waiting for a free worker;
    /// keeps one client's backlog from locking the others out (coordinator).
    #[arg(long, env = "AGENTMESH_MAX_QUEUED_SUBTASKS_PER_CLIENT", default_value_t = ClientLimits::default().max_queued_subtasks, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_queued_subtasks_per_client: usize,
    /// Unfinished tasks one client (--client) may have (coordinator).
    #[arg(long, env = "AGENTMESH_MAX_ACTIVE_TASKS_PER_CLIENT", default_value_t = ClientLimits::default().max_active_tasks, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_active_tasks_per_client: usize,
    /// Attempts of one subtask, the first included, when workers fail, are
    /// lost or hand it back (coordinator).
    #[arg(long, env = "AGENTMESH_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Largest task document accepted, in bytes (coordinator).
    #[arg(long, env = "AGENTMESH_MAX_TASK_BYTES", default_value_t = 1024 * 1024)]
    pub max_task_bytes: usize,
    /// Largest number of subtasks in one task (coordinator).
    #[arg(long, env = "AGENTMESH_MAX_SUBTASKS", default_value_t = 1024)]
    pub max_subtasks: usize,
    /// Largest envelope payload between agents, in bytes.
    #[arg(long, env = "AGENTMESH_MAX_ENVELOPE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_envelope_bytes: usize,
    /// Largest output of one subtask, in bytes of JSON. A worker stops a
    /// tool whose output passes it and fails the attempt (not retried); a
    /// coordinator fails a subtask whose reported output is larger, naming
    /// it. At most --max-envelope-bytes less 16 KiB, and --max-record-bytes.
    #[arg(long, env = "AGENTMESH_MAX_OUTPUT_BYTES", default_value_t = agentmesh_runtime::tools::DEFAULT_MAX_OUTPUT_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_output_bytes: usize,
    /// Worker score weights capability,success_rate,free_load,specialization
    /// [default: 0.3,0.3,0.2,0.2].
    #[arg(long, env = "AGENTMESH_SCORE_WEIGHTS", value_parser = parse_weights)]
    pub score_weights: Option<ScoreWeights>,
    /// A routing table (YAML or JSON: `intents` with keywords per request
    /// kind, `tools` with keywords and an input extractor) that reactive
    /// requests are routed with instead of the built-in one; read and
    /// validated at startup, at most 64 KiB and 64 tools, so a bad table
    /// stops the node rather than misroutes (see docs/reactive.md).
    #[arg(long, env = "AGENTMESH_ROUTING_TABLE", value_name = "FILE", value_parser = parse_routing_table)]
    pub routing_table: Option<Arc<RoutingTable>>,
    /// Answers the leader keeps in its reactive response cache; a lookup
    /// scans them all, so this also bounds its cost (coordinator).
    #[arg(long, env = "AGENTMESH_RESPONSE_CACHE_ENTRIES", default_value_t = CachePolicy::default().max_entries, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=65_536))]
    pub response_cache_entries: usize,
    /// Bytes of requests and answers the response cache holds at most
    /// (coordinator).
    #[arg(long, env = "AGENTMESH_RESPONSE_CACHE_BYTES", default_value_t = CachePolicy::default().max_bytes, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1 << 30))]
    pub response_cache_bytes: usize,
    /// Milliseconds a cached answer is served for: short enough that the
    /// answer of a tool whose data moves (http.get) is not served stale
    /// for long (coordinator).
    #[arg(long, env = "AGENTMESH_RESPONSE_CACHE_TTL_MS", default_value_t = CachePolicy::default().ttl_ms)]
    pub response_cache_ttl_ms: u64,
    /// Seconds an attempt of a subtask without its own timeout_ms may run
    /// without a result before it is started elsewhere (coordinator).
    #[arg(long, env = "AGENTMESH_ATTEMPT_TIMEOUT", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub attempt_timeout: u64,
    /// First pause before a subtask is retried, in ms; it doubles per
    /// attempt, with jitter (coordinator).
    #[arg(long, env = "AGENTMESH_RETRY_BASE_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_base_ms: u64,
    /// Longest pause between attempts of a subtask, in ms (coordinator).
    #[arg(long, env = "AGENTMESH_RETRY_MAX_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_max_ms: u64,
    /// Failures in a row after which a worker is taken out of placement
    /// (coordinator).
    #[arg(long, env = "AGENTMESH_BREAKER_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_failures: u32,
    /// How long such a worker sits out before one probe subtask, in ms
    /// (coordinator).
    #[arg(long, env = "AGENTMESH_BREAKER_COOL_DOWN_MS", default_value_t = 10_000)]
    pub breaker_cool_down_ms: u64,
    /// Task-record transactions to etcd in flight at once (coordinator).
    /// One is fastest against a local etcd (bench/RESULTS.md); more can
    /// help when etcd is a network round trip away.
    #[arg(long, env = "AGENTMESH_WRITE_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub write_concurrency: u64,
    /// Task records written to etcd in one transaction (coordinator).
    #[arg(long, env = "AGENTMESH_WRITE_BATCH", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=128))]
    pub write_batch: u64,
    /// Client connections this node holds open; one over it is answered
    /// RESOURCE_EXHAUSTED naming the limit and closed. Keep it below the
    /// file-descriptor limit (ulimit -n).
    #[arg(long, env = "AGENTMESH_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Seconds a connection may go without a request in flight before the
    /// node closes it (clients reconnect when they next need to).
    #[arg(long, env = "AGENTMESH_IDLE_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
    /// Seconds between the HTTP/2 PINGs the node sends on every connection,
    /// to find peers that froze or vanished.
    #[arg(long, env = "AGENTMESH_KEEPALIVE_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_interval: u64,
    /// Seconds a PING may go unanswered before the connection is closed.
    #[arg(long, env = "AGENTMESH_KEEPALIVE_TIMEOUT", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_timeout: u64,
    /// Watch streams open at once on this node; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "AGENTMESH_MAX_WATCH_STREAMS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_watch_streams: u64,
    /// Largest task record, in bytes, as stored in etcd (coordinator). A
    /// task whose record would outgrow it fails, naming it; keep it under
    /// etcd's --max-request-bytes (1.5 MiB by default).
    #[arg(long, env = "AGENTMESH_MAX_RECORD_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_record_bytes: u64,
    /// Bytes of task records written to etcd in one transaction
    /// (coordinator); keep it under etcd's --max-request-bytes.
    #[arg(long, env = "AGENTMESH_WRITE_BATCH_BYTES", default_value_t = 1280 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub write_batch_bytes: u64,
    /// Bytes of ended tasks' records kept in memory for Status and Watch
    /// (coordinator); older ones are read from etcd.
    #[arg(long, env = "AGENTMESH_ENDED_CACHE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub ended_cache_bytes: u64,
    /// Takeovers by a new coordinator leader a task may go through without
    /// a subtask completing; past it the task is failed rather than
    /// resumed, so a task that takes its coordinator down cannot take
    /// every leader down in turn (coordinator).
    #[arg(long, env = "AGENTMESH_MAX_TASK_RESUMES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_task_resumes: u32,
    /// Task documents over 16 KiB parsed and validated at once, on threads
    /// off the async runtime; more submits wait their turn (coordinator).
    #[arg(long, env = "AGENTMESH_PARSE_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parse_concurrency: u64,
    /// The quality score below which a natural-language request gets a
    /// refinement round, in [0, 1]: the guide's 0.7 (coordinator; a task
    /// file's `quality_threshold` overrides it).
    #[arg(long, env = "AGENTMESH_REQUEST_QUALITY_THRESHOLD", default_value_t = 0.7, value_parser = unit_interval)]
    pub request_quality_threshold: f64,
    /// Refinement rounds a request may run; each is a full run of the
    /// weak tasks, so it is bounded (at most 3; 0 turns refinement off)
    /// (coordinator).
    #[arg(long, env = "AGENTMESH_REQUEST_MAX_ROUNDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=3))]
    pub request_max_rounds: u32,
    /// Tasks one request's decomposition may have: bounds what a model's
    /// answer can make the cluster run (coordinator).
    #[arg(long, env = "AGENTMESH_REQUEST_MAX_SUBTASKS", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub request_max_subtasks: u64,
    /// Past (request, decomposition, quality) triples kept in the
    /// coordination memory; the oldest is evicted beyond it (coordinator).
    #[arg(long, env = "AGENTMESH_REQUEST_MEMORY_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub request_memory_size: u64,
    /// The similarity, in [0, 1], at or above which a remembered
    /// decomposition is reused for a new request instead of asking the
    /// provider: high, as a reused plan runs as it is (coordinator).
    #[arg(long, env = "AGENTMESH_REQUEST_MEMORY_SIMILARITY", default_value_t = 0.9, value_parser = unit_interval)]
    pub request_memory_similarity: f64,
    /// How long an ended task's record is kept in etcd (Status and Watch
    /// answer NOT_FOUND after), e.g. `24h`, `90m`, `30s` (coordinator).
    #[arg(long, env = "AGENTMESH_TASK_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub task_retention: Duration,
    /// Ended task records kept in etcd at most, however recent; the oldest
    /// are deleted first beyond it (coordinator).
    #[arg(long, env = "AGENTMESH_MAX_ENDED_TASKS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_ended_tasks: u64,
    /// Largest event payload, in bytes of its compact JSON: keeps an event
    /// record with its delivery states far below etcd's request limit
    /// (coordinator; docs/events.md).
    #[arg(long, env = "AGENTMESH_MAX_EVENT_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1..=1024 * 1024))]
    pub max_event_bytes: u64,
    /// Event deliveries queued or in flight on the leader, over all
    /// handlers and keys; a publish past it is refused with
    /// RESOURCE_EXHAUSTED, so a stalled handler cannot grow the leader's
    /// memory and etcd without bound (coordinator).
    #[arg(long, env = "AGENTMESH_MAX_PENDING_EVENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_events: u64,
    /// Event deliveries queued for one handler and one key: one hot key
    /// cannot take the whole queue (coordinator).
    #[arg(long, env = "AGENTMESH_MAX_EVENTS_PER_KEY", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_events_per_key: u64,
    /// How long a handler has to acknowledge a delivery before the attempt
    /// counts as failed and the event is sent again, e.g. `30s`
    /// (coordinator). Longer than the slowest handler's tool call.
    #[arg(long, env = "AGENTMESH_EVENT_ACK_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub event_ack_timeout: Duration,
    /// Attempts per event delivery before it goes to the dead-letter list
    /// (coordinator).
    #[arg(long, env = "AGENTMESH_EVENT_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub event_max_attempts: u32,
    /// First pause before an event delivery is retried, in milliseconds;
    /// doubled per attempt with jitter (coordinator).
    #[arg(long, env = "AGENTMESH_EVENT_RETRY_BASE_MS", default_value_t = 100)]
    pub event_retry_base_ms: u64,
    /// Longest pause between attempts of one event delivery, in
    /// milliseconds (coordinator).
    #[arg(long, env = "AGENTMESH_EVENT_RETRY_MAX_MS", default_value_t = 5_000)]
    pub event_retry_max_ms: u64,
    /// Dead letters kept in etcd at most; the oldest are deleted when a new
    /// one lands past it, so a handler failing for days cannot fill etcd's
    /// bounded database (coordinator). 10,000 of the largest events are
    /// about a third of etcd's default quota.
    #[arg(long, env = "AGENTMESH_MAX_DEAD_LETTERS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_dead_letters: u64,
    /// Seconds to let running subtasks finish on SIGTERM.
    #[arg(long, env = "AGENTMESH_DRAIN_TIMEOUT", default_value_t = 10)]
    pub drain_timeout: u64,
    /// Tactical level: other operational agents a failed operational task
    /// is tried on before the objective is escalated.
    #[arg(long, env = "AGENTMESH_TACTICAL_RETRIES", default_value_t = 2)]
    pub tactical_retries: u32,
    /// Peer leading a consensus round: how long it waits for bids, in ms.
    /// A round closes as soon as every invited peer has bid; with fewer
    /// bids than seats by then, it runs solo on the best one (and says
    /// so). Raise it where peers are far apart or heavily loaded.
    #[arg(long, env = "AGENTMESH_BID_WINDOW_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub bid_window_ms: u64,
    /// Strategic level: times an escalated objective is re-planned on
    /// another tactical agent before it is given up.
    #[arg(long, env = "AGENTMESH_STRATEGIC_REPLANS", default_value_t = 1)]
    pub strategic_replans: u32,
    /// FOR TESTS ONLY: misbehave on purpose (worker or peer). Repeatable:
    /// `wrong-result:P` returns a wrong output with probability P,
    /// `empty-result:P` an empty one, `fail:P` fails the attempt with probability P, `slow:MS` delays every
    /// attempt. Off by default; refused unless --allow-fault-injection is
    /// given or the binary is built with the `fault-injection` feature.
    #[arg(long = "fault", value_name = "KIND:VALUE")]
    pub faults: Vec<Fault>,
    /// Accepts --fault: without it a node refuses to start with faults,
    /// so a test flag left in a deployment cannot make a node give wrong
    /// answers on purpose. A node with faults is marked in `agents`.
    #[arg(long, env = "AGENTMESH_ALLOW_FAULT_INJECTION", value_parser = BoolishValueParser::new())]
    pub allow_fault_injection: bool,
    /// Client tokens file: one `<role> <subject> <sha256-hex>` line per
    /// token (`agentmesh token new` prints one). With it, TaskService and
    /// ClusterService refuse calls without a valid bearer token and each
    /// task is owned by the subject that submitted it; the file is re-read
    /// within a second of a change (a bad new file is refused and the old
    /// tokens stay). Without it, the client API is open to anyone who can
    /// reach --listen. Health and reflection stay open either way.
    #[arg(
        long = "token-file",
        env = "AGENTMESH_TOKENS_FILE",
        value_name = "PATH"
    )]
    pub tokens_file: Option<PathBuf>,
}

/// Whether this binary accepts `--fault` without `--allow-fault-injection`:
/// builds for test rigs turn the `fault-injection` feature on.
pub const FAULT_INJECTION_BUILT_IN: bool = cfg!(feature = "fault-injection");

/// Where etcd is and the TLS towards it, shared by `node` and
/// `etcd-setup`.
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated; https:// ones need --etcd-ca.
    #[arg(
        long = "etcd",
        env = "AGENTMESH_ETCD",
        value_delimiter = ',',
        required = true
    )]
    pub endpoints: Vec<String>,
    /// CA certificate (PEM) that etcd's certificate must chain to; only it
    /// is trusted. Required by https:// --etcd URLs, refused with http://
    /// ones; none by default (plain http).
    #[arg(long, env = "AGENTMESH_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) shown to etcd; an etcd started with
    /// --client-cert-auth takes its CN as the etcd user. Needs --etcd-key
    /// and --etcd-ca; none by default.
    #[arg(
        long,
        env = "AGENTMESH_ETCD_CERT",
        value_name = "FILE",
        requires_all = ["etcd_key", "etcd_ca"]
    )]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(
        long,
        env = "AGENTMESH_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    pub etcd_key: Option<PathBuf>,
    /// How long to keep trying to reach etcd at start, e.g. `30s`, `2m`
    /// (`0s`: one attempt). Each failed attempt logs a WARN line with its
    /// number and the time left; attempts back off from 0.5 s to 5 s,
    /// jittered. 30 s lets a node started together with its etcd (one
    /// compose file, one Helm release) wait for it, and still fails a
    /// misconfigured node soon enough to be noticed (a supervisor restarts
    /// it). A refusal (wrong password, untrusted certificate) fails at
    /// once.
    #[arg(long, env = "AGENTMESH_ETCD_CONNECT_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub etcd_connect_timeout: Duration,
}

impl EtcdArgs {
    /// The endpoints and the TLS files read (no user: `node` adds its own,
    /// `etcd-setup` logs in as root).
    pub fn options(&self) -> anyhow::Result<EtcdOptions> {
        let mut options = EtcdOptions::new(self.endpoints.clone())
            .with_connect_patience(self.etcd_connect_timeout);
        options.tls = self.tls()?;
        Ok(options)
    }

    /// `error`, from connecting to etcd, as one line that says what to
    /// check.
    pub fn explain(&self, error: agentmesh_registry::RegistryError) -> anyhow::Error {
        use agentmesh_registry::RegistryError;
        let endpoints = self.endpoints.join(", ");
        match error {
            RegistryError::Unavailable(reason) => anyhow::anyhow!(
                "{reason}; check that etcd runs and listens at {endpoints} (--etcd) and that \
                 this machine reaches it, that the URLs' scheme is etcd's (https:// with \
                 --etcd-ca when etcd serves TLS), and that --etcd-connect-timeout ({}) gives \
                 etcd time to start",
                humantime(self.etcd_connect_timeout)
            ),
            RegistryError::Refused(reason) => anyhow::anyhow!(
                "{reason}; check the TLS files (--etcd-ca, --etcd-cert, --etcd-key) and the \
                 credentials (--etcd-user, --etcd-password-file) against etcd at {endpoints}"
            ),
            other => anyhow::anyhow!("etcd at {endpoints}: {other}"),
        }
    }

    /// Reads the files; `None` without --etcd-ca.
    fn tls(&self) -> anyhow::Result<Option<EtcdTls>> {
        let Some(ca) = &self.etcd_ca else {
            return Ok(None);
        };
        let tls = EtcdTls::new(read_file(ca, "--etcd-ca")?);
        Ok(Some(match (&self.etcd_cert, &self.etcd_key) {
            (Some(cert), Some(key)) => tls.with_client_identity(
                read_file(cert, "--etcd-cert")?,
                read_file(key, "--etcd-key")?,
            ),
            _ => tls,
        }))
    }
}

/// `d` as the duration flags take it: `30s`, `1500ms`.
fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn read_file(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

/// A password from `path`; the error names the file, never its content.
pub fn read_password(path: &Path, flag: &str) -> anyhow::Result<Password> {
    let bytes = read_file(path, flag)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{flag} {} is not UTF-8 text", path.display()))?;
    let password = Password::from_file_text(&text);
    if password.is_empty() {
        bail!("{flag} {} holds an empty password", path.display());
    }
    Ok(password)
}

#[derive(Debug, Args)]
pub struct EtcdSetupArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// File holding the password of etcd's `root` user: given to root
    /// when authentication is still off, used to log in as root once it
    /// is on.
    #[arg(long, env = "AGENTMESH_ETCD_ROOT_PASSWORD_FILE", value_name = "FILE")]
    pub root_password_file: PathBuf,
    /// One node's etcd user, `ID:ROLE:PASSWORD_FILE` (repeatable): user ID
    /// (the node's --id, without a colon) may write its own registration
    /// and what ROLE (coordinator, worker, peer, level) needs, with the
    /// password in PASSWORD_FILE.
    #[arg(long = "node", value_name = "ID:ROLE:PASSWORD_FILE", value_parser = parse_node_user)]
    pub nodes: Vec<NodeUserArg>,
}

/// One `--node` of `etcd-setup`, before its password file is read.
#[derive(Debug, Clone)]
pub struct NodeUserArg {
    pub id: String,
    pub role: Role,
    pub password_file: PathBuf,
}

fn parse_node_user(text: &str) -> Result<NodeUserArg, String> {
    let mut parts = text.splitn(3, ':');
    let (Some(id), Some(role), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("'{text}' is not ID:ROLE:PASSWORD_FILE"));
    };
    if id.is_empty() || file.is_empty() {
        return Err(format!("'{text}' is not ID:ROLE:PASSWORD_FILE"));
    }
    let role = RoleArg::from_str(role, true)
        .map_err(|_| format!("unknown role '{role}' (coordinator, worker, peer or level)"))?;
    Ok(NodeUserArg {
        id: id.to_owned(),
        role: role.into(),
        password_file: PathBuf::from(file),
    })
}

impl EtcdSetupArgs {
    /// The etcd options (no user: setup logs in as root itself), the root
    /// password and the node users, with every file read.
    pub fn load(&self) -> anyhow::Result<(EtcdOptions, Password, Vec<NodeUser>)> {
        let options = self.etcd.options()?;
        let root = read_password(&self.root_password_file, "--root-password-file")?;
        let users = self
            .nodes
            .iter()
            .map(|node| {
                Ok(NodeUser {
                    id: AgentId::new(node.id.as_str()),
                    role: node.role,
                    password: read_password(&node.password_file, "--node password file")?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok((options, root, users))
    }
}

impl NodeArgs {
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl)
    }

    /// How the node protects its connections: mutual TLS from the
    /// `--tls-*` files, or plaintext with `--insecure`; refuses to choose
    /// for the user.
    pub fn security(&self) -> anyhow::Result<Security> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Security::Node(NodeTls::load(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })?)),
            _ if self.insecure => Ok(Security::Plaintext),
            _ => anyhow::bail!(
                "a node needs TLS: --tls-ca, --tls-cert and --tls-key (make a development CA \
                 with `agentmesh certs`), or --insecure for a development cluster that \
                 trusts everyone who can reach it"
            ),
        }
    }

    /// The address to bind: --listen, or port 7700 on every interface with
    /// TLS and on loopback without.
    pub fn listen(&self) -> HostPort {
        self.listen.clone().unwrap_or_else(|| {
            let host = if self.insecure {
                std::net::Ipv4Addr::LOCALHOST
            } else {
                std::net::Ipv4Addr::UNSPECIFIED
            };
            HostPort::from(SocketAddr::from((host, 7700)))
        })
    }

    /// Why this node may not start with its `--fault` flags, if it may not:
    /// fault injection must be asked for twice, by the faults and by the
    /// allowance (or by a build with the `fault-injection` feature).
    pub fn fault_injection_refused(&self, built_in: bool) -> Option<String> {
        if self.faults.is_empty() || self.allow_fault_injection || built_in {
            return None;
        }
        let faults: Vec<String> = self.faults.iter().map(|f| format!("--fault {f}")).collect();
        Some(format!(
            "{} refused: fault injection makes this node misbehave on purpose, for tests and \
             demonstrations only; add --allow-fault-injection to start it anyway",
            faults.join(" ")
        ))
    }

    /// How this node reaches etcd, with the TLS files and the password
    /// read.
    pub fn etcd_options(&self) -> anyhow::Result<EtcdOptions> {
        let mut options = self.etcd.options()?.with_lease_ttl(self.lease_ttl());
        if let (Some(user), Some(file)) = (&self.etcd_user, &self.etcd_password_file) {
            let password = read_password(file, "--etcd-password-file")?;
            options.credentials = Some(EtcdCredentials::new(user.clone(), password));
        }
        options.check_access()?;
        Ok(options)
    }

    pub fn to_config(&self) -> NodeConfig {
        // A host name is resolved when the node binds; until then the
        // config holds its port on every interface.
        let listen = self.listen();
        let listen = listen
            .socket_addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], listen.port())));
        let mut config = NodeConfig::new(self.role.into(), listen);
        config.level = self.level.map(|l| match l {
            LevelArg::Strategic => Level::Strategic,
            LevelArg::Tactical => Level::Tactical,
            LevelArg::Operational => Level::Operational,
        });
        config.id = self.id.clone();
        config.advertise = self.advertise.clone();
        config.metrics_listen = self.metrics_listen.as_ref().and_then(HostPort::socket_addr);
        config.capabilities = non_empty(&self.capabilities);
        config.max_concurrency = self.max_concurrency;
        config.http_allow = self.http_allow.iter().flatten().cloned().collect();
        config.http_allow_private = self.http_allow_private;
        config.drain_timeout = Duration::from_secs(self.drain_timeout);
        config.faults = Faults(self.faults.clone());
        config.event_handlers = self.event_handlers.clone();
        config.tactical.retries_elsewhere = self.tactical_retries;
        config.peer.bid_window = Duration::from_millis(self.bid_window_ms);
        config.strategic.replans = self.strategic_replans;
        config.mailbox.max_envelope_bytes = self.max_envelope_bytes;
        let connections = &mut config.connections;
        connections.max_connections = self.max_connections as usize;
        connections.idle_timeout = Duration::from_secs(self.idle_timeout);
        connections.keepalive_interval = Duration::from_secs(self.keepalive_interval);
        connections.keepalive_timeout = Duration::from_secs(self.keepalive_timeout);
        connections.max_watch_streams = self.max_watch_streams as usize;
        config.max_output_bytes = self.max_output_bytes;
        let coordinator = &mut config.coordinator;
        coordinator.max_queued_subtasks = self.max_queued_subtasks;
        coordinator.client_limits = ClientLimits {
            max_queued_subtasks: self.max_queued_subtasks_per_client,
            max_active_tasks: self.max_active_tasks_per_client,
        };
        coordinator.retry.max_attempts = self.max_attempts;
        coordinator.retry.base_delay_ms = self.retry_base_ms;
        coordinator.retry.max_delay_ms = self.retry_max_ms;
        coordinator.breaker.failures_to_open = self.breaker_failures;
        coordinator.breaker.cool_down_ms = self.breaker_cool_down_ms;
        coordinator.write_concurrency = self.write_concurrency as usize;
        coordinator.attempt_timeout = Duration::from_secs(self.attempt_timeout);
        coordinator.write_batch = self.write_batch as usize;
        coordinator.write_batch_bytes = self.write_batch_bytes as usize;
        coordinator.records.max_record_bytes = self.max_record_bytes as usize;
        coordinator.records.max_output_bytes = self.max_output_bytes;
        coordinator.ended_cache_bytes = self.ended_cache_bytes as usize;
        coordinator.max_task_resumes = self.max_task_resumes;
        coordinator.parse_concurrency = self.parse_concurrency as usize;
        coordinator.requests = agentmesh_core::request::RequestOptions {
            quality_threshold: self.request_quality_threshold,
            max_rounds: self.request_max_rounds,
            max_subtasks: self.request_max_subtasks as usize,
            memory_size: self.request_memory_size as usize,
            memory_similarity: self.request_memory_similarity,
        };
        coordinator.task_retention = self.task_retention;
        coordinator.max_ended_tasks = usize::try_from(self.max_ended_tasks).unwrap_or(usize::MAX);
        let events = &mut coordinator.events;
        events.limits.max_payload_bytes = self.max_event_bytes as usize;
        events.router.max_pending = usize::try_from(self.max_pending_events).unwrap_or(usize::MAX);
        events.router.max_per_lane = usize::try_from(self.max_events_per_key).unwrap_or(usize::MAX);
        events.router.ack_timeout_ms =
            u64::try_from(self.event_ack_timeout.as_millis()).unwrap_or(u64::MAX);
        events.router.retry.max_attempts = self.event_max_attempts;
        events.router.retry.base_delay_ms = self.event_retry_base_ms;
        events.router.retry.max_delay_ms = self.event_retry_max_ms.max(self.event_retry_base_ms);
        events.max_dead_letters = usize::try_from(self.max_dead_letters).unwrap_or(usize::MAX);
        coordinator.limits.max_document_bytes = self.max_task_bytes;
        coordinator.limits.max_subtasks = self.max_subtasks;
        if let Some(weights) = &self.score_weights {
            coordinator.weights = weights.clone();
        }
        if let Some(table) = &self.routing_table {
            coordinator.routing_table = table.clone();
        }
        coordinator.response_cache.max_entries = self.response_cache_entries;
        coordinator.response_cache.max_bytes = self.response_cache_bytes;
        coordinator.response_cache.ttl_ms = self.response_cache_ttl_ms;
        config
    }
}

impl LocalArgs {
    pub fn to_config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(Role::Worker, SocketAddr::from(([127, 0, 0, 1], 0)));
        config.max_concurrency = self.max_concurrency;
        config.event_handlers = self.event_handlers.clone();
        config.http_allow = self.http_allow.iter().flatten().cloned().collect();
        config.http_allow_private = self.http_allow_private;
        config.metrics_listen = self.metrics_listen.as_ref().and_then(HostPort::socket_addr);
        config
    }
}

/// `--llm-*`: the OpenAI-compatible model a node asks, shared by `node`
/// and `local`. Without `--llm-base-url` the node uses its deterministic
/// built-in rules only.
#[derive(Debug, Args)]
pub struct LlmArgs {
    /// Base URL of an OpenAI-compatible API, up to and including `/v1`
    /// (llama.cpp `http://127.0.0.1:8080/v1`, vLLM `http://HOST:8000/v1`,
    /// Ollama `http://127.0.0.1:11434/v1`, OpenAI `https://api.openai.com/v1`);
    /// none by default: the built-in rules answer instead.
    #[arg(long, env = "AGENTMESH_LLM_BASE_URL", value_name = "URL")]
    pub llm_base_url: Option<String>,
    /// The model to ask (required with --llm-base-url).
    #[arg(long, env = "AGENTMESH_LLM_MODEL", requires = "llm_base_url")]
    pub llm_model: Option<String>,
    /// The model for embeddings; --llm-model by default.
    #[arg(long, env = "AGENTMESH_LLM_EMBEDDING_MODEL", requires = "llm_base_url")]
    pub llm_embedding_model: Option<String>,
    /// The server behind the URL: they differ in how they take a JSON
    /// schema for structured output (openai: response_format; llama.cpp:
    /// response_format; vllm: structured_outputs; ollama: format).
    #[arg(long, env = "AGENTMESH_LLM_BACKEND", value_enum, default_value_t = LlmBackendArg::Openai)]
    pub llm_backend: LlmBackendArg,
    /// A file holding the API key, sent as a bearer token. The key can
    /// also come from AGENTMESH_LLM_API_KEY; it is never logged or echoed.
    /// Local servers need none.
    #[arg(long, env = "AGENTMESH_LLM_API_KEY_FILE", value_name = "FILE")]
    pub llm_api_key_file: Option<PathBuf>,
    /// Seconds one model call may take, retries and their waits included:
    /// a small CPU model writes about 100 tokens a second.
    #[arg(long, env = "AGENTMESH_LLM_TIMEOUT", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub llm_timeout: u64,
    /// Model calls this node has in flight at once; more wait. Keeps a
    /// burst of tasks from overloading a shared model server.
    #[arg(long, env = "AGENTMESH_LLM_MAX_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub llm_max_concurrency: u32,
    /// Attempts per model call on 429, 5xx and connection errors (the
    /// first included), backing off and honouring Retry-After.
    #[arg(long, env = "AGENTMESH_LLM_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub llm_max_attempts: u32,
}

/// The environment variable an API key may come from.
pub const LLM_API_KEY_ENV: &str = "AGENTMESH_LLM_API_KEY";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LlmBackendArg {
    Openai,
    #[value(name = "llama.cpp", alias = "llamacpp")]
    LlamaCpp,
    Vllm,
    Ollama,
}

impl LlmArgs {
    /// The model's configuration, `None` without --llm-base-url. Reads the
    /// API key (file, else environment).
    pub fn to_config(&self) -> anyhow::Result<Option<OpenAiConfig>> {
        let Some(base_url) = &self.llm_base_url else {
            return Ok(None);
        };
        let Some(model) = &self.llm_model else {
            bail!("--llm-base-url needs --llm-model (the model to ask)");
        };
        let backend = match self.llm_backend {
            LlmBackendArg::Openai => Backend::OpenAi,
            LlmBackendArg::LlamaCpp => Backend::LlamaCpp,
            LlmBackendArg::Vllm => Backend::Vllm,
            LlmBackendArg::Ollama => Backend::Ollama,
        };
        let mut config = OpenAiConfig::new(base_url.clone(), model.clone(), backend);
        config.embedding_model = self.llm_embedding_model.clone();
        config.api_key = match &self.llm_api_key_file {
            Some(path) => Some(ApiKey::from_file(path)?),
            None => ApiKey::from_env(LLM_API_KEY_ENV)?,
        };
        config.timeout = Duration::from_secs(self.llm_timeout);
        config.max_concurrency = self.llm_max_concurrency as usize;
        config.retry.max_attempts = self.llm_max_attempts;
        Ok(Some(config))
    }
}

/// A `--listen`-like address: an IP address or a host name, and a port.
/// Names are resolved when the address is bound ([`HostPort::resolve`]),
/// so `localhost:7700` works where a socket address alone would not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address itself when the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip: std::net::IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }

    /// Every address the host names (the address itself for an IP);
    /// `flag` names the flag in the error.
    pub async fn resolve(&self, flag: &str) -> anyhow::Result<Vec<SocketAddr>> {
        if let Some(addr) = self.socket_addr() {
            return Ok(vec![addr]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("{flag} {self}: cannot resolve '{}'", self.host))?
            .collect();
        if addrs.is_empty() {
            bail!("{flag} {self}: '{}' has no address", self.host);
        }
        Ok(addrs)
    }

    /// The first address the host names.
    pub async fn resolve_one(&self, flag: &str) -> anyhow::Result<SocketAddr> {
        Ok(self.resolve(flag).await?[0])
    }

    /// A listener on the first of the host's addresses that can be bound.
    pub async fn bind(&self, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
        let mut last = None;
        for addr in self.resolve(flag).await? {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => return Ok(listener),
                Err(e) => last = Some((addr, e)),
            }
        }
        let (addr, e) = last.context("no address to bind")?;
        Err(e).with_context(|| format!("failed to bind {flag} {self} ({addr})"))
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;

    /// `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`, the name made of letters,
    /// digits, `-`, `_` and dots.
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("'{text}' is not HOST:PORT (e.g. localhost:7700)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("'{text}': '{port}' is not a port number"))?;
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(format!(
                "'{text}': '{host}' is neither an IP address nor a host name"
            ));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// Parses `capability,success_rate,free_load,specialization`.
/// Reads and validates a `--routing-table` file; a file over the size
/// bound is refused before it is read whole.
fn parse_routing_table(path: &str) -> Result<Arc<RoutingTable>, String> {
    let limits = ReactiveLimits::default();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut text = String::new();
    file.take(limits.max_table_bytes as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    RoutingTable::parse(&text, &limits)
        .map(Arc::new)
        .map_err(|e| format!("{path}: {e}"))
}

fn parse_weights(text: &str) -> Result<ScoreWeights, String> {
    let values = text
        .split(',')
        .map(|v| v.trim().parse::<f64>().map_err(|e| format!("'{v}': {e}")))
        .collect::<Result<Vec<f64>, String>>()?;
    let [capability, success_rate, free_load, specialization] = values[..] else {
        return Err(format!(
            "expected 4 comma-separated weights, got {}",
            values.len()
        ));
    };
    let weights = ScoreWeights {
        capability,
        success_rate,
        free_load,
        specialization,
    };
    weights.validate()?;
    Ok(weights)
}

/// Drops empty items, so `--capabilities ''` means "none given".
fn parse_client(text: &str) -> Result<ClientId, String> {
    ClientId::parse(text).map_err(|e| e.to_string())
}

/// `USER@HOST`, the client name when none is given: stable for one user on
/// one machine, so their tasks share one fair share across invocations.
pub fn default_client() -> ClientId {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "user".to_owned());
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    ClientId::sanitized(&format!("{user}@{host}"), "cli")
}

/// A duration as a whole number and a unit: `ms`, `s`, `m`, `h` or `d`
/// (`90m`, `24h`). One flag takes durations: a few lines rather than a
/// dependency.
/// `--publish TYPE=JSON`: an event type holds no `=`, so the first one
/// splits; the payload must be JSON.
fn parse_publish(text: &str) -> Result<(String, serde_json::Value), String> {
    let (event_type, payload) = text
        .split_once('=')
        .ok_or_else(|| format!("expected TYPE=JSON, got {text:?}"))?;
    let payload = serde_json::from_str(payload)
        .map_err(|e| format!("the payload of {event_type:?} is not JSON: {e}"))?;
    Ok((event_type.to_owned(), payload))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{text}' has no unit: write e.g. 30s, 90m, 24h or 7d"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' does not start with a whole number"))?;
    let seconds = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("'{text}' is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => Err(format!(
            "'{text}': unknown unit '{unit}' (ms, s, m, h or d)"
        )),
    }
}

fn non_empty(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[derive(Debug, Args)]
pub struct Endpoints {
    /// Coordinator gRPC URLs, comma-separated; tried in turn: the next one
    /// when one cannot be reached within --connect-timeout-ms, or does not
    /// answer within --request-timeout-ms (a submit only moves on when the
    /// first endpoint cannot have taken the task).
    #[arg(long, env = ENDPOINT_ENV, value_delimiter = ',', required = true)]
    pub endpoint: Vec<String>,
    /// Time for one endpoint to accept a connection and answer a health
    /// check, in ms; a frozen or overloaded node is passed over after it.
    #[arg(long, env = "AGENTMESH_CONNECT_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,
    /// Time for one endpoint to answer a request (a Watch: its first
    /// response), in ms. A submit covers the durable write of the task; a
    /// submit of a natural-language request waits at least 140 s, as the
    /// node may ask its model for the plan first.
    #[arg(long, env = "AGENTMESH_REQUEST_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// The bearer token sent to the endpoints, for clusters that require one.
    #[command(flatten)]
    pub token: TokenArgs,
    /// CA certificate (PEM) that the nodes' certificates chain to: speaks
    /// TLS to the endpoints and checks their host names. Without it the
    /// client speaks plaintext, which only a node started with --insecure
    /// answers.
    #[arg(long, env = "AGENTMESH_CA")]
    pub ca: Option<PathBuf>,
}

/// How a client protects its connections: TLS checked against `ca`, or
/// plaintext without one.
pub fn client_security(ca: Option<&Path>) -> anyhow::Result<Security> {
    Ok(match ca {
        None => Security::Plaintext,
        Some(ca) => Security::Client(ClientTls(tls::client_config(ca)?)),
    })
}

impl Endpoints {
    /// A client of these endpoints, with these deadlines, this TLS and
    /// this token.
    pub fn client(&self) -> anyhow::Result<crate::client::Client> {
        crate::client::Client::new(
            self.endpoint.clone(),
            self.deadlines(),
            client_security(self.ca.as_deref())?,
        )?
        .with_token(self.token.token()?)
    }

    pub fn deadlines(&self) -> crate::client::Deadlines {
        crate::client::Deadlines {
            connect: Duration::from_millis(self.connect_timeout_ms),
            request: Duration::from_millis(self.request_timeout_ms),
        }
    }
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Task file (JSON or YAML, `-` for stdin).
    pub task_file: PathBuf,
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// The name the coordinator counts this client's tasks under, for its
    /// per-client limits and fair dispatch: up to 64 ASCII letters, digits
    /// and `. _ - @ :` [default: USER@HOST].
    #[arg(long, env = "AGENTMESH_CLIENT", value_parser = parse_client)]
    pub client: Option<ClientId>,
    /// Waits for the task to end and prints its final record; exits 1 when
    /// it failed or was cancelled.
    #[arg(long)]
    pub wait: bool,
    /// Names this submit, so that sending it again (after a lost reply, to
    /// another endpoint, from a script that retries) returns the first
    /// task instead of starting a second: 1 to 128 ASCII letters, digits
    /// and `. _ - :`, unique per client. The CLI's own retries always reuse
    /// the key. [default: a new random key per run]
    #[arg(long, value_parser = parse_idempotency_key)]
    pub idempotency_key: Option<IdempotencyKey>,
}

/// Task states `task list --status` filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskStatusArg {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Only tasks in these states (repeat the flag or separate with commas).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub status: Vec<TaskStatusArg>,
    /// Only tasks of this pattern (coordinator_worker, peer_consensus,
    /// hierarchical, ...).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Only tasks whose name starts with this.
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// Only tasks submitted by this token subject. A submit token lists
    /// only its own tasks whatever this says.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only tasks created after this: a Unix time in milliseconds, or a
    /// duration ago (`90m`, `24h`, `7d`).
    #[arg(long, value_parser = parse_created_after)]
    pub created_after: Option<CreatedAfter>,
    /// Tasks per page (the server caps it at 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Starts at the page this token names: the `next page:` token a
    /// previous listing printed.
    #[arg(long, conflicts_with = "all")]
    pub page_token: Option<String>,
    /// Follows pages to the end, up to --max-tasks tasks.
    #[arg(long)]
    pub all: bool,
    /// With --all: stops after this many tasks, so a listing of a huge
    /// store stays bounded.
    #[arg(long, default_value_t = 10_000, requires = "all", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tasks: u64,
    /// Prints JSON (`{"tasks": [...], "next_page_token": ...}`) instead of
    /// a table.
    #[arg(long)]
    pub json: bool,
}

/// `--created-after`: a point in time, or a span back from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatedAfter {
    UnixMs(u64),
    Ago(Duration),
}

impl CreatedAfter {
    pub fn unix_ms(self, now_ms: u64) -> u64 {
        match self {
            CreatedAfter::UnixMs(ms) => ms,
            CreatedAfter::Ago(ago) => {
                now_ms.saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX))
            }
        }
    }
}

fn parse_created_after(text: &str) -> Result<CreatedAfter, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(CreatedAfter::UnixMs)
            .map_err(|_| format!("'{text}' is too large"));
    }
    parse_duration(text).map(CreatedAfter::Ago)
}

fn parse_idempotency_key(text: &str) -> Result<IdempotencyKey, String> {
    IdempotencyKey::parse(text)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the key must not be empty".to_owned())
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Lists tasks, newest first, with filters and paging.
    List(ListArgs),
    /// Prints the task's current record as JSON.
    Status(TaskIdArgs),
    /// Prints one JSON line per change until the task ends.
    Watch(TaskIdArgs),
    /// Cancels the task and its running subtasks.
    Cancel(CancelArgs),
}

#[derive(Debug, Args)]
pub struct TaskIdArgs {
    pub id: String,
    #[command(flatten)]
    pub endpoints: Endpoints,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    pub id: String,
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Recorded as the task's error.
    #[arg(long, default_value = "cancelled by user")]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Publishes an event; prints its id and the handlers it goes to.
    /// Needs a submit or admin token on a cluster with tokens.
    Publish(EventPublishArgs),
    /// Lists dead letters (deliveries that ran out of attempts), newest
    /// first. Needs a read or admin token on a cluster with tokens.
    DeadLetters(DeadLettersArgs),
}

#[derive(Debug, Args)]
pub struct EventPublishArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// The event type, e.g. `order.created`.
    #[arg(value_name = "TYPE")]
    pub event_type: String,
    /// The payload, any JSON value, e.g. '{"order": 7}'.
    #[arg(value_name = "JSON")]
    pub payload: String,
    /// The ordering key: events of one key reach each handler in order.
    #[arg(long, default_value = "")]
    pub key: String,
    /// Prints JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// At most this many (the node caps it at 1000); 0 for the node's
    /// default of 100.
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Prints JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Prints JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A number in `[0, 1]`, for thresholds and similarities.
fn unit_interval(s: &str) -> Result<f64, String> {
    let value: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be between 0 and 1, got {value}"))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn task_list_takes_a_time_or_a_span_and_submit_a_checked_key() {
        assert_eq!(
            parse_created_after("1795491266963"),
            Ok(CreatedAfter::UnixMs(1_795_491_266_963))
        );
        let ago = parse_created_after("90m").unwrap();
        assert_eq!(ago, CreatedAfter::Ago(Duration::from_secs(5_400)));
        assert_eq!(ago.unix_ms(10_000_000), 10_000_000 - 5_400_000);
        assert_eq!(CreatedAfter::Ago(Duration::from_secs(60)).unix_ms(5), 0);
        assert!(parse_created_after("yesterday").is_err());
        let cli = Cli::try_parse_from([
            "agentmesh",
            "task",
            "list",
            "--status",
            "failed,cancelled",
            "--limit",
            "2",
            "--all",
            "--endpoint",
            "127.0.0.1:7700",
        ])
        .unwrap();
        let Command::Task {
            command: TaskCommand::List(args),
        } = cli.command
        else {
            panic!("not task list");
        };
        assert_eq!(
            args.status,
            [TaskStatusArg::Failed, TaskStatusArg::Cancelled]
        );
        assert_eq!((args.limit, args.all, args.max_tasks), (2, true, 10_000));
        let list = ["agentmesh", "task", "list", "--endpoint", "e:1"];
        assert!(Cli::try_parse_from([&list[..], &["--limit", "0"]].concat()).is_err());
        assert!(
            Cli::try_parse_from([
                "agentmesh",
                "submit",
                "t.yaml",
                "--endpoint",
                "e:1",
                "--idempotency-key",
                "a/b"
            ])
            .is_err()
        );
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "24", "h", "1.5h", "3w", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_flags_map_onto_the_config() {
        let cli = Cli::try_parse_from([
            "agentmesh",
            "node",
            "--role",
            "worker",
            "--etcd",
            "http://a:1,http://b:2",
            "--listen",
            "127.0.0.1:0",
            "--capabilities",
            "math.eval,sleep",
            "--max-concurrency",
            "8",
            "--score-weights",
            "1,0,0,0",
        ])
        .unwrap();
        let Command::Node(args) = cli.command else {
            panic!("expected node")
        };
        assert_eq!(args.etcd.endpoints, vec!["http://a:1", "http://b:2"]);
        let config = args.to_config();
        assert_eq!(config.capabilities, vec!["math.eval", "sleep"]);
        assert_eq!(config.max_concurrency, 8);
        assert_eq!(config.coordinator.weights.capability, 1.0);
        assert_eq!(config.coordinator.weights.success_rate, 0.0);
    }

    #[test]
    fn max_dead_letters_maps_onto_the_event_config() {
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "agentmesh",
                "node",
                "--role",
                "coordinator",
                "--etcd",
                "http://a:1",
            ];
            argv.extend_from_slice(extra);
            let Command::Node(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("expected node")
            };
            args.to_config().coordinator.events.max_dead_letters
        };
        assert_eq!(parse(&[]), 10_000);
        assert_eq!(parse(&["--max-dead-letters", "1"]), 1);
        assert!(
            Cli::try_parse_from([
                "agentmesh",
                "node",
                "--role",
                "coordinator",
                "--etcd",
                "http://a:1",
                "--max-dead-letters",
                "0"
            ])
            .is_err()
        );
    }

    #[test]
    fn local_publishes_events_to_its_workers_handlers() {
        let cli = Cli::try_parse_from([
            "agentmesh",
            "local",
            "--event-handler",
            "order.created=task:on-order.yaml",
            "--publish",
            r#"order.created={"items": [3, 4]}"#,
            "--publish-key",
            "o-7",
        ])
        .unwrap();
        let Command::Local(args) = cli.command else {
            panic!("expected local")
        };
        assert_eq!(
            args.publish,
            [(
                "order.created".to_owned(),
                serde_json::json!({"items": [3, 4]})
            )]
        );
        assert_eq!(args.publish_key, "o-7");
        assert_eq!(args.handler_timeout, Duration::from_secs(60));
        assert_eq!(args.to_config().event_handlers, args.event_handlers);
        assert_eq!(args.event_handlers.len(), 1);
        for refused in [
            vec![
                "--event-handler",
                "a=tool:math.eval",
                "--publish",
                "a=not json",
            ],
            vec![
                "--event-handler",
                "a=tool:math.eval",
                "--publish",
                "no-equals",
            ],
            // Nothing would handle it.
            vec!["--publish", "a={}"],
            // A task file or events, not both.
            vec![
                "--event-handler",
                "a=tool:math.eval",
                "--publish",
                "a={}",
                "task.yaml",
            ],
        ] {
            let mut argv = vec!["agentmesh", "local"];
            argv.extend(refused.iter().copied());
            assert!(Cli::try_parse_from(&argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn connection_flags_map_onto_the_config_and_the_client_deadlines() {
        let cli = Cli::try_parse_from([
            "agentmesh",
            "node",
            "--role",
            "coordinator",
            "--etcd",
            "http://a:1",
            "--max-connections",
            "16",
            "--idle-timeout",
            "7",
            "--max-watch-streams",
            "3",
        ])
        .unwrap();
        let Command::Node(args) = cli.command else {
            panic!("expected node")
        };
        let connections = args.to_config().connections;
        assert_eq!(connections.max_connections, 16);
        assert_eq!(connections.idle_timeout, Duration::from_secs(7));
        assert_eq!(connections.max_watch_streams, 3);

        let cli = Cli::try_parse_from([
            "agentmesh",
            "submit",
            "--endpoint",
            "http://a:1,http://b:2",
            "--connect-timeout-ms",
            "250",
            "task.yaml",
        ])
        .unwrap();
        let Command::Submit(args) = cli.command else {
            panic!("expected submit")
        };
        let deadlines = args.endpoints.deadlines();
        assert_eq!(deadlines.connect, Duration::from_millis(250));
        assert_eq!(deadlines.request, Duration::from_secs(60));
        assert!(
            Cli::try_parse_from([
                "agentmesh",
                "agents",
                "--endpoint",
                "http://a:1",
                "--request-timeout-ms",
                "0",
            ])
            .is_err()
        );
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() {
        let node = [
            "agentmesh",
            "node",
            "--role",
            "worker",
            "--etcd",
            "http://a:1",
        ];
        let Command::Node(args) = Cli::try_parse_from(node).unwrap().command else {
            panic!("expected node")
        };
        assert_eq!(args.to_config().metrics_listen, None);
        let with = [&node[..], &["--metrics-listen", "127.0.0.1:9464"]].concat();
        let Command::Node(args) = Cli::try_parse_from(with).unwrap().command else {
            panic!("expected node")
        };
        assert_eq!(
            args.to_config().metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        let Command::Local(args) =
            Cli::try_parse_from(["agentmesh", "local", "--metrics-listen", "[::1]:0"])
                .unwrap()
                .command
        else {
            panic!("expected local")
        };
        assert_eq!(
            args.to_config().metrics_listen,
            Some("[::1]:0".parse().unwrap())
        );
        assert!(
            Cli::try_parse_from(["agentmesh", "local", "--metrics-listen", "localhost"]).is_err()
        );
    }

    #[test]
    fn malformed_weights_are_refused() {
        for bad in ["1,2,3", "a,0,0,0", "-1,0,0,0"] {
            let parsed = Cli::try_parse_from([
                "agentmesh",
                "node",
                "--role",
                "worker",
                "--etcd",
                "http://a:1",
                "--score-weights",
                bad,
            ]);
            assert!(parsed.is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn http_allow_entries_are_parsed_by_the_flag() {
        let cli = Cli::try_parse_from([
            "agentmesh",
            "local",
            "--http-allow",
            "Example.com,,api.example.com:8443,https://secure.example.com,",
        ])
        .unwrap();
        let Command::Local(args) = cli.command else {
            panic!("expected local")
        };
        let config = args.to_config();
        let allow: Vec<String> = config.http_allow.iter().map(ToString::to_string).collect();
        assert_eq!(
            allow,
            vec![
                "example.com",
                "api.example.com:8443",
                "https://secure.example.com"
            ]
        );
        assert!(
            !config.http_allow_private,
            "private addresses are refused by default"
        );

        let err = Cli::try_parse_from(["agentmesh", "local", "--http-allow", "ftp://example.com"])
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "http allow-list entry 'ftp://example.com' has a scheme other than http or https"
            ),
            "{err}"
        );

        let cli = Cli::try_parse_from([
            "agentmesh",
            "node",
            "--role",
            "worker",
            "--etcd",
            "http://a:1",
            "--http-allow",
            "localhost:8080",
            "--http-allow-private",
        ])
        .unwrap();
        let Command::Node(args) = cli.command else {
            panic!("expected node")
        };
        assert!(args.to_config().http_allow_private);
    }

    #[test]
    fn faults_are_refused_unless_allowed() {
        let node = |extra: &[&str]| {
            let mut argv = vec![
                "agentmesh",
                "node",
                "--role",
                "peer",
                "--etcd",
                "http://a:1",
            ];
            argv.extend_from_slice(extra);
            let Command::Node(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("expected node")
            };
            args
        };
        assert_eq!(node(&[]).fault_injection_refused(false), None);
        let faulty = node(&["--fault", "wrong-result:1", "--fault", "slow:5"]);
        assert_eq!(
            faulty.fault_injection_refused(false).unwrap(),
            "--fault wrong-result:1 --fault slow:5 refused: fault injection makes this node \
             misbehave on purpose, for tests and demonstrations only; add \
             --allow-fault-injection to start it anyway"
        );
        assert_eq!(faulty.fault_injection_refused(true), None, "a test build");
        let allowed = node(&["--fault", "fail:1", "--allow-fault-injection"]);
        assert_eq!(allowed.fault_injection_refused(false), None);
        assert_eq!(allowed.to_config().faults.0.len(), 1);
    }

    #[test]
    fn client_names_and_per_client_limits_are_flags() {
        let cli = Cli::try_parse_from([
            "agentmesh",
            "submit",
            "task.yaml",
            "--endpoint",
            "http://a:1",
            "--client",
            "team-a@ci",
        ])
        .unwrap();
        let Command::Submit(args) = cli.command else {
            panic!("expected submit")
        };
        assert_eq!(args.client.unwrap().as_str(), "team-a@ci");
        let bad = Cli::try_parse_from([
            "agentmesh",
            "submit",
            "task.yaml",
            "--endpoint",
            "http://a:1",
            "--client",
            "no spaces",
        ]);
        assert!(bad.is_err());
        assert!(ClientId::parse(default_client().as_str()).is_ok());

        let cli = Cli::try_parse_from([
            "agentmesh",
            "node",
            "--role",
            "coordinator",
            "--etcd",
            "http://a:1",
            "--max-queued-subtasks-per-client",
            "100",
            "--max-active-tasks-per-client",
            "7",
        ])
        .unwrap();
        let Command::Node(args) = cli.command else {
            panic!("expected node")
        };
        let limits = args.to_config().coordinator.client_limits;
        assert_eq!(
            (limits.max_queued_subtasks, limits.max_active_tasks),
            (100, 7)
        );
    }

    fn node_args(extra: &[&str]) -> Result<Box<NodeArgs>, clap::Error> {
        let mut argv = vec!["agentmesh", "node", "--role", "worker"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Node(args) => args,
            _ => panic!("expected node"),
        })
    }

    #[test]
    fn etcd_access_flags_map_onto_the_etcd_options() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let password = dir.path().join("worker-1.password");
        std::fs::write(&ca, "not checked until the handshake").unwrap();
        std::fs::write(&password, "s3cret-pw\n").unwrap();
        let (ca, password) = (ca.to_str().unwrap(), password.to_str().unwrap());
        let args = node_args(&[
            "--etcd",
            "https://a:2379",
            "--etcd-ca",
            ca,
            "--etcd-user",
            "worker-1",
            "--etcd-password-file",
            password,
            "--lease-ttl",
            "7",
        ])
        .unwrap();
        let options = args.etcd_options().unwrap();
        assert!(options.tls.is_some());
        assert_eq!(options.credentials.as_ref().unwrap().user, "worker-1");
        assert_eq!(options.lease_ttl, Duration::from_secs(7));
        let printed = format!("{options:?} {args:?}");
        assert!(!printed.contains("s3cret-pw"), "{printed}");

        // https:// without a CA, and a CA over http://, are refused.
        let err = node_args(&["--etcd", "https://a:2379"])
            .unwrap()
            .etcd_options()
            .unwrap_err();
        assert!(err.to_string().contains("--etcd-ca"), "{err}");
        let err = node_args(&["--etcd", "http://a:2379", "--etcd-ca", ca])
            .unwrap()
            .etcd_options()
            .unwrap_err();
        assert!(err.to_string().contains("plain http://"), "{err}");
        // A user needs its password file, a certificate its key and CA.
        assert!(node_args(&["--etcd", "http://a:1", "--etcd-user", "w"]).is_err());
        assert!(node_args(&["--etcd", "https://a:1", "--etcd-ca", ca, "--etcd-cert", ca]).is_err());
        // An empty password file is refused, naming the file only.
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let empty = dir.path().join("empty");
        let err = node_args(&[
            "--etcd",
            "http://a:1",
            "--etcd-user",
            "w",
            "--etcd-password-file",
            empty.to_str().unwrap(),
        ])
        .unwrap()
        .etcd_options()
        .unwrap_err();
        assert!(err.to_string().contains("holds an empty password"), "{err}");
    }

    #[test]
    fn etcd_setup_takes_one_user_per_node() {
        let cli = Cli::try_parse_from([
            "agentmesh",
            "etcd-setup",
            "--etcd",
            "https://a:2379",
            "--etcd-ca",
            "ca.pem",
            "--root-password-file",
            "root.pw",
            "--node",
            "coordinator-1:coordinator:/run/c1:pw",
            "--node",
            "worker-1:Worker:w1.pw",
        ])
        .unwrap();
        let Command::EtcdSetup(args) = cli.command else {
            panic!("expected etcd-setup")
        };
        let nodes: Vec<(&str, Role, &str)> = args
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.role, n.password_file.to_str().unwrap()))
            .collect();
        assert_eq!(
            nodes,
            vec![
                ("coordinator-1", Role::Coordinator, "/run/c1:pw"),
                ("worker-1", Role::Worker, "w1.pw"),
            ]
        );
        for bad in [
            "worker-1",
            "worker-1:worker",
            "w:chief:f",
            ":worker:f",
            "w:worker:",
        ] {
            let parsed = Cli::try_parse_from([
                "agentmesh",
                "etcd-setup",
                "--etcd",
                "http://a:1",
                "--root-password-file",
                "r",
                "--node",
                bad,
            ]);
            assert!(parsed.is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn a_client_token_comes_from_its_file_before_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "amt_from_file\n").unwrap();
        assert_eq!(
            token_from(Some(&file), Some("amt_env".into())).unwrap(),
            Some("amt_from_file".to_owned())
        );
        assert_eq!(
            token_from(None, Some(" amt_env ".into())).unwrap(),
            Some("amt_env".to_owned())
        );
        assert_eq!(token_from(None, Some(String::new())).unwrap(), None);
        assert_eq!(token_from(None, None).unwrap(), None);
        std::fs::write(&file, "amt_one\namt_two\n").unwrap();
        let error = token_from(Some(&file), None).unwrap_err().to_string();
        assert!(error.contains("more than one line"), "{error}");
        assert!(!error.contains("amt_one"), "{error}");
        std::fs::write(&file, "  \n").unwrap();
        assert!(token_from(Some(&file), None).is_err());
        assert!(token_from(Some(&dir.path().join("missing")), None).is_err());

        let cli = Cli::try_parse_from([
            "agentmesh",
            "node",
            "--role",
            "coordinator",
            "--etcd",
            "http://a:1",
            "--token-file",
            "/etc/agentmesh/tokens",
        ])
        .unwrap();
        let Command::Node(args) = cli.command else {
            panic!("expected node")
        };
        assert_eq!(
            args.tokens_file.as_deref(),
            Some(Path::new("/etc/agentmesh/tokens"))
        );
        let cli = Cli::try_parse_from([
            "agentmesh",
            "token",
            "new",
            "--role",
            "submit",
            "--subject",
            "alice",
        ])
        .unwrap();
        let Command::Token {
            command: TokenCommand::New(args),
        } = cli.command
        else {
            panic!("expected token new")
        };
        assert_eq!(ClientRole::from(args.role), ClientRole::Submit);
        assert_eq!(args.subject.as_str(), "alice");
    }

    #[test]
    fn zero_concurrency_is_refused_by_the_parser() {
        let err =
            Cli::try_parse_from(["agentmesh", "local", "--max-concurrency", "0"]).unwrap_err();
        assert!(err.to_string().contains("--max-concurrency"), "{err}");
    }
}
