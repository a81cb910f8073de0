//! `REGIONS` on the local runtime: a session's server starts in the region forming chose from
//! its players' latency maps, its players are pointed at that region's proxy and play through
//! it, and each region keeps its own warm pool.

mod common;

use std::time::Duration;

use common::{Backend, eventually};
use tokio::net::TcpListener;

const QUEUES: &str = "queues:
  - name: near-or-far
    session_size: 2
    latency: {attribute: latency_ms, max_ms: 60}
";

async fn join(http: &common::Http, player: &str, near: u32, far: u32) {
    let body = serde_json::json!({"player_id": player, "queue": "near-or-far",
        "attributes": {"latency_ms": {"near": near, "far": far}}});
    let (status, answer) = http.post("/match/join", body).await;
    assert!(status.is_success(), "{answer}");
}

async fn matched(http: &common::Http, player: &str) -> serde_json::Value {
    eventually(Duration::from_secs(20), || async {
        let status = http.status(player, 5.0).await;
        (status["status"] == "matched").then_some(status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_runs_in_its_region_and_its_players_reach_that_regions_proxy() {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let flags = ["--player-rate-limit-per-second", "0"];
    let (near, _near_stop) = common::start_proxy(backend_addr, &prefix, &flags).await;
    let (far, _far_stop) = common::start_proxy(backend_addr, &prefix, &flags).await;
    let dir = std::env::temp_dir().join(format!("regions-{prefix}"));
    std::fs::create_dir_all(&dir).unwrap();
    let queues = dir.join("queues.yaml");
    std::fs::write(&queues, QUEUES).unwrap();
    let regions = dir.join("regions.yaml");
    std::fs::write(
        &regions,
        format!(
            "regions:
  - {{name: near, proxy: '{near}', target: local, warm_pool: {{min: 1, max: 1}}}}
  - {{name: far, proxy: '{far}', target: local}}
"
        ),
    )
    .unwrap();
    let settings = common::local_settings(&prefix, &db, &common::built_binary("game-server"))
        .matchmaking_config(&queues)
        .regions(&regions)
        .build()
        .unwrap();
    let backend = Backend::start_on(listener, settings).await;
    let http = &backend.http;
    let pools = || async { http.get("/health").await.1["warm_profiles"].clone() };
    eventually(Duration::from_secs(20), || async {
        (pools().await["near/game-server"]["idle"] == 1).then_some(())
    })
    .await;
    assert!(pools().await["far/game-server"].is_null(), "far keeps no warm server");

    // Closer to far: the session is far's, and its players are pointed at far's proxy.
    join(http, "f1", 40, 10).await;
    join(http, "f2", 50, 20).await;
    let statuses = [matched(http, "f1").await, matched(http, "f2").await];
    for status in &statuses {
        assert_eq!(status["region"], "far", "{status}");
        assert_eq!(status["connect_port"].as_u64(), Some(u64::from(far.port())), "{status}");
    }
    common::play_to_the_end(&far.to_string(), &statuses).await;
    // Closer to near: near's session, on near's warm server, through near's proxy.
    join(http, "n1", 5, 50).await;
    join(http, "n2", 8, 55).await;
    let statuses = [matched(http, "n1").await, matched(http, "n2").await];
    for status in &statuses {
        assert_eq!(status["region"], "near", "{status}");
        assert_eq!(
            status["connect_port"].as_u64(),
            Some(u64::from(near.port())),
            "{status}"
        );
    }
    common::play_to_the_end(&near.to_string(), &statuses).await;
    assert_eq!(pools().await["near/game-server"]["handed"], 1);

    // A latency map naming no region of this deployment is refused, and changes nothing; one
    // naming another region beside a listed one is taken (that region is never chosen).
    let body = serde_json::json!({"player_id": "m1", "queue": "near-or-far",
        "attributes": {"latency_ms": {"mars": 5, "venus": 9}}});
    let (status, answer) = http.post("/match/join", body).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("names no region of this deployment (near, far)"),
        "{answer}"
    );
    assert_eq!(http.status("m1", 0.0).await["status"], "unknown");
    let body = serde_json::json!({"player_id": "m1", "queue": "near-or-far",
        "attributes": {"latency_ms": {"mars": 1, "far": 30}}});
    assert!(http.post("/match/join", body).await.0.is_success());
    join(http, "m2", 50, 20).await;
    assert_eq!(matched(http, "m1").await["region"], "far");
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_regions_file_with_mistakes_stops_the_backend_with_one_line_each() {
    let dir = std::env::temp_dir().join(format!("regions-bad-{}", common::unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let regions = dir.join("regions.yaml");
    std::fs::write(
        &regions,
        "regions:\n  - {name: eu, proxy: 'eu:7777', target: {context: kind-eu}}\n  - {name: eu, proxy: 'x', target: local}\n",
    )
    .unwrap();
    let error = common::local_settings("p", "postgres://x/y", &common::built_binary("game-server"))
        .regions(&regions)
        .build()
        .unwrap_err();
    let shown = regions.display();
    assert_eq!(
        error.lines().collect::<Vec<_>>(),
        [
            format!(r#"REGIONS {shown}: region "eu": named twice"#),
            format!(r#"REGIONS {shown}: region "eu": proxy "x": must be host:port"#),
        ]
    );
    // A context target with RUNTIME=local.
    std::fs::write(
        &regions,
        "regions:\n  - {name: eu, proxy: 'eu:7777', target: {context: kind-eu}}\n",
    )
    .unwrap();
    let error = common::local_settings("p", "postgres://x/y", &common::built_binary("game-server"))
        .regions(&regions)
        .build()
        .unwrap_err();
    assert!(error.contains("its target must be of RUNTIME's kind"), "{error}");
    // Per-region bounds for something that is no profile with a warm pool.
    std::fs::write(
        &regions,
        "regions:\n  - {name: eu, proxy: 'eu:7777', target: local, warm_pools: {arena: {max: 2}}}\n",
    )
    .unwrap();
    let error = common::local_settings("p", "postgres://x/y", &common::built_binary("game-server"))
        .regions(&regions)
        .build()
        .unwrap_err();
    assert_eq!(
        error,
        format!(
            r#"REGIONS {shown}: region "eu": warm_pools names "arena", which is no server profile with a warm_pool"#
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}
