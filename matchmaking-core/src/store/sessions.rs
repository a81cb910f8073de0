//! The sessions' part of the Redis state: marking a server ready, ending a session (and
//! requeueing its players when it never started), the records the proxy and the API read, and
//! the replicas' heartbeats and leases.

use std::time::Duration;

use protocol::api::EndReason;
use protocol::sessions::{Identity, SessionRecord};
use redis::AsyncCommands;

use super::{END, ENDED_RETENTION, EndOutcome, Json, LEASE, LiveSession, READY, ReadyOutcome, Result, Store};
use super::{WARM_OFFER, WARM_POLL};
use super::{decode_record, default_queue};
use crate::keys::QueueKeys;
use crate::queues::DEFAULT_QUEUE;

/// Where a ready server is and how the proxy hands it players.
#[derive(Debug, Clone, Copy)]
pub struct ServerRoute<'a> {
    /// Its name (a Pod, or `local-<pid>`).
    pub server: &'a str,
    /// `ip:port` of its TCP game port; empty when it has none.
    pub addr: &'a str,
    /// `ip:port` of its UDP game port, when it has one.
    pub udp_addr: Option<&'a str>,
    pub identity: Identity,
    /// The version of its profile it runs, when the profile lists versions.
    pub version: Option<&'a str>,
}

/// An SDK call of a server's that the backend keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerSignal {
    Ready,
    Health,
}

impl ServerSignal {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerSignal::Ready => "ready",
            ServerSignal::Health => "health",
        }
    }
}

/// How long a warm server's hash is kept after its last write (its polls renew it).
const WARM_SERVER_TTL_MS: i64 = 60_000;

/// How long a server's signals are kept after its last one.
const SERVER_SIGNALS_TTL_MS: i64 = 3_600_000;

impl Store {
    /// Marks a session's server ready at `addr` (the built-in server: TCP, `JOIN` line passed
    /// on), unless the session is no longer allocating.
    pub async fn mark_ready(&self, sid: &str, server: &str, addr: &str, now_ms: i64) -> Result<ReadyOutcome> {
        let route = ServerRoute {
            server,
            addr,
            udp_addr: None,
            identity: Identity::JoinLine,
            version: None,
        };
        self.mark_ready_at(sid, &route, now_ms).await
    }

