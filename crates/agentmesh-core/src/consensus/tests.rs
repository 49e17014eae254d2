use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn ballot(agent: &str, output: Value, reputation: f64) -> Ballot {
    Ballot {
        agent: AgentId::new(agent),
        output,
        reputation,
    }
}

fn value(v: f64) -> Value {
    json!({ "value": v })
}

fn policy(algorithm: Algorithm) -> ConsensusPolicy {
    ConsensusPolicy {
        algorithm,
        ..ConsensusPolicy::default()
    }
}

fn reach_math(ballots: &[Ballot], policy: &ConsensusPolicy) -> Result<Consensus, ConsensusError> {
    reach("math.eval", ballots, policy, &DefaultQuality)
}

fn ids(names: &[&str]) -> Vec<AgentId> {
    names.iter().copied().map(AgentId::new).collect()
}

/// `agree` agents answer 1, the rest answer 2; reputations as given.
fn split(reputations_for_1: &[f64], reputations_for_2: &[f64]) -> Vec<Ballot> {
    let ones = reputations_for_1
        .iter()
        .enumerate()
        .map(|(i, &r)| ballot(&format!("one-{i}"), value(1.0), r));
    let twos = reputations_for_2
        .iter()
        .enumerate()
        .map(|(i, &r)| ballot(&format!("two-{i}"), value(2.0), r));
    ones.chain(twos).collect()
}

#[test]
fn algorithm_names_round_trip() {
    for a in Algorithm::ALL {
        assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
        assert_eq!(serde_json::to_value(a).unwrap(), json!(a.as_str()));
        assert_eq!(a.to_string(), a.as_str());
    }
    let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(names, crate::patterns::CONSENSUS_ALGORITHMS);
    let err = "majority".parse::<Algorithm>().unwrap_err();
    assert!(err.contains("majority") && err.contains("hybrid"), "{err}");
}

#[test]
fn default_policy_is_a_strict_majority_with_fall_back_below_0_6() {
    let p = ConsensusPolicy::default();
    assert_eq!(p.algorithm, Algorithm::Hybrid);
    assert_eq!((p.quorum, p.tolerance, p.min_quality), (0.5, 1e-9, 0.6));
    assert!(p.validate().is_ok());
    let parsed: ConsensusPolicy = serde_json::from_value(json!({"algorithm": "voting"})).unwrap();
    assert_eq!(parsed, policy(Algorithm::Voting));
    assert!(serde_json::from_value::<ConsensusPolicy>(json!({"quorom": 0.5})).is_err());
}

#[test]
fn policy_rejects_out_of_range_values() {
    let bad = [
        ConsensusPolicy {
            quorum: 1.0,
            ..Default::default()
        },
        ConsensusPolicy {
            quorum: -0.1,
            ..Default::default()
        },
        ConsensusPolicy {
            quorum: f64::NAN,
            ..Default::default()
        },
        ConsensusPolicy {
            tolerance: -1e-9,
            ..Default::default()
        },
        ConsensusPolicy {
            tolerance: f64::INFINITY,
            ..Default::default()
        },
        ConsensusPolicy {
            min_quality: 1.5,
            ..Default::default()
        },
        ConsensusPolicy {
            min_quality: f64::NAN,
            ..Default::default()
        },
    ];
    for p in bad {
        assert!(p.validate().is_err(), "{p:?}");
        assert!(matches!(
            reach_math(&split(&[0.5], &[]), &p),
            Err(ConsensusError::InvalidPolicy(_))
        ));
    }
}

#[test]
fn no_ballots_and_duplicate_agents_are_errors() {
    assert_eq!(
        reach_math(&[], &ConsensusPolicy::default()),
        Err(ConsensusError::NoBallots)
    );
    let twice = [
        ballot("a", value(1.0), 0.5),
        ballot("b", value(1.0), 0.5),
        ballot("a", value(2.0), 0.5),
    ];
    assert_eq!(
        reach_math(&twice, &ConsensusPolicy::default()),
        Err(ConsensusError::DuplicateAgent {
            agent: AgentId::new("a")
        })
    );
}

