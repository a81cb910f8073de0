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
use protocol::sessions::{SessionRecord, list_or_empty_object};
use redis::{AsyncCommands, FromRedisValue, ParsingError, Script, Value};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use service::redis::{LinkConnection, RedisLink, RedisTarget};

mod backfill;
mod operators;
mod presence;
mod queue;
mod sessions;

pub use backfill::{BackfillOutcome, Release, SlotsMode};
pub use presence::{Counted, Presence};
pub use queue::QueueStore;
pub use sessions::{ServerRoute, ServerSignal};

use crate::keys::Keys;
use crate::queues::DEFAULT_QUEUE;
pub use crate::queues::FormRules;

/// How long an ended session's record (and each player's pointer to it) is kept for status.
pub const ENDED_RETENTION: Duration = Duration::from_secs(3600);

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

pub(crate) static JOIN: LazyLock<Script> = script!("join.lua");
pub(crate) static CANCEL: LazyLock<Script> = script!("cancel.lua");
pub(crate) static STATUS: LazyLock<Script> = script!("status.lua");
pub(crate) static FORM: LazyLock<Script> = script!("form.lua");
pub(crate) static READY: LazyLock<Script> = script!("ready.lua");
pub(crate) static END: LazyLock<Script> = script!("end.lua");
pub(crate) static PLACE: LazyLock<Script> = script!("place.lua");
pub(crate) static LEASE: LazyLock<Script> = script!("lease.lua");
pub(crate) static PRESENCE: LazyLock<Script> = script!("presence.lua");
pub(crate) static WARM_OFFER: LazyLock<Script> = script!("warm_offer.lua");
pub(crate) static WARM_POLL: LazyLock<Script> = script!("warm_poll.lua");
pub(crate) static BACKFILL: LazyLock<Script> = script!("backfill.lua");

/// Redis failed; matchmaking cannot go on until it is back.
pub type Result<T, E = redis::RedisError> = std::result::Result<T, E>;

/// A script's JSON reply, decoded into `T`.
pub(crate) struct Json<T>(pub(crate) T);

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
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JoinOutcome {
    /// Newly queued (`new`) or already queued; `depth` is the queue length after.
    Queued { new: bool, depth: u64 },
    /// Already in a live session: its record, for the answer.
    #[serde(rename = "session")]
    InSession {
        session_id: String,
        record: Box<SessionRecord>,
    },
    /// `player` (the leader, queued in another queue, or a party member already queued or
    /// playing) keeps the ticket from being queued; `queue`: where that player waits.
    Busy {
        player: String,
        #[serde(default)]
        queue: Option<String>,
    },
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlayerView {
    Unknown,
    /// Waiting in `queue` on `ticket` (its leader's id) since `joined_ms`.
    Queued {
        queue: String,
        ticket: String,
        #[serde(default)]
        joined_ms: Option<i64>,
    },
    /// The ticket waited its queue's `max_wait_seconds` and ended at `at_ms`.
    TimedOut {
        queue: String,
        at_ms: i64,
    },
    /// In a session (or, for a while after it, in its ended record).
    #[serde(rename = "session")]
    InSession {
        session_id: String,
        record: Box<SessionRecord>,
    },
}

/// A session the matcher just formed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FormedSession {
    pub session_id: String,
    pub players: Vec<String>,
    /// Each player's join time (ms since the epoch), aligned with `players`.
    pub joined_ms: Vec<i64>,
    /// The queue it formed in.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Its teams' players (empty in a queue without teams).
    #[serde(default)]
    pub teams: Vec<Vec<String>>,
    /// Its queue's `match_on` values, which all its tickets share (empty for queues without).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub match_on: std::collections::BTreeMap<String, String>,
    /// The region chosen from its players' latency maps (a queue with `latency` rules).
    #[serde(default)]
    pub region: Option<String>,
}

pub(crate) fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

/// A rule queue's ticket as Redis holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTicket {
    /// Its leader's player id.
    pub id: String,
    /// Queue order, lowest first.
    pub order: f64,
    pub joined_ms: i64,
    /// Its document (`{"v", "players", "attributes"}`).
    pub doc: String,
}

