//! The hierarchical pattern: three levels of agents, each deciding at its
//! own scope.
//!
//! The **strategic** level owns the task: it hands each objective of the
//! task file to a **tactical** coordinator, re-plans an objective on another
//! tactical coordinator when one escalates, and gives the objective up when
//! its re-plans are spent. A tactical coordinator owns one objective: it
//! dispatches the objective's **operational** tasks (a DAG) to operational
//! agents (workers) as their dependencies complete, retries a failed task on
//! agents that have not failed it, and reports upward: a summary when every
//! task completed, an escalation when a task failed everywhere it was tried.
//!
//! ```text
//!  Strategic ──Direct(objective)──▶ Tactical ──Dispatch(task)──▶ Operational
//!      ▲   ◀──Escalate (≥ 1)─────────  │ ▲  ◀──started / completed / failed──
//!      │   ◀──Done(TacticalSummary)─────┘ │
//!      └─ re-plan elsewhere, or give up   └─ retry on another agent
//!
//!  Finished(FinalReport): every objective's summary (operational outputs
//!  inside), the strategic summary and an assessment
//! ```
//!
//! Messages follow the hierarchy ([`check_route`]): a directive goes one
//! level down with the sender's authority, a report one level up with an
//! escalation level and a summary, and a lateral message stays within its
//! level.
//!
//! [`Strategic`] and [`Tactical`] are plain state machines in the manner of
//! [`crate::collaboration::Round`]: the actor of each level feeds them what
//! happened (events return [`Applied`]) and carries out the steps `next()`
//! returns. They do no IO and read no clock; deadlines are the actor's, and
//! surface here as failures (`failed`, `lost`).

mod strategic;
mod tactical;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use strategic::{
    Assessment, FinalReport, NOT_IN_CHARGE, Outcome, Strategic, StrategicPolicy, StrategicStep,
    StrategicSummary,
};
pub use tactical::{Escalation, Tactical, TacticalPolicy, TacticalStep, TacticalSummary};

/// Escalation level of a routine status report: nothing for the level
/// above to do.
pub const ROUTINE: u8 = 0;
/// Escalation level asking the level above to act: a task failed on every
/// agent its budget allowed, or could not be placed at all. Another
/// tactical coordinator, reaching other agents, may succeed.
pub const REPLAN: u8 = 1;
/// Escalation level of a failure that re-planning cannot mend: the
/// objective's plan itself is broken (an input reference names a field a
/// completed output does not have, or tasks can never become ready), so
/// every tactical coordinator would run into it again.
pub const UNRECOVERABLE: u8 = 2;

/// A level of the hierarchy. Ordered by rank: `Strategic > Tactical >
/// Operational`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    // Declared bottom-up, so that the derived order ranks a higher level
    // above a lower one.
    Operational,
    Tactical,
    Strategic,
}

impl Level {
    /// Every level, top-down.
    pub const ALL: [Level; 3] = [Level::Strategic, Level::Tactical, Level::Operational];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Strategic => "strategic",
            Level::Tactical => "tactical",
            Level::Operational => "operational",
        }
    }

    /// The level this one reports to.
    pub fn above(self) -> Option<Level> {
        match self {
            Level::Operational => Some(Level::Tactical),
            Level::Tactical => Some(Level::Strategic),
            Level::Strategic => None,
        }
    }

    /// The level this one directs.
    pub fn below(self) -> Option<Level> {
        match self {
            Level::Strategic => Some(Level::Tactical),
            Level::Tactical => Some(Level::Operational),
            Level::Operational => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = HierarchyError;

    /// Parses the `level` an agent registers with.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|level| level.as_str() == s)
            .ok_or_else(|| HierarchyError::UnknownLevel(s.to_owned()))
    }
}

/// Which way a message travels through the hierarchy, with what that way
/// requires it to carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "direction")]
pub enum Direction {
    /// A directive to the level directly below, carrying the authority of
    /// the sender's level.
    Downward { authority: Level },
    /// A report to the level directly above. `escalation` is [`ROUTINE`]
    /// (0) for status; 1 or more asks the level above to act ([`REPLAN`],
    /// [`UNRECOVERABLE`]). The summary is what the level above reads.
    Upward { escalation: u8, summary: String },
    /// A message between agents of the same level.
    Lateral,
}

