//! The JSON the dashboard's script reads: plain, bounded copies of what the
//! registry, the coordinator and the task records hold (see the bounds in
//! [`super`]). Strings from clients stay strings; the script sets them as
//! text only.

use agentmesh_core::AgentId;
use agentmesh_core::task::listing::TaskPage;
use agentmesh_core::task::{Status, SubtaskRecord, TaskRecord};
use agentmesh_proto::v1 as pb;
use serde::Serialize;
use serde_json::Value;

use super::layout::{self, NODE_HEIGHT, NODE_WIDTH};
use super::{MAX_AGENTS, MAX_DAG_NODES, NAME_CHARS, PREVIEW_CHARS, clip};

/// Attempts' workers listed per subtask, the latest ones.
const MAX_TRIED: usize = 8;
/// Capabilities listed per agent.
const MAX_CAPABILITIES: usize = 32;

#[derive(Debug, Serialize)]
pub struct Cluster {
    /// The coordinator answering.
    pub node: String,
    /// Whether it leads.
    pub leading: bool,
    pub leader: Option<String>,
    /// The term this node leads in; `None` on a standby.
    pub term: Option<i64>,
    /// Whether the node's client API requires tokens.
    pub tokens: bool,
    pub agents: Vec<Agent>,
    /// Agents past [`MAX_AGENTS`], not listed.
    pub agents_omitted: usize,
}

#[derive(Debug, Serialize)]
pub struct Agent {
    pub id: String,
    pub role: String,
    pub level: String,
    pub capabilities: Vec<String>,
    pub endpoint: String,
    pub load: u32,
    pub max_concurrency: u32,
    pub version: String,
    pub succeeded: u64,
    pub failed: u64,
    pub reputation: Option<f64>,
    pub breaker: String,
    pub leader: bool,
    pub faults: Vec<String>,
    pub insecure: bool,
}