#[test]
fn a_single_ballot_is_its_own_consensus() {
    for algorithm in Algorithm::ALL {
        // Even an unusable output from an unrated agent: nobody disagrees.
        let c = reach_math(&[ballot("a", json!(null), 0.0)], &policy(algorithm)).unwrap();
        assert_eq!(c.output, json!(null));
        assert_eq!((c.algorithm, c.requested), (algorithm, algorithm));
        assert_eq!(c.agreement, 1.0);
        assert!(c.dissenters.is_empty() && c.fell_back.is_none());
        assert_eq!(c.votes.len(), 1);
        assert!(c.votes[0].agreed);
    }
}

#[test]
fn voting_majority_wins_and_names_the_dissenter() {
    let ballots = split(&[0.5, 0.5, 0.5], &[0.5]);
    let c = reach_math(&ballots, &policy(Algorithm::Voting)).unwrap();
    assert_eq!(c.output, value(1.0));
    assert_eq!(
        (c.algorithm, c.requested),
        (Algorithm::Voting, Algorithm::Voting)
    );
    assert_eq!(c.agreement, 0.75);
    assert_eq!(c.dissenters, ids(&["two-0"]));
    assert!(c.votes.iter().all(|v| v.weight == 1.0));
    assert_eq!(c.votes.iter().filter(|v| v.agreed).count(), 3);
    assert!(c.fell_back.is_none());
}

#[test]
fn voting_ignores_reputation() {
    let ballots = split(&[0.1, 0.1], &[0.99]);
    let c = reach_math(&ballots, &policy(Algorithm::Voting)).unwrap();
    assert_eq!(c.output, value(1.0));
    assert_eq!(c.algorithm, Algorithm::Voting);
}

#[test]
fn reputation_weighted_lets_trusted_agents_outweigh_the_many() {
    let ballots = split(&[0.1, 0.1], &[0.9]);
    let c = reach_math(&ballots, &policy(Algorithm::ReputationWeighted)).unwrap();
    assert_eq!(c.output, value(2.0));
    assert_eq!(c.algorithm, Algorithm::ReputationWeighted);
    assert!((c.agreement - 0.9 / 1.1).abs() < 1e-12);
    assert_eq!(c.dissenters, ids(&["one-0", "one-1"]));
    let weights: Vec<f64> = c.votes.iter().map(|v| v.weight).collect();
    assert_eq!(weights, vec![0.1, 0.1, 0.9]);
    assert!(c.fell_back.is_none());
}

#[test]
fn quality_based_prefers_well_formed_output() {
    let ballots = [
        ballot("a", json!({"value": "five"}), 0.5),
        ballot("b", json!({"value": "five"}), 0.5),
        ballot("c", value(5.0), 0.5),
    ];
    let c = reach_math(&ballots, &policy(Algorithm::QualityBased)).unwrap();
    assert_eq!(c.output, value(5.0));
    assert_eq!(c.algorithm, Algorithm::QualityBased);
    assert_eq!(c.agreement, 1.0);
    assert_eq!(c.dissenters, ids(&["a", "b"]));
    // Voting alone would have accepted the malformed majority.
    let voted = reach_math(&ballots, &policy(Algorithm::Voting)).unwrap();
    assert_eq!(voted.output, json!({"value": "five"}));
}

