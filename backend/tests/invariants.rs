//! Session invariants 1–3 and 6 (docs/architecture.md) under concurrency: three backend replicas share one Redis
//! and one PostgreSQL; 3,000 players join through all three at once while some cancel.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use backend::store::Store;
use common::{Backend, eventually, settings};
use hyper::{Method, StatusCode};
use rand::Rng;
use sqlx::Row;
use tokio::sync::Semaphore;

const PLAYERS: usize = 3000;
const SIZE: usize = 12;
const MIN_PARTIAL: usize = 2;
const FLUSH_MS: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Stayed,
    Cancelled,
    CancelRefused,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_three_thousand_players() {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let mut backends = Vec::new();
    for i in 0..3 {
        let instance = format!("replica-{i}");
        let settings = settings(&prefix, &db)
            .instance_id(&instance)
            .flush_wait_seconds(1.0)
            .session_size(12)
            .build()
            .unwrap();
        backends.push(Backend::start(settings).await);
    }
    let https: Vec<_> = backends.iter().map(|b| b.http.clone()).collect();

    let limit = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::new();
    for i in 0..PLAYERS {
        let http = https[i % 3].clone();
        let other = https[(i + 1) % 3].clone();
        let limit = limit.clone();
        let cancel = rand::rng().random_bool(0.2);
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let player = format!("player-{i:04}");
            let (status, body) = http.join(&player).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if !cancel {
                return (player, Fate::Stayed);
            }
            // Cancel through another replica than the one joined through.
            let (status, body) = other
                .request(
                    Method::DELETE,
                    &format!("/match/join/{player}"),
                    &[("authorization", &common::player_auth(&player))],
                    Vec::new(),
                )
                .await;
            let fate = match status {
                StatusCode::NO_CONTENT => Fate::Cancelled,
                // In a live session (409), or in one that already ended (404: dry runs end at
                // once): either way the player must be found in a session.
                StatusCode::CONFLICT | StatusCode::NOT_FOUND => Fate::CancelRefused,
                other => panic!("cancel of {player}: {other} {body}"),
            };
            (player, fate)
        }));
    }
    let mut fates = HashMap::new();
    for task in tasks {
        let (player, fate) = task.await.unwrap();
        fates.insert(player, fate);
    }
    let joins_done = tokio::time::Instant::now();

    // Invariant 3: leftovers are matched within FLUSH_WAIT + 1 s, with no further joins.
    let store = Store::connect(&common::redis_url(), &prefix).await.unwrap();
    tokio::time::sleep_until(joins_done + Duration::from_millis(FLUSH_MS as u64 + 1000)).await;
    let leftover = store.queue_depth().await.unwrap();
    assert!(
        leftover < MIN_PARTIAL as u64,
        "{leftover} players still queued after FLUSH_WAIT + 1 s"
    );

    // Invariant 1: every join ends in exactly one place.
    let mut by_session: HashMap<String, Vec<String>> = HashMap::new();
    let mut queued = 0;
    for (player, fate) in &fates {
        let body = https[0].status(player, 0.0).await;
        let status = body["status"].as_str().unwrap();
        match (fate, status) {
            (Fate::Cancelled, "unknown") => {}
            (Fate::Cancelled, other) => panic!("{player} cancelled but is {other}"),
            (_, "ended") => {
                assert_eq!(body["end_reason"], "dry_run");
                by_session
                    .entry(body["session_id"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(player.clone());
            }
            (Fate::Stayed, "queued") => queued += 1,
            (fate, other) => panic!("{player} ({fate:?}) is {other}"),
        }
    }
    assert_eq!(queued, leftover as usize);

    // Invariant 2 and the flush rule, from each session's own record.
    let mut seen = HashSet::new();
    for (sid, players) in &by_session {
        let record = store.session(sid).await.unwrap().expect("the ended record is kept");
        let (created, joined) = (record.created_ms, &record.joined_ms);
        let listed: Vec<&str> = record.players.iter().map(String::as_str).collect();
        assert!(
            (MIN_PARTIAL..=SIZE).contains(&listed.len()),
            "session {sid} has {} players",
            listed.len()
        );
        let mut sorted = players.clone();
        sorted.sort();
        let mut from_record: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
        from_record.sort();
        assert_eq!(sorted, from_record, "players' view and the session record agree");
        for p in &listed {
            assert!(seen.insert(p.to_string()), "{p} is in two sessions");
        }
        if listed.len() < SIZE {
            let oldest = *joined.iter().min().unwrap();
            assert!(
                created - oldest >= FLUSH_MS,
                "partial session {sid} formed {} ms after its oldest join",
                created - oldest
            );
        }
    }
    let placed: usize = by_session.values().map(Vec::len).sum();
    let cancelled = fates.values().filter(|f| **f == Fate::Cancelled).count();
    assert_eq!(placed + cancelled + queued, PLAYERS);
    assert!(by_session.len() >= (PLAYERS - cancelled) / SIZE);

    // Invariant 6: exactly one ended row per session, with matching players.
    eventually(Duration::from_secs(60), || async {
        let (_, health) = https[1].get("/health").await;
        (health["history_backlog"] == 0).then_some(())
    })
    .await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows = sqlx::query(
        "SELECT session_id::text AS sid, status, players, ended_at IS NOT NULL AS ended, end_reason FROM matches",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), by_session.len(), "one row per session");
    for row in rows {
        let sid: String = row.get("sid");
        let mut players: Vec<String> = row.get("players");
        players.sort();
        let mut want = by_session[&sid].clone();
        want.sort();
        assert_eq!(players, want);
        assert_eq!(row.get::<String, _>("status"), "ended");
        assert!(row.get::<bool, _>("ended"));
        assert_eq!(row.get::<Option<String>, _>("end_reason").as_deref(), Some("dry_run"));
    }
    let player_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM match_players")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(player_rows as usize, placed);

    // A player's history reads back through the API.
    let someone = &by_session.values().next().unwrap()[0];
    let (status, history) = https[2].get(&format!("/players/{someone}/matches")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["matches"].as_array().unwrap().len(), 1);

    for backend in backends {
        backend.stop().await;
    }
}
