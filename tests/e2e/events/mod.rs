//! Event-driven agents (docs/events.md) across real processes: events
//! published with the CLI reach a handler on another node, which runs a
//! task per event in publish order per key; a handler that always fails
//! ends in the dead-letter list, trimmed to `--max-dead-letters`; an event
//! survives its handler's node being killed mid-delivery; only the leader
//! coordinator may deliver; and `agentmesh local --publish` runs the
//! README's handler in one command.

use std::time::Duration;

use agentmesh_proto::v1::EventDelivery;
use prost::Message;
use serde_json::Value;
use tonic::Code;

use crate::security::{deliver, forged, node_security};
use crate::support::cluster::{Cluster, NodeSpec};
use crate::support::tls as test_tls;
use crate::support::{eventually, repo_root, run_cli_in, scratch_dir};

const WAIT: Duration = Duration::from_secs(30);

/// The handler's task: one step that uses the event's key and payload.
const ON_ORDER: &str = "\
name: on-order-{{event.key}}-{{event.payload.n}}
tasks:
  - id: total
    capability: math.eval
    input: { expr: \"{{event.payload.n}} * 10\" }
";

fn publish(cluster: &Cluster, event_type: &str, payload: &str, key: &str) -> Value {
    let out = cluster.cli(&[
        "event",
        "publish",
        "--endpoint",
        cluster.endpoint(),
        event_type,
        payload,
        "--key",
        key,
        "--json",
    ]);
    assert!(out.success(), "event publish failed: {out}");
    out.json()
}

/// The tasks handler `on-order-KEY-N` ran, oldest first, once `count` have
/// completed.
fn handler_tasks(cluster: &Cluster, key: &str, count: usize) -> Vec<Value> {
    eventually(
        &format!("{count} completed handler tasks of key {key}"),
        WAIT,
        || {
            let out = cluster.cli(&["task", "list", "--json", "--endpoint", cluster.endpoint()]);
            if !out.success() {
                return None;
            }
            let mut tasks: Vec<Value> = out.json()["tasks"]
                .as_array()?
                .iter()
                .filter(|t| {
                    t["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&format!("on-order-{key}-")))
                })
                .cloned()
                .collect();
            let done = tasks.iter().filter(|t| t["status"] == "completed").count();
            if done < count {
                return None;
            }
            tasks.sort_by_key(|t| t["created_unix_ms"].as_u64());
            Some(tasks)
        },
    )
}

#[test]
fn events_reach_a_handler_on_another_node_in_order_and_failures_dead_letter() {
    let dir = scratch_dir("events");
    let template = dir.path().join("on-order.yaml");
    std::fs::write(&template, ON_ORDER).unwrap();
    let on_order = format!("order.created=task:{}", template.display());
    let cluster = Cluster::builder()
        .coordinators(2)
        .coordinator_args(&[
            "--event-max-attempts",
            "2",
            "--event-retry-base-ms",
            "50",
            "--max-dead-letters",
            "1",
        ])
        .worker("worker-1", "math.eval")
        .node(NodeSpec::worker("handler-1", "math.eval").args(&[
            "--event-handler",
            &on_order,
            "--event-handler",
            "order.broken=tool:math.eval",
        ]))
        .start();
    let leader = eventually("a leader", WAIT, || cluster.leader());

    // The handler and its subscriptions are shown by `agents`.
    let agents = cluster.agents();
    let handler = agents.iter().find(|a| a["id"] == "handler-1").unwrap();
    assert!(
        handler["event_handlers"]
            .to_string()
            .contains("order.broken=tool:math.eval"),
        "{handler}"
    );

    // In order per key: each event's task is accepted only after the one
    // before it was.
    for n in 1..=4 {
        let reply = publish(&cluster, "order.created", &format!("{{\"n\": {n}}}"), "o-1");
        assert_eq!(reply["subscriptions"][0], on_order.as_str(), "{reply}");
    }
    let tasks = handler_tasks(&cluster, "o-1", 4);
    let names: Vec<&str> = tasks.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names.iter().map(|n| &n[..12]).collect::<Vec<_>>(),
        ["on-order-o-1"; 4]
    );
    for (n, name) in names.iter().enumerate() {
        assert!(
            name.starts_with(&format!("on-order-o-1-{} ", n + 1)),
            "{names:?}"
        );
    }
    let first = cluster.status(tasks[0]["task_id"].as_str().unwrap());
    assert_eq!(first["result"], serde_json::json!({"value": 10}), "{first}");

    // A type nobody handles is accepted and counted, not stored.
    let unhandled = publish(&cluster, "nobody.cares", "{}", "");
    assert_eq!(unhandled["subscriptions"], serde_json::json!([]));

    // A handler that always fails: two attempts, then a dead letter.
    let broken = publish(&cluster, "order.broken", "{\"expr\": \"1 +\"}", "b-1");
    let id = broken["event_id"].as_str().unwrap().to_owned();
    let dead = eventually("the dead letter", WAIT, || {
        let out = cluster.cli(&[
            "event",
            "dead-letters",
            "--json",
            "--endpoint",
            cluster.endpoint(),
        ]);
        assert!(out.success(), "{out}");
        out.json()
            .as_array()?
            .iter()
            .find(|d| d["event_id"] == id.as_str())
            .cloned()
    });
    assert_eq!(dead["attempts"], 2, "{dead}");
    assert_eq!(
        dead["subscription"], "order.broken=tool:math.eval",
        "{dead}"
    );
    assert!(
        dead["last_error"].as_str().unwrap().contains("math.eval"),
        "{dead}"
    );
    let table = cluster.cli(&["event", "dead-letters", "--endpoint", cluster.endpoint()]);
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("order.broken"),
        "{table}"
    );

    // --max-dead-letters 1: a second dead letter deletes the first.
    let again = publish(&cluster, "order.broken", "{\"expr\": \"2 +\"}", "b-2");
    let newest = again["event_id"].as_str().unwrap().to_owned();
    let letters = eventually("only the newest dead letter", WAIT, || {
        let out = cluster.cli(&[
            "event",
            "dead-letters",
            "--json",
            "--endpoint",
            cluster.endpoint(),
        ]);
        assert!(out.success(), "{out}");
        let letters = out.json().as_array()?.clone();
        // The trim follows the new letter's write: both may show briefly.
        (letters.len() == 1 && letters[0]["event_id"] == newest.as_str()).then_some(letters)
    });
    assert_eq!(letters[0]["subscription"], "order.broken=tool:math.eval");

    // Only the leader delivers: a standby's credentials are refused.
    let standby = ["coordinator-1", "coordinator-2"]
        .into_iter()
        .find(|c| *c != leader)
        .unwrap();
    test_tls::copy_shared_ca(dir.path());
    let stolen = node_security(&test_tls::issue_into(
        dir.path(),
        "stolen",
        standby,
        &["127.0.0.1"],
    ));
    let forged_delivery = EventDelivery {
        event_id: "forged".into(),
        r#type: "order.created".into(),
        subscription: on_order.clone(),
        payload_json: "{\"n\": 99}".into(),
        attempt: 1,
        ..Default::default()
    };
    let refused = deliver(
        &cluster.node("handler-1").addr,
        &stolen,
        forged(
            standby,
            "handler-1",
            "event.deliver",
            forged_delivery.encode_to_vec(),
        ),
    )
    .expect_err("a standby's delivery must be refused");
    assert!(
        refused.starts_with(&format!("{:?}", Code::FailedPrecondition))
            && refused.contains("event.deliver")
            && refused.contains("not the leader coordinator"),
        "{refused}"
    );
    assert!(
        !cluster
            .node("handler-1")
            .process
            .output_lines()
            .iter()
            .any(|l| l.contains("\"forged\"") || l.contains("event_id=forged")),
        "the forged event ran"
    );
    cluster.assert_no_panic();
}

