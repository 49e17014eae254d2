//! Class 6: an output larger than a worker should report. A
//! `text.word_count` over 50,000 distinct words lists every one of them
//! (`top` is the submitter's to choose): 1.3 MB of output from 250 KB of
//! input, over the worker's output cap (`--max-output-bytes`, 256 KiB). It
//! must fail its attempt at once, naming the cap and the size. (An output
//! over the 4 MiB envelope, which before this cap was never reported and
//! held the subtask for the 600 s attempt timeout, three times, is now
//! stopped by the same cap; a result over the envelope for any other
//! reason is failed by the worker's report, see `actors/report.rs`.)

use std::fmt::Write;
use std::time::{Duration, Instant};

use super::{HONEST_TASK_TIMEOUT, assert_survived, capped, submit_honest};

/// Distinct words in the hostile text: 250 KB, under the 256 KiB limit
/// on one subtask's input.
const WORDS: usize = 50_000;

/// The default attempt timeout (`--attempt-timeout`): what a result that
/// is never reported costs before the coordinator starts it elsewhere.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);

/// Four base-36 letters per word: distinct, and each one an entry of
/// `top_words` five times its size.
fn distinct_words() -> String {
    let mut text = String::with_capacity(WORDS * 5);
    for n in 0..WORDS {
        let mut word = [b'a'; 4];
        let mut rest = n;
        for letter in word.iter_mut().rev() {
            *letter = b"abcdefghijklmnopqrstuvwxyz0123456789"[rest % 36];
            rest /= 36;
        }
        text.push_str(std::str::from_utf8(&word).unwrap());
        text.push(' ');
    }
    text
}

#[test]
fn an_output_over_the_cap_fails_its_attempt_at_once_with_the_reason() {
    let cluster = capped()
        .coordinators(1)
        .workers(2, "math.eval,text.word_count")
        .start();
    let before = submit_honest(&cluster, "honest");

    let mut task = String::from(
        r#"{"name":"huge-output","tasks":[{"id":"count","capability":"text.word_count","input":{"top":1000000,"text":""#,
    );
    write!(task, "{}\"}}}}]}}", distinct_words()).unwrap();
    let file = cluster.task_file("huge-output.json", &task);
    let started = Instant::now();
    let id = cluster.submit(&file);
    let record = cluster.wait_ended(&id, HONEST_TASK_TIMEOUT);
    let failed_in = started.elapsed();

    assert_eq!(record["status"], "failed", "{record}");
    let error = record["subtasks"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("over the limit of 262144 bytes (--max-output-bytes)"),
        "the failure does not name the cap: {error}"
    );
    let size: u64 = error
        .strip_prefix("output of ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the failure does not give the size: {error}"));
    assert!(size > 256 * 1024, "{size}");
    assert_eq!(
        record["subtasks"][0]["attempts"], 1,
        "an output over the cap was retried: {record}"
    );
    assert!(
        failed_in < ATTEMPT_TIMEOUT / 20,
        "the failure took {failed_in:?}"
    );

    let status = cluster.wait_ended(&before, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");
    let after = submit_honest(&cluster, "honest");
    let status = cluster.wait_ended(&after, HONEST_TASK_TIMEOUT);
    assert_eq!(status["status"], "completed", "{status}");

    let peak = assert_survived(&cluster);
    eprintln!(
        "HOSTILE outputs: {} KB task file, {size} byte output refused in {failed_in:?} \
         (task failed, 1 attempt); largest node peak RSS {peak} KiB",
        task.len() / 1000
    );
}
