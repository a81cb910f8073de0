//! Who may call what: every endpoint against every kind of caller, on the backend directly
//! and through the proxy, with real Redis and PostgreSQL.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use common::{
    ADMIN, Backend, Http, PLAYER_SECRET, SECRET, SERVICE, eventually, fresh_database, settings, start_proxy,
    unique_prefix,
};
use hyper::{Method, StatusCode};
use identity::{PlayerAuthMode, mint_hs256};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use protocol::{Claims, TicketSecret};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn now() -> i64 {
    protocol::ticket::unix_now()
}

fn hs256(claims: &Value, key: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(key)).unwrap()
}

/// One position in the matrix: who sends what.
struct Caller {
    name: &'static str,
    authorization: Option<String>,
}

fn callers(sid: &str) -> Vec<Caller> {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let bearer = |t: String| Some(format!("Bearer {t}"));
    let mut service_off = SERVICE.to_owned();
    service_off.pop();
    service_off.push('x');
    let mut admin_off = ADMIN.to_owned();
    admin_off.pop();
    admin_off.push('x');
    let secret = TicketSecret::new(SECRET).unwrap();
    vec![
        Caller {
            name: "no token",
            authorization: None,
        },
        Caller {
            name: "not Bearer",
            authorization: Some("Basic YWxpY2U6cGFzcw==".into()),
        },
        Caller {
            name: "garbage token",
            authorization: bearer("not-a-token".into()),
        },
        Caller {
            name: "player alice",
            authorization: bearer(mint_hs256(PLAYER_SECRET.as_bytes(), "alice", 300, None, None)),
        },
        Caller {
            name: "player bob",
            authorization: bearer(mint_hs256(PLAYER_SECRET.as_bytes(), "bob", 300, None, None)),
        },
        Caller {
            name: "alice, expired",
            authorization: bearer(hs256(
                &json!({"sub": "alice", "exp": now() - 120}),
                PLAYER_SECRET.as_bytes(),
            )),
        },
        Caller {
            name: "alice, not yet valid",
            authorization: bearer(hs256(
                &json!({"sub": "alice", "nbf": now() + 300, "exp": now() + 600}),
                PLAYER_SECRET.as_bytes(),
            )),
        },
        Caller {
            name: "alice, forged",
            authorization: bearer(hs256(
                &json!({"sub": "alice", "exp": now() + 300}),
                b"not-the-identity-services-key-0123456789",
            )),
        },
        Caller {
            name: "alice, alg none",
            authorization: bearer(format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&json!({"sub": "alice", "exp": now() + 300}))
            )),
        },
        Caller {
            name: "alice's game ticket",
            authorization: bearer(secret.mint(&Claims::game("alice", sid, now(), 300))),
        },
        Caller {
            name: "service",
            authorization: bearer(SERVICE.into()),
        },
        Caller {
            name: "service, 1 char off",
            authorization: bearer(service_off),
        },
        Caller {
            name: "operator",
            authorization: bearer(ADMIN.into()),
        },
        Caller {
            name: "operator, 1 char off",
            authorization: bearer(admin_off),
        },
        Caller {
            name: "report token",
            authorization: bearer(secret.mint(&Claims::report(sid, now(), 300))),
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Allowed,
    Unauthorized,
    Forbidden,
    NotFound,
}

/// What an answer means: past the checks (whatever the endpoint then said: 200, 204, or a
/// 404 `not_queued`), refused, or no such endpoint.
fn outcome(status: StatusCode, reply: &Value) -> Want {
    match status {
        StatusCode::UNAUTHORIZED => Want::Unauthorized,
        StatusCode::FORBIDDEN => Want::Forbidden,
        StatusCode::NOT_FOUND if reply["error"]["code"] == "not_found" => Want::NotFound,
        _ => Want::Allowed,
    }
}