impl Cluster {
    pub fn new(
        node: &AgentId,
        leading: bool,
        leader: Option<&AgentId>,
        term: Option<i64>,
        tokens: bool,
        mut agents: Vec<pb::AgentInfo>,
    ) -> Self {
        // Coordinators first, then by id: a stable table between polls.
        agents.sort_by(|a, b| {
            (a.role != "coordinator", &a.role, &a.id).cmp(&(
                b.role != "coordinator",
                &b.role,
                &b.id,
            ))
        });
        let omitted = agents.len().saturating_sub(MAX_AGENTS);
        let names = |list: &[String]| {
            list.iter()
                .take(MAX_CAPABILITIES)
                .map(|c| clip(c, NAME_CHARS))
                .collect()
        };
        Self {
            node: node.to_string(),
            leading,
            leader: leader.map(ToString::to_string),
            term,
            tokens,
            agents: agents
                .into_iter()
                .take(MAX_AGENTS)
                .map(|a| Agent {
                    capabilities: names(&a.capabilities),
                    faults: names(&a.faults),
                    id: clip(&a.id, NAME_CHARS),
                    role: a.role,
                    level: a.level,
                    endpoint: clip(&a.endpoint, NAME_CHARS),
                    load: a.load,
                    max_concurrency: a.max_concurrency,
                    version: clip(&a.version, NAME_CHARS),
                    succeeded: a.succeeded,
                    failed: a.failed,
                    reputation: a.reputation,
                    breaker: a.breaker,
                    leader: a.leader,
                    insecure: a.insecure,
                })
                .collect(),
            agents_omitted: omitted,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TaskList {
    pub tasks: Vec<TaskSummary>,
    /// Where the next page starts; `None` on the last.
    pub next_page_token: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TaskSummary {
    pub id: String,
    pub name: String,
    pub status: Status,
    pub pattern: &'static str,
    pub owner: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub subtasks: usize,
    pub completed: usize,
    pub error: Option<String>,
}

impl TaskList {
    pub fn new(page: &TaskPage) -> Self {
        Self {
            tasks: page
                .records
                .iter()
                .map(|r| TaskSummary {
                    id: clip(r.id.as_str(), NAME_CHARS),
                    name: clip(&r.name, NAME_CHARS),
                    status: r.status,
                    pattern: r.pattern.as_str(),
                    owner: r.owner.as_ref().map(ToString::to_string),
                    created_ms: r.created_ms,
                    updated_ms: r.updated_ms,
                    subtasks: r.subtasks.len(),
                    completed: r
                        .subtasks
                        .iter()
                        .filter(|s| s.status == Status::Completed)
                        .count(),
                    error: r.error.as_deref().map(|e| clip(e, PREVIEW_CHARS)),
                })
                .collect(),
            next_page_token: page.next.as_ref().map(|c| c.encode()),
        }
    }
}

/// The answer to a poll whose record has not changed.
#[derive(Debug, Serialize)]
pub struct Unchanged {
    pub unchanged: bool,
    pub revision: u64,
}

impl Unchanged {
    pub fn new(revision: u64) -> Self {
        Self {
            unchanged: true,
            revision,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Task {
    pub id: String,
    pub name: String,
    pub status: Status,
    pub pattern: &'static str,
    pub owner: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub revision: u64,
    pub error: Option<String>,
    pub dag: Dag,
}

#[derive(Debug, Serialize)]
pub struct Dag {
    pub width: u32,
    pub height: u32,
    pub node_width: u32,
    pub node_height: u32,
    pub nodes: Vec<Node>,
    /// `[from, to]` indices into `nodes`: `to` depends on `from`.
    pub edges: Vec<(usize, usize)>,
    /// Subtasks past [`MAX_DAG_NODES`], not drawn.
    pub omitted: usize,
}

#[derive(Debug, Serialize)]
pub struct Node {
    pub id: String,
    pub capability: String,
    pub status: Status,
    pub depends_on: Vec<String>,
    pub worker: Option<String>,
    pub attempts: u32,
    pub restarts: u32,
    /// The latest attempts' workers, oldest first.
    pub tried: Vec<String>,
    pub term: i64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    /// `peer_consensus`: the round (algorithm, votes, agreement,
    /// dissenters), as the record holds it.
    pub consensus: Option<String>,
    /// The share of peers that agreed, from `consensus`, for the graph.
    pub agreement: Option<f64>,
    pub layer: usize,
    pub x: u32,
    pub y: u32,
}

/// `value` as JSON text, cut to [`PREVIEW_CHARS`].
fn preview(value: &Value) -> String {
    match value {
        Value::String(text) => clip(text, PREVIEW_CHARS),
        other => clip(&other.to_string(), PREVIEW_CHARS),
    }
}

fn node(subtask: &SubtaskRecord, placed: layout::Placed) -> Node {
    let skip = subtask.tried.len().saturating_sub(MAX_TRIED);
    Node {
        id: clip(&subtask.id, NAME_CHARS),
        capability: clip(&subtask.capability, NAME_CHARS),
        status: subtask.status,
        depends_on: subtask
            .depends_on
            .iter()
            .take(MAX_DAG_NODES)
            .map(|d| clip(d, NAME_CHARS))
            .collect(),
        worker: subtask
            .worker
            .as_ref()
            .map(|w| clip(w.as_str(), NAME_CHARS)),
        attempts: subtask.attempts,
        restarts: subtask.restarts,
        tried: subtask.tried[skip..]
            .iter()
            .map(|w| clip(w.as_str(), NAME_CHARS))
            .collect(),
        term: subtask.term,
        started_ms: subtask.started_ms,
        finished_ms: subtask.finished_ms,
        input: preview(&subtask.input),
        output: subtask.output.as_ref().map(preview),
        error: subtask.error.as_deref().map(|e| clip(e, PREVIEW_CHARS)),
        consensus: subtask.consensus.as_ref().map(preview),
        agreement: subtask
            .consensus
            .as_ref()
            .and_then(|c| c.get("agreement"))
            .and_then(Value::as_f64),
        layer: placed.layer,
        x: placed.x,
        y: placed.y,
    }
}

/// A task with its first [`MAX_DAG_NODES`] subtasks laid out.
pub fn task(record: &TaskRecord) -> Task {
    let drawn = &record.subtasks[..record.subtasks.len().min(MAX_DAG_NODES)];
    let shape: Vec<(&str, Vec<&str>)> = drawn
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                s.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let laid = layout::layout(&shape);
    Task {
        id: clip(record.id.as_str(), NAME_CHARS),
        name: clip(&record.name, NAME_CHARS),
        status: record.status,
        pattern: record.pattern.as_str(),
        owner: record.owner.as_ref().map(ToString::to_string),
        created_ms: record.created_ms,
        updated_ms: record.updated_ms,
        revision: record.revision,
        error: record.error.as_deref().map(|e| clip(e, PREVIEW_CHARS)),
        dag: Dag {
            width: laid.width,
            height: laid.height,
            node_width: NODE_WIDTH,
            node_height: NODE_HEIGHT,
            nodes: drawn
                .iter()
                .zip(&laid.nodes)
                .map(|(s, &p)| node(s, p))
                .collect(),
            edges: laid.edges,
            omitted: record.subtasks.len() - drawn.len(),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn subtask(id: &str, deps: &[&str], output: Option<Value>) -> SubtaskRecord {
        serde_json::from_value(json!({
            "id": id,
            "capability": "math.eval",
            "input": {"expr": "1 + 1"},
            "depends_on": deps,
            "status": if output.is_some() { "completed" } else { "pending" },
            "output": output,
        }))
        .unwrap()
    }

    fn record(subtasks: Vec<SubtaskRecord>) -> TaskRecord {
        serde_json::from_value(json!({
            "id": "t-1",
            "name": "<img src=x onerror=alert(1)>",
            "pattern": "workflow",
            "strategy": "parallel",
            "status": "running",
            "subtasks": subtasks,
            "created_ms": 1,
            "updated_ms": 2,
            "revision": 7,
        }))
        .unwrap()
    }

    #[test]
    fn a_task_is_drawn_as_its_subtasks_and_their_dependencies() {
        let view = task(&record(vec![
            subtask("a", &[], Some(json!(2))),
            subtask("b", &["a"], None),
            subtask("c", &["a"], None),
            subtask("d", &["b", "c"], None),
        ]));
        assert_eq!(view.dag.nodes.len(), 4);
        assert_eq!(view.dag.edges, [(0, 1), (0, 2), (1, 3), (2, 3)]);
        assert_eq!(view.dag.nodes[3].layer, 2);
        assert_eq!(view.dag.nodes[0].output.as_deref(), Some("2"));
        assert_eq!(view.dag.nodes[0].agreement, None);
        assert_eq!(view.dag.omitted, 0);
    }

    #[test]
    fn a_consensus_rounds_agreement_is_shown_on_its_node() {
        let mut agreed = subtask("a", &[], Some(json!(4)));
        agreed.consensus =
            Some(json!({"algorithm": "majority", "agreement": 0.75, "dissenters": ["p3"]}));
        let view = task(&record(vec![agreed]));
        let node = &view.dag.nodes[0];
        assert_eq!(node.agreement, Some(0.75));
        assert!(
            node.consensus
                .as_ref()
                .unwrap()
                .contains("\"dissenters\":[\"p3\"]")
        );
    }

    #[test]
    fn hostile_text_stays_text_in_the_json() {
        let view = task(&record(vec![subtask(
            "a",
            &[],
            Some(json!("</script><script>alert(1)</script>")),
        )]));
        let text = serde_json::to_string(&view).unwrap();
        // Kept as the client wrote it, as a JSON string: the script sets it
        // as text. The JSON is never parsed as HTML (application/json,
        // nosniff), and the page runs no inline script.
        assert!(
            text.contains(r#""name":"<img src=x onerror=alert(1)>""#),
            "{text}"
        );
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back["dag"]["nodes"][0]["output"],
            "</script><script>alert(1)</script>"
        );
    }

    #[test]
    fn every_preview_and_the_dag_are_bounded() {
        let huge = "x".repeat(10 * PREVIEW_CHARS);
        let many: Vec<SubtaskRecord> = (0..MAX_DAG_NODES + 5)
            .map(|i| subtask(&format!("s{i}"), &[], Some(json!(huge))))
            .collect();
        let mut record = record(many);
        record.name = "n".repeat(10 * NAME_CHARS);
        record.error = Some(huge.clone());
        let view = task(&record);
        assert_eq!(view.dag.nodes.len(), MAX_DAG_NODES);
        assert_eq!(view.dag.omitted, 5);
        assert_eq!(view.name.chars().count(), NAME_CHARS + 1);
        assert_eq!(view.error.unwrap().chars().count(), PREVIEW_CHARS + 1);
        for node in &view.dag.nodes {
            assert_eq!(
                node.output.as_ref().unwrap().chars().count(),
                PREVIEW_CHARS + 1
            );
        }
    }
}
