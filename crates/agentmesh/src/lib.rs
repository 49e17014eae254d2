//! The `agentmesh` command line: parse flags, set up logging, run one
//! command. Everything a command does lives in `agentmesh-runtime`; this
//! crate only wires it up and reads top to bottom.
//!
//! It is a library too, so that a program of your own can be the whole
//! `agentmesh` command line with tools of your own added to every node it
//! starts (`node`, `local`, `bench`):
//!
//! ```no_run
//! use agentmesh::Agentmesh;
//! # use agentmesh::tools::{Tool, ToolError};
//! # struct Reverse;
//! # #[agentmesh::tools::async_trait]
//! # impl Tool for Reverse {
//! #     fn name(&self) -> &str { "text.reverse" }
//! #     async fn call(&self, input: serde_json::Value) -> Result<serde_json::Value, ToolError> {
//! #         Ok(input)
//! #     }
//! # }
//!
//! fn main() -> std::process::ExitCode {
//!     Agentmesh::new().tool(Reverse).main()
//! }
//! ```
//!
//! `examples/custom-tool/` is such a program.

mod bench;
mod certs;
mod cli;
mod client;
mod config;

/// The tool interface, for programs that add tools of their own.
pub mod tools {
    pub use agentmesh_runtime::tools::{Tool, ToolBox, ToolError, async_trait};
}

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use agentmesh_core::events::EventDraft;
use agentmesh_core::task::listing::IdempotencyKey;
use agentmesh_proto::v1 as pb;
use agentmesh_registry::{EtcdRegistry, Registry};
use agentmesh_runtime::api::auth::{self, TokenStore};
use agentmesh_runtime::api::request::PLANNING_SUBMIT_TIMEOUT;
use agentmesh_runtime::convert;
use agentmesh_runtime::node::NodeBuilder;
use agentmesh_runtime::node::local::LocalCluster;
use agentmesh_runtime::telemetry::{self, TraceParent};
use agentmesh_runtime::tools::{Tool, ToolBox};
use anyhow::{Context, bail};
use clap::CommandFactory;
use tracing::{Instrument, error, info, warn};

use crate::bench::{BenchOptions, EmbeddedTarget, RemoteTarget, Target};
use crate::cli::{
    AgentsArgs, BenchArgs, Cli, Command, EtcdSetupArgs, ListArgs, LocalArgs, NodeArgs, SubmitArgs,
    TaskCommand, TaskStatusArg, TokenCommand,
};

/// The example `agentmesh local` runs when no task file is given.
const BUILTIN_EXAMPLE: &str = include_str!("../../../examples/average-word-count.yaml");

/// Exit code of a task that failed or was cancelled.
const TASK_FAILED: u8 = 1;
/// Exit code of a refused request or bad input.
const REFUSED: u8 = 2;

/// The `agentmesh` command line, with the tools it adds to every node it
/// starts.
#[derive(Debug, Default)]
pub struct Agentmesh {
    tools: ToolBox,
}

impl Agentmesh {
    /// The stock command line: built-in tools only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool to every node this command line starts; its name is the
    /// capability it offers.
    pub fn tool(mut self, tool: impl Tool) -> Self {
        self.tools = self.tools.with(tool);
        self
    }

    /// Parses the process's arguments, runs the command, and returns the
    /// exit code: 0 success, 1 the task failed or was cancelled, 2 the
    /// request or the input was refused.
    pub fn main(self) -> ExitCode {
        main(self.tools)
    }
}

fn main(tools: ToolBox) -> ExitCode {
    // Flags, AGENTMESH_* variables, then the --config file under both.
    let mut cli = match config::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(REFUSED);
        }
    };
    if let Command::Completion { shell } = cli.command {
        completion(shell);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(REFUSED);
        }
    };
    // The span exporter sends its batches from this runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        match init_telemetry(&mut cli) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(REFUSED);
            }
        }
    };
    let outcome = runtime.block_on(async {
        let span = command_span(&cli);
        if cli.observe.verbose {
            print_trace_id(&span);
        }
        let outcome = run(cli, &tools).instrument(span).await;
        telemetry.shutdown().await;
        outcome
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(REFUSED)
        }
    }
}

