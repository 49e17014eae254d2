//! Algorithms behind the built-in tools (placeholder, being written).
