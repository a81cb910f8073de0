//! Reading the history: one session's row, a player's matches.

use std::str::FromStr;

use protocol::api::EndReason;
use protocol::sessions::{Placement, SessionState};
use sqlx::Row;
use sqlx::postgres::PgConnection;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::History;

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
    pub status: SessionState,
    pub players: Vec<String>,
    pub server_name: Option<String>,
    pub backend_instance: Option<String>,
    pub requested_seconds: Option<i32>,
    pub created_at: OffsetDateTime,
    pub ready_at: Option<OffsetDateTime>,
    pub started_at: Option<OffsetDateTime>,
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<EndReason>,
    /// Its queue, teams, region and quality (empty for rows from before queues).
    pub placement: Placement,
}

impl History {
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
                            m.skill_spread, m.team_skill_gap, m.max_latency_ms, m.max_wait_ms, m.version, mp.joined_at, mp.left_at
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
                            max_latency_ms, max_wait_ms, version
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

fn match_row(r: &sqlx::postgres::PgRow) -> Result<MatchRow, sqlx::Error> {
    Ok(MatchRow {
        session_id: r.try_get("session_id")?,
        status: parsed(r, "status")?,
        players: r.try_get("players")?,
        server_name: r.try_get("server_name")?,
        backend_instance: r.try_get("backend_instance")?,
        requested_seconds: r.try_get("requested_seconds")?,
        created_at: r.try_get("created_at")?,
        ready_at: r.try_get("ready_at")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r
            .try_get::<Option<String>, _>("end_reason")?
            .map(|_| parsed(r, "end_reason"))
            .transpose()?,
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
            version: r.try_get("version")?,
        },
    })
}

/// A text column read as the type whose spelling it holds.
fn parsed<T: FromStr<Err = String>>(r: &sqlx::postgres::PgRow, column: &str) -> Result<T, sqlx::Error> {
    let text: String = r.try_get(column)?;
    text.parse().map_err(|e: String| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: e.into(),
    })
}
