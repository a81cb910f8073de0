//! Match history in PostgreSQL, written from the Redis outbox.
//!
//! The Redis scripts append every lifecycle change to the `P:outbox` stream in the same atomic
//! step that makes it, so matching never waits for PostgreSQL and nothing is lost while it is
//! down: a consumer group (one consumer per replica) reads the stream, applies batches in one
//! transaction, and only then acknowledges and deletes the entries. Entries a dead replica had
//! read are claimed by the others after a while. The upserts commute, so events applied out of
//! order or twice converge on the same rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use protocol::api::ResultReport;
use redis::AsyncCommands;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::store::Store;

const GROUP: &str = "history";
const BATCH: usize = 500;
/// Entries another consumer has held this long without acknowledging are taken over.
const CLAIM_IDLE_MS: usize = 30_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The history writer and reader.
#[derive(Clone)]
pub struct History {
    pool: PgPool,
    store: Store,
    consumer: String,
    healthy: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// One lifecycle event from the outbox.
#[derive(Debug, Clone)]
struct Event {
    id: String,
    kind: String,
    session_id: Uuid,
    players: Vec<String>,
    at: OffsetDateTime,
    instance: Option<String>,
    server: Option<String>,
    reason: Option<String>,
    report: Option<ResultReport>,
}

/// A row of a player's history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlayerMatch {
    pub session_id: Uuid,
    pub status: String,
    pub players: Vec<String>,
    pub server_name: Option<String>,
    pub requested_seconds: Option<i32>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub joined_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub left_at: Option<OffsetDateTime>,
}

/// A session's row, for operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MatchRow {
    pub session_id: Uuid,
    pub status: String,
    pub players: Vec<String>,
    pub server_name: Option<String>,
    pub backend_instance: Option<String>,
    pub requested_seconds: Option<i32>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ready_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<String>,
}

fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl History {
    /// A writer for `database_url`. Connects lazily: the backend starts and matches even when
    /// PostgreSQL is down.
    pub fn new(
        database_url: &str,
        store: Store,
        consumer: &str,
        metrics: Arc<Metrics>,
    ) -> Result<History, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(database_url)?;
        Ok(History {
            pool,
            store,
            consumer: consumer.to_owned(),
            healthy: Arc::new(AtomicBool::new(false)),
            metrics,
        })
    }

    /// The pool, for readers.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the last write (or migration) reached PostgreSQL.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Applies the migrations.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Checks PostgreSQL with a short timeout.
    pub async fn ping(&self) -> bool {
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&self.pool)).await,
            Ok(Ok(_))
        );
        if !ok {
            self.healthy.store(false, Ordering::Relaxed);
        }
        ok
    }

    /// Events not yet written.
    pub async fn backlog(&self) -> redis::RedisResult<u64> {
        self.store.conn().xlen(self.store.key("outbox")).await
    }

    /// Moves outbox events into PostgreSQL until `stop` is cancelled; then keeps going until
    /// the outbox is empty or `flush_for` has passed.
    pub async fn run_writer(self, stop: CancellationToken, flush_for: Duration) {
        let mut backoff = Duration::from_millis(200);
        let mut migrated = false;
        let mut flush_deadline = None;
        let mut conn = loop {
            // Blocking reads wait up to 1 s: the response timeout must be longer.
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(Duration::from_secs(10)));
            match self
                .store
                .client()
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(conn) => break conn,
                Err(e) => {
                    tracing::warn!(error = %e, "history: cannot reach Redis; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let outbox = self.store.key("outbox");
        let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&outbox, GROUP, "0").await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            tracing::error!(error = %e, "history: cannot create the consumer group");
        }
        let mut own_pending_first = true;
        let mut last_claim = tokio::time::Instant::now();
        loop {
            if stop.is_cancelled() && flush_deadline.is_none() {
                flush_deadline = Some(tokio::time::Instant::now() + flush_for);
            }
            if flush_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return;
            }
            if !migrated {
                match self.migrate().await {
                    Ok(()) => {
                        migrated = true;
                        tracing::info!("history: migrations applied");
                    }
                    Err(e) => {
                        self.healthy.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "history: PostgreSQL not ready; matchmaking goes on, history waits in the outbox");
                        Self::pause(&stop, &mut backoff, flush_deadline.is_some()).await;
                        continue;
                    }
                }
            }
            // Own unacknowledged entries first (after a restart or a failed batch), then
            // entries abandoned by dead replicas, then new ones.
            let block = if stop.is_cancelled() { None } else { Some(1000) };
            let read = if own_pending_first {
                self.read(&mut conn, "0", None).await
            } else if last_claim.elapsed() > Duration::from_secs(10) {
                last_claim = tokio::time::Instant::now();
                self.claim(&mut conn).await
            } else {
                self.read(&mut conn, ">", block).await
            };
            let entries = match read {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "history: reading the outbox failed");
                    // Entries may have been delivered to us before the error: read them again.
                    own_pending_first = true;
                    Self::pause(&stop, &mut backoff, flush_deadline.is_some()).await;
                    continue;
                }
            };
            if entries.is_empty() {
                if own_pending_first {
                    own_pending_first = false;
                } else if stop.is_cancelled() {
                    return;
                }
                continue;
            }
            let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
            let events: Vec<Event> = entries.iter().filter_map(parse_event).collect();
            match self.apply(&events).await {
                Ok(()) => {
                    let _: redis::RedisResult<()> = redis::pipe()
                        .xack(&outbox, GROUP, &ids)
                        .xdel(&outbox, &ids)
                        .query_async(&mut conn)
                        .await;
                    self.metrics
                        .history_written
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    self.healthy.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    self.metrics.history_failures.fetch_add(1, Ordering::Relaxed);
                    self.healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, events = events.len(), "history: write failed; will retry");
                    own_pending_first = true;
                    Self::pause(&stop, &mut backoff, flush_deadline.is_some()).await;
                }
            }
        }
    }

    /// Sleeps the backoff (doubling, at most 5 s); cut short by `stop` unless already
    /// flushing, when the flush deadline bounds the wait instead.
    async fn pause(stop: &CancellationToken, backoff: &mut Duration, flushing: bool) {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
        if flushing {
            tokio::time::sleep(wait).await;
        } else {
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn read(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        from: &str,
        block: Option<usize>,
    ) -> redis::RedisResult<Vec<StreamId>> {
        let mut options = StreamReadOptions::default().group(GROUP, &self.consumer).count(BATCH);
        if let Some(ms) = block {
            options = options.block(ms);
        }
        let reply: Option<StreamReadReply> = conn
            .xread_options(&[self.store.key("outbox")], &[from], &options)
            .await?;
        Ok(reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect())
    }

    async fn claim(&self, conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<Vec<StreamId>> {
        let reply: redis::streams::StreamAutoClaimReply = conn
            .xautoclaim_options(
                self.store.key("outbox"),
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

    /// Applies a batch in one transaction. If PostgreSQL rejects the data itself (not the
    /// connection), applies the events one by one and parks any it keeps rejecting in the
    /// `P:outbox:dead` stream, so one bad event cannot hold up the history for ever.
    async fn apply(&self, events: &[Event]) -> Result<(), sqlx::Error> {
        match self.apply_batch(events).await {
            Err(sqlx::Error::Database(e)) => {
                tracing::warn!(error = %e, "history: batch rejected; applying event by event");
                for event in events {
                    match self.apply_batch(std::slice::from_ref(event)).await {
                        Err(sqlx::Error::Database(e)) => {
                            tracing::error!(error = %e, id = %event.id, kind = %event.kind, "history: parking an event PostgreSQL rejects");
                            let parked: redis::RedisResult<String> = self
                                .store
                                .conn()
                                .xadd(
                                    self.store.key("outbox:dead"),
                                    "*",
                                    &[
                                        ("id", event.id.as_str()),
                                        ("kind", &event.kind),
                                        ("error", &e.to_string()),
                                    ],
                                )
                                .await;
                            if let Err(e) = parked {
                                tracing::error!(error = %e, "history: cannot park the event");
                            }
                        }
                        other => other?,
                    }
                }
                Ok(())
            }
            other => other,
        }
    }

    async fn apply_batch(&self, events: &[Event]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for event in events {
            apply_event(&mut tx, event).await?;
        }
        tx.commit().await
    }

    /// A player's matches, newest first.
    pub async fn player_matches(&self, player: &str, limit: i64, offset: i64) -> Result<Vec<PlayerMatch>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT m.session_id, m.status, m.players, m.server_name, m.requested_seconds, m.created_at,
                    m.started_at, m.ended_at, m.end_reason, mp.joined_at, mp.left_at
             FROM match_players mp JOIN matches m USING (session_id)
             WHERE mp.player_id = $1
             ORDER BY m.created_at DESC, m.session_id DESC
             LIMIT $2 OFFSET $3",
        )
        .bind(player)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PlayerMatch {
                    session_id: r.try_get("session_id")?,
                    status: r.try_get("status")?,
                    players: r.try_get("players")?,
                    server_name: r.try_get("server_name")?,
                    requested_seconds: r.try_get("requested_seconds")?,
                    created_at: r.try_get("created_at")?,
                    started_at: r.try_get("started_at")?,
                    ended_at: r.try_get("ended_at")?,
                    end_reason: r.try_get("end_reason")?,
                    joined_at: r.try_get("joined_at")?,
                    left_at: r.try_get("left_at")?,
                })
            })
            .collect()
    }

    /// One session's row.
    pub async fn session_row(&self, session_id: Uuid) -> Result<Option<MatchRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT session_id, status, players, server_name, backend_instance, requested_seconds, created_at,
                    ready_at, started_at, ended_at, end_reason
             FROM matches WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
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
            })
        })
        .transpose()
    }
}

