//! Backfill against a real Redis and PostgreSQL: a running session's server asks for players
//! (the SDK's call, with its report token), or matchplane asks for it when a player stays gone
//! in a queue that backfills on leave; the rule former places waiting tickets into the open
//! slots before new sessions, within the rules, onto the short team; the built-in game server
//! takes the late joiner and tells the others.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use backend::matchmaking::Matchmaking;
use common::{Backend, eventually, local_settings, start_proxy};
use hyper::StatusCode;
use matchmaking_core::queues::Queues;
use matchmaking_core::store::{EndOutcome, PlayerView, ServerRoute, Store, now_ms};
use protocol::api::EndReason;
use protocol::sessions::{Identity, SessionState};
use protocol::{Claims, TicketSecret};
use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const QUEUES: &str = "queues:
  - name: duo
    teams: 2
    team_size: 2
    max_party_size: 2
    match_on: [mode]
    skill: {attribute: skill, max_spread: 100, widen_by: 100, widen_every_seconds: 5, max_spread_limit: 400, balance_teams: true}
    latency: {attribute: latency_ms, max_ms: 50}
    max_wait_seconds: 120
    backfill: {max_seconds: 60}
  - name: plain
    teams: 2
    team_size: 2
";

fn queues() -> Queues {
    Queues::parse(QUEUES).unwrap()
}

/// Joins a ticket to `duo` as a service: `players` with their skills, `mode`, all near `eu`.
async fn join(store: &Store, players: &[(&str, f64)], mode: &str) {
    common::join_rule_ticket(store, queues().get("duo").unwrap(), players, mode, now_ms()).await;
}

/// Forms `duo` once and marks the session's (dry) server ready: a running 2v2.
async fn running_duo(store: &Store, matchmaking: &Matchmaking, players: &[(&str, f64)]) -> String {
    for p in players {
        join(store, &[*p], "ctf").await;
    }
    let duo = matchmaking.queues().get("duo").unwrap().clone();
    let formed = matchmaking.form(&duo, 10).await.unwrap();
    assert_eq!(formed.len(), 1, "{formed:?}");
    let sid = formed[0].session_id.clone();
    let route = ServerRoute {
        server: "dry",
        addr: "127.0.0.1:9",
        udp_addr: None,
        identity: Identity::JoinLine,
        version: None,
    };
    store.mark_ready_at(&sid, &route, now_ms()).await.unwrap();
    sid
}

/// A server's call: release `release`, then set the open slots.
async fn ask(
    mm: &Matchmaking,
    sid: &str,
    slots: protocol::api::Slots,
    release: &[String],
) -> Result<backend::matchmaking::BackfillChange, backend::matchmaking::BackfillError> {
    let release = matchmaking_core::store::Release {
        players: release,
        gone_since: None,
    };
    mm.backfill(sid, &slots, matchmaking_core::store::SlotsMode::Set, release)
        .await
}

fn in_session(view: &PlayerView) -> Option<&str> {
    match view {
        PlayerView::InSession { session_id, .. } => Some(session_id),
        _ => None,
    }
}

