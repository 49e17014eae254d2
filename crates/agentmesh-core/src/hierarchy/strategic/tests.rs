use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::hierarchy::REPLAN;

fn a(id: &str) -> AgentId {
    AgentId::new(id)
}

/// Objectives `demand` (2 tasks) and `cost` (1 task).
fn objectives() -> Vec<ObjectiveSpec> {
    serde_json::from_value(json!([
        {"id": "demand", "tasks": [{"id": "survey", "capability": "c"}, {"id": "score", "capability": "c"}]},
        {"id": "cost", "tasks": [{"id": "unit", "capability": "c"}]},
    ]))
    .unwrap()
}

fn met(objective: &str, tasks: usize) -> TacticalSummary {
    TacticalSummary {
        objective: objective.into(),
        tasks,
        completed: tasks,
        failed: 0,
        outputs: (0..tasks).map(|i| (format!("t{i}"), json!(i))).collect(),
        attempts: tasks,
        summary: format!("objective '{objective}' met"),
    }
}

fn escalation(objective: &str, level: u8, summary: &str) -> Escalation {
    Escalation {
        objective: objective.into(),
        task_id: "survey".into(),
        escalation: level,
        summary: summary.into(),
        partial: TacticalSummary {
            objective: objective.into(),
            tasks: 2,
            completed: 0,
            failed: 1,
            outputs: BTreeMap::new(),
            attempts: 3,
            summary: format!("objective '{objective}' not met: {summary}"),
        },
    }
}

fn direct(objective: &str, avoid: &[&str]) -> StrategicStep {
    StrategicStep::Direct {
        objective: objective.into(),
        avoid: avoid.iter().map(|x| a(x)).collect(),
    }
}

fn finished(steps: Vec<StrategicStep>) -> FinalReport {
    match steps.into_iter().last() {
        Some(StrategicStep::Finished(report)) => report,
        other => panic!("expected the final report, got {other:?}"),
    }
}

/// Directs both objectives and assigns them to `t1` and `t2`.
fn started() -> Strategic {
    let mut s = Strategic::new(&objectives(), StrategicPolicy::default());
    assert_eq!(s.next(), [direct("demand", &[]), direct("cost", &[])]);
    assert_eq!(s.assigned("demand", &a("t1")), Applied::Changed);
    assert_eq!(s.assigned("cost", &a("t2")), Applied::Changed);
    s
}

#[test]
fn every_objective_is_directed_once_and_reports_aggregate_in_file_order() {
    let mut s = started();
    assert_eq!(s.next(), [], "each directive is handed out once");
    assert_eq!(
        s.assigned("cost", &a("t3")),
        Applied::Ignored("the objective is not waiting for a tactical agent")
    );
    assert_eq!(s.assignee("demand"), Some(&a("t1")));
    assert_eq!(s.reported(&a("t2"), met("cost", 1)), Applied::Changed);
    assert_eq!(s.next(), [], "demand still runs");
    s.reported(&a("t1"), met("demand", 2));
    let report = finished(s.next());
    assert!(s.is_finished());
    assert_eq!(s.next(), [], "finished once");
    assert_eq!(
        report.strategic_summary,
        StrategicSummary {
            objectives: vec![met("demand", 2), met("cost", 1)],
            completed: 2,
            failed: 0,
            replans: 0,
        }
    );
    assert_eq!(
        report.assessment,
        Assessment {
            outcome: Outcome::Succeeded,
            notes: vec!["2 of 2 objectives met".into()],
        }
    );
}

