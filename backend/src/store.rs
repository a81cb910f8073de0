//! The matchmaking state in Redis, shared by every backend replica.
//!
//! Every change that must be atomic (join, cancel, forming sessions, marking a server ready,
//! ending a session and requeueing its players) is one Lua script, so no interleaving of
//! replicas can drop a player or put one in two sessions. The same scripts append each
//! lifecycle change to an outbox stream (for the Postgres history) and publish it on an events
//! channel (for long polls and supervisors), so state, history and notifications never
//! disagree.
//!
//! Keys, all under `REDIS_KEY_PREFIX` (`P`):
//! - `P:queue` zset player → join sequence (requeued players get lower scores: the head)
//! - `P:joined` hash player → join time (ms), `P:seq` the join counter
//! - `P:ps:<player>` the player's current (or, for an hour, last) session id
//! - `P:s:<sid>` hash: state, players, joined, created_ms, instance, server, addr, ready_ms,
//!   end_reason, ended_ms, reported
//! - `P:live` zset sid → created_ms of sessions not yet ended
//! - `P:outbox` stream of lifecycle events; `P:events` pub/sub channel; `P:inst:<id>` heartbeats

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use protocol::api::EndReason;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

/// Seconds an ended session's record (and each player's pointer to it) is kept for status.
pub const ENDED_RETENTION_SECONDS: u64 = 3600;

static JOIN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/join.lua")));
static CANCEL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/cancel.lua")));
static FORM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/form.lua")));
static READY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/ready.lua")));
static END: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/end.lua")));
static STATUS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/status.lua")));

/// Redis failed; matchmaking cannot go on until it is back.
pub type Result<T, E = redis::RedisError> = std::result::Result<T, E>;

/// A session's state as Redis holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Allocating,
    Matched,
    Ended,
}

impl SessionState {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "allocating" => Some(SessionState::Allocating),
            "matched" => Some(SessionState::Matched),
            "ended" => Some(SessionState::Ended),
            _ => None,
        }
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Allocating => "allocating",
            SessionState::Matched => "matched",
            SessionState::Ended => "ended",
        }
    }
}

/// What a join did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Newly queued (`new`) or already queued; `depth` is the queue length after.
    Queued { new: bool, depth: u64 },
    /// Already in a live session.
    InSession { session_id: String, state: SessionState },
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    InSession,
    NotQueued,
}

/// A session the matcher just formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormedSession {
    pub session_id: String,
    pub players: Vec<String>,
    /// Each player's join time (ms since the epoch), aligned with `players`.
    pub joined_ms: Vec<i64>,
}

/// What ending a session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOutcome {
    Unknown,
    AlreadyEnded,
    Ended,
    Requeued,
}

/// One player's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayerView {
    Unknown,
    Queued,
    InSession(SessionView),
}

/// What a status answer needs of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub session_id: String,
    pub state: SessionState,
    pub players: Vec<String>,
    /// The game server's address, once matched.
    pub addr: Option<String>,
    pub end_reason: Option<EndReason>,
}

/// A full session record, for operators and the proxy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionRecord {
    pub session_id: String,
    pub state: SessionState,
    pub players: Vec<String>,
    pub instance: Option<String>,
    pub server: Option<String>,
    pub addr: Option<String>,
    pub created_ms: Option<i64>,
    pub ready_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub end_reason: Option<String>,
}

/// Handle on the shared Redis state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    prefix: String,
    client: redis::Client,
}

