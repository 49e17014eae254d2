//! Where each subtask of a task's DAG is drawn: a layered layout, one
//! column per dependency depth, computed over plain data so that it is
//! tested here and the page only draws what it is given.
//!
//! A subtask's layer is the length of the longest dependency chain that
//! leads to it (roots are layer 0), so every edge points to a later
//! column. Within a layer, subtasks are ordered by the mean row of their
//! dependencies (the barycentre heuristic, one pass), ties in document
//! order, which keeps most edges short and uncrossed for the shapes task
//! files have; it is not a crossing minimiser, and need not be.
//!
//! The input is trusted for nothing: a dependency naming no subtask is
//! ignored, and a cycle (which validation refuses, but a record read from
//! the store is data) cannot make the computation loop: depths are
//! relaxed at most `n` times and capped at `n - 1`.

use std::collections::HashMap;

/// Horizontal distance between the left edges of two layers, in SVG units.
pub const COLUMN_WIDTH: u32 = 200;
/// Vertical distance between the top edges of two rows.
pub const ROW_HEIGHT: u32 = 72;
/// Drawn size of one subtask's box.
pub const NODE_WIDTH: u32 = 160;
pub const NODE_HEIGHT: u32 = 52;
/// Margin around the drawing.
pub const MARGIN: u32 = 16;

/// Where one subtask goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Dependency depth: the column.
    pub layer: usize,
    /// Position within its layer, from the top.
    pub row: usize,
    /// Top-left corner of its box.
    pub x: u32,
    pub y: u32,
}

/// The layout of a whole DAG: one [`Placed`] per input node, in input
/// order, the edges that were drawn, and the drawing's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub nodes: Vec<Placed>,
    /// `(from, to)` as indices into the input: `from` is a dependency of
    /// `to`. Dependencies naming no node are left out, and so is a
    /// repeated one.
    pub edges: Vec<(usize, usize)>,
    pub width: u32,
    pub height: u32,
}

