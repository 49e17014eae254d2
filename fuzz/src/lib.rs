//! What each fuzz target runs. The checks live in their own files so the
//! regression tests of the main workspace include the very same code
//! (`#[path]` modules) and replay every input kept under
//! `fuzz/regressions/` through it.

pub mod core_checks;
#[cfg(feature = "envelope")]
pub mod envelope_checks;
