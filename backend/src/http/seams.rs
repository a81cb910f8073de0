//! What the HTTP layer needs of the rest of the backend, as three small traits: the
//! matchmaking service, the sessions service and the history are one implementation each,
//! and a test of the HTTP layer hands it its own, without Redis, PostgreSQL or a backend.

use futures_util::future::BoxFuture;
use matchmaking_core::store::{self, CancelOutcome, EndOutcome, LiveSession, PlayerView, QueueDepth, ServerSignal};
use matchmaking_core::tickets::Joiner;
use protocol::api::{BackfillAsk, BackfillStatus, EndReason, JoinRequest, ResultReport, WarmSession};
use protocol::sessions::{SessionRecord, SessionState};
use uuid::Uuid;

use std::sync::Arc;

use std::collections::BTreeMap;

use protocol::operators::{AuditEntry, Failure, Overview, ProfileVersions};

use crate::runtime::versions::Refused;

use crate::history::{History, MatchRow, NewAction, PlayerMatch};
use crate::matchmaking::{BackfillChange, BackfillError, JoinError, Matchmaking};
use crate::operators::Operators;
use crate::operators::console::{self, SignIn};
use crate::sessions::Sessions;

/// Joins, cancels, where a player stands, the queues.
pub(crate) trait Matchmaker: Send + Sync {
    /// Queues `body`'s ticket as `joiner` may; where the player stands, and when that was read.
    fn join<'a>(
        &'a self,
        body: &'a JoinRequest,
        joiner: Joiner<'a>,
    ) -> BoxFuture<'a, Result<(PlayerView, i64), JoinError>>;
    fn cancel<'a>(&'a self, player: &'a str) -> BoxFuture<'a, store::Result<CancelOutcome>>;
    fn player<'a>(&'a self, player: &'a str) -> BoxFuture<'a, store::Result<PlayerView>>;
    /// Each queue's name and depth.
    fn depths(&self) -> BoxFuture<'_, store::Result<Vec<(String, QueueDepth)>>>;
    /// Whether joins are taken (not draining).
    fn accepting(&self) -> bool;
    /// Releases players of running session `session_id`, then sets its open slots.
    fn backfill<'a>(
        &'a self,
        session_id: &'a str,
        ask: &'a BackfillAsk,
    ) -> BoxFuture<'a, Result<BackfillChange, BackfillError>>;
    /// Session `session_id`'s open backfill request.
    fn backfill_status<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, store::Result<Option<BackfillStatus>>>;
    /// Whether queue `queue` backfills.
    fn backfills(&self, queue: &str) -> bool;
}

/// Ending sessions and reading the live ones.
pub(crate) trait SessionDesk: Send + Sync {
    fn end<'a>(
        &'a self,
        session_id: &'a str,
        reason: EndReason,
        report: Option<&'a ResultReport>,
    ) -> BoxFuture<'a, store::Result<EndOutcome>>;
    fn live(&self) -> BoxFuture<'_, store::Result<Vec<LiveSession>>>;
    fn record<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, store::Result<Option<SessionRecord>>>;
    /// Sessions this replica supervises now.
    fn supervised(&self) -> usize;
    /// A server's SDK call (ready, health): the session's state, `None` if unknown.
    fn server_signal<'a>(
        &'a self,
        session_id: &'a str,
        signal: ServerSignal,
    ) -> BoxFuture<'a, store::Result<Option<SessionState>>>;
    /// A warm server's poll for its session, waiting up to `wait`.
    fn warm_poll<'a>(
        &'a self,
        server_id: &'a str,
        wait: std::time::Duration,
    ) -> BoxFuture<'a, store::Result<Option<WarmSession>>>;
}

