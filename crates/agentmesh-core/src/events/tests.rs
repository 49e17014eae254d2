use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::ids::AgentId;
use crate::retry::RetryPolicy;

fn sub(text: &str) -> Subscription {
    text.parse::<HandlerSpec>().unwrap().subscription()
}

fn event(seq: u64, key: &str) -> Event {
    EventDraft {
        event_type: "order.created".into(),
        key: key.into(),
        payload: json!({"n": seq}),
    }
    .accept(format!("e{seq}"), "alice".into(), seq, 1_000 + seq)
}

fn limits() -> RouterLimits {
    RouterLimits {
        max_pending: 100,
        max_per_lane: 10,
        ack_timeout_ms: 1_000,
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay_ms: 10,
            max_delay_ms: 100,
        },
    }
}

fn ack(dispatch: &Dispatch, result: Result<(), String>) -> Ack {
    Ack {
        event_id: dispatch.event.id.clone(),
        subscription: dispatch.subscription.clone(),
        attempt: dispatch.attempt,
        from: dispatch.agent.clone(),
        result,
    }
}

fn anyone(_: &Subscription, _: &str) -> Option<AgentId> {
    Some(AgentId::new("worker-1"))
}

#[test]
fn drafts_are_held_to_their_limits_and_refusals_name_them() {
    let limits = EventLimits {
        max_payload_bytes: 16,
    };
    let ok = EventDraft {
        event_type: "order.created".into(),
        key: "o-1".into(),
        payload: json!({"a": 1}),
    };
    assert_eq!(ok.check(&limits), Ok(7));
    let big = EventDraft {
        payload: json!({"a": "x".repeat(20)}),
        ..ok.clone()
    };
    let error = big.check(&limits).unwrap_err();
    assert!(error.to_string().contains("--max-event-bytes"), "{error}");
    for bad in ["", "a b", "a/b", &"x".repeat(MAX_TYPE_CHARS + 1)] {
        let draft = EventDraft {
            event_type: bad.into(),
            ..ok.clone()
        };
        assert!(draft.check(&limits).is_err(), "type {bad:?} was accepted");
    }
    let long_key = EventDraft {
        key: "k".repeat(MAX_KEY_BYTES + 1),
        ..ok.clone()
    };
    assert_eq!(
        long_key.check(&limits),
        Err(EventError::KeyTooLong {
            bytes: MAX_KEY_BYTES + 1
        })
    );
    let control = EventDraft {
        key: "a\nb".into(),
        ..ok
    };
    assert_eq!(control.check(&limits), Err(EventError::KeyControl));
}

#[test]
fn handler_specs_parse_print_and_match() {
    let exact: HandlerSpec = "order.created=tool:json.query".parse().unwrap();
    assert_eq!(exact.to_string(), "order.created=tool:json.query");
    assert!(exact.pattern.matches("order.created"));
    assert!(!exact.pattern.matches("order.created.v2"));
    let prefix: HandlerSpec = "order.*=task:handlers/order.yaml".parse().unwrap();
    assert_eq!(
        prefix.action,
        HandlerAction::Task("handlers/order.yaml".into())
    );
    assert!(prefix.pattern.matches("order.created"));
    assert!(!prefix.pattern.matches("order"));
    assert!(!prefix.pattern.matches("orders.created"));
    for bad in [
        "order.created",
        "order.created=json.query",
        "order.created=tool:",
        "order*=tool:x",
        "*=tool:x",
        "a b=tool:x",
    ] {
        let error = bad.parse::<HandlerSpec>().unwrap_err();
        assert!(error.contains(bad), "{error}");
    }
    let declared = [exact.clone(), prefix.clone(), exact.clone()];
    assert_eq!(
        handler::matching(&declared, "order.created"),
        vec![prefix.subscription(), exact.subscription()]
    );
    assert!(handler::matching(&declared, "invoice.paid").is_empty());
    let stored = serde_json::to_string(&exact).unwrap();
    assert_eq!(serde_json::from_str::<HandlerSpec>(&stored).unwrap(), exact);
}

