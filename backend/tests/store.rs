//! The Redis scripts' rules, checked against a real Redis with explicit clock values.

mod common;

use matchmaking_core::store::{CancelOutcome, EndOutcome, FormRules, JoinOutcome, PlayerView, ReadyOutcome};
use protocol::api::EndReason;
use protocol::sessions::SessionState;

const RULES: FormRules = FormRules {
    size: 12,
    min_partial: 2,
    flush_wait_ms: 15_000,
};
const T0: i64 = 1_800_000_000_000;

#[tokio::test]
async fn joins_are_idempotent_and_full_sessions_form_in_join_order() {
    let store = common::store().await;
    for i in 0..25 {
        let outcome = store.join(&format!("p{i:02}"), T0 + i).await.unwrap();
        assert_eq!(
            outcome,
            JoinOutcome::Queued {
                new: true,
                depth: i as u64 + 1
            }
        );
    }
    assert_eq!(
        store.join("p00", T0 + 99).await.unwrap(),
        JoinOutcome::Queued { new: false, depth: 25 }
    );

    let formed = store.form(&RULES, T0 + 100, "i1", 10).await.unwrap();
    assert_eq!(formed.len(), 2, "two full sessions, the leftover waits");
    let first: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
    assert_eq!(formed[0].players, first);
    assert_eq!(formed[0].joined_ms, (0..12).map(|i| T0 + i).collect::<Vec<_>>());
    assert_eq!(store.queued_players().await.unwrap(), vec!["p24"]);

    match store.join("p03", T0 + 200).await.unwrap() {
        JoinOutcome::InSession { session_id, record } => {
            assert_eq!(session_id, formed[0].session_id);
            assert_eq!(record.state, SessionState::Allocating);
            assert_eq!(record.players, first, "the join answers with the whole record");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.cancel("p03").await.unwrap(), CancelOutcome::InSession);
}

#[tokio::test]
async fn partial_sessions_wait_for_the_flush_and_the_minimum() {
    let store = common::store().await;
    store.join("a", T0).await.unwrap();
    assert!(
        store.form(&RULES, T0 + 60_000, "i1", 4).await.unwrap().is_empty(),
        "one player never forms"
    );
    store.join("b", T0 + 5_000).await.unwrap();
    store.join("c", T0 + 6_000).await.unwrap();
    assert!(
        store.form(&RULES, T0 + 14_999, "i1", 4).await.unwrap().is_empty(),
        "oldest waited < 15 s"
    );
    let formed = store.form(&RULES, T0 + 15_000, "i1", 4).await.unwrap();
    assert_eq!(formed.len(), 1);
    assert_eq!(formed[0].players, vec!["a", "b", "c"]);
    assert_eq!(store.queue_depth().await.unwrap(), 0);
}

#[tokio::test]
async fn cancel_leaves_only_the_queue() {
    let store = common::store().await;
    store.join("a", T0).await.unwrap();
    assert_eq!(store.cancel("a").await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(store.cancel("a").await.unwrap(), CancelOutcome::NotQueued);
    assert_eq!(store.cancel("ghost").await.unwrap(), CancelOutcome::NotQueued);
    assert_eq!(store.player("a").await.unwrap(), PlayerView::Unknown);
}

#[tokio::test]
async fn a_failed_start_requeues_at_the_head_in_order_keeping_join_times() {
    let store = common::store().await;
    let rules = FormRules { size: 2, ..RULES };
    for (i, p) in ["a", "b", "c"].iter().enumerate() {
        store.join(p, T0 + i as i64).await.unwrap();
    }
    let formed = store.form(&rules, T0 + 10, "i1", 1).await.unwrap();
    assert_eq!(formed[0].players, vec!["a", "b"]);
    store.join("d", T0 + 20).await.unwrap();
    let outcome = store
        .end_session(&formed[0].session_id, EndReason::Failed, T0 + 30, None)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        EndOutcome::Ended {
            requeued: true,
            reason: EndReason::Failed
        }
    );
    assert_eq!(store.queued_players().await.unwrap(), vec!["a", "b", "c", "d"]);
    assert!(
        matches!(store.player("a").await.unwrap(), PlayerView::Queued { ref queue, joined_ms: Some(T0), .. } if queue == "default"),
        "queued again, with its original join time"
    );
    // Their original join times count: with a short flush they form again at once.
    let again = store.form(&rules, T0 + 40, "i1", 4).await.unwrap();
    assert_eq!(again[0].players, vec!["a", "b"]);
    assert_eq!(again[0].joined_ms, vec![T0, T0 + 1]);
    assert_eq!(again[1].players, vec!["c", "d"]);
}

#[tokio::test]
async fn a_session_ends_once_and_players_may_join_again() {
    let store = common::store().await;
    let rules = FormRules { size: 2, ..RULES };
    store.join("a", T0).await.unwrap();
    store.join("b", T0).await.unwrap();
    let sid = store.form(&rules, T0, "i1", 1).await.unwrap()[0].session_id.clone();
    assert_eq!(
        store.mark_ready(&sid, "srv", "127.0.0.1:1", T0 + 5).await.unwrap(),
        ReadyOutcome::Ready
    );
    match store.player("a").await.unwrap() {
        PlayerView::InSession { record, .. } => {
            assert_eq!(record.state, SessionState::Matched);
            assert_eq!(record.route(), Some("127.0.0.1:1"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.live_sessions().await.unwrap().len(), 1);
    assert_eq!(
        store.end_session(&sid, EndReason::Stopped, T0 + 9, None).await.unwrap(),
        EndOutcome::Ended {
            requeued: false,
            reason: EndReason::Stopped
        }
    );
    assert_eq!(
        store
            .end_session(&sid, EndReason::Completed, T0 + 10, Some("{}"))
            .await
            .unwrap(),
        EndOutcome::AlreadyEnded {
            reason: Some(EndReason::Stopped)
        }
    );
    assert_eq!(
        store.mark_ready(&sid, "srv", "x", T0 + 11).await.unwrap(),
        ReadyOutcome::NotAllocating
    );
    assert!(store.live_sessions().await.unwrap().is_empty());
    match store.player("b").await.unwrap() {
        PlayerView::InSession { record, .. } => {
            assert_eq!(record.state, SessionState::Ended);
            assert_eq!(record.end_reason, Some(EndReason::Stopped), "first reason wins");
            assert!(record.reported, "the late report is recorded");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.join("a", T0 + 20).await.unwrap(),
        JoinOutcome::Queued { new: true, depth: 1 }
    );
    assert_eq!(
        store
            .end_session("no-such-session", EndReason::Stopped, T0, None)
            .await
            .unwrap(),
        EndOutcome::Unknown
    );
}

#[tokio::test]
async fn only_a_failure_while_allocating_requeues() {
    let store = common::store().await;
    let rules = FormRules { size: 2, ..RULES };
    let form = async |players: [&str; 2], at: i64| {
        for p in players {
            store.join(p, at).await.unwrap();
        }
        store.form(&rules, at, "i1", 1).await.unwrap().remove(0).session_id
    };
    let dry = form(["d1", "d2"], T0).await;
    let stopped = form(["s1", "s2"], T0 + 1).await;
    let matched = form(["m1", "m2"], T0 + 2).await;
    store.mark_ready(&matched, "srv", "127.0.0.1:1", T0 + 3).await.unwrap();
    for (sid, reason) in [
        (&dry, EndReason::DryRun),
        (&stopped, EndReason::Stopped),
        (&matched, EndReason::Failed),
    ] {
        assert_eq!(
            store.end_session(sid, reason, T0 + 4, None).await.unwrap(),
            EndOutcome::Ended {
                requeued: false,
                reason
            },
            "{reason}"
        );
    }
    assert!(store.queued_players().await.unwrap().is_empty());
}

/// A server orphaned while its session was still allocating (its replica died before marking
/// it ready, and a replacement runs under a new instance id) reports `terminated`: its players
/// never had tickets, so the session fails and they go back to the head of the queue.
#[tokio::test]
async fn a_report_while_allocating_fails_the_session_and_requeues() {
    let store = common::store().await;
    let rules = FormRules { size: 2, ..RULES };
    store.join("o1", T0).await.unwrap();
    store.join("o2", T0 + 1).await.unwrap();
    let sid = store.form(&rules, T0 + 2, "dead-replica", 1).await.unwrap()[0]
        .session_id
        .clone();
    store.join("later", T0 + 3).await.unwrap();
    let report = r#"{"end_reason":"terminated"}"#;
    assert_eq!(
        store
            .end_session(&sid, EndReason::Terminated, T0 + 4, Some(report))
            .await
            .unwrap(),
        EndOutcome::Ended {
            requeued: true,
            reason: EndReason::Failed
        }
    );
    assert_eq!(store.queued_players().await.unwrap(), vec!["o1", "o2", "later"]);
    // The same report for a session that was matched ends it as reported, without requeue.
    let sid = store.form(&rules, T0 + 5, "i1", 1).await.unwrap()[0].session_id.clone();
    store.mark_ready(&sid, "srv", "127.0.0.1:1", T0 + 6).await.unwrap();
    assert_eq!(
        store
            .end_session(&sid, EndReason::Terminated, T0 + 7, Some(report))
            .await
            .unwrap(),
        EndOutcome::Ended {
            requeued: false,
            reason: EndReason::Terminated
        }
    );
    assert_eq!(store.queued_players().await.unwrap(), vec!["later"]);
}

#[tokio::test]
async fn ended_records_and_pointers_are_pruned_after_the_retention() {
    let store = common::store().await;
    let rules = FormRules { size: 2, ..RULES };
    let mut sids = Vec::new();
    for (players, at) in [(["a", "b"], T0), (["c", "d"], T0 + 3_600_001)] {
        for p in players {
            store.join(p, at).await.unwrap();
        }
        let sid = store.form(&rules, at, "i1", 1).await.unwrap().remove(0).session_id;
        store.end_session(&sid, EndReason::Stopped, at, None).await.unwrap();
        sids.push(sid);
    }
    // The second end, an hour and a bit later, forgot the first session.
    assert_eq!(store.session(&sids[0]).await.unwrap(), None);
    assert_eq!(store.player("a").await.unwrap(), PlayerView::Unknown);
    assert!(store.session(&sids[1]).await.unwrap().is_some());
    assert!(matches!(store.player("c").await.unwrap(), PlayerView::InSession { .. }));
}
