//! The operators' console and endpoints with real Redis, PostgreSQL and game servers: the
//! sign-in and its cookie, CSRF, the audit log, the overview across replicas, failures, the
//! sessions' filters, and every way of getting it wrong.

mod common;

use std::time::Duration;

use common::{ADMIN, Backend, Http, admin_auth, built_binary, eventually, local_settings, player_auth, settings};
use hyper::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

/// A signed-in console: its cookie header and CSRF token.
struct Console {
    cookie: String,
    csrf: String,
}

async fn sign_in(http: &Http, name: &str, extra: &[(&str, &str)]) -> (Console, HeaderMap) {
    sign_in_at(http, "/console/login", name, extra).await
}

async fn sign_in_at(http: &Http, path: &str, name: &str, extra: &[(&str, &str)]) -> (Console, HeaderMap) {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra);
    let body = json!({"token": ADMIN, "name": name}).to_string().into_bytes();
    let (status, answer, reply) = http.exchange(Method::POST, path, &headers, body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let set = answer[hyper::header::SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    assert_eq!(reply["name"], name);
    (
        Console {
            cookie,
            csrf: reply["csrf_token"].as_str().unwrap().to_owned(),
        },
        answer,
    )
}

impl Console {
    async fn get(&self, http: &Http, path: &str) -> (StatusCode, Value) {
        http.request(Method::GET, path, &[("cookie", &self.cookie)], Vec::new())
            .await
    }

    async fn post(&self, http: &Http, path: &str, extra: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut headers = vec![("cookie", self.cookie.as_str())];
        headers.extend_from_slice(extra);
        http.request(Method::POST, path, &headers, Vec::new()).await
    }
}

async fn login_attempt(http: &Http, headers: &[(&str, &str)], body: &str) -> (StatusCode, HeaderMap, Value) {
    http.exchange(Method::POST, "/console/login", headers, body.as_bytes().to_vec())
        .await
}

#[tokio::test]
async fn the_console_signs_in_ends_a_session_with_its_csrf_token_and_audits_it() {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let settings = local_settings(&prefix, &db, &built_binary("game-server"))
        .session_size(2)
        .instance_id("console-a")
        .build()
        .unwrap();
    let backend = Backend::start(settings).await;
    let http = &backend.http;

    // The page: built in, a strict CSP, no inline script, no caching of anything else.
    let (status, headers, page) = http.exchange(Method::GET, "/console/", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let page = page.as_str().unwrap().to_owned();
    assert!(page.contains("matchplane console"));
    for tag in page.split("<script").skip(1) {
        let open = tag.split('>').next().unwrap();
        assert!(open.contains("src="), "an inline script: <script{open}>");
    }
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(headers["x-frame-options"], "DENY");
    let (status, headers, _) = http.exchange(Method::GET, "/console", &[], Vec::new()).await;
    assert_eq!(
        (status, headers["location"].to_str().unwrap()),
        (StatusCode::PERMANENT_REDIRECT, "console/")
    );
    for file in ["console.js", "console.css", "favicon.svg"] {
        let (status, _, _) = http
            .exchange(Method::GET, &format!("/console/{file}"), &[], Vec::new())
            .await;
        assert_eq!(status, StatusCode::OK, "{file}");
    }
    assert_eq!(
        http.exchange(Method::GET, "/console/../metrics", &[], Vec::new())
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Sign-ins that fail: a clear answer, and no cookie.
    let json = [("content-type", "application/json")];
    let wrong = json!({"token": "not-the-operator-token"}).to_string();
    let huge = json!({"token": "x".repeat(70_000)}).to_string();
    let bad_name = json!({"token": ADMIN, "name": "<script>"}).to_string();
    let ok = json!({"token": ADMIN}).to_string();
    for (headers, body, want) in [
        (&json[..], wrong.as_str(), StatusCode::UNAUTHORIZED),
        (&json[..], "{not json", StatusCode::BAD_REQUEST),
        (&json[..], huge.as_str(), StatusCode::PAYLOAD_TOO_LARGE),
        (&json[..], bad_name.as_str(), StatusCode::UNPROCESSABLE_ENTITY),
        (
            &[("content-type", "text/plain")][..],
            ok.as_str(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &[("content-type", "application/json"), ("sec-fetch-site", "cross-site")][..],
            ok.as_str(),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let (status, answer, reply) = login_attempt(http, headers, body).await;
        assert_eq!(status, want, "{body:.60}: {reply}");
        assert!(reply["error"]["message"].is_string(), "{reply}");
        assert!(!answer.contains_key("set-cookie"), "{body:.60}");
        assert!(!reply.to_string().contains(ADMIN));
    }

    // A sign-in: an HttpOnly, SameSite=Strict cookie; Secure when the proxy says TLS.
    let (console, answer) = sign_in(http, "ana", &[]).await;
    let set = answer["set-cookie"].to_str().unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    assert_eq!(console.csrf.len(), 64);
    let (_, answer) = sign_in(http, "ana", &[("x-forwarded-proto", "https")]).await;
    assert!(answer["set-cookie"].to_str().unwrap().contains("; Secure"));
    let (status, me) = console.get(http, "/console/session").await;
    assert_eq!((status, me["name"].as_str()), (StatusCode::OK, Some("ana")));

    // A live session, and the overview that counts it.
    let matched = common::matched_in(http, "default", &["p1", "p2"]).await;
    let sid = matched[0]["session_id"].as_str().unwrap().to_owned();
    let overview = eventually(Duration::from_secs(10), || async {
        let (status, o) = console.get(http, "/operator/overview").await;
        assert_eq!(status, StatusCode::OK, "{o}");
        (o["time_to_play"]["m1"]["count"].as_u64() >= Some(2)).then_some(o)
    })
    .await;
    assert_eq!(overview["queues"][0]["name"], "default");
    assert!(
        overview["queues"][0]["players_in_per_s"]["m1"].as_f64().unwrap() > 0.0,
        "{overview}"
    );
    assert!(
        overview["queues"][0]["players_out_per_s"]["m1"].as_f64().unwrap() > 0.0,
        "{overview}"
    );
    assert_eq!(overview["time_to_match"]["m1"]["count"], 2, "{overview}");
    assert!(
        overview["time_to_play"]["m1"]["p50_ms"].as_f64().unwrap() > 0.0,
        "{overview}"
    );
    assert_eq!(overview["sessions"]["matched"], 1, "{overview}");
    let replica = eventually(Duration::from_secs(10), || async {
        let (_, o) = console.get(http, "/operator/overview").await;
        o["replicas"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["health"]["instance"] == "console-a").cloned())
            .filter(|r| r["health"]["sessions_supervised"] == 1)
    })
    .await;
    assert_eq!(replica["state"], "ready", "{replica}");

    // The sessions, filtered; a filter that is wrong is refused.
    for (query, want) in [
        ("state=matched", 1),
        ("player=p1", 1),
        ("player=p3", 0),
        ("queue=default&state=matched", 1),
        ("queue=ranked", 0),
        ("state=allocating", 0),
        ("profile=none", 0),
    ] {
        let (status, list) = console.get(http, &format!("/sessions/active?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {list}");
        assert_eq!(list["matching"], want, "{query}: {list}");
    }
    // 128 characters pass however many bytes they take; 129 do not.
    let wide = "%F0%9D%95%8B".repeat(128);
    let (status, list) = console.get(http, &format!("/sessions/active?region={wide}")).await;
    assert_eq!((status, list["matching"].as_u64()), (StatusCode::OK, Some(0)), "{list}");
    let long = "r".repeat(129);
    for query in [
        "state=ended",
        "limit=0",
        "limit=lots",
        &format!("region={long}"),
        "player=a%20b",
    ] {
        let (status, reply) = console.get(http, &format!("/sessions/active?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {reply}");
    }

    // Ending it from the console: never without the CSRF token, never cross-site.
    let end = format!("/match/{sid}/end");
    for extra in [
        &[][..],
        &[("x-csrf-token", "0".repeat(64).as_str())][..],
        &[
            ("x-csrf-token", console.csrf.as_str()),
            ("sec-fetch-site", "cross-site"),
        ][..],
    ] {
        let (status, reply) = console.post(http, &end, extra).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{extra:?}: {reply}");
    }
    assert_eq!(
        http.status("p1", 0.0).await["status"],
        "matched",
        "a refused end changes nothing"
    );
    let (status, reply) = console
        .post(
            http,
            &end,
            &[("x-csrf-token", &console.csrf), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(
        (status, reply["end_reason"].as_str()),
        (StatusCode::OK, Some("stopped")),
        "{reply}"
    );
    let ended = http.status("p1", 0.0).await;
    assert_eq!(
        (ended["status"].as_str(), ended["end_reason"].as_str()),
        (Some("ended"), Some("stopped"))
    );

    // With the operator token: the same endpoint, audited as `api`; an unknown session too.
    let unknown = uuid::Uuid::new_v4();
    let (status, _) = http
        .post_as(&admin_auth(), &format!("/match/{unknown}/end"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, log) = console.get(http, "/operator/audit?limit=10").await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let entries = log["entries"].as_array().unwrap();
    let summary: Vec<(String, String, String, String)> = entries
        .iter()
        .map(|e| {
            let s = |f: &str| e[f].as_str().unwrap_or_default().to_owned();
            (s("actor"), s("action"), s("target"), s("outcome"))
        })
        .collect();
    assert_eq!(
        summary[..2],
        [
            (
                "api".into(),
                "end_session".into(),
                unknown.to_string(),
                "unknown_session".into()
            ),
            ("ana".into(), "end_session".into(), sid.clone(), "ended".into()),
        ],
        "{log}"
    );
    assert_eq!(entries[1]["via"], "console");
    assert_eq!(entries[1]["remote"], "127.0.0.1");
    assert!(
        summary
            .iter()
            .any(|(actor, action, ..)| actor == "ana" && action == "sign_in"),
        "{log}"
    );
    for query in ["limit=0", "limit=201", "limit=x"] {
        assert_eq!(
            console.get(http, &format!("/operator/audit?{query}")).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    // Forged, malformed and replayed cookies.
    let forged = format!("mp_console={}", "ab".repeat(32));
    for cookie in [forged.as_str(), "mp_console=abc", "mp_console="] {
        let (status, reply) = http
            .request(Method::GET, "/operator/overview", &[("cookie", cookie)], Vec::new())
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{cookie}: {reply}");
    }
    // A cookie does not make a player's or a service's token an operator's.
    let (status, _) = http
        .request(
            Method::GET,
            "/operator/overview",
            &[("cookie", &console.cookie), ("authorization", &player_auth("p1"))],
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        console.post(http, "/console/logout", &[]).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, answer, _) = http
        .exchange(
            Method::POST,
            "/console/logout",
            &[("cookie", &console.cookie), ("x-csrf-token", &console.csrf)],
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(answer["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(
        console.get(http, "/operator/overview").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(console.get(http, "/console/session").await.0, StatusCode::UNAUTHORIZED);
    backend.stop().await;
}

#[tokio::test]
async fn failures_say_what_failed_and_every_replica_shows_in_the_overview() {
    let dir = std::env::temp_dir().join(format!("mp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let failing = dir.join("exits-at-once");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&failing, "#!/bin/sh\nexit 3\n").unwrap();
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let first = Backend::start(
        local_settings(&prefix, &db, &failing)
            .session_size(2)
            .instance_id("replica-1")
            .build()
            .unwrap(),
    )
    .await;
    let second = Backend::start(
        settings(&prefix, &db)
            .session_size(2)
            .instance_id("replica-2")
            .build()
            .unwrap(),
    )
    .await;
    let http = &first.http;
    let admin = [("authorization", admin_auth())];
    let admin: Vec<(&str, &str)> = admin.iter().map(|(n, v)| (*n, v.as_str())).collect();
    // Each start fails; the players go back to the head of the queue and are tried again.
    http.join("f1").await;
    http.join("f2").await;
    let failures = eventually(Duration::from_secs(20), || async {
        let (status, list) = http
            .request(Method::GET, "/operator/failures?limit=5", &admin, Vec::new())
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list["failures"].as_array().filter(|f| !f.is_empty()).cloned()
    })
    .await;
    let failure = &failures[0];
    assert_eq!(failure["reason"], "failed");
    let detail = failure["detail"].as_str().unwrap();
    assert!(detail.contains("did not start"), "{failure}");
    // The replica that formed it saw it; the overview counts it and lists both replicas.
    let overview = eventually(Duration::from_secs(10), || async {
        let (_, o) = second
            .http
            .request(Method::GET, "/operator/overview", &admin, Vec::new())
            .await;
        let replicas = o["replicas"].as_array().map_or(0, Vec::len);
        (replicas == 2 && o["failed_per_s"]["m1"].as_f64() > Some(0.0)).then_some(o)
    })
    .await;
    let names: Vec<&str> = overview["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["health"]["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["replica-1", "replica-2"], "{overview}");
    assert!(!overview["failures"].as_array().unwrap().is_empty(), "{overview}");
    for query in ["limit=0", "limit=1000", "limit=-1"] {
        let (status, _) = http
            .request(Method::GET, &format!("/operator/failures?{query}"), &admin, Vec::new())
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
    }
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn the_proxy_serves_the_console_only_when_told_to() {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let backend = Backend::start(settings(&prefix, &db).build().unwrap()).await;
    let (plain, stop_plain) = common::start_proxy(backend.addr, &prefix, &[]).await;
    let (with, stop_with) = common::start_proxy(backend.addr, &prefix, &["--proxy-console"]).await;
    for path in ["/api/console/", "/api/console", "/api/console/login"] {
        let (status, reply) = Http::new(plain).request(Method::GET, path, &[], Vec::new()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {reply}");
    }
    let through = Http::new(with);
    let (status, _) = through.request(Method::GET, "/api/console/", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    // Signed in through the proxy: the proxy's own address is where it came from.
    let (console, _) = sign_in_at(&through, "/api/console/login", "bo", &[]).await;
    let (status, _) = console.get(&through, "/api/operator/overview").await;
    assert_eq!(status, StatusCode::OK);
    let (status, log) = console.get(&through, "/api/operator/audit?limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(log["entries"][0]["remote"], "127.0.0.1 via 127.0.0.1", "{log}");
    stop_plain.cancel();
    stop_with.cancel();
    backend.stop().await;
}
