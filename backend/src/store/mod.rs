//! The matchmaking state in Redis, shared by every backend replica.
//!
//! Every change that must be atomic (join, cancel, forming sessions, marking a server ready,
//! ending a session and requeueing its players) is one Lua script, so no interleaving of
//! replicas can drop a player or put one in two sessions. The same scripts append each
//! lifecycle change to the outbox stream (for the PostgreSQL history) and publish it on the
//! events channel (for long polls and supervisors), as one [`SessionEvent`], so state, history
//! and notifications never disagree.
//!
//! Key names come from [`Keys`]; every key a script touches is passed in `KEYS`. Each script
//! answers with one JSON document, decoded here once into the typed outcome of that script.
//!
//! [`SessionEvent`]: crate::lifecycle::SessionEvent

use std::sync::LazyLock;
use std::time::Duration;

use protocol::api::EndReason;
use protocol::sessions::SessionRecord;
use redis::{AsyncCommands, FromRedisValue, ParsingError, Script, Value};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use service::redis::{LinkConnection, RedisLink, RedisTarget};

use crate::keys::Keys;

/// How long an ended session's record (and each player's pointer to it) is kept for status.
const ENDED_RETENTION: Duration = Duration::from_secs(3600);

/// A script with the shared prelude in front of it.
macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!(concat!("lua/", $file))
            ))
        })
    };
}

static JOIN: LazyLock<Script> = script!("join.lua");
static CANCEL: LazyLock<Script> = script!("cancel.lua");
static STATUS: LazyLock<Script> = script!("status.lua");
static FORM: LazyLock<Script> = script!("form.lua");
static READY: LazyLock<Script> = script!("ready.lua");
static END: LazyLock<Script> = script!("end.lua");

/// Redis failed; matchmaking cannot go on until it is back.
pub type Result<T, E = redis::RedisError> = std::result::Result<T, E>;

/// A script's JSON reply, decoded into `T`.
struct Json<T>(T);

impl<T: DeserializeOwned> FromRedisValue for Json<T> {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let bytes = match value {
            Value::BulkString(bytes) => bytes,
            Value::SimpleString(text) => text.into_bytes(),
            other => return Err(format!("a script replied {other:?}, not JSON").into()),
        };
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| format!("a script's reply does not decode: {e}").into())
    }
}

/// What a join did.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JoinOutcome {
    /// Newly queued (`new`) or already queued; `depth` is the queue length after.
    Queued { new: bool, depth: u64 },
    /// Already in a live session: its record, for the answer.
    #[serde(rename = "session")]
    InSession { session_id: String, record: SessionRecord },
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CancelOutcome {
    Cancelled,
    InSession,
    NotQueued,
}

/// One player's standing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlayerView {
    Unknown,
    Queued,
    /// In a session (or, for a while after it, in its ended record).
    #[serde(rename = "session")]
    InSession {
        session_id: String,
        record: SessionRecord,
    },
}

/// A session the matcher just formed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FormedSession {
    pub session_id: String,
    pub players: Vec<String>,
    /// Each player's join time (ms since the epoch), aligned with `players`.
    pub joined_ms: Vec<i64>,
}

/// What marking a server ready did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReadyOutcome {
    Ready,
    /// The session is no longer allocating: it ended meanwhile.
    NotAllocating,
}

/// What ending a session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EndOutcome {
    Unknown,
    /// Ended earlier, for `reason`.
    AlreadyEnded {
        reason: Option<EndReason>,
    },
    /// Ended by this call, for `reason` (`failed` when a server reported while its session
    /// was still allocating); `requeued`: its players went back to the head of the queue.
    Ended {
        requeued: bool,
        reason: EndReason,
    },
}

/// A live session and its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    pub session_id: String,
    pub record: SessionRecord,
}

/// The matching rules, as the form script takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormRules {
    pub size: u32,
    pub min_partial: u32,
    pub flush_wait_ms: i64,
}

/// Handle on the shared Redis state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    link: RedisLink,
    keys: Keys,
}

impl Store {
    /// Connects to `target` (reconnecting, and following failovers, from then on), keeping
    /// keys under `prefix`. Fails if Redis cannot be reached now.
    pub async fn open(target: RedisTarget, prefix: &str) -> Result<Store> {
        Ok(Store {
            link: RedisLink::connect(target, Duration::from_secs(5)).await?,
            keys: Keys::new(prefix),
        })
    }