/// Logs go to stderr so stdout carries only results. Nodes log at `info`,
/// client commands at `warn`; `RUST_LOG` overrides both. Spans are
/// exported only with an OTLP endpoint; a node's spans carry its agent id
/// as `service.instance.id`, so a node started without `--id` is given
/// its generated id here.
fn init_telemetry(cli: &mut Cli) -> anyhow::Result<telemetry::Telemetry> {
    let observe = &cli.observe;
    let given = match observe.traceparent.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(TraceParent::parse(text).with_context(|| {
            format!(
                "--traceparent/TRACEPARENT {text:?} is not a W3C traceparent \
                 (00-<32 hex trace id>-<16 hex span id>-<2 hex flags>)"
            )
        })?),
    };
    let (server, instance_id) = match &mut cli.command {
        Command::Node(args) => {
            let id = args
                .id
                .get_or_insert_with(|| {
                    agentmesh_runtime::node::agents::generate_id(args.role.into()).to_string()
                })
                .clone();
            (true, Some(id))
        }
        Command::Local(_) => (true, Some("local".to_owned())),
        Command::Bench(_) => (true, Some("bench".to_owned())),
        _ => (false, None),
    };
    let node = matches!(cli.command, Command::Node(_));
    let observe = &cli.observe;
    let telemetry = telemetry::init(telemetry::TelemetryOptions {
        log_format: observe.log_format.into(),
        default_filter: if node { "info" } else { "warn" }.to_owned(),
        otlp_endpoint: observe.otlp_endpoint.clone(),
        service_name: observe
            .otel_service_name
            .clone()
            .unwrap_or_else(|| if server { "agentmesh" } else { "agentmesh-cli" }.to_owned()),
        instance_id,
        sdk_disabled: observe.otel_sdk_disabled,
    })?;
    if let Some(given) = given {
        let _ = client::GIVEN_TRACE.set(given);
    }
    Ok(telemetry)
}

/// The span of a command that makes requests of its own (`submit`,
/// `task`, `agents`, `local`), continuing `--traceparent` when given; none
/// for a node or a benchmark, whose spans are per request.
fn command_span(cli: &Cli) -> tracing::Span {
    let span = match &cli.command {
        Command::Submit(_) => agentmesh_runtime::span!("agentmesh submit"),
        Command::Task { .. } => agentmesh_runtime::span!("agentmesh task"),
        Command::Agents(_) => agentmesh_runtime::span!("agentmesh agents"),
        Command::Local(_) => agentmesh_runtime::span!("agentmesh local"),
        _ => tracing::Span::none(),
    };
    if let Some(given) = client::GIVEN_TRACE.get() {
        given.adopt(&span);
    }
    span
}

/// `--verbose`: the trace this command's requests belong to.
fn print_trace_id(span: &tracing::Span) {
    let trace = Some(TraceParent::of(span))
        .filter(TraceParent::is_some)
        .or_else(|| client::GIVEN_TRACE.get().cloned());
    match trace.and_then(|trace| trace.trace_id()) {
        Some(id) => eprintln!("trace id: {id}"),
        None => eprintln!("trace id: none (tracing is off: no --otlp-endpoint or --traceparent)"),
    }
}

async fn run(cli: Cli, tools: &ToolBox) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Local(args) => local(args, tools).await,
        Command::Node(args) => node(*args, tools).await,
        Command::Submit(args) => submit(args).await,
        Command::Task { command } => task(command).await,
        Command::Agents(args) => agents(args).await,
        Command::Event { command } => event(command).await,
        Command::Bench(args) => bench(args, tools).await,
        Command::Certs(args) => certs(&args),
        Command::Token { command } => token(command),
        Command::EtcdSetup(args) => etcd_setup(args).await,
        Command::Completion { shell } => {
            completion(shell);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `agentmesh completion SHELL`: the completion script on stdout.
fn completion(shell: clap_complete::Shell) {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "agentmesh",
        &mut std::io::stdout(),
    );
}

