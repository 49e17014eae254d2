//! The example binary runs a task that needs its own tool on its embedded
//! cluster (`custom-tool local`), and its built-in tools still work.
//! `tests/e2e` runs it as a worker of a real cluster.

use std::process::Command;

use serde_json::Value;

/// The task the README runs: `text.reverse`, then `math.eval` on its output.
const TASK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/reverse.yaml");

fn run_local(file: &str) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_custom-tool"))
        .arg("local")
        .arg(file)
        .output()
        .expect("custom-tool runs");
    assert!(
        output.status.success(),
        "custom-tool local failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the task record as JSON")
}

#[test]
fn a_task_chains_the_custom_tool_with_a_built_in_one() {
    let record = run_local(TASK);
    assert_eq!(record["status"], "completed", "{record:#}");
    assert_eq!(record["result"]["value"], 18, "{record:#}");
    let flip = &record["subtasks"][0];
    assert_eq!(flip["output"]["reversed"], "hsemtnega", "{record:#}");
}
