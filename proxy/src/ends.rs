//! Game connections of a session that failed are closed at once: its server is gone or cut
//! off (a Pod lost, a region down), and its players were told to wait for their next
//! session, which they cannot reach while an old connection holds them. A session that
//! ends otherwise (its match over, an operator's stop) is left to its server, which says its
//! last words and closes.
//!
//! Every proxy listens on the sessions' events channel; a failure missed while the
//! subscription was down is not seen, and that connection closes when its server does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use matchmaking_core::lifecycle::{Change, SessionEvent};
use protocol::sessions::EndReason;
use service::backoff::Policy;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Retries of subscribing to the events channel.
pub const SUBSCRIBE: Policy = Policy::new(
    "proxy_events_subscribe",
    Duration::from_millis(100),
    Duration::from_secs(5),
);

/// The sessions this proxy has game connections of, each with a token cancelled when it fails.
#[derive(Default)]
pub(crate) struct Ends {
    map: Mutex<HashMap<String, Watched>>,
    /// Numbers each session's entry, so a watch counts off only its own.
    next: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Watched {
    id: u64,
    token: CancellationToken,
    connections: usize,
}

/// One connection's watch on its session failing; forgotten when dropped.
pub(crate) struct EndWatch<'a> {
    ends: &'a Ends,
    sid: String,
    id: u64,
    token: CancellationToken,
}

impl Ends {
    /// Watches session `sid` for the life of the returned watch.
    pub(crate) fn watch(&self, sid: &str) -> EndWatch<'_> {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let watched = map.entry(sid.to_owned()).or_insert_with(|| Watched {
            id: self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..Watched::default()
        });
        watched.connections += 1;
        EndWatch {
            ends: self,
            sid: sid.to_owned(),
            id: watched.id,
            token: watched.token.clone(),
        }
    }

    /// Session `sid` failed: its connections here close.
    pub(crate) fn failed(&self, sid: &str) {
        let gone = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(sid);
        if let Some(watched) = gone {
            tracing::info!(
                session = sid,
                connections = watched.connections,
                "session failed: closing its game connections"
            );
            watched.token.cancel();
        }
    }

    /// How many sessions are watched (tests).
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl EndWatch<'_> {
    /// Resolves when the session fails.
    pub(crate) fn failed(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

impl Drop for EndWatch<'_> {
    fn drop(&mut self) {
        let mut map = self.ends.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(watched) = map.get_mut(&self.sid)
            && watched.id == self.id
        {
            watched.connections -= 1;
            if watched.connections == 0 {
                map.remove(&self.sid);
            }
        }
    }
}

/// Listens on the events channel of `prefix`'s sessions until `stop`, closing the game
/// connections of each session that fails.
pub(crate) async fn listen(link: service::redis::RedisLink, prefix: String, ends: Arc<Ends>, stop: CancellationToken) {
    let channel = matchmaking_core::keys::Keys::new(&prefix).events();
    service::redis::subscribe(
        &link,
        &channel,
        SUBSCRIBE,
        service::redis::Liveness::default(),
        &stop,
        || {},
        |payload| {
            if let Ok(SessionEvent {
                session_id,
                change:
                    Change::Ended {
                        reason: EndReason::Failed,
                        ..
                    },
                ..
            }) = SessionEvent::from_json(payload)
            {
                ends.failed(&session_id);
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_cancels_every_watch_of_its_session_and_nothing_is_left_behind() {
        let ends = Ends::default();
        let a1 = ends.watch("a");
        let a2 = ends.watch("a");
        let b = ends.watch("b");
        ends.failed("a");
        assert!(a1.token.is_cancelled() && a2.token.is_cancelled());
        assert!(!b.token.is_cancelled());
        drop((a1, a2));
        // A new connection of a session that failed before (a late one) is not cancelled by
        // the old token, and the old watches' drops do not count it off.
        let a3 = ends.watch("a");
        assert!(!a3.token.is_cancelled());
        drop(b);
        assert_eq!(ends.watched(), 1);
        drop(a3);
        assert_eq!(ends.watched(), 0);
        ends.failed("nobody");
    }
}
