//! Two network namespaces joined by a veth pair, for partition tests.
//!
//! Traffic rules of the test suite: tests send traffic only to 127.0.0.0/8
//! or inside network namespaces they created themselves. [`NetnsPair`]
//! creates namespaces `A` and `B` (names carry the test's pid), a veth pair
//! `10.X.Y.1/30` (in A) ↔ `10.X.Y.2/30` (in B) with X and Y derived from the
//! pid, and brings up `lo` and both veth ends. Everything that talks over
//! that link runs inside one of the namespaces (`ip netns exec NS ...`), so
//! no packet leaves the test's own namespaces. Both namespaces are deleted
//! on drop, also when the test panics.
//!
//! Needs root, `ip` (iproute2) and `iptables`. A missing binary is a test
//! FAILURE ([`require_tools`]); a kernel or container without network
//! namespace, veth or netfilter support makes [`NetnsPair::create`] return
//! the reason, for the test to print `SKIPPED: ...` and return.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{CliOutput, Process, is_executable_file, on_path, run_command};

/// Timeout of one `ip` / `iptables` command.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Where `name` is: `PATH`, then the sbin and bin directories (root's tools
/// live in `/usr/sbin`, which a test runner's `PATH` may lack).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let fallbacks = ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name));
    on_path(name)
        .into_iter()
        .chain(fallbacks)
        .find(|p| is_executable_file(p))
}

/// The `ip` and `iptables` binaries. Panics (the test FAILS, it is not
/// skipped) when either is missing.
pub fn require_tools() -> (PathBuf, PathBuf) {
    let missing = |tool: &str, package: &str| -> ! {
        panic!(
            "`{tool}` not found (looked at PATH, /usr/sbin, /sbin, /usr/bin, /bin). The \
             network-partition test needs it: run `scripts/install-deps` (Debian package \
             `{package}`)."
        )
    };
    let ip = find_tool("ip").unwrap_or_else(|| missing("ip", "iproute2"));
    let iptables = find_tool("iptables").unwrap_or_else(|| missing("iptables", "iptables"));
    (ip, iptables)
}

/// Runs `program args...` to completion (20 s timeout).
fn run(program: &Path, args: &[&str]) -> CliOutput {
    run_command(program, args, &[], TOOL_TIMEOUT)
}

/// Namespaces `A` and `B` joined by a veth pair; deleted on drop.
#[derive(Debug)]
pub struct NetnsPair {
    ip: PathBuf,
    iptables: PathBuf,
    /// Namespace names.
    pub a: String,
    pub b: String,
    /// The veth addresses (no prefix length): A's and B's.
    pub addr_a: String,
    pub addr_b: String,
    created: Vec<String>,
}