impl Direction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Downward { .. } => "downward",
            Direction::Upward { .. } => "upward",
            Direction::Lateral => "lateral",
        }
    }

    /// Whether the message asks the level above to act.
    pub fn needs_action(&self) -> bool {
        matches!(self, Direction::Upward { escalation, .. } if *escalation > ROUTINE)
    }
}

/// Why a message may not travel the route it was given, or a level name
/// was not understood.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HierarchyError {
    #[error("unknown level '{0}' (expected strategic, tactical or operational)")]
    UnknownLevel(String),
    #[error("{from} is the lowest level and directs no one")]
    NoLevelBelow { from: Level },
    #[error("{from} is the highest level and reports to no one")]
    NoLevelAbove { from: Level },
    /// A directive or report that skips a level or goes the wrong way.
    #[error("a {kind} from {from} goes to {expected}, not {to}")]
    WrongLevel {
        /// `directive` or `report`.
        kind: &'static str,
        from: Level,
        to: Level,
        expected: Level,
    },
    #[error("a directive from {from} carries {from} authority, not {authority}")]
    AuthorityMismatch { from: Level, authority: Level },
    #[error("a report from {from} needs a summary")]
    EmptySummary { from: Level },
    #[error("a lateral message stays within one level, not {from} to {to}")]
    NotLateral { from: Level, to: Level },
}

/// Checks that a message from an agent at `from` to one at `to` may travel
/// in `direction`: directives one level down with the sender's own
/// authority, reports one level up with a summary, lateral messages within
/// one level.
pub fn check_route(from: Level, to: Level, direction: &Direction) -> Result<(), HierarchyError> {
    match direction {
        Direction::Downward { authority } => {
            let expected = from.below().ok_or(HierarchyError::NoLevelBelow { from })?;
            if to != expected {
                return Err(HierarchyError::WrongLevel {
                    kind: "directive",
                    from,
                    to,
                    expected,
                });
            }
            if *authority != from {
                return Err(HierarchyError::AuthorityMismatch {
                    from,
                    authority: *authority,
                });
            }
        }
        Direction::Upward { summary, .. } => {
            let expected = from.above().ok_or(HierarchyError::NoLevelAbove { from })?;
            if to != expected {
                return Err(HierarchyError::WrongLevel {
                    kind: "report",
                    from,
                    to,
                    expected,
                });
            }
            if summary.trim().is_empty() {
                return Err(HierarchyError::EmptySummary { from });
            }
        }
        Direction::Lateral if from != to => {
            return Err(HierarchyError::NotLateral { from, to });
        }
        Direction::Lateral => {}
    }
    Ok(())
}

/// What feeding an event to a state machine did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event was taken into account.
    Changed,
    /// The event was stale or out of place (a result from an agent that no
    /// longer runs the task, a report about an objective already ended) and
    /// changed nothing; the reason is for the actor's log.
    Ignored(&'static str),
}

