//! Lifecycle notifications between replicas over Redis pub/sub: long polls wake as soon as a
//! player's status changes, and the replica supervising a session learns that it was ended
//! elsewhere (an operator stop, or a result report received by another replica).
//!
//! Messages are `<kind> <session_id> <player,player,...>`; the state itself is always read
//! back from Redis, so a lost message only delays a long poll until its periodic re-check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::supervisor::Supervisor;

/// Players waiting in long polls on this replica.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<String, Arc<Notify>>>,
}

/// A registration for one player's changes; removes itself when the last waiter leaves.
pub struct Watch<'a> {
    waiters: &'a Waiters,
    player: String,
    pub notify: Arc<Notify>,
}

impl Waiters {
    /// Starts watching `player`.
    pub fn watch(&self, player: &str) -> Watch<'_> {
        let notify = self.map.lock().unwrap().entry(player.to_owned()).or_default().clone();
        Watch {
            waiters: self,
            player: player.to_owned(),
            notify,
        }
    }

    /// Wakes everyone watching one of `players`.
    pub fn wake<'p>(&self, players: impl IntoIterator<Item = &'p str>) {
        let map = self.map.lock().unwrap();
        for player in players {
            if let Some(notify) = map.get(player) {
                notify.notify_waiters();
            }
        }
    }

    /// Wakes every waiter (after missing messages, they re-check).
    pub fn wake_all(&self) {
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
pub async fn listen(store: Store, waiters: Arc<Waiters>, supervisor: Supervisor, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let subscribed = async {
            let mut pubsub = store.client().get_async_pubsub().await?;
            pubsub.subscribe(store.channel()).await?;
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
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            let mut parts = payload.splitn(3, ' ');
            let (Some(kind), Some(sid)) = (parts.next(), parts.next()) else {
                continue;
            };
            waiters.wake(parts.next().unwrap_or_default().split(','));
            if kind == "ended" {
                supervisor.ended_elsewhere(sid);
            }
        }
    }
}
