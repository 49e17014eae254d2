//! Background tasks that feed an actor its messages: a clock tick, or every
//! new value of a watch. Each stops once the actor is gone or the node
//! shuts down, and is owned by the node's [`Background`].

use std::time::Duration;

use ractor::{ActorRef, Message};
use tokio::sync::{broadcast, watch};

use super::background::Background;

/// Sends `message()` to `actor` every `period`; ticks missed while the
/// runtime was busy are skipped, not bunched up.
pub fn every<M: Message>(
    background: &Background,
    period: Duration,
    actor: ActorRef<M>,
    message: impl Fn() -> M + Send + 'static,
) {
    background.spawn("tick", async move {
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
    background: &Background,
    mut values: watch::Receiver<T>,
    actor: ActorRef<M>,
    message: impl Fn(T) -> M + Send + 'static,
) where
    T: Clone + Send + Sync + 'static,
    M: Message,
{
    values.mark_unchanged();
    background.spawn("watch feed", async move {
        while values.changed().await.is_ok() {
            let value = values.borrow_and_update().clone();
            if actor.cast(message(value)).is_err() {
                break;
            }
        }
    });
}

/// Sends `message(event)` to `actor` for every broadcast event; events
/// missed by falling behind are skipped.
pub fn broadcast<T, M>(
    background: &Background,
    mut events: broadcast::Receiver<T>,
    actor: ActorRef<M>,
    message: impl Fn(T) -> M + Send + 'static,
) where
    T: Clone + Send + 'static,
    M: Message,
{
    background.spawn("broadcast feed", async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if actor.cast(message(event)).is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}
