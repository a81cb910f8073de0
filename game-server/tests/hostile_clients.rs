//! A live server on a loopback port facing clients that misbehave: no JOIN, garbage, huge
//! lines, invalid UTF-8, bad tickets, half-open and stalled sockets, and a connection flood.
//! Throughout, the real players keep being served.

mod common;

use std::time::Duration;

use common::{Client, SESSION, Server, config, roster, secret, ticket};
use protocol::api::EndReason;
use protocol::ticket::unix_now;
use protocol::{Claims, ErrorCode, GameState, ServerReply, TicketSecret};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const FAST_JOIN: &[&str] = &["--join-timeout-seconds", "0.3", "--start-policy", "first-request"];

async fn refused(server: &Server, first: &[u8], code: ErrorCode) {
    let mut c = Client::connect(server.addr).await;
    c.send_raw(first).await.unwrap();
    c.expect(ServerReply::Error(code)).await;
    c.expect_closed().await;
}

#[tokio::test]
async fn join_handshake_refusals_each_get_their_code() {
    let server = Server::start(config(&roster(2), FAST_JOIN)).await;
    let now = unix_now();
    let forged = TicketSecret::new("not-the-secret")
        .unwrap()
        .mint(&Claims::game("p1", SESSION, now, 600));
    let expired = secret().mint(&Claims::game("p1", SESSION, now - 3600, 600));
    let report_token = secret().mint(&Claims::report(SESSION, now, 600));
    let cases = [
        ("GET_STATE\n".to_owned(), ErrorCode::JoinRequired),
        ("PING\n".to_owned(), ErrorCode::JoinRequired),
        ("\n".to_owned(), ErrorCode::JoinRequired),
        ("JOIN\n".to_owned(), ErrorCode::BadTicket),
        ("JOIN not.a.jwt\n".to_owned(), ErrorCode::BadTicket),
        (format!("JOIN {forged}\n"), ErrorCode::BadTicket),
        (format!("JOIN {report_token}\n"), ErrorCode::BadTicket),
        (format!("JOIN {expired}\n"), ErrorCode::ExpiredTicket),
        (
            format!("JOIN {}\n", ticket("p1", "other-session")),
            ErrorCode::WrongSession,
        ),
        (
            format!("JOIN {}\n", ticket("intruder", SESSION)),
            ErrorCode::NotInRoster,
        ),
    ];
    for (line, code) in cases {
        refused(&server, line.as_bytes(), code).await;
    }
    // None of that touched the match: a real player joins into an open session.
    let mut p1 = common::joined(server.addr, "p1").await;
    p1.send("GET_STATE").await;
    p1.expect(ServerReply::State(GameState::Open)).await;
    server.shutdown.cancel();
    assert_eq!(server.finish().await.end_reason, EndReason::Terminated);
}

#[tokio::test]
async fn garbage_huge_lines_and_invalid_utf8_never_hurt_real_players() {
    let server = Server::start(config(&roster(2), FAST_JOIN)).await;
    let mut p1 = common::joined(server.addr, "p1").await;

    refused(&server, b"\x00\xff\xfe garbage \x07\n", ErrorCode::JoinRequired).await;
    refused(&server, &vec![b'A'; 100 * 1024], ErrorCode::LineTooLong).await;
    let mut huge_join = b"JOIN ".to_vec();
    huge_join.extend(std::iter::repeat_n(b'x', 2000));
    refused(&server, &huge_join, ErrorCode::LineTooLong).await;

    // A joined player who misbehaves is answered, or cut off alone.
    let mut p2 = common::joined(server.addr, "p2").await;
    p2.send_raw(b"\xc3\x28\xa0\xa1\n").await.unwrap();
    p2.expect(ServerReply::Unknown).await;
    p2.send_raw(&vec![b'B'; 100 * 1024]).await.ok();
    p2.expect(ServerReply::Error(ErrorCode::LineTooLong)).await;
    p2.expect_closed().await;

    common::ping(&mut p1, "still-here").await;
    let mut p2 = common::joined(server.addr, "p2").await;
    common::ping(&mut p2, "back").await;
    p1.send("REQUEST_MATCH 1").await;
    p1.expect(ServerReply::RunningLength(1)).await;
    for p in [&mut p1, &mut p2] {
        p.expect(ServerReply::State(GameState::Running)).await;
        p.expect(ServerReply::State(GameState::Stop)).await;
        p.expect_closed().await;
    }
    assert_eq!(server.finish().await.end_reason, EndReason::Completed);
}

