//! A cluster for one test: an etcd and `agentmesh node` processes, built
//! in the style of quickwit's `ClusterSandboxBuilder`:
//!
//! ```text
//! let cluster = Cluster::builder()
//!     .coordinators(2)
//!     .worker("worker-maths", "math.eval,sleep")
//!     .level("strategic-1", "strategic")
//!     .lease_ttl(2)
//!     .start();
//! cluster.submit_wait(&file);
//! cluster.kill("worker-maths");
//! ```
//!
//! [`ClusterBuilder::start`] starts etcd, then the coordinators in order —
//! `coordinator-1` leads before the next one starts, so which one leads is
//! known — then every other node, and returns once every coordinator lists
//! every node. Every process is killed when the cluster is dropped. Nodes
//! that were killed or exited stay in the cluster, so their output is still
//! checked by [`Cluster::assert_no_panic`] and shown when a test fails.
//!
//! etcd runs with TLS and authentication on ([`Etcd::start_secure`], and
//! likewise inside a netns cluster): every node gets the CA and an etcd
//! user of its own, made with `agentmesh etcd-setup` (one run for the
//! nodes the builder knows, one more per node added later).
//! [`ClusterBuilder::plain_etcd`] starts a plain loopback etcd instead.
//!
//! With [`ClusterBuilder::netns`] the cluster runs in the two network
//! namespaces of a [`NetnsPair`] instead of on loopback: etcd and every
//! node in namespace A, except nodes placed
//! [`NodeSpec::behind_partition`], which run in B; the CLI runs in A.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

use super::etcd_auth::{EtcdAuth, SETUP_TIMEOUT};
use super::netns::NetnsPair;
use super::tls;
use super::{
    CLI_TIMEOUT, CliOutput, Etcd, NODE_START_TIMEOUT, Process, Stream, agentmesh_bin, cli_env,
    etcd_binary, eventually, run_cli_with, scratch_dir,
};

/// How long [`ClusterBuilder::start`] waits for a leader and for every node
/// to be listed.
const FORMATION_TIMEOUT: Duration = Duration::from_secs(20);
/// Client port of etcd inside namespace A.
const NETNS_ETCD_PORT: u16 = 2379;
/// The first node port inside the namespaces; each node takes the next one.
const NETNS_FIRST_NODE_PORT: u16 = 7700;

/// What an `agentmesh node` runs as (`--role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Worker,
    Peer,
    Level,
    Reactive,
}

impl Role {
    pub fn flag(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Worker => "worker",
            Role::Peer => "peer",
            Role::Level => "level",
            Role::Reactive => "reactive",
        }
    }
}

/// One node to start: its id (also its process name), role, extra flags
/// and, in a [`ClusterBuilder::netns`] cluster, its side of the partition.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    id: String,
    role: Role,
    args: Vec<String>,
    behind_partition: bool,
    /// The program to run instead of the stock `agentmesh` (one built
    /// from the CLI library with tools of its own).
    program: Option<PathBuf>,
    /// More `prlimit` flags (`--nofile=128`), on loopback only.
    prlimit: Vec<String>,
}

impl NodeSpec {
    fn new(id: &str, role: Role, args: &[&str]) -> Self {
        NodeSpec {
            id: id.to_owned(),
            role,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            behind_partition: false,
            program: None,
            prlimit: Vec::new(),
        }
    }

    pub fn coordinator(id: &str) -> Self {
        Self::new(id, Role::Coordinator, &[])
    }

    /// A worker offering `capabilities` (comma-separated).
    pub fn worker(id: &str, capabilities: &str) -> Self {
        Self::new(id, Role::Worker, &["--capabilities", capabilities])
    }

    /// A peer offering `capabilities` (comma-separated).
    pub fn peer(id: &str, capabilities: &str) -> Self {
        Self::new(id, Role::Peer, &["--capabilities", capabilities])
    }

    /// A reactive agent offering `capabilities` (comma-separated).
    pub fn reactive(id: &str, capabilities: &str) -> Self {
        Self::new(id, Role::Reactive, &["--capabilities", capabilities])
    }

    /// A hierarchy agent of `level` (strategic, tactical, operational).
    pub fn level(id: &str, level: &str) -> Self {
        Self::new(id, Role::Level, &["--level", level])
    }

