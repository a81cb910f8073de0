//! `loadgen bench-proxy` end to end with short windows: the echo server it starts is reached
//! directly and through the real proxy (routing by the session record the benchmark writes to
//! the real Redis), and the report carries figures for both paths.

use clap::Parser;
use loadgen::bench_proxy::{self, BenchProxyArgs};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-proxy-test-secret-0123456789";

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    bench: BenchProxyArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_proxy_measures_direct_and_the_proxy_side_by_side() {
    let prefix = testkit::unique_prefix();
    let redis = testkit::redis_url();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap().to_string();
    let proxy = service::cli::parse_without_env::<proxy::Config, _, _>([
        "proxy",
        "--backend-url",
        "http://127.0.0.1:9",
        "--redis-url",
        &redis,
        "--redis-key-prefix",
        &prefix,
        "--ticket-secret",
        SECRET,
        "--rate-limit-per-second",
        "0",
        "--player-auth",
        "none",
    ])
    .unwrap()
    .validate()
    .unwrap();
    let shutdown = CancellationToken::new();
    let proxy_task = tokio::spawn(proxy::run(listener, proxy, shutdown.clone()));

    // The proxy runs in this process, so its CPU time is this process's.
    let own_pid = std::process::id().to_string();
    let args = service::cli::parse_without_env::<Wrapper, _, _>([
        "bench-proxy",
        "--echo-port",
        "0",
        "--proxy-addr",
        &proxy_addr,
        "--proxy-pid",
        &own_pid,
        "--redis-url",
        &redis,
        "--redis-key-prefix",
        &prefix,
        "--ticket-secret",
        SECRET,
        "--seconds",
        "0.3",
        "--round-trips",
        "201",
        "--rounds",
        "2",
        "--placement",
        "shared",
    ])
    .unwrap()
    .bench;
    let results = bench_proxy::run(args.clone()).await.expect("the benchmark runs");

    let paths: Vec<&str> = results.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["direct", "matchplane", "mp identity none", "mp proxy-v2"]);
    for r in &results {
        assert!(r.throughput_1_mib_s > 0.0, "{r:?}");
        assert!(r.throughput_64_mib_s > 0.0, "{r:?}");
        assert_eq!(r.ping_pong.count, 201, "every round's round trips together: {r:?}");
        assert_eq!((r.rounds_1_mib_s.len(), r.rounds_64_mib_s.len()), (2, 2), "{r:?}");
        let (low, high) = (
            r.rounds_64_mib_s[0].min(r.rounds_64_mib_s[1]),
            r.rounds_64_mib_s[0].max(r.rounds_64_mib_s[1]),
        );
        assert!(
            low <= r.throughput_64_mib_s && r.throughput_64_mib_s <= high,
            "the median lies between the rounds: {r:?}"
        );
        assert!(
            r.ping_pong.p50_ms > 0.0 && r.ping_pong.p50_ms <= r.ping_pong.p99_ms,
            "{r:?}"
        );
        let cpu = r.cpu.expect("both processes are known");
        assert!(cpu.total_s() > 0.0, "{r:?}");
        let machine = r.machine_cpu.expect("both processes are known");
        assert!(machine.total_s() >= cpu.total_s(), "{r:?}");
    }
    let table = bench_proxy::render(&results);
    assert!(table.contains("matchplane vs direct: throughput x"), "{table}");
    assert!(table.contains("CPU-bound ceiling vs direct"), "{table}");
    assert!(
        table.contains("mp proxy-v2 vs matchplane (join-line): throughput x"),
        "{table}"
    );
    assert!(table.contains("median of 2 round(s)"), "{table}");
    assert!(!table.contains("vs haproxy"), "no HAProxy was measured: {table}");

    // The JSON carries the conditions of the run beside the figures.
    let json = serde_json::to_value(bench_proxy::Report::new(&args, &results)).unwrap();
    assert_eq!(json["placement"], "shared", "{json}");
    assert_eq!(json["rounds"], 2, "{json}");
    assert_eq!(json["seconds_per_window"], 0.3, "{json}");
    let congestion = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap();
    assert_eq!(json["tcp_congestion_control"], congestion.trim(), "{json}");
    assert_eq!(json["paths"][1]["path"], "matchplane", "{json}");
    assert_eq!(json["paths"][1]["ping_pong"]["count"], 201, "{json}");

    shutdown.cancel();
    proxy_task.await.unwrap().unwrap();
}
