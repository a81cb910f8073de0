//! `bench-matchmaker`'s Redis-only ceiling waits for the backend's history to catch up: the
//! wait on the history outbox, against a real Redis.

use std::time::Duration;

use loadgen::bench_matchmaker::wait_for_history;

async fn connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_ceiling_waits_until_the_history_outbox_is_empty() {
    let prefix = testkit::unique_prefix();
    let outbox = matchmaking_core::keys::Keys::new(&prefix).outbox();
    let mut conn = connection().await;

    // Nothing outstanding: no wait.
    let (_, quiet) = wait_for_history(&mut conn, &prefix, Duration::ZERO).await.unwrap();
    assert!(quiet, "an empty outbox is quiet");

    // An event the history has not written yet: not quiet once patience runs out.
    let id: String = redis::cmd("XADD")
        .arg(&outbox)
        .arg("*")
        .arg("event")
        .arg("{}")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (_, quiet) = wait_for_history(&mut conn, &prefix, Duration::ZERO).await.unwrap();
    assert!(!quiet, "an outstanding event is not quiet");

    // The history writes it (and deletes it from the outbox) while the ceiling waits.
    let mut writer = connection().await;
    let write = tokio::spawn(async move {
        let _: u64 = redis::cmd("XDEL")
            .arg(&outbox)
            .arg(&id)
            .query_async(&mut writer)
            .await
            .unwrap();
    });
    let (_, quiet) = wait_for_history(&mut conn, &prefix, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(quiet, "quiet once the outbox empties");
    let left: u64 = redis::cmd("XLEN")
        .arg(matchmaking_core::keys::Keys::new(&prefix).outbox())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "quiet only once nothing is left to write");
    write.await.unwrap();
}