#[test]
fn quorum_above_a_majority_is_honoured() {
    let strict = ConsensusPolicy {
        algorithm: Algorithm::Voting,
        quorum: 0.7,
        ..Default::default()
    };
    let c = reach_math(&split(&[0.5; 3], &[0.5]), &strict).unwrap();
    assert_eq!(c.agreement, 0.75);
    let err = reach_math(&split(&[0.5; 2], &[0.5]), &strict).unwrap_err();
    assert!(
        matches!(
            err,
            ConsensusError::NoAgreement {
                votes: 3,
                clusters: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn exactly_half_is_not_a_majority() {
    let err = reach_math(&split(&[0.5; 2], &[0.5; 2]), &policy(Algorithm::Voting)).unwrap_err();
    assert_eq!(
        err,
        ConsensusError::NoAgreement {
            votes: 4,
            clusters: 2,
            best_share: 0.5
        }
    );
    assert_eq!(
        err.to_string(),
        "no agreement among 4 votes in 2 clusters (best share 0.50)"
    );
}

#[test]
fn hybrid_with_one_cluster_is_voting_without_fall_back() {
    let ballots = [
        ballot("a", value(0.1 + 0.2), 0.2),
        ballot("b", value(0.3), 0.9),
        ballot("c", json!({"value": 0.3}), 0.5),
    ];
    let c = reach_math(&ballots, &ConsensusPolicy::default()).unwrap();
    assert_eq!(
        (c.algorithm, c.requested),
        (Algorithm::Voting, Algorithm::Hybrid)
    );
    assert_eq!(c.agreement, 1.0);
    assert_eq!(c.output, value(0.1 + 0.2));
    assert!(c.dissenters.is_empty() && c.fell_back.is_none());
}

#[test]
fn hybrid_accepts_a_convincing_vote() {
    let c = reach_math(&split(&[0.1, 0.1], &[0.9]), &ConsensusPolicy::default()).unwrap();
    assert_eq!(c.algorithm, Algorithm::Voting);
    assert_eq!(c.output, value(1.0));
    assert!(c.fell_back.is_none());
}

#[test]
fn hybrid_falls_back_to_reputation_when_the_vote_is_thin() {
    // 5 of 9 is a majority but only 0.56 agreement.
    let ballots = split(&[0.2; 5], &[0.9; 4]);
    let c = reach_math(&ballots, &ConsensusPolicy::default()).unwrap();
    assert_eq!(
        (c.algorithm, c.requested),
        (Algorithm::ReputationWeighted, Algorithm::Hybrid)
    );
    assert_eq!(c.output, value(2.0));
    assert!((c.agreement - 3.6 / 4.6).abs() < 1e-12);
    assert_eq!(
        c.fell_back.as_deref(),
        Some(
            "voting agreement 0.56 below min_quality 0.60; reputation_weighted decided with agreement 0.78"
        )
    );
}

#[test]
fn hybrid_falls_back_to_quality_when_votes_and_reputations_tie() {
    let ballots = [
        ballot("a", json!({"value": null}), 0.5),
        ballot("b", value(3.0), 0.5),
    ];
    let c = reach_math(&ballots, &ConsensusPolicy::default()).unwrap();
    assert_eq!(c.algorithm, Algorithm::QualityBased);
    assert_eq!(c.output, value(3.0));
    assert_eq!(c.dissenters, ids(&["a"]));
    let why = c.fell_back.unwrap();
    assert!(why.starts_with("voting found no agreement (best share 0.50, quorum 0.50); reputation_weighted found no agreement"), "{why}");
    assert!(
        why.ends_with("quality_based decided with agreement 1.00"),
        "{why}"
    );
}

#[test]
fn a_thin_requested_algorithm_falls_back_to_hybrid_and_says_so() {
    let ballots = split(&[0.2; 5], &[0.9; 4]);
    let c = reach_math(&ballots, &policy(Algorithm::Voting)).unwrap();
    assert_eq!(
        (c.algorithm, c.requested),
        (Algorithm::ReputationWeighted, Algorithm::Voting)
    );
    assert_eq!(c.output, value(2.0));
    assert_eq!(c.dissenters.len(), 5);
    assert_eq!(
        c.fell_back.as_deref(),
        Some(
            "voting agreement 0.56 below min_quality 0.60; fell back to hybrid; \
             reputation_weighted decided with agreement 0.78"
        )
    );
}

#[test]
fn a_requested_algorithm_without_quorum_falls_back_too() {
    // Reputations tie; hybrid's voting is clear.
    let ballots = split(&[0.3, 0.3], &[0.6]);
    let c = reach_math(&ballots, &policy(Algorithm::ReputationWeighted)).unwrap();
    assert_eq!(
        (c.algorithm, c.requested),
        (Algorithm::Voting, Algorithm::ReputationWeighted)
    );
    assert_eq!(c.output, value(1.0));
    let why = c.fell_back.unwrap();
    assert!(
        why.starts_with("reputation_weighted found no agreement"),
        "{why}"
    );
    assert!(
        why.ends_with("fell back to hybrid; voting decided with agreement 0.67"),
        "{why}"
    );
}

#[test]
fn when_nothing_is_convincing_the_best_quorum_is_kept() {
    // 5 of 9 agree; reputations and quality tell nothing new.
    let ballots = split(&[0.5; 5], &[0.5; 4]);
    let c = reach_math(&ballots, &policy(Algorithm::Voting)).unwrap();
    assert_eq!(c.algorithm, Algorithm::Voting);
    assert_eq!(c.output, value(1.0));
    assert!((c.agreement - 5.0 / 9.0).abs() < 1e-12);
    let why = c.fell_back.unwrap();
    assert!(
        why.ends_with(
            "no algorithm reached min_quality 0.60, kept voting with the highest agreement 0.56"
        ),
        "{why}"
    );
    // Voting is reported once, not again by hybrid.
    assert_eq!(why.matches("voting agreement").count(), 1, "{why}");
}

#[test]
fn no_weight_at_all_is_no_agreement() {
    let ballots = [
        ballot("a", json!(null), 0.0),
        ballot("b", json!(""), f64::NAN),
    ];
    let err = reach(
        "other",
        &ballots,
        &ConsensusPolicy::default(),
        &DefaultQuality,
    )
    .unwrap_err();
    assert_eq!(
        err,
        ConsensusError::NoAgreement {
            votes: 2,
            clusters: 2,
            best_share: 0.5
        }
    );
}

#[test]
fn bad_scores_are_clamped() {
    struct Wild;
    impl QualityScorer for Wild {
        fn score(&self, _: &str, output: &Value) -> f64 {
            if output == &json!(1) { 1e9 } else { f64::NAN }
        }
    }
    let ballots = [ballot("a", json!(1), -3.0), ballot("b", json!(2), 7.0)];
    let c = reach("x", &ballots, &policy(Algorithm::QualityBased), &Wild).unwrap();
    assert_eq!(c.output, json!(1));
    assert_eq!(c.votes[0].weight, 1.0);
    assert_eq!(c.votes[1].weight, 0.0);
    let c = reach("x", &ballots, &policy(Algorithm::ReputationWeighted), &Wild).unwrap();
    assert_eq!(c.output, json!(2));
}

#[test]
fn consensus_serializes_for_the_task_result() {
    let c = reach_math(&split(&[0.5, 0.5], &[0.5]), &policy(Algorithm::Voting)).unwrap();
    let shown = serde_json::to_value(&c).unwrap();
    assert_eq!(shown["algorithm"], json!("voting"));
    assert_eq!(shown["requested"], json!("voting"));
    assert_eq!(shown["dissenters"], json!(["two-0"]));
    assert_eq!(
        shown["votes"][2],
        json!({"agent": "two-0", "weight": 1.0, "agreed": false})
    );
    assert!(shown.get("fell_back").is_none());
    let back: Consensus = serde_json::from_value(shown).unwrap();
    assert_eq!(back, c);
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

/// Ballots from distinct agents over a few possible outputs.
fn ballots(max: usize) -> impl Strategy<Value = Vec<Ballot>> {
    prop::collection::vec((0u8..4, 0.01f64..0.99), 1..max).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (v, r))| ballot(&format!("agent-{i:02}"), value(f64::from(v)), r))
            .collect()
    })
}

fn same_verdict(
    a: &Result<Consensus, ConsensusError>,
    b: &Result<Consensus, ConsensusError>,
) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            equivalent(&a.output, &b.output, 1e-9) && (a.agreement - b.agreement).abs() < 1e-9
        }
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