/// The rule: what each caller gets at each class of endpoint.
fn expected(class: &str, caller: &str, via_proxy: bool) -> Want {
    let allowed = match class {
        "player" => ["player alice", "service", "operator"].as_slice(),
        "service" => ["service", "operator"].as_slice(),
        "operator" => ["operator"].as_slice(),
        "report" if via_proxy => return Want::NotFound,
        "report" => ["report token"].as_slice(),
        "backend metrics" if via_proxy => return Want::NotFound,
        _ => unreachable!(),
    };
    if allowed.contains(&caller) {
        Want::Allowed
    } else if class != "report" && ["player alice", "player bob", "service"].contains(&caller) {
        Want::Forbidden
    } else {
        Want::Unauthorized
    }
}

/// Sends each request with each caller's `Authorization` and checks the rule. Returns the
/// matrix as a table.
async fn check_matrix(http: &Http, sid: &str, via_proxy: bool) -> String {
    let prefix = if via_proxy { "/api" } else { "" };
    let report = json!({"session_id": sid, "end_reason": "completed", "requested_seconds": 5,
        "started_at": null, "ended_at": "2026-01-01T00:00:00Z", "players": []});
    let mut requests: Vec<(&str, Method, String, Option<Value>)> = vec![
        (
            "player",
            Method::POST,
            "/match/join".into(),
            Some(json!({"player_id": "alice"})),
        ),
        ("player", Method::GET, "/match/status?player_id=alice".into(), None),
        ("player", Method::DELETE, "/match/join/alice".into(), None),
        ("player", Method::GET, "/players/alice/matches".into(), None),
        ("service", Method::GET, "/sessions/active".into(), None),
        ("service", Method::GET, format!("/sessions/{sid}"), None),
        ("service", Method::GET, "/queues".into(), None),
        ("operator", Method::POST, format!("/match/{sid}/end"), None),
        ("operator", Method::GET, "/operator/overview".into(), None),
        ("operator", Method::GET, "/operator/failures".into(), None),
        ("operator", Method::GET, "/operator/audit".into(), None),
        ("operator", Method::GET, "/operator/versions".into(), None),
        (
            "report",
            Method::POST,
            format!("/internal/sessions/{sid}/result"),
            Some(report),
        ),
    ];
    if via_proxy {
        requests.push(("backend metrics", Method::GET, "/metrics".into(), None));
    }
    let mut table = String::new();
    let mut wrong = Vec::new();
    for (class, method, path, body) in &requests {
        for caller in callers(sid) {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(auth) = &caller.authorization {
                headers.push(("authorization", auth.as_str()));
            }
            let body = body.as_ref().map(|b| b.to_string().into_bytes()).unwrap_or_default();
            let (status, reply) = http
                .request(method.clone(), &format!("{prefix}{path}"), &headers, body)
                .await;
            let want = expected(class, caller.name, via_proxy);
            let got = outcome(status, &reply);
            writeln!(table, "{method} {prefix}{path} | {} | {status}", caller.name).unwrap();
            if got != want || status.is_server_error() {
                wrong.push(format!(
                    "{method} {prefix}{path} as {}: {status} {reply}, wanted {want:?}",
                    caller.name
                ));
            }
            if let Some(auth) = &caller.authorization {
                let token = auth.split_once(' ').map_or(auth.as_str(), |(_, t)| t);
                assert!(
                    !reply.to_string().contains(token),
                    "the answer echoes the token: {reply}"
                );
            }
            if matches!(got, Want::Unauthorized | Want::Forbidden) {
                let code = if got == Want::Unauthorized {
                    "unauthorized"
                } else {
                    "forbidden"
                };
                assert_eq!(
                    reply["error"]["code"], code,
                    "{method} {path} as {}: {reply}",
                    caller.name
                );
            }
        }
    }
    assert!(wrong.is_empty(), "{} wrong:\n{}", wrong.len(), wrong.join("\n"));
    table
}