    /// More `agentmesh node` flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Runs `program` (an `agentmesh` command line with tools of its own)
    /// instead of the stock binary.
    pub fn program(mut self, program: PathBuf) -> Self {
        self.program = Some(program);
        self
    }

    /// Runs the node under `prlimit FLAGS...` (for example
    /// `--nofile=128`), besides the cluster's memory cap.
    pub fn prlimit(mut self, flags: &[&str]) -> Self {
        self.prlimit.extend(flags.iter().map(|f| (*f).to_owned()));
        self
    }

    /// Runs the node in namespace B, the side [`NetnsPair::partition_b_from_a`]
    /// cuts off.
    pub fn behind_partition(mut self) -> Self {
        self.behind_partition = true;
        self
    }
}

/// Flags every node of a role gets, so a node added later matches the ones
/// started with the cluster.
#[derive(Clone, Debug, Default)]
struct Defaults {
    coordinator_args: Vec<String>,
    worker_args: Vec<String>,
    lease_ttl: Option<u64>,
    memory_cap: Option<u64>,
    /// Variables of every CLI run through the cluster (a bearer token for
    /// nodes that require one).
    client_env: Vec<(String, String)>,
}

/// What to start; see the module documentation.
#[derive(Debug, Default)]
pub struct ClusterBuilder {
    coordinators: usize,
    nodes: Vec<NodeSpec>,
    defaults: Defaults,
    netns: Option<NetnsPair>,
    etcd_args: Vec<String>,
    /// A plain etcd: no TLS, no authentication.
    plain_etcd: bool,
}

impl ClusterBuilder {
    /// Runs the cluster's loopback etcd without TLS and authentication
    /// (clusters have both by default).
    pub fn plain_etcd(mut self) -> Self {
        self.plain_etcd = true;
        self
    }