    /// [`Store::open`] on one Redis URL.
    pub async fn connect(url: &str, prefix: &str) -> Result<Store> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)?;
        Store::open(RedisTarget::Direct(Box::new(info)), prefix).await
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The link, for connections of their own (pub/sub, blocking stream reads) to the
    /// current primary.
    pub(crate) fn link(&self) -> &RedisLink {
        &self.link
    }

    /// A command handle on the shared connection.
    pub(crate) fn conn(&self) -> LinkConnection {
        self.link.conn()
    }

    /// Queues `player` (idempotent), unless already in a live session.
    pub async fn join(&self, player: &str, now_ms: i64) -> Result<JoinOutcome> {
        let k = &self.keys;
        let Json(outcome) = JOIN
            .key(k.queue())
            .key(k.joined())
            .key(k.seq())
            .key(k.player_session())
            .key(k.sessions())
            .arg(player)
            .arg(now_ms)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(outcome)
    }

    /// Takes `player` out of the queue, unless already in a session.
    pub async fn cancel(&self, player: &str) -> Result<CancelOutcome> {
        let k = &self.keys;
        let Json(outcome) = CANCEL
            .key(k.queue())
            .key(k.joined())
            .key(k.player_session())
            .key(k.sessions())
            .arg(player)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(outcome)
    }

    /// Where `player` stands, read atomically.
    pub async fn player(&self, player: &str) -> Result<PlayerView> {
        let k = &self.keys;
        let Json(view) = STATUS
            .key(k.queue())
            .key(k.player_session())
            .key(k.sessions())
            .arg(player)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(view)
    }

    /// Forms up to `max` sessions from the queue as of `now_ms`, owned by `instance`.
    pub async fn form(&self, rules: &FormRules, now_ms: i64, instance: &str, max: usize) -> Result<Vec<FormedSession>> {
        let k = &self.keys;
        let mut script = FORM.prepare_invoke();
        script
            .key(k.queue())
            .key(k.joined())
            .key(k.live())
            .key(k.outbox())
            .key(k.player_session())
            .key(k.sessions())
            .arg(rules.size)
            .arg(rules.min_partial)
            .arg(rules.flush_wait_ms)
            .arg(now_ms)
            .arg(instance)
            .arg(k.events());
        for _ in 0..max {
            script.arg(uuid::Uuid::new_v4().to_string());
        }
        let Json(formed) = script.invoke_async(&mut self.conn()).await?;
        Ok(formed)
    }

    /// Marks a session's server ready, unless the session is no longer allocating.
    pub async fn mark_ready(&self, sid: &str, server: &str, addr: &str, now_ms: i64) -> Result<ReadyOutcome> {
        let k = &self.keys;
        let Json(outcome) = READY
            .key(k.sessions())
            .key(k.outbox())
            .arg(sid)
            .arg(server)
            .arg(addr)
            .arg(now_ms)
            .arg(k.events())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(outcome)
    }

    /// Ends a session once (the first reason wins). A session failing while still allocating
    /// requeues its players at the head. `report` (JSON) records attendance, also after the end.
    pub async fn end_session(
        &self,
        sid: &str,
        reason: EndReason,
        now_ms: i64,
        report: Option<&str>,
    ) -> Result<EndOutcome> {
        let k = &self.keys;
        let Json(outcome) = END
            .key(k.sessions())
            .key(k.live())
            .key(k.ended())
            .key(k.outbox())
            .key(k.queue())
            .key(k.joined())
            .key(k.player_session())
            .arg(sid)
            .arg(reason.as_str())
            .arg(now_ms)
            .arg(k.events())
            .arg(report.unwrap_or(""))
            .arg(u64::try_from(ENDED_RETENTION.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(outcome)
    }

    /// One session's record, if Redis still holds it.
    pub async fn session(&self, sid: &str) -> Result<Option<SessionRecord>> {
        let raw: Option<Vec<u8>> = self.conn().hget(self.keys.sessions(), sid).await?;
        Ok(raw.and_then(|raw| decode_record(sid, &raw)))
    }

    /// Whether Redis holds a record of each of `sids` (live or recently ended).
    pub async fn sessions_known(&self, sids: &[String]) -> Result<Vec<bool>> {
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for sid in sids {
            pipe.hexists(self.keys.sessions(), sid);
        }
        pipe.query_async(&mut self.conn()).await
    }

    /// Every session not yet ended, oldest first.
    pub async fn live_sessions(&self) -> Result<Vec<LiveSession>> {
        let mut conn = self.conn();
        let sids: Vec<String> = conn.zrange(self.keys.live(), 0, -1).await?;
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let raws: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.keys.sessions())
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

    /// Players waiting.
    pub async fn queue_depth(&self) -> Result<u64> {
        self.conn().zcard(self.keys.queue()).await
    }

    /// The queue in order, head first (for tests and operators).
    pub async fn queued_players(&self) -> Result<Vec<String>> {
        self.conn().zrange(self.keys.queue(), 0, -1).await
    }

    /// History events not yet written.
    pub async fn outbox_len(&self) -> Result<u64> {
        self.conn().xlen(self.keys.outbox()).await
    }

    /// Says this instance is alive for `ttl`.
    pub async fn heartbeat(&self, instance: &str, ttl: Duration) -> Result<()> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.conn().pset_ex(self.keys.instance(instance), 1, ms).await
    }

    /// Whether `instance` has a live heartbeat.
    pub async fn instance_alive(&self, instance: &str) -> Result<bool> {
        self.conn().exists(self.keys.instance(instance)).await
    }

    /// Checks the connection.
    pub async fn ping(&self) -> Result<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(|_| ())
    }
}

fn decode_record(sid: &str, raw: &[u8]) -> Option<SessionRecord> {
    match serde_json::from_slice(raw) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::error!(session = sid, error = %e, "a session record does not decode");
            None
        }
    }
}

/// Milliseconds since the Unix epoch, from the system clock (shared by all replicas via NTP).
pub fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
