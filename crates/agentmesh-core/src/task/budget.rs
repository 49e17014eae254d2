//! Byte budgets of a task record.
//!
//! A task record is one etcd value, rewritten whole on every change, so it
//! has to fit in one etcd request: etcd refuses a request over its
//! `--max-request-bytes` (1.5 MiB by default), and a record that can never
//! be written would otherwise be retried without end. The record is held
//! to [`RecordLimits::max_record_bytes`], below that limit with room for
//! the key and the transaction around it, and each subtask's output to
//! [`RecordLimits::max_output_bytes`], so that one output cannot take the
//! whole budget of a task with several.
//!
//! Sizes are those of the record as the registry stores it: compact JSON,
//! counted without building the text ([`encoded_len`]).

use std::io;

use serde::Serialize;
use thiserror::Error;

/// etcd's default `--max-request-bytes`: the largest request it accepts.
pub const ETCD_DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Default of [`RecordLimits::max_output_bytes`], which is also the cap a
/// worker holds its tools' outputs to (one `--max-output-bytes` for both):
/// a worker stops an output the coordinator would refuse to store.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 256 * 1024;

/// The byte budgets of task records; knobs of the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// Size of one task record, as stored. Kept below etcd's request limit
    /// (see [`ETCD_DEFAULT_MAX_REQUEST_BYTES`]) with room for the key and
    /// the transaction, or a record could grow too large to write.
    pub max_record_bytes: usize,
    /// Size of one subtask's output, as JSON. A quarter of the record
    /// budget by default: a task's first outputs cannot crowd out its
    /// later ones.
    pub max_output_bytes: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self {
            max_record_bytes: 1024 * 1024,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// A record or output over its budget.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BudgetError {
    #[error(
        "output of subtask '{subtask}' is {bytes} bytes, over the per-subtask output cap of {cap} bytes (--max-output-bytes)"
    )]
    OutputTooLarge {
        subtask: String,
        bytes: usize,
        cap: usize,
    },
    #[error(
        "task record is {bytes} bytes, over the record budget of {budget} bytes (--max-record-bytes)"
    )]
    RecordTooLarge { bytes: usize, budget: usize },
}

impl RecordLimits {
    /// Refuses an output of `bytes` for `subtask` over the per-subtask cap.
    pub fn check_output(&self, subtask: &str, bytes: usize) -> Result<(), BudgetError> {
        if bytes > self.max_output_bytes {
            return Err(BudgetError::OutputTooLarge {
                subtask: subtask.to_owned(),
                bytes,
                cap: self.max_output_bytes,
            });
        }
        Ok(())
    }

    /// Refuses a record of `bytes` over the record budget.
    pub fn check_record(&self, bytes: usize) -> Result<(), BudgetError> {
        if bytes > self.max_record_bytes {
            return Err(BudgetError::RecordTooLarge {
                bytes,
                budget: self.max_record_bytes,
            });
        }
        Ok(())
    }

    /// Both budgets are positive and an output fits in a record.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_record_bytes == 0 || self.max_output_bytes == 0 {
            return Err("--max-record-bytes and --max-output-bytes must be greater than 0".into());
        }
        if self.max_output_bytes > self.max_record_bytes {
            return Err(format!(
                "--max-output-bytes ({}) must not exceed --max-record-bytes ({})",
                self.max_output_bytes, self.max_record_bytes
            ));
        }
        Ok(())
    }
}

/// The length of `value` as compact JSON, counted without building the
/// text. A value that cannot be serialized counts as `usize::MAX`, over
/// any budget.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// An `io::Write` that keeps only the number of bytes written.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with a note
/// of how much was cut.
pub fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn encoded_len_is_the_length_of_the_compact_json() {
        for value in [
            json!(null),
            json!({"a": [1, 2, "x\"y"], "b": {"c": "é\n"}}),
            json!("x".repeat(10_000)),
        ] {
            assert_eq!(
                encoded_len(&value),
                serde_json::to_vec(&value).unwrap().len()
            );
        }
    }

    #[test]
    fn outputs_and_records_over_their_budget_are_refused_naming_it() {
        let limits = RecordLimits {
            max_record_bytes: 1000,
            max_output_bytes: 100,
        };
        assert!(limits.check_output("a", 100).is_ok());
        let error = limits.check_output("a", 101).unwrap_err();
        assert_eq!(
            error.to_string(),
            "output of subtask 'a' is 101 bytes, over the per-subtask output cap of 100 bytes (--max-output-bytes)"
        );
        assert!(limits.check_record(1000).is_ok());
        let error = limits.check_record(1001).unwrap_err();
        assert!(error.to_string().contains("1001 bytes"), "{error}");
        assert!(error.to_string().contains("--max-record-bytes"), "{error}");
    }

    #[test]
    fn the_defaults_fit_under_etcds_request_limit() {
        let limits = RecordLimits::default();
        limits.validate().unwrap();
        assert!(limits.max_record_bytes < ETCD_DEFAULT_MAX_REQUEST_BYTES);
        let inverted = RecordLimits {
            max_record_bytes: 10,
            max_output_bytes: 11,
        };
        assert!(inverted.validate().is_err());
    }

    #[test]
    fn truncation_keeps_a_character_boundary_and_says_what_was_cut() {
        assert_eq!(truncated("short", 10), "short");
        let cut = truncated("ééééé", 3);
        assert_eq!(cut, "é… (8 more bytes)");
    }
}
