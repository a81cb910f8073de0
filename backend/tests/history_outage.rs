//! Session invariant 6 (docs/architecture.md) with PostgreSQL taken away mid-test: matchmaking goes on, health
//! says degraded, history waits in the outbox across a backend restart, and every row lands
//! once PostgreSQL is back.

mod common;

use std::time::Duration;

use common::{Backend, Plug, eventually, settings};
use hyper::StatusCode;
use sqlx::Row;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_postgres_outage_and_a_backend_restart() {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let (host_part, name) = db.rsplit_once('/').unwrap();
    let target: std::net::SocketAddr = host_part.rsplit_once('@').unwrap().1.parse().unwrap();
    let plug = Plug::new(target).await;
    let through_plug = format!("postgres://mp@{}/{name}", plug.addr);
    let settings = settings(&prefix, &through_plug)
        .instance_id("outage-replica")
        .session_size(4)
        .flush_wait_seconds(600.0)
        .build()
        .unwrap();

    let backend = Backend::start(settings.clone()).await;
    plug.unplug();
    for i in 0..8 {
        backend.http.join(&format!("o-{i}")).await;
    }
    // Matching went on without PostgreSQL: both sessions formed and ended.
    for i in [0, 4] {
        eventually(Duration::from_secs(10), || async {
            (backend.http.status(&format!("o-{i}"), 0.0).await["status"] == "ended").then_some(())
        })
        .await;
    }
    // Health is checked every second in the background: the outage shows within a few.
    let health = eventually(Duration::from_secs(10), || async {
        let (status, health) = backend.http.get("/health").await;
        assert_eq!(status, StatusCode::OK, "ready without PostgreSQL: {health}");
        (health["postgres"] == "down" && health["history_backlog"].as_u64() >= Some(4)).then_some(health)
    })
    .await;
    assert_eq!(health["status"], "degraded", "{health}");

    // The replica restarts while PostgreSQL is still away.
    backend.stop().await;
    let backend = Backend::start(settings.clone()).await;
    for i in 8..12 {
        backend.http.join(&format!("o-{i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    plug.plug();

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows = eventually(Duration::from_secs(60), || async {
        let rows = sqlx::query(
            "SELECT status, end_reason, ended_at IS NOT NULL AS has_end, cardinality(players) AS n FROM matches",
        )
        .fetch_all(&pool)
        .await
        .ok()?;
        (rows.len() == 3 && rows.iter().all(|r| r.get::<String, _>("status") == "ended")).then_some(rows)
    })
    .await;
    for row in rows {
        assert_eq!(row.get::<Option<String>, _>("end_reason").as_deref(), Some("dry_run"));
        assert!(row.get::<bool, _>("has_end"));
        assert_eq!(row.get::<i32, _>("n"), 4);
    }
    eventually(Duration::from_secs(10), || async {
        let (_, health) = backend.http.get("/health").await;
        (health["status"] == "ok" && health["history_backlog"] == 0).then_some(())
    })
    .await;
    backend.stop().await;
}

/// Every key of the deployment with `prefix`, deleted: its Redis restarted without its data.
async fn forget_everything(prefix: &str) {
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
    }
}

/// A match that plays to its end while Redis restarts empty is recorded with its result: the
/// server's report, under its session's signed token, closes the history row Redis no longer
/// knows (it would otherwise end `lost`), with the players' attendance; a second report changes
/// nothing, and a token's session that never was a session id is still unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_report_closes_the_row_of_a_session_redis_forgot() {
    use protocol::{Claims, TicketSecret};
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    // A server that never reports by itself: the report below is the only one.
    let file = std::env::temp_dir().join(format!("quiet-{prefix}.yaml"));
    std::fs::write(
        &file,
        r#"
servers:
  quiet:
    command: ["python3", "-c", "import os, socket, time; s = socket.socket(); s.bind(('127.0.0.1', int(os.environ['MATCHPLANE_PORT_GAME']))); s.listen(); time.sleep(600)"]
    ports: [{name: game, protocol: tcp}]
    ready: port
queues:
  - {name: quiet, session_size: 2, server: quiet}
"#,
    )
    .unwrap();
    let settings = common::local_settings(&prefix, &db, &common::built_binary("game-server"))
        .matchmaking_config(&file)
        .build()
        .unwrap();
    let backend = Backend::start(settings).await;
    let http = &backend.http;
    let statuses = common::matched_in(http, "quiet", &["kept-a", "kept-b"]).await;
    let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let row = |sid: String| {
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT status, end_reason FROM matches WHERE session_id::text = $1")
                .bind(sid)
                .fetch_optional(&pool)
                .await
                .unwrap()
                .map(|r| (r.get::<String, _>("status"), r.get::<Option<String>, _>("end_reason")))
        }
    };
    eventually(Duration::from_secs(15), || async {
        (row(sid.clone()).await?.0 == "matched").then_some(())
    })
    .await;

    forget_everything(&prefix).await;
    assert_eq!(
        http.status("kept-a", 0.0).await["status"],
        "unknown",
        "Redis forgot the session"
    );
    let secret = TicketSecret::new(common::SECRET).unwrap();
    let token = secret.mint(&Claims::report(&sid, protocol::ticket::unix_now(), 600));
    let report = serde_json::json!({
        "session_id": sid, "end_reason": "completed", "requested_seconds": 30,
        "started_at": "2026-01-01T00:00:01Z", "ended_at": "2026-01-01T00:00:31Z",
        "players": [
            {"player_id": "kept-a", "joined_at": "2026-01-01T00:00:01Z", "left_at": "2026-01-01T00:00:31Z"},
            {"player_id": "kept-b", "joined_at": "2026-01-01T00:00:02Z", "left_at": null}
        ]
    });
    let path = format!("/internal/sessions/{sid}/result");
    let bearer = format!("Bearer {token}");
    for _ in 0..2 {
        let (status, body) = http.post_as(&bearer, &path, report.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["recorded"], "history", "{body}");
    }
    assert_eq!(
        row(sid.clone()).await,
        Some(("ended".to_owned(), Some("completed".to_owned())))
    );
    let joined: Vec<(String, bool)> = sqlx::query(
        "SELECT player_id, joined_at IS NOT NULL AS joined FROM match_players WHERE session_id::text = $1 ORDER BY player_id",
    )
    .bind(&sid)
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get("player_id"), r.get("joined")))
    .collect();
    assert_eq!(joined, [("kept-a".to_owned(), true), ("kept-b".to_owned(), true)]);
    // The operators' view of the session is the history's now.
    let (_, view) = http.get(&format!("/sessions/{sid}")).await;
    assert_eq!(view["end_reason"], "completed", "{view}");

    // Its players must be player ids (the row gets one for each).
    let mut bad = report.clone();
    bad["players"][0]["player_id"] = "not a player!".into();
    let (status, body) = http.post_as(&bearer, &path, bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // A token whose session is no session id: unknown, as before.
    let odd = secret.mint(&Claims::report("not-a-uuid", protocol::ticket::unix_now(), 600));
    let mut body = report.clone();
    body["session_id"] = "not-a-uuid".into();
    let (status, _) = http
        .post_as(&format!("Bearer {odd}"), "/internal/sessions/not-a-uuid/result", body)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    backend.stop().await;
    let _ = std::fs::remove_file(&file);
}