/// What operators read and do beyond sessions: the overview, failures, the audit log, and the
/// console's sign-ins.
pub(crate) trait OperatorDesk: Send + Sync {
    fn overview(&self) -> BoxFuture<'_, store::Result<Arc<Overview>>>;
    fn failures(&self, limit: usize) -> BoxFuture<'_, store::Result<Vec<Failure>>>;
    fn audit(&self, limit: i64) -> BoxFuture<'_, Result<Vec<AuditEntry>, sqlx::Error>>;
    fn record<'a>(&'a self, action: &'a NewAction) -> BoxFuture<'a, Result<AuditEntry, sqlx::Error>>;
    /// Signs `name` in (the operator token already checked): its cookie and sign-in.
    fn sign_in<'a>(&'a self, name: &'a str) -> BoxFuture<'a, store::Result<(String, SignIn)>>;
    fn signed_in<'a>(&'a self, cookie: &'a str) -> BoxFuture<'a, store::Result<Option<SignIn>>>;
    fn sign_out<'a>(&'a self, cookie: &'a str) -> BoxFuture<'a, store::Result<()>>;
    /// Every profile with versions.
    fn versions(&self) -> BoxFuture<'_, store::Result<Vec<ProfileVersions>>>;
    /// Sets weights of a profile's versions: what is in force now, or why not.
    fn set_weights<'a>(
        &'a self,
        profile: &'a str,
        weights: &'a BTreeMap<String, u32>,
    ) -> BoxFuture<'a, store::Result<Result<String, Refused>>>;
    /// Drains a version: what is in force now, or why not.
    fn drain<'a>(&'a self, profile: &'a str, version: &'a str)
    -> BoxFuture<'a, store::Result<Result<String, Refused>>>;
}

/// The match history's reads.
pub(crate) trait MatchHistory: Send + Sync {
    fn session_row(&self, session_id: Uuid) -> BoxFuture<'_, Result<Option<MatchRow>, sqlx::Error>>;
    fn player_matches<'a>(
        &'a self,
        player: &'a str,
        limit: i64,
        offset: i64,
    ) -> BoxFuture<'a, Result<Vec<PlayerMatch>, sqlx::Error>>;
    /// Ends a session Redis no longer knows with its server's signed report.
    fn end_from_report<'a>(
        &'a self,
        session_id: Uuid,
        report: &'a protocol::api::ResultReport,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

impl Matchmaker for Matchmaking {
    fn join<'a>(
        &'a self,
        body: &'a JoinRequest,
        joiner: Joiner<'a>,
    ) -> BoxFuture<'a, Result<(PlayerView, i64), JoinError>> {
        Box::pin(Matchmaking::join(self, body, joiner))
    }

    fn cancel<'a>(&'a self, player: &'a str) -> BoxFuture<'a, store::Result<CancelOutcome>> {
        Box::pin(Matchmaking::cancel(self, player))
    }

    fn player<'a>(&'a self, player: &'a str) -> BoxFuture<'a, store::Result<PlayerView>> {
        Box::pin(Matchmaking::player(self, player))
    }

    fn depths(&self) -> BoxFuture<'_, store::Result<Vec<(String, QueueDepth)>>> {
        Box::pin(async move {
            Ok(Matchmaking::depths(self)
                .await?
                .into_iter()
                .map(|(name, depth)| (name.to_owned(), depth))
                .collect())
        })
    }

    fn accepting(&self) -> bool {
        Matchmaking::accepting(self)
    }

    fn backfill<'a>(
        &'a self,
        session_id: &'a str,
        ask: &'a BackfillAsk,
    ) -> BoxFuture<'a, Result<BackfillChange, BackfillError>> {
        Box::pin(Matchmaking::backfill(
            self,
            session_id,
            &ask.slots,
            store::SlotsMode::Set,
            store::Release {
                players: &ask.release,
                gone_since: None,
            },
        ))
    }

    fn backfill_status<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, store::Result<Option<BackfillStatus>>> {
        Box::pin(Matchmaking::backfill_status(self, session_id))
    }

    fn backfills(&self, queue: &str) -> bool {
        self.queues().get(queue).is_some_and(|q| q.backfill.is_some())
    }
}

