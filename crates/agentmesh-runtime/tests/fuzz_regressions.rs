//! Replays every envelope the fuzzer kept under `fuzz/regressions/envelope/`,
//! and the seeds under `fuzz/seeds/envelope/`, through the checks the fuzz
//! target runs (`fuzz/src/envelope_checks.rs`, included as it is), so an
//! input that once broke decoding stays a test of the normal suite.

#[path = "../../../fuzz/src/envelope_checks.rs"]
mod checks;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn inputs() -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files: Vec<PathBuf> = ["regressions", "seeds"]
        .iter()
        .filter_map(|kept| std::fs::read_dir(fuzz.join(kept).join("envelope")).ok())
        .flatten()
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn envelope_inputs_decode_within_bounds() {
    let files = inputs();
    assert!(!files.is_empty(), "no envelope inputs kept");
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("a readable input");
            panic::catch_unwind(AssertUnwindSafe(|| checks::envelope(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "envelope fails on: {failed:#?}");
}
