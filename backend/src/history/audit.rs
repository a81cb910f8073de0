//! The audit log of operator actions, in PostgreSQL.

use protocol::operators::AuditEntry;
use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::History;

/// An action to record.
#[derive(Debug, Clone)]
pub(crate) struct NewAction {
    pub actor: String,
    /// `console` or `api`.
    pub via: &'static str,
    pub remote: Option<String>,
    pub action: &'static str,
    pub target: String,
    pub outcome: String,
}

impl History {
    /// Records `action`; the entry as written.
    pub(crate) async fn record_action(&self, action: &NewAction) -> Result<AuditEntry, sqlx::Error> {
        let row = self
            .answered(async |conn: &mut PgConnection| {
                sqlx::query(
                    "INSERT INTO operator_actions (actor, via, remote, action, target, outcome)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     RETURNING id, at, actor, via, remote, action, target, outcome",
                )
                .bind(&action.actor)
                .bind(action.via)
                .bind(&action.remote)
                .bind(action.action)
                .bind(&action.target)
                .bind(&action.outcome)
                .fetch_one(conn)
                .await
            })
            .await?;
        entry(&row)
    }

    /// The latest `limit` actions, newest first.
    pub(crate) async fn actions(&self, limit: i64) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = self
            .answered(async |conn: &mut PgConnection| {
                sqlx::query(
                    "SELECT id, at, actor, via, remote, action, target, outcome
                     FROM operator_actions ORDER BY at DESC, id DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(conn)
                .await
            })
            .await?;
        rows.iter().map(entry).collect()
    }
}

fn entry(r: &sqlx::postgres::PgRow) -> Result<AuditEntry, sqlx::Error> {
    Ok(AuditEntry {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        via: r.try_get("via")?,
        remote: r.try_get("remote")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        outcome: r.try_get("outcome")?,
    })
}