#[test]
fn an_escalation_replans_on_a_different_tactical_agent() {
    let mut s = started();
    let e = escalation("demand", REPLAN, "task 'survey' failed on 3 agents");
    assert_eq!(s.escalated(&a("t1"), e), Applied::Changed);
    assert_eq!(s.next(), [direct("demand", &["t1"])]);
    assert_eq!(
        s.assigned("demand", &a("t1")),
        Applied::Ignored("the tactical agent already failed this objective")
    );
    assert_eq!(s.assigned("demand", &a("t3")), Applied::Changed);
    assert_eq!(
        s.reported(&a("t1"), met("demand", 2)),
        Applied::Ignored("not from the tactical agent in charge of the objective"),
        "the replaced agent's late report is stale"
    );
    s.reported(&a("t3"), met("demand", 2));
    s.reported(&a("t2"), met("cost", 1));
    let report = finished(s.next());
    assert_eq!(report.assessment.outcome, Outcome::Succeeded);
    assert_eq!(report.strategic_summary.replans, 1);
    assert_eq!(
        report.assessment.notes,
        [
            "2 of 2 objectives met after 1 re-plan",
            "objective 'demand' re-planned away from tactical agent 't1': task 'survey' failed on 3 agents",
        ]
    );
}

#[test]
fn an_objective_is_given_up_when_its_replans_are_spent() {
    let mut s = started();
    s.escalated(&a("t1"), escalation("demand", REPLAN, "first"));
    s.next();
    s.assigned("demand", &a("t3"));
    s.escalated(&a("t3"), escalation("demand", REPLAN, "second"));
    assert_eq!(
        s.next(),
        [StrategicStep::GiveUp {
            objective: "demand".into(),
            reason: "second (after 1 re-plan)".into()
        }]
    );
    assert_eq!(s.next(), [], "the give-up is announced once");
    assert_eq!(
        s.escalated(&a("t3"), escalation("demand", REPLAN, "third")),
        Applied::Ignored("the objective already ended")
    );
    s.reported(&a("t2"), met("cost", 1));
    let report = finished(s.next());
    assert_eq!(report.assessment.outcome, Outcome::Partial);
    let summary = &report.strategic_summary;
    assert_eq!(
        (summary.completed, summary.failed, summary.replans),
        (1, 1, 1)
    );
    assert_eq!(
        summary.objectives[0],
        escalation("demand", REPLAN, "second").partial,
        "a given-up objective shows what it had reached"
    );
    assert_eq!(
        report.assessment.notes,
        [
            "1 of 2 objectives met after 1 re-plan",
            "objective 'demand' re-planned away from tactical agent 't1': first",
            "objective 'demand' given up: second (after 1 re-plan)",
        ]
    );
}

#[test]
fn an_unrecoverable_escalation_is_given_up_without_a_replan() {
    let mut s = started();
    s.escalated(
        &a("t1"),
        escalation("demand", UNRECOVERABLE, "task 'score' cannot start"),
    );
    assert_eq!(
        s.next(),
        [StrategicStep::GiveUp {
            objective: "demand".into(),
            reason: "task 'score' cannot start (re-planning cannot mend it)".into()
        }]
    );
}

#[test]
fn no_replans_means_the_first_escalation_gives_up() {
    let mut s = Strategic::new(&objectives(), StrategicPolicy { replans: 0 });
    s.next();
    s.assigned("demand", &a("t1"));
    s.escalated(&a("t1"), escalation("demand", REPLAN, "boom"));
    assert!(matches!(
        s.next().as_slice(),
        [StrategicStep::GiveUp { reason, .. }] if reason == "boom (after 0 re-plans)"
    ));
}

#[test]
fn nothing_met_is_a_failed_assessment() {
    let mut s = Strategic::new(&objectives(), StrategicPolicy::default());
    s.next();
    assert_eq!(
        s.unplaceable("demand", "no tactical agent is live"),
        Applied::Changed
    );
    s.assigned("cost", &a("t1"));
    assert_eq!(
        s.unplaceable("cost", "x"),
        Applied::Ignored("the objective is not waiting for a tactical agent")
    );
    s.escalated(&a("t1"), escalation("cost", UNRECOVERABLE, "broken"));
    let steps = s.next();
    assert_eq!(steps.len(), 3, "two give-ups and the report: {steps:?}");
    let report = finished(steps);
    assert_eq!(report.assessment.outcome, Outcome::Failed);
    assert_eq!(report.strategic_summary.failed, 2);
    let demand = &report.strategic_summary.objectives[0];
    assert_eq!((demand.tasks, demand.completed, demand.attempts), (2, 0, 0));
    assert_eq!(
        demand.summary,
        "objective 'demand' not met: no tactical agent could take it: no tactical agent is live"
    );
    assert_eq!(report.assessment.notes[0], "0 of 2 objectives met");
}