fn split(list: &str) -> Vec<String> {
    list.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

impl Store {
    /// Connects (with automatic reconnects) to `url`, keeping keys under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Store> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Store {
            conn,
            prefix: prefix.to_owned(),
            client,
        })
    }

    /// The client, for connections of their own (pub/sub, blocking stream reads).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A multiplexed connection handle.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The full name of key `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// The events channel.
    pub fn channel(&self) -> String {
        self.key("events")
    }

    fn session_key(&self, sid: &str) -> String {
        protocol::sessions::session_key(&self.prefix, sid)
    }

    /// Queues `player` (idempotent), unless already in a live session.
    pub async fn join(&self, player: &str, now_ms: i64) -> Result<JoinOutcome> {
        let reply: Vec<String> = JOIN
            .key(self.key("queue"))
            .key(self.key("joined"))
            .key(self.key("seq"))
            .key(self.key(&format!("ps:{player}")))
            .arg(player)
            .arg(now_ms)
            .arg(self.key("s:"))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match reply.first().map(String::as_str) {
            Some("session") => JoinOutcome::InSession {
                session_id: reply[1].clone(),
                state: SessionState::parse(&reply[2]).unwrap_or(SessionState::Allocating),
            },
            kind => JoinOutcome::Queued {
                new: kind == Some("new"),
                depth: reply.get(2).and_then(|d| d.parse().ok()).unwrap_or(0),
            },
        })
    }

    /// A call of a script that takes one player's keys (queue, joined, ps:<player>) and
    /// arguments (player, session key prefix).
    fn for_player<'a>(&self, script: &'a Script, player: &str) -> redis::ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        call.key(self.key("queue"))
            .key(self.key("joined"))
            .key(self.key(&format!("ps:{player}")))
            .arg(player)
            .arg(self.key("s:"));
        call
    }

    /// Takes `player` out of the queue, unless already in a session.
    pub async fn cancel(&self, player: &str) -> Result<CancelOutcome> {
        let reply: String = self.for_player(&CANCEL, player).invoke_async(&mut self.conn()).await?;
        Ok(match reply.as_str() {
            "cancelled" => CancelOutcome::Cancelled,
            "in_session" => CancelOutcome::InSession,
            _ => CancelOutcome::NotQueued,
        })
    }

    /// Forms up to `max` sessions from the queue as of `now_ms`, owned by `instance`.
    pub async fn form(&self, rules: &FormRules, now_ms: i64, instance: &str, max: usize) -> Result<Vec<FormedSession>> {
        let mut script = FORM.prepare_invoke();
        script
            .key(self.key("queue"))
            .key(self.key("joined"))
            .key(self.key("live"))
            .key(self.key("outbox"))
            .arg(rules.size)
            .arg(rules.min_partial)
            .arg(rules.flush_wait_ms)
            .arg(now_ms)
            .arg(format!("{}:", self.prefix))
            .arg(instance)
            .arg(self.channel());
        for _ in 0..max {
            script.arg(uuid::Uuid::new_v4().to_string());
        }
        let flat: Vec<String> = script.invoke_async(&mut self.conn()).await?;
        Ok(flat
            .chunks_exact(3)
            .map(|c| FormedSession {
                session_id: c[0].clone(),
                players: split(&c[1]),
                joined_ms: c[2].split(',').map(|j| j.parse().unwrap_or(now_ms)).collect(),
            })
            .collect())
    }

    /// Marks a session's server ready; false if the session already ended.
    pub async fn mark_ready(&self, sid: &str, server: &str, addr: &str, now_ms: i64) -> Result<bool> {
        let changed: i64 = READY
            .key(self.session_key(sid))
            .key(self.key("outbox"))
            .arg(sid)
            .arg(server)
            .arg(addr)
            .arg(now_ms)
            .arg(self.channel())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(changed == 1)
    }

    /// Ends a session once (first reason wins); `requeue` puts its players back at the head
    /// of the queue; `report` (JSON) records attendance, also after the end.
    pub async fn end_session(
        &self,
        sid: &str,
        reason: EndReason,
        now_ms: i64,
        requeue: bool,
        report: Option<&str>,
    ) -> Result<EndOutcome> {
        let reply: String = END
            .key(self.session_key(sid))
            .key(self.key("live"))
            .key(self.key("outbox"))
            .key(self.key("queue"))
            .key(self.key("joined"))
            .arg(sid)
            .arg(reason.as_str())
            .arg(now_ms)
            .arg(format!("{}:", self.prefix))
            .arg(self.channel())
            .arg(if requeue { "1" } else { "0" })
            .arg(report.unwrap_or(""))
            .arg(ENDED_RETENTION_SECONDS)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match reply.as_str() {
            "ended" => EndOutcome::Ended,
            "requeued" => EndOutcome::Requeued,
            "already" => EndOutcome::AlreadyEnded,
            _ => EndOutcome::Unknown,
        })
    }

    /// Where `player` stands, read atomically.
    pub async fn player(&self, player: &str) -> Result<PlayerView> {
        let reply: Vec<String> = self.for_player(&STATUS, player).invoke_async(&mut self.conn()).await?;
        Ok(match reply.first().map(String::as_str) {
            Some("queued") => PlayerView::Queued,
            Some("session") if reply.len() >= 6 => match SessionState::parse(&reply[2]) {
                Some(state) => PlayerView::InSession(SessionView {
                    session_id: reply[1].clone(),
                    state,
                    players: split(&reply[3]),
                    addr: Some(reply[4].clone()).filter(|a| !a.is_empty()),
                    end_reason: reply[5].parse().ok(),
                }),
                None => PlayerView::Unknown,
            },
            _ => PlayerView::Unknown,
        })
    }

    /// One session's record, if Redis still holds it.
    pub async fn session(&self, sid: &str) -> Result<Option<SessionRecord>> {
        let fields: HashMap<String, String> = self.conn().hgetall(self.session_key(sid)).await?;
        Ok(record(sid, fields))
    }

    /// Every session not yet ended, oldest first.
    pub async fn live_sessions(&self) -> Result<Vec<SessionRecord>> {
        let mut conn = self.conn();
        let sids: Vec<String> = conn.zrange(self.key("live"), 0, -1).await?;
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for sid in &sids {
            pipe.hgetall(self.session_key(sid));
        }
        let all: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        Ok(sids
            .iter()
            .zip(all)
            .filter_map(|(sid, fields)| record(sid, fields))
            .collect())
    }

    /// Players waiting.
    pub async fn queue_depth(&self) -> Result<u64> {
        self.conn().zcard(self.key("queue")).await
    }

    /// The queue in order, head first (for tests and operators).
    pub async fn queued_players(&self) -> Result<Vec<String>> {
        self.conn().zrange(self.key("queue"), 0, -1).await
    }

    /// Says this instance is alive for `ttl`.
    pub async fn heartbeat(&self, instance: &str, ttl: Duration) -> Result<()> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.conn().pset_ex(self.key(&format!("inst:{instance}")), 1, ms).await
    }

    /// Whether `instance` has a live heartbeat.
    pub async fn instance_alive(&self, instance: &str) -> Result<bool> {
        self.conn().exists(self.key(&format!("inst:{instance}"))).await
    }

    /// Checks the connection.
    pub async fn ping(&self) -> Result<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(|_| ())
    }
}

/// The matching rules, as the form script takes them.
#[derive(Debug, Clone, Copy)]
pub struct FormRules {
    pub size: u32,
    pub min_partial: u32,
    pub flush_wait_ms: i64,
}

fn record(sid: &str, mut f: HashMap<String, String>) -> Option<SessionRecord> {
    let state = SessionState::parse(f.get("state")?)?;
    let int = |f: &HashMap<String, String>, k: &str| f.get(k).and_then(|v| v.parse().ok());
    Some(SessionRecord {
        session_id: sid.to_owned(),
        state,
        players: split(f.get("players").map(String::as_str).unwrap_or("")),
        created_ms: int(&f, "created_ms"),
        ready_ms: int(&f, "ready_ms"),
        ended_ms: int(&f, "ended_ms"),
        instance: f.remove("instance"),
        server: f.remove("server"),
        addr: f.remove("addr"),
        end_reason: f.remove("end_reason"),
    })
}

/// Milliseconds since the Unix epoch, from the system clock (shared by all replicas via NTP).
pub fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