fn parse_event(entry: &StreamId) -> Option<Event> {
    let field = |name: &str| -> Option<String> { entry.get::<String>(name).filter(|v| !v.is_empty()) };
    let parsed = (|| {
        let kind = field("kind")?;
        let session_id = Uuid::parse_str(&field("sid")?).ok()?;
        let players = field("players")
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let at = from_ms(field("at")?.parse().ok()?);
        let report = field("report").and_then(|r| serde_json::from_str(&r).ok());
        Some(Event {
            id: entry.id.clone(),
            kind,
            session_id,
            players,
            at,
            instance: field("instance"),
            server: field("server"),
            reason: field("reason"),
            report,
        })
    })();
    if parsed.is_none() {
        tracing::error!(id = %entry.id, "history: dropping an outbox entry that does not parse");
    }
    parsed
}

async fn apply_event(tx: &mut Transaction<'_, Postgres>, e: &Event) -> Result<(), sqlx::Error> {
    let report = e.report.as_ref();
    let (status, ready_at, ended_at, end_reason) = match e.kind.as_str() {
        "formed" => ("allocating", None, None, None),
        "ready" => ("matched", Some(e.at), None, None),
        "ended" => ("ended", None, Some(e.at), e.reason.clone()),
        // A report after the end only adds attendance: it must not decide the status.
        _ => ("allocating", None, None, None),
    };
    let requested = report
        .and_then(|r| r.requested_seconds)
        .and_then(|s| i32::try_from(s).ok());
    sqlx::query(
        "INSERT INTO matches (session_id, status, players, backend_instance, server_name, created_at, ready_at,
                              started_at, ended_at, end_reason, requested_seconds)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (session_id) DO UPDATE SET
           status = CASE WHEN mp_status_rank(EXCLUDED.status) > mp_status_rank(matches.status)
                         THEN EXCLUDED.status ELSE matches.status END,
           backend_instance = COALESCE(matches.backend_instance, EXCLUDED.backend_instance),
           server_name = COALESCE(EXCLUDED.server_name, matches.server_name),
           created_at = LEAST(matches.created_at, EXCLUDED.created_at),
           ready_at = COALESCE(matches.ready_at, EXCLUDED.ready_at),
           started_at = COALESCE(matches.started_at, EXCLUDED.started_at),
           ended_at = COALESCE(matches.ended_at, EXCLUDED.ended_at),
           end_reason = COALESCE(matches.end_reason, EXCLUDED.end_reason),
           requested_seconds = COALESCE(matches.requested_seconds, EXCLUDED.requested_seconds)",
    )
    .bind(e.session_id)
    .bind(status)
    .bind(&e.players)
    .bind(&e.instance)
    .bind(&e.server)
    .bind(e.at)
    .bind(ready_at)
    .bind(report.and_then(|r| r.started_at))
    .bind(ended_at)
    .bind(end_reason)
    .bind(requested)
    .execute(&mut **tx)
    .await?;

    let (players, joined, left): (Vec<String>, Vec<Option<OffsetDateTime>>, Vec<Option<OffsetDateTime>>) = match report
    {
        Some(r) => (
            r.players.iter().map(|p| p.player_id.clone()).collect(),
            r.players.iter().map(|p| p.joined_at).collect(),
            r.players.iter().map(|p| p.left_at).collect(),
        ),
        None => (
            e.players.clone(),
            vec![None; e.players.len()],
            vec![None; e.players.len()],
        ),
    };
    sqlx::query(
        "INSERT INTO match_players (session_id, player_id, joined_at, left_at)
         SELECT $1, p, j, l FROM UNNEST($2::text[], $3::timestamptz[], $4::timestamptz[]) AS t(p, j, l)
         ON CONFLICT (session_id, player_id) DO UPDATE SET
           joined_at = COALESCE(match_players.joined_at, EXCLUDED.joined_at),
           left_at = COALESCE(EXCLUDED.left_at, match_players.left_at)",
    )
    .bind(e.session_id)
    .bind(&players)
    .bind(&joined)
    .bind(&left)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