/// A released player's slot is filled by the nearest waiting ticket, on its team, before the
/// rest form a session; the record, the request and the player's standing say so.
#[tokio::test]
async fn a_slot_opened_by_a_release_is_filled_on_the_short_team_before_new_sessions_form() {
    let store = common::store().await;
    let mm = Matchmaking::standalone(store.clone(), "replica-a", queues());
    let sid = running_duo(
        &store,
        &mm,
        &[("a", 1500.0), ("b", 1510.0), ("c", 1490.0), ("d", 1505.0)],
    )
    .await;
    let record = store.session(&sid).await.unwrap().unwrap();
    let team_of = |teams: &[Vec<String>], p: &str| teams.iter().position(|t| t.iter().any(|q| q == p)).unwrap();
    let leaver_team = team_of(&record.placement.teams, "b");

    // Four waiting tickets that would form a session of their own.
    for (p, skill) in [("w1", 1800.0), ("w2", 1520.0), ("w3", 1530.0), ("w4", 1540.0)] {
        join(&store, &[(p, skill)], "ctf").await;
    }
    // The server releases "b" and asks for one player on its team.
    let mut slots = vec![0, 0];
    slots[leaver_team] = 1;
    let change = mm
        .backfill(
            &sid,
            &protocol::api::Slots::PerTeam(slots.clone()),
            matchmaking_core::store::SlotsMode::Set,
            matchmaking_core::store::Release {
                players: &["b".to_owned()],
                gone_since: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(change.released, ["b"]);
    assert_eq!(change.status.slots, slots);
    assert!(change.status.since.is_some());
    assert_eq!(change.status.skill_spread, Some(100.0));
    assert!(!change.players.contains(&"b".to_owned()));
    assert_eq!(in_session(&store.player("b").await.unwrap()), None, "b may join again");

    let duo = mm.queues().get("duo").unwrap().clone();
    let formed = mm.form(&duo, 10).await.unwrap();
    assert!(formed.is_empty(), "three left of four: no new 2v2 ({formed:?})");
    let record = store.session(&sid).await.unwrap().unwrap();
    // The nearest in skill within the window (1800 is outside it) took the slot.
    assert_eq!(record.players.len(), 4, "{record:?}");
    assert!(record.players.contains(&"w2".to_owned()), "{:?}", record.players);
    assert_eq!(team_of(&record.placement.teams, "w2"), leaver_team);
    assert_eq!(record.roster_version, 2, "one release, one placement");
    assert!(record.backfilled.contains_key("w2"));
    assert_eq!(in_session(&store.player("w2").await.unwrap()), Some(sid.as_str()));
    assert_eq!(
        store.backfill_request(&sid).await.unwrap(),
        None,
        "filled: the request is gone"
    );
    assert!(
        matches!(store.player("w3").await.unwrap(), PlayerView::Queued { .. }),
        "the others wait"
    );

    // Asking for more than the roster leaves room for is capped; per-team slots must match.
    let change = ask(&mm, &sid, protocol::api::Slots::PerTeam(vec![3, 3]), &[])
        .await
        .unwrap();
    assert_eq!(change.status.slots, [0, 0], "a full session has no room");
    assert!(change.status.since.is_none());
    let wrong = ask(&mm, &sid, protocol::api::Slots::Total(1), &[]).await;
    assert!(
        matches!(wrong, Err(backend::matchmaking::BackfillError::BadSlots(_))),
        "{wrong:?}"
    );
}

/// A request ends with its session; a session not running, or of a queue without backfill,
/// takes none.
#[tokio::test]
async fn a_request_ends_with_its_session_and_only_running_sessions_of_backfilling_queues_ask() {
    let store = common::store().await;
    let mm = Matchmaking::standalone(store.clone(), "replica-a", queues());
    let sid = running_duo(
        &store,
        &mm,
        &[("a", 1500.0), ("b", 1500.0), ("c", 1500.0), ("d", 1500.0)],
    )
    .await;
    let teams = store.session(&sid).await.unwrap().unwrap().placement.teams;
    let release = [teams[0][0].clone(), teams[1][0].clone()];
    let change = ask(&mm, &sid, protocol::api::Slots::PerTeam(vec![1, 1]), &release)
        .await
        .unwrap();
    assert_eq!(change.status.slots.iter().sum::<u32>(), 2);
    assert!(store.backfill_request(&sid).await.unwrap().is_some());
    let ended = store
        .end_session(&sid, EndReason::Completed, now_ms(), None)
        .await
        .unwrap();
    assert!(matches!(ended, EndOutcome::Ended { .. }));
    assert_eq!(
        store.backfill_request(&sid).await.unwrap(),
        None,
        "withdrawn by the end"
    );
    // Tickets that arrive afterwards form among themselves, never into the ended session.
    for p in ["x1", "x2", "x3", "x4"] {
        join(&store, &[(p, 1500.0)], "ctf").await;
    }
    let duo = mm.queues().get("duo").unwrap().clone();
    let formed = mm.form(&duo, 10).await.unwrap();
    assert_eq!(formed.len(), 1);
    assert_ne!(formed[0].session_id, sid);
    let again = ask(&mm, &sid, protocol::api::Slots::PerTeam(vec![1, 0]), &[]).await;
    assert!(
        matches!(again, Err(backend::matchmaking::BackfillError::NotRunning(..))),
        "{again:?}"
    );
    // Still allocating: not running either.
    let allocating = &formed[0].session_id;
    let early = ask(&mm, allocating, protocol::api::Slots::PerTeam(vec![1, 0]), &[]).await;
    assert!(matches!(
        early,
        Err(backend::matchmaking::BackfillError::NotRunning(..))
    ));
    let unknown = ask(
        &mm,
        "00000000-0000-4000-8000-00000000dead",
        protocol::api::Slots::Total(1),
        &[],
    )
    .await;
    assert!(matches!(
        unknown,
        Err(backend::matchmaking::BackfillError::UnknownSession(_))
    ));
}

/// A party goes whole into a team with room for it, and a request open past its queue's
/// `max_seconds` ends unfilled at the next round.
#[tokio::test]
async fn a_party_goes_whole_into_the_room_and_a_request_expires_unfilled() {
    let store = common::store().await;
    let mm = Matchmaking::standalone(store.clone(), "replica-a", queues());
    let sid = running_duo(
        &store,
        &mm,
        &[("a", 1500.0), ("b", 1500.0), ("c", 1500.0), ("d", 1500.0)],
    )
    .await;
    let record = store.session(&sid).await.unwrap().unwrap();
    let team0 = record.placement.teams[0].clone();
    ask(&mm, &sid, protocol::api::Slots::PerTeam(vec![2, 0]), &team0)
        .await
        .unwrap();
    join(&store, &[("p1", 1500.0), ("p2", 1520.0)], "ctf").await;
    join(&store, &[("koth", 1500.0)], "koth").await;
    let duo = mm.queues().get("duo").unwrap().clone();
    mm.form(&duo, 10).await.unwrap();
    let record = store.session(&sid).await.unwrap().unwrap();
    let mut team = record.placement.teams[0].clone();
    team.sort();
    assert_eq!(team, ["p1", "p2"], "{record:?}");
    assert!(!record.players.contains(&"koth".to_owned()), "another mode never fits");

    // A request whose slots opened a minute ago ends unfilled.
    let other = running_duo(
        &store,
        &mm,
        &[("e", 1500.0), ("f", 1500.0), ("g", 1500.0), ("h", 1500.0)],
    )
    .await;
    ask(
        &mm,
        &other,
        protocol::api::Slots::PerTeam(vec![1, 0]),
        &["e".to_owned()],
    )
    .await
    .unwrap();
    let mut request = store.backfill_request(&other).await.unwrap().unwrap();
    request.since_ms -= 60_000;
    let _: () = redis::AsyncCommands::hset(
        &mut store.conn(),
        store.keys().backfill(),
        &other,
        serde_json::to_string(&request).unwrap(),
    )
    .await
    .unwrap();
    mm.form(&duo, 10).await.unwrap();
    assert_eq!(store.backfill_request(&other).await.unwrap(), None, "expired");
}

/// Three replicas race: joins and backfill requests arrive through all of them while the
/// forming lease changes hands in the middle of rounds; no player is ever in two sessions, no
/// session ever has more players than its size, and every backfilled player matches its
/// session's `match_on` and region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_race_backfill_against_new_sessions() {
    let store = common::store().await;
    let replicas: Vec<Matchmaking> = (0..3)
        .map(|i| Matchmaking::standalone(store.clone(), &format!("replica-{i}"), queues()))
        .collect();
    let duo = queues().get("duo").unwrap().clone();
    // Twenty running sessions.
    let mut running = Vec::new();
    for s in 0..20 {
        let players: Vec<(String, f64)> = (0..4).map(|k| (format!("s{s}p{k}"), 1500.0)).collect();
        let refs: Vec<(&str, f64)> = players.iter().map(|(p, k)| (p.as_str(), *k)).collect();
        running.push(running_duo(&store, &replicas[0], &refs).await);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    // Each replica forms in a loop.
    for mm in replicas.clone() {
        let (duo, stop) = (duo.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = mm.form(&duo, 64).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // The lease is taken from its holder again and again, so rounds of two replicas overlap.
    {
        let (store, stop) = (store.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let lease = store.keys().of_queue("duo").lease;
            while !stop.is_cancelled() {
                let _: () = redis::AsyncCommands::del(&mut store.conn(), &lease).await.unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    // Servers release players and ask for slots through every replica.
    for (i, sid) in running.iter().enumerate() {
        let (mm, sid, store) = (replicas[i % 3].clone(), sid.clone(), store.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..4 {
                let Some(record) = store.session(&sid).await.unwrap() else {
                    return;
                };
                let leaver = record.placement.teams[round % 2].first().cloned();
                let release: Vec<String> = leaver.into_iter().collect();
                let mut slots = vec![0, 0];
                slots[round % 2] = 1;
                let _ = mm
                    .backfill(
                        &sid,
                        &protocol::api::Slots::PerTeam(slots),
                        matchmaking_core::store::SlotsMode::Add,
                        matchmaking_core::store::Release {
                            players: &release,
                            gone_since: None,
                        },
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Four hundred players join, in both modes.
    for j in 0..400 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(j % 100)).await;
            let mode = if j % 5 == 0 { "koth" } else { "ctf" };
            join(&store, &[(&format!("j{j}"), 1500.0 + (j % 7) as f64)], mode).await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    // Every live session: at most its size, everyone in it once, its pointer naming it.
    let live = store.live_sessions().await.unwrap();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut backfilled = 0;
    for s in &live {
        let r = &s.record;
        assert!(r.players.len() <= 4, "{} has {:?}", s.session_id, r.players);
        for team in &r.placement.teams {
            assert!(team.len() <= 2, "{:?}", r.placement.teams);
        }
        let unique: HashSet<&String> = r.players.iter().collect();
        assert_eq!(unique.len(), r.players.len(), "{:?}", r.players);
        for p in &r.players {
            if let Some(other) = seen.insert(p.clone(), s.session_id.clone()) {
                panic!("{p} is in {other} and {}", s.session_id);
            }
        }
        for p in r.backfilled.keys().filter(|p| r.players.contains(p)) {
            backfilled += 1;
            // Only the running ctf sessions asked for players: a koth joiner never fits.
            assert!(running.contains(&s.session_id), "{p} backfilled into {}", s.session_id);
            let n: usize = p[1..].parse().unwrap();
            assert!(!n.is_multiple_of(5), "a koth player {p} went into a ctf session");
        }
    }
    assert!(backfilled > 0, "some slots were filled");
    // No player is left nowhere: each joiner is in a session or still queued.
    for j in 0..400 {
        let p = format!("j{j}");
        let view = store.player(&p).await.unwrap();
        match view {
            PlayerView::InSession { session_id, .. } => assert_eq!(seen.get(&p), Some(&session_id)),
            PlayerView::Queued { .. } => assert!(!seen.contains_key(&p)),
            other => panic!("{p}: {other:?}"),
        }
    }
    // No request outlives room: open slots never exceed what the roster leaves.
    for s in &live {
        if let Some(request) = store.backfill_request(&s.session_id).await.unwrap() {
            let open: u32 = request.slots.iter().sum();
            assert!(
                s.record.players.len() + open as usize <= 4,
                "{request:?} {:?}",
                s.record.players
            );
        }
    }
    assert!(live.iter().all(|s| s.record.state != SessionState::Ended));
}

/// The whole path on the local runtime: a player of the built-in game server leaves a running
/// match and stays gone past the queue's leave grace; a new player joins and is matched into the
/// running session, plays through the proxy with its ticket, and the others hear of it. The
/// server's own call (its report token) opens slots too; history has the late joiner's row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_who_stays_gone_is_replaced_in_the_running_match_through_the_proxy() {
    let dir = std::env::temp_dir().join(format!("mp-backfill-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("queues.yaml");
    std::fs::write(
        &file,
        "queues:
  - name: casual
    session_size: 3
    min_session_size: 2
    flush_wait_seconds: 0.2
    backfill: {on_leave: true, leave_grace_seconds: 1}
",
    )
    .unwrap();
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let settings = local_settings(&prefix, &db, &common::built_binary("game-server"))
        .matchmaking_config(&file)
        .build()
        .unwrap();
    let backend = Backend::start(settings).await;
    let (proxy, _stop) = start_proxy(backend.addr, &prefix, &["--player-rate-limit-per-second", "0"]).await;
    let http = &backend.http;
    let statuses = common::matched_in(http, "casual", &["a", "b"]).await;
    let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();

    let a = Player::join(proxy, &statuses[0]).await;
    let mut a = a;
    let mut b = Player::join(proxy, &statuses[1]).await;
    a.send("REQUEST_MATCH 30").await;
    a.expect("RUNNING_LENGTH 30").await;
    a.expect("STATE running").await;
    b.expect("STATE running").await;

    // The server's own call with its report token: one more slot while both play.
    let secret = TicketSecret::new(common::SECRET.as_bytes().to_vec()).unwrap();
    let token = secret.mint(&Claims::report(&sid, protocol::ticket::unix_now(), 600));
    let path = format!("/internal/sessions/{sid}/backfill");
    let bearer = format!("Bearer {token}");
    let (status, body) = http.post_as(&bearer, &path, json!({"slots": 5})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["backfill"]["slots"], json!([1]), "capped at the room: {body}");
    let (status, body) = http.post_as(&bearer, &path, json!({"slots": 0})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["backfill"]["slots"], json!([0]), "withdrawn: {body}");
    // Refusals: a token of another session, none, a bad body, per-team slots in a queue
    // without teams.
    let other = secret.mint(&Claims::report(
        "00000000-0000-4000-8000-000000000000",
        protocol::ticket::unix_now(),
        600,
    ));
    let (status, _) = http
        .post_as(&format!("Bearer {other}"), &path, json!({"slots": 1}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = http.post(&path, json!({"slots": 1})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for bad in [
        json!({"slots": -1}),
        json!({"slots": [1, 1]}),
        json!({"slot": 1}),
        json!({"slots": 1, "release": ["bad id!"]}),
    ] {
        let (status, body) = http.post_as(&bearer, &path, bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }

    // "b" leaves and stays gone past the grace: its place opens, and "c" takes it.
    b.send("QUIT").await;
    drop(b);
    let (status, body) = http
        .post_as(
            &common::service_auth(),
            "/match/join",
            json!({"player_id": "c", "queue": "casual"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c_status = eventually(Duration::from_secs(15), || async {
        let s = http.status("c", 1.0).await;
        (s["status"] == "matched").then_some(s)
    })
    .await;
    assert_eq!(
        c_status["session_id"],
        sid.as_str(),
        "placed into the running session: {c_status}"
    );
    let mut c = Player::join(proxy, &c_status).await;
    c.expect("STATE running").await;
    a.expect("RELEASED b").await;
    a.expect("JOINED c").await;
    // "b" may play again: it is no longer in the session.
    let b_status = http.status("b", 0.0).await;
    assert_ne!(b_status["session_id"], sid.as_str(), "{b_status}");

    // The roster the server reads says so too.
    let roster_path = format!("/internal/sessions/{sid}/roster");
    let (status, roster) = http.post_as(&bearer, &roster_path, json!({"after": 0})).await;
    assert_eq!(status, StatusCode::OK, "{roster}");
    assert_eq!(roster["players"], json!(["a", "c"]));
    assert_eq!(roster["backfills"], true);
    assert_eq!(roster["version"], 2);
    // The view operators read.
    let (status, view) = http.get(&format!("/sessions/{sid}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["players"], json!(["a", "c"]));

    // The match plays to its end; history has all three, the late joiner with its times.
    a.send("QUIT").await;
    c.send("QUIT").await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let players: Vec<String> = eventually(Duration::from_secs(30), || async {
        let row = sqlx::query("SELECT players, end_reason FROM matches WHERE session_id::text = $1")
            .bind(&sid)
            .fetch_optional(&pool)
            .await
            .unwrap()?;
        row.get::<Option<String>, _>("end_reason")?;
        Some(row.get::<Vec<String>, _>("players"))
    })
    .await;
    let mut sorted = players.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b", "c"], "{players:?}");
    let joined: Option<time::OffsetDateTime> = eventually(Duration::from_secs(10), || async {
        sqlx::query("SELECT joined_at FROM match_players WHERE session_id::text = $1 AND player_id = 'c'")
            .bind(&sid)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .map(|r| r.get::<Option<time::OffsetDateTime>, _>("joined_at"))
    })
    .await;
    assert!(joined.is_some(), "c's row has its join time");
    backend.stop().await;
}

/// One player's game connection through the proxy.
struct Player {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Player {
    async fn join(proxy: std::net::SocketAddr, status: &Value) -> Player {
        let stream = TcpStream::connect(proxy).await.unwrap();
        let (read, mut write) = stream.into_split();
        let ticket = status["ticket"].as_str().unwrap();
        write.write_all(format!("JOIN {ticket}\n").as_bytes()).await.unwrap();
        let mut player = Player {
            lines: BufReader::new(read).lines(),
            write,
        };
        let welcome = player.next().await;
        assert!(welcome.starts_with("WELCOME "), "{welcome}");
        player
    }

    async fn next(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(15), self.lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("the connection is open")
    }

    async fn send(&mut self, line: &str) {
        self.write.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    }

    /// Reads until `line` (skipping others).
    async fn expect(&mut self, line: &str) {
        loop {
            if self.next().await == line {
                return;
            }
        }
    }
}
