use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn a(id: &str) -> AgentId {
    AgentId::new(id)
}

fn objective(tasks: Value) -> ObjectiveSpec {
    serde_json::from_value(json!({"id": "demand", "tasks": tasks})).unwrap()
}

/// `a` and `b` independent, `c` after both, `d` after `c`.
fn diamond() -> ObjectiveSpec {
    objective(json!([
        {"id": "a", "capability": "text.word_count", "input": {"text": "x y z w"}},
        {"id": "b", "capability": "text.word_count", "input": {"text": "u v"}},
        {"id": "c", "capability": "math.eval",
         "input": {"expr": "({{a.words}} + {{b.words}}) / 2", "n": "{{a.words}}"},
         "depends_on": ["a", "b"], "timeout_ms": 500},
        {"id": "d", "capability": "math.eval", "input": {"expr": "{{c.value}} + 1"},
         "depends_on": ["c"]},
    ]))
}

/// The ids of the dispatches among `steps`.
fn dispatched(steps: &[TacticalStep]) -> Vec<&str> {
    steps
        .iter()
        .filter_map(|s| match s {
            TacticalStep::Dispatch { task_id, .. } => Some(task_id.as_str()),
            _ => None,
        })
        .collect()
}

fn escalation(steps: Vec<TacticalStep>) -> Escalation {
    match steps.as_slice() {
        [TacticalStep::Escalate(e)] => e.clone(),
        other => panic!("expected one escalation, got {other:?}"),
    }
}

#[test]
fn dispatch_order_follows_the_dag_and_references_are_resolved() {
    let mut t = Tactical::new(&diamond(), TacticalPolicy::default());
    let steps = t.next();
    assert_eq!(dispatched(&steps), ["a", "b"]);
    assert_eq!(t.next(), [], "nothing new without an event");
    assert_eq!(t.started("a", &a("w1")), Applied::Changed);
    assert_eq!(
        t.completed("a", &a("w1"), json!({"words": 4})),
        Applied::Changed
    );
    assert_eq!(t.next(), [], "c still waits for b");
    t.completed("b", &a("w2"), json!({"words": 2}));
    assert_eq!(
        t.next(),
        [TacticalStep::Dispatch {
            task_id: "c".into(),
            capability: "math.eval".into(),
            input: json!({"expr": "(4 + 2) / 2", "n": 4}),
            timeout_ms: Some(500),
            avoid: vec![],
        }]
    );
    t.completed("c", &a("w1"), json!({"value": 3}));
    let steps = t.next();
    assert_eq!(dispatched(&steps), ["d"]);
    t.completed("d", &a("w2"), json!({"value": 4}));
    let [TacticalStep::Done(summary)] = <[TacticalStep; 1]>::try_from(t.next()).unwrap() else {
        panic!("every task completed");
    };
    assert_eq!(
        summary,
        TacticalSummary {
            objective: "demand".into(),
            tasks: 4,
            completed: 4,
            failed: 0,
            outputs: BTreeMap::from([
                ("a".into(), json!({"words": 4})),
                ("b".into(), json!({"words": 2})),
                ("c".into(), json!({"value": 3})),
                ("d".into(), json!({"value": 4})),
            ]),
            attempts: 4,
            summary: "objective 'demand' met: 4 tasks completed in 4 attempts".into(),
        }
    );
    assert!(summary.met());
    assert!(t.is_over());
    assert_eq!(t.next(), [], "done once");
}

#[test]
fn a_failed_task_is_retried_elsewhere_then_escalated() {
    let mut t = Tactical::new(&diamond(), TacticalPolicy::default());
    t.next();
    t.completed("b", &a("w9"), json!({"words": 2}));
    for (agent, avoid) in [("w1", vec![]), ("w2", vec![a("w1")])] {
        t.started("a", &a(agent));
        assert_eq!(t.failed("a", &a(agent), "boom"), Applied::Changed);
        let steps = t.next();
        let [
            TacticalStep::Dispatch {
                task_id,
                avoid: got,
                ..
            },
        ] = steps.as_slice()
        else {
            panic!("a is dispatched again: {steps:?}");
        };
        assert_eq!(task_id, "a");
        let mut expected = avoid.clone();
        expected.push(a(agent));
        assert_eq!(got, &expected);
    }
    t.started("a", &a("w3"));
    t.failed("a", &a("w3"), "still boom");
    let e = escalation(t.next());
    assert_eq!(e.objective, "demand");
    assert_eq!(e.task_id, "a");
    assert_eq!(e.escalation, REPLAN);
    assert_eq!(
        e.summary,
        "task 'a' failed on 3 agents (w1, w2, w3); last error: still boom"
    );
    assert_eq!(e.partial.completed, 1);
    assert_eq!(e.partial.failed, 1);
    assert_eq!(e.partial.attempts, 4);
    assert_eq!(
        e.partial.summary,
        "objective 'demand' not met: 1 of 4 tasks completed, 1 failed; task 'a' failed on 3 agents (w1, w2, w3); last error: still boom"
    );
    assert!(e.direction().needs_action());
    assert!(t.is_over());
    assert_eq!(t.next(), [], "nothing is dispatched after an escalation");
}