#[test]
fn a_lost_agent_or_an_unmet_report_counts_as_an_escalation() {
    let mut s = started();
    assert_eq!(
        s.lost("demand", &a("t2"), "node left"),
        Applied::Ignored("not from the tactical agent in charge of the objective")
    );
    assert_eq!(s.lost("demand", &a("t1"), "node left"), Applied::Changed);
    assert_eq!(s.next(), [direct("demand", &["t1"])]);
    let mut unmet = met("cost", 1);
    unmet.completed = 0;
    unmet.failed = 1;
    unmet.summary = "objective 'cost' not met".into();
    s.reported(&a("t2"), unmet);
    assert_eq!(s.next(), [direct("cost", &["t2"])]);
    let report_notes = {
        s.assigned("demand", &a("t3"));
        s.assigned("cost", &a("t4"));
        s.reported(&a("t3"), met("demand", 2));
        s.reported(&a("t4"), met("cost", 1));
        finished(s.next()).assessment.notes
    };
    assert_eq!(
        report_notes,
        [
            "2 of 2 objectives met after 2 re-plans",
            "objective 'demand' re-planned away from tactical agent 't1': tactical agent 't1' was lost: node left",
            "objective 'cost' re-planned away from tactical agent 't2': objective 'cost' not met",
        ]
    );
}

#[test]
fn a_routine_report_needs_no_action() {
    let mut s = started();
    assert_eq!(
        s.escalated(&a("t1"), escalation("demand", ROUTINE, "half way")),
        Applied::Ignored("a routine report needs no action")
    );
    assert_eq!(s.next(), []);
    assert_eq!(
        s.reported(&a("t1"), met("nope", 1)),
        Applied::Ignored("unknown objective")
    );
}

#[test]
fn the_final_report_serializes_every_levels_part() {
    let mut s = started();
    s.reported(&a("t1"), met("demand", 2));
    s.escalated(&a("t2"), escalation("cost", UNRECOVERABLE, "broken"));
    let report = finished(s.next());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["assessment"]["outcome"], "partial");
    assert_eq!(json["strategic_summary"]["completed"], 1);
    assert_eq!(
        json["strategic_summary"]["objectives"][0]["outputs"]["t1"], 1,
        "operational outputs inside the tactical summary"
    );
    assert_eq!(serde_json::from_value::<FinalReport>(json).unwrap(), report);
    let policy: StrategicPolicy = serde_json::from_value(json!({})).unwrap();
    assert_eq!(policy.replans, 1);
}

/// What a tactical agent does with an objective in the simulation.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Met,
    Escalate(u8),
    Lost,
    Unmet,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        3 => Just(Fate::Met),
        2 => (1u8..=3).prop_map(Fate::Escalate),
        1 => Just(Fate::Lost),
        1 => Just(Fate::Unmet),
    ]
}