    /// Marks a session's server ready, reachable as `route` says, unless the session is no
    /// longer allocating.
    pub async fn mark_ready_at(&self, sid: &str, route: &ServerRoute<'_>, now_ms: i64) -> Result<ReadyOutcome> {
        let k = self.keys();
        let Json(outcome) = READY
            .key(k.sessions())
            .key(k.outbox())
            .arg(sid)
            .arg(route.server)
            .arg(route.addr)
            .arg(now_ms)
            .arg(k.events())
            .arg(route.udp_addr.unwrap_or_default())
            .arg(route.identity.as_str())
            .arg(route.version.unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(outcome)
    }

    /// Ends a session once (the first reason wins). A session failing while still allocating
    /// requeues its tickets at the head of its queue. `report` (JSON) records attendance, also
    /// after the end.
    pub async fn end_session(
        &self,
        sid: &str,
        reason: EndReason,
        now_ms: i64,
        report: Option<&str>,
    ) -> Result<EndOutcome> {
        self.end_with(sid, reason, now_ms, report, false).await
    }

    /// Fails a session whose server's region was lost, requeueing its players at the head of
    /// its queue even if it was running (they keep their join times; a party goes back whole).
    pub async fn fail_requeueing(&self, sid: &str, now_ms: i64) -> Result<EndOutcome> {
        self.end_with(sid, EndReason::Failed, now_ms, None, true).await
    }

    async fn end_with(
        &self,
        sid: &str,
        reason: EndReason,
        now_ms: i64,
        report: Option<&str>,
        requeue_running: bool,
    ) -> Result<EndOutcome> {
        let k = self.keys();
        // Most sessions are of the default queue; the script names the right one otherwise.
        let mut queue = default_queue();
        for _ in 0..2 {
            let q: QueueKeys = k.of_queue(&queue);
            let Json(reply): Json<serde_json::Value> = END
                .key(k.sessions())
                .key(k.live())
                .key(k.ended())
                .key(k.outbox())
                .key(&q.queue)
                .key(&q.joined)
                .key(k.player_session())
                .key(k.waiting())
                .key(&q.tickets)
                .key(k.backfill())
                .arg(sid)
                .arg(reason.as_str())
                .arg(now_ms)
                .arg(k.events())
                .arg(report.unwrap_or(""))
                .arg(u64::try_from(ENDED_RETENTION.as_millis()).unwrap_or(u64::MAX))
                .arg(&queue)
                .arg(if requeue_running { "1" } else { "" })
                .invoke_async(&mut self.conn())
                .await?;
            // `wrong_queue`: nothing done; the session is of that queue, whose keys it needs.
            if reply["kind"] == "wrong_queue" {
                queue = reply["queue"].as_str().unwrap_or(DEFAULT_QUEUE).to_owned();
                continue;
            }
            return serde_json::from_value(reply).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "the end script's reply does not decode",
                    e.to_string(),
                ))
            });
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "a session's queue changed during its end",
        )))
    }

    /// One session's record, if Redis still holds it.
    pub async fn session(&self, sid: &str) -> Result<Option<SessionRecord>> {
        let raw: Option<Vec<u8>> = self.conn().hget(self.keys().sessions(), sid).await?;
        Ok(raw.and_then(|raw| decode_record(sid, &raw)))
    }

    /// Whether Redis holds a record of each of `sids` (live or recently ended).
    pub async fn sessions_known(&self, sids: &[String]) -> Result<Vec<bool>> {
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for sid in sids {
            pipe.hexists(self.keys().sessions(), sid);
        }
        pipe.query_async(&mut self.conn()).await
    }

    /// Whether each of `sids` is a session not yet ended (known to Redis and live).
    pub async fn sessions_live(&self, sids: &[String]) -> Result<Vec<bool>> {
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(self.keys().live())
            .arg(sids)
            .query_async(&mut self.conn())
            .await?;
        Ok(scores.into_iter().map(|score| score.is_some()).collect())
    }

    /// Every session not yet ended, oldest first.
    pub async fn live_sessions(&self) -> Result<Vec<LiveSession>> {
        let mut conn = self.conn();
        let sids: Vec<String> = conn.zrange(self.keys().live(), 0, -1).await?;
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let raws: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.keys().sessions())
            .arg(&sids)
            .query_async(&mut conn)
            .await?;
        Ok(sids
            .into_iter()
            .zip(raws)
            .filter_map(|(session_id, raw)| {
                let record = decode_record(&session_id, &raw?)?;
                Some(LiveSession { session_id, record })
            })
            .collect())
    }

    /// Records that session `sid`'s server made SDK call `signal` (`ready`, `health`) at
    /// `now_ms`. The record lives an hour past the last call.
    pub async fn record_server_signal(&self, sid: &str, signal: ServerSignal, now_ms: i64) -> Result<()> {
        let key = self.keys().server_signals(sid);
        redis::pipe()
            .atomic()
            .hset(&key, signal.as_str(), now_ms)
            .ignore()
            .pexpire(&key, SERVER_SIGNALS_TTL_MS)
            .ignore()
            .query_async(&mut self.conn())
            .await
    }

    /// When session `sid`'s server last made SDK call `signal`, if it has.
    pub async fn server_signal(&self, sid: &str, signal: ServerSignal) -> Result<Option<i64>> {
        self.conn().hget(self.keys().server_signals(sid), signal.as_str()).await
    }

    /// A warm server's poll for its session (see `warm_poll.lua`): the session offered to it,
    /// now taken, if any.
    pub async fn warm_poll(&self, id: &str, now_ms: i64) -> Result<Option<String>> {
        WARM_POLL
            .key(self.keys().warm_server(id))
            .arg(now_ms)
            .arg(WARM_SERVER_TTL_MS)
            .invoke_async(&mut self.conn())
            .await
    }

    /// Offers `session` (JSON) to warm server `id`: whether it was offered (the server is
    /// polling and had no session).
    pub async fn warm_offer(&self, id: &str, session: &str) -> Result<bool> {
        let offered: i64 = WARM_OFFER
            .key(self.keys().warm_server(id))
            .arg(session)
            .arg(WARM_SERVER_TTL_MS)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(offered == 1)
    }

    /// Whether warm server `id` has polled (it is waiting for a session), and whether it has
    /// taken the session offered to it.
    pub async fn warm_server_state(&self, id: &str) -> Result<(bool, bool)> {
        let (polled, taken): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.keys().warm_server(id))
            .arg("polled")
            .arg("taken")
            .query_async(&mut self.conn())
            .await?;
        Ok((polled.is_some(), taken.is_some()))
    }

    /// Says this instance is alive for `ttl`.
    pub async fn heartbeat(&self, instance: &str, ttl: Duration) -> Result<()> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.conn().pset_ex(self.keys().instance(instance), 1, ms).await
    }

    /// Whether `instance` has a live heartbeat.
    pub async fn instance_alive(&self, instance: &str) -> Result<bool> {
        self.conn().exists(self.keys().instance(instance)).await
    }

    /// Takes or keeps the lease on keeping the warm Pod pool for `ttl`: whether this
    /// `instance` holds it now.
    pub async fn warm_pool_lease(&self, instance: &str, ttl: Duration) -> Result<bool> {
        self.lease(&self.keys().warm_lease(), instance, ttl).await
    }

    /// Takes or keeps the lease held in `key` for `ttl`: whether `instance` holds it now.
    pub(super) async fn lease(&self, key: &str, instance: &str, ttl: Duration) -> Result<bool> {
        let held: i64 = LEASE
            .key(key)
            .arg(instance)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(held == 1)
    }
}