#[test]
fn the_retry_budget_counts_distinct_agents() {
    let policy = TacticalPolicy {
        retries_elsewhere: 1,
    };
    let mut t = Tactical::new(&diamond(), policy);
    t.next();
    t.failed("a", &a("w1"), "boom");
    t.next();
    assert_eq!(
        t.failed("a", &a("w1"), "again"),
        Applied::Ignored("the agent already failed this task"),
        "a late duplicate from an avoided agent does not use up the budget"
    );
    assert_eq!(
        t.started("a", &a("w1")),
        Applied::Ignored("the agent already failed this task")
    );
    assert_eq!(t.next(), []);
    t.failed("a", &a("w2"), "boom");
    assert_eq!(escalation(t.next()).escalation, REPLAN);

    let mut t = Tactical::new(
        &diamond(),
        TacticalPolicy {
            retries_elsewhere: 0,
        },
    );
    t.next();
    t.failed("b", &a("w1"), "boom");
    assert_eq!(escalation(t.next()).task_id, "b", "no retry at all");
}

#[test]
fn stale_and_stray_events_are_ignored() {
    let mut t = Tactical::new(&diamond(), TacticalPolicy::default());
    assert_eq!(
        t.completed("a", &a("w1"), json!(1)),
        Applied::Ignored("the task is not dispatched")
    );
    t.next();
    t.started("a", &a("w1"));
    assert_eq!(
        t.completed("a", &a("w2"), json!(1)),
        Applied::Ignored("another agent runs this task")
    );
    assert_eq!(
        t.failed("a", &a("w2"), "x"),
        Applied::Ignored("another agent runs this task")
    );
    assert_eq!(
        t.started("a", &a("w1")),
        Applied::Ignored("already started")
    );
    assert_eq!(
        t.started("c", &a("w1")),
        Applied::Ignored("the task is not waiting for an agent")
    );
    assert_eq!(
        t.completed("zz", &a("w1"), json!(1)),
        Applied::Ignored("unknown task")
    );
    t.completed("a", &a("w1"), json!({"words": 1}));
    assert_eq!(
        t.completed("a", &a("w1"), json!({"words": 2})),
        Applied::Ignored("the task already completed"),
        "the first result counts"
    );
    // A result may come without a start from any agent that has not failed it.
    assert_eq!(
        t.completed("b", &a("w7"), json!({"words": 1})),
        Applied::Changed
    );
    assert_eq!(t.summary().outputs["a"], json!({"words": 1}));
}

#[test]
fn an_unresolvable_reference_escalates_as_unrecoverable_without_dispatching() {
    let mut t = Tactical::new(
        &objective(json!([
            {"id": "a", "capability": "c"},
            {"id": "b", "capability": "c", "input": {"x": "{{a.nope}}"}, "depends_on": ["a"]},
            {"id": "c", "capability": "c", "depends_on": ["a"]},
        ])),
        TacticalPolicy::default(),
    );
    t.next();
    t.completed("a", &a("w1"), json!({"words": 1}));
    let e = escalation(t.next());
    assert_eq!(e.escalation, UNRECOVERABLE);
    assert_eq!(
        e.summary,
        "task 'b' cannot start: reference {{a.nope}}: output of 'a' has no field 'nope'"
    );
    assert!(t.in_flight().is_empty(), "c was not sent out");
}

#[test]
fn an_unplaceable_task_escalates_for_a_replan() {
    let mut t = Tactical::new(&diamond(), TacticalPolicy::default());
    t.next();
    t.started("b", &a("w1"));
    assert_eq!(
        t.unplaceable("b", "no worker offers it"),
        Applied::Ignored("the task is not waiting for an agent")
    );
    assert_eq!(
        t.unplaceable("a", "no worker offers text.word_count"),
        Applied::Changed
    );
    let e = escalation(t.next());
    assert_eq!(e.escalation, REPLAN);
    assert_eq!(
        e.summary,
        "task 'a' could not be placed: no worker offers text.word_count"
    );
    assert_eq!(t.in_flight(), [("b", Some(&a("w1")))]);
    // Work still running is recorded after the escalation.
    t.completed("b", &a("w1"), json!({"words": 2}));
    assert_eq!(t.summary().completed, 1);
    assert!(t.in_flight().is_empty());
}

#[test]
fn an_objective_that_can_never_progress_escalates() {
    // Only reachable without validation: a cycle.
    let mut t = Tactical::new(
        &objective(json!([
            {"id": "a", "capability": "c", "depends_on": ["b"]},
            {"id": "b", "capability": "c", "depends_on": ["a"]},
        ])),
        TacticalPolicy::default(),
    );
    let e = escalation(t.next());
    assert_eq!(e.escalation, UNRECOVERABLE);
    assert_eq!(
        e.summary,
        "tasks 'a', 'b' can never start: their dependencies cannot complete"
    );
}

