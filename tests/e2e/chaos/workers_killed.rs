//! A random worker SIGKILLed every 2 s, and replaced, under load: every
//! subtask that was running on it runs again elsewhere.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::checks::{ExactlyOnce, subtasks_of};
use super::load::{Load, drive};
use super::{WORKER_CAPABILITIES, chaos_cluster, one_at_a_time, spread};
use crate::support::cluster::{NodeSpec, Role};

const TASKS: usize = 500;
const MAX_KILLS: usize = 25;
/// The chaos cadence: one worker SIGKILLed this often.
const KILL_EVERY: Duration = Duration::from_secs(2);

/// A small xorshift generator: which worker dies next need not be secure.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Rng(seed | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn a_random_worker_sigkilled_every_2s() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let mut cluster = chaos_cluster()
        .coordinators(1)
        .workers(4, WORKER_CAPABILITIES)
        .start();
    let load = Load {
        tasks: TASKS,
        nap_ms: 500,
        rate: 25.0,
        in_flight: 32,
        round_robin: false,
        submit_window: Duration::from_secs(90),
        settle: Duration::from_secs(45),
    };
    let (progress, driver) = drive(cluster.coordinator_endpoints(), load);

    let mut rng = Rng::new();
    let mut kills: Vec<(String, u64)> = Vec::new();
    let mut workers_started = cluster.running(Role::Worker).len();
    while kills.len() < MAX_KILLS {
        thread::sleep(KILL_EVERY);
        let all_ended = progress.accepted.load(Ordering::SeqCst) == TASKS
            && progress.terminal.load(Ordering::SeqCst) == TASKS;
        if all_ended || progress.finished.load(Ordering::SeqCst) {
            break;
        }
        let running = cluster.running(Role::Worker);
        let victim = running[rng.below(running.len())].id.clone();
        let at = cluster.kill(&victim);
        kills.push((victim, at));
        workers_started += 1;
        cluster.add(NodeSpec::worker(
            &format!("worker-{workers_started}"),
            WORKER_CAPABILITIES,
        ));
    }
    let summary = driver.join().expect("the driver panicked");

    // Worker SIGKILL -> re-dispatch: for every subtask whose second-to-last
    // attempt ran on a victim, the start of its last attempt minus the
    // victim's kill.
    let killed_at: HashMap<&str, u64> = kills.iter().map(|(w, k)| (w.as_str(), *k)).collect();
    let mut redispatch_ms: Vec<i64> = Vec::new();
    for record in summary.records.values() {
        for s in &record.subtasks {
            if let [.., victim, last] = s.workers_tried.as_slice()
                && victim != last
                && let Some(k) = killed_at.get(victim.as_str())
                && s.started_unix_ms > 0
            {
                redispatch_ms.push(s.started_unix_ms as i64 - *k as i64);
            }
        }
    }
    let applied = ExactlyOnce::check(
        summary.records.values().flat_map(subtasks_of),
        &summary.ends,
    );
    println!(
        "CHAOS scenario=worker-kill {} {} kills={} running_on_killed={} \
         redispatch_ms(min/median/max)={} wall_s={:.1}",
        summary.fields(),
        applied.fields(),
        kills.len(),
        redispatch_ms.len(),
        spread(&redispatch_ms),
        started.elapsed().as_secs_f64()
    );

    summary.assert_all_completed();
    cluster.assert_no_panic();
    assert!(
        !kills.is_empty(),
        "the load ended before the first kill: the chaos tested nothing"
    );
    assert!(
        !redispatch_ms.is_empty(),
        "{} workers were killed but no subtask was re-dispatched after a kill",
        kills.len()
    );
    applied.assert_clean();
}
