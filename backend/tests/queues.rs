//! Rule queues against a real Redis: tickets with parties, the commit that claims only tickets
//! still queued, timeouts, and whole tickets requeued when a session fails before its server
//! was ready.

mod common;

use backend::matchmaking::Matchmaking;
use backend::sessions::Sessions;
use matchmaking_core::queues::Queues;
use matchmaking_core::store::{CancelOutcome, EndOutcome, JoinOutcome, PlayerView, Store, now_ms};
use protocol::api::EndReason;
use protocol::sessions::SessionState;
use serde_json::json;

const QUEUES: &str = "queues:
  - name: duo
    teams: 2
    team_size: 2
    max_party_size: 2
    match_on: [mode]
    skill: {attribute: skill, max_spread: 100, widen_by: 100, widen_every_seconds: 5, max_spread_limit: 400, balance_teams: true}
    latency: {attribute: latency_ms, max_ms: 50}
    client_attributes: [latency_ms]
    max_wait_seconds: 60
  - name: casual
    session_size: 3
";

fn queues() -> Queues {
    Queues::parse(QUEUES).unwrap()
}

/// Joins a ticket to `duo` as a service: `players` with their skills, all near `eu`.
async fn join(store: &Store, players: &[(&str, f64)], joined_ms: i64) -> JoinOutcome {
    common::join_rule_ticket(store, queues().get("duo").unwrap(), players, "ctf", joined_ms).await
}

fn queued_in(view: &PlayerView, queue: &str, ticket: &str) -> bool {
    matches!(view, PlayerView::Queued { queue: q, ticket: t, .. } if q == queue && t == ticket)
}

