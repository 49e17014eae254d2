//! `--config FILE`: a TOML or YAML file sets a node's flags; variables and
//! flags override it; an unknown key is refused naming the key and the
//! file.

use std::time::Duration;

use serde_json::Value;

use super::{listening, spawn_node};
use crate::support::{Etcd, eventually, run_cli, scratch_dir};

#[test]
fn a_config_file_sets_flags_that_variables_and_flags_override() {
    let etcd = Etcd::start();
    let url = etcd.client_url();
    let dir = scratch_dir("config");
    let coordinator_yaml = dir.path().join("coordinator.yaml");
    std::fs::write(
        &coordinator_yaml,
        format!(
            "role: coordinator\nid: coordinator-from-file\netcd:\n  - {url}\ninsecure: true\n\
             listen: 127.0.0.1:0\n"
        ),
    )
    .unwrap();
    let worker_toml = dir.path().join("worker.toml");
    std::fs::write(
        &worker_toml,
        format!(
            "role = \"worker\"\nid = \"worker-from-file\"\netcd = [\"{url}\"]\ninsecure = true\n\
             listen = \"127.0.0.1:0\"\ncapabilities = \"math.eval\"\nmax-concurrency = 3\n\
             lease-ttl = 4\n"
        ),
    )
    .unwrap();
    let coordinator = spawn_node(
        "coordinator-from-file",
        &["--config", coordinator_yaml.to_str().unwrap()],
        &[],
    );
    let endpoint = format!("http://{}", listening(&coordinator));
    // The variable beats the file's max-concurrency, the flag its id; the
    // file's capabilities stay.
    let worker = spawn_node(
        "worker-from-file",
        &["--id", "worker-from-flag"],
        &[
            ("AGENTMESH_CONFIG", worker_toml.to_str().unwrap()),
            ("AGENTMESH_MAX_CONCURRENCY", "5"),
        ],
    );
    listening(&worker);
    let workers = eventually("the worker to be listed", Duration::from_secs(20), || {
        let out = run_cli(&["agents", "--json", "--endpoint", &endpoint]);
        let agents = out.json();
        let workers: Vec<Value> = agents
            .as_array()?
            .iter()
            .filter(|a| a["role"] == "worker")
            .cloned()
            .collect();
        (!workers.is_empty()).then_some(workers)
    });
    assert_eq!(workers.len(), 1, "{workers:?}");
    let agent = &workers[0];
    assert_eq!(agent["id"], "worker-from-flag", "{agent}");
    assert_eq!(agent["max_concurrency"], 5, "{agent}");
    assert_eq!(
        agent["capabilities"],
        serde_json::json!(["math.eval"]),
        "{agent}"
    );
    let ids = run_cli(&["agents", "--json", "--endpoint", &endpoint]).json();
    assert!(
        ids.as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "coordinator-from-file"),
        "{ids}"
    );

    // A typo is refused before anything starts, naming key and file.
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        format!("role = \"worker\"\netcd = \"{url}\"\ninsecure = true\nmax-concurency = 3\n"),
    )
    .unwrap();
    let out = run_cli(&["node", "--config", typo.to_str().unwrap()]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr.contains("unknown key 'max-concurency'")
            && out.stderr.contains(typo.to_str().unwrap()),
        "{out}"
    );
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(&wrong, "role: worker\nlease-ttl: soon\n").unwrap();
    let out = run_cli(&["node", "--config", wrong.to_str().unwrap()]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr
            .contains("key 'lease-ttl': expected a whole number, found a string"),
        "{out}"
    );
    coordinator.assert_no_panic();
    worker.assert_no_panic();
}
