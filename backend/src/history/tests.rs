//! The history against a real PostgreSQL.
use protocol::api::{EndReason, PlayerResult, ResultReport};

use std::time::Duration;

use matchmaking_core::lifecycle::{Change, SessionEvent};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::rows::{Entry, apply_events};
use super::writer::{CLAIM_EVERY, CLAIM_IDLE_MS, GROUP, rejects_the_data};
use super::*;
use protocol::sessions::Placement;
use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};

/// Each player row's `(xmin, joined_at, left_at)`: `xmin` changes with every new row
/// version, so an update that changes nothing shows.
async fn player_rows(pool: &PgPool) -> Vec<(String, String, Option<OffsetDateTime>, Option<OffsetDateTime>)> {
    sqlx::query_as("SELECT player_id, xmin::text, joined_at, left_at FROM match_players ORDER BY player_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn entry(sid: Uuid, at_ms: i64, change: Change, players: &[&str]) -> Entry {
    Entry {
        id: format!("{at_ms}-0"),
        session_id: sid,
        event: SessionEvent {
            session_id: sid.to_string(),
            players: players.iter().map(|p| (*p).to_owned()).collect(),
            at_ms,
            change,
        },
    }
}

/// `sid` failing at 2 s, its players requeued.
fn failed_end(sid: Uuid) -> Entry {
    let failed = Change::Ended {
        reason: EndReason::Failed,
        requeued: true,
        report: None,
    };
    entry(sid, 2_000, failed, &["a", "b"])
}

async fn apply(pool: &PgPool, sid: Uuid, at_ms: i64, change: Change) {
    let entry = entry(sid, at_ms, change, &["a", "b"]);
    let mut tx = pool.begin().await.unwrap();
    apply_events(&mut tx, std::slice::from_ref(&entry)).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn events_without_attendance_leave_the_player_rows_untouched() {
    let pool = PgPool::connect(&testkit::fresh_database().await).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    let sid = Uuid::new_v4();
    let formed = Change::Formed {
        instance: "r1".into(),
        placement: Placement::default(),
    };
    apply(&pool, sid, 1_000, formed).await;
    let rows = player_rows(&pool).await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|(_, _, joined, left)| joined.is_none() && left.is_none())
    );

    // Ready, and an end without a report: the session row moves on, the player rows keep
    // their row versions.
    let ready = Change::Ready {
        server: "s".into(),
        addr: "127.0.0.1:1".into(),
        version: None,
    };
    apply(&pool, sid, 2_000, ready).await;
    let ended = |report| Change::Ended {
        reason: EndReason::Completed,
        requeued: false,
        report,
    };
    apply(&pool, sid, 3_000, ended(None)).await;
    assert_eq!(player_rows(&pool).await, rows, "no new row versions");
    let status: String = sqlx::query_scalar("SELECT status FROM matches WHERE session_id = $1")
        .bind(sid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "ended");

    // The report's attendance is written: `a` played, `b` never joined and stays as it was.
    let joined = from_ms(2_500);
    let left = from_ms(2_900);
    let report = ResultReport {
        session_id: sid.to_string(),
        end_reason: EndReason::Completed,
        requested_seconds: None,
        started_at: Some(joined),
        ended_at: left,
        players: vec![
            PlayerResult {
                player_id: "a".into(),
                joined_at: Some(joined),
                left_at: Some(left),
            },
            PlayerResult {
                player_id: "b".into(),
                joined_at: None,
                left_at: None,
            },
        ],
    };
    apply(&pool, sid, 3_000, Change::Reported { report: report.clone() }).await;
    let reported = player_rows(&pool).await;
    assert_ne!(reported[0].1, rows[0].1, "a's row was rewritten");
    assert_eq!((reported[0].2, reported[0].3), (Some(joined), Some(left)));
    assert_eq!(reported[1], rows[1], "b's row is untouched");

    // The same report again, or an end without one, changes nothing more.
    apply(&pool, sid, 3_000, Change::Reported { report }).await;
    apply(&pool, sid, 3_000, ended(None)).await;
    assert_eq!(player_rows(&pool).await, reported);
}

