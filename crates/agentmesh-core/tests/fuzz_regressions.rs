//! Replays every input the fuzzers kept under `fuzz/regressions/<target>/`,
//! and the seeds under `fuzz/seeds/<target>/`, through the checks the fuzz
//! targets run (`fuzz/src/core_checks.rs`, included as it is): an input
//! that once broke a budget or panicked stays a test of the normal suite.
//! `scripts/fuzz` finds new ones.

#[path = "../../../fuzz/src/core_checks.rs"]
mod checks;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Every kept input of `target`, in a stable order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files: Vec<PathBuf> = ["regressions", "seeds"]
        .iter()
        .filter_map(|kept| std::fs::read_dir(fuzz.join(kept).join(target)).ok())
        .flatten()
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every input of `target` and names each one that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no inputs kept for {target}");
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("a readable input");
            panic::catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target} fails on: {failed:#?}");
}

#[test]
fn task_file_inputs_stay_within_limits() {
    replay("task_file", checks::task_file);
}

#[test]
fn reference_inputs_resolve_within_bounds() {
    replay("reference", checks::reference);
}

#[test]
fn math_eval_inputs_stay_within_limits() {
    replay("math_eval", checks::math_eval);
}

#[test]
fn json_query_inputs_stay_within_limits() {
    replay("json_query", checks::json_query);
}
