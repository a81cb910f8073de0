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
