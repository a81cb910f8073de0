//! The match's rules driven through the actor's handle with a paused clock: every
//! grace period and timeout is checked to the tick, with no sleeping.

use std::time::Duration;

use game_server::game::{self, ClientId, GameHandle};
use game_server::{MatchSettings, StartPolicy};
use protocol::api::{EndReason, ResultReport};
use protocol::{ClientCommand, ErrorCode, GameState, ServerReply};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

fn settings(policy: StartPolicy) -> MatchSettings {
    MatchSettings {
        session_id: "s1".into(),
        roster: vec!["p1".into(), "p2".into(), "p3".into()],
        teams: Vec::new(),
        start_policy: policy,
        start_grace: Duration::from_secs(10),
        open_timeout: Duration::from_secs(60),
        empty_grace: Duration::from_secs(5),
        max_match_seconds: 86_400,
        outbound_queue: 64,
    }
}

struct Player {
    id: ClientId,
    rx: mpsc::Receiver<ServerReply>,
}

struct Harness {
    handle: GameHandle,
    task: JoinHandle<ResultReport>,
    shutdown: CancellationToken,
    t0: Instant,
}

impl Harness {
    fn start(settings: MatchSettings) -> Harness {
        let shutdown = CancellationToken::new();
        let (handle, task) = game::spawn(settings, shutdown.clone());
        Harness {
            handle,
            task,
            shutdown,
            t0: Instant::now(),
        }
    }

    async fn join(&self, player: &str) -> Player {
        self.join_with_queue(player, 64).await
    }

    async fn join_with_queue(&self, player: &str, queue: usize) -> Player {
        let (tx, mut rx) = mpsc::channel(queue);
        let id = self.handle.join(player.into(), tx).await.expect("join accepted");
        match rx.recv().await {
            Some(ServerReply::Welcome {
                session_id, player_id, ..
            }) => {
                assert_eq!((session_id.as_str(), player_id.as_str()), ("s1", player));
            }
            other => panic!("expected WELCOME, got {other:?}"),
        }
        Player { id, rx }
    }

    async fn say(&self, player: &Player, line: &str) {
        self.handle
            .command(player.id, ClientCommand::parse(line.as_bytes()))
            .await;
    }

    fn elapsed(&self) -> Duration {
        Instant::now() - self.t0
    }

    async fn report(self) -> ResultReport {
        timeout(Duration::from_secs(100_000), self.task)
            .await
            .expect("match ends")
            .expect("no panic")
    }
}

/// The next line for a player, however much (paused) time passes before it.
async fn next(player: &mut Player) -> Option<ServerReply> {
    timeout(Duration::from_secs(100_000), player.rx.recv())
        .await
        .expect("a reply or close")
}

async fn expect(player: &mut Player, want: ServerReply) {
    assert_eq!(next(player).await, Some(want));
}

#[tokio::test(start_paused = true)]
async fn roster_policy_starts_when_everyone_joined_and_completes() {
    let h = Harness::start(settings(StartPolicy::Roster));
    let mut p1 = h.join("p1").await;
    let mut p2 = h.join("p2").await;
    h.say(&p1, "REQUEST_MATCH 30").await;
    expect(&mut p1, ServerReply::RunningLength(30)).await;
    let mut p3 = h.join("p3").await;
    for p in [&mut p1, &mut p2, &mut p3] {
        expect(p, ServerReply::State(GameState::Running)).await;
    }
    assert_eq!(h.elapsed(), Duration::ZERO, "starts the moment the roster is complete");
    h.say(&p2, "GET_STATE").await;
    expect(&mut p2, ServerReply::State(GameState::Running)).await;
    for p in [&mut p1, &mut p2, &mut p3] {
        expect(p, ServerReply::State(GameState::Stop)).await;
        assert_eq!(next(p).await, None, "closed after STATE stop");
    }
    assert_eq!(h.elapsed(), Duration::from_secs(30));
    let report = h.report().await;
    assert_eq!(report.end_reason, EndReason::Completed);
    assert_eq!(report.requested_seconds, Some(30));
    assert_eq!(
        report.ended_at - report.started_at.unwrap(),
        time::Duration::seconds(30)
    );
    assert!(
        report
            .players
            .iter()
            .all(|p| p.joined_at.is_some() && p.left_at == Some(report.ended_at))
    );
}