fn certs(args: &cli::CertsArgs) -> anyhow::Result<ExitCode> {
    let issued = certs::issue(&args.dir, &args.name, &args.agents, &args.hosts, args.days)?;
    if issued.new_ca {
        println!("made a development CA: {}", issued.ca.display());
    } else {
        println!("reused the CA: {}", issued.ca.display());
    }
    println!(
        "issued {} (agents {}; hosts {}; {} days)\n\nstart nodes with:\n  \
         --tls-ca {} --tls-cert {} --tls-key {}\nand clients with:\n  --ca {}",
        issued.cert.display(),
        args.agents.join(","),
        args.hosts.join(","),
        args.days,
        issued.ca.display(),
        issued.cert.display(),
        issued.key.display(),
        issued.ca.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `agentmesh token new` and `agentmesh token hash`.
fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::New(args) => {
            let (token, hash) = auth::new_token()?;
            let line = auth::tokens_file_line(args.role.into(), &args.subject, &hash);
            eprintln!(
                "a {} token for '{}'; the token is shown this once (nodes keep only its hash):",
                agentmesh_core::access::ClientRole::from(args.role),
                args.subject
            );
            println!("{token}");
            eprintln!("add this line to the nodes' tokens file (--token-file):");
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Hash => {
            let mut text = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut text)
                .context("failed to read the token from stdin")?;
            let token = text.trim();
            if token.is_empty() {
                bail!("no token on stdin");
            }
            println!("{}", auth::token_hash(token));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn etcd_setup(args: EtcdSetupArgs) -> anyhow::Result<ExitCode> {
    let (options, root_password, users) = args.load()?;
    let report = agentmesh_registry::etcd::rbac::setup(&options, &root_password, &users)
        .await
        .map_err(|e| args.etcd.explain(e))
        .context("etcd-setup failed")?;
    for user in &report.users {
        println!("etcd user '{user}' ready");
    }
    println!(
        "{}",
        if report.enabled_auth {
            "etcd authentication enabled"
        } else {
            "etcd authentication was already on"
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn bench(args: BenchArgs, tools: &ToolBox) -> anyhow::Result<ExitCode> {
    let options = BenchOptions {
        shape: args.shape,
        tasks: args.tasks,
        concurrency: args.concurrency,
        warmup: args.warmup(),
        time_limit: std::time::Duration::from_secs(args.time_limit),
        rate: args.rate,
        progress: !args.no_progress && bench::stderr_is_terminal(),
    };
    let report = match args.endpoint() {
        Some(endpoint) => {
            let target = RemoteTarget::connect(
                endpoint,
                args.connections as usize,
                &cli::client_security(args.ca.as_deref())?,
                args.token.token()?,
            )
            .await?;
            let target: Arc<dyn Target> = Arc::new(target);
            bench::run(target, &options).await
        }
        None => {
            let cluster = NodeBuilder::new(args.to_config())
                .tools(tools)
                .local(usize::from(args.workers))
                .await
                .context("failed to start the embedded cluster")?;
            let description = format!(
                "embedded cluster, in-memory registry, {} worker(s)",
                args.workers
            );
            let target = Arc::new(EmbeddedTarget::new(cluster, description));
            let report = bench::run(target.clone(), &options).await;
            if let Ok(target) = Arc::try_unwrap(target) {
                target.shutdown().await;
            }
            report
        }
    };
    // One line, so scripts can take the last line of stdout as the report.
    println!("{}", serde_json::to_string(&report)?);
    Ok(if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(TASK_FAILED)
    })
}

async fn local(args: LocalArgs, tools: &ToolBox) -> anyhow::Result<ExitCode> {
    let document = match &args.task_file {
        Some(path) => read_task_file(path)?,
        None => BUILTIN_EXAMPLE.to_owned(),
    };
    let mut config = args.to_config();
    config.llm = args.llm.to_config()?;
    if let Some(metrics) = &args.metrics_listen {
        config.metrics_listen = Some(metrics.resolve_one("--metrics-listen").await?);
    }
    let cluster = NodeBuilder::new(config)
        .tools(tools)
        .local(usize::from(args.workers))
        .await
        .context("failed to start the local cluster")?;
    if !args.publish.is_empty() {
        return local_events(&args, cluster).await;
    }
    let outcome = tokio::select! {
        outcome = cluster.run(&document) => outcome,
        reason = cluster.failed() => anyhow::bail!("the local cluster failed: {reason}"),
    };
    cluster.shutdown().await;
    let record = convert::task_record(&outcome.map_err(|e| anyhow::anyhow!(e))?);
    print_json(&convert::task_json(&record))?;
    Ok(exit_for(&record))
}

/// `local --publish`: the events go through the embedded coordinator's
/// router to the workers' handlers; prints each event's deliveries and the
/// tasks its handlers ran once all have ended.
async fn local_events(args: &LocalArgs, cluster: LocalCluster) -> anyhow::Result<ExitCode> {
    let drafts = args
        .publish
        .iter()
        .map(|(event_type, payload)| EventDraft {
            event_type: event_type.clone(),
            key: args.publish_key.clone(),
            payload: payload.clone(),
        })
        .collect();
    let handled = tokio::select! {
        handled = tokio::time::timeout(
            args.handler_timeout,
            cluster.handle_events(drafts, &args.event_handlers),
        ) => handled,
        reason = cluster.failed() => anyhow::bail!("the local cluster failed: {reason}"),
    };
    cluster.shutdown().await;
    let handled = match handled {
        Ok(handled) => handled.map_err(|e| anyhow::anyhow!(e))?,
        Err(_) => bail!(
            "the event handlers did not end within {:?} (--handler-timeout)",
            args.handler_timeout
        ),
    };
    let events: Vec<serde_json::Value> = handled
        .events
        .iter()
        .map(|event| {
            let deliveries: Vec<serde_json::Value> = event
                .deliveries
                .iter()
                .map(|(subscription, dead)| match dead {
                    None => serde_json::json!({"subscription": subscription, "ok": true}),
                    Some(dead) => serde_json::json!({
                        "subscription": subscription,
                        "ok": false,
                        "attempts": dead.attempts,
                        "error": dead.last_error,
                    }),
                })
                .collect();
            serde_json::json!({
                "event_id": event.event_id,
                "type": event.draft.event_type,
                "key": event.draft.key,
                "deliveries": deliveries,
            })
        })
        .collect();
    let tasks: Vec<serde_json::Value> = handled
        .tasks
        .iter()
        .map(|task| convert::task_json(&convert::task_record(task)))
        .collect();
    print_json(&serde_json::json!({"events": events, "tasks": tasks}))?;
    Ok(if handled.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(TASK_FAILED)
    })
}

async fn node(args: NodeArgs, tools: &ToolBox) -> anyhow::Result<ExitCode> {
    if let Some(refused) = args.fault_injection_refused(cli::FAULT_INJECTION_BUILT_IN) {
        bail!("{refused}");
    }
    let mut config = args.to_config();
    config.llm = args.llm.to_config()?;
    config.mailbox.security = args.security()?;
    if let Some(metrics) = &args.metrics_listen {
        config.metrics_listen = Some(metrics.resolve_one("--metrics-listen").await?);
    }
    if args.insecure {
        warn!(
            listen = %args.listen(),
            "running INSECURE (--insecure): no TLS, no authentication of nodes; anyone who \
             can reach this node can send its agents envelopes"
        );
    }
    // Loaded before anything binds or registers: a node must not serve
    // with tokens other than those meant.
    config.tokens = args
        .tokens_file
        .as_deref()
        .map(TokenStore::load)
        .transpose()
        .context("failed to load the client tokens (--token-file)")?;
    if config.tokens.is_none() && !args.insecure {
        bail!(
            "a node needs client tokens: --token-file (make tokens with `agentmesh token new`), \
             or --insecure for a development cluster whose client API is open to everyone who \
             can reach it"
        );
    }
    if config.tokens.is_none() {
        warn!("no --token-file: the client API is open to anyone who can reach --listen");
    }
    let options = args
        .etcd_options()?
        .with_observer(agentmesh_runtime::metrics::etcd_observer());
    info!(
        role = ?args.role,
        etcd = ?args.etcd.endpoints,
        tls = options.tls.is_some(),
        client_certificate = options.tls.as_ref().is_some_and(|t| t.has_client_identity()),
        user = options.credentials.as_ref().map(|c| c.user.as_str()),
        "connecting to etcd"
    );
    if options.credentials.is_some() && options.tls.is_none() {
        warn!("the etcd password is sent unencrypted: use https:// etcd URLs with --etcd-ca");
    }
    // One line, with the endpoints and what to check, after the retries
    // of --etcd-connect-timeout.
    let registry: Arc<dyn Registry> = Arc::new(
        EtcdRegistry::connect(options)
            .await
            .map_err(|e| args.etcd.explain(e))?,
    );
    let listener = args.listen().bind("--listen").await?;
    config.listen = listener
        .local_addr()
        .context("the address --listen bound")?;
    let drain_timeout = config.drain_timeout;
    let started = NodeBuilder::new(config)
        .tools(tools)
        .registry(registry.clone())
        .serve(listener)
        .await;
    let node = match started {
        Ok(node) => node,
        Err(e) => {
            // Revoke the lease now rather than leave it to run out: a node
            // refused at startup (a live duplicate --id) holds nothing.
            registry.shutdown().await;
            return Err(e).context("failed to start the node");
        }
    };
    // Scripts and tests wait for this line; it is printed once, after bind.
    println!("listening on {}", node.addr());
    let exit = tokio::select! {
        () = wait_for_shutdown_signal() => {
            info!("shutdown signal received");
            ExitCode::SUCCESS
        }
        reason = node.failed() => {
            error!(%reason, "stopping the node");
            ExitCode::FAILURE
        }
    };
    node.shutdown(drain_timeout)
        .await
        .context("unclean shutdown")?;
    Ok(exit)
}

async fn wait_for_shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let document = read_task_file(&args.task_file)?;
    let name = args.client.unwrap_or_else(cli::default_client);
    let mut endpoints = args.endpoints;
    if plans_at_submit(&document) {
        // The node may ask its model for the plan before it answers.
        let planning = PLANNING_SUBMIT_TIMEOUT.as_millis() as u64;
        endpoints.request_timeout_ms = endpoints.request_timeout_ms.max(planning);
    }
    let client = endpoints.client()?.named(name);
    // A key per run by default: the client's own retries (another
    // endpoint after a lost reply, back-pressure) then create one task.
    let key = match args.idempotency_key {
        Some(key) => key,
        None => IdempotencyKey::parse(&uuid::Uuid::new_v4().to_string())?
            .context("a generated idempotency key")?,
    };
    let task_id = client.submit(document, Some(&key)).await?;
    if !args.wait {
        println!("{task_id}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("submitted task {task_id}, waiting for it to finish");
    let record = client.watch(&task_id, |_| {}).await?;
    print_json(&convert::task_json(&record))?;
    Ok(exit_for(&record))
}

/// Whether `document` is a natural-language request that a node
/// decomposes at submit (a file that does not parse is the node's to
/// refuse, with its own message).
fn plans_at_submit(document: &str) -> bool {
    agentmesh_core::task::validate::parse(document, &Default::default())
        .is_ok_and(|file| agentmesh_core::request::is_request(&file))
}

async fn task(command: TaskCommand) -> anyhow::Result<ExitCode> {
    match command {
        TaskCommand::List(args) => list_tasks(args).await,
        TaskCommand::Status(args) => {
            let record = args.endpoints.client()?.get(&args.id).await?;
            print_json(&convert::task_json(&record))?;
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Watch(args) => {
            let client = args.endpoints.client()?;
            let record = client
                .watch(&args.id, |record| {
                    println!("{}", convert::task_json(record))
                })
                .await?;
            Ok(exit_for(&record))
        }
        TaskCommand::Cancel(args) => {
            let client = args.endpoints.client()?;
            let status = client.cancel(&args.id, &args.reason).await?;
            println!("{}", convert::status_name(status));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `task list`: one page, or with `--all` every page up to `--max-tasks`.
async fn list_tasks(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = args.endpoints.client()?;
    let now = now_ms();
    let mut request = pb::ListTasksRequest {
        status: args
            .status
            .iter()
            .map(|s| {
                i32::from(match s {
                    TaskStatusArg::Pending => pb::TaskStatus::Pending,
                    TaskStatusArg::Running => pb::TaskStatus::Running,
                    TaskStatusArg::Completed => pb::TaskStatus::Completed,
                    TaskStatusArg::Failed => pb::TaskStatus::Failed,
                    TaskStatusArg::Cancelled => pb::TaskStatus::Cancelled,
                })
            })
            .collect(),
        pattern: args.pattern.clone().unwrap_or_default(),
        name_prefix: args.name_prefix.clone().unwrap_or_default(),
        owner: args.owner.clone().unwrap_or_default(),
        created_after_unix_ms: args.created_after.map_or(0, |c| c.unix_ms(now)),
        page_size: args.limit,
        page_token: args.page_token.clone().unwrap_or_default(),
    };
    let mut tasks = Vec::new();
    let next = loop {
        let page = client.list_tasks(&request).await?;
        tasks.extend(page.tasks);
        let done = page.next_page_token.is_empty();
        if !args.all || done {
            break page.next_page_token;
        }
        if tasks.len() as u64 >= args.max_tasks {
            tasks.truncate(usize::try_from(args.max_tasks).unwrap_or(usize::MAX));
            eprintln!(
                "stopped after {} tasks (--max-tasks); more follow from the page token below",
                args.max_tasks
            );
            break page.next_page_token;
        }
        request.page_token = page.next_page_token;
    };
    if args.json {
        let list: Vec<serde_json::Value> = tasks.iter().map(task_summary_json).collect();
        print_json(&serde_json::json!({
            "tasks": list,
            "next_page_token": if next.is_empty() { None } else { Some(&next) },
        }))?;
    } else {
        print_tasks_table(&tasks, now);
        if !next.is_empty() {
            println!("next page: --page-token {next}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn task_summary_json(r: &pb::TaskRecord) -> serde_json::Value {
    let non_empty = |s: &String| if s.is_empty() { None } else { Some(s.clone()) };
    serde_json::json!({
        "task_id": r.task_id,
        "name": r.name,
        "status": convert::status_name(r.status()),
        "pattern": r.pattern,
        "owner": non_empty(&r.owner),
        "idempotency_key": non_empty(&r.idempotency_key),
        "created_unix_ms": r.created_unix_ms,
        "updated_unix_ms": r.updated_unix_ms,
        "subtasks": r.subtasks.len(),
        "error": non_empty(&r.error),
    })
}

fn print_tasks_table(tasks: &[pb::TaskRecord], now_ms: u64) {
    println!(
        "{:<36} {:<24} {:<9} {:<18} {:<16} {:<20} AGE",
        "ID", "NAME", "STATUS", "PATTERN", "OWNER", "CREATED"
    );
    for t in tasks {
        let owner = if t.owner.is_empty() { "-" } else { &t.owner };
        println!(
            "{:<36} {:<24} {:<9} {:<18} {:<16} {:<20} {}",
            t.task_id,
            cut(&t.name, 24),
            convert::status_name(t.status()),
            t.pattern,
            cut(owner, 16),
            utc(t.created_unix_ms),
            age(now_ms.saturating_sub(t.created_unix_ms)),
        );
    }
}

/// `text`, cut to `width` characters with a marker when longer.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(width.saturating_sub(1)).collect();
    short.push('~');
    short
}

/// A Unix time in ms as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(unix_ms: u64) -> String {
    let seconds = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// How long ago, in the largest whole unit: `42s`, `5m`, `3h`, `2d`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn event(command: cli::EventCommand) -> anyhow::Result<ExitCode> {
    match command {
        cli::EventCommand::Publish(args) => {
            let payload: serde_json::Value = serde_json::from_str(&args.payload)
                .map_err(|e| anyhow::anyhow!("the event payload is not JSON: {e}"))?;
            let reply = args
                .endpoints
                .client()?
                .publish_event(&args.event_type, &args.key, &payload)
                .await?;
            if args.json {
                print_json(&serde_json::json!({
                    "event_id": reply.event_id,
                    "subscriptions": reply.subscriptions,
                }))?;
            } else if reply.subscriptions.is_empty() {
                println!(
                    "{} (no handler for type '{}'; counted as unhandled)",
                    reply.event_id, args.event_type
                );
            } else {
                println!("{} -> {}", reply.event_id, reply.subscriptions.join(", "));
            }
        }
        cli::EventCommand::DeadLetters(args) => {
            let dead = args.endpoints.client()?.dead_letters(args.limit).await?;
            if args.json {
                let list = dead.iter().map(dead_letter_json).collect();
                print_json(&serde_json::Value::Array(list))?;
            } else {
                println!(
                    "{:<36}  {:<24}  {:<16}  {:>8}  {:<32}  LAST ERROR",
                    "EVENT", "TYPE", "KEY", "ATTEMPTS", "HANDLER"
                );
                for d in &dead {
                    println!(
                        "{:<36}  {:<24}  {:<16}  {:>8}  {:<32}  {}",
                        d.event_id, d.r#type, d.key, d.attempts, d.subscription, d.last_error
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn dead_letter_json(d: &pb::DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "event_id": d.event_id,
        "type": d.r#type,
        "key": d.key,
        "payload": d.payload.as_ref().and_then(|v| agentmesh_runtime::convert::value_json(v).ok()),
        "source": d.source,
        "subscription": d.subscription,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "published_unix_ms": d.published_unix_ms,
        "dead_unix_ms": d.dead_unix_ms,
    })
}

async fn agents(args: AgentsArgs) -> anyhow::Result<ExitCode> {
    let agents = args.endpoints.client()?.list_agents().await?;
    if args.json {
        let list: Vec<serde_json::Value> = agents.iter().map(agent_json).collect();
        print_json(&serde_json::Value::Array(list))?;
    } else {
        print_agents_table(&agents);
    }
    Ok(ExitCode::SUCCESS)
}

fn agent_json(a: &pb::AgentInfo) -> serde_json::Value {
    serde_json::json!({
        "id": a.id,
        "role": a.role,
        "leader": a.leader,
        "level": if a.level.is_empty() { None } else { Some(&a.level) },
        "capabilities": a.capabilities,
        "endpoint": a.endpoint,
        "load": a.load,
        "max_concurrency": a.max_concurrency,
        "succeeded": a.succeeded,
        "failed": a.failed,
        "reputation": a.reputation,
        "breaker": if a.breaker.is_empty() { None } else { Some(&a.breaker) },
        "faults": a.faults,
        "insecure": a.insecure,
        "event_handlers": a.event_handlers,
        "version": a.version,
    })
}

fn print_agents_table(agents: &[pb::AgentInfo]) {
    println!(
        "{:<24} {:<18} {:<9} {:>9} {:>7} {:>11} {:<9} {:<22} {:<8} {:<16} CAPABILITIES",
        "ID",
        "ROLE",
        "LEVEL",
        "LOAD",
        "OK/FAIL",
        "REPUTATION",
        "BREAKER",
        "ENDPOINT",
        "SECURITY",
        "FAULTS"
    );
    for a in agents {
        let level = if a.level.is_empty() { "-" } else { &a.level };
        let role = if a.leader {
            format!("{} leader", a.role)
        } else {
            a.role.clone()
        };
        let load = format!("{}/{}", a.load, a.max_concurrency);
        let outcomes = format!("{}/{}", a.succeeded, a.failed);
        let reputation = a.reputation.map_or("-".to_owned(), |r| format!("{r:.3}"));
        let breaker = if a.breaker.is_empty() {
            "-"
        } else {
            &a.breaker
        };
        let mut capabilities = if a.capabilities.is_empty() {
            "-".to_owned()
        } else {
            a.capabilities.join(",")
        };
        // Event handlers ride in the last column: they are as long as
        // capabilities and as many (docs/events.md).
        if !a.event_handlers.is_empty() {
            capabilities.push_str(" events:");
            capabilities.push_str(&a.event_handlers.join(","));
        }
        // A node that misbehaves on purpose must not look normal.
        let faults = if a.faults.is_empty() {
            "-".to_owned()
        } else {
            a.faults.join(",")
        };
        // Nor one that anyone can speak to.
        let security = if a.insecure { "INSECURE" } else { "mtls" };
        println!(
            "{:<24} {:<18} {:<9} {:>9} {:>7} {:>11} {:<9} {:<22} {:<8} {:<16} {}",
            a.id,
            role,
            level,
            load,
            outcomes,
            reputation,
            breaker,
            a.endpoint,
            security,
            faults,
            capabilities
        );
    }
}

fn read_task_file(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("failed to read the task file from stdin")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read task file {}", path.display()))?;
    }
    if text.trim().is_empty() {
        bail!("task file {} is empty", path.display());
    }
    Ok(text)
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn exit_for(record: &pb::TaskRecord) -> ExitCode {
    if record.status() == pb::TaskStatus::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(TASK_FAILED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_decomposed_request_waits_for_planning() {
        assert!(plans_at_submit("name: r\nrequest: calculate 6 * 7\n"));
        assert!(!plans_at_submit(
            "name: r\npattern: reactive\nrequest: calculate 6 * 7\n"
        ));
        assert!(!plans_at_submit(
            "name: t\ntasks:\n  - {id: a, capability: math.eval, input: {expr: '1'}}\n"
        ));
        assert!(!plans_at_submit("not: [a task"));
        assert!(PLANNING_SUBMIT_TIMEOUT >= std::time::Duration::from_secs(130));
    }
}