/// `n` followed by `noun`, in the plural unless `n` is 1.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::AgentId;
    use crate::task::TaskFile;

    #[test]
    fn levels_rank_strategic_above_tactical_above_operational() {
        assert!(Level::Strategic > Level::Tactical);
        assert!(Level::Tactical > Level::Operational);
        assert_eq!(Level::Operational.above(), Some(Level::Tactical));
        assert_eq!(Level::Strategic.above(), None);
        assert_eq!(Level::Strategic.below(), Some(Level::Tactical));
        assert_eq!(Level::Operational.below(), None);
    }

    #[test]
    fn levels_parse_and_serialize_in_snake_case() {
        for level in Level::ALL {
            assert_eq!(level.as_str().parse::<Level>(), Ok(level));
            assert_eq!(
                serde_json::to_value(level).unwrap(),
                serde_json::json!(level.as_str())
            );
        }
        assert_eq!(
            "Tactical".parse::<Level>().unwrap_err().to_string(),
            "unknown level 'Tactical' (expected strategic, tactical or operational)"
        );
    }

    #[test]
    fn directives_go_one_level_down_with_the_senders_authority() {
        use Level::*;
        let down = |authority| Direction::Downward { authority };
        assert_eq!(check_route(Strategic, Tactical, &down(Strategic)), Ok(()));
        assert_eq!(check_route(Tactical, Operational, &down(Tactical)), Ok(()));
        assert_eq!(
            check_route(Strategic, Operational, &down(Strategic))
                .unwrap_err()
                .to_string(),
            "a directive from strategic goes to tactical, not operational"
        );
        assert_eq!(
            check_route(Tactical, Strategic, &down(Tactical))
                .unwrap_err()
                .to_string(),
            "a directive from tactical goes to operational, not strategic"
        );
        assert_eq!(
            check_route(Tactical, Operational, &down(Strategic))
                .unwrap_err()
                .to_string(),
            "a directive from tactical carries tactical authority, not strategic"
        );
        assert_eq!(
            check_route(Operational, Operational, &down(Operational)),
            Err(HierarchyError::NoLevelBelow { from: Operational })
        );
    }

    #[test]
    fn reports_go_one_level_up_with_a_summary() {
        use Level::*;
        let up = |escalation, summary: &str| Direction::Upward {
            escalation,
            summary: summary.into(),
        };
        assert_eq!(check_route(Operational, Tactical, &up(0, "ok")), Ok(()));
        assert_eq!(check_route(Tactical, Strategic, &up(2, "stuck")), Ok(()));
        assert_eq!(
            check_route(Operational, Strategic, &up(1, "help"))
                .unwrap_err()
                .to_string(),
            "a report from operational goes to tactical, not strategic"
        );
        assert_eq!(
            check_route(Strategic, Tactical, &up(0, "x")),
            Err(HierarchyError::NoLevelAbove { from: Strategic })
        );
        assert_eq!(
            check_route(Tactical, Strategic, &up(1, "  "))
                .unwrap_err()
                .to_string(),
            "a report from tactical needs a summary"
        );
        assert!(up(1, "x").needs_action());
        assert!(!up(ROUTINE, "x").needs_action());
        assert!(!Direction::Lateral.needs_action());
    }

    #[test]
    fn lateral_messages_stay_within_a_level() {
        use Level::*;
        for level in Level::ALL {
            assert_eq!(check_route(level, level, &Direction::Lateral), Ok(()));
        }
        assert_eq!(
            check_route(Tactical, Operational, &Direction::Lateral)
                .unwrap_err()
                .to_string(),
            "a lateral message stays within one level, not tactical to operational"
        );
    }

    #[test]
    fn directions_serialize_with_a_tag() {
        let up = Direction::Upward {
            escalation: 1,
            summary: "task 'a' failed".into(),
        };
        let json = serde_json::to_value(&up).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"direction": "upward", "escalation": 1, "summary": "task 'a' failed"})
        );
        assert_eq!(serde_json::from_value::<Direction>(json).unwrap(), up);
    }

    /// A whole task run through both state machines the way the actors
    /// will drive them, with operational agents that run the built-in
    /// algorithms, except where `fails(tactical agent, task)` says the
    /// operational agent fails.
    fn run(file: &TaskFile, fails: &dyn Fn(&str, &str) -> bool) -> FinalReport {
        use std::collections::BTreeMap;

        use crate::builtin::{expr, word_count};

        let operate = |capability: &str, input: &serde_json::Value| match capability {
            "math.eval" => {
                let value = expr::eval(input["expr"].as_str().unwrap()).unwrap();
                serde_json::json!({ "value": value })
            }
            "text.word_count" => {
                let count = word_count::count_words(input["text"].as_str().unwrap(), 1);
                serde_json::json!({ "words": count.words })
            }
            other => panic!("no tool {other}"),
        };
        let mut strategic = Strategic::new(&file.objectives, StrategicPolicy::default());
        let mut tacticals: BTreeMap<String, (AgentId, Tactical)> = BTreeMap::new();
        let mut hired = 0;
        loop {
            for step in strategic.next() {
                match step {
                    StrategicStep::Direct { objective, avoid } => {
                        hired += 1;
                        let agent = AgentId::new(format!("tactical-{hired}"));
                        assert!(!avoid.contains(&agent));
                        let directive = Direction::Downward {
                            authority: Level::Strategic,
                        };
                        check_route(Level::Strategic, Level::Tactical, &directive).unwrap();
                        strategic.assigned(&objective, &agent);
                        let spec = file.objectives.iter().find(|o| o.id == objective).unwrap();
                        let tactical = Tactical::new(spec, TacticalPolicy::default());
                        tacticals.insert(objective, (agent, tactical));
                    }
                    StrategicStep::GiveUp { objective, .. } => {
                        tacticals.remove(&objective);
                    }
                    StrategicStep::Finished(report) => return report,
                }
            }
            let mut ended = Vec::new();
            for (objective, (agent, tactical)) in &mut tacticals {
                for step in tactical.next() {
                    match step {
                        TacticalStep::Dispatch {
                            task_id,
                            capability,
                            input,
                            avoid,
                            ..
                        } => {
                            let worker = ["w1", "w2", "w3", "w4"]
                                .map(AgentId::new)
                                .into_iter()
                                .find(|w| !avoid.contains(w))
                                .unwrap();
                            tactical.started(&task_id, &worker);
                            if fails(agent.as_str(), &task_id) {
                                tactical.failed(&task_id, &worker, "tool crashed");
                            } else {
                                let output = operate(&capability, &input);
                                tactical.completed(&task_id, &worker, output);
                            }
                        }
                        TacticalStep::Escalate(escalation) => {
                            check_route(Level::Tactical, Level::Strategic, &escalation.direction())
                                .unwrap();
                            strategic.escalated(agent, escalation);
                            ended.push(objective.clone());
                        }
                        TacticalStep::Done(summary) => {
                            check_route(Level::Tactical, Level::Strategic, &summary.direction())
                                .unwrap();
                            strategic.reported(agent, summary);
                            ended.push(objective.clone());
                        }
                    }
                }
            }
            for objective in ended {
                tacticals.remove(&objective);
            }
        }
    }

    fn market_study() -> TaskFile {
        crate::task::parse_and_validate(
            include_str!("../../../examples/hierarchical-market-study.yaml"),
            &crate::task::TaskLimits::default(),
            &|_| true,
            &Vec::new,
        )
        .unwrap()
    }

    #[test]
    fn the_market_study_runs_through_every_level() {
        let report = run(&market_study(), &|_, _| false);
        assert_eq!(report.assessment.outcome, Outcome::Succeeded);
        let [demand, cost] = &report.strategic_summary.objectives[..] else {
            panic!("two objectives");
        };
        assert_eq!(demand.outputs["survey"], serde_json::json!({"words": 6}));
        assert_eq!(demand.outputs["score"], serde_json::json!({"value": 12.0}));
        assert_eq!(cost.outputs["unit"], serde_json::json!({"value": 21.5}));
    }

    #[test]
    fn a_failing_coordinator_is_replaced_and_a_hopeless_objective_given_up() {
        // Every operational agent fails `labour` under the first tactical
        // agent of `cost` (tactical-2); its replacement succeeds.
        let report = run(&market_study(), &|tactical, task| {
            tactical == "tactical-2" && task == "labour"
        });
        assert_eq!(report.assessment.outcome, Outcome::Succeeded);
        assert_eq!(report.strategic_summary.replans, 1);
        assert_eq!(
            report.assessment.notes[1],
            "objective 'cost' re-planned away from tactical agent 'tactical-2': task 'labour' failed on 3 agents (w1, w2, w3); last error: tool crashed"
        );
        // `score` fails under every tactical agent: demand is given up.
        let report = run(&market_study(), &|_, task| task == "score");
        assert_eq!(report.assessment.outcome, Outcome::Partial);
        let demand = &report.strategic_summary.objectives[0];
        assert_eq!((demand.completed, demand.failed), (1, 1));
        assert_eq!(demand.outputs["survey"], serde_json::json!({"words": 6}));
    }

    fn level() -> impl Strategy<Value = Level> {
        prop::sample::select(Level::ALL.to_vec())
    }

    proptest! {
        /// Exactly one route is open for each direction from a level:
        /// down to the next level, up to the previous one, across to itself.
        #[test]
        fn a_route_is_allowed_exactly_between_adjacent_or_equal_levels(
            from in level(),
            to in level(),
            authority in level(),
            escalation in any::<u8>(),
        ) {
            let down = check_route(from, to, &Direction::Downward { authority });
            prop_assert_eq!(down.is_ok(), from.below() == Some(to) && authority == from);
            let up = check_route(from, to, &Direction::Upward { escalation, summary: "s".into() });
            prop_assert_eq!(up.is_ok(), from.above() == Some(to) && to > from);
            prop_assert_eq!(check_route(from, to, &Direction::Lateral).is_ok(), from == to);
        }
    }
}
