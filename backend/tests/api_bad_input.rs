//! Bad input gets the right status and a JSON error, and changes nothing.

mod common;

use common::{ADMIN, Backend, SECRET, player_auth, service_auth, settings};
use hyper::{Method, StatusCode};
use protocol::{Claims, TicketSecret};
use serde_json::json;

async fn backend() -> (Backend, String) {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    (
        Backend::start(
            settings(&prefix, &db)
                .session_size(4)
                .flush_wait_seconds(600.0)
                .build()
                .unwrap(),
        )
        .await,
        prefix,
    )
}

fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

#[tokio::test]
async fn malformed_and_invalid_joins_are_refused_and_change_nothing() {
    let (backend, _) = backend().await;
    let http = &backend.http;
    let service = service_auth();
    let json_type = [
        ("content-type", "application/json"),
        ("authorization", service.as_str()),
    ];
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (b"{not json".to_vec(), StatusCode::BAD_REQUEST, "malformed"),
        (Vec::new(), StatusCode::BAD_REQUEST, "malformed"),
        (
            b"{\"player_id\": 42}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            b"{\"player\": \"a\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (b"[\"a\"]".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        (
            json!({"player_id": ""}).to_string().into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"player_id": "has space"}).to_string().into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"player_id": "x".repeat(129)}).to_string().into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"player_id": "semi;colon"}).to_string().into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (vec![b' '; 1024 * 1024], StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
    ];
    for (body, status, want) in cases {
        let (got, reply) = http.request(Method::POST, "/match/join", &json_type, body).await;
        assert_eq!((got, code(&reply)), (status, want), "{reply}");
    }
    let (status, body) = http.get("/sessions/active").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 0);
    let (_, metrics) = http.request(Method::GET, "/metrics", &[], Vec::new()).await;
    // Every result is exported from the start, and each still reads 0.
    let joins: Vec<&str> = metrics
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("mp_joins_total{"))
        .collect();
    assert_eq!(joins.len(), 4, "{joins:?}");
    assert!(
        joins.iter().all(|l| l.ends_with(" 0")),
        "no join was counted: {joins:?}"
    );

    // A valid join works and is idempotent.
    let (status, body) = http.join("good.player-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"status": "queued", "session_id": "pending:good.player-1", "players": ["good.player-1"],
        "connect_host": "", "connect_port": 0, "ticket": null})
    );
    assert_eq!(http.join("good.player-1").await.1, body);
    backend.stop().await;
}