/// What committing a plan did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Placed {
    /// The sessions formed, by id.
    #[serde(deserialize_with = "list_or_empty_object")]
    pub formed: Vec<String>,
    /// The players of each ticket timed out.
    #[serde(deserialize_with = "list_or_empty_object")]
    pub expired: Vec<Vec<String>>,
    /// Tickets the plan named that were no longer queued at the version it read (or whose
    /// backfill slot was no longer open).
    #[serde(deserialize_with = "list_or_empty_object")]
    pub stale: Vec<String>,
    /// The players placed into each running session.
    #[serde(default, deserialize_with = "list_or_empty_object")]
    pub backfilled: Vec<Backfilled>,
    /// Backfill requests that ended unfilled at their queue's `max_seconds`.
    #[serde(default)]
    pub backfills_ended: u64,
}

/// Players placed into a running session's open slots.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Backfilled {
    pub session_id: String,
    #[serde(deserialize_with = "list_or_empty_object")]
    pub players: Vec<String>,
    /// When the slots they took opened (ms since the epoch).
    pub since_ms: i64,
}

/// One queue's depth and oldest ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// Tickets waiting (a party is one).
    pub tickets: u64,
    /// When the ticket at the head joined.
    pub oldest_joined_ms: Option<i64>,
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
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSession {
    pub session_id: String,
    pub record: SessionRecord,
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
    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    /// A command handle on the shared connection.
    pub fn conn(&self) -> LinkConnection {
        self.link.conn()
    }

    /// Queues `player` alone in the default queue (idempotent), unless already in a live
    /// session.
    pub async fn join(&self, player: &str, now_ms: i64) -> Result<JoinOutcome> {
        self.queue(DEFAULT_QUEUE).join(&[player.to_owned()], None, now_ms).await
    }

    /// Forms up to `max` sessions from the default queue as of `now_ms`, owned by `instance`.
    pub async fn form(&self, rules: &FormRules, now_ms: i64, instance: &str, max: usize) -> Result<Vec<FormedSession>> {
        self.queue(DEFAULT_QUEUE).form(rules, now_ms, instance, max, None).await
    }

    /// The queue `player` waits in, if any (the default queue when unsure).
    async fn queue_of(&self, player: &str) -> Result<String> {
        let entry: Option<String> = self.conn().hget(self.keys.waiting(), player).await?;
        Ok(entry
            .and_then(|e| e.split('|').next().map(str::to_owned))
            .unwrap_or_else(default_queue))
    }

    /// Takes `player`'s ticket (its whole party) out of its queue, unless already in a session.
    pub async fn cancel(&self, player: &str) -> Result<CancelOutcome> {
        #[derive(Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        enum Reply {
            Cancelled,
            InSession,
            NotQueued,
            Moved { queue: String },
        }
        let k = &self.keys;
        let mut queue = self.queue_of(player).await?;
        // A player moves between queues only by leaving and joining again: a few tries do.
        for _ in 0..4 {
            let q = k.of_queue(&queue);
            let Json(reply) = CANCEL
                .key(k.waiting())
                .key(&q.queue)
                .key(&q.joined)
                .key(&q.tickets)
                .key(k.player_session())
                .key(k.sessions())
                .arg(player)
                .arg(&queue)
                .invoke_async(&mut self.conn())
                .await?;
            match reply {
                Reply::Cancelled => return Ok(CancelOutcome::Cancelled),
                Reply::InSession => return Ok(CancelOutcome::InSession),
                Reply::NotQueued => return Ok(CancelOutcome::NotQueued),
                Reply::Moved { queue: now } => queue = now,
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the player kept changing queues during a cancel",
        )))
    }

    /// Where `player` stands, read atomically.
    pub async fn player(&self, player: &str) -> Result<PlayerView> {
        let k = &self.keys;
        let Json(view) = STATUS
            .key(k.waiting())
            .key(k.queue())
            .key(k.joined())
            .key(k.player_session())
            .key(k.sessions())
            .arg(player)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(view)
    }

    /// Players waiting in the default queue.
    pub async fn queue_depth(&self) -> Result<u64> {
        self.queue(DEFAULT_QUEUE).depth().await
    }

    /// The default queue in order, head first (for tests and operators).
    pub async fn queued_players(&self) -> Result<Vec<String>> {
        self.queue(DEFAULT_QUEUE).tickets().await
    }

    /// History events not yet written.
    pub async fn outbox_len(&self) -> Result<u64> {
        self.conn().xlen(self.keys.outbox()).await
    }

    /// Checks the connection.
    pub async fn ping(&self) -> Result<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(|_| ())
    }
}

pub(crate) fn decode_record(sid: &str, raw: &[u8]) -> Option<SessionRecord> {
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
