//! `loadgen probe` against a real proxy: the latency map of the regions whose proxies answer,
//! by UDP and by TCP, and a region nobody answers for left out.

use std::time::Duration;

use loadgen::probe::{ProbeArgs, Transport};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_map_holds_each_region_whose_proxy_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let redis = testkit::redis_url();
    let prefix = testkit::unique_prefix();
    let settings = service::cli::parse_without_env::<proxy::Config, _, _>([
        "proxy",
        "--backend-url",
        "http://127.0.0.1:9",
        "--redis-url",
        &redis,
        "--redis-key-prefix",
        &prefix,
        "--ticket-secret",
        "probe-test-secret-0123456789abcdef",
        "--player-token-secret",
        "probe-test-player-secret-0123456789abcdef",
    ])
    .unwrap()
    .validate()
    .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(proxy::run(listener, settings, stop.clone()));
    let client = loadgen::http::HttpClient::new(&format!("http://{addr}"), Duration::from_secs(2));
    testkit::eventually(Duration::from_secs(30), || async { client.text("/livez").await.ok() }).await;
    // A region whose proxy is gone: a port with nothing on it.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for transport in [Transport::Udp, Transport::Tcp] {
        let args = ProbeArgs {
            regions: vec![format!("near={addr}"), format!("gone={gone}")],
            count: 5,
            transport,
            timeout_seconds: 0.3,
        };
        let map = loadgen::probe::run(&args).await.unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["near"], "{transport:?}: {map:?}");
        assert!(map["near"] > 0.0 && map["near"] < 300.0, "{map:?}");
    }
    // The command prints the map as a join carries it; a region it cannot read is refused.
    let out = std::process::Command::new(testkit::built_binary("loadgen"))
        .args(["probe", "--regions", &format!("near={addr}"), "--count", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(printed["latency_ms"]["near"].as_f64().is_some(), "{printed}");
    for bad in ["near", "=127.0.0.1:1", "no space=127.0.0.1:1", "x=nowhere"] {
        let out = std::process::Command::new(testkit::built_binary("loadgen"))
            .args(["probe", "--regions", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--regions"), "{bad}");
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}