    /// Extra flags for the cluster's (loopback) etcd.
    pub fn etcd_args(mut self, args: &[&str]) -> Self {
        self.etcd_args = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// `n` coordinators, `coordinator-1` to `coordinator-N`.
    pub fn coordinators(mut self, n: usize) -> Self {
        self.coordinators = n;
        self
    }

    /// Flags for every coordinator.
    pub fn coordinator_args(mut self, args: &[&str]) -> Self {
        self.defaults
            .coordinator_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Flags for every worker, including those added later.
    pub fn worker_args(mut self, args: &[&str]) -> Self {
        self.defaults
            .worker_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Environment variables for every CLI command the cluster runs
    /// ([`Cluster::cli`], [`Cluster::spawn_cli`], the formation checks),
    /// e.g. `AGENTMESH_TOKEN` when the coordinators require tokens.
    pub fn client_env(mut self, envs: &[(&str, &str)]) -> Self {
        self.defaults
            .client_env
            .extend(envs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self
    }

    /// `--lease-ttl SECS` for every node: how fast a dead one is noticed.
    pub fn lease_ttl(mut self, secs: u64) -> Self {
        self.defaults.lease_ttl = Some(secs);
        self
    }

    /// Caps every node's address space at `bytes` (`prlimit --as`),
    /// including nodes added later, so a runaway allocation aborts the node
    /// (and the test sees it exit) rather than exhausting the machine.
    pub fn memory_cap(mut self, bytes: u64) -> Self {
        self.defaults.memory_cap = Some(bytes);
        self
    }

    pub fn worker(self, id: &str, capabilities: &str) -> Self {
        self.node(NodeSpec::worker(id, capabilities))
    }

    /// `n` workers, `worker-1` to `worker-N`, offering `capabilities`.
    pub fn workers(self, n: usize, capabilities: &str) -> Self {
        (1..=n).fold(self, |builder, i| {
            builder.worker(&format!("worker-{i}"), capabilities)
        })
    }

    pub fn level(self, id: &str, level: &str) -> Self {
        self.node(NodeSpec::level(id, level))
    }

    /// Any node; nodes start in the order they were added.
    pub fn node(mut self, spec: NodeSpec) -> Self {
        self.nodes.push(spec);
        self
    }

    /// Runs the cluster inside `net`'s namespaces (see the module doc).
    pub fn netns(mut self, net: NetnsPair) -> Self {
        self.netns = Some(net);
        self
    }

    /// Starts everything and waits until every coordinator lists every node.
    pub fn start(self) -> Cluster {
        let dir = scratch_dir("cluster");
        let etcd_args: Vec<&str> = self.etcd_args.iter().map(String::as_str).collect();
        let etcd = match &self.netns {
            None if self.plain_etcd => ClusterEtcd::Loopback(Etcd::start_with(&etcd_args)),
            None => ClusterEtcd::Loopback(Etcd::start_secure_with(&etcd_args)),
            Some(net) => {
                let (process, url, auth) = start_etcd_in(net, &dir);
                ClusterEtcd::Netns(process, url, Box::new(auth))
            }
        };
        // One etcd-setup for every node known now, rather than one each.
        let mut users: Vec<(String, &str)> = (1..=self.coordinators)
            .map(|n| (format!("coordinator-{n}"), Role::Coordinator.flag()))
            .collect();
        users.extend(self.nodes.iter().map(|n| (n.id.clone(), n.role.flag())));
        let users: Vec<(&str, &str)> = users
            .iter()
            .map(|(id, role)| (id.as_str(), *role))
            .collect();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            etcd,
            defaults: self.defaults,
            dir,
            next_port: NETNS_FIRST_NODE_PORT,
            net: self.netns,
            netns_certs: None,
        };
        cluster.make_etcd_users(&users);
        for n in 1..=self.coordinators {
            let id = format!("coordinator-{n}");
            cluster.add(NodeSpec::coordinator(&id));
            if n == 1 {
                eventually("coordinator-1 to lead", FORMATION_TIMEOUT, || {
                    (cluster.leader().as_deref() == Some("coordinator-1")).then_some(())
                });
            }
        }
        for spec in self.nodes {
            cluster.add(spec);
        }
        let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
        cluster.wait_listed(&ids, FORMATION_TIMEOUT);
        cluster
    }
}

/// A running `agentmesh node`.
pub struct Node {
    pub id: String,
    pub role: Role,
    pub process: Process,
    /// `http://ADDR:PORT`, for `--endpoint`.
    pub endpoint: String,
    /// `ADDR:PORT`, the address it listens on and registers.
    pub addr: String,
    /// What it was started from, to start it again.
    spec: NodeSpec,
}

enum ClusterEtcd {
    Loopback(Etcd),
    /// etcd inside namespace A, its client URL, and its TLS and users.
    Netns(Process, String, Box<EtcdAuth>),
}

/// A running cluster; see the module documentation.
pub struct Cluster {
    // Fields drop in order: the nodes, then etcd, then the namespaces.
    /// Every node started, in order, killed and exited ones included.
    nodes: Vec<Node>,
    etcd: ClusterEtcd,
    defaults: Defaults,
    /// Task files written by [`Cluster::task_file`], and etcd's data in a
    /// netns cluster.
    dir: TempDir,
    next_port: u16,
    net: Option<NetnsPair>,
    /// The certificate of a netns cluster's nodes (for their addresses).
    netns_certs: Option<tls::Certs>,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The loopback etcd, to stop and restart it.
    pub fn etcd(&self) -> &Etcd {
        match &self.etcd {
            ClusterEtcd::Loopback(etcd) => etcd,
            ClusterEtcd::Netns(..) => panic!("a netns cluster's etcd cannot be stopped"),
        }
    }

    /// The namespaces of a [`ClusterBuilder::netns`] cluster, to partition
    /// and heal.
    pub fn netns(&self) -> &NetnsPair {
        self.net
            .as_ref()
            .expect("not a netns cluster: build it with ClusterBuilder::netns")
    }

    fn etcd_url(&self) -> String {
        match &self.etcd {
            ClusterEtcd::Loopback(etcd) => etcd.client_url(),
            ClusterEtcd::Netns(_, url, _) => url.clone(),
        }
    }

    /// Starts one more node, with the flags every node of its role gets,
    /// and waits until it listens (not until it is registered).
    pub fn add(&mut self, spec: NodeSpec) -> &Node {
        assert!(
            self.nodes.iter().all(|n| n.id != spec.id),
            "a node '{}' was already started",
            spec.id
        );
        self.launch(spec)
    }

    /// Starts node `id` again, after it was killed or exited: once etcd has
    /// dropped its old registration (its lease expired), with the same id
    /// and flags, on a new port. [`Cluster::node`] then returns the new
    /// one; the old process stays in the cluster for its output.
    pub fn restart(&mut self, id: &str) -> &Node {
        let old = self.node(id);
        assert!(
            !old.process.is_running(),
            "node '{id}' is still running: kill it first"
        );
        let spec = old.spec.clone();
        let ttl = Duration::from_secs(self.defaults.lease_ttl.unwrap_or(10));
        let key = format!("/agentmesh/v1/agents/{id}");
        eventually(
            &format!("etcd to drop the registration of the killed {id}"),
            ttl + FORMATION_TIMEOUT,
            || (!self.etcd().has_key(&key).ok()?).then_some(()),
        );
        self.launch(spec)
    }

    /// The flags node `id` of `role` needs to reach etcd (see
    /// [`Etcd::node_flags`]).
    pub fn etcd_flags(&self, id: &str, role: Role) -> Vec<String> {
        match &self.etcd {
            ClusterEtcd::Loopback(etcd) => etcd.node_flags(id, role.flag()),
            ClusterEtcd::Netns(_, url, auth) => {
                auth.setup(url, &[(id, role.flag())], |args| {
                    self.cli_with_timeout(args, SETUP_TIMEOUT)
                });
                auth.node_flags(id)
            }
        }
    }

    /// Makes the etcd users of several nodes with one `etcd-setup`.
    fn make_etcd_users(&self, users: &[(&str, &str)]) {
        match &self.etcd {
            ClusterEtcd::Loopback(etcd) => etcd.make_node_users(users),
            ClusterEtcd::Netns(_, url, auth) if !users.is_empty() => {
                auth.setup(url, users, |args| {
                    self.cli_with_timeout(args, SETUP_TIMEOUT)
                });
            }
            ClusterEtcd::Netns(..) => {}
        }
    }

    /// The etcd URL nodes are given.
    pub fn etcd_client_url(&self) -> String {
        self.etcd_url()
    }

    fn launch(&mut self, spec: NodeSpec) -> &Node {
        let url = self.etcd_url();
        let ttl = self.defaults.lease_ttl.map(|t| t.to_string());
        let etcd_flags = self.etcd_flags(&spec.id, spec.role);
        let mut args: Vec<&str> =
            vec!["--role", spec.role.flag(), "--etcd", &url, "--id", &spec.id];
        args.extend(etcd_flags.iter().map(String::as_str));
        if let Some(ttl) = &ttl {
            args.extend(["--lease-ttl", ttl.as_str()]);
        }
        let role_args: &[String] = match spec.role {
            Role::Coordinator => &self.defaults.coordinator_args,
            Role::Worker => &self.defaults.worker_args,
            Role::Peer | Role::Level | Role::Reactive => &[],
        };
        args.extend(role_args.iter().map(String::as_str));
        args.extend(spec.args.iter().map(String::as_str));
        let (process, addr) = match &self.net {
            None => start_on_loopback(
                &spec.id,
                spec.program.as_deref(),
                self.defaults.memory_cap,
                &spec.prlimit,
                &args,
            ),
            Some(net) => {
                let (ns, ip) = if spec.behind_partition {
                    (&net.b, &net.addr_b)
                } else {
                    (&net.a, &net.addr_a)
                };
                let addr = format!("{ip}:{}", self.next_port);
                self.next_port += 1;
                let certs = self.netns_certs.get_or_insert_with(|| {
                    let dir = self.dir.path().join("certs");
                    tls::copy_shared_ca(&dir);
                    tls::issue_into(&dir, "netns", "*", &[&net.addr_a, &net.addr_b])
                });
                start_in_netns(
                    net,
                    ns,
                    &spec.id,
                    &addr,
                    &with_tls(&allowing_faults(&args), certs),
                )
            }
        };
        self.nodes.push(Node {
            id: spec.id.clone(),
            role: spec.role,
            process,
            endpoint: endpoint_of(&addr, &args),
            addr,
            spec,
        });
        self.nodes.last().expect("just pushed")
    }

    /// Node `id`; after a restart, the new process.
    pub fn node(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .rfind(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node '{id}' in the cluster"))
    }

    /// Every node started, killed and exited ones included.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// The nodes of `role` still running.
    pub fn running(&self, role: Role) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.role == role && n.process.is_running())
            .collect()
    }

    /// The endpoints of every coordinator started, in order.
    pub fn coordinator_endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Coordinator)
            .map(|n| n.endpoint.clone())
            .collect()
    }

