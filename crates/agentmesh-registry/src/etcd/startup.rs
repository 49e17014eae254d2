//! Patience at start-up: a node started beside its etcd (one compose
//! file, one Helm release, a machine booting) finds it not answering yet.
//! [`patiently`] tries again with capped, jittered backoff for
//! [`EtcdOptions::connect_patience`], with one WARN line per failed
//! attempt, and then gives up with one error naming the endpoints, the
//! attempts and the last reason. Refusals (a wrong password, an untrusted
//! certificate, a URL and TLS that do not fit) fail at once: waiting does
//! not change them.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::EtcdOptions;
use crate::RegistryError;

/// First pause after a failed attempt.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// Longest pause between attempts: one WARN line every few seconds at
/// most, not a line per 100 ms, and a node still starts within seconds
/// of its etcd.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// The pause after failed attempt `attempt` (1-based): doubling from
/// [`FIRST_PAUSE`] up to [`MAX_PAUSE`], "equal jitter" (half fixed, half
/// random, `random` in `[0, 1)`) so nodes started together do not retry
/// in step.
pub(super) fn pause(attempt: u32, random: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    let base = FIRST_PAUSE.saturating_mul(1 << doublings).min(MAX_PAUSE);
    let half = base / 2;
    half + half.mul_f64(random.clamp(0.0, 1.0))
}

/// Runs `attempt` until it succeeds, fails with anything but
/// [`RegistryError::Unavailable`], or `options.connect_patience` has run
/// out (the last attempt starts at the deadline, and is bounded by its own
/// connect timeout); the final error says how long and how often it
/// tried.
pub(super) async fn patiently<T, F, Fut>(
    options: &EtcdOptions,
    mut attempt: F,
) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RegistryError>>,
{
    let started = Instant::now();
    let deadline = started + options.connect_patience;
    let mut attempts = 0_u32;
    loop {
        attempts += 1;
        let reason = match attempt().await {
            Err(RegistryError::Unavailable(reason)) => reason,
            done => return done,
        };
        if options.connect_patience.is_zero() {
            return Err(RegistryError::Unavailable(reason));
        }
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(RegistryError::Unavailable(format!(
                "{reason} (gave up after {attempts} attempt{} in {:.1} s)",
                if attempts == 1 { "" } else { "s" },
                now.duration_since(started).as_secs_f64()
            )));
        }
        // The last pause ends at the deadline, for one last attempt.
        let pause = pause(attempts, rand::random::<f64>()).min(left);
        warn!(
            attempt = attempts,
            left_s = (left.as_secs_f64() * 10.0).round() / 10.0,
            retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
            "etcd not reachable yet, retrying: {reason}"
        );
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn pauses_double_to_the_cap_with_half_of_each_random() {
        assert_eq!(pause(1, 0.0), FIRST_PAUSE / 2);
        assert_eq!(pause(1, 1.0), FIRST_PAUSE);
        assert_eq!(pause(2, 0.0), FIRST_PAUSE);
        assert_eq!(pause(3, 0.0), FIRST_PAUSE * 2);
        assert_eq!(pause(50, 1.0), MAX_PAUSE);
        assert_eq!(pause(50, 0.0), MAX_PAUSE / 2);
        assert_eq!(pause(u32::MAX, 0.5), MAX_PAUSE * 3 / 4);
    }

    #[tokio::test]
    async fn unreachable_is_retried_until_the_patience_runs_out() {
        let patience = Duration::from_millis(1500);
        let options = EtcdOptions::new(vec!["http://a:1".into()]).with_connect_patience(patience);
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let error = patiently(&options, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(RegistryError::Unavailable("connection refused".into()))
        })
        .await
        .unwrap_err();
        let calls = calls.load(Ordering::SeqCst);
        // Pauses of 0.25-0.5 s, 0.5-1 s, then what is left: three or four
        // attempts, the last at the deadline.
        assert!((3..=4).contains(&calls), "{calls} attempts");
        let took = started.elapsed();
        assert!(took >= patience && took < patience * 2, "{took:?}");
        let RegistryError::Unavailable(message) = error else {
            panic!("{error:?}")
        };
        assert!(
            message.starts_with("connection refused (gave up after"),
            "{message}"
        );
        assert!(message.contains(&format!("{calls} attempts")), "{message}");
    }

    #[tokio::test]
    async fn refusals_fail_at_once_and_success_ends_the_wait() {
        let options = EtcdOptions::new(vec!["http://a:1".into()])
            .with_connect_patience(Duration::from_secs(10));
        let calls = AtomicU32::new(0);
        let refused = patiently(&options, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(RegistryError::Refused("bad password".into()))
        })
        .await;
        assert!(matches!(refused, Err(RegistryError::Refused(_))));
        assert_eq!(calls.swap(0, Ordering::SeqCst), 1);
        let joined = patiently(&options, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(RegistryError::Unavailable("not yet".into())),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(joined.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let once = EtcdOptions::new(vec!["http://a:1".into()]);
        calls.store(0, Ordering::SeqCst);
        let error = patiently(&once, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(RegistryError::Unavailable("down".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no patience: one attempt");
        assert!(error.to_string().ends_with("down"), "{error}");
    }
}