/// Lays out `nodes`, each given as its id and the ids it depends on.
pub fn layout<S: AsRef<str>>(nodes: &[(S, Vec<S>)]) -> Layout {
    let n = nodes.len();
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_ref(), i))
        .rev() // the first of two equal ids wins
        .collect();
    let mut edges = Vec::new();
    for (to, (_, deps)) in nodes.iter().enumerate() {
        for dep in deps {
            if let Some(&from) = index.get(dep.as_ref())
                && from != to
                && !edges.contains(&(from, to))
            {
                edges.push((from, to));
            }
        }
    }

    // Longest-path depth by relaxation, bounded so a cycle ends.
    let mut depth = vec![0usize; n];
    let cap = n.saturating_sub(1);
    for _ in 0..n {
        let mut changed = false;
        for &(from, to) in &edges {
            let wanted = (depth[from] + 1).min(cap);
            if depth[to] < wanted {
                depth[to] = wanted;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }

    let layers = depth.iter().max().map_or(0, |d| d + 1);
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(from, to) in &edges {
        if depth[from] < depth[to] {
            parents[to].push(from);
        }
    }
    let mut row = vec![0usize; n];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for (i, &d) in depth.iter().enumerate() {
        members[d].push(i);
    }
    for layer in &members {
        let mut order: Vec<(f64, usize)> = layer
            .iter()
            .map(|&i| {
                let key = if parents[i].is_empty() {
                    // Roots keep document order ahead of the rest.
                    -1.0
                } else {
                    parents[i].iter().map(|&p| row[p]).sum::<usize>() as f64
                        / parents[i].len() as f64
                };
                (key, i)
            })
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (r, &(_, i)) in order.iter().enumerate() {
            row[i] = r;
        }
    }

    let rows = members.iter().map(Vec::len).max().unwrap_or(0);
    let placed = (0..n)
        .map(|i| Placed {
            layer: depth[i],
            row: row[i],
            x: MARGIN + depth[i] as u32 * COLUMN_WIDTH,
            y: MARGIN + row[i] as u32 * ROW_HEIGHT,
        })
        .collect();
    let span = |count: usize, step: u32, size: u32| {
        if count == 0 {
            0
        } else {
            2 * MARGIN + (count as u32 - 1) * step + size
        }
    };
    Layout {
        nodes: placed,
        edges,
        width: span(layers, COLUMN_WIDTH, NODE_WIDTH),
        height: span(rows, ROW_HEIGHT, NODE_HEIGHT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(spec: &[(&'static str, &[&'static str])]) -> Vec<(&'static str, Vec<&'static str>)> {
        spec.iter().map(|(id, deps)| (*id, deps.to_vec())).collect()
    }

    fn cells(layout: &Layout) -> Vec<(usize, usize)> {
        layout.nodes.iter().map(|p| (p.layer, p.row)).collect()
    }

    #[test]
    fn a_diamond_takes_three_columns_with_the_middle_two_stacked() {
        let layout = layout(&dag(&[
            ("fetch", &[]),
            ("left", &["fetch"]),
            ("right", &["fetch"]),
            ("join", &["left", "right"]),
        ]));
        assert_eq!(cells(&layout), [(0, 0), (1, 0), (1, 1), (2, 0)]);
        assert_eq!(layout.edges, [(0, 1), (0, 2), (1, 3), (2, 3)]);
        assert_eq!(layout.nodes[3].x, MARGIN + 2 * COLUMN_WIDTH);
        assert_eq!(layout.nodes[2].y, MARGIN + ROW_HEIGHT);
        assert_eq!(layout.width, 2 * MARGIN + 2 * COLUMN_WIDTH + NODE_WIDTH);
        assert_eq!(layout.height, 2 * MARGIN + ROW_HEIGHT + NODE_HEIGHT);
    }

    #[test]
    fn the_layer_is_the_longest_chain_not_the_shortest() {
        // `end` depends on `a` directly and through `b`: it goes after `b`.
        let layout = layout(&dag(&[("a", &[]), ("b", &["a"]), ("end", &["a", "b"])]));
        assert_eq!(
            layout.nodes.iter().map(|p| p.layer).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        for &(from, to) in &layout.edges {
            assert!(layout.nodes[from].layer < layout.nodes[to].layer);
        }
    }

    #[test]
    fn children_are_ordered_under_their_parents() {
        // Declared in the opposite order of their parents' rows.
        let layout = layout(&dag(&[
            ("p0", &[]),
            ("p1", &[]),
            ("c1", &["p1"]),
            ("c0", &["p0"]),
        ]));
        assert_eq!(cells(&layout), [(0, 0), (0, 1), (1, 1), (1, 0)]);
    }

    #[test]
    fn independent_subtasks_share_the_first_column_in_document_order() {
        let layout = layout(&dag(&[("x", &[]), ("y", &[]), ("z", &[])]));
        assert_eq!(cells(&layout), [(0, 0), (0, 1), (0, 2)]);
        assert!(layout.edges.is_empty());
    }

    #[test]
    fn unknown_self_and_repeated_dependencies_draw_no_edge() {
        let layout = layout(&dag(&[("a", &["ghost", "a"]), ("b", &["a", "a"])]));
        assert_eq!(layout.edges, [(0, 1)]);
        assert_eq!(cells(&layout), [(0, 0), (1, 0)]);
    }

    #[test]
    fn a_cycle_ends_with_every_node_placed() {
        let layout = layout(&dag(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"])]));
        assert_eq!(layout.nodes.len(), 3);
        assert!(layout.nodes.iter().all(|p| p.layer <= 2));
    }

    #[test]
    fn nothing_lays_out_as_nothing() {
        let layout = layout::<&str>(&[]);
        assert!(layout.nodes.is_empty());
        assert_eq!((layout.width, layout.height), (0, 0));
    }

    #[test]
    fn a_long_chain_is_one_row() {
        let ids: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
        let nodes: Vec<(String, Vec<String>)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), ids[..i].last().cloned().into_iter().collect()))
            .collect();
        let layout = layout(&nodes);
        assert!(layout.nodes.iter().all(|p| p.row == 0));
        assert_eq!(layout.nodes[49].layer, 49);
    }
}