    /// The endpoint of the first coordinator still running.
    pub fn endpoint(&self) -> &str {
        self.running(Role::Coordinator)
            .first()
            .map(|n| n.endpoint.as_str())
            .expect("no coordinator is running")
    }

    /// SIGKILLs node `id`; returns the epoch ms just before.
    pub fn kill(&self, id: &str) -> u64 {
        let at = now_ms();
        self.node(id).process.kill();
        at
    }

    /// `agentmesh ARGS...` to completion (in namespace A in a netns cluster).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with_timeout(args, CLI_TIMEOUT)
    }

    /// `agentmesh ARGS...` to completion within `timeout` (a submit that
    /// waits on a model may take longer than [`CLI_TIMEOUT`]).
    pub fn cli_with_timeout(&self, args: &[&str], timeout: Duration) -> CliOutput {
        match &self.net {
            None => run_cli_with(args, &self.client_env(), timeout),
            Some(net) => net.run_in_with(&net.a, agentmesh_bin(), args, timeout),
        }
    }

    /// `agentmesh ARGS...` left running (in namespace A in a netns cluster).
    pub fn spawn_cli(&self, name: &str, args: &[&str]) -> Process {
        let envs = cli_env(&self.client_env());
        match &self.net {
            None => Process::spawn(name, agentmesh_bin(), args, &envs),
            Some(net) => net.spawn_in(&net.a, name, agentmesh_bin(), args, &envs),
        }
    }

    fn client_env(&self) -> Vec<(&str, &str)> {
        self.defaults
            .client_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// `agents --json` as `endpoint` answers it.
    pub fn agents_at(&self, endpoint: &str) -> Result<Vec<Value>, String> {
        let out = self.cli(&["agents", "--endpoint", endpoint, "--json"]);
        if !out.success() {
            return Err(out.to_string());
        }
        Ok(out.json().as_array().cloned().unwrap_or_default())
    }

    /// `agents --json` at [`Cluster::endpoint`].
    pub fn agents(&self) -> Vec<Value> {
        self.agents_at(self.endpoint())
            .unwrap_or_else(|e| panic!("agents failed: {e}"))
    }

    /// The ids [`Cluster::agents`] lists, sorted.
    pub fn agent_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .agents()
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    /// Waits until every running coordinator lists all of `ids`.
    pub fn wait_listed(&self, ids: &[String], timeout: Duration) {
        eventually(
            &format!("every running coordinator to list {ids:?}"),
            timeout,
            || {
                self.running(Role::Coordinator)
                    .iter()
                    .all(|c| {
                        self.agents_at(&c.endpoint).is_ok_and(|agents| {
                            let listed: HashSet<&str> =
                                agents.iter().filter_map(|a| a["id"].as_str()).collect();
                            ids.iter().all(|id| listed.contains(id.as_str()))
                        })
                    })
                    .then_some(())
            },
        );
    }

    /// The running coordinator that some running coordinator's `agents`
    /// marks as the leader.
    pub fn leader(&self) -> Option<String> {
        let running = self.running(Role::Coordinator);
        let ids: HashSet<&str> = running.iter().map(|n| n.id.as_str()).collect();
        running
            .iter()
            .filter_map(|node| self.agents_at(&node.endpoint).ok())
            .flatten()
            .find(|agent| {
                agent["leader"] == true && agent["id"].as_str().is_some_and(|id| ids.contains(id))
            })
            .and_then(|agent| agent["id"].as_str().map(str::to_owned))
    }

    /// Writes a task file into the cluster's scratch dir; returns its path.
    pub fn task_file(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }

    /// `submit FILE` at [`Cluster::endpoint`]; returns the task id.
    pub fn submit(&self, file: &str) -> String {
        let out = self.cli(&["submit", "--endpoint", self.endpoint(), file]);
        assert!(out.success(), "submit {file} failed: {out}");
        out.stdout.trim().to_owned()
    }

    /// `submit FILE --wait`, which must succeed; returns the final record.
    pub fn submit_wait(&self, file: &str) -> Value {
        let out = self.cli(&["submit", "--endpoint", self.endpoint(), file, "--wait"]);
        assert!(out.success(), "submit --wait {file} failed: {out}");
        out.json()
    }

    /// `task status ID` at [`Cluster::endpoint`], `None` when it fails.
    pub fn try_status(&self, id: &str) -> Option<Value> {
        let out = self.cli(&["task", "status", id, "--endpoint", self.endpoint()]);
        out.success().then(|| out.json())
    }

    /// `task status ID`, which must succeed.
    pub fn status(&self, id: &str) -> Value {
        self.try_status(id)
            .unwrap_or_else(|| panic!("task status {id} failed"))
    }

    /// Waits until task `id` is no longer pending or running; returns its
    /// record.
    pub fn wait_ended(&self, id: &str, timeout: Duration) -> Value {
        eventually(&format!("task {id} to end"), timeout, || {
            self.try_status(id).filter(|record| {
                record["status"]
                    .as_str()
                    .is_some_and(|s| s != "running" && s != "pending")
            })
        })
    }

    /// Fails if any node ever started (or etcd in a netns cluster) panicked.
    pub fn assert_no_panic(&self) {
        for node in &self.nodes {
            node.process.assert_no_panic();
        }
        if let ClusterEtcd::Netns(etcd, _, _) = &self.etcd {
            etcd.assert_no_panic();
        }
    }
}