#[tokio::test]
async fn a_party_waits_as_one_ticket_and_leaves_as_one() {
    let store = common::store().await;
    let now = now_ms();
    assert_eq!(
        join(&store, &[("lead", 1500.0), ("mate", 1550.0)], now).await,
        JoinOutcome::Queued { new: true, depth: 1 }
    );
    assert_eq!(
        join(&store, &[("lead", 1500.0), ("mate", 1550.0)], now).await,
        JoinOutcome::Queued { new: false, depth: 1 },
        "idempotent"
    );
    for p in ["lead", "mate"] {
        assert!(queued_in(&store.player(p).await.unwrap(), "duo", "lead"), "{p}");
    }
    // A member is already queued: another party naming it is refused whole.
    assert_eq!(
        join(&store, &[("other", 1500.0), ("mate", 1550.0)], now).await,
        JoinOutcome::Busy {
            player: "mate".into(),
            queue: Some("duo".into())
        }
    );
    assert_eq!(store.player("other").await.unwrap(), PlayerView::Unknown);
    // Queued in one queue: a join to another is refused.
    assert!(
        matches!(store.queue("casual").join(&["lead".into()], None, now).await.unwrap(),
        JoinOutcome::Busy { ref player, queue: Some(ref q) } if player == "lead" && q == "duo")
    );
    // A member leaving takes the whole party out.
    assert_eq!(store.cancel("mate").await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(store.player("lead").await.unwrap(), PlayerView::Unknown);
    assert_eq!(store.cancel("lead").await.unwrap(), CancelOutcome::NotQueued);
    assert!(store.queue("duo").waiting_tickets().await.unwrap().is_empty());
    // Plain non-default queues keep their own keys and answer the same way.
    assert_eq!(
        store.queue("casual").join(&["lead".into()], None, now).await.unwrap(),
        JoinOutcome::Queued { new: true, depth: 1 }
    );
    assert!(queued_in(&store.player("lead").await.unwrap(), "casual", "lead"));
    assert_eq!(store.queue_depth().await.unwrap(), 0, "the default queue is untouched");
    assert_eq!(store.cancel("lead").await.unwrap(), CancelOutcome::Cancelled);
}

#[tokio::test]
async fn a_formed_session_keeps_parties_together_and_records_its_placement() {
    let store = common::store().await;
    let matchmaking = Matchmaking::standalone(store.clone(), "i1", queues());
    let sessions = Sessions::standalone(store.clone(), "i1");
    let qs = queues();
    let duo = qs.get("duo").unwrap();
    let now = now_ms();
    join(&store, &[("a", 1500.0), ("b", 1600.0)], now - 1000).await;
    join(&store, &[("c", 1540.0)], now - 900).await;
    join(&store, &[("d", 1560.0)], now - 800).await;
    // Far outside the window: waits.
    join(&store, &[("far", 2500.0)], now - 700).await;
    let formed = matchmaking.form(duo, 10).await.unwrap();
    assert_eq!(formed.len(), 1);
    let session = &formed[0];
    assert_eq!(session.queue, "duo");
    assert_eq!(session.players.len(), 4);
    let party_team = session.teams.iter().find(|t| t.contains(&"a".to_owned())).unwrap();
    assert!(
        party_team.contains(&"b".to_owned()),
        "the party on one team: {:?}",
        session.teams
    );
    let record = store.session(&session.session_id).await.unwrap().unwrap();
    assert_eq!(record.state, SessionState::Allocating);
    let placement = &record.placement;
    assert_eq!(placement.queue.as_deref(), Some("duo"));
    assert_eq!(placement.region.as_deref(), Some("eu"));
    assert_eq!(
        placement.skill_spread,
        Some(20.0),
        "party mean 1550 between 1540 and 1560"
    );
    assert_eq!(placement.team_skill_gap, Some(0.0), "3100 against 3100");
    assert_eq!(placement.max_latency_ms, Some(20.0));
    assert!(placement.max_wait_ms.unwrap() >= 1000);
    for p in ["a", "b", "c", "d"] {
        assert!(
            matches!(store.player(p).await.unwrap(), PlayerView::InSession { ref session_id, .. } if *session_id == session.session_id)
        );
    }
    assert!(queued_in(&store.player("far").await.unwrap(), "duo", "far"));

    // The server never became ready: every ticket goes back whole, at the head, with its
    // document, and forms again.
    assert_eq!(
        sessions
            .end(&session.session_id, EndReason::Failed, None)
            .await
            .unwrap(),
        EndOutcome::Ended {
            requeued: true,
            reason: EndReason::Failed
        }
    );
    let waiting = store.queue("duo").waiting_tickets().await.unwrap();
    let ids: Vec<&str> = waiting.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids[3], "far", "requeued tickets go ahead of the one that kept waiting");
    assert!(queued_in(&store.player("b").await.unwrap(), "duo", "a"));
    let again = matchmaking.form(duo, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    let mut players = again[0].players.clone();
    players.sort();
    assert_eq!(players, ["a", "b", "c", "d"]);
    assert_eq!(
        again[0].joined_ms.iter().min(),
        Some(&(now - 1000)),
        "original join times kept"
    );
}

#[tokio::test]
async fn a_plan_never_claims_a_ticket_that_changed_since_it_was_read() {
    let store = common::store().await;
    let now = now_ms();
    for (i, p) in ["a", "b", "c", "d"].iter().enumerate() {
        join(&store, &[(p, 1500.0)], now - 100 + i as i64).await;
    }
    let read = store.queue("duo").waiting_tickets().await.unwrap();
    let version = |doc: &str| -> u64 {
        serde_json::from_str::<serde_json::Value>(doc).unwrap()["v"]
            .as_u64()
            .unwrap()
    };
    // "d" leaves and joins again: same id, new version.
    store.cancel("d").await.unwrap();
    join(&store, &[("d", 1500.0)], now).await;
    let tickets: Vec<(String, u64)> = read.iter().map(|t| (t.id.clone(), version(&t.doc))).collect();
    let plan = json!({
        "sessions": [{"session_id": "00000000-0000-4000-8000-000000000001", "tickets": tickets,
            "players": ["a", "b", "c", "d"], "joined_ms": [now, now, now, now], "queue": "duo", "max_wait_ms": 0}],
        "expire": [], "retention_ms": 3_600_000});
    let placed = store.queue("duo").place(&plan.to_string(), now, "i1").await.unwrap();
    assert!(placed.formed.is_empty(), "{placed:?}");
    assert_eq!(placed.stale, ["d"]);
    assert_eq!(
        store.queue("duo").waiting_tickets().await.unwrap().len(),
        4,
        "nothing taken"
    );
    // The same plan with the current version forms.
    let fresh: Vec<(String, u64)> = store
        .queue("duo")
        .waiting_tickets()
        .await
        .unwrap()
        .iter()
        .map(|t| (t.id.clone(), version(&t.doc)))
        .collect();
    let mut plan = plan;
    plan["sessions"][0]["tickets"] = json!(fresh);
    let placed = store.queue("duo").place(&plan.to_string(), now, "i1").await.unwrap();
    assert_eq!(placed.formed.len(), 1);
    assert!(placed.stale.is_empty());
    // A second commit of the same plan (a replica replaying it) changes nothing.
    let again = store.queue("duo").place(&plan.to_string(), now, "i1").await.unwrap();
    assert!(again.formed.is_empty());
    assert_eq!(again.stale.len(), 4);
}

#[tokio::test]
async fn tickets_past_max_wait_time_out_and_may_join_again() {
    let store = common::store().await;
    let sessions = Matchmaking::standalone(store.clone(), "i1", queues());
    let qs = queues();
    let duo = qs.get("duo").unwrap();
    let now = now_ms();
    join(&store, &[("old", 1500.0), ("mate", 1500.0)], now - 61_000).await;
    join(&store, &[("young", 1500.0)], now - 1_000).await;
    assert!(sessions.form(duo, 10).await.unwrap().is_empty());
    for p in ["old", "mate"] {
        let view = store.player(p).await.unwrap();
        assert!(
            matches!(view, PlayerView::TimedOut { ref queue, at_ms } if queue == "duo" && at_ms >= now),
            "{p}: {view:?}"
        );
    }
    assert!(queued_in(&store.player("young").await.unwrap(), "duo", "young"));
    // Joining again starts a new ticket.
    assert_eq!(
        join(&store, &[("old", 1500.0)], now).await,
        JoinOutcome::Queued { new: true, depth: 2 }
    );
    assert!(queued_in(&store.player("old").await.unwrap(), "duo", "old"));
    assert!(
        matches!(store.player("mate").await.unwrap(), PlayerView::TimedOut { .. }),
        "its party mate still timed out"
    );
    let depths = store
        .queue_depths(&[store.queue("duo"), store.queue("casual"), store.queue("default")])
        .await
        .unwrap();
    assert_eq!(depths[0].tickets, 2);
    assert_eq!(depths[0].oldest_joined_ms, Some(now - 1_000));
    assert_eq!(depths[1].tickets, 0);
    assert_eq!(depths[1].oldest_joined_ms, None);
}

#[tokio::test]
async fn only_the_lease_holder_forms_a_rule_queue() {
    let store = common::store().await;
    let qs = queues();
    let duo = qs.get("duo").unwrap();
    let a = Matchmaking::standalone(store.clone(), "replica-a", queues());
    let b = Matchmaking::standalone(store.clone(), "replica-b", queues());
    let now = now_ms();
    for p in ["p1", "p2", "p3", "p4"] {
        join(&store, &[(p, 1500.0)], now).await;
    }
    assert!(
        store
            .queue("duo")
            .lease("replica-a", std::time::Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        b.form(duo, 10).await.unwrap().is_empty(),
        "replica-b does not hold the lease"
    );
    assert_eq!(a.form(duo, 10).await.unwrap().len(), 1);
}
