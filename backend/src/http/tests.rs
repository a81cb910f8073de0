//! The HTTP layer alone: its seams filled with books in memory, no Redis, no PostgreSQL, no
//! backend; requests over a real socket, as a client sends them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use matchmaking_core::store::{self, CancelOutcome, EndOutcome, LiveSession, PlayerView, QueueDepth, ServerSignal};
use matchmaking_core::tickets::Joiner;
use protocol::api::{EndReason, JoinRequest, ResultReport};
use protocol::sessions::{SessionRecord, SessionState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::seams::{MatchHistory, Matchmaker, OperatorDesk, SessionDesk};
use super::{AppState, router};
use crate::config::{RuntimeKind, Settings};
use crate::history::NewAction;
use crate::history::{MatchRow, PlayerMatch};
use crate::matchmaking::JoinError;
use crate::operators::console::SignIn;
use protocol::operators::{AuditEntry, Failure, Overview};

const SECRET: &str = "http-layer-test-secret-0123456789";
const OPERATOR: &str = "operator-token-for-tests";
const SID: &str = "0a0a0a0a-0000-4000-8000-0000000000c1";

fn redis_down() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "connection refused", "10.0.0.9:6379".to_owned()))
}

/// Where each player stands, as the test says.
#[derive(Default)]
struct Players {
    cancelled: Mutex<Vec<String>>,
}

impl Matchmaker for Players {
    fn join<'a>(&'a self, body: &'a JoinRequest, _: Joiner<'a>) -> BoxFuture<'a, Result<(PlayerView, i64), JoinError>> {
        Box::pin(async move {
            match body.player_id.as_str() {
                "busy" => Err(JoinError::InSession { player: "busy".into() }),
                "down" => Err(JoinError::Store(redis_down())),
                player => Ok((
                    PlayerView::Queued {
                        queue: "default".into(),
                        ticket: player.into(),
                        joined_ms: Some(0),
                    },
                    0,
                )),
            }
        })
    }

    fn cancel<'a>(&'a self, player: &'a str) -> BoxFuture<'a, store::Result<CancelOutcome>> {
        self.cancelled.lock().unwrap().push(player.to_owned());
        Box::pin(async { Ok(CancelOutcome::NotQueued) })
    }

    fn player<'a>(&'a self, player: &'a str) -> BoxFuture<'a, store::Result<PlayerView>> {
        Box::pin(async move {
            match player {
                "alice" => Ok(PlayerView::InSession {
                    session_id: SID.into(),
                    record: Box::new(matched(&["alice", "bob"])),
                }),
                "down" => Err(redis_down()),
                _ => Ok(PlayerView::Unknown),
            }
        })
    }

    fn depths(&self) -> BoxFuture<'_, store::Result<Vec<(String, QueueDepth)>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn accepting(&self) -> bool {
        true
    }

    fn backfill<'a>(
        &'a self,
        session_id: &'a str,
        _: &'a protocol::api::BackfillAsk,
    ) -> BoxFuture<'a, Result<crate::matchmaking::BackfillChange, crate::matchmaking::BackfillError>> {
        Box::pin(async move { Err(crate::matchmaking::BackfillError::UnknownSession(session_id.to_owned())) })
    }

    fn backfill_status<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, matchmaking_core::store::Result<Option<protocol::api::BackfillStatus>>> {
        Box::pin(async { Ok(None) })
    }

    fn backfills(&self, _: &str) -> bool {
        false
    }
}

fn matched(players: &[&str]) -> SessionRecord {
    serde_json::from_value(serde_json::json!({
        "state": "matched", "players": players, "joined_ms": [0, 0], "created_ms": 0,
        "instance": "replica-a", "server": "local-1", "addr": "127.0.0.1:7777", "ready_ms": 1,
    }))
    .unwrap()
}

/// Sessions that end as the test says.
#[derive(Default)]
struct Desk {
    ended: Mutex<Vec<(String, EndReason)>>,
}