impl NetnsPair {
    /// Creates the namespaces and the link. `Err(reason)` when the kernel
    /// or the container cannot provide them (the caller skips); panics on
    /// any other failure.
    pub fn create(tag: &str) -> Result<NetnsPair, String> {
        let (ip, iptables) = require_tools();
        let pid = std::process::id();
        // 10.X.Y.{1,2}/30 with X in 100..=227 and Y a multiple of 4: distinct
        // for pids that differ in their low 13 bits.
        let x = 100 + (pid >> 6) % 128;
        let y = (pid % 64) * 4;
        let mut pair = NetnsPair {
            a: format!("am-{tag}-a-{pid}"),
            b: format!("am-{tag}-b-{pid}"),
            addr_a: format!("10.{x}.{y}.1"),
            addr_b: format!("10.{x}.{y}.2"),
            ip,
            iptables,
            created: Vec::new(),
        };
        // A namespace left by an earlier run with the same pid.
        for ns in [pair.a.clone(), pair.b.clone()] {
            let _ = run(&pair.ip, &["netns", "del", &ns]);
        }
        for ns in [pair.a.clone(), pair.b.clone()] {
            let out = run(&pair.ip, &["netns", "add", &ns]);
            if !out.success() {
                return Err(format!(
                    "`ip netns add {ns}` failed (no network namespace support here?): {}",
                    out.stderr.trim()
                ));
            }
            pair.created.push(ns);
        }
        // Interface names are limited to 15 bytes.
        let veth_a = format!("amva{pid}");
        let veth_b = format!("amvb{pid}");
        let out = run(
            &pair.ip,
            &[
                "link", "add", &veth_a, "netns", &pair.a, "type", "veth", "peer", "name", &veth_b,
                "netns", &pair.b,
            ],
        );
        if !out.success() {
            return Err(format!(
                "cannot create a veth pair between the namespaces (no veth support here?): {}",
                out.stderr.trim()
            ));
        }
        let (a, b) = (pair.a.clone(), pair.b.clone());
        let (addr_a, addr_b) = (pair.addr_a.clone(), pair.addr_b.clone());
        for (ns, veth, addr) in [(&a, &veth_a, &addr_a), (&b, &veth_b, &addr_b)] {
            pair.ip_ok(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", veth]);
            pair.ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
            pair.ip_ok(&["-n", ns, "link", "set", veth, "up"]);
        }
        // Netfilter inside a namespace: list the filter table once.
        let iptables = pair.iptables.clone();
        let probe = pair.run_in(&b, iptables, &["-w", "-L", "-n"]);
        if !probe.success() {
            return Err(format!(
                "iptables cannot manage a network namespace here (no netfilter support in \
                 this kernel/container?): {}",
                probe.stderr.trim()
            ));
        }
        Ok(pair)
    }

    /// Runs `ip ARGS...` and panics if it fails.
    fn ip_ok(&self, args: &[&str]) {
        let out = run(&self.ip, args);
        assert!(out.success(), "`ip {}` failed:\n{out}", args.join(" "));
    }

    /// `netns exec NS program args...`, the arguments of `ip` that run a
    /// program inside `ns`. `ip netns exec` execs the program in place, so
    /// the process id is the program's own.
    fn exec_args(ns: &str, program: &OsStr, args: &[impl AsRef<OsStr>]) -> Vec<OsString> {
        let mut all: Vec<OsString> = vec!["netns".into(), "exec".into(), ns.into(), program.into()];
        all.extend(args.iter().map(|a| a.as_ref().to_owned()));
        all
    }

    /// Spawns `program args...` inside namespace `ns` as a harness
    /// [`Process`] (same pid, same output capture).
    pub fn spawn_in(
        &self,
        ns: &str,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[impl AsRef<OsStr>],
        envs: &[(&str, &str)],
    ) -> Process {
        Process::spawn(
            name,
            &self.ip,
            &Self::exec_args(ns, program.as_ref(), args),
            envs,
        )
    }

    /// Runs `program args...` inside `ns` to completion (`timeout`: killed,
    /// then panic).
    pub fn run_in_with(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: &[impl AsRef<OsStr>],
        timeout: Duration,
    ) -> CliOutput {
        run_command(
            &self.ip,
            &Self::exec_args(ns, program.as_ref(), args),
            &super::cli_env(&[]),
            timeout,
        )
    }

    /// [`NetnsPair::run_in_with`] with a 20 s timeout.
    pub fn run_in(&self, ns: &str, program: impl AsRef<OsStr>, args: &[&str]) -> CliOutput {
        self.run_in_with(ns, program, args, TOOL_TIMEOUT)
    }

    /// Drops every packet between B and A's address, both ways, with
    /// iptables rules inside B (B's own namespace: nothing else is touched).
    pub fn partition_b_from_a(&self) {
        self.change_partition_rules("-I");
    }

    /// Deletes the rules of [`NetnsPair::partition_b_from_a`].
    pub fn heal(&self) {
        self.change_partition_rules("-D");
    }

    /// Inserts (`-I`) or deletes (`-D`) the partition rules in B.
    fn change_partition_rules(&self, action: &str) {
        for rule in self.partition_rules() {
            let mut args = vec!["-w", action];
            args.extend(rule.iter().map(String::as_str));
            let out = self.run_in(&self.b, &self.iptables, &args);
            assert!(
                out.success(),
                "iptables {} in {}:\n{out}",
                args.join(" "),
                self.b
            );
        }
    }

    fn partition_rules(&self) -> [Vec<String>; 2] {
        let rule = |chain: &str, dir: &str| {
            [chain, dir, &self.addr_a, "-j", "DROP"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        };
        [rule("INPUT", "-s"), rule("OUTPUT", "-d")]
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys its end of the veth pair, and with
        // it the peer; processes still inside keep it alive until they exit
        // (the test's processes are dropped, so killed, before this).
        for ns in self.created.drain(..) {
            let _ = Command::new(&self.ip)
                .args(["netns", "del", &ns])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
