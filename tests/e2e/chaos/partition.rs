//! A worker cut off by a network partition while it runs a subtask, then
//! healed: the coordinator drops it once its lease expires, runs the
//! subtask elsewhere, ignores the late result it sends after the heal, and
//! takes the worker back when it registers again.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::checks::{EndsSeen, ExactlyOnce, subtasks_of_json};
use super::{WORKER_CAPABILITIES, chaos_cluster, one_at_a_time};
use crate::support::cluster::NodeSpec;
use crate::support::eventually;
use crate::support::netns::NetnsPair;

const BENCH_TASKS: usize = 600;
/// Long enough that the pin on worker-b is still running when the
/// partition cuts it off.
const PIN_MS: u64 = 6000;
/// Pin tasks submitted, at most, until one runs on worker-b: placement
/// weighs load and chance, and the background load keeps both workers busy
/// (once, 12 tries all landed on worker-a).
const PIN_TRIES: usize = 40;

#[test]
fn a_worker_cut_off_by_a_netns_partition_then_healed() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let net = match NetnsPair::create("chaos") {
        Ok(net) => net,
        Err(reason) => {
            println!("CHAOS scenario=netns-partition SKIPPED: {reason}");
            println!("SKIPPED: {reason}");
            return;
        }
    };
    // etcd, the coordinator and worker-a in namespace A; worker-b in B.
    let cluster = chaos_cluster()
        .netns(net)
        .coordinators(1)
        .worker("worker-a", WORKER_CAPABILITIES)
        .node(NodeSpec::worker("worker-b", WORKER_CAPABILITIES).behind_partition())
        .start();
    let net = cluster.netns();
    let listed = || -> Result<Vec<String>, String> {
        Ok(cluster
            .agents_at(cluster.endpoint())?
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_owned))
            .collect())
    };

    // Load from inside A: the bench checks every result itself.
    let tasks = BENCH_TASKS.to_string();
    let bench = cluster.spawn_cli(
        "bench-in-a",
        &[
            "bench",
            "--endpoint",
            cluster.endpoint(),
            "--shape",
            "sleep",
            "--tasks",
            &tasks,
            "--concurrency",
            "32",
            "--rate",
            "30",
            "--warmup",
            "0",
            "--time-limit",
            "120",
            "--no-progress",
        ],
    );

    // Long naps until one runs on worker-b, so the partition cuts off a
    // running subtask. Every read of a pin's record is checked.
    let mut ends = EndsSeen::default();
    let pin_path = cluster.task_file(
        "pin.json",
        &json!({"name": "pin", "tasks": [{"id": "nap", "capability": "sleep", "input": {"ms": PIN_MS}}]})
            .to_string(),
    );
    let mut status = |id: &str| -> Option<Value> {
        let record = cluster.try_status(id)?;
        ends.observe_subtasks(subtasks_of_json(&record), "task status");
        Some(record)
    };
    let mut pins: Vec<String> = Vec::new();
    let mut pinned_on_b: Option<String> = None;
    for _ in 0..PIN_TRIES {
        let id = cluster.submit(&pin_path);
        pins.push(id.clone());
        let worker = eventually(
            "the pin task to start on a worker",
            Duration::from_secs(10),
            || status(&id).and_then(|r| r["subtasks"][0]["worker"].as_str().map(str::to_owned)),
        );
        if worker == "worker-b" {
            pinned_on_b = Some(id);
            break;
        }
    }
    let pinned_on_b = pinned_on_b
        .unwrap_or_else(|| panic!("none of {PIN_TRIES} pin tasks was placed on worker-b"));

    // Partition B from A (rules inside B only), then wait for the
    // coordinator to drop worker-b.
    net.partition_b_from_a();
    let partitioned_at = Instant::now();
    eventually(
        "the coordinator to drop the partitioned worker-b",
        Duration::from_secs(20),
        || {
            listed()
                .ok()
                .filter(|ids| !ids.iter().any(|id| id == "worker-b"))
        },
    );
    let dropped_after = partitioned_at.elapsed();
    net.heal();
    let healed_at = Instant::now();
    eventually(
        "worker-b to register again after the heal",
        Duration::from_secs(60),
        || {
            listed()
                .ok()
                .filter(|ids| ids.iter().any(|id| id == "worker-b"))
        },
    );
    let back_after = healed_at.elapsed();

    let exit = bench
        .wait_exit(Duration::from_secs(150))
        .expect("the bench to end within its time limit");
    let report: Value = bench
        .stdout_lines()
        .iter()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("completed").is_some())
        })
        .unwrap_or_else(|| {
            panic!(
                "no JSON report from the bench (exit {exit}):\n{}",
                bench.log_tail(40)
            )
        });

    // worker-b keeps running the cut-off nap and delivers its result once
    // healed: the record must keep the result of the attempt that replaced
    // it, which ends later.
    let mut pin_records = Vec::new();
    for id in &pins {
        let record = eventually("the pin task to end", Duration::from_secs(60), || {
            status(id).filter(|r| r["status"] != "running" && r["status"] != "pending")
        });
        pin_records.push(record);
    }
    let pin_b = pin_records
        .iter()
        .find(|r| r["task_id"] == pinned_on_b.as_str())
        .expect("the record of the pin on worker-b");
    let applied = ExactlyOnce::check(pin_records.iter().flat_map(subtasks_of_json), &ends);
    println!(
        "CHAOS scenario=netns-partition bench_tasks={BENCH_TASKS} bench_completed={} \
         bench_errors={} bench_p99_ms={} pins={} pin_b_attempts={} pin_b_workers={} \
         pin_b_applied={} partition_to_dropped_ms={} heal_to_registered_ms={} {} wall_s={:.1}",
        report["completed"],
        report["errors"],
        report["latency_ms"]["p99"],
        pins.len(),
        pin_b["subtasks"][0]["attempts"],
        pin_b["subtasks"][0]["workers_tried"],
        pin_b["subtasks"][0]["applied"],
        dropped_after.as_millis(),
        back_after.as_millis(),
        applied.fields(),
        started.elapsed().as_secs_f64()
    );

    assert_eq!(
        (&report["completed"], &report["errors"]),
        (&json!(BENCH_TASKS), &json!(0)),
        "bench report: {report}"
    );
    assert!(exit.success(), "the bench exited with {exit}: {report}");
    let mut wrong_pins = String::new();
    for record in &pin_records {
        if record["status"] != "completed" || record["result"] != json!({"slept_ms": PIN_MS}) {
            let _ = writeln!(wrong_pins, "{record}");
        }
    }
    assert!(
        wrong_pins.is_empty(),
        "pin tasks did not complete correctly:\n{wrong_pins}"
    );
    let worker_b = &cluster.node("worker-b").process;
    assert!(
        worker_b.is_running(),
        "worker-b must survive the partition:\n{}",
        worker_b.log_tail(40)
    );
    cluster.assert_no_panic();
    bench.assert_no_panic();
    applied.assert_clean();
}
