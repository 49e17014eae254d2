//! Runs what the Helm chart renders: `helm template` of helm/agentmesh with
//! `ci/worker-pools-values.yaml`, then the etcd members, the etcd-setup
//! Job, the coordinators and one pod of each worker pool started as real
//! processes from their containers' `command`, `args` and `env`, exactly
//! as rendered. This is what proves that the chart's flags, variable
//! names, ports, mounts and probes fit the binary.
//!
//! How a pod becomes a process on one machine:
//!
//! * each pod gets a loopback address of its own (127.77.X.N), standing in
//!   for its network namespace: `POD_IP` is that address, and `0.0.0.0` in
//!   an address the pod binds (every interface of the pod) becomes it;
//! * `POD_NAME` is `<statefulset>-<ordinal>`, and the DNS names the chart
//!   writes (a member under its headless Service, a Service name) are
//!   replaced with the address of the pod they resolve to, as cluster DNS
//!   would;
//! * every `volumeMount` becomes a directory of the test; a Secret's keys
//!   become files there, made by the test as a user would make the
//!   Secrets: `agentmesh certs` (one certificate per StatefulSet naming
//!   `<statefulset>-*`), `agentmesh token new`, random etcd passwords;
//! * `$(VAR)` references in `env` and `args` expand as the kubelet expands
//!   them; the etcd container's command is the test's etcd binary.
//!
//! Needs helm: `scripts/install-chart-tools` (run by `scripts/test-chart`,
//! itself run by `scripts/test` before the tests) puts it in .tools/, or
//! `AGENTMESH_TEST_HELM` names one. A missing helm fails the test.

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    CliOutput, Process, agentmesh_bin, etcd_binary, eventually, eventually_ok, http_get, repo_root,
    run_command, scratch_dir,
};

/// The values file whose shape is run: two coordinators, two worker pools
/// with different capabilities, a 3-member etcd with TLS and users.
const VALUES: &str = "helm/agentmesh/ci/worker-pools-values.yaml";
const NAMESPACE: &str = "agentmesh";
const RELEASE: &str = "agentmesh";
/// Waits of this test: etcd forming, nodes registering, a task finishing.
const WAIT: Duration = Duration::from_secs(60);

/// helm from `AGENTMESH_TEST_HELM` or `.tools/`; panics (never skips) when
/// there is none.
fn helm_binary() -> PathBuf {
    let path = std::env::var_os("AGENTMESH_TEST_HELM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/node_modules/.bin/helm"));
    assert!(
        path.is_file(),
        "helm not found at {}: run scripts/install-chart-tools (scripts/test does) or set \
         AGENTMESH_TEST_HELM; the chart test fails, never skips, without helm",
        path.display()
    );
    path
}

/// The objects `helm template` renders for [`VALUES`].
fn render(scratch: &Path) -> Vec<Value> {
    let home = scratch.join("helm-home");
    let envs: Vec<(String, String)> = ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"]
        .iter()
        .map(|var| ((*var).to_owned(), home.join(var).display().to_string()))
        .collect();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let root = repo_root();
    let chart = root.join("helm/agentmesh");
    let values = root.join(VALUES);
    let out = run_command(
        helm_binary(),
        &[
            "template",
            RELEASE,
            chart.to_str().unwrap(),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            "1.30.0",
            "-f",
            values.to_str().unwrap(),
        ],
        &envs,
        Duration::from_secs(60),
    );
    assert!(out.success(), "helm template failed:\n{out}");
    serde_saphyr::from_multiple::<Option<Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("helm template printed YAML that does not parse: {e}"))
        .into_iter()
        .flatten()
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
}

fn str_of(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value}"))
}

/// One pod of a StatefulSet, as the test runs it.
struct Pod {
    name: String,
    ip: String,
    sts: String,
    /// The pod template's spec.
    spec: Value,
    dir: PathBuf,
}

impl Pod {
    fn container(&self) -> &Value {
        &self.spec["containers"][0]
    }