/// Epoch milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// `agentmesh node --role ROLE --etcd ETCD_URL ARGS...` on its own,
/// outside any [`Cluster`], as process `name`; waits until it listens.
pub fn start_node(name: &str, etcd_url: &str, role: &str, args: &[&str]) -> Node {
    let role = [Role::Coordinator, Role::Worker, Role::Peer, Role::Level]
        .into_iter()
        .find(|r| r.flag() == role)
        .unwrap_or_else(|| panic!("no node role '{role}'"));
    let mut all = vec!["--role", role.flag(), "--etcd", etcd_url];
    all.extend_from_slice(args);
    let (process, addr) = start_on_loopback(name, None, None, &[], &all);
    Node {
        id: name.to_owned(),
        role,
        process,
        endpoint: endpoint_of(&addr, &all),
        addr,
        spec: NodeSpec::new(name, role, args),
    }
}

/// `agentmesh node ARGS... --listen 127.0.0.1:0`; waits for the stdout
/// line `listening on 127.0.0.1:PORT` the node prints once bound and
/// returns that address. With a `memory_cap`, the node runs under `prlimit
/// --as=CAP`, which execs it (the pid is the node's), with glibc's malloc
/// arenas limited so their reserved address space does not count against
/// the cap on its own. `prlimit` flags (`--nofile=N`) run it under
/// `prlimit` too.
fn start_on_loopback(
    id: &str,
    program: Option<&Path>,
    memory_cap: Option<u64>,
    prlimit: &[String],
    args: &[&str],
) -> (Process, String) {
    let program = program.map_or_else(agentmesh_bin, Path::to_path_buf);
    let program_arg = program.to_string_lossy().into_owned();
    let cap_arg = memory_cap.map(|cap| format!("--as={cap}"));
    let limited = cap_arg.is_some() || !prlimit.is_empty();
    let mut all: Vec<&str> = Vec::new();
    if limited {
        all.extend(cap_arg.iter().chain(prlimit).map(String::as_str));
        all.extend(["--", program_arg.as_str()]);
    }
    all.extend(["node", "--listen", "127.0.0.1:0"]);
    let args = with_tls(&allowing_faults(args), tls::shared());
    all.extend(args.iter().map(String::as_str));
    let process = if limited {
        Process::spawn(id, "prlimit", &all, &[("MALLOC_ARENA_MAX", "2")])
    } else {
        Process::spawn(id, &program, &all, &[])
    };
    let line = wait_listening(&process);
    let addr = parse_listening_line(&line).unwrap_or_else(|e| process.fail(&format!("{id}: {e}")));
    (process, addr.to_string())
}