#[test]
fn an_event_is_handled_although_its_handlers_node_is_killed_mid_delivery() {
    let slow = "order.slow=tool:sleep";
    let cluster = Cluster::builder()
        .lease_ttl(2)
        .coordinators(1)
        .coordinator_args(&["--event-ack-timeout", "5s", "--event-retry-base-ms", "50"])
        .node(NodeSpec::worker("handler-a", "sleep").args(&["--event-handler", slow]))
        .node(NodeSpec::worker("handler-b", "sleep").args(&["--event-handler", slow]))
        .start();
    eventually("a leader", WAIT, || cluster.leader());
    // Both idle: the first by id, handler-a, takes it and sleeps.
    let reply = publish(&cluster, "order.slow", "{\"ms\": 1500}", "s-1");
    let id = reply["event_id"].as_str().unwrap().to_owned();
    cluster.kill("handler-a");
    let ran = cluster.node("handler-b").process.wait_for_line(&id, WAIT);
    assert!(
        ran.contains("event handler ran") && ran.contains("true"),
        "{ran}"
    );
    let dead = cluster.cli(&[
        "event",
        "dead-letters",
        "--json",
        "--endpoint",
        cluster.endpoint(),
    ]);
    assert!(!dead.stdout.contains(&id), "{dead}");
}

