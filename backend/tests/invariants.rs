//! Session invariants 1–3 and 6 (docs/architecture.md) under concurrency: three backend replicas share one Redis
//! and one PostgreSQL; 3,000 players join through all three at once while some cancel.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, eventually, settings};
use hyper::{Method, StatusCode};
use matchmaking_core::store::Store;
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

/// The ranked queue of the test below: short windows and a short max wait, so widening and
/// timeouts happen within the test.
const RANKED: &str = "queues:
  - name: ranked
    teams: 2
    team_size: 2
    max_party_size: 2
    match_on: [mode]
    skill: {attribute: skill, max_spread: 50, widen_by: 100, widen_every_seconds: 1, max_spread_limit: 400, balance_teams: true}
    latency: {attribute: latency_ms, max_ms: 40, widen_by: 20, widen_every_seconds: 1, max_ms_limit: 120}
    client_attributes: [latency_ms]
    max_wait_seconds: 4
";
const RANKED_TICKETS: usize = 3000;
const MAX_WAIT_MS: i64 = 4000;
const REGIONS: [&str; 3] = ["eu", "us", "asia"];

/// One test player: its skill, latency map and mode (a party shares the mode).
#[derive(Debug, Clone)]
struct Ranked {
    skill: f64,
    latency: HashMap<&'static str, f64>,
    mode: &'static str,
    /// The ticket's leader.
    leader: String,
    /// When its join was sent (ms since the epoch).
    sent_ms: i64,
}

fn window(start: f64, by: f64, limit: f64, wait_ms: i64) -> f64 {
    (start + by * (wait_ms / 1000) as f64).min(limit)
}