impl SessionDesk for Desk {
    fn end<'a>(
        &'a self,
        session_id: &'a str,
        reason: EndReason,
        _: Option<&'a ResultReport>,
    ) -> BoxFuture<'a, store::Result<EndOutcome>> {
        self.ended.lock().unwrap().push((session_id.to_owned(), reason));
        Box::pin(async move {
            Ok(if session_id == SID {
                EndOutcome::Ended {
                    requeued: false,
                    reason,
                }
            } else {
                EndOutcome::Unknown
            })
        })
    }

    fn live(&self) -> BoxFuture<'_, store::Result<Vec<LiveSession>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn record<'a>(&'a self, _: &'a str) -> BoxFuture<'a, store::Result<Option<SessionRecord>>> {
        Box::pin(async { Ok(None) })
    }

    fn supervised(&self) -> usize {
        0
    }

    fn server_signal<'a>(
        &'a self,
        session_id: &'a str,
        _: ServerSignal,
    ) -> BoxFuture<'a, store::Result<Option<SessionState>>> {
        Box::pin(async move { Ok((session_id == SID).then_some(SessionState::Allocating)) })
    }

    fn warm_poll<'a>(
        &'a self,
        _: &'a str,
        _: Duration,
    ) -> BoxFuture<'a, store::Result<Option<protocol::api::WarmSession>>> {
        Box::pin(async { Ok(None) })
    }
}

/// A history that knows nothing (and a PostgreSQL that is down for one player).
struct Empty;

impl MatchHistory for Empty {
    fn session_row(&self, _: Uuid) -> BoxFuture<'_, Result<Option<MatchRow>, sqlx::Error>> {
        Box::pin(async { Ok(None) })
    }

    fn player_matches<'a>(
        &'a self,
        player: &'a str,
        _: i64,
        _: i64,
    ) -> BoxFuture<'a, Result<Vec<PlayerMatch>, sqlx::Error>> {
        Box::pin(async move {
            if player == "down" {
                Err(sqlx::Error::PoolTimedOut)
            } else {
                Ok(Vec::new())
            }
        })
    }

    fn end_from_report<'a>(
        &'a self,
        _: Uuid,
        _: &'a protocol::api::ResultReport,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async { Err(sqlx::Error::PoolTimedOut) })
    }
}

/// An audit log in memory; no sign-ins, no overview.
#[derive(Default)]
struct Audit {
    actions: Mutex<Vec<NewAction>>,
}

impl OperatorDesk for Audit {
    fn overview(&self) -> BoxFuture<'_, store::Result<Arc<Overview>>> {
        Box::pin(async { Err(redis_down()) })
    }

    fn failures(&self, _: usize) -> BoxFuture<'_, store::Result<Vec<Failure>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn audit(&self, _: i64) -> BoxFuture<'_, Result<Vec<AuditEntry>, sqlx::Error>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn record<'a>(&'a self, action: &'a NewAction) -> BoxFuture<'a, Result<AuditEntry, sqlx::Error>> {
        self.actions.lock().unwrap().push(action.clone());
        Box::pin(async move {
            Ok(AuditEntry {
                id: 1,
                at: time::OffsetDateTime::UNIX_EPOCH,
                actor: action.actor.clone(),
                via: action.via.to_owned(),
                remote: action.remote.clone(),
                action: action.action.to_owned(),
                target: action.target.clone(),
                outcome: action.outcome.clone(),
            })
        })
    }

    fn sign_in<'a>(&'a self, _: &'a str) -> BoxFuture<'a, store::Result<(String, SignIn)>> {
        Box::pin(async { Err(redis_down()) })
    }

    fn signed_in<'a>(&'a self, _: &'a str) -> BoxFuture<'a, store::Result<Option<SignIn>>> {
        Box::pin(async { Ok(None) })
    }

    fn sign_out<'a>(&'a self, _: &'a str) -> BoxFuture<'a, store::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn versions(&self) -> BoxFuture<'_, store::Result<Vec<protocol::operators::ProfileVersions>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn set_weights<'a>(
        &'a self,
        profile: &'a str,
        _: &'a std::collections::BTreeMap<String, u32>,
    ) -> BoxFuture<'a, store::Result<Result<String, crate::runtime::versions::Refused>>> {
        Box::pin(async move {
            Ok(Err(crate::runtime::versions::Refused::UnknownProfile(
                profile.to_owned(),
            )))
        })
    }

    fn drain<'a>(
        &'a self,
        profile: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, store::Result<Result<String, crate::runtime::versions::Refused>>> {
        Box::pin(async move {
            Ok(Err(crate::runtime::versions::Refused::UnknownProfile(
                profile.to_owned(),
            )))
        })
    }
}

struct Layer {
    addr: std::net::SocketAddr,
    players: Arc<Players>,
    desk: Arc<Desk>,
    audit: Arc<Audit>,
    _stop: tokio_util::sync::DropGuard,
}

