//! Generators shared by the crate's property tests.

use proptest::prelude::*;

/// A random DAG of 1 to `max_tasks - 1` tasks: each task depends on up to
/// `max_deps` distinct tasks before it, given by index.
pub fn dag(max_tasks: usize, max_deps: usize) -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1usize..max_tasks).prop_flat_map(move |n| {
        (0..n)
            .map(|i| proptest::collection::btree_set(0..i.max(1), 0..=i.min(max_deps)))
            .collect::<Vec<_>>()
            .prop_map(|deps| {
                deps.into_iter()
                    .enumerate()
                    .map(|(i, ds)| ds.into_iter().filter(|&d| d < i).collect())
                    .collect()
            })
    })
}