/// Invariants 1-3, 8 and 9 for a rule queue: three replicas, 3,000 ranked tickets (a fifth of
/// them parties of two) joined by a service through all three at once, some left again by a
/// party member through another replica; every session is checked against its rules as
/// widened at the moment it formed, from the outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_three_thousand_ranked_tickets_with_parties() {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let dir = std::env::temp_dir().join(format!("mp-ranked-{prefix}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("queues.yaml");
    std::fs::write(&file, RANKED).unwrap();
    let mut backends = Vec::new();
    for i in 0..3 {
        let settings = settings(&prefix, &db)
            .instance_id(&format!("replica-{i}"))
            .matchmaking_config(&file)
            .build()
            .unwrap();
        backends.push(Backend::start(settings).await);
    }
    let https: Vec<_> = backends.iter().map(|b| b.http.clone()).collect();

    let mut rng = rand::rng();
    let mut players: HashMap<String, Ranked> = HashMap::new();
    let mut tickets = Vec::new();
    for t in 0..RANKED_TICKETS {
        let size = if rng.random_bool(0.2) { 2 } else { 1 };
        let home = rng.random_range(0..3);
        let base: f64 = 1500.0 + rng.random_range(-600.0..600.0);
        let mode = if rng.random_bool(0.5) { "ctf" } else { "koth" };
        // A few players are far from every region: they can only time out.
        let stranded = rng.random_bool(0.01);
        let members: Vec<String> = (0..size).map(|k| format!("t{t:04}-{k}")).collect();
        for (k, p) in members.iter().enumerate() {
            let latency = REGIONS
                .iter()
                .enumerate()
                .map(|(r, name)| {
                    let ms = if stranded {
                        500.0
                    } else if r == home {
                        rng.random_range(5.0..45.0)
                    } else {
                        rng.random_range(60.0..160.0)
                    };
                    (*name, ms)
                })
                .collect();
            players.insert(
                p.clone(),
                Ranked {
                    skill: (base + if k == 0 { 0.0 } else { rng.random_range(-80.0..80.0) }).round(),
                    latency,
                    mode,
                    leader: members[0].clone(),
                    sent_ms: 0,
                },
            );
        }
        tickets.push(members);
    }

    let limit = Arc::new(Semaphore::new(128));
    let players = Arc::new(std::sync::Mutex::new(players));
    let mut tasks = Vec::new();
    for (t, members) in tickets.iter().enumerate() {
        let (http, other) = (https[t % 3].clone(), https[(t + 1) % 3].clone());
        let (limit, players, members) = (limit.clone(), players.clone(), members.clone());
        let cancel = t % 10 == 3;
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let attributes = |p: &str, leader: bool| {
                let players = players.lock().unwrap();
                let r = &players[p];
                let mut a = serde_json::json!({"skill": r.skill, "latency_ms": r.latency});
                if leader {
                    a["mode"] = serde_json::json!(r.mode);
                }
                a
            };
            let mut body = serde_json::json!({"player_id": members[0], "queue": "ranked",
                "attributes": attributes(&members[0], true)});
            if members.len() > 1 {
                body["party"] =
                    serde_json::json!([{"player_id": members[1], "attributes": attributes(&members[1], false)}]);
            }
            let sent = matchmaking_core::store::now_ms();
            for p in &members {
                players.lock().unwrap().get_mut(p).unwrap().sent_ms = sent;
            }
            let (status, reply) = http.post_as(&common::service_auth(), "/match/join", body).await;
            assert_eq!(status, StatusCode::OK, "{reply}");
            assert_eq!(reply["queue"], "ranked", "{reply}");
            if !cancel {
                return (members, false);
            }
            // The last member leaves through another replica: the whole ticket goes.
            let leaver = members.last().unwrap();
            let (status, _) = other
                .request(
                    Method::DELETE,
                    &format!("/match/join/{leaver}"),
                    &[("authorization", &common::service_auth())],
                    Vec::new(),
                )
                .await;
            (members, status == StatusCode::NO_CONTENT)
        }));
    }
    let mut cancelled: HashSet<String> = HashSet::new();
    for task in tasks {
        let (members, left) = task.await.unwrap();
        if left {
            cancelled.extend(members);
        }
    }
    let joins_done = tokio::time::Instant::now();
    let players = Arc::try_unwrap(players).unwrap().into_inner().unwrap();

    // Invariant 9: with no further joins, nothing waits past max_wait (plus a round and the
    // lease changing hands).
    tokio::time::sleep_until(joins_done + Duration::from_millis(MAX_WAIT_MS as u64 + 2500)).await;
    let store = Store::connect(&common::redis_url(), &prefix).await.unwrap();
    assert_eq!(
        store.queue_depths(&[store.queue("ranked")]).await.unwrap()[0].tickets,
        0,
        "tickets waited past max_wait"
    );

    // Invariant 1: every player in exactly one place.
    let mut by_session: HashMap<String, Vec<String>> = HashMap::new();
    let mut timed_out = Vec::new();
    for player in players.keys() {
        let body = https[2].status(player, 0.0).await;
        match body["status"].as_str().unwrap() {
            "unknown" => assert!(cancelled.contains(player), "{player} vanished"),
            "ended" => {
                assert!(!cancelled.contains(player), "{player} left but was placed");
                assert_eq!(body["queue"], "ranked", "{body}");
                by_session
                    .entry(body["session_id"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(player.clone());
            }
            "timed_out" => {
                assert!(!cancelled.contains(player));
                timed_out.push(player.clone());
            }
            other => panic!("{player} is {other}"),
        }
    }
    assert!(!by_session.is_empty());

    // Invariants 2 and 8, from each session's record and what the test knows of its players.
    let mut seen = HashSet::new();
    for (sid, listed) in &by_session {
        let record = store.session(sid).await.unwrap().expect("the ended record is kept");
        let p = &record.placement;
        assert_eq!(record.players.len(), 4, "{sid}");
        assert_eq!(p.teams.len(), 2);
        assert!(p.teams.iter().all(|t| t.len() == 2));
        let mut a = listed.clone();
        a.sort();
        let mut b = record.players.clone();
        b.sort();
        assert_eq!(a, b, "players' view and the record agree");
        for player in &record.players {
            assert!(seen.insert(player.clone()), "{player} in two sessions");
        }
        let oldest = *record.joined_ms.iter().min().unwrap();
        let wait = record.created_ms - oldest;
        let spread_allowed = window(50.0, 100.0, 400.0, wait);
        let latency_allowed = window(40.0, 20.0, 120.0, wait);
        let info: Vec<&Ranked> = record.players.iter().map(|x| &players[x]).collect();
        assert!(info.iter().all(|r| r.mode == info[0].mode), "modes mixed in {sid}");
        // A party's skill is its mean; a party sits on one team.
        let mut ticket_skills: HashMap<&str, Vec<f64>> = HashMap::new();
        for (player, r) in record.players.iter().zip(&info) {
            ticket_skills.entry(r.leader.as_str()).or_default().push(r.skill);
            let team = p.teams.iter().position(|t| t.contains(player)).unwrap();
            let leader_team = p.teams.iter().position(|t| t.contains(&r.leader));
            assert_eq!(leader_team, Some(team), "{player}'s party split in {sid}");
        }
        let means: Vec<f64> = ticket_skills
            .values()
            .map(|s| s.iter().sum::<f64>() / s.len() as f64)
            .collect();
        let spread = means.iter().copied().fold(f64::MIN, f64::max) - means.iter().copied().fold(f64::MAX, f64::min);
        assert!(
            spread <= spread_allowed + 1e-6,
            "{sid}: spread {spread} > {spread_allowed} after {wait} ms"
        );
        assert!((p.skill_spread.unwrap() - spread).abs() < 1e-6);
        let region = p.region.as_deref().unwrap();
        let worst = info.iter().map(|r| r.latency[region]).fold(0.0, f64::max);
        assert!(
            worst <= latency_allowed,
            "{sid}: latency {worst} > {latency_allowed} after {wait} ms"
        );
        assert!((p.max_latency_ms.unwrap() - worst).abs() < 1e-6);
    }
    // Invariant 9, the other way: nothing timed out early.
    for player in &timed_out {
        let at: f64 = redis::cmd("ZSCORE")
            .arg(format!("{{{prefix}}}:timed_out"))
            .arg(player)
            .query_async(
                &mut redis::Client::open(common::redis_url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(
            at as i64 - players[player].sent_ms >= MAX_WAIT_MS,
            "{player} timed out early"
        );
    }
    let placed: usize = by_session.values().map(Vec::len).sum();
    assert_eq!(placed + timed_out.len() + cancelled.len(), players.len());
    assert!(
        placed > players.len() / 2,
        "most players placed: {placed} of {}",
        players.len()
    );

    // The history rows carry the placement.
    eventually(Duration::from_secs(60), || async {
        let (_, health) = https[1].get("/health").await;
        (health["history_backlog"] == 0).then_some(())
    })
    .await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows: Vec<(String, Option<String>, Option<f64>)> =
        sqlx::query_as("SELECT queue, region, skill_spread FROM matches")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), by_session.len(), "one row per session");
    assert!(
        rows.iter()
            .all(|(q, region, spread)| q == "ranked" && region.is_some() && spread.is_some())
    );
    let (status, queues) = https[0].get("/queues").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(queues["queues"][0]["name"], "ranked");
    assert_eq!(queues["queues"][0]["depth"], 0);
    for backend in backends {
        backend.stop().await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