#[tokio::test]
async fn status_leave_and_unknown_things() {
    let (backend, _) = backend().await;
    let http = &backend.http;
    assert_eq!(http.status("nobody", 0.0).await["status"], "unknown");
    for path in [
        "/match/status",
        "/match/status?player_id=bad%20id",
        "/match/status?player_id=a&wait=31",
        "/match/status?player_id=a&wait=x",
    ] {
        let (status, body) = http.get(path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
    }
    let (status, body) = http
        .request(
            Method::DELETE,
            "/match/join/nobody",
            &[("authorization", &player_auth("nobody"))],
            Vec::new(),
        )
        .await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_queued"));
    http.join("leaver").await;
    let (status, _) = http
        .request(
            Method::DELETE,
            "/match/join/leaver",
            &[("authorization", &player_auth("leaver"))],
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(http.status("leaver", 0.0).await["status"], "unknown");

    let unknown = uuid::Uuid::new_v4();
    assert_eq!(http.get(&format!("/sessions/{unknown}")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(http.get("/sessions/not-a-uuid").await.0, StatusCode::NOT_FOUND);
    assert_eq!(http.get("/no/such/path").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        http.request(Method::PUT, "/match/join", &[], Vec::new()).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let (status, body) = http.get("/players/bad%20id/matches").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    for page in [
        "limit=1000",
        "limit=0",
        "limit=-1",
        "limit=x",
        "offset=-1",
        "offset=1000001",
    ] {
        let (status, body) = http.get(&format!("/players/p/matches?{page}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}: {body}");
    }

    // Operator stop needs the admin token.
    let end = format!("/match/{unknown}/end");
    assert_eq!(
        http.request(Method::POST, &end, &[], Vec::new()).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http.request(
            Method::POST,
            &end,
            &[("authorization", "Bearer wrong-token-x")],
            Vec::new()
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    let admin = format!("Bearer {ADMIN}");
    assert_eq!(
        http.request(Method::POST, &end, &[("authorization", &admin)], Vec::new())
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    backend.stop().await;
}

#[tokio::test]
async fn forged_and_misdirected_reports_are_refused() {
    let (backend, _) = backend().await;
    let http = &backend.http;
    // Form a real session: four players, dry run (it ends at once with dry_run).
    for p in ["r1", "r2", "r3", "r4"] {
        http.join(p).await;
    }
    let sid = common::eventually(std::time::Duration::from_secs(10), || async {
        let body = http.status("r1", 0.0).await;
        (body["status"] == "ended").then(|| body["session_id"].as_str().unwrap().to_owned())
    })
    .await;
    let other = uuid::Uuid::new_v4().to_string();
    let now = protocol::ticket::unix_now();
    let secret = TicketSecret::new(SECRET).unwrap();
    let report = |session: &str, reason: &str| {
        json!({"session_id": session, "end_reason": reason, "requested_seconds": 5,
        "started_at": null, "ended_at": "2026-01-01T00:00:00Z", "players": []})
    };
    let path = format!("/internal/sessions/{sid}/result");
    let post = |token: String, body: serde_json::Value| {
        let path = path.clone();
        async move {
            let auth = format!("Bearer {token}");
            http.request(
                Method::POST,
                &path,
                &[("authorization", &auth), ("content-type", "application/json")],
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    let forged = TicketSecret::new("not-the-secret")
        .unwrap()
        .mint(&Claims::report(&sid, now, 600));
    let game_ticket = secret.mint(&Claims::game("r1", &sid, now, 600));
    let someone_elses = secret.mint(&Claims::report(&other, now, 600));
    let good = secret.mint(&Claims::report(&sid, now, 600));
    assert_eq!(
        post(forged, report(&sid, "completed")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(game_ticket, report(&sid, "completed")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(someone_elses, report(&sid, "completed")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(good.clone(), report(&other, "completed")).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        post(good.clone(), report(&sid, "stopped")).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        post(good.clone(), json!({"session_id": sid})).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (status, _) = http
        .request(
            Method::POST,
            &path,
            &[],
            report(&sid, "completed").to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // None of that changed the session: it ended dry_run, and still says so.
    assert_eq!(http.status("r2", 0.0).await["end_reason"], "dry_run");
    // A genuine late report is accepted but does not change the reason either.
    let (status, body) = post(good, report(&sid, "completed")).await;
    assert_eq!(
        (status, body["recorded"].as_str()),
        (StatusCode::OK, Some("already_ended"))
    );
    assert_eq!(http.status("r2", 0.0).await["end_reason"], "dry_run");

    // The SDK's ready and health calls are held to the same token, and answer with the
    // session's state: an ended session tells its server to stop.
    let now = protocol::ticket::unix_now();
    for call in ["ready", "health"] {
        let path = format!("/internal/sessions/{sid}/{call}");
        let send = |token: Option<String>, body: &'static str| {
            let path = path.clone();
            async move {
                let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
                let mut headers = vec![("content-type", "application/json")];
                if !auth.is_empty() {
                    headers.push(("authorization", auth.as_str()));
                }
                http.request(Method::POST, &path, &headers, body.as_bytes().to_vec())
                    .await
            }
        };
        let forged = TicketSecret::new("not-the-secret")
            .unwrap()
            .mint(&Claims::report(&sid, now, 600));
        let good = secret.mint(&Claims::report(&sid, now, 600));
        assert_eq!(send(None, "{}").await.0, StatusCode::UNAUTHORIZED, "{call}");
        assert_eq!(send(Some(forged), "{}").await.0, StatusCode::UNAUTHORIZED, "{call}");
        let elses = secret.mint(&Claims::report(&other, now, 600));
        assert_eq!(send(Some(elses), "{}").await.0, StatusCode::FORBIDDEN, "{call}");
        let (status, body) = send(Some(good.clone()), "[1, 2").await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "malformed"), "{call}");
        let (status, body) = send(Some(good.clone()), "").await;
        assert_eq!(
            (status, body["session_id"].as_str(), body["status"].as_str()),
            (StatusCode::OK, Some(sid.as_str()), Some("ended")),
            "{call}"
        );
        // A token for a session Redis never knew: 404.
        let path = format!("/internal/sessions/{other}/{call}");
        let auth = format!("Bearer {}", secret.mint(&Claims::report(&other, now, 600)));
        let (status, body) = http
            .request(Method::POST, &path, &[("authorization", &auth)], b"{}".to_vec())
            .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, "unknown_session"),
            "{call}"
        );
    }
    assert_eq!(http.status("r2", 0.0).await["end_reason"], "dry_run");
    backend.stop().await;
}

/// `POST /match/join?wait=S`: a bad wait is refused and queues nobody; alone in the queue the
/// wait runs out and the join answers `queued`; joins that wait answer with their session.
#[tokio::test]
async fn a_join_that_waits_answers_with_its_session() {
    let (backend, _) = backend().await;
    let http = &backend.http;
    let join = |player: &'static str, wait: &'static str| async move {
        http.post_as(
            &player_auth(player),
            &format!("/match/join?wait={wait}"),
            json!({ "player_id": player }),
        )
        .await
    };
    for wait in ["31", "x", "-1"] {
        let (status, body) = join("wj1", wait).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            "wait={wait}: {body}"
        );
    }
    assert_eq!(http.status("wj1", 0.0).await["status"], "unknown", "nobody was queued");
    let (status, body) = join("wj1", "0.3").await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("queued")));
    // wj1 joins again (idempotent) and waits with the others; with no runtime the session
    // forms and ends at once, and every join answers with it.
    let (a, b, c, d) = tokio::join!(
        join("wj1", "20"),
        join("wj2", "20"),
        join("wj3", "20"),
        join("wj4", "20")
    );
    for (status, body) in [&a, &b, &c, &d] {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(
            (body["status"].as_str(), body["end_reason"].as_str()),
            (Some("ended"), Some("dry_run")),
            "{body}"
        );
        assert_eq!(body["session_id"], a.1["session_id"]);
    }
    backend.stop().await;
}

#[tokio::test]
async fn a_long_poll_answers_at_once_when_the_client_is_behind() {
    let (backend, _) = backend().await;
    let http = &backend.http;
    for p in ["lp1", "lp2", "lp3", "lp4"] {
        http.join(p).await;
    }
    // A dry-run session forms and ends at once: by now lp1 is `ended`.
    common::eventually(std::time::Duration::from_secs(10), || async {
        (http.status("lp1", 0.0).await["status"] == "ended").then_some(())
    })
    .await;
    let started = tokio::time::Instant::now();
    let (status, body) = http.get("/match/status?player_id=lp1&wait=20&status=queued").await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ended")));
    let (_, body) = http.get("/match/status?player_id=lp2&wait=20").await;
    assert_eq!(
        body["status"], "ended",
        "no hint: only queued and allocating are waited out"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "neither poll waited"
    );
    let (status, _) = http.get("/match/status?player_id=lp1&wait=1&status=sleeping").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    backend.stop().await;
}