/// A session's row and its players' rows, without the session's id (to compare sessions).
async fn rows_of(pool: &PgPool, sid: Uuid) -> (serde_json::Value, serde_json::Value) {
    sqlx::query_as(
        "SELECT (SELECT to_jsonb(m) - 'session_id' FROM matches m WHERE session_id = $1),
                (SELECT COALESCE(jsonb_agg(to_jsonb(p) - 'session_id' ORDER BY player_id), '[]')
                 FROM match_players p WHERE session_id = $1)",
    )
    .bind(sid)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A session's events written in one batch, in any order, repeated, beside other
/// sessions' events, leave its rows exactly as writing each event on its own does: the
/// batch is merged by the rules the upsert applies, one row per session and player.
#[tokio::test]
async fn a_batch_leaves_the_rows_as_its_events_one_at_a_time_do() {
    let pool = PgPool::connect(&testkit::fresh_database().await).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    let report = |left_ms: i64| ResultReport {
        session_id: String::new(),
        end_reason: EndReason::Completed,
        requested_seconds: Some(30),
        started_at: Some(from_ms(2_500)),
        ended_at: from_ms(left_ms),
        players: vec![
            PlayerResult {
                player_id: "a".into(),
                joined_at: Some(from_ms(2_600)),
                left_at: Some(from_ms(left_ms)),
            },
            PlayerResult {
                player_id: "b".into(),
                joined_at: None,
                left_at: None,
            },
        ],
    };
    let placement = Placement {
        queue: Some("ranked".into()),
        teams: vec![vec!["a".into()], vec!["b".into()]],
        region: Some("eu".into()),
        skill_spread: Some(12.5),
        team_skill_gap: Some(3.0),
        max_latency_ms: Some(40.0),
        max_wait_ms: Some(900),
        version: None,
    };
    let events = [
        (
            1_000,
            Change::Formed {
                instance: "r1".into(),
                placement,
            },
        ),
        (
            2_000,
            Change::Ready {
                server: "s1".into(),
                addr: "127.0.0.1:1".into(),
                version: Some("v1".into()),
            },
        ),
        (
            2_100,
            Change::Ready {
                server: "s2".into(),
                addr: "127.0.0.1:2".into(),
                version: Some("v1".into()),
            },
        ),
        (
            9_000,
            Change::Ended {
                reason: EndReason::Completed,
                requeued: false,
                report: Some(report(8_000)),
            },
        ),
        (9_500, Change::Reported { report: report(8_500) }),
        (9_600, Change::TimedOut { queue: "ranked".into() }),
    ];
    // Orders of the events by index, repeats included.
    let orders: [&[usize]; 6] = [
        &[0, 1, 2, 3, 4, 5],
        &[5, 4, 3, 2, 1, 0],
        &[3, 0, 4, 2, 1],
        &[1, 1, 3, 0, 3, 2, 4],
        &[4, 3],
        &[2, 0, 1, 4, 3, 0, 2],
    ];
    // Half the sessions start as an end the reconciler wrote (`lost`), which an end event
    // replaces.
    let lost_first = |sid: Uuid| {
        let pool = pool.clone();
        async move {
            apply(
                &pool,
                sid,
                500,
                Change::Formed {
                    instance: "r0".into(),
                    placement: Placement::default(),
                },
            )
            .await;
            sqlx::query(
                "UPDATE matches SET status = 'ended', ended_at = now(), end_reason = 'lost' WHERE session_id = $1",
            )
            .bind(sid)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let mut pairs = Vec::new();
    let mut per_session = Vec::new();
    for (n, order) in orders.iter().enumerate() {
        for lost in [false, true] {
            let (one_by_one, batched) = (Uuid::new_v4(), Uuid::new_v4());
            if lost {
                lost_first(one_by_one).await;
                lost_first(batched).await;
            }
            let mut own = std::collections::VecDeque::new();
            for &i in *order {
                let (at, change) = &events[i];
                apply(&pool, one_by_one, *at, change.clone()).await;
                own.push_back(entry(batched, *at, change.clone(), &["a", "b"]));
            }
            per_session.push(own);
            pairs.push((n, lost, one_by_one, batched));
        }
    }
    // Every session's events in one batch, each in its order, interleaved with the others'.
    let mut batch = Vec::new();
    while per_session.iter().any(|own| !own.is_empty()) {
        batch.extend(per_session.iter_mut().filter_map(|own| own.pop_front()));
    }
    let mut tx = pool.begin().await.unwrap();
    apply_events(&mut tx, &batch).await.unwrap();
    tx.commit().await.unwrap();

    for &(n, lost, one_by_one, batched) in &pairs {
        let expected = rows_of(&pool, one_by_one).await;
        assert_eq!(rows_of(&pool, batched).await, expected, "order {n}, lost first {lost}");
    }
    // What the rows say for the order with every event once, after a `lost` end.
    let (_, _, _, batched) = pairs[1];
    let row: (
        String,
        String,
        String,
        String,
        String,
        i32,
        String,
        OffsetDateTime,
        OffsetDateTime,
    ) = sqlx::query_as(
        "SELECT status, server_name, backend_instance, end_reason, queue, requested_seconds,
                    array_to_string(players, ','), created_at, ended_at
             FROM matches WHERE session_id = $1",
    )
    .bind(batched)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "ended".into(),
            "s2".into(),
            "r0".into(),
            "completed".into(),
            "ranked".into(),
            30,
            "a,b".into(),
            from_ms(500),
            from_ms(9_000)
        )
    );
    let version: Option<String> = sqlx::query_scalar("SELECT version FROM matches WHERE session_id = $1")
        .bind(batched)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version.as_deref(), Some("v1"), "the ready event's version");
    let players: Vec<(String, Option<OffsetDateTime>, Option<OffsetDateTime>)> =
        sqlx::query_as("SELECT player_id, joined_at, left_at FROM match_players WHERE session_id = $1 ORDER BY 1")
            .bind(batched)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        players,
        vec![
            ("a".into(), Some(from_ms(2_600)), Some(from_ms(8_500))),
            ("b".into(), None, None)
        ]
    );
}

