//! Match history in PostgreSQL, written from the Redis outbox.
//!
//! The Redis scripts append every lifecycle change to the outbox stream in the same atomic
//! step that makes it, so matching never waits for PostgreSQL and nothing is lost while it is
//! down: a consumer group (one consumer per replica) reads the stream, applies batches in one
//! transaction, and only then acknowledges and deletes the entries. Entries a dead replica had
//! read are claimed by the others after a while. The upserts commute, so events applied out of
//! order or twice converge on the same rows.

use std::collections::{BTreeMap, HashMap, btree_map};
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Postgres, Row, Transaction};
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::lifecycle::{Change, SessionEvent};
use crate::metrics::Metrics;
use crate::store::Store;
use protocol::sessions::Placement;
use sqlx::types::Json;

const GROUP: &str = "history";
const BATCH: usize = 500;
/// Entries another consumer has held this long without acknowledging are taken over: a
/// replica that crashed between reading a batch and writing it leaves its entries pending
/// under its own name, and a replacement comes back under another. A live writer acknowledges
/// within a batch's write, and one taken over while PostgreSQL is slow is only written twice
/// (the upserts commute), so this need not wait long: the history of a crashed replica's last
/// moments lags by at most this plus [`CLAIM_EVERY`].
const CLAIM_IDLE_MS: usize = 10_000;
/// How often the writer looks for entries abandoned by other replicas.
const CLAIM_EVERY: Duration = Duration::from_secs(2);

/// How long the history waits on PostgreSQL before it gives up and tries again.
///
/// A replica that stops answering in the middle of a transaction (its node lost power, its
/// network is cut: no FIN reaches PostgreSQL) leaves that transaction open, with its row locks,
/// until TCP keepalive notices, hours later by default. Without a bound every other replica's
/// writer that touches one of those sessions would wait behind it, silently, for as long.
/// With one, PostgreSQL ends the stuck transaction after `idle_in_transaction` (releasing its
/// locks), and a statement waiting on a lock fails after `lock` (SQLSTATE 55P03): the batch
/// stays in the outbox, the failure is logged and counted, and the write is tried again.
///
/// The same can happen the other way round: PostgreSQL's host goes silent (power, a network
/// cut, a failover that moves its address), and a query sent on a connection to it waits for
/// an answer that never comes, for ever if nothing of it is left unacknowledged. So every
/// operation (a batch, a read, a ping) gives up after `answer`, migrations after `migration`,
/// and a connection given up on is closed, never returned to the pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub lock: Duration,
    pub idle_in_transaction: Duration,
    pub answer: Duration,
    pub migration: Duration,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            lock: Duration::from_secs(5),
            idle_in_transaction: Duration::from_secs(15),
            answer: Duration::from_secs(30),
            migration: Duration::from_secs(600),
        }
    }
}

impl Bounds {
    /// The `BEGIN` of a bounded transaction: the settings are `SET LOCAL`, so they hold for
    /// that transaction only (and work through a transaction-pooling PgBouncer too).
    fn begin(&self) -> String {
        format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; SET LOCAL idle_in_transaction_session_timeout = '{}ms'",
            self.lock.as_millis(),
            self.idle_in_transaction.as_millis()
        )
    }
}

/// A pooled connection in use: closed, not returned to the pool, unless the operation on it
/// finished. sqlx returns a connection dropped mid-operation to the pool by pinging it first,
/// and that ping has no bound of its own: on a connection to a silent server it would hold
/// the connection, and its place in the pool, for ever.
struct InUse {
    conn: PoolConnection<Postgres>,
    finished: bool,
}

impl Drop for InUse {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

/// The error of an operation PostgreSQL did not answer in time.
fn unanswered(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("PostgreSQL did not answer within {limit:?}"),
    ))
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The history writer and reader.
#[derive(Clone)]
pub(crate) struct History {
    pool: PgPool,
    store: Store,
    consumer: String,
    metrics: Arc<Metrics>,
    bounds: Bounds,
}

/// One outbox entry, decoded.
#[derive(Debug, Clone)]
struct Entry {
    id: String,
    session_id: Uuid,
    event: SessionEvent,
}

/// A row of a player's history.
#[derive(Debug, Clone)]
pub(crate) struct PlayerMatch {
    pub row: MatchRow,
    pub joined_at: Option<OffsetDateTime>,
    pub left_at: Option<OffsetDateTime>,
}

/// A session's row.
#[derive(Debug, Clone)]
pub(crate) struct MatchRow {
    pub session_id: Uuid,
    pub status: String,
    pub players: Vec<String>,
    pub server_name: Option<String>,
    pub backend_instance: Option<String>,
    pub requested_seconds: Option<i32>,
    pub created_at: OffsetDateTime,
    pub ready_at: Option<OffsetDateTime>,
    pub started_at: Option<OffsetDateTime>,
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<String>,
    /// Its queue, teams, region and quality (empty for rows from before queues).
    pub placement: Placement,
}

/// A time in ms since the Unix epoch, as the store keeps them.
pub(crate) fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Where the writer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Opening its Redis connection (and the consumer group).
    Connect,
    /// Bringing PostgreSQL's schema up to date.
    Migrate,
    /// Re-reading entries delivered to this consumer but not acknowledged (after a start, an
    /// error or a failed batch).
    OwnPending,
    /// Reading new entries, taking over abandoned ones every [`CLAIM_EVERY`].
    Follow,
}

/// The writer's state between steps.
struct Writer {
    history: History,
    phase: Phase,
    conn: Option<MultiplexedConnection>,
    backoff: Duration,
    last_claim: Instant,
    /// Set once `stop` is cancelled: flush until the outbox is empty or this passes.
    flush_until: Option<Instant>,
}

impl History {
    /// A writer for `database_url`. Connects lazily: the backend starts and matches even when
    /// PostgreSQL is down.
    pub(crate) fn new(
        database_url: &str,
        store: Store,
        consumer: &str,
        metrics: Arc<Metrics>,
    ) -> Result<History, sqlx::Error> {
        History::bounded(database_url, store, consumer, metrics, Bounds::default())
    }

