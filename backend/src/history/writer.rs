//! The outbox consumer: a small state machine (connect, migrate, re-read own pending entries,
//! follow) moving lifecycle events from the Redis outbox into PostgreSQL.

use service::backoff::{Backoff, Policy};
use std::time::Duration;

use matchmaking_core::lifecycle::SessionEvent;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::History;
use super::rows::{Entry, apply_events};

pub(super) const GROUP: &str = "history";
const BATCH: usize = 500;
/// Entries another consumer has held this long without acknowledging are taken over: a
/// replica that crashed between reading a batch and writing it leaves its entries pending
/// under its own name, and a replacement comes back under another. A live writer acknowledges
/// within a batch's write, and one taken over while PostgreSQL is slow is only written twice
/// (the upserts commute), so this need not wait long: the history of a crashed replica's last
/// moments lags by at most this plus [`CLAIM_EVERY`].
pub(super) const CLAIM_IDLE_MS: usize = 10_000;
/// How often the writer looks for entries abandoned by other replicas.
pub(super) const CLAIM_EVERY: Duration = Duration::from_secs(2);

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

/// Retries of the writer: reaching Redis, migrating, reading the outbox, writing a batch.
pub(crate) const WRITER: Policy = Policy::new("history_writer", Duration::from_millis(200), Duration::from_secs(5));

/// The writer's state between steps.
struct Writer {
    history: History,
    phase: Phase,
    conn: Option<MultiplexedConnection>,
    backoff: Backoff,
    last_claim: Instant,
    /// Set once `stop` is cancelled: flush until the outbox is empty or this passes.
    flush_until: Option<Instant>,
}

impl History {
    /// Moves outbox events into PostgreSQL until `stop` is cancelled; then keeps going until
    /// the outbox is empty or `flush_for` has passed.
    pub(crate) async fn run_writer(self, stop: CancellationToken, flush_for: Duration) {
        let mut writer = Writer {
            history: self,
            phase: Phase::Connect,
            conn: None,
            backoff: WRITER.start(),
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
    pub(super) async fn apply(&self, entries: &[Entry]) -> Result<(), sqlx::Error> {
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

    /// Ends session `session_id`'s row with its server's signed `report` when Redis no longer
    /// knows the session (restarted empty, or a failover lost its latest writes), so the row
    /// never ends `lost` for a match that played to its end: the same `ended` event the session
    /// would have written, applied here (a row ended `lost` meanwhile takes the reported end; a
    /// row ended otherwise keeps its end and gains the attendance; a row never written is
    /// written from the report).
    pub(crate) async fn end_from_report(
        &self,
        session_id: uuid::Uuid,
        report: &protocol::api::ResultReport,
    ) -> Result<(), sqlx::Error> {
        let at_ms = i64::try_from(report.ended_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let event = matchmaking_core::lifecycle::SessionEvent {
            session_id: session_id.to_string(),
            players: report.players.iter().map(|p| p.player_id.clone()).collect(),
            at_ms,
            change: matchmaking_core::lifecycle::Change::Ended {
                reason: report.end_reason,
                requeued: false,
                report: Some(report.clone()),
            },
        };
        let entry = Entry {
            id: format!("report-{session_id}"),
            session_id,
            event,
        };
        self.apply(std::slice::from_ref(&entry)).await
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
                Err(e) => self.pause(&format!("history: cannot reach Redis: {e}"), stop).await,
            },
            Phase::Migrate => match history.migrate().await {
                Ok(()) => self.phase = Phase::OwnPending,
                Err(e) => {
                    let why = format!(
                        "history: PostgreSQL not ready (matchmaking goes on, history waits in the outbox): {e}"
                    );
                    self.pause(&why, stop).await;
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
                        // Entries may have been delivered to us before the error: the phases
                        // after Connect read them again.
                        self.conn = None;
                        self.phase = Phase::Connect;
                        self.pause(&format!("history: reading the outbox failed, reconnecting: {e}"), stop)
                            .await;
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
                if let Err(why) = self.write(&entries).await {
                    self.phase = Phase::OwnPending;
                    self.pause(&why, stop).await;
                }
            }
        }
        Step::Continue
    }

    /// Applies `entries`, then acknowledges and deletes them; why not when PostgreSQL failed
    /// (the entries stay pending for this consumer).
    async fn write(&mut self, entries: &[StreamId]) -> Result<(), String> {
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
                self.backoff.reset();
                Ok(())
            }
            Err(e) => {
                history.metrics.history_failed();
                Err(format!("history: writing {} events failed: {e}", decoded.len()))
            }
        }
    }

    /// Sleeps the backoff after `why` ([`WRITER`]); cut short by `stop` unless already
    /// flushing, when the flush deadline bounds the wait instead.
    async fn pause(&mut self, why: &str, stop: &CancellationToken) {
        if self.flush_until.is_some() {
            self.backoff.sleep(&why).await;
        } else {
            self.backoff.pause(&why, stop).await;
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
pub(super) fn rejects_the_data(error: &sqlx::Error) -> bool {
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