/// `args` with `certs`' TLS flags and the harness's tokens file, unless
/// they run the node `--insecure` or name files of their own.
fn with_tls(args: &[&str], certs: &tls::Certs) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    if args.contains(&"--insecure") {
        return all;
    }
    if !args.contains(&"--tls-ca") {
        all.extend(certs.node_args());
    }
    if !args.contains(&"--token-file") {
        all.push("--token-file".to_owned());
        all.push(tls::shared_tokens().file.to_string_lossy().into_owned());
    }
    all
}

/// The endpoint clients use for a node at `addr` started with `args`.
fn endpoint_of(addr: &str, args: &[impl AsRef<str>]) -> String {
    if args.iter().any(|a| a.as_ref() == "--insecure") {
        format!("http://{addr}")
    } else {
        format!("https://{addr}")
    }
}

/// `agentmesh node ARGS...` inside `ns`, bound to `addr` (a fixed port:
/// the namespace is the test's own).
fn start_in_netns(
    net: &NetnsPair,
    ns: &str,
    id: &str,
    addr: &str,
    args: &[String],
) -> (Process, String) {
    let mut all = vec!["node", "--listen", addr, "--advertise", addr];
    all.extend(args.iter().map(String::as_str));
    let process = net.spawn_in(ns, id, agentmesh_bin(), &all, &[]);
    let line = wait_listening(&process);
    if line.trim() != format!("{LISTENING_PREFIX}{addr}") {
        process.fail(&format!(
            "{id}: expected `listening on {addr}`, got {line:?}"
        ));
    }
    (process, addr.to_owned())
}