    /// [`History::new`] with other [`Bounds`].
    pub(crate) fn bounded(
        database_url: &str,
        store: Store,
        consumer: &str,
        metrics: Arc<Metrics>,
        bounds: Bounds,
    ) -> Result<History, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(database_url)?;
        Ok(History {
            pool,
            store,
            consumer: consumer.to_owned(),
            metrics,
            bounds,
        })
    }

    /// Runs `op` on a pooled connection for at most `limit` (the pool bounds the acquiring).
    /// `op` answers its result and whether its connection may go back to the pool; it is
    /// closed instead when `op` says no, when `op` timed out here, and when the caller gave up
    /// on this future.
    async fn within<T, E: From<sqlx::Error>>(
        &self,
        limit: Duration,
        op: impl AsyncFnOnce(&mut PoolConnection<Postgres>) -> (Result<T, E>, bool),
    ) -> Result<T, E> {
        let mut in_use = InUse {
            conn: self.pool.acquire().await?,
            finished: false,
        };
        let (result, keep) = tokio::time::timeout(limit, op(&mut in_use.conn))
            .await
            .map_err(|_| unanswered(limit))?;
        in_use.finished = keep;
        result
    }

    /// [`History::within`] for an operation that leaves its connection as it found it.
    async fn answered<T>(
        &self,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        self.within(self.bounds.answer, async |conn: &mut PoolConnection<Postgres>| {
            (op(&mut **conn).await, true)
        })
        .await
    }

    /// Applies the migrations, within the migration bound. Their locks (the migrator's own
    /// advisory lock included) are waited for at most the lock bound: a migration queued
    /// behind long transactions fails this attempt, and the writer tries again. The migrating
    /// session itself may sit idle at most the idle bound, in a transaction or not: the
    /// migrator's lock belongs to the session, so a replica that vanished while migrating (its
    /// connection left open, as when its node drops off the network) would otherwise hold every
    /// other replica's migrations off until TCP keepalive noticed, hours later by default.
    pub(crate) async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let bounds = self.bounds;
        self.within(bounds.migration, async |conn: &mut PoolConnection<Postgres>| {
            if let Err(e) = bound_migrating_session(conn, &bounds).await {
                return (Err(e.into()), true);
            }
            let migrated = MIGRATOR.run_direct(&mut **conn).await;
            // The connection goes back to the pool only as it came.
            let reset = sqlx::query("RESET ALL").execute(&mut **conn).await.is_ok();
            (migrated, reset)
        })
        .await
    }

    /// Whether PostgreSQL answers (callers bound the wait).
    pub(crate) async fn ping(&self) -> bool {
        self.answered(async |conn: &mut PgConnection| sqlx::query("SELECT 1").execute(conn).await)
            .await
            .is_ok()
    }

    /// Moves outbox events into PostgreSQL until `stop` is cancelled; then keeps going until
    /// the outbox is empty or `flush_for` has passed.
    pub(crate) async fn run_writer(self, stop: CancellationToken, flush_for: Duration) {
        let mut writer = Writer {
            history: self,
            phase: Phase::Connect,
            conn: None,
            backoff: Duration::from_millis(200),
            last_claim: Instant::now(),
            flush_until: None,
        };
        loop {
            if stop.is_cancelled() && writer.flush_until.is_none() {
                writer.flush_until = Some(Instant::now() + flush_for);
            }
            if writer.flush_until.is_some_and(|until| Instant::now() >= until) {
                return;
            }
            if let Step::Done = writer.step(&stop).await {
                return;
            }
        }
    }

    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        from: &str,
        block: Option<usize>,
    ) -> redis::RedisResult<Vec<StreamId>> {
        let mut options = StreamReadOptions::default().group(GROUP, &self.consumer).count(BATCH);
        if let Some(ms) = block {
            options = options.block(ms);
        }
        let reply: Option<StreamReadReply> = conn
            .xread_options(&[self.store.keys().outbox()], &[from], &options)
            .await?;
        Ok(reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect())
    }

    async fn claim(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<Vec<StreamId>> {
        let reply: redis::streams::StreamAutoClaimReply = conn
            .xautoclaim_options(
                self.store.keys().outbox(),
                GROUP,
                &self.consumer,
                CLAIM_IDLE_MS,
                "0-0",
                StreamAutoClaimOptions::default().count(BATCH),
            )
            .await?;
        if !reply.claimed.is_empty() {
            tracing::info!(
                entries = reply.claimed.len(),
                "history: took over entries of a replica that stopped"
            );
        }
        Ok(reply.claimed)
    }

    /// Applies a batch in one transaction. If PostgreSQL rejects the data itself, applies the
    /// entries one by one and parks any it keeps rejecting in the dead-letter stream, so one
    /// bad event cannot hold up the history for ever. Any other failure (a lost connection, a
    /// read-only server after a failover, a shutdown, a deadlock) is returned: the batch stays
    /// in the outbox and is tried again, however long that takes.
    async fn apply(&self, entries: &[Entry]) -> Result<(), sqlx::Error> {
        match self.apply_batch(entries).await {
            Err(e) if rejects_the_data(&e) => {
                tracing::warn!(error = %e, "history: batch rejected; applying event by event");
                for entry in entries {
                    match self.apply_batch(std::slice::from_ref(entry)).await {
                        Err(e) if rejects_the_data(&e) => self.park(entry, &e.to_string()).await,
                        other => other?,
                    }
                }
                Ok(())
            }
            other => other,
        }
    }

    async fn park(&self, entry: &Entry, error: &str) {
        tracing::error!(error, id = %entry.id, kind = entry.event.change.kind(), "history: parking an event PostgreSQL rejects");
        let event = serde_json::to_string(&entry.event).unwrap_or_default();
        let parked: redis::RedisResult<String> = self
            .store
            .conn()
            .xadd(
                self.store.keys().outbox_dead(),
                "*",
                &[("id", entry.id.as_str()), ("event", &event), ("error", error)],
            )
            .await;
        if let Err(e) = parked {
            tracing::error!(error = %e, "history: cannot park the event");
        }
    }

    async fn apply_batch(&self, entries: &[Entry]) -> Result<(), sqlx::Error> {
        self.answered(async |conn: &mut PgConnection| {
            let mut tx = conn.begin_with(self.bounds.begin()).await?;
            apply_events(&mut tx, entries).await?;
            tx.commit().await
        })
        .await
    }

    /// Ends the open rows of sessions Redis has forgotten (restarted without its data, or a
    /// failover lost the latest writes), every replica alike, until `stop`. A row is ended
    /// `lost` once its session has been unknown to Redis for `grace`: its end event, if it
    /// was ever written, is gone with the rest. Should that event turn up after all, it
    /// replaces `lost` (see [`apply_events`]).
    pub(crate) async fn run_reconciler(self, grace: Duration, stop: CancellationToken) {
        let every = (grace / 2).clamp(Duration::from_millis(250), Duration::from_secs(30));
        let mut missing: HashMap<Uuid, Instant> = HashMap::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.reconcile(&mut missing, grace).await {
                Ok(0) => {}
                Ok(ended) => tracing::warn!(
                    rows = ended,
                    "history: ended rows of sessions Redis no longer knows (lost)"
                ),
                Err(e) => tracing::debug!(error = %e, "history: reconcile pass skipped"),
            }
        }
    }

    /// One pass: notes open rows whose session Redis does not know, ends those unknown for
    /// `grace`; returns how many it ended.
    async fn reconcile(&self, missing: &mut HashMap<Uuid, Instant>, grace: Duration) -> anyhow::Result<u64> {
        // Every open row, a page at a time (however many sessions are live).
        let mut open: Vec<Uuid> = Vec::new();
        let mut after: Option<(OffsetDateTime, Uuid)> = None;
        loop {
            let page: Vec<(OffsetDateTime, Uuid)> = self
                .answered(async |conn: &mut PgConnection| {
                    sqlx::query_as(
                        "SELECT created_at, session_id FROM matches
                         WHERE status <> 'ended' AND ($1::timestamptz IS NULL OR (created_at, session_id) > ($1, $2))
                         ORDER BY created_at, session_id LIMIT 1000",
                    )
                    .bind(after.map(|(at, _)| at))
                    .bind(after.map(|(_, sid)| sid))
                    .fetch_all(conn)
                    .await
                })
                .await?;
            after = page.last().copied();
            let more = page.len() == 1000;
            open.extend(page.into_iter().map(|(_, sid)| sid));
            if !more {
                break;
            }
        }
        let ids: Vec<String> = open.iter().map(Uuid::to_string).collect();
        let known = self.store.sessions_known(&ids).await?;
        let now = Instant::now();
        let mut unknown_since = HashMap::new();
        for (sid, known) in open.into_iter().zip(known) {
            if !known {
                unknown_since.insert(sid, missing.get(&sid).copied().unwrap_or(now));
            }
        }
        *missing = unknown_since;
        let due: Vec<Uuid> = missing
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= grace)
            .map(|(sid, _)| *sid)
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let ended = self
            .answered(async |conn: &mut PgConnection| {
                let mut tx = conn.begin_with(self.bounds.begin()).await?;
                let ended = sqlx::query(
                    "UPDATE matches SET status = 'ended', ended_at = now(), end_reason = 'lost'
                     WHERE session_id = ANY($1) AND status <> 'ended'",
                )
                .bind(&due)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(ended)
            })
            .await?;
        for sid in &due {
            missing.remove(sid);
        }
        self.metrics.history_lost(ended);
        Ok(ended)
    }

    /// A player's matches, newest first.
    pub(crate) async fn player_matches(
        &self,
        player: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<PlayerMatch>, sqlx::Error> {
        let rows = self
            .answered(async |conn: &mut PgConnection| {
                sqlx::query(
                    "SELECT m.session_id, m.status, m.players, m.server_name, m.backend_instance, m.requested_seconds,
                            m.created_at, m.ready_at, m.started_at, m.ended_at, m.end_reason, m.queue, m.teams, m.region,
                            m.skill_spread, m.team_skill_gap, m.max_latency_ms, m.max_wait_ms, mp.joined_at, mp.left_at
                     FROM match_players mp JOIN matches m USING (session_id)
                     WHERE mp.player_id = $1
                     ORDER BY m.created_at DESC, m.session_id DESC
                     LIMIT $2 OFFSET $3",
                )
                .bind(player)
                .bind(limit)
                .bind(offset)
                .fetch_all(conn)
                .await
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PlayerMatch {
                    row: match_row(r)?,
                    joined_at: r.try_get("joined_at")?,
                    left_at: r.try_get("left_at")?,
                })
            })
            .collect()
    }

    /// One session's row.
    pub(crate) async fn session_row(&self, session_id: Uuid) -> Result<Option<MatchRow>, sqlx::Error> {
        let row = self
            .answered(async |conn: &mut PgConnection| {
                sqlx::query(
                    "SELECT session_id, status, players, server_name, backend_instance, requested_seconds, created_at,
                            ready_at, started_at, ended_at, end_reason, queue, teams, region, skill_spread, team_skill_gap,
                            max_latency_ms, max_wait_ms
                     FROM matches WHERE session_id = $1",
                )
                .bind(session_id)
                .fetch_optional(conn)
                .await
            })
            .await?;
        row.as_ref().map(match_row).transpose()
    }
}

