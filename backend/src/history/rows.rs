//! What a batch of lifecycle events does to the rows: the merge rules and the one upsert per
//! table that applies them.
//!
//! The merge rules are written twice, on purpose: in Rust ([`RowChange::then`], merging a
//! batch's events for one session before the write) and in the SQL of [`apply_events`]
//! (merging that into the stored row, and `mp_status_rank` in the first migration). Merging
//! first lets one statement write a whole batch; the rules must stay the same in both places,
//! and the test `a_batch_leaves_the_rows_as_its_events_one_at_a_time_do` holds them to it.

use std::collections::{BTreeMap, btree_map};

use matchmaking_core::lifecycle::{Change, SessionEvent};
use protocol::api::EndReason;
use protocol::sessions::{Placement, SessionState};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::from_ms;

/// One outbox entry, decoded.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) session_id: Uuid,
    pub(super) event: SessionEvent,
}

/// What a batch's events do to one session's `matches` row: the events merged by the rules the
/// upsert applies to the stored row, so that merging first and upserting once leaves the row
/// as upserting each event in turn would. One statement then writes a whole batch (a session
/// appears in it at most once, as `ON CONFLICT DO UPDATE` requires).
#[derive(Debug)]
struct RowChange {
    status: SessionState,
    players: Vec<String>,
    instance: Option<String>,
    server: Option<String>,
    created_at: OffsetDateTime,
    ready_at: Option<OffsetDateTime>,
    started_at: Option<OffsetDateTime>,
    ended_at: Option<OffsetDateTime>,
    end_reason: Option<EndReason>,
    requested_seconds: Option<i32>,
    placement: Placement,
}

impl RowChange {
    /// The row `event` writes on its own; `None` for a change that is not a session's.
    fn of(event: &SessionEvent) -> Option<RowChange> {
        let at = from_ms(event.at_ms);
        let mut row = RowChange {
            status: SessionState::Allocating,
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
            Change::Ready { server, version, .. } => {
                row.status = SessionState::Matched;
                row.server = Some(server.clone());
                row.placement.version = version.clone();
                row.ready_at = Some(at);
            }
            Change::Ended { reason, .. } => {
                row.status = SessionState::Ended;
                row.ended_at = Some(at);
                row.end_reason = Some(*reason);
            }
            Change::Reported { .. } => {}
            // New players of a running session: added to its roster (and given their rows).
            Change::Backfilled { .. } => {}
            // Released players stay in the match's roster: they played part of it.
            Change::Released => return None,
            // A player's connection: attendance only (see `merge`).
            Change::Connected | Change::Left => return None,
            // Published for long polls only; never in the outbox.
            Change::TimedOut { .. } => return None,
        }
        if let Some(report) = event.change.report() {
            row.started_at = report.started_at;
            row.requested_seconds = report.requested_seconds.and_then(|s| i32::try_from(s).ok());
        }
        Some(row)
    }