    /// The address of a probe's or a port's `port` (a number or a named
    /// container port) on this pod.
    fn addr(&self, port: &Value) -> SocketAddr {
        let number =
            match port {
                Value::Number(n) => n.as_u64().unwrap(),
                Value::String(name) => {
                    self.container()["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| p["name"] == *name)
                        .unwrap_or_else(|| panic!("{}: no container port named {name}", self.name))
                        ["containerPort"]
                        .as_u64()
                        .unwrap()
                }
                other => panic!("{}: port {other} is neither a number nor a name", self.name),
            };
        format!("{}:{number}", self.ip).parse().unwrap()
    }
}

/// Secrets' contents, made the way the README tells a user to make them.
struct Secrets {
    dir: PathBuf,
    /// Per StatefulSet: its pods' addresses, for the certificate's hosts.
    ips: BTreeMap<String, Vec<String>>,
    token: String,
    tokens_line: String,
    passwords: BTreeMap<String, String>,
}

impl Secrets {
    fn new(dir: &Path, ips: BTreeMap<String, Vec<String>>) -> Secrets {
        fs::create_dir_all(dir).unwrap();
        let out = cli(&["token", "new", "--role", "admin", "--subject", "chart-e2e"]);
        let mut lines = out.stdout.lines();
        let token = lines.next().expect("a token line").to_owned();
        let tokens_line = lines.next().expect("a tokens-file line").to_owned();
        let passwords = ["root", "coordinator", "worker", "peer", "level"]
            .iter()
            .map(|key| {
                (
                    (*key).to_owned(),
                    crate::support::etcd_auth::random_secret(),
                )
            })
            .collect();
        Secrets {
            dir: dir.to_owned(),
            ips,
            token,
            tokens_line,
            passwords,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The content of `key` of Secret `secret`, as mounted by a pod of
    /// StatefulSet `sts`.
    fn file(&self, secret: &str, key: &str, sts: &str) -> Vec<u8> {
        match key {
            "ca.crt" => {
                self.certificate("ca-only", sts);
                fs::read(self.ca()).unwrap()
            }
            "tls.crt" => fs::read(self.certificate(secret, sts).0).unwrap(),
            "tls.key" => fs::read(self.certificate(secret, sts).1).unwrap(),
            "tokens" => format!("{}\n", self.tokens_line).into_bytes(),
            role => self
                .passwords
                .get(role)
                .unwrap_or_else(|| panic!("Secret {secret} has no key {role} in this test"))
                .clone()
                .into_bytes(),
        }
    }

    /// `agentmesh certs` for Secret `secret`, once: the agent ids of
    /// StatefulSet `sts` (`<sts>-*`) and the addresses of its pods.
    fn certificate(&self, secret: &str, sts: &str) -> (PathBuf, PathBuf) {
        let cert = self.dir.join(format!("{secret}.pem"));
        let key = self.dir.join(format!("{secret}-key.pem"));
        if !cert.exists() {
            let mut hosts = vec!["localhost".to_owned()];
            hosts.extend(self.ips.get(sts).cloned().unwrap_or_default());
            let pattern = format!("{sts}-*");
            cli(&[
                "certs",
                self.dir.to_str().unwrap(),
                "--name",
                secret,
                "--agent",
                &pattern,
                "--host",
                &hosts.join(","),
            ]);
        }
        (cert, key)
    }
}

fn cli(args: &[&str]) -> CliOutput {
    let out = run_command(agentmesh_bin(), args, &[], Duration::from_secs(30));
    assert!(out.success(), "agentmesh {}:\n{out}", args.join(" "));
    out
}

/// `$(VAR)` references expanded from `vars`, as the kubelet does (an
/// unknown reference stays as written).
fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) if vars.contains_key(&after[..end]) => {
                out.push_str(&vars[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// How the test's machine stands in for the cluster: names to addresses,
/// mount paths to directories.
struct Substitutions {
    /// DNS names (longest first) and `0.0.0.0` to loopback addresses.
    names: Vec<(String, String)>,
}

impl Substitutions {
    fn apply(&self, text: &str, pod: &Pod, mounts: &[(String, PathBuf)]) -> String {
        let mut text = text.to_owned();
        for (name, ip) in &self.names {
            text = text.replace(name, ip);
        }
        text = text.replace("0.0.0.0", &pod.ip);
        for (path, dir) in mounts {
            text = text.replace(path, dir.to_str().unwrap());
        }
        text
    }
}

/// The process a pod's container runs: program, args and environment,
/// with its mounts made.
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn launch(pod: &Pod, objects: &[Value], secrets: &Secrets, subs: &Substitutions) -> Launch {
    let container = pod.container();
    // Mounts: a directory each; a Secret volume's items written into it.
    let volumes: BTreeMap<&str, &Value> = pod.spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (str_of(&v["name"]), v))
        .collect();
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = str_of(&mount["name"]);
        let dir = pod.dir.join(name);
        fs::create_dir_all(&dir).unwrap();
        if let Some(secret) = volumes.get(name).map(|v| &v["secret"]) {
            let secret_name = str_of(&secret["secretName"]);
            let items: Vec<(String, String)> = match secret["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| (str_of(&i["key"]).to_owned(), str_of(&i["path"]).to_owned()))
                    .collect(),
                // A whole Secret: every key the test knows for it.
                None => ["root", "coordinator", "worker"]
                    .iter()
                    .map(|k| ((*k).to_owned(), (*k).to_owned()))
                    .collect(),
            };
            for (key, path) in items {
                fs::write(dir.join(path), secrets.file(secret_name, &key, &pod.sts)).unwrap();
            }
        }
        mounts.push((str_of(&mount["mountPath"]).to_owned(), dir));
    }

    // Environment: envFrom first, then env, each `$(VAR)` expanded from
    // what came before; the Downward API from the pod.
    let mut vars = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let name = str_of(&from["configMapRef"]["name"]);
        let data = &find(objects, "ConfigMap", name)["data"];
        for (key, value) in data.as_object().unwrap() {
            vars.insert(key.clone(), str_of(value).to_owned());
        }
    }
    for entry in container["env"].as_array().into_iter().flatten() {
        let value = if let Some(value) = entry["value"].as_str() {
            expand(value, &vars)
        } else {
            match str_of(&entry["valueFrom"]["fieldRef"]["fieldPath"]) {
                "metadata.name" => pod.name.clone(),
                "status.podIP" => pod.ip.clone(),
                other => panic!(
                    "{}: a Downward API field this test lacks: {other}",
                    pod.name
                ),
            }
        };
        vars.insert(str_of(&entry["name"]).to_owned(), value);
    }
    let args = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| subs.apply(&expand(str_of(a), &vars), pod, &mounts))
        .collect();
    let env = vars
        .iter()
        .map(|(k, v)| (k.clone(), subs.apply(v, pod, &mounts)))
        .collect();
    let program = match container["command"].as_array() {
        None => agentmesh_bin(),
        Some(command) => {
            assert_eq!(
                command,
                &vec![json!("/usr/local/bin/etcd")],
                "{}: the only command the chart sets is etcd's",
                pod.name
            );
            etcd_binary()
        }
    };
    Launch { program, args, env }
}

fn start(pod: &Pod, launch: &Launch) -> Process {
    let env: Vec<(&str, &str)> = launch
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Process::spawn(&pod.name, &launch.program, &launch.args, &env)
}

/// Runs one rendered probe (tcpSocket or httpGet) against a pod.
fn probe(pod: &Pod, probe: &Value) -> Result<(), String> {
    if let Some(tcp) = probe.get("tcpSocket") {
        let addr = pod.addr(&tcp["port"]);
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .map(drop)
            .map_err(|e| format!("{}: tcpSocket {addr}: {e}", pod.name))
    } else if let Some(get) = probe.get("httpGet") {
        let addr = pod.addr(&get["port"]);
        match http_get(&addr.to_string(), str_of(&get["path"])) {
            Ok((200..=399, _)) => Ok(()),
            Ok((status, body)) => Err(format!("{}: httpGet {addr}: {status} {body}", pod.name)),
            Err(e) => Err(format!("{}: httpGet {addr}: {e}", pod.name)),
        }
    } else {
        Err(format!(
            "{}: a probe this test cannot run: {probe}",
            pod.name
        ))
    }
}

/// Every probe of the pod's container passes.
fn probes_pass(pod: &Pod) -> Result<(), String> {
    for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let spec = &pod.container()[kind];
        assert!(spec.is_object(), "{}: no {kind}", pod.name);
        probe(pod, spec).map_err(|e| format!("{kind}: {e}"))?;
    }
    Ok(())
}