/// A replica that stops answering in the middle of a transaction (its connection left open,
/// idle in the transaction, holding its session's row, as when its node drops off the
/// network) does not stop another replica's writes: the other's statement gives up on the
/// lock after the lock bound (SQLSTATE 55P03, nothing parked, the batch stays to be tried
/// again), PostgreSQL ends the stuck transaction after the idle bound, and the retry lands.
#[tokio::test]
async fn a_replica_stuck_in_a_transaction_does_not_hold_up_the_others_writes() {
    let url = testkit::fresh_database().await;
    let redis_url = testkit::redis_url();
    let store = Store::connect(&redis_url, &testkit::unique_prefix()).await.unwrap();
    let bounds = Bounds {
        lock: Duration::from_millis(300),
        idle_in_transaction: Duration::from_millis(1_500),
        ..Bounds::default()
    };
    let history =
        |name: &str| History::bounded(&url, store.clone(), name, Arc::new(HistoryMetrics::default()), bounds).unwrap();
    let stuck = history("stuck");
    stuck.migrate().await.unwrap();
    let sid = Uuid::new_v4();
    let formed = Change::Formed {
        instance: "stuck".into(),
        placement: Placement::default(),
    };
    // Taken before the stuck transaction goes idle, so its idle bound has passed by any
    // time measured from here once PostgreSQL ends it.
    let started = std::time::Instant::now();
    let mut held = stuck.pool.begin_with(stuck.bounds.begin()).await.unwrap();
    apply_events(&mut held, &[entry(sid, 1_000, formed, &["a", "b"])])
        .await
        .unwrap();

    let writer = history("writer");
    let ended = failed_end(sid);
    let refused = tokio::time::timeout(Duration::from_secs(10), writer.apply(std::slice::from_ref(&ended)))
        .await
        .expect("the write waited on the stuck transaction past its lock bound")
        .unwrap_err();
    assert!(
        matches!(&refused, sqlx::Error::Database(e) if e.code().as_deref() == Some("55P03")),
        "{refused}"
    );
    assert!(!rejects_the_data(&refused));
    let mut redis = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let parked: u64 = redis.xlen(store.keys().outbox_dead()).await.unwrap();
    assert_eq!(parked, 0);

    // Tried again as the writer does, until PostgreSQL has ended the stuck transaction.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), writer.apply(std::slice::from_ref(&ended))).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => assert!(
                matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03")),
                "{e}"
            ),
            Err(_) => panic!("a retry waited past its lock bound"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stuck transaction was never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= bounds.idle_in_transaction);
    let row = writer.session_row(sid).await.unwrap().unwrap();
    assert_eq!(
        (row.status.as_str(), row.end_reason.map(EndReason::as_str)),
        ("ended", Some("failed"))
    );
    // The stuck replica's transaction is gone: it cannot commit once it answers again.
    assert!(held.commit().await.is_err());
}