async fn layer() -> Layer {
    let settings: Settings = Settings::builder()
        .database_url("postgres://nowhere/none")
        .ticket_secret(SECRET)
        .admin_token(OPERATOR)
        .player_auth(identity::PlayerAuthMode::None)
        .runtime(RuntimeKind::None)
        .public_address("play.example", 443)
        .build()
        .unwrap();
    let (players, desk) = (Arc::new(Players::default()), Arc::new(Desk::default()));
    let audit = Arc::new(Audit::default());
    let state = Arc::new(AppState {
        operators: audit.clone(),
        matchmaking: players.clone(),
        sessions: desk.clone(),
        health: Arc::new(crate::health::Health::up()),
        history: Arc::new(Empty),
        auth: identity::Authenticator::new(identity::PlayerAuthMode::None, None, None, Some(OPERATOR)),
        settings,
        metrics: Arc::default(),
        http_metrics: super::metrics::HttpMetrics::default(),
        waiters: Arc::default(),
        runtime: None,
        unready: CancellationToken::new(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(crate::app::serve_http(listener, router(state), stop.clone()));
    Layer {
        addr,
        players,
        desk,
        audit,
        _stop: stop.drop_guard(),
    }
}

/// One request on a connection of its own: the status and the JSON body.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Small bodies come whole or chunked once: take the JSON object in it.
    let json = body.find('{').map_or(serde_json::Value::Null, |start| {
        let end = body.rfind('}').unwrap();
        serde_json::from_str(&body[start..=end]).unwrap()
    });
    (status, json)
}

#[tokio::test]
async fn answers_and_refusals_come_from_the_seams_alone() {
    let http = layer().await;
    // A matched player's status carries the public address and a ticket for this session.
    let (status, body) = call(http.addr, "GET", "/match/status?player_id=alice", "", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "matched");
    assert_eq!(
        (body["connect_host"].as_str(), body["connect_port"].as_u64()),
        (Some("play.example"), Some(443))
    );
    let ticket = body["ticket"].as_str().unwrap();
    let claims = protocol::TicketSecret::new(SECRET.to_owned())
        .unwrap()
        .verify(ticket, protocol::Audience::Game, protocol::ticket::unix_now())
        .unwrap();
    assert_eq!((claims.sub.as_deref(), claims.sid.as_str()), (Some("alice"), SID));
    // A refused join maps to its code and status.
    let (status, body) = call(http.addr, "POST", "/match/join", "", r#"{"player_id":"busy"}"#).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("in_session")),
        "{body}"
    );
    // Dependencies down: 503 with the dependency's code, never its detail.
    for (method, path, body, code) in [
        ("POST", "/match/join", r#"{"player_id":"down"}"#, "redis_unavailable"),
        ("GET", "/match/status?player_id=down", "", "redis_unavailable"),
        ("GET", "/players/down/matches", "", "database_unavailable"),
    ] {
        let (status, reply) = call(http.addr, method, path, "", body).await;
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (503, Some(code)),
            "{path}: {reply}"
        );
        assert!(!reply.to_string().contains("10.0.0.9"), "no internals: {reply}");
    }
    // A leave reaches the matchmaker; an unknown one is 404 not_queued.
    let (status, body) = call(http.addr, "DELETE", "/match/join/carol", "", "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_queued")));
    assert_eq!(*http.players.cancelled.lock().unwrap(), ["carol"]);
    // Ending a session: the operator's alone, and it reaches the sessions' desk.
    let path = format!("/match/{SID}/end");
    assert_eq!(call(http.addr, "POST", &path, "", "").await.0, 401);
    assert!(
        http.desk.ended.lock().unwrap().is_empty(),
        "a refused end changes nothing"
    );
    let auth = format!("Authorization: Bearer {OPERATOR}\r\n");
    let (status, body) = call(http.addr, "POST", &path, &auth, "").await;
    assert_eq!((status, body["end_reason"].as_str()), (200, Some("stopped")), "{body}");
    assert_eq!(*http.desk.ended.lock().unwrap(), [(SID.to_owned(), EndReason::Stopped)]);
    // Written to the audit log: the operator token acts as `api`, from the client's address.
    let actions = http.audit.actions.lock().unwrap().clone();
    assert_eq!(actions.len(), 1, "{actions:?}");
    let action = &actions[0];
    assert_eq!(
        (
            action.actor.as_str(),
            action.via,
            action.action,
            action.target.as_str(),
            action.outcome.as_str()
        ),
        ("api", "api", "end_session", SID, "ended")
    );
    assert_eq!(action.remote.as_deref(), Some("127.0.0.1"));
}