proptest! {
    /// Whatever the tactical agents do, in whatever order: every objective
    /// is directed at most 1 + replans times, each time to an agent it has
    /// not had; it ends met or given up (announced once); and the run
    /// finishes exactly once with counts and an outcome that agree.
    #[test]
    fn every_run_ends_in_one_consistent_report(
        n in 1usize..6,
        replans in 0u32..3,
        fates in proptest::collection::vec(fate(), 64),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 64),
        unplaceable in proptest::collection::vec(prop::bool::weighted(0.2), 64),
    ) {
        let specs: Vec<ObjectiveSpec> = (0..n)
            .map(|i| ObjectiveSpec {
                id: format!("o{i}"),
                description: None,
                tasks: vec![crate::task::file::SubtaskSpec {
                    id: "t".into(),
                    capability: "c".into(),
                    input: json!({}),
                    depends_on: vec![],
                    timeout_ms: None,
                }],
            })
            .collect();
        let mut s = Strategic::new(&specs, StrategicPolicy { replans });
        let mut next_agent = 0;
        let mut had: BTreeMap<String, BTreeSet<AgentId>> = BTreeMap::new();
        let mut running: BTreeMap<String, AgentId> = BTreeMap::new();
        let mut given_up: BTreeSet<String> = BTreeSet::new();
        let mut met_objectives: BTreeSet<String> = BTreeSet::new();
        let mut events = fates.into_iter().zip(picks);
        let mut unplaceable = unplaceable.into_iter();
        let report = loop {
            let mut report = None;
            let steps = s.next();
            let progressed = !steps.is_empty();
            for step in steps {
                prop_assert!(report.is_none(), "nothing after the final report");
                match step {
                    StrategicStep::Direct { objective, avoid } => {
                        let seen = had.entry(objective.clone()).or_default();
                        prop_assert_eq!(&avoid.iter().cloned().collect::<BTreeSet<_>>(), &*seen);
                        prop_assert!(seen.len() <= replans as usize);
                        if unplaceable.next().unwrap() {
                            prop_assert_eq!(s.unplaceable(&objective, "none left"), Applied::Changed);
                            continue;
                        }
                        next_agent += 1;
                        let agent = a(&format!("t{next_agent}"));
                        prop_assert!(seen.insert(agent.clone()));
                        prop_assert_eq!(s.assigned(&objective, &agent), Applied::Changed);
                        running.insert(objective, agent);
                    }
                    StrategicStep::GiveUp { objective, .. } => {
                        prop_assert!(given_up.insert(objective.clone()), "announced twice");
                        prop_assert!(!met_objectives.contains(&objective));
                        running.remove(&objective);
                    }
                    StrategicStep::Finished(r) => report = Some(r),
                }
            }
            if let Some(r) = report {
                break r;
            }
            if progressed {
                // An unplaceable objective may have ended: ask again.
                continue;
            }
            let (fate, pick) = events.next().unwrap();
            prop_assert!(!running.is_empty(), "stalled");
            let (objective, agent) = running
                .iter()
                .nth(pick.index(running.len()))
                .map(|(o, t)| (o.clone(), t.clone()))
                .unwrap();
            let applied = match fate {
                Fate::Met => {
                    met_objectives.insert(objective.clone());
                    s.reported(&agent, met(&objective, 1))
                }
                Fate::Escalate(level) => s.escalated(&agent, escalation(&objective, level, "x")),
                Fate::Lost => s.lost(&objective, &agent, "gone"),
                Fate::Unmet => {
                    let mut summary = met(&objective, 1);
                    summary.completed = 0;
                    s.reported(&agent, summary)
                }
            };
            prop_assert_eq!(applied, Applied::Changed);
            running.remove(&objective);
        };
        let summary = &report.strategic_summary;
        prop_assert_eq!(summary.objectives.len(), n);
        prop_assert_eq!(summary.completed, met_objectives.len());
        prop_assert_eq!(summary.failed, given_up.len());
        prop_assert_eq!(summary.completed + summary.failed, n);
        let directs: usize = had.values().map(BTreeSet::len).sum();
        prop_assert!(summary.replans <= directs);
        let expected = match (summary.completed, summary.failed) {
            (_, 0) => Outcome::Succeeded,
            (0, _) => Outcome::Failed,
            _ => Outcome::Partial,
        };
        prop_assert_eq!(report.assessment.outcome, expected);
        prop_assert!(s.next().is_empty());
    }
}
