//! Self-tests of the end-to-end harness in [`crate::support`]. They use a
//! real etcd and ordinary shell commands, not agentmesh itself.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cluster::parse_listening_line;
use crate::support::{
    Etcd, Process, agentmesh_bin, eventually, eventually_ok, free_port, http_request, run_command,
};

const SECS_5: Duration = Duration::from_secs(5);

fn sh(name: &str, script: &str) -> Process {
    Process::spawn(name, "sh", &["-c", script], &[])
}

fn pid_alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run kill -0")
        .success()
}

// --- etcd ---------------------------------------------------------------------

#[test]
fn etcd_starts_and_reports_healthy() {
    let etcd = Etcd::start();
    let url = etcd.client_url();
    let port: u16 = url
        .strip_prefix("http://127.0.0.1:")
        .expect("loopback URL")
        .parse()
        .expect("port");
    assert_ne!(port, 0);
    assert!(etcd.is_running());
    let body = etcd.health().expect("healthy right after start()");
    assert!(body.contains(r#""health":"true""#), "{body}");
    eprintln!("etcd healthy after {:?} at {url}", etcd.startup_time());
}

#[test]
fn etcd_stop_makes_it_unreachable_and_restart_keeps_url_and_data() {
    let etcd = Etcd::start();
    let url = etcd.client_url();
    let addr = etcd.client_addr();

    // Write a key through etcd's JSON gateway (key "key", value "value", base64).
    let (status, body) = http_request(
        &addr,
        "POST",
        "/v3/kv/put",
        Some(r#"{"key":"a2V5","value":"dmFsdWU="}"#),
    )
    .expect("put");
    assert_eq!(status, 200, "{body}");

    etcd.stop();
    assert!(!etcd.is_running());
    let err = etcd
        .health()
        .expect_err("/health must be unreachable after stop()");
    assert!(
        err.contains("GET /health"),
        "expected a connection error, got {err}"
    );
    assert!(
        etcd.data_dir().join("member").is_dir(),
        "stop() must keep the data dir"
    );

    let started = Instant::now();
    etcd.restart();
    eprintln!(
        "etcd restart healthy after {:?} (call took {:?})",
        etcd.startup_time(),
        started.elapsed()
    );
    assert_eq!(etcd.client_url(), url);
    assert!(etcd.is_healthy());

    let (status, body) =
        http_request(&addr, "POST", "/v3/kv/range", Some(r#"{"key":"a2V5"}"#)).expect("range");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("dmFsdWU="),
        "value lost across restart: {body}"
    );
}

#[test]
fn etcd_restart_while_running_and_drop_kills_it() {
    let etcd = Etcd::start();
    let first = etcd.pid().expect("running");
    etcd.restart();
    let second = etcd.pid().expect("running again");
    assert_ne!(first, second);
    assert!(
        !pid_alive(first),
        "old etcd {first} still alive after restart()"
    );
    let addr = etcd.client_addr();
    drop(etcd);
    assert!(!pid_alive(second), "etcd {second} still alive after drop");
    assert!(http_request(&addr, "GET", "/health", None).is_err());
}

#[test]
fn secure_etcd_serves_tls_with_authentication_on() {
    let etcd = Etcd::start_secure();
    let url = etcd.client_url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert!(etcd.is_healthy());
    // Plain HTTP on the client port gets no answer etcd would act on.
    let plain = http_request(
        &etcd.client_addr(),
        "POST",
        "/v3/kv/range",
        Some(r#"{"key":"a2V5"}"#),
    );
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP was served: {plain:?}"
    );
    // Root, over TLS, may do anything.
    let key = "/harness/secure";
    assert_eq!(etcd.has_key(key), Ok(false));
    let flags = etcd.node_flags("worker-9", "worker");
    assert_eq!(flags[0], "--etcd-ca");
    assert_eq!(flags[3], "worker-9");
    etcd.restart();
    assert_eq!(etcd.has_key(key), Ok(false), "auth state lost on restart");
}

#[test]
fn two_etcds_run_side_by_side() {
    let a = Etcd::start();
    let b = Etcd::start();
    assert_ne!(a.client_url(), b.client_url());
    assert!(a.is_healthy() && b.is_healthy());
}

// --- eventually -----------------------------------------------------------------

#[test]
fn eventually_returns_as_soon_as_the_probe_succeeds() {
    let started = Instant::now();
    let mut calls = 0;
    let value = eventually("the third call", Duration::from_secs(30), || {
        calls += 1;
        (calls == 3).then_some(calls * 10)
    });
    assert_eq!(value, 30);
    assert_eq!(calls, 3);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    assert_eq!(
        eventually("an immediate value", Duration::ZERO, || Some(7)),
        7
    );
    assert!(started.elapsed() < Duration::from_millis(20));
}

#[test]
#[should_panic(expected = "timed out after 100ms waiting for the impossible")]
fn eventually_panics_on_timeout() {
    eventually::<()>("the impossible", Duration::from_millis(100), || None);
}

#[test]
fn eventually_ok_returns_the_first_ok() {
    let mut calls = 0;
    let value: u32 = eventually_ok("a flaky probe", SECS_5, || {
        calls += 1;
        if calls < 3 {
            Err(format!("attempt {calls}"))
        } else {
            Ok(calls)
        }
    });
    assert_eq!(value, 3);
}

#[test]
#[should_panic(
    expected = "timed out after 100ms waiting for a working thing; last error: \"still broken\""
)]
fn eventually_ok_panics_with_the_last_error() {
    eventually_ok::<(), _>("a working thing", Duration::from_millis(100), || {
        Err("still broken")
    });
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("free port can be bound");
}

// --- Process --------------------------------------------------------------------

#[test]
fn process_captures_stdout_and_stderr_and_kill_stops_it() {
    let p = sh("echoer", "echo hello; echo oops >&2; exec sleep 30");
    assert_eq!(p.wait_for_line("hello", SECS_5), "hello");
    assert_eq!(p.wait_for_line("oop", SECS_5), "oops");
    assert_eq!(p.wait_for_stdout_line("hell", SECS_5), "hello");
    assert_eq!(p.stdout_lines(), ["hello"]);
    assert_eq!(p.stderr_lines(), ["oops"]);
    let mut all = p.output_lines();
    all.sort();
    assert_eq!(all, ["hello", "oops"]);
    assert!(p.log_tail(1) == "hello" || p.log_tail(1) == "oops");

    let log = std::fs::read_to_string(p.log_path()).expect("log file");
    assert!(p.log_path().ends_with("echoer.log"));
    assert!(
        log.contains("\nhello\n") && log.contains("\noops\n"),
        "{log}"
    );

    assert!(p.is_running());
    let status = p.kill();
    assert_eq!(status.signal(), Some(9), "{status}");
    assert!(!p.is_running());
    assert!(!pid_alive(p.pid()));
    p.assert_no_panic();
}

#[test]
fn process_signal_term_runs_the_trap_and_exits_zero() {
    let p = sh(
        "trapper",
        r#"trap "exit 0" TERM; echo ready; while true; do sleep 0.1; done"#,
    );
    p.wait_for_line("ready", SECS_5);
    p.signal("TERM");
    let status = p.wait_exit(SECS_5).expect("exited after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!p.is_running());
}

#[test]
fn process_reports_exit_code() {
    let p = sh("exiter", "echo bye; exit 3");
    let status = p.wait_exit(SECS_5).expect("exits");
    assert_eq!(status.code(), Some(3));
    p.wait_for_line("bye", SECS_5);
}

#[test]
fn dropped_process_is_killed() {
    let p = sh("sleeper", "exec sleep 30");
    let pid = p.pid();
    assert!(pid_alive(pid));
    drop(p);
    assert!(!pid_alive(pid), "pid {pid} still alive after drop");
}

#[test]
fn process_gets_harness_environment() {
    let p = Process::spawn(
        "env",
        "sh",
        &[
            "-c",
            r#"echo "bt=$RUST_BACKTRACE log=$RUST_LOG x=$X"; exec sleep 30"#,
        ],
        &[("X", "1")],
    );
    assert_eq!(p.wait_for_line("bt=", SECS_5), "bt=1 log=info x=1");

    let p = Process::spawn(
        "env2",
        "sh",
        &["-c", r#"echo "log=$RUST_LOG""#],
        &[("RUST_LOG", "debug")],
    );
    assert_eq!(p.wait_for_line("log=", SECS_5), "log=debug");
}

/// Runs `f`, which must panic, and returns the panic message. Unlike
/// `#[should_panic]`, the `Process` under test is then dropped normally, so
/// its scratch dir is deleted instead of kept for debugging.
fn panic_message(f: impl FnOnce()) -> String {
    let payload =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn wait_for_line_fails_fast_when_the_process_ends() {
    let p = sh("quitter", "echo something else");
    let started = Instant::now();
    let msg = panic_message(|| {
        p.wait_for_line("never", Duration::from_secs(60));
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        msg.contains("quitter closed its output without printing a line containing \"never\""),
        "{msg}"
    );
    assert!(msg.contains("exit status: 0"), "{msg}");
    assert!(
        msg.contains("something else"),
        "the message must show the output: {msg}"
    );
}

#[test]
fn wait_for_line_times_out_with_the_output_in_the_message() {
    let p = sh("silent", "echo something; exec sleep 30");
    let msg = panic_message(|| {
        p.wait_for_line("never", Duration::from_millis(200));
    });
    assert!(
        msg.contains(
            "timed out after 200ms waiting for silent to print a line containing \"never\""
        ),
        "{msg}"
    );
    assert!(msg.contains("something"), "{msg}");
}

#[test]
fn assert_no_panic_detects_a_panic() {
    let p = sh(
        "panicker",
        r#"echo "thread 'main' panicked at src/main.rs:1:5:" >&2; exit 101"#,
    );
    p.wait_exit(SECS_5).expect("exits");
    p.wait_for_line("panicked", SECS_5);
    let msg = panic_message(|| p.assert_no_panic());
    assert!(
        msg.contains("panicker panicked:\nthread 'main' panicked at src/main.rs:1:5:"),
        "{msg}"
    );
}

// --- commands run to completion ---------------------------------------------------

#[test]
fn run_command_captures_output_and_status() {
    let out = run_command("sh", &["-c", "echo out; echo err >&2; exit 3"], &[], SECS_5);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    assert_eq!(out.code(), Some(3));
    assert!(!out.success());

    let out = run_command("sh", &["-c", r#"echo '{"ok": true}'"#], &[], SECS_5);
    assert!(out.success());
    assert_eq!(out.json()["ok"], true);
}

#[test]
#[should_panic(expected = "did not finish within 200ms; killed")]
fn run_command_kills_on_timeout() {
    run_command(
        "sh",
        &["-c", "echo started; exec sleep 30"],
        &[],
        Duration::from_millis(200),
    );
}

#[test]
fn agentmesh_binary_is_built() {
    let bin = agentmesh_bin();
    assert!(bin.is_file(), "{}", bin.display());
}

// --- node address parsing --------------------------------------------------------

#[test]
fn listening_line_parse_is_strict() {
    let addr = parse_listening_line("listening on 127.0.0.1:4567").expect("valid");
    assert_eq!(addr.to_string(), "127.0.0.1:4567");
    assert!(parse_listening_line("  listening on 127.0.0.1:80\r").is_ok());
    for bad in [
        "listening on 127.0.0.1:0",
        "listening on 0.0.0.0:4567",
        "listening on 127.0.0.1",
        "listening on 127.0.0.1:4567 (grpc)",
        "listening on localhost:4567",
        "INFO agentmesh: listening on 127.0.0.1:4567",
        "Listening on 127.0.0.1:4567",
    ] {
        let err = parse_listening_line(bad).expect_err(bad);
        assert!(err.contains("listening on 127.0.0.1:PORT"), "{err}");
    }
}