/// Bounds the migrating session (see [`History::migrate`]): its lock waits, and how long it may
/// sit idle, in a transaction or not (`idle_session_timeout` is PostgreSQL 14's; older
/// servers skip it). Undone with `RESET ALL`.
async fn bound_migrating_session(conn: &mut PgConnection, bounds: &Bounds) -> Result<(), sqlx::Error> {
    let lock = format!("{}ms", bounds.lock.as_millis());
    let idle = format!("{}ms", bounds.idle_in_transaction.as_millis());
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, false),
                set_config('idle_in_transaction_session_timeout', $2, false),
                CASE WHEN current_setting('server_version_num')::int >= 140000
                     THEN set_config('idle_session_timeout', $2, false) END",
    )
    .bind(lock)
    .bind(idle)
    .execute(conn)
    .await
    .map(drop)
}

fn match_row(r: &sqlx::postgres::PgRow) -> Result<MatchRow, sqlx::Error> {
    Ok(MatchRow {
        session_id: r.try_get("session_id")?,
        status: r.try_get("status")?,
        players: r.try_get("players")?,
        server_name: r.try_get("server_name")?,
        backend_instance: r.try_get("backend_instance")?,
        requested_seconds: r.try_get("requested_seconds")?,
        created_at: r.try_get("created_at")?,
        ready_at: r.try_get("ready_at")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r.try_get("end_reason")?,
        placement: Placement {
            queue: r.try_get("queue")?,
            teams: r
                .try_get::<Option<Json<Vec<Vec<String>>>>, _>("teams")?
                .map(|Json(teams)| teams)
                .unwrap_or_default(),
            region: r.try_get("region")?,
            skill_spread: r.try_get("skill_spread")?,
            team_skill_gap: r.try_get("team_skill_gap")?,
            max_latency_ms: r.try_get("max_latency_ms")?,
            max_wait_ms: r.try_get("max_wait_ms")?,
        },
    })
}

/// What one step of the writer leads to.
enum Step {
    Continue,
    Done,
}

impl Writer {
    /// One step of the writer in its current phase.
    async fn step(&mut self, stop: &CancellationToken) -> Step {
        let history = &self.history;
        match self.phase {
            Phase::Connect => match connect(history).await {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.phase = Phase::Migrate;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "history: cannot reach Redis; retrying");
                    self.pause(stop).await;
                }
            },
            Phase::Migrate => match history.migrate().await {
                Ok(()) => {
                    tracing::info!("history: migrations applied");
                    self.phase = Phase::OwnPending;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "history: PostgreSQL not ready; matchmaking goes on, history waits in the outbox");
                    self.pause(stop).await;
                }
            },
            Phase::OwnPending | Phase::Follow => {
                let Some(conn) = self.conn.as_mut() else {
                    self.phase = Phase::Connect;
                    return Step::Continue;
                };
                let read = if self.phase == Phase::OwnPending {
                    history.read(conn, "0", None).await
                } else if self.last_claim.elapsed() > CLAIM_EVERY {
                    self.last_claim = Instant::now();
                    history.claim(conn).await
                } else {
                    let block = if stop.is_cancelled() { None } else { Some(1000) };
                    history.read(conn, ">", block).await
                };
                let entries = match read {
                    Ok(entries) => entries,
                    Err(e) => {
                        tracing::warn!(error = %e, "history: reading the outbox failed; reconnecting");
                        // Entries may have been delivered to us before the error: the phases
                        // after Connect read them again.
                        self.conn = None;
                        self.phase = Phase::Connect;
                        self.pause(stop).await;
                        return Step::Continue;
                    }
                };
                if entries.is_empty() {
                    if self.phase == Phase::OwnPending {
                        self.phase = Phase::Follow;
                    } else if stop.is_cancelled() {
                        return Step::Done;
                    }
                    return Step::Continue;
                }
                if !self.write(&entries).await {
                    self.phase = Phase::OwnPending;
                    self.pause(stop).await;
                }
            }
        }
        Step::Continue
    }

    /// Applies `entries`, then acknowledges and deletes them; false when PostgreSQL failed
    /// (the entries stay pending for this consumer).
    async fn write(&mut self, entries: &[StreamId]) -> bool {
        let history = &self.history;
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let decoded: Vec<Entry> = entries.iter().filter_map(decode).collect();
        match history.apply(&decoded).await {
            Ok(()) => {
                if let Some(conn) = self.conn.as_mut() {
                    let outbox = history.store.keys().outbox();
                    let _: redis::RedisResult<()> = redis::pipe()
                        .xack(&outbox, GROUP, &ids)
                        .xdel(&outbox, &ids)
                        .query_async(conn)
                        .await;
                }
                history.metrics.history_written(decoded.len());
                self.backoff = Duration::from_millis(200);
                true
            }
            Err(e) => {
                history.metrics.history_failed();
                tracing::warn!(error = %e, events = decoded.len(), "history: write failed; will retry");
                false
            }
        }
    }

    /// Sleeps the backoff (doubling, at most 5 s); cut short by `stop` unless already
    /// flushing, when the flush deadline bounds the wait instead.
    async fn pause(&mut self, stop: &CancellationToken) {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        if self.flush_until.is_some() {
            tokio::time::sleep(wait).await;
        } else {
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A connection of the writer's own (its blocking reads must not hold up others), and the
/// consumer group, created if missing.
async fn connect(history: &History) -> redis::RedisResult<MultiplexedConnection> {
    // Blocking reads wait up to 1 s: the response timeout must be longer.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let mut conn = history
        .store
        .link()
        .client()
        .await?
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let created: redis::RedisResult<()> = conn
        .xgroup_create_mkstream(history.store.keys().outbox(), GROUP, "0")
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(conn),
    }
}

/// Whether PostgreSQL refused the data itself, so the same event can never be written:
/// SQLSTATE class 22 (data exception: a value out of range, a NUL in a text), 23 (integrity
/// constraint violation) or 54 (program limit exceeded: a value too large to index). Every
/// other error, a database error included (`25006` from a read-only server after a failover,
/// `57P01` from a shutdown, `40P01` from a deadlock, `55000` from a database closed to
/// connections), says nothing about the event.
fn rejects_the_data(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|code| ["22", "23", "54"].iter().any(|class| code.starts_with(class))),
        _ => false,
    }
}