/// `url` through `relay` instead of straight to PostgreSQL.
fn relayed(url: &str, relay: &testkit::Relay) -> String {
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let direct = format!("{}:{}", options.get_host(), options.get_port());
    assert!(url.contains(&direct), "{url}");
    url.replacen(&direct, &relay.addr().to_string(), 1)
}

async fn postgres_addr(url: &str) -> std::net::SocketAddr {
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// The statements in `pool`'s database waiting on a lock.
async fn lock_waiters(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits until a statement in `pool`'s database waits on a lock.
async fn waiting_on_a_lock(pool: &PgPool) {
    testkit::eventually(Duration::from_secs(10), || async {
        (lock_waiters(pool).await > 0).then_some(())
    })
    .await;
}

/// Ends the sessions of statements waiting on a lock, as PostgreSQL does in time with the
/// sessions of clients that vanished.
async fn end_lock_waiters(pool: &PgPool) {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .execute(pool)
    .await
    .unwrap();
    testkit::eventually(Duration::from_secs(10), || async {
        (lock_waiters(pool).await == 0).then_some(())
    })
    .await;
}

/// Waits until none of `history`'s connections is in use: one given up on is closed; kept,
/// it would stay in use for ever, its return to the pool waiting on the silent server.
async fn none_in_use(history: &History) {
    testkit::eventually(Duration::from_secs(10), || async {
        (history.pool.size() as usize == history.pool.num_idle()).then_some(())
    })
    .await;
}

/// PostgreSQL's host going silent (power lost, a network cut, a failover that moves its
/// address) in the middle of an operation: nothing closes the connection and nothing
/// answers on it. The operation gives up after its bound instead of waiting for ever, and
/// a connection given up on, by that bound or by a caller's own timeout (as the health
/// check's), is closed rather than kept; once PostgreSQL can be reached again, the batch
/// that failed is written.
#[tokio::test]
async fn a_silent_postgres_bounds_every_wait_and_the_history_recovers() {
    let url = testkit::fresh_database().await;
    let relay = testkit::Relay::start(postgres_addr(&url).await).await;
    let store = Store::connect(&testkit::redis_url(), &testkit::unique_prefix())
        .await
        .unwrap();
    let history = |answer: Duration| {
        let bounds = Bounds {
            answer,
            ..Bounds::default()
        };
        History::bounded(
            &relayed(&url, &relay),
            store.clone(),
            "w",
            Arc::new(HistoryMetrics::default()),
            bounds,
        )
        .unwrap()
    };
    let writer = history(Duration::from_secs(1));
    writer.migrate().await.unwrap();
    let sid = Uuid::new_v4();
    let formed = Change::Formed {
        instance: "w".into(),
        placement: Placement::default(),
    };
    writer.apply(&[entry(sid, 1_000, formed, &["a", "b"])]).await.unwrap();
    let ended = failed_end(sid);
    // The session's row is held, so a write to it is still in flight when the relay goes
    // silent.
    let direct = PgPool::connect(&url).await.unwrap();
    let mut holder = direct.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM matches WHERE session_id = $1 FOR UPDATE")
        .bind(sid)
        .execute(&mut *holder)
        .await
        .unwrap();
    let in_flight = |history: &History, outer: Duration| {
        let (history, ended) = (history.clone(), ended.clone());
        tokio::spawn(async move { tokio::time::timeout(outer, history.apply(std::slice::from_ref(&ended))).await })
    };

    // Given up on by the history's own bound.
    let write = in_flight(&writer, Duration::from_secs(10));
    waiting_on_a_lock(&direct).await;
    relay.cut();
    let failed = write
        .await
        .unwrap()
        .expect("a batch waited on a silent PostgreSQL past its bound")
        .unwrap_err();
    assert!(
        matches!(&failed, sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "{failed}"
    );
    assert!(!rejects_the_data(&failed));
    none_in_use(&writer).await;
    end_lock_waiters(&direct).await;

    // Given up on by the caller, well before the history's bound.
    relay.heal();
    let patient = history(Duration::from_secs(60));
    let write = in_flight(&patient, Duration::from_secs(2));
    waiting_on_a_lock(&direct).await;
    relay.cut();
    assert!(write.await.unwrap().is_err());
    none_in_use(&patient).await;
    end_lock_waiters(&direct).await;

    relay.heal();
    holder.rollback().await.unwrap();
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), writer.apply(std::slice::from_ref(&ended))).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => assert!(!rejects_the_data(&e), "{e}"),
            Err(_) => panic!("a retry waited past its bounds"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the history did not recover once PostgreSQL could be reached again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = writer.session_row(sid).await.unwrap().unwrap();
    assert_eq!(
        (row.status.as_str(), row.end_reason.map(EndReason::as_str)),
        ("ended", Some("failed"))
    );
}

/// A replica that vanishes while it holds the migrator's lock (its connection left open,
/// as when its node drops off the network) keeps the others from migrating only for the
/// idle bound: PostgreSQL then ends its idle session, and the lock goes with it.
#[tokio::test]
async fn a_replica_that_vanishes_while_migrating_lets_the_others_migrate() {
    let url = testkit::fresh_database().await;
    let relay = testkit::Relay::start(postgres_addr(&url).await).await;
    let store = Store::connect(&testkit::redis_url(), &testkit::unique_prefix())
        .await
        .unwrap();
    let bounds = Bounds {
        lock: Duration::from_millis(300),
        idle_in_transaction: Duration::from_millis(1_500),
        ..Bounds::default()
    };
    let history = |url: &str, name: &str| {
        History::bounded(url, store.clone(), name, Arc::new(HistoryMetrics::default()), bounds).unwrap()
    };
    let vanished = history(&relayed(&url, &relay), "vanished");
    let started = std::time::Instant::now();
    let mut conn = vanished.pool.acquire().await.unwrap();
    bound_migrating_session(&mut conn, &bounds).await.unwrap();
    sqlx::migrate::Migrate::lock(&mut *conn).await.unwrap();
    relay.cut();

    let other = history(&url, "other");
    let refused = tokio::time::timeout(Duration::from_secs(10), other.migrate())
        .await
        .expect("a migration waited for the lock past its bound");
    assert!(refused.is_err(), "the lock was not held");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), other.migrate()).await {
            Ok(Ok(())) => break,
            Ok(Err(_)) => {}
            Err(_) => panic!("a migration waited for the lock past its bound"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the vanished replica's session was never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= bounds.idle_in_transaction);
    // Migrated: the schema is there.
    assert!(other.session_row(Uuid::new_v4()).await.unwrap().is_none());
    drop(conn);
}

/// Entries a replica had read but not written when it crashed (pending under its name, and
/// its replacement comes back under another) are taken over by a live replica's writer
/// once idle for [`CLAIM_IDLE_MS`], and written.
#[tokio::test]
async fn a_crashed_replicas_unwritten_entries_are_taken_over() {
    let url = testkit::fresh_database().await;
    let store = Store::connect(&testkit::redis_url(), &testkit::unique_prefix())
        .await
        .unwrap();
    let outbox = store.keys().outbox();
    let mut redis = redis::Client::open(testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let sid = Uuid::new_v4();
    let formed = entry(
        sid,
        1_000,
        Change::Formed {
            instance: "crashed".into(),
            placement: Placement::default(),
        },
        &["a", "b"],
    );
    let event = serde_json::to_string(&formed.event).unwrap();
    let _: () = redis.xgroup_create_mkstream(&outbox, GROUP, "0").await.unwrap();
    let _: String = redis.xadd(&outbox, "*", &[("event", event.as_str())]).await.unwrap();
    // Read by the replica that then crashed: pending under its name, never acknowledged.
    let read: StreamReadReply = redis
        .xread_options(
            &[outbox.as_str()],
            &[">"],
            &StreamReadOptions::default().group(GROUP, "crashed"),
        )
        .await
        .unwrap();
    assert_eq!(read.keys[0].ids.len(), 1);

    let started = std::time::Instant::now();
    let alive = History::new(&url, store, "alive", Arc::new(HistoryMetrics::default())).unwrap();
    let stop = CancellationToken::new();
    let writer = tokio::spawn(alive.clone().run_writer(stop.clone(), Duration::ZERO));
    let limit = Duration::from_millis(CLAIM_IDLE_MS as u64) + CLAIM_EVERY + Duration::from_secs(10);
    let row = loop {
        // (An error until the writer has migrated the fresh database.)
        if let Ok(Some(row)) = alive.session_row(sid).await {
            break row;
        }
        assert!(
            started.elapsed() < limit,
            "the crashed replica's entry was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row.backend_instance.as_deref(), Some("crashed"));
    assert!(started.elapsed() >= Duration::from_millis(CLAIM_IDLE_MS as u64) - Duration::from_millis(500));
    stop.cancel();
    writer.await.unwrap();
}

/// A server that refuses writes (read-only, as a promoted standby can be for a moment after
/// a failover, or a primary that became a standby) gives the batch back to be tried again:
/// nothing is parked. Only an event whose data PostgreSQL rejects is parked, and the rest
/// of its batch is written.
#[tokio::test]
async fn only_events_postgres_rejects_as_data_are_parked() {
    let url = testkit::fresh_database().await;
    let name = url.rsplit_once('/').unwrap().1.to_owned();
    let admin = PgPool::connect(&url).await.unwrap();
    MIGRATOR.run(&admin).await.unwrap();
    let redis_url = testkit::redis_url();
    let store = Store::connect(&redis_url, &testkit::unique_prefix()).await.unwrap();
    let dead = store.keys().outbox_dead();
    let mut redis = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let formed = || Change::Formed {
        instance: "r1".into(),
        placement: Placement::default(),
    };
    let good = entry(Uuid::new_v4(), 1_000, formed(), &["a", "b"]);
    let history = || History::new(&url, store.clone(), "test", Arc::new(HistoryMetrics::default())).unwrap();

    // Every new connection to the database is read-only.
    sqlx::query(&format!("ALTER DATABASE {name} SET default_transaction_read_only = on"))
        .execute(&admin)
        .await
        .unwrap();
    let refused = history().apply(std::slice::from_ref(&good)).await.unwrap_err();
    assert!(
        matches!(&refused, sqlx::Error::Database(e) if e.code().as_deref() == Some("25006")),
        "{refused}"
    );
    let parked: u64 = redis.xlen(&dead).await.unwrap();
    assert_eq!(parked, 0, "an event is parked only when its data is rejected");

    // Writable again: a batch with one event PostgreSQL cannot store (a NUL in a text
    // value, SQLSTATE 22021) writes the other and parks that one.
    sqlx::query(&format!("ALTER DATABASE {name} RESET default_transaction_read_only"))
        .execute(&admin)
        .await
        .unwrap();
    let bad = entry(Uuid::new_v4(), 2_000, formed(), &["c\0d"]);
    history().apply(&[bad.clone(), good.clone()]).await.unwrap();
    let written: Vec<Uuid> = sqlx::query_scalar("SELECT session_id FROM matches")
        .fetch_all(&admin)
        .await
        .unwrap();
    assert_eq!(written, vec![good.session_id]);
    let parked: Vec<redis::streams::StreamId> = redis
        .xrange_all::<_, redis::streams::StreamRangeReply>(&dead)
        .await
        .unwrap()
        .ids;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].get::<String>("id").as_deref(), Some(bad.id.as_str()));
}
