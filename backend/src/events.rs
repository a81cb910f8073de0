//! Lifecycle notifications between replicas over Redis pub/sub: long polls wake as soon as a
//! player's status changes, and the replica supervising a session learns that it was ended
//! elsewhere (an operator stop, or a result report received by another replica).
//!
//! Messages are [`SessionEvent`]s, as the scripts write them to the outbox too; the state
//! itself is always read back from Redis, so a lost message only delays a long poll until
//! its periodic re-check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::{Change, SessionEvent};
use crate::sessions::Sessions;

/// Players waiting in long polls on this replica.
#[derive(Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<String, Arc<Notify>>>,
}

/// A registration for one player's changes; removes itself when the last waiter leaves.
pub(crate) struct Watch<'a> {
    waiters: &'a Waiters,
    player: String,
    pub(crate) notify: Arc<Notify>,
}

impl Waiters {
    /// Starts watching `player`.
    pub(crate) fn watch(&self, player: &str) -> Watch<'_> {
        let notify = self.map.lock().unwrap().entry(player.to_owned()).or_default().clone();
        Watch {
            waiters: self,
            player: player.to_owned(),
            notify,
        }
    }

    /// Wakes everyone watching one of `players`.
    pub(crate) fn wake<'p>(&self, players: impl IntoIterator<Item = &'p str>) {
        let map = self.map.lock().unwrap();
        for player in players {
            if let Some(notify) = map.get(player) {
                notify.notify_waiters();
            }
        }
    }

    /// Wakes every waiter (after missing messages, they re-check).
    pub(crate) fn wake_all(&self) {
        for notify in self.map.lock().unwrap().values() {
            notify.notify_waiters();
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock().unwrap();
        // The map's reference and ours: nobody else watches this player.
        if Arc::strong_count(&self.notify) <= 2 {
            map.remove(&self.player);
        }
    }
}

/// Listens on the events channel until `stop`, reconnecting with backoff.
pub(crate) async fn listen(sessions: Sessions, waiters: Arc<Waiters>, stop: CancellationToken) {
    let store = sessions.store();
    let channel = store.keys().events();
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let subscribed = async {
            let mut pubsub = store.link().client().await?.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut pubsub = match subscribed.await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::warn!(error = %e, "events: cannot subscribe; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Anything may have changed while we were not listening.
        waiters.wake_all();
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else {
                tracing::warn!("events: subscription lost; reconnecting");
                break;
            };
            let event = match SessionEvent::from_json(message.get_payload_bytes()) {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(error = %e, "events: a message that is no session event");
                    continue;
                }
            };
            waiters.wake(event.players.iter().map(String::as_str));
            if matches!(event.change, Change::Ended { .. }) {
                sessions.ended_elsewhere(&event.session_id);
            }
        }
    }
}