impl SessionDesk for Sessions {
    fn end<'a>(
        &'a self,
        session_id: &'a str,
        reason: EndReason,
        report: Option<&'a ResultReport>,
    ) -> BoxFuture<'a, store::Result<EndOutcome>> {
        Box::pin(Sessions::end(self, session_id, reason, report))
    }

    fn live(&self) -> BoxFuture<'_, store::Result<Vec<LiveSession>>> {
        Box::pin(Sessions::live(self))
    }

    fn record<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, store::Result<Option<SessionRecord>>> {
        Box::pin(Sessions::record(self, session_id))
    }

    fn supervised(&self) -> usize {
        Sessions::supervised(self)
    }

    fn server_signal<'a>(
        &'a self,
        session_id: &'a str,
        signal: ServerSignal,
    ) -> BoxFuture<'a, store::Result<Option<SessionState>>> {
        Box::pin(Sessions::server_signal(self, session_id, signal))
    }

    fn warm_poll<'a>(
        &'a self,
        server_id: &'a str,
        wait: std::time::Duration,
    ) -> BoxFuture<'a, store::Result<Option<WarmSession>>> {
        Box::pin(Sessions::warm_poll(self, server_id, wait))
    }
}

impl MatchHistory for History {
    fn session_row(&self, session_id: Uuid) -> BoxFuture<'_, Result<Option<MatchRow>, sqlx::Error>> {
        Box::pin(History::session_row(self, session_id))
    }

    fn player_matches<'a>(
        &'a self,
        player: &'a str,
        limit: i64,
        offset: i64,
    ) -> BoxFuture<'a, Result<Vec<PlayerMatch>, sqlx::Error>> {
        Box::pin(History::player_matches(self, player, limit, offset))
    }

    fn end_from_report<'a>(
        &'a self,
        session_id: Uuid,
        report: &'a protocol::api::ResultReport,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(History::end_from_report(self, session_id, report))
    }
}

impl OperatorDesk for Operators {
    fn overview(&self) -> BoxFuture<'_, store::Result<Arc<Overview>>> {
        Box::pin(Operators::overview(self))
    }

    fn failures(&self, limit: usize) -> BoxFuture<'_, store::Result<Vec<Failure>>> {
        Box::pin(Operators::failures(self, limit))
    }

    fn audit(&self, limit: i64) -> BoxFuture<'_, Result<Vec<AuditEntry>, sqlx::Error>> {
        Box::pin(self.history().actions(limit))
    }

    fn record<'a>(&'a self, action: &'a NewAction) -> BoxFuture<'a, Result<AuditEntry, sqlx::Error>> {
        Box::pin(self.history().record_action(action))
    }

    fn sign_in<'a>(&'a self, name: &'a str) -> BoxFuture<'a, store::Result<(String, SignIn)>> {
        Box::pin(console::sign_in(self.store(), name, self.operator_token()))
    }

    fn signed_in<'a>(&'a self, cookie: &'a str) -> BoxFuture<'a, store::Result<Option<SignIn>>> {
        Box::pin(console::signed_in(self.store(), cookie, self.operator_token()))
    }

    fn sign_out<'a>(&'a self, cookie: &'a str) -> BoxFuture<'a, store::Result<()>> {
        Box::pin(console::sign_out(self.store(), cookie))
    }

    fn versions(&self) -> BoxFuture<'_, store::Result<Vec<ProfileVersions>>> {
        Box::pin(Operators::versions(self))
    }

    fn set_weights<'a>(
        &'a self,
        profile: &'a str,
        weights: &'a BTreeMap<String, u32>,
    ) -> BoxFuture<'a, store::Result<Result<String, Refused>>> {
        Box::pin(Operators::set_weights(self, profile, weights))
    }

    fn drain<'a>(
        &'a self,
        profile: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, store::Result<Result<String, Refused>>> {
        Box::pin(Operators::drain(self, profile, version))
    }
}