/// `args`, with `--allow-fault-injection` when they inject faults: a node
/// refuses `--fault` without it, and the tests that arm faults mean it.
fn allowing_faults<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    if args.contains(&"--fault") && !args.contains(&"--allow-fault-injection") {
        all.push("--allow-fault-injection");
    }
    all
}

fn wait_listening(process: &Process) -> String {
    process.wait_for_line_where(
        "a stdout line `listening on ADDR:PORT`",
        NODE_START_TIMEOUT,
        |stream, line| stream == Stream::Stdout && line.trim_start().starts_with(LISTENING_PREFIX),
    )
}

/// etcd inside namespace A, on A's veth address, with TLS (a certificate
/// for that address) and authentication on; waits until it serves.
fn start_etcd_in(net: &NetnsPair, dir: &TempDir) -> (Process, String, EtcdAuth) {
    let ip: IpAddr = net
        .addr_a
        .parse()
        .unwrap_or_else(|e| panic!("namespace A's address {}: {e}", net.addr_a));
    let auth = EtcdAuth::new(&dir.path().join("etcd-auth"), &[ip]);
    let url = format!("https://{}:{NETNS_ETCD_PORT}", net.addr_a);
    let args: Vec<OsString> = vec![
        format!("--cert-file={}", auth.server_cert.display()).into(),
        format!("--key-file={}", auth.server_key.display()).into(),
        "--bcrypt-cost=4".into(),
        "--name=netns".into(),
        format!("--data-dir={}", dir.path().join("etcd").display()).into(),
        format!("--listen-client-urls={url}").into(),
        format!("--advertise-client-urls={url}").into(),
        "--listen-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-cluster=netns=http://127.0.0.1:2380".into(),
        "--initial-cluster-state=new".into(),
        "--heartbeat-interval=50".into(),
        "--election-timeout=500".into(),
        "--logger=zap".into(),
        "--log-outputs=stderr".into(),
    ];
    let etcd = net.spawn_in(&net.a, "etcd-in-a", etcd_binary(), &args, &[]);
    etcd.wait_for_line_where(
        "etcd serving client traffic",
        Duration::from_secs(20),
        |_, line| {
            line.contains("serving client traffic")
                || line.contains("ready to serve client requests")
        },
    );
    auth.setup(&url, &[], |args| {
        net.run_in_with(&net.a, agentmesh_bin(), args, SETUP_TIMEOUT)
    });
    (etcd, url, auth)
}

const LISTENING_PREFIX: &str = "listening on ";

/// Parses exactly `listening on 127.0.0.1:PORT` (surrounding whitespace
/// allowed, PORT non-zero).
pub fn parse_listening_line(line: &str) -> Result<SocketAddr, String> {
    let expected = "expected a line exactly `listening on 127.0.0.1:PORT`";
    let rest = line
        .trim()
        .strip_prefix(LISTENING_PREFIX)
        .ok_or_else(|| format!("{expected}, got {line:?}"))?;
    let addr: SocketAddr = rest
        .parse()
        .map_err(|e| format!("{expected}, got {line:?} ({e})"))?;
    if addr.ip() != IpAddr::V4(Ipv4Addr::LOCALHOST) || addr.port() == 0 {
        return Err(format!("{expected} with a non-zero port, got {line:?}"));
    }
    Ok(addr)
}