#[tokio::test]
async fn silent_slow_and_half_open_connections_are_closed() {
    let server = Server::start(config(&roster(1), FAST_JOIN)).await;

    // Says nothing: closed after the join timeout.
    let mut silent = Client::connect(server.addr).await;
    silent.expect_closed().await;

    // Slowloris: one byte at a time, never a newline; the timeout covers the whole handshake.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let mut closed = false;
    for _ in 0..40 {
        if slow.write_all(b"J").await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(common::WAIT, tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut rest)).await;
    assert!(closed || read.is_ok(), "slow client must be closed");

    // Half-open: the client shuts its write side; the server closes its side too.
    let mut half = Client::connect(server.addr).await;
    half.send_raw(b"GET_ST").await.unwrap();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(
        common::WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(buf.is_empty());
    half.expect_closed().await;

    // A joined player who half-closes is counted as gone; the server is still fine.
    let mut p1 = common::joined(server.addr, "p1").await;
    common::ping(&mut p1, "x").await;
    server.shutdown.cancel();
    p1.expect(ServerReply::State(GameState::Stop)).await;
    server.finish().await;
}

#[tokio::test]
async fn a_thousand_connections_opened_and_dropped_at_once() {
    let server = Server::start(config(
        &roster(2),
        &["--start-policy", "first-request", "--max-connections", "256"],
    ))
    .await;
    let mut p1 = common::joined(server.addr, "p1").await;
    let mut p2 = common::joined(server.addr, "p2").await;
    p1.send("REQUEST_MATCH 600").await;
    p1.expect(ServerReply::RunningLength(600)).await;
    p1.expect(ServerReply::State(GameState::Running)).await;
    p2.expect(ServerReply::State(GameState::Running)).await;

    let addr = server.addr;
    let flood: Vec<_> = (0..1000)
        .map(|i| {
            tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    return;
                };
                if i % 3 == 0 {
                    let _ = s.write_all(b"JOIN garbage\n").await;
                }
                drop(s);
            })
        })
        .collect();
    // The real players are served while the flood is in flight.
    common::ping(&mut p1, "during").await;
    for task in flood {
        task.await.unwrap();
    }
    common::ping(&mut p1, "after-1").await;
    common::ping(&mut p2, "after-2").await;
    p2.send("GET_RUNNING_LENGTH").await;
    p2.expect(ServerReply::RunningLength(600)).await;
    // And a new connection is still admitted once the flood is gone.
    let mut p2b = common::joined(server.addr, "p2").await;
    p2b.expect(ServerReply::State(GameState::Running)).await;
    p2b.expect(ServerReply::RunningLength(600)).await;
    server.shutdown.cancel();
    p1.expect(ServerReply::State(GameState::Stop)).await;
    assert_eq!(server.finish().await.end_reason, EndReason::Terminated);
}

#[tokio::test]
async fn over_the_connection_cap_is_told_server_full() {
    let server = Server::start(config(&roster(1), &["--max-connections", "2"])).await;
    let _a = Client::connect(server.addr).await;
    let _b = Client::connect(server.addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = Client::connect(server.addr).await;
    c.expect(ServerReply::Error(ErrorCode::ServerFull)).await;
    c.expect_closed().await;
    server.shutdown.cancel();
    server.finish().await;
}

/// `QUIT` answers `BYE` and closes that connection at once, while the match goes on (and the
/// player may join again).
#[tokio::test]
async fn quit_closes_the_connection_at_once() {
    let server = Server::start(config(&roster(2), FAST_JOIN)).await;
    let mut p1 = common::joined(server.addr, "p1").await;
    let mut p2 = common::joined(server.addr, "p2").await;
    p2.send("QUIT").await;
    p2.expect(ServerReply::Bye).await;
    tokio::time::timeout(std::time::Duration::from_secs(5), p2.expect_closed())
        .await
        .expect("closed right after BYE, not at the match's end");
    common::ping(&mut p1, "still-here").await;
    let mut p2 = common::joined(server.addr, "p2").await;
    common::ping(&mut p2, "back").await;
    drop((p1, p2));
}