#[test]
fn summaries_serialize_for_the_upward_report() {
    let mut t = Tactical::new(
        &objective(json!([{"id": "a", "capability": "c"}])),
        TacticalPolicy::default(),
    );
    t.next();
    t.completed("a", &a("w1"), json!({"value": 1}));
    let [TacticalStep::Done(summary)] = <[TacticalStep; 1]>::try_from(t.next()).unwrap() else {
        panic!("done");
    };
    assert_eq!(
        serde_json::to_value(&summary).unwrap(),
        json!({
            "objective": "demand", "tasks": 1, "completed": 1, "failed": 0,
            "outputs": {"a": {"value": 1}}, "attempts": 1,
            "summary": "objective 'demand' met: 1 task completed in 1 attempt",
        })
    );
    assert_eq!(
        summary.direction(),
        Direction::Upward {
            escalation: ROUTINE,
            summary: summary.summary.clone()
        }
    );
    let policy: TacticalPolicy = serde_json::from_value(json!({})).unwrap();
    assert_eq!(policy.retries_elsewhere, 2);
}

/// A random DAG; each task's input references every dependency's output.
fn dag() -> impl Strategy<Value = Vec<Vec<usize>>> {
    crate::test_support::dag(24, 3)
}

fn objective_of(deps: &[Vec<usize>]) -> ObjectiveSpec {
    ObjectiveSpec {
        id: "o".into(),
        description: None,
        tasks: deps
            .iter()
            .enumerate()
            .map(|(i, ds)| SubtaskSpec {
                id: format!("t{i}"),
                capability: "c".into(),
                input: json!({
                    "from": ds.iter().map(|d| format!("{{{{t{d}.n}}}}")).collect::<Vec<_>>()
                }),
                depends_on: ds.iter().map(|d| format!("t{d}")).collect(),
                timeout_ms: None,
            })
            .collect(),
    }
}

proptest! {
    /// Driven in any order with random failures, the coordinator only
    /// dispatches tasks whose dependencies completed, with their outputs
    /// in the input; never dispatches a task already out; never sends a
    /// task to an agent that failed it; and ends with Done exactly when no
    /// task ran out of agents.
    #[test]
    fn dispatches_respect_the_dag_and_the_budget(
        deps in dag(),
        choices in proptest::collection::vec(any::<(prop::sample::Index, u8)>(), 200),
        retries_elsewhere in 0u32..3,
    ) {
        let mut t = Tactical::new(&objective_of(&deps), TacticalPolicy { retries_elsewhere });
        let agents = ["w0", "w1", "w2", "w3"].map(a);
        let mut completed: BTreeSet<usize> = BTreeSet::new();
        // Task index -> agents to avoid, for the tasks out.
        let mut out: BTreeMap<usize, Vec<AgentId>> = BTreeMap::new();
        let mut failures: BTreeMap<usize, usize> = BTreeMap::new();
        let mut choices = choices.into_iter();
        let ending = loop {
            let steps = t.next();
            let mut end = None;
            for step in steps {
                match step {
                    TacticalStep::Dispatch { task_id, input, avoid, .. } => {
                        let i: usize = task_id[1..].parse().unwrap();
                        prop_assert!(out.insert(i, avoid.clone()).is_none(), "t{i} dispatched twice");
                        prop_assert!(!completed.contains(&i));
                        for d in &deps[i] {
                            prop_assert!(completed.contains(d), "t{i} before its dependency t{d}");
                        }
                        let expected: Vec<Value> = deps[i].iter().map(|&d| json!(d)).collect();
                        prop_assert_eq!(input, json!({"from": expected}));
                        prop_assert_eq!(avoid.len(), failures.get(&i).copied().unwrap_or(0));
                    }
                    other => end = Some(other),
                }
            }
            if let Some(end) = end {
                break end;
            }
            let (pick, roll) = choices.next().unwrap();
            prop_assert!(!out.is_empty(), "stalled with nothing out");
            let (i, avoid) = out
                .iter()
                .nth(pick.index(out.len()))
                .map(|(&i, avoid)| (i, avoid.clone()))
                .unwrap();
            let agent = agents.iter().find(|w| !avoid.contains(w)).unwrap().clone();
            let id = format!("t{i}");
            if roll % 4 == 0 {
                prop_assert_eq!(t.failed(&id, &agent, "boom"), Applied::Changed);
                *failures.entry(i).or_default() += 1;
            } else {
                t.started(&id, &agent);
                prop_assert_eq!(t.completed(&id, &agent, json!({"n": i})), Applied::Changed);
                completed.insert(i);
            }
            out.remove(&i);
        };
        let budget = 1 + retries_elsewhere as usize;
        match ending {
            TacticalStep::Done(summary) => {
                prop_assert_eq!(summary.completed, deps.len());
                prop_assert!(failures.values().all(|&f| f < budget));
                prop_assert_eq!(summary.attempts, deps.len() + failures.values().sum::<usize>());
            }
            TacticalStep::Escalate(e) => {
                let i: usize = e.task_id[1..].parse().unwrap();
                prop_assert_eq!(failures[&i], budget);
                prop_assert_eq!(e.partial.completed, completed.len());
            }
            TacticalStep::Dispatch { .. } => unreachable!(),
        }
    }
}