/// A session that formed and ended (dry run), so every session endpoint has something real.
async fn a_session(http: &Http) -> String {
    http.join("p1").await;
    http.join("p2").await;
    eventually(Duration::from_secs(10), || async {
        let status = http.status("p1", 0.0).await;
        (status["status"] == "ended").then(|| status["session_id"].as_str().unwrap().to_owned())
    })
    .await
}

#[tokio::test]
async fn every_endpoint_admits_exactly_its_callers_directly_and_through_the_proxy() {
    let prefix = unique_prefix();
    let db = fresh_database().await;
    let backend = Backend::start(settings(&prefix, &db).session_size(2).build().unwrap()).await;
    let sid = a_session(&backend.http).await;
    let direct = check_matrix(&backend.http, &sid, false).await;

    let (proxy_addr, proxy_stop) = start_proxy(backend.addr, &prefix, &["--player-rate-limit-per-second", "0"]).await;
    let proxied = check_matrix(&Http::new(proxy_addr), &sid, true).await;
    println!("direct:\n{direct}\nthrough the proxy:\n{proxied}");
    proxy_stop.cancel();
    backend.stop().await;
}

#[tokio::test]
async fn with_player_auth_none_player_endpoints_are_open_and_the_rest_are_not() {
    let prefix = unique_prefix();
    let db = fresh_database().await;
    let settings = settings(&prefix, &db)
        .player_auth(PlayerAuthMode::None)
        .session_size(2)
        .build()
        .unwrap();
    let backend = Backend::start(settings).await;
    let http = &backend.http;
    let no_token = |method: Method, path: &str, body: Option<Value>| {
        let path = path.to_owned();
        async move {
            let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
            http.request(method, &path, &[("content-type", "application/json")], body)
                .await
        }
    };
    let (status, body) = no_token(Method::POST, "/match/join", Some(json!({"player_id": "open"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "queued");
    let (status, body) = no_token(Method::GET, "/match/status?player_id=open", None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("queued")));
    assert_eq!(
        no_token(Method::GET, "/players/open/matches", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        no_token(Method::DELETE, "/match/join/open", None).await.0,
        StatusCode::NO_CONTENT
    );
    // The original clients send no token at all; one that sends a bad token is not refused.
    let (status, _) = http
        .request(
            Method::GET,
            "/match/status?player_id=open",
            &[("authorization", "Bearer whatever")],
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Service and operator endpoints stay closed.
    assert_eq!(
        no_token(Method::GET, "/sessions/active", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let unknown = uuid::Uuid::new_v4();
    assert_eq!(
        no_token(Method::POST, &format!("/match/{unknown}/end"), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    backend.stop().await;
}

#[tokio::test]
async fn the_report_token_is_checked_before_the_body_is_read() {
    let prefix = unique_prefix();
    let db = fresh_database().await;
    let backend = Backend::start(settings(&prefix, &db).build().unwrap()).await;
    let sid = uuid::Uuid::new_v4();
    for auth in ["", "Authorization: Bearer forged.token.here\r\n"] {
        let mut stream = TcpStream::connect(backend.addr).await.unwrap();
        // A body is announced but never sent: only an answer that does not wait for it comes.
        let request = format!(
            "POST /internal/sessions/{sid}/result HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n{auth}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("answered without the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    backend.stop().await;
}

#[tokio::test]
async fn a_studio_jwks_verifies_player_tokens_and_refuses_algorithm_confusion() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../identity/tests/keys");
    let signing = EncodingKey::from_rsa_pem(&std::fs::read(keys.join("rsa.pem")).unwrap()).unwrap();
    let mut jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&signing, Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = json!("studio-1");
    let dir = std::env::temp_dir().join(format!("mp-jwks-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();

    let prefix = unique_prefix();
    let db = fresh_database().await;
    let settings = settings(&prefix, &db)
        .player_jwks(jwks.to_str().unwrap(), None)
        .player_token_issuer("https://id.studio.example")
        .player_token_audience("matchplane")
        .build()
        .unwrap();
    let backend = Backend::start(settings).await;
    let join_as = |token: String| {
        let http = backend.http.clone();
        async move {
            http.post_as(&format!("Bearer {token}"), "/match/join", json!({"player_id": "frank"}))
                .await
        }
    };
    let claims = json!({"sub": "frank", "iss": "https://id.studio.example", "aud": "matchplane", "exp": now() + 300});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("studio-1".into());
    let good = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
    let (status, body) = join_as(good).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // HS256 with the RSA public key as the HMAC secret.
    let public = std::fs::read(keys.join("rsa.pub.pem")).unwrap();
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("studio-1".into());
    let confused = jsonwebtoken::encode(&confused, &claims, &EncodingKey::from_secret(&public)).unwrap();
    assert_eq!(join_as(confused).await.0, StatusCode::UNAUTHORIZED);
    // The test suite's HS256 player key means nothing here.
    assert_eq!(
        join_as(mint_hs256(PLAYER_SECRET.as_bytes(), "frank", 300, None, None))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // Wrong issuer, wrong audience, unknown key id.
    for (field, value) in [("iss", "https://evil.example"), ("aud", "another-game")] {
        let mut wrong = claims.clone();
        wrong[field] = json!(value);
        let token = jsonwebtoken::encode(&header, &wrong, &signing).unwrap();
        assert_eq!(join_as(token).await.0, StatusCode::UNAUTHORIZED, "{field}");
    }
    let mut unknown = header.clone();
    unknown.kid = Some("studio-9".into());
    let token = jsonwebtoken::encode(&unknown, &claims, &signing).unwrap();
    assert_eq!(join_as(token).await.0, StatusCode::UNAUTHORIZED);
    backend.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_proxy_limits_joins_and_polls_per_verified_player() {
    let prefix = unique_prefix();
    let db = fresh_database().await;
    let backend = Backend::start(settings(&prefix, &db).build().unwrap()).await;
    // A rate so low that no token comes back during the test: only the burst counts.
    let (proxy_addr, proxy_stop) = start_proxy(
        backend.addr,
        &prefix,
        &[
            "--player-rate-limit-per-second",
            "0.001",
            "--player-rate-limit-burst",
            "3",
        ],
    )
    .await;
    let http = Http::new(proxy_addr);
    let poll_as = |auth: String, player: &str| {
        let (http, path) = (http.clone(), format!("/api/match/status?player_id={player}"));
        async move {
            http.request(Method::GET, &path, &[("authorization", &auth)], Vec::new())
                .await
        }
    };
    let grace = common::player_auth("grace");
    assert_eq!(
        http.post_as(&grace, "/api/match/join", json!({"player_id": "grace"}))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(poll_as(grace.clone(), "grace").await.0, StatusCode::OK);
    assert_eq!(poll_as(grace.clone(), "grace").await.0, StatusCode::OK);
    let (status, body) = poll_as(grace.clone(), "grace").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "throttled");
    let (status, _) = http
        .post_as(&grace, "/api/match/join", json!({"player_id": "grace"}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "joins share the player's bucket");
    // Another player, and the studio's service acting for grace, have buckets of their own.
    assert_eq!(poll_as(common::player_auth("heidi"), "heidi").await.0, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(poll_as(common::service_auth(), "grace").await.0, StatusCode::OK);
    }
    // Other endpoints are not limited per player.
    let (status, _) = http
        .request(
            Method::GET,
            "/api/players/grace/matches",
            &[("authorization", &grace)],
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    proxy_stop.cancel();
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_holds_a_token_or_a_ticket() {
    let prefix = unique_prefix();
    let db = fresh_database().await;
    let port = testkit::free_port().await;
    let log = std::env::temp_dir().join(format!("mp-log-{prefix}.log"));
    // The backend binary at its most talkative, with a real game server per session.
    let mut backend = tokio::process::Command::new(common::built_binary("backend"))
        .env_clear()
        .envs([
            ("BIND", format!("127.0.0.1:{port}")),
            ("REDIS_URL", common::redis_url()),
            ("DATABASE_URL", db.clone()),
            ("REDIS_KEY_PREFIX", prefix.clone()),
            ("TICKET_SECRET", SECRET.to_owned()),
            ("ADMIN_TOKEN", ADMIN.to_owned()),
            ("SERVICE_TOKEN", SERVICE.to_owned()),
            ("PLAYER_TOKEN_SECRET", PLAYER_SECRET.to_owned()),
            ("RUNTIME", "local".to_owned()),
            (
                "GAME_SERVER_BIN",
                common::built_binary("game-server").display().to_string(),
            ),
            ("GAME_SERVER_LOG", "debug".to_owned()),
            ("SESSION_SIZE", "2".to_owned()),
            ("RUST_LOG", "debug".to_owned()),
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = Http::new(SocketAddr::from(([127, 0, 0, 1], port)));
    testkit::listening(port).await;
    let (ivan, judy) = (common::player_auth("ivan"), common::player_auth("judy"));
    assert_eq!(
        http.post_as(&ivan, "/match/join", json!({"player_id": "ivan"})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        http.post_as(&judy, "/match/join", json!({"player_id": "judy"})).await.0,
        StatusCode::OK
    );
    let matched = eventually(Duration::from_secs(30), || async {
        let status = http.status("ivan", 5.0).await;
        (status["status"] == "matched").then_some(status)
    })
    .await;
    let ticket = matched["ticket"].as_str().unwrap().to_owned();
    let sid = matched["session_id"].as_str().unwrap().to_owned();
    // Refused tokens of every kind, on every class of endpoint.
    let forged = hs256(
        &json!({"sub": "ivan", "exp": now() + 60}),
        b"forged-key-0123456789-0123456789-0123",
    );
    let refused = [
        format!("Bearer {forged}"),
        "Bearer garbage-token-value-123".to_owned(),
        format!("Bearer {ticket}"),
    ];
    for auth in &refused {
        for path in ["/match/status?player_id=ivan", "/sessions/active"] {
            let (status, _) = http
                .request(Method::GET, path, &[("authorization", auth)], Vec::new())
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        let report = format!("/internal/sessions/{sid}/result");
        let (status, _) = http
            .request(Method::POST, &report, &[("authorization", auth)], b"{}".to_vec())
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let end = format!("/match/{sid}/end");
    let (status, _) = http
        .request(Method::POST, &end, &[("authorization", &judy)], Vec::new())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = http
        .request(
            Method::POST,
            &end,
            &[("authorization", &common::admin_auth())],
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The stop reaches the server, which reports with its own report token.
    eventually(Duration::from_secs(30), || async {
        let (_, history) = http.get("/players/ivan/matches").await;
        (history["matches"][0]["status"] == "ended").then_some(())
    })
    .await;
    backend.kill().await.unwrap();

    let mut logs = std::fs::read_to_string(&log).unwrap();
    logs.push_str(&std::fs::read_to_string(log.with_extension("err")).unwrap());
    assert!(logs.lines().count() > 20, "the backend logged at debug: {logs}");
    let bearer = |auth: &str| auth.trim_start_matches("Bearer ").to_owned();
    let mut secrets = vec![
        ticket,
        bearer(&ivan),
        bearer(&judy),
        SERVICE.to_owned(),
        ADMIN.to_owned(),
    ];
    secrets.extend(refused.iter().map(|a| bearer(a)));
    for secret in &secrets {
        // A JWT's signature alone is as good as the token for finding a leak.
        let tail = secret.rsplit('.').next().unwrap();
        assert!(!logs.contains(tail), "a log line holds a token or ticket ({tail})");
    }
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(log.with_extension("err"));
}