#[test]
fn emits_are_read_from_an_output_and_refused_whole() {
    let limits = EventLimits::default();
    assert!(emits_of(&json!({"value": 1}), &limits).unwrap().is_empty());
    let drafts = emits_of(
        &json!({"emit": [{"type": "order.shipped", "key": "o-1", "payload": {"by": "x"}}]}),
        &limits,
    )
    .unwrap();
    assert_eq!(drafts.len(), 1);
    assert_eq!(drafts[0].event_type, "order.shipped");
    let too_many: Vec<_> = (0..=MAX_EMITS_PER_OUTPUT)
        .map(|_| json!({"type": "t"}))
        .collect();
    assert!(matches!(
        emits_of(&json!({ "emit": too_many }), &limits),
        Err(EventError::TooManyEmits { .. })
    ));
    assert!(matches!(
        emits_of(
            &json!({"emit": [{"type": "ok"}, {"type": "not ok"}]}),
            &limits
        ),
        Err(EventError::TypeCharacter { .. })
    ));
    assert!(matches!(
        emits_of(&json!({"emit": {"type": "ok"}}), &limits),
        Err(EventError::MalformedEmit { .. })
    ));
}

#[test]
fn one_delivery_in_flight_per_key_and_keys_proceed_independently() {
    let s = sub("order.created=tool:x");
    let mut router = Router::new(limits());
    for (seq, key) in [(1, "a"), (2, "a"), (3, "b")] {
        router
            .offer(event(seq, key), std::slice::from_ref(&s))
            .unwrap();
    }
    let first = router.dispatch(0, anyone);
    let ids: Vec<_> = first.iter().map(|d| d.event.id.as_str()).collect();
    assert_eq!(ids, ["e1", "e3"], "one head per key");
    assert!(router.dispatch(0, anyone).is_empty(), "heads are in flight");
    let e1 = first.iter().find(|d| d.event.id == "e1").unwrap();
    assert!(matches!(
        router.ack(ack(e1, Ok(())), 5, 0.0),
        AckOutcome::Settled(Settled {
            record: None,
            dead: None,
            ..
        })
    ));
    let next = router.dispatch(5, anyone);
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].event.id, "e2",
        "the key's next event follows its ack"
    );
}

