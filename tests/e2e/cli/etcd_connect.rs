//! A node and an etcd that is not there (yet): one line naming the
//! endpoint and what to check after `--etcd-connect-timeout`, or the node
//! joins once etcd comes up within it.

use std::time::{Duration, Instant};

use super::{listening, spawn_node};
use crate::support::{Etcd, free_port, run_cli};

#[test]
fn a_node_without_etcd_says_so_in_one_line_and_exits_after_its_timeout() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let node = spawn_node(
        "no-etcd",
        &[
            "--role",
            "worker",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            &url,
            "--etcd-connect-timeout",
            "2s",
        ],
        &[],
    );
    let status = node
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| node.fail("the node did not give up within 20 s"));
    let took = started.elapsed();
    assert!(!status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "gave up after {took:?}, not after about 2 s"
    );
    let stderr = node.stderr_lines();
    let errors: Vec<&String> = stderr.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr:#?}");
    let error = errors[0];
    for expected in [
        url.as_str(),
        "Connection refused",
        "gave up after",
        "check that etcd runs and listens at",
        "--etcd-connect-timeout (2s)",
    ] {
        assert!(
            error.contains(expected),
            "`{expected}` missing from: {error}"
        );
    }
    assert!(
        !error.contains("tonic::transport") && !error.contains("ConnectError("),
        "a debug dump: {error}"
    );
    // One WARN line per attempt, with its number and the time left.
    let warns: Vec<&String> = stderr
        .iter()
        .filter(|l| l.contains("etcd not reachable yet"))
        .collect();
    assert!(
        (1..=6).contains(&warns.len()),
        "{} retry lines: {stderr:#?}",
        warns.len()
    );
    assert!(
        warns[0].contains("WARN") && warns[0].contains("attempt=1") && warns[0].contains("left_s="),
        "{}",
        warns[0]
    );
}

#[test]
fn a_node_started_before_etcd_joins_once_it_is_up_and_binds_a_host_name() {
    let etcd = Etcd::start();
    etcd.stop();
    let url = etcd.client_url();
    let node = spawn_node(
        "before-etcd",
        &[
            "--role",
            "coordinator",
            "--insecure",
            "--listen",
            "localhost:0",
            "--metrics-listen",
            "localhost:0",
            "--etcd",
            &url,
            "--etcd-connect-timeout",
            "60s",
        ],
        &[],
    );
    node.wait_for_line("etcd not reachable yet", Duration::from_secs(15));
    etcd.restart();
    let addr = listening(&node);
    let ip = addr.rsplit_once(':').map(|(ip, _)| ip).unwrap_or_default();
    assert!(
        ip == "127.0.0.1" || ip == "[::1]",
        "localhost:0 bound {addr}, not loopback"
    );
    let metrics = node.wait_for_line("metrics served at", Duration::from_secs(10));
    assert!(
        metrics.contains("127.0.0.1:") || metrics.contains("[::1]:"),
        "{metrics}"
    );
    let agents = run_cli(&["agents", "--json", "--endpoint", &format!("http://{addr}")]);
    assert!(agents.success(), "{agents}");
    assert!(node.is_running());
    node.assert_no_panic();
}
