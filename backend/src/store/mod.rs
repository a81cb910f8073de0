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

use crate::keys::{Keys, QueueKeys};
use crate::queues::DEFAULT_QUEUE;

/// How long an ended session's record (and each player's pointer to it) is kept for status.
pub(crate) const ENDED_RETENTION: Duration = Duration::from_secs(3600);

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
static PLACE: LazyLock<Script> = script!("place.lua");
static LEASE: LazyLock<Script> = script!("lease.lua");

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
}

fn default_queue() -> String {
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
    /// Tickets the plan named that were no longer queued at the version it read.
    #[serde(deserialize_with = "list_or_empty_object")]
    pub stale: Vec<String>,
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

    /// Queues `player` in the default queue (idempotent), unless already in a live session.
    pub async fn join(&self, player: &str, now_ms: i64) -> Result<JoinOutcome> {
        self.join_ticket(DEFAULT_QUEUE, &[player.to_owned()], None, now_ms)
            .await
    }

    /// Queues a ticket of `players` (the leader first) in `queue`, idempotently; `doc` is a
    /// rule queue's ticket document (a JSON object), `None` in a plain queue.
    pub async fn join_ticket(
        &self,
        queue: &str,
        players: &[String],
        doc: Option<&str>,
        now_ms: i64,
    ) -> Result<JoinOutcome> {
        let k = &self.keys;
        let q = k.of_queue(queue);
        let mut script = JOIN.prepare_invoke();
        script
            .key(&q.queue)
            .key(&q.joined)
            .key(k.seq())
            .key(k.player_session())
            .key(k.sessions())
            .key(k.waiting())
            .key(&q.tickets)
            .arg(queue)
            .arg(now_ms)
            .arg(doc.unwrap_or(""));
        for player in players {
            script.arg(player);
        }
        let Json(outcome) = script.invoke_async(&mut self.conn()).await?;
        Ok(outcome)
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

    /// Forms up to `max` sessions from the default queue as of `now_ms`, owned by `instance`.
    pub async fn form(&self, rules: &FormRules, now_ms: i64, instance: &str, max: usize) -> Result<Vec<FormedSession>> {
        self.form_plain(DEFAULT_QUEUE, rules, now_ms, instance, max).await
    }

    /// Forms up to `max` sessions from the plain queue `queue`, in join order.
    pub async fn form_plain(
        &self,
        queue: &str,
        rules: &FormRules,
        now_ms: i64,
        instance: &str,
        max: usize,
    ) -> Result<Vec<FormedSession>> {
        let k = &self.keys;
        let q = k.of_queue(queue);
        let mut script = FORM.prepare_invoke();
        script
            .key(&q.queue)
            .key(&q.joined)
            .key(k.live())
            .key(k.outbox())
            .key(k.player_session())
            .key(k.sessions())
            .key(k.waiting())
            .arg(rules.size)
            .arg(rules.min_partial)
            .arg(rules.flush_wait_ms)
            .arg(now_ms)
            .arg(instance)
            .arg(k.events())
            .arg(queue);
        for _ in 0..max {
            script.arg(uuid::Uuid::new_v4().to_string());
        }
        let Json(mut formed): Json<Vec<FormedSession>> = script.invoke_async(&mut self.conn()).await?;
        for session in &mut formed {
            queue.clone_into(&mut session.queue);
        }
        Ok(formed)
    }

    /// Takes or keeps the lease on forming rule queue `queue` for `ttl`: whether this
    /// `instance` holds it now.
    pub async fn lease(&self, queue: &str, instance: &str, ttl: Duration) -> Result<bool> {
        let held: i64 = LEASE
            .key(self.keys.of_queue(queue).lease)
            .arg(instance)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(held == 1)
    }

    /// Takes or keeps the lease on keeping the warm Pod pool for `ttl`: whether this
    /// `instance` holds it now.
    pub async fn warm_pool_lease(&self, instance: &str, ttl: Duration) -> Result<bool> {
        let held: i64 = LEASE
            .key(self.keys.warm_lease())
            .arg(instance)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(held == 1)
    }

    /// Every ticket waiting in rule queue `queue`, head first (read in pages, not atomically:
    /// a plan made from it commits only what is still current).
    pub async fn waiting_tickets(&self, queue: &str) -> Result<Vec<StoredTicket>> {
        const PAGE: isize = 2000;
        let q = self.keys.of_queue(queue);
        let mut conn = self.conn();
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let page: Vec<(String, f64)> = conn.zrange_withscores(&q.queue, start, start + PAGE - 1).await?;
            if page.is_empty() {
                break;
            }
            let ids: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
            let (joined, docs): (Vec<Option<i64>>, Vec<Option<String>>) = redis::pipe()
                .cmd("HMGET")
                .arg(&q.joined)
                .arg(&ids)
                .cmd("HMGET")
                .arg(&q.tickets)
                .arg(&ids)
                .query_async(&mut conn)
                .await?;
            let full = page.len() as isize == PAGE;
            for (((id, order), joined), doc) in page.into_iter().zip(joined).zip(docs) {
                // Gone between the reads: placed or cancelled meanwhile.
                if let (Some(joined_ms), Some(doc)) = (joined, doc) {
                    out.push(StoredTicket {
                        id,
                        order,
                        joined_ms,
                        doc,
                    });
                }
            }
            if !full {
                break;
            }
            start += PAGE;
        }
        Ok(out)
    }

    /// Commits a plan for rule queue `queue` (see the place script).
    pub async fn place(&self, queue: &str, plan: &str, now_ms: i64, instance: &str) -> Result<Placed> {
        let k = &self.keys;
        let q = k.of_queue(queue);
        let Json(placed) = PLACE
            .key(&q.queue)
            .key(&q.joined)
            .key(&q.tickets)
            .key(k.waiting())
            .key(k.live())
            .key(k.outbox())
            .key(k.player_session())
            .key(k.sessions())
            .key(k.timed_out())
            .arg(queue)
            .arg(now_ms)
            .arg(instance)
            .arg(k.events())
            .arg(plan)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(placed)
    }

    /// Each queue's depth and oldest ticket, in the order given.
    pub async fn queue_depths(&self, queues: &[&str]) -> Result<Vec<QueueDepth>> {
        let mut pipe = redis::pipe();
        for queue in queues {
            let q = self.keys.of_queue(queue);
            pipe.zcard(&q.queue).zrange(&q.queue, 0, 0);
        }
        let mut conn = self.conn();
        let raw: Vec<(u64, Vec<String>)> = pipe.query_async(&mut conn).await?;
        let mut pipe = redis::pipe();
        for (queue, (_, head)) in queues.iter().zip(&raw) {
            pipe.hget(
                self.keys.of_queue(queue).joined,
                head.first().map_or("", String::as_str),
            );
        }
        let joined: Vec<Option<i64>> = pipe.query_async(&mut conn).await?;
        Ok(raw
            .into_iter()
            .zip(joined)
            .map(|((tickets, _), oldest_joined_ms)| QueueDepth {
                tickets,
                oldest_joined_ms,
            })
            .collect())
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
    /// requeues its tickets at the head of its queue. `report` (JSON) records attendance, also
    /// after the end.
    pub async fn end_session(
        &self,
        sid: &str,
        reason: EndReason,
        now_ms: i64,
        report: Option<&str>,
    ) -> Result<EndOutcome> {
        let k = &self.keys;
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
                .arg(sid)
                .arg(reason.as_str())
                .arg(now_ms)
                .arg(k.events())
                .arg(report.unwrap_or(""))
                .arg(u64::try_from(ENDED_RETENTION.as_millis()).unwrap_or(u64::MAX))
                .arg(&queue)
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

    /// Whether each of `sids` is a session not yet ended (known to Redis and live).
    pub async fn sessions_live(&self, sids: &[String]) -> Result<Vec<bool>> {
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(self.keys.live())
            .arg(sids)
            .query_async(&mut self.conn())
            .await?;
        Ok(scores.into_iter().map(|score| score.is_some()).collect())
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

    /// Players waiting in the default queue.
    pub async fn queue_depth(&self) -> Result<u64> {
        self.conn().zcard(self.keys.queue()).await
    }

    /// The default queue in order, head first (for tests and operators).
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