#[test]
fn the_rendered_chart_runs_as_a_cluster() {
    let scratch = scratch_dir("chart");
    let objects = render(scratch.path());

    // The pods, from the StatefulSets: every replica the chart asks for
    // (coordinators, etcd), one pod of an autoscaled pool.
    let net = 1 + std::process::id() % 250;
    let mut pods = Vec::new();
    let mut names = Vec::new();
    for sts in objects.iter().filter(|o| o["kind"] == "StatefulSet") {
        let name = str_of(&sts["metadata"]["name"]);
        let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(1);
        let service = str_of(&sts["spec"]["serviceName"]);
        for ordinal in 0..replicas {
            let pod_name = format!("{name}-{ordinal}");
            let ip = format!("127.77.{net}.{}", pods.len() + 2);
            names.push((
                format!("{pod_name}.{service}.{NAMESPACE}.svc.cluster.local"),
                ip.clone(),
            ));
            pods.push(Pod {
                dir: scratch.path().join(&pod_name),
                name: pod_name,
                ip,
                sts: name.to_owned(),
                spec: sts["spec"]["template"]["spec"].clone(),
            });
        }
    }
    let pods_of = |sts: &str| -> Vec<&Pod> { pods.iter().filter(|p| p.sts == sts).collect() };
    let etcd = pods_of("agentmesh-etcd");
    let coordinators = pods_of("agentmesh-coordinator");
    let workers: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.sts.starts_with("agentmesh-worker-"))
        .collect();
    assert_eq!(etcd.len(), 3, "a 3-member etcd");
    assert_eq!(coordinators.len(), 2, "2 coordinators");
    assert_eq!(
        workers.iter().map(|p| p.sts.as_str()).collect::<Vec<_>>(),
        ["agentmesh-worker-math", "agentmesh-worker-text"],
        "one pod of each of the two worker pools"
    );
    // The Services resolve to a pod of theirs.
    names.push((
        format!("agentmesh-etcd.{NAMESPACE}.svc.cluster.local"),
        etcd[0].ip.clone(),
    ));
    names.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let subs = Substitutions { names };
    let mut ips: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in &pods {
        ips.entry(pod.sts.clone()).or_default().push(pod.ip.clone());
    }
    let secrets = Secrets::new(&scratch.path().join("secrets"), ips);

    // etcd: the three members, healthy by their own readiness probe.
    let members: Vec<Process> = etcd
        .iter()
        .map(|pod| start(pod, &launch(pod, &objects, &secrets, &subs)))
        .collect();
    for (pod, member) in etcd.iter().zip(&members) {
        eventually_ok(&format!("{} ready", pod.name), WAIT, || {
            if !member.is_running() {
                member.fail("etcd member exited");
            }
            probes_pass(pod)
        });
    }

    // The etcd-setup Job, retried as its backoffLimit would.
    let job = find(&objects, "Job", "agentmesh-etcd-setup");
    let job_pod = Pod {
        name: "agentmesh-etcd-setup".to_owned(),
        ip: format!("127.77.{net}.1"),
        sts: "agentmesh-etcd-setup".to_owned(),
        spec: job["spec"]["template"]["spec"].clone(),
        dir: scratch.path().join("etcd-setup"),
    };
    let setup = launch(&job_pod, &objects, &secrets, &subs);
    let env: Vec<(&str, &str)> = setup
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    eventually_ok("the etcd-setup Job to succeed", WAIT, || {
        let out = run_command(&setup.program, &setup.args, &env, Duration::from_secs(30));
        if out.success() { Ok(()) } else { Err(out) }
    });

    // The nodes, ready by their own probes.
    let nodes: Vec<(&Pod, Process)> = coordinators
        .iter()
        .chain(&workers)
        .map(|pod| (*pod, start(pod, &launch(pod, &objects, &secrets, &subs))))
        .collect();
    for (pod, process) in &nodes {
        eventually_ok(&format!("{} ready", pod.name), WAIT, || {
            if !process.is_running() {
                process.fail("node exited");
            }
            probes_pass(pod)
        });
    }

    // A client, as NOTES.txt tells a user: the CA and a token, through the
    // client Service (either coordinator; one of them forwards to the leader).
    let token_file = scratch.path().join("client.token");
    fs::write(&token_file, &secrets.token).unwrap();
    let ca = secrets.ca();
    let client_env = [
        ("AGENTMESH_CA", ca.to_str().unwrap()),
        ("AGENTMESH_TOKEN_FILE", token_file.to_str().unwrap()),
    ];
    let client =
        |args: &[&str]| run_command(agentmesh_bin(), args, &client_env, Duration::from_secs(60));
    let service = find(&objects, "Service", "agentmesh");
    assert_eq!(
        service["spec"]["selector"]["app.kubernetes.io/component"],
        "coordinator"
    );
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    let endpoints: Vec<String> = coordinators
        .iter()
        .map(|pod| format!("https://{}:{port}", pod.ip))
        .collect();
    let expected: Vec<&str> = nodes.iter().map(|(pod, _)| pod.name.as_str()).collect();
    eventually("every node listed by agents", WAIT, || {
        let out = client(&["agents", "--json", "--endpoint", &endpoints[0]]);
        let agents: Value = serde_json::from_str(&out.stdout).ok()?;
        let ids: Vec<&str> = agents
            .as_array()?
            .iter()
            .filter_map(|a| a["id"].as_str())
            .collect();
        let leader = agents.as_array()?.iter().any(|a| a["leader"] == true);
        (leader && expected.iter().all(|id| ids.contains(id))).then_some(())
    });

    let task = scratch.path().join("task.json");
    fs::write(
        &task,
        json!({
            "name": "chart",
            "pattern": "coordinator_worker",
            "strategy": "parallel",
            "tasks": [
                {"id": "m", "capability": "math.eval", "input": {"expr": "6 * 7"}},
                {"id": "w", "capability": "text.word_count", "input": {"text": "to be or not to be"}},
                {"id": "sum", "capability": "math.eval",
                 "input": {"expr": "{{m.value}} + {{w.words}}"}, "depends_on": ["m", "w"]}
            ]
        })
        .to_string(),
    )
    .unwrap();
    for endpoint in &endpoints {
        let out = client(&[
            "submit",
            "--wait",
            "--endpoint",
            endpoint,
            task.to_str().unwrap(),
        ]);
        assert!(out.success(), "submit through {endpoint}:\n{out}");
        let record: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(record["status"], "completed", "{record}");
        assert_eq!(record["result"], json!({"value": 48}), "{record}");
    }

    // Every rendered probe passes against the running cluster.
    for pod in etcd.iter().chain(coordinators.iter()).chain(workers.iter()) {
        probes_pass(pod).unwrap_or_else(|e| panic!("{e}"));
    }

    // A stopped pod drains within its grace period.
    let config = &find(&objects, "ConfigMap", "agentmesh-config")["data"];
    let drain: u64 = str_of(&config["AGENTMESH_DRAIN_TIMEOUT"]).parse().unwrap();
    let (worker, process) = nodes.last().unwrap();
    let grace = worker.spec["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let pre_stop = worker.container()["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        grace > drain + pre_stop,
        "terminationGracePeriodSeconds {grace} leaves no time after the preStop pause \
         ({pre_stop} s) and the drain ({drain} s)"
    );
    process.signal("TERM");
    assert!(
        process.wait_exit(Duration::from_secs(drain)).is_some(),
        "{} did not stop within the drain timeout after SIGTERM",
        worker.name
    );
    drop(members);
}