/// The README's one-command demo, run as written from the repository's
/// root (`cargo run --release --` is the binary under test): the embedded
/// cluster's workers hold the handler, the event runs the example's task,
/// and `local` prints it once it ended.
#[test]
fn local_runs_the_readmes_event_handler_command() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let args = readme_command(&readme, "cargo run --release -- local");
    assert!(
        args[0] == "local" && args.iter().any(|a| a == "--publish"),
        "{args:?}"
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_cli_in(&repo_root(), &args, Duration::from_secs(60));
    assert!(out.success(), "{out}");
    let printed = out.json();
    let delivery = &printed["events"][0]["deliveries"][0];
    assert_eq!(delivery["ok"], true, "{printed}");
    assert_eq!(
        delivery["subscription"], "order.created=task:examples/event-handler/on-order.yaml",
        "{printed}"
    );
    let tasks = printed["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{printed}");
    assert_eq!(tasks[0]["status"], "completed", "{printed}");
    assert_eq!(
        tasks[0]["name"], "on-order-o-7 (event handler for local)",
        "{printed}"
    );
    assert_eq!(
        tasks[0]["result"]["first"],
        serde_json::json!({"order": "o-7", "total": 7}),
        "3 + 4 from the event's payload: {printed}"
    );
}

/// The arguments of the README's command line that starts with `prefix`,
/// after its `cargo run --release --`, its `\` continuations joined and
/// `'...'` quotes taken as a shell does.
fn readme_command(readme: &str, prefix: &str) -> Vec<String> {
    const CARGO_RUN: &str = "cargo run --release --";
    let start = readme
        .find(&format!("    {prefix}"))
        .unwrap_or_else(|| panic!("the README shows `{prefix}`"));
    let mut line = String::new();
    for part in readme[start..].lines() {
        match part.trim().strip_suffix('\\') {
            Some(continued) => line.push_str(continued),
            None => {
                line.push_str(part.trim());
                break;
            }
        }
    }
    let mut args = Vec::new();
    let (mut arg, mut quoted, mut any) = (String::new(), false, false);
    for c in line.trim().strip_prefix(CARGO_RUN).unwrap().chars() {
        match c {
            '\'' => (quoted, any) = (!quoted, true),
            c if c.is_whitespace() && !quoted => {
                if any {
                    args.push(std::mem::take(&mut arg));
                }
                any = false;
            }
            c => {
                arg.push(c);
                any = true;
            }
        }
    }
    if any {
        args.push(arg);
    }
    args
}