#[tokio::test(start_paused = true)]
async fn roster_policy_starts_after_grace_with_a_missing_player() {
    let h = Harness::start(settings(StartPolicy::Roster));
    let mut p1 = h.join("p1").await;
    let _p2 = h.join("p2").await;
    h.say(&p1, "request_match 5").await;
    expect(&mut p1, ServerReply::RunningLength(5)).await;
    expect(&mut p1, ServerReply::State(GameState::Running)).await;
    assert_eq!(
        h.elapsed(),
        Duration::from_secs(10),
        "start_grace after the length was set"
    );
    expect(&mut p1, ServerReply::State(GameState::Stop)).await;
    assert_eq!(h.elapsed(), Duration::from_secs(15));
    let report = h.report().await;
    assert_eq!(report.end_reason, EndReason::Completed);
    let p3 = report.players.iter().find(|p| p.player_id == "p3").unwrap();
    assert_eq!((p3.joined_at, p3.left_at), (None, None));
}

#[tokio::test(start_paused = true)]
async fn roster_policy_waits_for_a_length() {
    let h = Harness::start(settings(StartPolicy::Roster));
    let mut p1 = h.join("p1").await;
    let _p2 = h.join("p2").await;
    let _p3 = h.join("p3").await;
    h.say(&p1, "GET_STATE").await;
    expect(&mut p1, ServerReply::State(GameState::Open)).await;
    h.say(&p1, "GET_RUNNING_LENGTH").await;
    expect(&mut p1, ServerReply::RunningLength(0)).await;
    // Nobody asks for a length: no start, and the open timeout ends it.
    expect(&mut p1, ServerReply::State(GameState::Stop)).await;
    assert_eq!(h.elapsed(), Duration::from_secs(60));
    assert_eq!(h.report().await.end_reason, EndReason::NoShow);
}

#[tokio::test(start_paused = true)]
async fn first_request_policy_starts_at_once_and_first_request_wins() {
    let h = Harness::start(settings(StartPolicy::FirstRequest));
    let mut p1 = h.join("p1").await;
    let mut p2 = h.join("p2").await;
    h.say(&p1, "REQUEST_MATCH 2").await;
    expect(&mut p1, ServerReply::RunningLength(2)).await;
    expect(&mut p1, ServerReply::State(GameState::Running)).await;
    expect(&mut p2, ServerReply::State(GameState::Running)).await;
    h.say(&p2, "REQUEST_MATCH 60").await;
    expect(&mut p2, ServerReply::RunningLength(2)).await;
    expect(&mut p2, ServerReply::State(GameState::Stop)).await;
    assert_eq!(h.elapsed(), Duration::from_secs(2));
    assert_eq!(h.report().await.requested_seconds, Some(2));
}

#[tokio::test(start_paused = true)]
async fn first_valid_request_wins_while_open() {
    let h = Harness::start(settings(StartPolicy::Roster));
    let mut p1 = h.join("p1").await;
    let mut p2 = h.join("p2").await;
    h.say(&p1, "REQUEST_MATCH 30.0").await;
    expect(&mut p1, ServerReply::RunningLength(30)).await;
    h.say(&p2, "REQUEST_MATCH 99").await;
    expect(&mut p2, ServerReply::RunningLength(30)).await;
    h.say(&p2, "REQUEST_MATCH 1.5").await;
    expect(&mut p2, ServerReply::RunningLength(30)).await;
}

#[tokio::test(start_paused = true)]
async fn invalid_lengths_and_unknown_lines_get_unknown() {
    let h = Harness::start(settings(StartPolicy::FirstRequest));
    let mut p1 = h.join("p1").await;
    for line in [
        "REQUEST_MATCH 0",
        "REQUEST_MATCH -3",
        "REQUEST_MATCH 86401",
        "REQUEST_MATCH x",
        "DANCE",
        "",
        "JOIN again",
    ] {
        h.say(&p1, line).await;
        expect(&mut p1, ServerReply::Unknown).await;
    }
    h.say(&p1, "GET_STATE").await;
    expect(&mut p1, ServerReply::State(GameState::Open)).await;
    h.say(&p1, "PING abc").await;
    expect(&mut p1, ServerReply::Pong(Some("abc".into()))).await;
    h.say(&p1, "REQUEST_MATCH 86400").await;
    expect(&mut p1, ServerReply::RunningLength(86_400)).await;
    expect(&mut p1, ServerReply::State(GameState::Running)).await;
    h.say(&p1, "QUIT").await;
    expect(&mut p1, ServerReply::Bye).await;
    assert_eq!(next(&mut p1).await, None);
}

