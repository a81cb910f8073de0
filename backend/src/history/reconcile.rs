//! The reconciler: open rows of sessions Redis no longer knows are ended `lost`.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::History;

impl History {
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
}