proptest! {
    #[test]
    fn permuting_ballots_never_changes_the_verdict(
        (original, shuffled) in ballots(10).prop_flat_map(|b| (Just(b.clone()), Just(b).prop_shuffle())),
        algorithm in algorithm(),
        quorum in prop::sample::select(vec![0.0, 0.3, 0.5, 0.66]),
    ) {
        let p = ConsensusPolicy { algorithm, quorum, ..Default::default() };
        let a = reach_math(&original, &p);
        let b = reach_math(&shuffled, &p);
        prop_assert!(same_verdict(&a, &b), "{a:?}\n{b:?}");
        if let (Ok(a), Ok(b)) = (&a, &b) {
            prop_assert_eq!(a.algorithm, b.algorithm);
            let mut da = a.dissenters.clone();
            let mut db = b.dissenters.clone();
            da.sort();
            db.sort();
            prop_assert_eq!(da, db);
        }
    }

    #[test]
    fn honest_majority_wins_and_exactly_the_faulty_dissent(
        honest in 1usize..8,
        faulty_frac in 0.0f64..1.0,
        truth in -1e6f64..1e6,
        order in any::<prop::sample::Index>(),
    ) {
        let faulty = ((honest as f64) * faulty_frac) as usize; // < honest
        let mut ballots: Vec<Ballot> = (0..honest)
            .map(|i| ballot(&format!("honest-{i}"), value(truth), 0.5))
            .collect();
        // Each faulty agent is wrong in its own way.
        let wrong = (0..faulty).map(|i| ballot(&format!("faulty-{i}"), value(truth + 1.0 + i as f64), 0.5));
        ballots.splice(order.index(honest)..order.index(honest), wrong);
        for p in [policy(Algorithm::Voting), ConsensusPolicy::default()] {
            let c = reach_math(&ballots, &p).unwrap();
            prop_assert_eq!(&c.output, &value(truth));
            let mut dissenters: Vec<String> = c.dissenters.iter().map(|a| a.to_string()).collect();
            dissenters.sort();
            let mut expected: Vec<String> = (0..faulty).map(|i| format!("faulty-{i}")).collect();
            expected.sort();
            prop_assert_eq!(dissenters, expected);
        }
    }

    #[test]
    fn pure_voting_picks_the_honest_value_whatever_the_reputations(
        honest in 1usize..8,
        faulty_frac in 0.0f64..1.0,
        reputations in prop::collection::vec(0.01f64..0.99, 16),
    ) {
        let faulty = ((honest as f64) * faulty_frac) as usize;
        let ballots: Vec<Ballot> = (0..honest)
            .map(|i| ballot(&format!("h{i}"), value(7.0), reputations[i]))
            .chain((0..faulty).map(|i| ballot(&format!("f{i}"), value(-(i as f64)), reputations[8 + i])))
            .collect();
        let p = ConsensusPolicy { algorithm: Algorithm::Voting, min_quality: 0.0, ..Default::default() };
        let c = reach_math(&ballots, &p).unwrap();
        prop_assert_eq!(&c.output, &value(7.0));
        prop_assert_eq!(c.algorithm, Algorithm::Voting);
        prop_assert_eq!(c.dissenters.len(), faulty);
        prop_assert!(c.dissenters.iter().all(|a| a.as_str().starts_with('f')));
    }

    #[test]
    fn agreement_is_a_share(
        ballots in ballots(12),
        algorithm in algorithm(),
        quorum in 0.0f64..0.99,
        min_quality in 0.0f64..=1.0,
    ) {
        let p = ConsensusPolicy { algorithm, quorum, min_quality, ..Default::default() };
        if let Ok(c) = reach_math(&ballots, &p) {
            prop_assert!((0.0..=1.0).contains(&c.agreement));
            prop_assert!(ballots.len() == 1 || c.agreement > quorum);
            prop_assert_eq!(c.votes.len(), ballots.len());
            prop_assert_eq!(c.dissenters.len(), c.votes.iter().filter(|v| !v.agreed).count());
            prop_assert!(ballots.iter().any(|b| b.output == c.output));
        }
    }

    #[test]
    fn equal_reputations_weigh_like_votes(
        ballots in ballots(12),
        reputation in 0.01f64..0.99,
        min_quality in prop::sample::select(vec![0.0, 0.6]),
    ) {
        let ballots: Vec<Ballot> = ballots.into_iter().map(|b| Ballot { reputation, ..b }).collect();
        let voting = ConsensusPolicy { algorithm: Algorithm::Voting, min_quality, ..Default::default() };
        let weighted = ConsensusPolicy { algorithm: Algorithm::ReputationWeighted, ..voting.clone() };
        let a = reach_math(&ballots, &voting);
        let b = reach_math(&ballots, &weighted);
        prop_assert!(same_verdict(&a, &b), "{a:?}\n{b:?}");
    }

    #[test]
    fn results_within_tolerance_are_one_answer(
        base in -1e6f64..1e6,
        jitter in prop::collection::vec(-0.4f64..0.4, 2..8),
    ) {
        let tolerance = 1e-6;
        let ballots: Vec<Ballot> = jitter
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let v = if i == 0 { base } else { base + j * tolerance * base.abs().max(1.0) };
                ballot(&format!("a{i}"), value(v), 0.5)
            })
            .collect();
        let p = ConsensusPolicy { tolerance, ..Default::default() };
        let c = reach_math(&ballots, &p).unwrap();
        prop_assert_eq!(c.agreement, 1.0);
        prop_assert!(c.dissenters.is_empty());
        prop_assert_eq!(&c.output, &value(base));
    }
}
