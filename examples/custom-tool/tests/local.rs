//! The example binary runs a task that needs its own tool on its embedded
//! cluster (`custom-tool local`), and its built-in tools still work.
//! `tests/e2e` runs it as a worker of a real cluster.

use std::process::Command;

use serde_json::Value;

fn run_local(task: &str) -> Value {
    let dir = std::env::temp_dir().join(format!("custom-tool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("task.yaml");
    std::fs::write(&file, task).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_custom-tool"))
        .arg("local")
        .arg(&file)
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
    let record = run_local(
        "name: reverse-and-count\n\
         tasks:\n\
         \x20 - id: flip\n\
         \x20   capability: text.reverse\n\
         \x20   input: { text: \"agentmesh\" }\n\
         \x20 - id: count\n\
         \x20   capability: math.eval\n\
         \x20   input: { expr: \"{{flip.chars}} * 2\" }\n\
         \x20   depends_on: [flip]\n",
    );
    assert_eq!(record["status"], "completed", "{record:#}");
    assert_eq!(record["result"]["value"], 18, "{record:#}");
    let flip = &record["subtasks"][0];
    assert_eq!(flip["output"]["reversed"], "hsemtnega", "{record:#}");
}
