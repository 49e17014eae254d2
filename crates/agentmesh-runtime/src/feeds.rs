//! Background tasks that feed an actor its messages: a clock tick, or every
//! new value of a watch. Each stops by itself once the actor is gone.

use std::time::Duration;

use ractor::{ActorRef, Message};
use tokio::sync::watch;

/// Sends `message()` to `actor` every `period`; ticks missed while the
/// runtime was busy are skipped, not bunched up.
pub fn every<M: Message>(
    period: Duration,
    actor: ActorRef<M>,
    message: impl Fn() -> M + Send + 'static,
) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            if actor.cast(message()).is_err() {
                break;
            }
        }
    });
}

/// Sends `message(value)` to `actor` for every change of `values` (the
/// current value is taken as seen).
pub fn follow<T, M>(
    mut values: watch::Receiver<T>,
    actor: ActorRef<M>,
    message: impl Fn(T) -> M + Send + 'static,
) where
    T: Clone + Send + Sync + 'static,
    M: Message,
{
    values.mark_unchanged();
    tokio::spawn(async move {
        while values.changed().await.is_ok() {
            let value = values.borrow_and_update().clone();
            if actor.cast(message(value)).is_err() {
                break;
            }
        }
    });
}