#[test]
fn a_failing_handler_is_retried_with_backoff_then_dead_lettered() {
    let s = sub("order.created=tool:x");
    let mut router = Router::new(limits());
    router
        .offer(event(1, "a"), std::slice::from_ref(&s))
        .unwrap();
    router
        .offer(event(2, "a"), std::slice::from_ref(&s))
        .unwrap();
    let mut now = 0;
    for attempt in 1..=3 {
        let sent = router.dispatch(now, anyone);
        assert_eq!(sent.len(), 1, "attempt {attempt}");
        assert_eq!(
            (sent[0].event.id.as_str(), sent[0].attempt),
            ("e1", attempt)
        );
        match router.ack(ack(&sent[0], Err("boom".into())), now, 0.5) {
            AckOutcome::Retry { at_ms, record } => {
                assert!(attempt < 3);
                assert!(at_ms > now, "a retry waits");
                assert_eq!(record.pending[&s].attempts, attempt);
                assert!(router.dispatch(at_ms - 1, anyone).is_empty());
                now = at_ms;
            }
            AckOutcome::Settled(Settled {
                dead: Some(dead), ..
            }) => {
                assert_eq!(attempt, 3);
                assert_eq!(dead.attempts, 3);
                assert_eq!(dead.last_error, "boom");
                assert_eq!(dead.event.id, "e1");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let sent = router.dispatch(now, anyone);
    assert_eq!(
        sent[0].event.id, "e2",
        "the lane moves on past a dead letter"
    );
}

#[test]
fn acks_from_the_wrong_agent_or_for_an_old_attempt_change_nothing() {
    let s = sub("order.created=tool:x");
    let mut router = Router::new(limits());
    router
        .offer(event(1, "a"), std::slice::from_ref(&s))
        .unwrap();
    let sent = router.dispatch(0, anyone).remove(0);
    let mut forged = ack(&sent, Ok(()));
    forged.from = AgentId::new("mallory");
    assert_eq!(
        router.ack(forged, 0, 0.0),
        AckOutcome::WrongAgent {
            holder: AgentId::new("worker-1")
        }
    );
    let mut old = ack(&sent, Ok(()));
    old.attempt = 0;
    assert_eq!(router.ack(old, 0, 0.0), AckOutcome::Stale);
    assert_eq!(router.pending(), 1);
    assert!(matches!(
        router.ack(ack(&sent, Ok(())), 0, 0.0),
        AckOutcome::Settled(_)
    ));
    assert_eq!(
        router.ack(ack(&sent, Ok(())), 0, 0.0),
        AckOutcome::Stale,
        "a duplicate ack"
    );
}

#[test]
fn a_silent_or_lost_agent_costs_an_attempt_and_another_agent_gets_it() {
    let s = sub("order.created=tool:x");
    let mut router = Router::new(limits());
    router
        .offer(event(1, "a"), std::slice::from_ref(&s))
        .unwrap();
    router
        .offer(event(2, "b"), std::slice::from_ref(&s))
        .unwrap();
    let sent = router.dispatch(0, anyone);
    assert_eq!(router.next_wake_ms(), Some(1_000));
    let lost = router.agent_left(&AgentId::new("worker-1"), 10, 0.0);
    assert_eq!(lost.len(), 2);
    assert!(lost.iter().all(|o| matches!(o, AckOutcome::Retry { .. })));
    let again = router.dispatch(10_000, |_, _| Some(AgentId::new("worker-2")));
    assert_eq!(again.len(), 2);
    assert!(
        again
            .iter()
            .all(|d| d.attempt == 2 && d.agent.as_str() == "worker-2")
    );
    assert!(router.expire(10_999, 0.0).is_empty());
    assert_eq!(router.expire(11_000, 0.0).len(), 2);
    let _ = sent;
}

#[test]
fn no_live_agent_spends_no_attempt() {
    let s = sub("order.created=tool:x");
    let mut router = Router::new(limits());
    router
        .offer(event(1, "a"), std::slice::from_ref(&s))
        .unwrap();
    for now in 0..10 {
        assert!(router.dispatch(now, |_, _| None).is_empty());
    }
    assert_eq!(router.next_wake_ms(), None);
    let sent = router.dispatch(10, anyone);
    assert_eq!(sent[0].attempt, 1);
}

#[test]
fn bounds_are_checked_before_anything_is_queued() {
    let a = sub("order.created=tool:x");
    let b = sub("order.*=tool:y");
    let mut router = Router::new(RouterLimits {
        max_pending: 3,
        max_per_lane: 2,
        ..limits()
    });
    router
        .offer(event(1, "k"), std::slice::from_ref(&a))
        .unwrap();
    router
        .offer(event(2, "k"), std::slice::from_ref(&a))
        .unwrap();
    let refused = router
        .offer(event(3, "k"), std::slice::from_ref(&a))
        .unwrap_err();
    assert!(matches!(refused, Refusal::LaneFull { limit: 2, .. }));
    assert!(
        refused.to_string().contains("--max-events-per-key"),
        "{refused}"
    );
    assert_eq!(router.pending(), 2, "nothing of a refused event is queued");
    let refused = router
        .offer(event(4, "other"), &[a.clone(), b.clone()])
        .unwrap_err();
    assert_eq!(
        refused,
        Refusal::QueueFull {
            pending: 2,
            limit: 3
        }
    );
    assert!(refused.to_string().contains("--max-pending-events"));
    assert!(matches!(
        router.offer(event(1, "x"), &[b]),
        Err(Refusal::Duplicate { .. })
    ));
}

#[test]
fn an_event_with_no_subscription_queues_nothing() {
    let mut router = Router::new(limits());
    let record = router.offer(event(1, "a"), &[]).unwrap();
    assert!(record.pending.is_empty());
    assert!(router.is_empty());
    assert!(router.record("e1").is_none());
}

#[test]
fn records_round_trip_through_json() {
    let s = sub("order.created=tool:x");
    let mut router = Router::new(limits());
    let record = router.offer(event(1, "a"), &[s]).unwrap();
    let text = serde_json::to_string(&record).unwrap();
    assert!(text.contains("\"type\":\"order.created\""), "{text}");
    assert_eq!(serde_json::from_str::<EventRecord>(&text).unwrap(), record);
}

/// One step of a random schedule.
#[derive(Debug, Clone)]
enum Op {
    Offer { key: u8, subs: u8 },
    Dispatch { agent_live: bool },
    AckOk(prop::sample::Index),
    AckFail(prop::sample::Index),
    Expire,
    Lose,
    Failover,
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 1u8..4).prop_map(|(key, subs)| Op::Offer { key, subs }),
        any::<bool>().prop_map(|agent_live| Op::Dispatch { agent_live }),
        any::<prop::sample::Index>().prop_map(Op::AckOk),
        any::<prop::sample::Index>().prop_map(Op::AckFail),
        Just(Op::Expire),
        Just(Op::Lose),
        Just(Op::Failover),
        any::<u16>().prop_map(Op::Tick),
    ]
}

const SUBS: [&str; 2] = ["order.created=tool:x", "order.*=tool:y"];

proptest! {
    /// Whatever happens (failures, timeouts, lost agents, a new leader
    /// restoring what the old one persisted), every accepted delivery ends
    /// exactly once, acknowledged or dead-lettered; a lane never has two
    /// deliveries out at once; first sends within a lane follow the publish
    /// order; no delivery is tried more than the policy allows; and the
    /// bound on pending deliveries holds.
    #[test]
    fn every_delivery_settles_once_in_order_within_bounds(
        ops in proptest::collection::vec(op(), 1..120),
        jitter in 0.0f64..1.0,
    ) {
        let limits = RouterLimits { max_pending: 12, max_per_lane: 4, ..limits() };
        let mut router = Router::new(limits);
        let mut now = 0u64;
        let mut seq = 0u64;
        // What the store holds: the newest record of every unsettled event.
        let mut store: BTreeMap<String, EventRecord> = BTreeMap::new();
        let mut accepted: BTreeSet<(String, Subscription)> = BTreeSet::new();
        let mut settled: BTreeSet<(String, Subscription)> = BTreeSet::new();
        let mut out: Vec<Dispatch> = Vec::new();
        let mut first_sent: BTreeMap<(Subscription, String), Vec<u64>> = BTreeMap::new();
        let mut seen_first: BTreeSet<(String, Subscription)> = BTreeSet::new();

        let apply = |outcome: AckOutcome,
                     store: &mut BTreeMap<String, EventRecord>,
                     settled: &mut BTreeSet<(String, Subscription)>|
         -> Result<(), TestCaseError> {
            match outcome {
                AckOutcome::Settled(done) => {
                    prop_assert!(settled.insert((done.event_id.clone(), done.subscription.clone())),
                        "settled twice");
                    if let Some(dead) = &done.dead {
                        prop_assert_eq!(dead.attempts, limits.retry.max_attempts);
                    }
                    match done.record {
                        Some(record) => { store.insert(done.event_id, record); }
                        None => { store.remove(&done.event_id); }
                    }
                }
                AckOutcome::Retry { record, .. } => {
                    store.insert(record.event.id.clone(), record);
                }
                AckOutcome::Stale | AckOutcome::WrongAgent { .. } => {}
            }
            Ok(())
        };

        for op in ops {
            match op {
                Op::Offer { key, subs } => {
                    seq += 1;
                    let subscriptions: Vec<Subscription> = SUBS
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| subs & (1 << i) != 0)
                        .map(|(_, s)| sub(s))
                        .collect();
                    let before = router.pending();
                    match router.offer(event(seq, &key.to_string()), &subscriptions) {
                        Ok(record) => {
                            for s in record.pending.keys() {
                                accepted.insert((record.event.id.clone(), s.clone()));
                            }
                            store.insert(record.event.id.clone(), record);
                        }
                        Err(_) => prop_assert_eq!(router.pending(), before),
                    }
                }
                Op::Dispatch { agent_live } => {
                    let sent = router.dispatch(now, |_, _| agent_live.then(|| AgentId::new("w")));
                    for d in sent {
                        let lane = (d.subscription.clone(), d.event.key.clone());
                        prop_assert!(
                            !out.iter().any(|o| o.subscription == d.subscription && o.event.key == d.event.key),
                            "two deliveries out in one lane"
                        );
                        prop_assert!(d.attempt <= limits.retry.max_attempts);
                        if seen_first.insert((d.event.id.clone(), d.subscription.clone())) {
                            first_sent.entry(lane).or_default().push(d.event.seq);
                        }
                        out.push(d);
                    }
                }
                Op::AckOk(index) | Op::AckFail(index) if !out.is_empty() => {
                    let d = out.remove(index.index(out.len()));
                    let result = if matches!(op, Op::AckOk(_)) { Ok(()) } else { Err("no".to_owned()) };
                    let outcome = router.ack(ack(&d, result), now, jitter);
                    apply(outcome, &mut store, &mut settled)?;
                }
                Op::AckOk(_) | Op::AckFail(_) => {}
                Op::Expire => {
                    now += limits.ack_timeout_ms;
                    for outcome in router.expire(now, jitter) {
                        apply(outcome, &mut store, &mut settled)?;
                    }
                    out.clear();
                }
                Op::Lose => {
                    for outcome in router.agent_left(&AgentId::new("w"), now, jitter) {
                        apply(outcome, &mut store, &mut settled)?;
                    }
                    out.clear();
                }
                Op::Failover => {
                    router = Router::new(limits);
                    router.restore(store.values().cloned());
                    out.clear();
                }
                Op::Tick(ms) => now += u64::from(ms),
            }
            prop_assert!(router.pending() <= limits.max_pending);
            prop_assert_eq!(
                router.pending(),
                store.values().map(|r| r.pending.len()).sum::<usize>(),
                "the store holds exactly what is pending"
            );
        }

        // Drain: what is out is answered, then an agent that always
        // answers takes everything left.
        for d in std::mem::take(&mut out) {
            let outcome = router.ack(ack(&d, Ok(())), now, jitter);
            apply(outcome, &mut store, &mut settled)?;
        }
        for _ in 0..1_000 {
            if router.is_empty() { break; }
            now += 10_000;
            for d in router.dispatch(now, |_, _| Some(AgentId::new("w"))) {
                let outcome = router.ack(ack(&d, Ok(())), now, jitter);
                apply(outcome, &mut store, &mut settled)?;
            }
        }
        prop_assert!(router.is_empty());
        prop_assert!(store.is_empty());
        prop_assert_eq!(&settled, &accepted, "every accepted delivery settled, none invented");
        for (lane, seqs) in first_sent {
            prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "lane {:?} out of order: {:?}", lane, seqs);
        }
    }
}

#[test]
fn templates_take_the_event_fields_and_leave_other_references() {
    let event = Event {
        id: "e1".into(),
        event_type: "order.created".into(),
        key: "o-7".into(),
        payload: serde_json::json!({"total": 42, "items": ["a", "b"], "name": "x"}),
        source: "cli".into(),
        seq: 1,
        published_ms: 0,
    };
    let text = "k={{event.key}} t={{event.payload.total}} i={{event.payload.items.1}} \
                n={{event.payload.name}} m={{event.payload.missing}} o={{a.out}} {{event.type}}";
    assert_eq!(
        render_template(text, &event),
        "k=o-7 t=42 i=b n=x m= o={{a.out}} order.created"
    );
    assert_eq!(tool_input(&event)["total"], 42);
}