/// Decodes an outbox entry; one that does not decode is logged and dropped.
fn decode(entry: &StreamId) -> Option<Entry> {
    let decoded = entry
        .get::<Vec<u8>>("event")
        .and_then(|raw| SessionEvent::from_json(&raw).ok())
        .and_then(|event| {
            Some(Entry {
                id: entry.id.clone(),
                session_id: Uuid::parse_str(&event.session_id).ok()?,
                event,
            })
        });
    if decoded.is_none() {
        tracing::error!(id = %entry.id, "history: dropping an outbox entry that does not decode");
    }
    decoded
}

/// What a batch's events do to one session's `matches` row: the events merged by the rules the
/// upsert applies to the stored row, so that merging first and upserting once leaves the row
/// as upserting each event in turn would. One statement then writes a whole batch (a session
/// appears in it at most once, as `ON CONFLICT DO UPDATE` requires).
#[derive(Debug)]
struct RowChange {
    status: &'static str,
    players: Vec<String>,
    instance: Option<String>,
    server: Option<String>,
    created_at: OffsetDateTime,
    ready_at: Option<OffsetDateTime>,
    started_at: Option<OffsetDateTime>,
    ended_at: Option<OffsetDateTime>,
    end_reason: Option<String>,
    requested_seconds: Option<i32>,
    placement: Placement,
}

/// How far along a status is: a row's status only moves forward (`mp_status_rank`).
fn status_rank(status: &str) -> u8 {
    match status {
        "ended" => 3,
        "matched" => 2,
        _ => 1,
    }
}

impl RowChange {
    /// The row `event` writes on its own; `None` for a change that is not a session's.
    fn of(event: &SessionEvent) -> Option<RowChange> {
        let at = from_ms(event.at_ms);
        let mut row = RowChange {
            status: "allocating",
            players: event.players.clone(),
            instance: None,
            server: None,
            created_at: at,
            ready_at: None,
            started_at: None,
            ended_at: None,
            end_reason: None,
            requested_seconds: None,
            placement: Placement::default(),
        };
        // A report after the end only adds attendance: its status ranks lowest and decides nothing.
        match &event.change {
            Change::Formed { instance, placement } => {
                row.instance = Some(instance.clone());
                row.placement = placement.clone();
            }
            Change::Ready { server, .. } => {
                row.status = "matched";
                row.server = Some(server.clone());
                row.ready_at = Some(at);
            }
            Change::Ended { reason, .. } => {
                row.status = "ended";
                row.ended_at = Some(at);
                row.end_reason = Some(reason.as_str().to_owned());
            }
            Change::Reported { .. } => {}
            // Published for long polls only; never in the outbox.
            Change::TimedOut { .. } => return None,
        }
        if let Some(report) = event.change.report() {
            row.started_at = report.started_at;
            row.requested_seconds = report.requested_seconds.and_then(|s| i32::try_from(s).ok());
        }
        Some(row)
    }

    /// `later` applied to this row as the upsert applies an event to a stored row: the status
    /// only moves forward, a first value stays (a server's name and an end that replaces `lost`
    /// excepted), the earliest time is the creation.
    fn then(&mut self, later: RowChange) {
        if status_rank(later.status) > status_rank(self.status) {
            self.status = later.status;
        }
        self.instance = self.instance.take().or(later.instance);
        self.server = later.server.or(self.server.take());
        self.created_at = self.created_at.min(later.created_at);
        self.ready_at = self.ready_at.or(later.ready_at);
        self.started_at = self.started_at.or(later.started_at);
        if self.end_reason.as_deref() == Some("lost") && later.end_reason.is_some() {
            self.ended_at = later.ended_at;
            self.end_reason = later.end_reason;
        } else {
            self.ended_at = self.ended_at.or(later.ended_at);
            self.end_reason = self.end_reason.take().or(later.end_reason);
        }
        self.requested_seconds = self.requested_seconds.or(later.requested_seconds);
        let (p, l) = (&mut self.placement, later.placement);
        p.queue = p.queue.take().or(l.queue);
        if p.teams.is_empty() {
            p.teams = l.teams;
        }
        p.region = p.region.take().or(l.region);
        p.skill_spread = p.skill_spread.or(l.skill_spread);
        p.team_skill_gap = p.team_skill_gap.or(l.team_skill_gap);
        p.max_latency_ms = p.max_latency_ms.or(l.max_latency_ms);
        p.max_wait_ms = p.max_wait_ms.or(l.max_wait_ms);
    }
}

/// A player's times in one session, as a batch leaves them (`joined_at`, `left_at`).
type Attendance = (Option<OffsetDateTime>, Option<OffsetDateTime>);

/// What `entries` (in outbox order) do to the rows: each session's row and each of its
/// players' rows once, in key order (so that concurrent writers lock rows in one order).
fn merge(entries: &[Entry]) -> (BTreeMap<Uuid, RowChange>, BTreeMap<(Uuid, String), Attendance>) {
    let mut rows: BTreeMap<Uuid, RowChange> = BTreeMap::new();
    let mut players: BTreeMap<(Uuid, String), Attendance> = BTreeMap::new();
    for entry in entries {
        let e = &entry.event;
        let Some(row) = RowChange::of(e) else { continue };
        match rows.entry(entry.session_id) {
            btree_map::Entry::Occupied(mut stored) => stored.get_mut().then(row),
            btree_map::Entry::Vacant(new) => {
                new.insert(row);
            }
        }
        let times: Vec<(&String, Attendance)> = match e.change.report() {
            Some(r) => r
                .players
                .iter()
                .map(|p| (&p.player_id, (p.joined_at, p.left_at)))
                .collect(),
            None => e.players.iter().map(|p| (p, (None, None))).collect(),
        };
        for (player, (joined, left)) in times {
            // Joined: the first time stays; left: the latest report's.
            players
                .entry((entry.session_id, player.clone()))
                .and_modify(|(j, l)| {
                    *j = j.or(joined);
                    *l = left.or(*l);
                })
                .or_insert((joined, left));
        }
    }
    (rows, players)
}

