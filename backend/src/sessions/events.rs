//! Lifecycle notifications between replicas over Redis pub/sub: long polls wake as soon as a
//! player's status changes, and the replica supervising a session learns that it was ended
//! elsewhere (an operator stop, or a result report received by another replica).
//!
//! Messages are [`SessionEvent`]s, as the scripts write them to the outbox too; the state
//! itself is always read back from Redis, so a lost message only delays a long poll until
//! its periodic re-check.

use service::backoff::Policy;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::sessions::Sessions;
use matchmaking_core::lifecycle::{Change, SessionEvent};

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

pub(crate) use service::redis::Liveness;

/// Listens on the events channel until `stop`, reconnecting with backoff.
pub(crate) async fn listen(sessions: Sessions, waiters: Arc<Waiters>, stop: CancellationToken) {
    listen_checked(sessions, waiters, stop, Liveness::default()).await;
}

/// Retries of subscribing to the events channel.
pub(crate) const SUBSCRIBE: Policy =
    Policy::new("events_subscribe", Duration::from_millis(100), Duration::from_secs(5));

/// [`listen`], checking the subscription as `liveness` says.
pub(crate) async fn listen_checked(
    sessions: Sessions,
    waiters: Arc<Waiters>,
    stop: CancellationToken,
    liveness: Liveness,
) {
    let store = sessions.store();
    let channel = store.keys().events();
    service::redis::subscribe(
        store.link(),
        &channel,
        SUBSCRIBE,
        liveness,
        &stop,
        // Anything may have changed while we were not listening.
        || waiters.wake_all(),
        |payload| {
            let event = match SessionEvent::from_json(payload) {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(error = %e, "events: a message that is no session event");
                    return;
                }
            };
            // A player's leave changes no one's standing: it only times a leave grace.
            if matches!(event.change, Change::Left) {
                sessions.player_left(&event.session_id);
                return;
            }
            waiters.wake(event.players.iter().map(String::as_str));
            if matches!(
                event.change,
                Change::Backfilled { .. } | Change::Released | Change::Ended { .. }
            ) {
                waiters.wake([crate::http::roster_key(&event.session_id).as_str()]);
            }
            if matches!(event.change, Change::Ended { .. }) {
                sessions.ended_elsewhere(&event.session_id);
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands;

    use super::*;
    use matchmaking_core::store::Store;

    /// Redis going silent under the subscription (its host lost power or dropped off the
    /// network: nothing closes the connection, nothing arrives on it) is noticed by the
    /// subscription's check, and the listener subscribes anew once Redis can be reached again:
    /// events published after that wake long polls as before.
    #[tokio::test]
    async fn a_silent_redis_under_the_subscription_is_noticed_and_the_subscription_renewed() {
        let url = testkit::redis_url();
        let target = redis::Client::open(url.as_str()).unwrap();
        let direct = target.get_connection_info().addr().to_string();
        let addr = tokio::net::lookup_host(direct.as_str()).await.unwrap().next().unwrap();
        let relay = testkit::Relay::start(addr).await;
        let store = Store::connect(
            &url.replacen(&direct, &relay.addr().to_string(), 1),
            &testkit::unique_prefix(),
        )
        .await
        .unwrap();
        let channel = store.keys().events();
        let sessions = Sessions::standalone(store, "r1");
        let waiters = Arc::new(Waiters::default());
        let stop = CancellationToken::new();
        let liveness = Liveness {
            every: Duration::from_millis(200),
            patience: Duration::from_millis(300),
        };
        tokio::spawn(listen_checked(sessions, waiters.clone(), stop.clone(), liveness));
        let mut publisher = target.get_multiplexed_async_connection().await.unwrap();
        let event = serde_json::to_string(&SessionEvent {
            session_id: "s1".into(),
            players: vec!["p".into()],
            at_ms: 1,
            change: Change::Ready {
                server: "gs".into(),
                addr: "127.0.0.1:1".into(),
                version: None,
            },
        })
        .unwrap();
        // Whether a published event wakes a long poll of `p` within a moment.
        let mut woken = async || {
            let watch = waiters.watch("p");
            let notified = watch.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _: i64 = publisher.publish(&channel, &event).await.unwrap();
            tokio::time::timeout(Duration::from_millis(500), notified).await.is_ok()
        };
        let started = std::time::Instant::now();
        while !woken().await {
            assert!(started.elapsed() < Duration::from_secs(10), "never subscribed");
        }

        relay.cut();
        assert!(!woken().await, "an event crossed the silent relay");
        // Long enough for the check to notice and to try subscribing again while Redis is
        // still silent.
        tokio::time::sleep(Duration::from_secs(1)).await;
        relay.heal();
        let healed = std::time::Instant::now();
        while !woken().await {
            assert!(
                healed.elapsed() < Duration::from_secs(10),
                "the subscription was not renewed once Redis could be reached again"
            );
        }
        stop.cancel();
    }
}