    /// `later` applied to this row as the upsert's `ON CONFLICT` applies an event to a stored
    /// row (keep the two the same): the status only moves forward (`mp_status_rank` there, the
    /// order of [`SessionState`] here), the roster gains the players it lacked (backfill), a
    /// first value stays (a server's name and an end that
    /// replaces `lost` excepted), the earliest time is the creation.
    fn then(&mut self, later: RowChange) {
        self.status = self.status.max(later.status);
        for p in later.players {
            if !self.players.contains(&p) {
                self.players.push(p);
            }
        }
        self.instance = self.instance.take().or(later.instance);
        self.server = later.server.or(self.server.take());
        self.created_at = self.created_at.min(later.created_at);
        self.ready_at = self.ready_at.or(later.ready_at);
        self.started_at = self.started_at.or(later.started_at);
        if self.end_reason == Some(EndReason::Lost) && later.end_reason.is_some() {
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
        p.version = p.version.take().or(l.version);
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
        let at = from_ms(e.at_ms);
        // The proxy's view of a player's connections: its first connect and its latest leave.
        let seen: Option<Attendance> = match e.change {
            Change::Connected => Some((Some(at), None)),
            Change::Left => Some((None, Some(at))),
            _ => None,
        };
        if seen.is_none() {
            let Some(row) = RowChange::of(e) else { continue };
            match rows.entry(entry.session_id) {
                btree_map::Entry::Occupied(mut stored) => stored.get_mut().then(row),
                btree_map::Entry::Vacant(new) => {
                    new.insert(row);
                }
            }
        }
        let times: Vec<(&String, Attendance)> = match (e.change.report(), seen) {
            (Some(r), _) => r
                .players
                .iter()
                .map(|p| (&p.player_id, (p.joined_at, p.left_at)))
                .collect(),
            (None, Some(seen)) => e.players.iter().map(|p| (p, seen)).collect(),
            (None, None) => e.players.iter().map(|p| (p, (None, None))).collect(),
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

/// A batch of `matches` rows as the upsert takes them: one array per column, bound as
/// `UNNEST`'s arguments in the statement's order.
struct MatchColumns {
    ids: Vec<Uuid>,
    status: Vec<&'static str>,
    rosters: Vec<Json<Vec<String>>>,
    instance: Vec<Option<String>>,
    server: Vec<Option<String>>,
    created: Vec<OffsetDateTime>,
    ready: Vec<Option<OffsetDateTime>>,
    started: Vec<Option<OffsetDateTime>>,
    ended: Vec<Option<OffsetDateTime>>,
    reason: Vec<Option<&'static str>>,
    requested: Vec<Option<i32>>,
    queue: Vec<Option<String>>,
    teams: Vec<Option<Json<Vec<Vec<String>>>>>,
    region: Vec<Option<String>>,
    spread: Vec<Option<f64>>,
    gap: Vec<Option<f64>>,
    latency: Vec<Option<f64>>,
    wait: Vec<Option<i64>>,
    version: Vec<Option<String>>,
}

impl MatchColumns {
    fn with_capacity(n: usize) -> MatchColumns {
        MatchColumns {
            ids: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            rosters: Vec::with_capacity(n),
            instance: Vec::with_capacity(n),
            server: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
            ready: Vec::with_capacity(n),
            started: Vec::with_capacity(n),
            ended: Vec::with_capacity(n),
            reason: Vec::with_capacity(n),
            requested: Vec::with_capacity(n),
            queue: Vec::with_capacity(n),
            teams: Vec::with_capacity(n),
            region: Vec::with_capacity(n),
            spread: Vec::with_capacity(n),
            gap: Vec::with_capacity(n),
            latency: Vec::with_capacity(n),
            wait: Vec::with_capacity(n),
            version: Vec::with_capacity(n),
        }
    }

    /// Adds session `id`'s row.
    fn push(&mut self, id: Uuid, row: RowChange) {
        self.ids.push(id);
        self.status.push(row.status.as_str());
        self.rosters.push(Json(row.players));
        self.instance.push(row.instance);
        self.server.push(row.server);
        self.created.push(row.created_at);
        self.ready.push(row.ready_at);
        self.started.push(row.started_at);
        self.ended.push(row.ended_at);
        self.reason.push(row.end_reason.map(EndReason::as_str));
        self.requested.push(row.requested_seconds);
        let p = row.placement;
        self.queue.push(p.queue);
        self.teams.push((!p.teams.is_empty()).then_some(Json(p.teams)));
        self.region.push(p.region);
        self.spread.push(p.skill_spread);
        self.gap.push(p.team_skill_gap);
        self.latency.push(p.max_latency_ms);
        self.wait.push(p.max_wait_ms);
        self.version.push(p.version);
    }
}

/// Writes what `entries` change, in two statements (the sessions' rows, then their players').
/// Its `ON CONFLICT` clauses are the merge rules of [`RowChange::then`] (keep the two the same).
/// The upserts commute with what is stored, so a batch applied twice, or out of order with
/// another, converges on the same rows.
pub(super) async fn apply_events(tx: &mut Transaction<'_, Postgres>, entries: &[Entry]) -> Result<(), sqlx::Error> {
    let (rows, players) = merge(entries);
    if rows.is_empty() && players.is_empty() {
        return Ok(());
    }
    let mut columns = MatchColumns::with_capacity(rows.len());
    for (id, row) in rows {
        columns.push(id, row);
    }
    sqlx::query(
        "INSERT INTO matches (session_id, status, players, backend_instance, server_name, created_at, ready_at,
                              started_at, ended_at, end_reason, requested_seconds, queue, teams, region,
                              skill_spread, team_skill_gap, max_latency_ms, max_wait_ms, version)
         SELECT id, st, ARRAY(SELECT jsonb_array_elements_text(roster)), inst, srv, cr, rd, sa, ea, er, rq, q, tm, rg,
                ss, tg, ml, mw, vr
         FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::int4[],
                     $12::text[], $13::jsonb[], $14::text[], $15::float8[], $16::float8[], $17::float8[],
                     $18::int8[], $19::text[])
              AS t(id, st, roster, inst, srv, cr, rd, sa, ea, er, rq, q, tm, rg, ss, tg, ml, mw, vr)
         ORDER BY id
         ON CONFLICT (session_id) DO UPDATE SET
           players = matches.players
                     || ARRAY(SELECT x FROM unnest(EXCLUDED.players) WITH ORDINALITY AS n(x, i)
                              WHERE x <> ALL(matches.players) ORDER BY i),
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
           max_wait_ms = COALESCE(matches.max_wait_ms, EXCLUDED.max_wait_ms),
           version = COALESCE(matches.version, EXCLUDED.version)",
    )
    .bind(columns.ids)
    .bind(columns.status)
    .bind(columns.rosters)
    .bind(columns.instance)
    .bind(columns.server)
    .bind(columns.created)
    .bind(columns.ready)
    .bind(columns.started)
    .bind(columns.ended)
    .bind(columns.reason)
    .bind(columns.requested)
    .bind(columns.queue)
    .bind(columns.teams)
    .bind(columns.region)
    .bind(columns.spread)
    .bind(columns.gap)
    .bind(columns.latency)
    .bind(columns.wait)
    .bind(columns.version)
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
         -- A connection seen by the proxy names a session whose row its formed event wrote
         -- first; should it ever come alone, it is dropped rather than failing the batch.
         WHERE EXISTS (SELECT 1 FROM matches WHERE matches.session_id = t.s)
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