/// Writes what `entries` change, in two statements (the sessions' rows, then their players').
/// The upserts commute with what is stored, so a batch applied twice, or out of order with
/// another, converges on the same rows.
async fn apply_events(tx: &mut Transaction<'_, Postgres>, entries: &[Entry]) -> Result<(), sqlx::Error> {
    let (rows, players) = merge(entries);
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let mut ids = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut rosters = Vec::with_capacity(n);
    let mut instance = Vec::with_capacity(n);
    let mut server = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut ready = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);
    let mut ended = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut requested = Vec::with_capacity(n);
    let mut queue = Vec::with_capacity(n);
    let mut teams = Vec::with_capacity(n);
    let mut region = Vec::with_capacity(n);
    let mut spread = Vec::with_capacity(n);
    let mut gap = Vec::with_capacity(n);
    let mut latency = Vec::with_capacity(n);
    let mut wait = Vec::with_capacity(n);
    for (id, row) in rows {
        ids.push(id);
        status.push(row.status);
        rosters.push(Json(row.players));
        instance.push(row.instance);
        server.push(row.server);
        created.push(row.created_at);
        ready.push(row.ready_at);
        started.push(row.started_at);
        ended.push(row.ended_at);
        reason.push(row.end_reason);
        requested.push(row.requested_seconds);
        let p = row.placement;
        queue.push(p.queue);
        teams.push((!p.teams.is_empty()).then_some(Json(p.teams)));
        region.push(p.region);
        spread.push(p.skill_spread);
        gap.push(p.team_skill_gap);
        latency.push(p.max_latency_ms);
        wait.push(p.max_wait_ms);
    }
    sqlx::query(
        "INSERT INTO matches (session_id, status, players, backend_instance, server_name, created_at, ready_at,
                              started_at, ended_at, end_reason, requested_seconds, queue, teams, region,
                              skill_spread, team_skill_gap, max_latency_ms, max_wait_ms)
         SELECT id, st, ARRAY(SELECT jsonb_array_elements_text(roster)), inst, srv, cr, rd, sa, ea, er, rq, q, tm, rg,
                ss, tg, ml, mw
         FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::int4[],
                     $12::text[], $13::jsonb[], $14::text[], $15::float8[], $16::float8[], $17::float8[],
                     $18::int8[])
              AS t(id, st, roster, inst, srv, cr, rd, sa, ea, er, rq, q, tm, rg, ss, tg, ml, mw)
         ORDER BY id
         ON CONFLICT (session_id) DO UPDATE SET
           status = CASE WHEN mp_status_rank(EXCLUDED.status) > mp_status_rank(matches.status)
                         THEN EXCLUDED.status ELSE matches.status END,
           backend_instance = COALESCE(matches.backend_instance, EXCLUDED.backend_instance),
           server_name = COALESCE(EXCLUDED.server_name, matches.server_name),
           created_at = LEAST(matches.created_at, EXCLUDED.created_at),
           ready_at = COALESCE(matches.ready_at, EXCLUDED.ready_at),
           started_at = COALESCE(matches.started_at, EXCLUDED.started_at),
           ended_at = CASE WHEN matches.end_reason = 'lost' AND EXCLUDED.end_reason IS NOT NULL
                           THEN EXCLUDED.ended_at ELSE COALESCE(matches.ended_at, EXCLUDED.ended_at) END,
           end_reason = CASE WHEN matches.end_reason = 'lost' AND EXCLUDED.end_reason IS NOT NULL
                             THEN EXCLUDED.end_reason ELSE COALESCE(matches.end_reason, EXCLUDED.end_reason) END,
           requested_seconds = COALESCE(matches.requested_seconds, EXCLUDED.requested_seconds),
           queue = COALESCE(matches.queue, EXCLUDED.queue),
           teams = COALESCE(matches.teams, EXCLUDED.teams),
           region = COALESCE(matches.region, EXCLUDED.region),
           skill_spread = COALESCE(matches.skill_spread, EXCLUDED.skill_spread),
           team_skill_gap = COALESCE(matches.team_skill_gap, EXCLUDED.team_skill_gap),
           max_latency_ms = COALESCE(matches.max_latency_ms, EXCLUDED.max_latency_ms),
           max_wait_ms = COALESCE(matches.max_wait_ms, EXCLUDED.max_wait_ms)",
    )
    .bind(&ids)
    .bind(&status)
    .bind(&rosters)
    .bind(&instance)
    .bind(&server)
    .bind(&created)
    .bind(&ready)
    .bind(&started)
    .bind(&ended)
    .bind(&reason)
    .bind(&requested)
    .bind(&queue)
    .bind(&teams)
    .bind(&region)
    .bind(&spread)
    .bind(&gap)
    .bind(&latency)
    .bind(&wait)
    .execute(&mut **tx)
    .await?;

    let n = players.len();
    let (mut sessions, mut ids, mut joined, mut left) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((session, player), (j, l)) in players {
        sessions.push(session);
        ids.push(player);
        joined.push(j);
        left.push(l);
    }
    sqlx::query(
        "INSERT INTO match_players (session_id, player_id, joined_at, left_at)
         SELECT s, p, j, l FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[]) AS t(s, p, j, l)
         ORDER BY s, p
         ON CONFLICT (session_id, player_id) DO UPDATE SET
           joined_at = COALESCE(match_players.joined_at, EXCLUDED.joined_at),
           left_at = COALESCE(EXCLUDED.left_at, match_players.left_at)
         -- Only rows this batch changes: an update that changes nothing still writes a new row
         -- version, and most events (formed, ready, an end without a report) carry no times.
         WHERE (match_players.joined_at IS NULL AND EXCLUDED.joined_at IS NOT NULL)
            OR (EXCLUDED.left_at IS NOT NULL AND EXCLUDED.left_at IS DISTINCT FROM match_players.left_at)",
    )
    .bind(&sessions)
    .bind(&ids)
    .bind(&joined)
    .bind(&left)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use protocol::api::{EndReason, PlayerResult, ResultReport};

    use super::*;

    /// Each player row's `(xmin, joined_at, left_at)`: `xmin` changes with every new row
    /// version, so an update that changes nothing shows.
    async fn player_rows(pool: &PgPool) -> Vec<(String, String, Option<OffsetDateTime>, Option<OffsetDateTime>)> {
        sqlx::query_as("SELECT player_id, xmin::text, joined_at, left_at FROM match_players ORDER BY player_id")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    fn entry(sid: Uuid, at_ms: i64, change: Change, players: &[&str]) -> Entry {
        Entry {
            id: format!("{at_ms}-0"),
            session_id: sid,
            event: SessionEvent {
                session_id: sid.to_string(),
                players: players.iter().map(|p| (*p).to_owned()).collect(),
                at_ms,
                change,
            },
        }
    }

    /// `sid` failing at 2 s, its players requeued.
    fn failed_end(sid: Uuid) -> Entry {
        let failed = Change::Ended {
            reason: EndReason::Failed,
            requeued: true,
            report: None,
        };
        entry(sid, 2_000, failed, &["a", "b"])
    }

    async fn apply(pool: &PgPool, sid: Uuid, at_ms: i64, change: Change) {
        let entry = entry(sid, at_ms, change, &["a", "b"]);
        let mut tx = pool.begin().await.unwrap();
        apply_events(&mut tx, std::slice::from_ref(&entry)).await.unwrap();
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn events_without_attendance_leave_the_player_rows_untouched() {
        let pool = PgPool::connect(&testkit::fresh_database().await).await.unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        let sid = Uuid::new_v4();
        let formed = Change::Formed {
            instance: "r1".into(),
            placement: Placement::default(),
        };
        apply(&pool, sid, 1_000, formed).await;
        let rows = player_rows(&pool).await;
        assert_eq!(rows.len(), 2);
        assert!(
            rows.iter()
                .all(|(_, _, joined, left)| joined.is_none() && left.is_none())
        );

        // Ready, and an end without a report: the session row moves on, the player rows keep
        // their row versions.
        let ready = Change::Ready {
            server: "s".into(),
            addr: "127.0.0.1:1".into(),
        };
        apply(&pool, sid, 2_000, ready).await;
        let ended = |report| Change::Ended {
            reason: EndReason::Completed,
            requeued: false,
            report,
        };
        apply(&pool, sid, 3_000, ended(None)).await;
        assert_eq!(player_rows(&pool).await, rows, "no new row versions");
        let status: String = sqlx::query_scalar("SELECT status FROM matches WHERE session_id = $1")
            .bind(sid)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(status, "ended");

        // The report's attendance is written: `a` played, `b` never joined and stays as it was.
        let joined = from_ms(2_500);
        let left = from_ms(2_900);
        let report = ResultReport {
            session_id: sid.to_string(),
            end_reason: EndReason::Completed,
            requested_seconds: None,
            started_at: Some(joined),
            ended_at: left,
            players: vec![
                PlayerResult {
                    player_id: "a".into(),
                    joined_at: Some(joined),
                    left_at: Some(left),
                },
                PlayerResult {
                    player_id: "b".into(),
                    joined_at: None,
                    left_at: None,
                },
            ],
        };
        apply(&pool, sid, 3_000, Change::Reported { report: report.clone() }).await;
        let reported = player_rows(&pool).await;
        assert_ne!(reported[0].1, rows[0].1, "a's row was rewritten");
        assert_eq!((reported[0].2, reported[0].3), (Some(joined), Some(left)));
        assert_eq!(reported[1], rows[1], "b's row is untouched");

        // The same report again, or an end without one, changes nothing more.
        apply(&pool, sid, 3_000, Change::Reported { report }).await;
        apply(&pool, sid, 3_000, ended(None)).await;
        assert_eq!(player_rows(&pool).await, reported);
    }

    /// A session's row and its players' rows, without the session's id (to compare sessions).
    async fn rows_of(pool: &PgPool, sid: Uuid) -> (serde_json::Value, serde_json::Value) {
        sqlx::query_as(
            "SELECT (SELECT to_jsonb(m) - 'session_id' FROM matches m WHERE session_id = $1),
                    (SELECT COALESCE(jsonb_agg(to_jsonb(p) - 'session_id' ORDER BY player_id), '[]')
                     FROM match_players p WHERE session_id = $1)",
        )
        .bind(sid)
        .fetch_one(pool)
        .await
        .unwrap()
    }

    /// A session's events written in one batch, in any order, repeated, beside other
    /// sessions' events, leave its rows exactly as writing each event on its own does: the
    /// batch is merged by the rules the upsert applies, one row per session and player.
    #[tokio::test]
    async fn a_batch_leaves_the_rows_as_its_events_one_at_a_time_do() {
        let pool = PgPool::connect(&testkit::fresh_database().await).await.unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        let report = |left_ms: i64| ResultReport {
            session_id: String::new(),
            end_reason: EndReason::Completed,
            requested_seconds: Some(30),
            started_at: Some(from_ms(2_500)),
            ended_at: from_ms(left_ms),
            players: vec![
                PlayerResult {
                    player_id: "a".into(),
                    joined_at: Some(from_ms(2_600)),
                    left_at: Some(from_ms(left_ms)),
                },
                PlayerResult {
                    player_id: "b".into(),
                    joined_at: None,
                    left_at: None,
                },
            ],
        };
        let placement = Placement {
            queue: Some("ranked".into()),
            teams: vec![vec!["a".into()], vec!["b".into()]],
            region: Some("eu".into()),
            skill_spread: Some(12.5),
            team_skill_gap: Some(3.0),
            max_latency_ms: Some(40.0),
            max_wait_ms: Some(900),
        };
        let events = [
            (
                1_000,
                Change::Formed {
                    instance: "r1".into(),
                    placement,
                },
            ),
            (
                2_000,
                Change::Ready {
                    server: "s1".into(),
                    addr: "127.0.0.1:1".into(),
                },
            ),
            (
                2_100,
                Change::Ready {
                    server: "s2".into(),
                    addr: "127.0.0.1:2".into(),
                },
            ),
            (
                9_000,
                Change::Ended {
                    reason: EndReason::Completed,
                    requeued: false,
                    report: Some(report(8_000)),
                },
            ),
            (9_500, Change::Reported { report: report(8_500) }),
            (9_600, Change::TimedOut { queue: "ranked".into() }),
        ];
        // Orders of the events by index, repeats included.
        let orders: [&[usize]; 6] = [
            &[0, 1, 2, 3, 4, 5],
            &[5, 4, 3, 2, 1, 0],
            &[3, 0, 4, 2, 1],
            &[1, 1, 3, 0, 3, 2, 4],
            &[4, 3],
            &[2, 0, 1, 4, 3, 0, 2],
        ];
        // Half the sessions start as an end the reconciler wrote (`lost`), which an end event
        // replaces.
        let lost_first = |sid: Uuid| {
            let pool = pool.clone();
            async move {
                apply(
                    &pool,
                    sid,
                    500,
                    Change::Formed {
                        instance: "r0".into(),
                        placement: Placement::default(),
                    },
                )
                .await;
                sqlx::query(
                    "UPDATE matches SET status = 'ended', ended_at = now(), end_reason = 'lost' WHERE session_id = $1",
                )
                .bind(sid)
                .execute(&pool)
                .await
                .unwrap();
            }
        };
        let mut pairs = Vec::new();
        let mut per_session = Vec::new();
        for (n, order) in orders.iter().enumerate() {
            for lost in [false, true] {
                let (one_by_one, batched) = (Uuid::new_v4(), Uuid::new_v4());
                if lost {
                    lost_first(one_by_one).await;
                    lost_first(batched).await;
                }
                let mut own = std::collections::VecDeque::new();
                for &i in *order {
                    let (at, change) = &events[i];
                    apply(&pool, one_by_one, *at, change.clone()).await;
                    own.push_back(entry(batched, *at, change.clone(), &["a", "b"]));
                }
                per_session.push(own);
                pairs.push((n, lost, one_by_one, batched));
            }
        }
        // Every session's events in one batch, each in its order, interleaved with the others'.
        let mut batch = Vec::new();
        while per_session.iter().any(|own| !own.is_empty()) {
            batch.extend(per_session.iter_mut().filter_map(|own| own.pop_front()));
        }
        let mut tx = pool.begin().await.unwrap();
        apply_events(&mut tx, &batch).await.unwrap();
        tx.commit().await.unwrap();

        for &(n, lost, one_by_one, batched) in &pairs {
            let expected = rows_of(&pool, one_by_one).await;
            assert_eq!(rows_of(&pool, batched).await, expected, "order {n}, lost first {lost}");
        }
        // What the rows say for the order with every event once, after a `lost` end.
        let (_, _, _, batched) = pairs[1];
        let row: (
            String,
            String,
            String,
            String,
            String,
            i32,
            String,
            OffsetDateTime,
            OffsetDateTime,
        ) = sqlx::query_as(
            "SELECT status, server_name, backend_instance, end_reason, queue, requested_seconds,
                        array_to_string(players, ','), created_at, ended_at
                 FROM matches WHERE session_id = $1",
        )
        .bind(batched)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            row,
            (
                "ended".into(),
                "s2".into(),
                "r0".into(),
                "completed".into(),
                "ranked".into(),
                30,
                "a,b".into(),
                from_ms(500),
                from_ms(9_000)
            )
        );
        let players: Vec<(String, Option<OffsetDateTime>, Option<OffsetDateTime>)> =
            sqlx::query_as("SELECT player_id, joined_at, left_at FROM match_players WHERE session_id = $1 ORDER BY 1")
                .bind(batched)
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(
            players,
            vec![
                ("a".into(), Some(from_ms(2_600)), Some(from_ms(8_500))),
                ("b".into(), None, None)
            ]
        );
    }

    /// A replica that stops answering in the middle of a transaction (its connection left open,
    /// idle in the transaction, holding its session's row, as when its node drops off the
    /// network) does not stop another replica's writes: the other's statement gives up on the
    /// lock after the lock bound (SQLSTATE 55P03, nothing parked, the batch stays to be tried
    /// again), PostgreSQL ends the stuck transaction after the idle bound, and the retry lands.
    #[tokio::test]
    async fn a_replica_stuck_in_a_transaction_does_not_hold_up_the_others_writes() {
        let url = testkit::fresh_database().await;
        let redis_url = testkit::redis_url();
        let store = Store::connect(&redis_url, &testkit::unique_prefix()).await.unwrap();
        let bounds = Bounds {
            lock: Duration::from_millis(300),
            idle_in_transaction: Duration::from_millis(1_500),
            ..Bounds::default()
        };
        let history =
            |name: &str| History::bounded(&url, store.clone(), name, Arc::new(Metrics::default()), bounds).unwrap();
        let stuck = history("stuck");
        stuck.migrate().await.unwrap();
        let sid = Uuid::new_v4();
        let formed = Change::Formed {
            instance: "stuck".into(),
            placement: Placement::default(),
        };
        // Taken before the stuck transaction goes idle, so its idle bound has passed by any
        // time measured from here once PostgreSQL ends it.
        let started = std::time::Instant::now();
        let mut held = stuck.pool.begin_with(stuck.bounds.begin()).await.unwrap();
        apply_events(&mut held, &[entry(sid, 1_000, formed, &["a", "b"])])
            .await
            .unwrap();

        let writer = history("writer");
        let ended = failed_end(sid);
        let refused = tokio::time::timeout(Duration::from_secs(10), writer.apply(std::slice::from_ref(&ended)))
            .await
            .expect("the write waited on the stuck transaction past its lock bound")
            .unwrap_err();
        assert!(
            matches!(&refused, sqlx::Error::Database(e) if e.code().as_deref() == Some("55P03")),
            "{refused}"
        );
        assert!(!rejects_the_data(&refused));
        let mut redis = redis::Client::open(redis_url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let parked: u64 = redis.xlen(store.keys().outbox_dead()).await.unwrap();
        assert_eq!(parked, 0);

        // Tried again as the writer does, until PostgreSQL has ended the stuck transaction.
        loop {
            match tokio::time::timeout(Duration::from_secs(10), writer.apply(std::slice::from_ref(&ended))).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => assert!(
                    matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03")),
                    "{e}"
                ),
                Err(_) => panic!("a retry waited past its lock bound"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the stuck transaction was never ended"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(started.elapsed() >= bounds.idle_in_transaction);
        let row = writer.session_row(sid).await.unwrap().unwrap();
        assert_eq!(
            (row.status.as_str(), row.end_reason.as_deref()),
            ("ended", Some("failed"))
        );
        // The stuck replica's transaction is gone: it cannot commit once it answers again.
        assert!(held.commit().await.is_err());
    }

    /// `url` through `relay` instead of straight to PostgreSQL.
    fn relayed(url: &str, relay: &testkit::Relay) -> String {
        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        let direct = format!("{}:{}", options.get_host(), options.get_port());
        assert!(url.contains(&direct), "{url}");
        url.replacen(&direct, &relay.addr().to_string(), 1)
    }

    async fn postgres_addr(url: &str) -> std::net::SocketAddr {
        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await
            .unwrap()
            .next()
            .unwrap()
    }

    /// The statements in `pool`'s database waiting on a lock.
    async fn lock_waiters(pool: &PgPool) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    }

    /// Waits until a statement in `pool`'s database waits on a lock.
    async fn waiting_on_a_lock(pool: &PgPool) {
        testkit::eventually(Duration::from_secs(10), || async {
            (lock_waiters(pool).await > 0).then_some(())
        })
        .await;
    }

    /// Ends the sessions of statements waiting on a lock, as PostgreSQL does in time with the
    /// sessions of clients that vanished.
    async fn end_lock_waiters(pool: &PgPool) {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .execute(pool)
        .await
        .unwrap();
        testkit::eventually(Duration::from_secs(10), || async {
            (lock_waiters(pool).await == 0).then_some(())
        })
        .await;
    }

    /// Waits until none of `history`'s connections is in use: one given up on is closed; kept,
    /// it would stay in use for ever, its return to the pool waiting on the silent server.
    async fn none_in_use(history: &History) {
        testkit::eventually(Duration::from_secs(10), || async {
            (history.pool.size() as usize == history.pool.num_idle()).then_some(())
        })
        .await;
    }

    /// PostgreSQL's host going silent (power lost, a network cut, a failover that moves its
    /// address) in the middle of an operation: nothing closes the connection and nothing
    /// answers on it. The operation gives up after its bound instead of waiting for ever, and
    /// a connection given up on, by that bound or by a caller's own timeout (as the health
    /// check's), is closed rather than kept; once PostgreSQL can be reached again, the batch
    /// that failed is written.
    #[tokio::test]
    async fn a_silent_postgres_bounds_every_wait_and_the_history_recovers() {
        let url = testkit::fresh_database().await;
        let relay = testkit::Relay::start(postgres_addr(&url).await).await;
        let store = Store::connect(&testkit::redis_url(), &testkit::unique_prefix())
            .await
            .unwrap();
        let history = |answer: Duration| {
            let bounds = Bounds {
                answer,
                ..Bounds::default()
            };
            History::bounded(
                &relayed(&url, &relay),
                store.clone(),
                "w",
                Arc::new(Metrics::default()),
                bounds,
            )
            .unwrap()
        };
        let writer = history(Duration::from_secs(1));
        writer.migrate().await.unwrap();
        let sid = Uuid::new_v4();
        let formed = Change::Formed {
            instance: "w".into(),
            placement: Placement::default(),
        };
        writer.apply(&[entry(sid, 1_000, formed, &["a", "b"])]).await.unwrap();
        let ended = failed_end(sid);
        // The session's row is held, so a write to it is still in flight when the relay goes
        // silent.
        let direct = PgPool::connect(&url).await.unwrap();
        let mut holder = direct.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM matches WHERE session_id = $1 FOR UPDATE")
            .bind(sid)
            .execute(&mut *holder)
            .await
            .unwrap();
        let in_flight = |history: &History, outer: Duration| {
            let (history, ended) = (history.clone(), ended.clone());
            tokio::spawn(async move { tokio::time::timeout(outer, history.apply(std::slice::from_ref(&ended))).await })
        };

        // Given up on by the history's own bound.
        let write = in_flight(&writer, Duration::from_secs(10));
        waiting_on_a_lock(&direct).await;
        relay.cut();
        let failed = write
            .await
            .unwrap()
            .expect("a batch waited on a silent PostgreSQL past its bound")
            .unwrap_err();
        assert!(
            matches!(&failed, sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut),
            "{failed}"
        );
        assert!(!rejects_the_data(&failed));
        none_in_use(&writer).await;
        end_lock_waiters(&direct).await;

        // Given up on by the caller, well before the history's bound.
        relay.heal();
        let patient = history(Duration::from_secs(60));
        let write = in_flight(&patient, Duration::from_secs(2));
        waiting_on_a_lock(&direct).await;
        relay.cut();
        assert!(write.await.unwrap().is_err());
        none_in_use(&patient).await;
        end_lock_waiters(&direct).await;

        relay.heal();
        holder.rollback().await.unwrap();
        let started = std::time::Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), writer.apply(std::slice::from_ref(&ended))).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => assert!(!rejects_the_data(&e), "{e}"),
                Err(_) => panic!("a retry waited past its bounds"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the history did not recover once PostgreSQL could be reached again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let row = writer.session_row(sid).await.unwrap().unwrap();
        assert_eq!(
            (row.status.as_str(), row.end_reason.as_deref()),
            ("ended", Some("failed"))
        );
    }

    /// A replica that vanishes while it holds the migrator's lock (its connection left open,
    /// as when its node drops off the network) keeps the others from migrating only for the
    /// idle bound: PostgreSQL then ends its idle session, and the lock goes with it.
    #[tokio::test]
    async fn a_replica_that_vanishes_while_migrating_lets_the_others_migrate() {
        let url = testkit::fresh_database().await;
        let relay = testkit::Relay::start(postgres_addr(&url).await).await;
        let store = Store::connect(&testkit::redis_url(), &testkit::unique_prefix())
            .await
            .unwrap();
        let bounds = Bounds {
            lock: Duration::from_millis(300),
            idle_in_transaction: Duration::from_millis(1_500),
            ..Bounds::default()
        };
        let history = |url: &str, name: &str| {
            History::bounded(url, store.clone(), name, Arc::new(Metrics::default()), bounds).unwrap()
        };
        let vanished = history(&relayed(&url, &relay), "vanished");
        let started = std::time::Instant::now();
        let mut conn = vanished.pool.acquire().await.unwrap();
        bound_migrating_session(&mut conn, &bounds).await.unwrap();
        sqlx::migrate::Migrate::lock(&mut *conn).await.unwrap();
        relay.cut();

        let other = history(&url, "other");
        let refused = tokio::time::timeout(Duration::from_secs(10), other.migrate())
            .await
            .expect("a migration waited for the lock past its bound");
        assert!(refused.is_err(), "the lock was not held");
        loop {
            match tokio::time::timeout(Duration::from_secs(10), other.migrate()).await {
                Ok(Ok(())) => break,
                Ok(Err(_)) => {}
                Err(_) => panic!("a migration waited for the lock past its bound"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the vanished replica's session was never ended"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(started.elapsed() >= bounds.idle_in_transaction);
        // Migrated: the schema is there.
        assert!(other.session_row(Uuid::new_v4()).await.unwrap().is_none());
        drop(conn);
    }

    /// Entries a replica had read but not written when it crashed (pending under its name, and
    /// its replacement comes back under another) are taken over by a live replica's writer
    /// once idle for [`CLAIM_IDLE_MS`], and written.
    #[tokio::test]
    async fn a_crashed_replicas_unwritten_entries_are_taken_over() {
        let url = testkit::fresh_database().await;
        let store = Store::connect(&testkit::redis_url(), &testkit::unique_prefix())
            .await
            .unwrap();
        let outbox = store.keys().outbox();
        let mut redis = redis::Client::open(testkit::redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let sid = Uuid::new_v4();
        let formed = entry(
            sid,
            1_000,
            Change::Formed {
                instance: "crashed".into(),
                placement: Placement::default(),
            },
            &["a", "b"],
        );
        let event = serde_json::to_string(&formed.event).unwrap();
        let _: () = redis.xgroup_create_mkstream(&outbox, GROUP, "0").await.unwrap();
        let _: String = redis.xadd(&outbox, "*", &[("event", event.as_str())]).await.unwrap();
        // Read by the replica that then crashed: pending under its name, never acknowledged.
        let read: StreamReadReply = redis
            .xread_options(
                &[outbox.as_str()],
                &[">"],
                &StreamReadOptions::default().group(GROUP, "crashed"),
            )
            .await
            .unwrap();
        assert_eq!(read.keys[0].ids.len(), 1);

        let started = std::time::Instant::now();
        let alive = History::new(&url, store, "alive", Arc::new(Metrics::default())).unwrap();
        let stop = CancellationToken::new();
        let writer = tokio::spawn(alive.clone().run_writer(stop.clone(), Duration::ZERO));
        let limit = Duration::from_millis(CLAIM_IDLE_MS as u64) + CLAIM_EVERY + Duration::from_secs(10);
        let row = loop {
            // (An error until the writer has migrated the fresh database.)
            if let Ok(Some(row)) = alive.session_row(sid).await {
                break row;
            }
            assert!(
                started.elapsed() < limit,
                "the crashed replica's entry was never taken over"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(row.backend_instance.as_deref(), Some("crashed"));
        assert!(started.elapsed() >= Duration::from_millis(CLAIM_IDLE_MS as u64) - Duration::from_millis(500));
        stop.cancel();
        writer.await.unwrap();
    }

    /// A server that refuses writes (read-only, as a promoted standby can be for a moment after
    /// a failover, or a primary that became a standby) gives the batch back to be tried again:
    /// nothing is parked. Only an event whose data PostgreSQL rejects is parked, and the rest
    /// of its batch is written.
    #[tokio::test]
    async fn only_events_postgres_rejects_as_data_are_parked() {
        let url = testkit::fresh_database().await;
        let name = url.rsplit_once('/').unwrap().1.to_owned();
        let admin = PgPool::connect(&url).await.unwrap();
        MIGRATOR.run(&admin).await.unwrap();
        let redis_url = testkit::redis_url();
        let store = Store::connect(&redis_url, &testkit::unique_prefix()).await.unwrap();
        let dead = store.keys().outbox_dead();
        let mut redis = redis::Client::open(redis_url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let formed = || Change::Formed {
            instance: "r1".into(),
            placement: Placement::default(),
        };
        let good = entry(Uuid::new_v4(), 1_000, formed(), &["a", "b"]);
        let history = || History::new(&url, store.clone(), "test", Arc::new(Metrics::default())).unwrap();

        // Every new connection to the database is read-only.
        sqlx::query(&format!("ALTER DATABASE {name} SET default_transaction_read_only = on"))
            .execute(&admin)
            .await
            .unwrap();
        let refused = history().apply(std::slice::from_ref(&good)).await.unwrap_err();
        assert!(
            matches!(&refused, sqlx::Error::Database(e) if e.code().as_deref() == Some("25006")),
            "{refused}"
        );
        let parked: u64 = redis.xlen(&dead).await.unwrap();
        assert_eq!(parked, 0, "an event is parked only when its data is rejected");

        // Writable again: a batch with one event PostgreSQL cannot store (a NUL in a text
        // value, SQLSTATE 22021) writes the other and parks that one.
        sqlx::query(&format!("ALTER DATABASE {name} RESET default_transaction_read_only"))
            .execute(&admin)
            .await
            .unwrap();
        let bad = entry(Uuid::new_v4(), 2_000, formed(), &["c\0d"]);
        history().apply(&[bad.clone(), good.clone()]).await.unwrap();
        let written: Vec<Uuid> = sqlx::query_scalar("SELECT session_id FROM matches")
            .fetch_all(&admin)
            .await
            .unwrap();
        assert_eq!(written, vec![good.session_id]);
        let parked: Vec<redis::streams::StreamId> = redis
            .xrange_all::<_, redis::streams::StreamRangeReply>(&dead)
            .await
            .unwrap()
            .ids;
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].get::<String>("id").as_deref(), Some(bad.id.as_str()));
    }
}