#[tokio::test(start_paused = true)]
async fn abandoned_when_everyone_is_gone_for_the_empty_grace() {
    let h = Harness::start(settings(StartPolicy::FirstRequest));
    let mut p1 = h.join("p1").await;
    let mut p2 = h.join("p2").await;
    h.say(&p1, "REQUEST_MATCH 600").await;
    expect(&mut p1, ServerReply::RunningLength(600)).await;
    expect(&mut p1, ServerReply::State(GameState::Running)).await;
    expect(&mut p2, ServerReply::State(GameState::Running)).await;
    tokio::time::advance(Duration::from_secs(20)).await;
    h.handle.leave(p1.id).await;
    tokio::time::advance(Duration::from_secs(4)).await;
    // One player still there at 24 s: the grace only counts while nobody is connected.
    h.handle.leave(p2.id).await;
    let left_at = h.elapsed();
    let report = h.report().await;
    assert_eq!(report.end_reason, EndReason::Abandoned);
    let ended_after_start = report.ended_at - report.started_at.unwrap();
    assert_eq!(
        ended_after_start,
        time::Duration::try_from(left_at + Duration::from_secs(5)).unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn a_grace_start_with_nobody_connected_is_abandoned() {
    let h = Harness::start(settings(StartPolicy::Roster));
    let mut p1 = h.join("p1").await;
    h.say(&p1, "REQUEST_MATCH 100").await;
    expect(&mut p1, ServerReply::RunningLength(100)).await;
    h.handle.leave(p1.id).await;
    let report = h.report().await;
    assert_eq!(report.end_reason, EndReason::Abandoned);
    assert_eq!(report.ended_at - report.started_at.unwrap(), time::Duration::seconds(5));
}

#[tokio::test(start_paused = true)]
async fn rejoin_while_running_gets_state_and_length_and_replaces_the_old_connection() {
    let h = Harness::start(settings(StartPolicy::FirstRequest));
    let mut first = h.join("p1").await;
    h.say(&first, "REQUEST_MATCH 40").await;
    expect(&mut first, ServerReply::RunningLength(40)).await;
    expect(&mut first, ServerReply::State(GameState::Running)).await;

    let (tx, mut rx) = mpsc::channel(8);
    h.handle.join("p1".into(), tx).await.unwrap();
    assert_eq!(
        rx.recv().await,
        Some(ServerReply::Welcome {
            session_id: "s1".into(),
            player_id: "p1".into(),
            state: GameState::Running
        })
    );
    assert_eq!(rx.recv().await, Some(ServerReply::State(GameState::Running)));
    assert_eq!(rx.recv().await, Some(ServerReply::RunningLength(40)));
    assert_eq!(next(&mut first).await, None, "the older connection is closed");

    // The old connection's late leave must not count the player as gone.
    h.handle.leave(first.id).await;
    assert_eq!(
        timeout(Duration::from_secs(100_000), rx.recv()).await.unwrap(),
        Some(ServerReply::State(GameState::Stop))
    );
    assert_eq!(h.elapsed(), Duration::from_secs(40));
    assert_eq!(h.report().await.end_reason, EndReason::Completed);
}

#[tokio::test(start_paused = true)]
async fn roster_and_session_checks() {
    let h = Harness::start(settings(StartPolicy::FirstRequest));
    let (tx, _rx) = mpsc::channel(8);
    assert_eq!(h.handle.join("stranger".into(), tx).await, Err(ErrorCode::NotInRoster));
    h.shutdown.cancel();
    let handle = h.handle.clone();
    let report = h.report().await;
    assert_eq!(report.end_reason, EndReason::Terminated);
    let (tx, _rx) = mpsc::channel(8);
    assert_eq!(handle.join("p1".into(), tx).await, Err(ErrorCode::SessionOver));
}

#[tokio::test(start_paused = true)]
async fn terminated_on_cancel_tells_joined_players() {
    let h = Harness::start(settings(StartPolicy::FirstRequest));
    let mut p1 = h.join("p1").await;
    h.say(&p1, "REQUEST_MATCH 100").await;
    expect(&mut p1, ServerReply::RunningLength(100)).await;
    expect(&mut p1, ServerReply::State(GameState::Running)).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    h.shutdown.cancel();
    expect(&mut p1, ServerReply::State(GameState::Stop)).await;
    assert_eq!(next(&mut p1).await, None);
    let report = h.report().await;
    assert_eq!(report.end_reason, EndReason::Terminated);
    assert_eq!(report.ended_at - report.started_at.unwrap(), time::Duration::seconds(3));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_client_is_dropped_without_delaying_others() {
    let h = Harness::start(settings(StartPolicy::FirstRequest));
    let mut reader = h.join("p1").await;
    // p2 never reads: its queue holds two lines (the WELCOME is already taken).
    let stalled = h.join_with_queue("p2", 2).await;
    for _ in 0..5 {
        h.say(&stalled, "PING").await;
    }
    h.say(&reader, "REQUEST_MATCH 1").await;
    expect(&mut reader, ServerReply::RunningLength(1)).await;
    expect(&mut reader, ServerReply::State(GameState::Running)).await;
    expect(&mut reader, ServerReply::State(GameState::Stop)).await;
    assert_eq!(h.elapsed(), Duration::from_secs(1));
    let mut stalled = stalled;
    let mut got = Vec::new();
    while let Some(line) = stalled.rx.recv().await {
        got.push(line);
    }
    assert_eq!(
        got,
        vec![ServerReply::Pong(None), ServerReply::Pong(None)],
        "dropped once the queue was full"
    );
    let report = h.report().await;
    let p2 = report.players.iter().find(|p| p.player_id == "p2").unwrap();
    assert!(p2.left_at.unwrap() < report.ended_at);
}

#[tokio::test(start_paused = true)]
async fn each_player_is_told_its_team_after_welcome() {
    let teams = vec![vec!["p1".to_owned(), "p3".to_owned()], vec!["p2".to_owned()]];
    let h = Harness::start(MatchSettings {
        teams: teams.clone(),
        ..settings(StartPolicy::Roster)
    });
    let mut p3 = h.join("p3").await;
    assert_eq!(
        p3.rx.recv().await,
        Some(ServerReply::Team {
            team: 1,
            players: teams[0].clone()
        })
    );
    let mut p2 = h.join("p2").await;
    assert_eq!(
        p2.rx.recv().await,
        Some(ServerReply::Team {
            team: 2,
            players: teams[1].clone()
        })
    );
    assert_eq!(
        ServerReply::Team {
            team: 1,
            players: teams[0].clone()
        }
        .line(),
        "TEAM 1 p1,p3\n"
    );
    h.shutdown.cancel();
    drop((p2, p3));
    let _ = h.report().await;
}

/// Backfill changes the roster while the match runs: a player placed into it joins late, gets
/// `STATE running` and the length at once, and the others hear `JOINED`; a released player's
/// connection is closed, the others hear `RELEASED`, and it may not join again. The report
/// keeps everyone who played.
#[tokio::test(start_paused = true)]
async fn a_roster_changed_by_backfill_admits_the_newcomer_and_shuts_out_the_released() {
    let h = Harness::start(settings(StartPolicy::Roster));
    let mut p1 = h.join("p1").await;
    let mut p2 = h.join("p2").await;
    let mut p3 = h.join("p3").await;
    h.say(&p1, "REQUEST_MATCH 30").await;
    expect(&mut p1, ServerReply::RunningLength(30)).await;
    for p in [&mut p1, &mut p2, &mut p3] {
        expect(p, ServerReply::State(GameState::Running)).await;
    }
    // Not on the roster yet: refused.
    let (tx, _rx) = mpsc::channel(8);
    assert_eq!(h.handle.join("p4".into(), tx).await, Err(ErrorCode::NotInRoster));
    tokio::time::sleep(Duration::from_secs(10)).await;
    // p3 is released and p4 placed in its stead.
    h.handle
        .roster(vec!["p1".into(), "p2".into(), "p4".into()], Vec::new())
        .await;
    expect(&mut p1, ServerReply::Released("p3".into())).await;
    expect(
        &mut p1,
        ServerReply::Joined {
            player_id: "p4".into(),
            team: None,
        },
    )
    .await;
    expect(&mut p2, ServerReply::Released("p3".into())).await;
    assert_eq!(next(&mut p3).await, None, "the released player's connection is closed");
    let (tx, _rx) = mpsc::channel(8);
    assert_eq!(h.handle.join("p3".into(), tx).await, Err(ErrorCode::NotInRoster));
    let mut p4 = h.join("p4").await;
    expect(&mut p4, ServerReply::State(GameState::Running)).await;
    expect(&mut p4, ServerReply::RunningLength(30)).await;
    expect(&mut p4, ServerReply::State(GameState::Stop)).await;
    assert_eq!(h.elapsed(), Duration::from_secs(30), "the match keeps its length");
    let report = h.report().await;
    assert_eq!(report.end_reason, EndReason::Completed);
    let ids: Vec<&str> = report.players.iter().map(|p| p.player_id.as_str()).collect();
    assert_eq!(ids, ["p1", "p2", "p3", "p4"]);
    let p4 = &report.players[3];
    assert!(p4.joined_at.unwrap() > report.started_at.unwrap(), "{p4:?}");
}
