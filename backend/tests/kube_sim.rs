//! The `kubernetes` runtime end to end against `kube-sim`: a real API server's behaviour for
//! Pods (resource versions, list and watch, 410 Gone, validation) and a kubelet running the
//! real game-server per Pod, reached through an ordinary kubeconfig. Faults are injected the
//! way a cluster produces them: Pods deleted, evicted or never ready, watches cut, history
//! compacted, error storms, a replica killed, two replicas reaping at once.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backend::config::SettingsBuilder;
use common::{Backend, GameClient, built_binary, eventually};
use kube_sim::kubelet::Command;
use kube_sim::node::PodStorage as _;
use kube_sim::{Behaviour, Fault, NodeConfig};
use protocol::{GameState, ServerReply};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const NS: &str = "games";

struct Sim {
    cluster: Arc<kube_sim::Cluster>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    _stop: tokio_util::sync::DropGuard,
}

/// The Role the backend ships with, bound in the test namespace: kube-sim refuses every call it
/// does not grant, as a real API server does.
fn backend_role() -> kube_sim::Rbac {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/backend/rbac.yaml");
    kube_sim::Rbac::from_manifest(&std::fs::read_to_string(path).unwrap(), Some(NS)).unwrap()
}

/// kube-sim in this process, with the ticket Secret the game-server Pods reference.
async fn sim(start_delay_ms: u64) -> Sim {
    sim_with(start_delay_ms, None).await
}

/// kube-sim enforcing `network` on connections to Pod IPs.
async fn sim_with(start_delay_ms: u64, network: Option<kube_sim::network::Network>) -> Sim {
    let node = NodeConfig {
        game_server_bin: built_binary("game-server"),
        images: [
            ("bzflag/bzfs:2.4.26".to_owned(), "/usr/games/bzfs".into()),
            (
                "matchplane/sdk-example:1".to_owned(),
                built_binary("sdk-example-server"),
            ),
            // A second build of it, for two versions side by side.
            (
                "matchplane/sdk-example:2".to_owned(),
                built_binary("sdk-example-server"),
            ),
        ]
        .into(),
        // The namespace enforces the restricted Pod Security Standard, as deploy/ labels it.
        namespaces: NodeConfig::namespaces_with(NS, Some("restricted")),
        secrets: [(
            ("matchplane-ticket".to_owned(), "ticket-secret".to_owned()),
            common::SECRET.to_owned(),
        )]
        .into(),
        log_dir: None,
        strict_by_default: true,
        rbac: Some(backend_role()),
        network: network.map(Arc::new),
    };
    let behaviour = Behaviour {
        start_delay_ms,
        never_ready: 0,
        bookmark_interval_ms: 500,
        max_watch_seconds: 30,
    };
    let (cluster, addr, stop): (_, SocketAddr, CancellationToken) = kube_sim::start(node, behaviour).await.unwrap();
    let kubeconfig = std::env::temp_dir().join(format!("kube-sim-{}.yaml", common::unique_prefix()));
    std::fs::write(&kubeconfig, kube_sim::kubeconfig(addr, NS)).unwrap();
    Sim {
        cluster,
        addr,
        kubeconfig,
        _stop: stop.drop_guard(),
    }
}

/// A backend replica with the kubernetes runtime against `sim`.
async fn replica(
    sim: &Sim,
    prefix: &str,
    db: &str,
    instance: &str,
    adjust: impl FnOnce(SettingsBuilder) -> SettingsBuilder,
) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal = format!("http://{}", listener.local_addr().unwrap());
    let settings = common::settings(prefix, db)
        .kubernetes(&sim.kubeconfig, NS, &internal)
        .instance_id(instance)
        .session_size(2)
        .finished_pod_grace_seconds(1.0)
        .server_ready_timeout_seconds(20.0);
    Backend::start_on(listener, adjust(settings).build().unwrap()).await
}

/// Joins `players` and waits until each is matched; returns each one's status body.
async fn matched(backend: &Backend, players: &[String]) -> Vec<serde_json::Value> {
    for p in players {
        assert_eq!(backend.http.join(p).await.0, 200);
    }
    let mut out = Vec::new();
    for p in players {
        out.push(
            eventually(Duration::from_secs(60), || async {
                let body = backend.http.status(p, 5.0).await;
                (body["status"] == "matched").then_some(body)
            })
            .await,
        );
    }
    out
}

/// The Pod serving `sid`, by the session's record.
async fn pod_of(backend: &Backend, sid: &str) -> (String, String) {
    let (_, session) = backend.http.get(&format!("/sessions/{sid}")).await;
    (NS.to_owned(), session["server"].as_str().unwrap().to_owned())
}

/// Waits until `player`'s session has ended, and returns the reason.
async fn ended(backend: &Backend, player: &str, within: Duration) -> String {
    eventually(within, || async {
        let body = backend.http.status(player, 0.0).await;
        (body["status"] == "ended").then(|| body["end_reason"].as_str().unwrap_or_default().to_owned())
    })
    .await
}

fn players(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_plays_whole_matches_on_pods_and_every_pod_is_gone_after() {
    let sim = sim(200).await;
    let db = common::fresh_database().await;
    let backend = replica(&sim, &common::unique_prefix(), &db, "swarm", |s| s).await;
    let roster = players("swarm", 6);
    let bodies = matched(&backend, &roster).await;
    let mut plays = Vec::new();
    for (i, (player, body)) in roster.iter().zip(bodies).enumerate() {
        let http = backend.http.clone();
        let player = player.clone();
        plays.push(tokio::spawn(async move {
            let sid = body["session_id"].as_str().unwrap().to_owned();
            let (_, session) = http.get(&format!("/sessions/{sid}")).await;
            let addr = session["addr"].as_str().unwrap().to_owned();
            assert!(addr.starts_with("127."), "the pod's own loopback IP: {addr}");
            let mut client = GameClient::connect(&addr).await;
            client.send(&format!("JOIN {}", body["ticket"].as_str().unwrap())).await;
            assert!(
                matches!(client.recv().await, Some(ServerReply::Welcome { .. })),
                "{player}"
            );
            if i % 2 == 0 {
                client.send("REQUEST_MATCH 1").await;
            }
            let mut states = Vec::new();
            while let Some(reply) = client.recv().await {
                if let ServerReply::State(state) = reply {
                    states.push(state);
                }
            }
            assert_eq!(states, vec![GameState::Running, GameState::Stop], "{player}");
        }));
    }
    for play in plays {
        play.await.unwrap();
    }
    for p in &roster {
        assert_eq!(ended(&backend, p, Duration::from_secs(30)).await, "completed");
    }
    // One Pod per session, each deleted once finished (invariant 5).
    let records = eventually(Duration::from_secs(30), || async {
        let records = sim.cluster.records();
        records.iter().all(|r| r.deleted_ms.is_some()).then_some(records)
    })
    .await;
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(
        records.iter().all(|r| r.phase.as_deref() == Some("Succeeded")),
        "{records:?}"
    );
    backend.stop().await;
}

/// A long poll answers with what the client can act on. While the session's Pod starts (1.5 s
/// here), a status long poll without `status` and a join that waits both wait through
/// `allocating` and answer `matched` with a ticket; a long poll that says it knows `queued`
/// hears of `allocating` as soon as the session forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_wait_through_allocating_unless_told_what_the_client_knows() {
    let sim = sim(1500).await;
    let db = common::fresh_database().await;
    let backend = replica(&sim, &common::unique_prefix(), &db, "lp", |s| {
        s.shutdown_grace_seconds(1.0)
    })
    .await;
    let http = &backend.http;
    assert_eq!(http.join("lp1").await.1["status"], "queued");
    let (lp1, lp2) = (common::player_auth("lp1"), common::player_auth("lp2"));
    let lp1_header = [("authorization", lp1.as_str())];
    let told = http.request(
        hyper::Method::GET,
        "/match/status?player_id=lp1&wait=20&status=queued",
        &lp1_header,
        Vec::new(),
    );
    let untold = http.status("lp1", 20.0);
    let joined = http.post_as(&lp2, "/match/join?wait=20", serde_json::json!({"player_id": "lp2"}));
    let ((_, told), untold, (status, joined)) = tokio::join!(told, untold, joined);
    assert_eq!(told["status"], "allocating", "{told}");
    assert_eq!(status, hyper::StatusCode::OK);
    for (player, body) in [("lp1", &untold), ("lp2", &joined)] {
        assert_eq!(body["status"], "matched", "{player}: {body}");
        assert_eq!(body["session_id"], told["session_id"], "{player}");
        assert_eq!(body["players"], serde_json::json!(["lp1", "lp2"]), "{player}");
        assert!(body["ticket"].is_string(), "{player}: {body}");
    }
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_mid_match_fails_its_session_within_seconds() {
    let sim = sim(0).await;
    let db = common::fresh_database().await;
    let backend = replica(&sim, &common::unique_prefix(), &db, "del", |s| s).await;
    let roster = players("del", 2);
    let bodies = matched(&backend, &roster).await;
    let pod = pod_of(&backend, bodies[0]["session_id"].as_str().unwrap()).await;
    // `kubectl delete pod`: graceful, by someone else.
    assert!(sim.cluster.delete(&pod, None).is_some());
    // The kubelet's SIGTERM makes the server end the match `terminated` and report; when the
    // watch event wins the race instead, the session fails. Either way it is over within
    // seconds (the bound `ended` waits).
    let reason = ended(&backend, &roster[0], Duration::from_secs(10)).await;
    assert!(reason == "failed" || reason == "terminated", "{reason}");
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_pod_fails_its_session() {
    let sim = sim(0).await;
    let db = common::fresh_database().await;
    let backend = replica(&sim, &common::unique_prefix(), &db, "evict", |s| s).await;
    let roster = players("evict", 2);
    let bodies = matched(&backend, &roster).await;
    let pod = pod_of(&backend, bodies[0]["session_id"].as_str().unwrap()).await;
    assert!(sim.cluster.tell_kubelet(&pod, Command::Evict));
    assert_eq!(ended(&backend, &roster[1], Duration::from_secs(10)).await, "failed");
    let record = eventually(Duration::from_secs(10), || async {
        sim.cluster
            .records()
            .into_iter()
            .find(|r| r.name == pod.1 && r.deleted_ms.is_some())
    })
    .await;
    assert_eq!(record.reason.as_deref(), Some("Evicted"));
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_stops_being_ready_fails_its_session() {
    let sim = sim(0).await;
    let db = common::fresh_database().await;
    let backend = replica(&sim, &common::unique_prefix(), &db, "unready", |s| s).await;
    let roster = players("unready", 2);
    let bodies = matched(&backend, &roster).await;
    let pod = pod_of(&backend, bodies[0]["session_id"].as_str().unwrap()).await;
    // A wedged server or a lost node: the readiness probe fails from now on.
    assert!(sim.cluster.tell_kubelet(&pod, Command::Unready));
    assert_eq!(ended(&backend, &roster[0], Duration::from_secs(15)).await, "failed");
    eventually(Duration::from_secs(10), || async {
        sim.cluster.get(&pod).is_none().then_some(())
    })
    .await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_never_ready_puts_its_players_back_and_they_play_on_the_next() {
    let sim = sim(0).await;
    sim.cluster.set_behaviour(Behaviour {
        never_ready: 1,
        ..sim.cluster.behaviour()
    });
    let db = common::fresh_database().await;
    let backend = replica(&sim, &common::unique_prefix(), &db, "never", |s| {
        s.server_ready_timeout_seconds(3.0)
    })
    .await;
    let roster = players("never", 2);
    let bodies = matched(&backend, &roster).await;
    assert_eq!(bodies[0]["session_id"], bodies[1]["session_id"]);
    let records = sim.cluster.records();
    assert_eq!(records.len(), 2, "{records:?}");
    let never = records
        .iter()
        .find(|r| r.ready_ms.is_none())
        .expect("the pod that never got ready");
    assert_ne!(never.session.as_deref(), bodies[0]["session_id"].as_str());
    eventually(Duration::from_secs(10), || async {
        sim.cluster
            .records()
            .iter()
            .any(|r| r.name == never.name && r.deleted_ms.is_some())
            .then_some(())
    })
    .await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_watches_and_410_gone_lose_no_pod() {
    let sim = sim(0).await;
    let db = common::fresh_database().await;
    let backend = replica(&sim, &common::unique_prefix(), &db, "gone", |s| s).await;
    let roster = players("gone", 2);
    let bodies = matched(&backend, &roster).await;
    let pod = pod_of(&backend, bodies[0]["session_id"].as_str().unwrap()).await;
    // The watch is cut and its resource version compacted away: it must relist (410 Gone)
    // and still see that the Pod vanished meanwhile.
    sim.cluster.compact();
    sim.cluster.cut_watches();
    assert!(sim.cluster.delete(&pod, Some(0)).is_some());
    assert_eq!(ended(&backend, &roster[0], Duration::from_secs(20)).await, "failed");
    // And the watch works again afterwards: a new session gets a ready Pod.
    matched(&backend, &players("gone-after", 2)).await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_error_storms_are_ridden_out() {
    let sim = sim(0).await;
    for (code, verb) in [
        (500, None),
        (429, None),
        (500, Some(kube_sim::Verb::Create)),
        (503, Some(kube_sim::Verb::List)),
    ] {
        sim.cluster.add_fault(Fault {
            code,
            count: 6,
            verb,
            after: false,
        });
    }
    let db = common::fresh_database().await;
    let backend = replica(&sim, &common::unique_prefix(), &db, "storm", |s| s).await;
    let bodies = matched(&backend, &players("storm", 4)).await;
    assert_eq!(bodies.len(), 4);
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_reap_at_once_and_every_finished_pod_goes_once() {
    let sim = sim(0).await;
    let db = common::fresh_database().await;
    let prefix = common::unique_prefix();
    let one = replica(&sim, &prefix, &db, "reap-1", |s| s).await;
    let two = replica(&sim, &prefix, &db, "reap-2", |s| s).await;
    let roster = players("reap", 4);
    matched(&one, &roster[..2]).await;
    matched(&two, &roster[2..]).await;
    // Both containers die: each Pod fails; both replicas' reapers see it.
    for record in sim.cluster.records() {
        assert!(
            sim.cluster
                .tell_kubelet(&(record.namespace, record.name), Command::Kill)
        );
    }
    for p in &roster {
        assert_eq!(ended(&one, p, Duration::from_secs(15)).await, "failed");
    }
    let records = eventually(Duration::from_secs(15), || async {
        let records = sim.cluster.records();
        records.iter().all(|r| r.deleted_ms.is_some()).then_some(records)
    })
    .await;
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.phase.as_deref() == Some("Failed")));
    // The replica that formed a session deletes its Pod; the other, waiting 3 s more before it
    // would, finds it gone: one delete per Pod, not one per replica.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pod_deletes(&sim), 2, "deletes sent for two finished pods");

    // A replica gone for good: the Pod of the session it formed is deleted by the other, a
    // few seconds later.
    let three = replica(&sim, &prefix, &db, "reap-3", |s| s).await;
    let roster = players("reap-gone", 2);
    let sid = matched(&three, &roster).await[0]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, pod) = pod_of(&three, &sid).await;
    three.stop().await;
    assert!(sim.cluster.tell_kubelet(&(NS.to_owned(), pod.clone()), Command::Kill));
    assert_eq!(ended(&two, &roster[0], Duration::from_secs(15)).await, "failed");
    deleted(&sim, &pod, Duration::from_secs(15)).await;
    assert_eq!(pod_deletes(&sim), 3, "deletes sent for three finished pods");
    one.stop().await;
    two.stop().await;
}

/// The Pod deletes `sim` took, none of them refused by the Role it enforces.
fn pod_deletes(sim: &Sim) -> u64 {
    sim.cluster
        .calls()
        .into_iter()
        .filter(|(call, _)| call.verb == "delete")
        .map(|(call, count)| {
            assert_eq!(count.forbidden, 0, "refused by the Role: {call:?}");
            count.allowed
        })
        .sum()
}

/// The warm-pool figures a replica reports in `GET /health`.
async fn warm_state(backend: &Backend) -> serde_json::Value {
    backend.http.get("/health").await.1["warm_servers"].clone()
}

/// A replica keeping `n` warm Pods, returned once they are all Ready.
async fn warm_replica(
    sim: &Sim,
    instance: &str,
    n: u32,
    adjust: impl FnOnce(SettingsBuilder) -> SettingsBuilder,
) -> Backend {
    let db = common::fresh_database().await;
    let backend = replica(sim, &common::unique_prefix(), &db, instance, |s| {
        adjust(s.warm_pool(n, n).shutdown_grace_seconds(1.0))
    })
    .await;
    eventually(Duration::from_secs(20), || async {
        (warm_state(&backend).await["idle"] == n).then_some(())
    })
    .await;
    backend
}

/// One session's players play it to the end on its server.
async fn play(backend: &Backend, bodies: &[serde_json::Value]) {
    let sid = bodies[0]["session_id"].as_str().unwrap().to_owned();
    let (_, session) = backend.http.get(&format!("/sessions/{sid}")).await;
    common::play_to_the_end(session["addr"].as_str().unwrap(), bodies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pods_are_claimed_once_across_three_replicas_and_play_whole_matches() {
    let sim = sim(300).await;
    let db = common::fresh_database().await;
    let prefix = common::unique_prefix();
    let mut replicas = Vec::new();
    for i in 0..3 {
        // Sessions nobody plays wait for their players; the replicas need not wait for them.
        let adjust = |s: SettingsBuilder| s.warm_pool(6, 6).shutdown_grace_seconds(1.0);
        replicas.push(replica(&sim, &prefix, &db, &format!("warm-{i}"), adjust).await);
    }
    // One replica keeps the pool; every replica sees it from its watch.
    for backend in &replicas {
        eventually(Duration::from_secs(30), || async {
            (warm_state(backend).await["idle"] == 6).then_some(())
        })
        .await;
    }
    let warm_records = sim.cluster.records();
    assert_eq!(warm_records.len(), 6, "exactly the pool, once: {warm_records:?}");
    assert!(
        warm_records
            .iter()
            .all(|r| r.name.starts_with("mp-gs-warm-") && r.session.is_none())
    );
    // 24 players through three replicas at once: 12 sessions race for 6 warm Pods.
    let roster = players("warm", 24);
    let (a, b, c) = tokio::join!(
        matched(&replicas[0], &roster[..8]),
        matched(&replicas[1], &roster[8..16]),
        matched(&replicas[2], &roster[16..]),
    );
    let bodies: Vec<serde_json::Value> = [a, b, c].concat();
    let mut sessions: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for body in bodies {
        sessions
            .entry(body["session_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(body);
    }
    assert_eq!(sessions.len(), 12);
    let mut servers = std::collections::BTreeMap::new();
    for sid in sessions.keys() {
        let (_, pod) = pod_of(&replicas[0], sid).await;
        assert!(
            servers.insert(pod, sid.clone()).is_none(),
            "a server handed two sessions"
        );
    }
    let warm: Vec<(&String, &String)> = servers
        .iter()
        .filter(|(pod, _)| pod.starts_with("mp-gs-warm-"))
        .collect();
    let (mut handed, mut cold) = (0, 0);
    for backend in &replicas {
        let state = warm_state(backend).await;
        handed += state["handed"].as_u64().unwrap();
        cold += state["cold_starts"].as_u64().unwrap();
    }
    assert_eq!(handed as usize, warm.len(), "{servers:?}");
    assert_eq!(
        (handed + cold) as usize,
        sessions.len(),
        "every session warm or cold: {servers:?}"
    );
    // A claim that loses a Pod to another session tries the next, so no session starts cold
    // while a Pod of the pool is idle: all six are claimed (refills that became Ready in time
    // may be claimed too).
    assert!(
        warm.len() >= 6,
        "the whole pool is used before any cold start: {servers:?}"
    );
    // kube-sim agrees: each claimed warm Pod carries the session that names it.
    let records = sim.cluster.records();
    for (pod, sid) in &warm {
        let record = records.iter().find(|r| &&r.name == pod).unwrap();
        assert_eq!(record.session.as_ref(), Some(*sid));
    }
    // A session on a warm Pod plays to the end, exactly as on a cold one.
    let (_, sid) = warm[0];
    play(&replicas[0], &sessions[sid]).await;
    let ended_state = eventually(Duration::from_secs(30), || async {
        let (_, session) = replicas[0].http.get(&format!("/sessions/{sid}")).await;
        (session["status"] == "ended").then_some(session)
    })
    .await;
    assert_eq!(ended_state["end_reason"], "completed", "{ended_state}");
    for backend in replicas {
        backend.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pod_that_dies_is_replaced_and_an_empty_pool_falls_back_to_cold() {
    let sim = sim(0).await;
    let backend = warm_replica(&sim, "warm-die", 2, |s| s).await;
    let victim = sim.cluster.records()[0].clone();
    assert!(
        sim.cluster
            .tell_kubelet(&(victim.namespace.clone(), victim.name.clone()), Command::Kill)
    );
    // Replaced (the pool is back to two Ready Pods), and the dead one is reaped.
    eventually(Duration::from_secs(20), || async {
        let state = warm_state(&backend).await;
        let gone = sim
            .cluster
            .records()
            .iter()
            .any(|r| r.name == victim.name && r.deleted_ms.is_some());
        (state["replaced"] == 1 && state["idle"] == 2 && gone).then_some(())
    })
    .await;
    // New Pods now take a while: three sessions at once find two warm Pods, the third starts cold.
    sim.cluster.set_behaviour(Behaviour {
        start_delay_ms: 1500,
        ..sim.cluster.behaviour()
    });
    let bodies = matched(&backend, &players("warm-die", 6)).await;
    let sessions: std::collections::BTreeSet<&str> = bodies.iter().map(|b| b["session_id"].as_str().unwrap()).collect();
    assert_eq!(sessions.len(), 3);
    let state = warm_state(&backend).await;
    assert_eq!(state["handed"], 2, "{state}");
    assert_eq!(state["cold_starts"], 1, "{state}");
    backend.stop().await;
}

/// The game-server NetworkPolicy `deploy/` ships, enforced by kube-sim with this test process
/// (the backend replica and the players' client) seen as the backend's Pod: the policy in `yaml`.
fn enforcing(yaml: &str) -> kube_sim::network::Network {
    let policies = kube_sim::network::policies_from_manifest(yaml, Some(NS)).unwrap();
    let backend = kube_sim::network::HostWorkload {
        labels: [("app.kubernetes.io/name".to_owned(), "matchplane-backend".to_owned())].into(),
        program: std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap(),
    };
    kube_sim::network::Network::new(policies, NS, vec![backend])
}

/// kube-sim's counts of connections from host workloads (this process) to game ports:
/// (admitted, refused), with every flow for the assertion messages.
fn from_host_to_game_port(sim: &Sim) -> (u64, u64, Vec<kube_sim::network::Flow>) {
    let flows = sim.cluster.config().network.as_ref().unwrap().flows();
    let (allowed, denied) = flows
        .iter()
        .filter(|f| f.from.starts_with("host ") && f.port == 7777)
        .fold((0, 0), |(a, d), f| (a + f.allowed, d + f.denied));
    (allowed, denied, flows)
}

fn shipped_game_server_policy() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/backend/game-servers-networkpolicy.yaml"
    );
    std::fs::read_to_string(path).unwrap()
}

/// Where the shipped policies are enforced (kindnet, Calico, Cilium, GKE Dataplane V2), the
/// backend's hand-over to a warm Pod is admitted and its sessions play on it; the policy without
/// the backend's rule (as it once shipped) refuses every hand-over, which kube-sim counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pods_take_sessions_where_the_shipped_network_policy_is_enforced() {
    let sim = sim_with(0, Some(enforcing(&shipped_game_server_policy()))).await;
    let backend = warm_replica(&sim, "policy", 2, |s| s).await;
    let bodies = matched(&backend, &players("policy", 4)).await;
    let state = warm_state(&backend).await;
    assert_eq!(state["handed"], 2, "{state}");
    assert_eq!(state["cold_starts"], 0, "{state}");
    play(&backend, &bodies[..2]).await;
    let (allowed, _, flows) = from_host_to_game_port(&sim);
    assert!(flows.iter().all(|f| f.denied == 0), "{flows:?}");
    assert!(
        allowed > 0,
        "the hand-overs and the game went through the relay: {flows:?}"
    );
    backend.stop().await;

    // Without the rule admitting the backend on 7777, nothing it sends reaches a game server.
    let shipped = shipped_game_server_policy();
    let rule = "    - from:\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: matchplane-backend\n      ports:\n        - port: 7777\n          protocol: TCP\n";
    assert!(
        shipped.contains(rule),
        "the backend's ingress rule, as the test removes it"
    );
    let sim = sim_with(0, Some(enforcing(&shipped.replace(rule, "")))).await;
    let backend = warm_replica(&sim, "no-policy", 1, |s| s).await;
    matched(&backend, &players("no-policy", 2)).await;
    let state = warm_state(&backend).await;
    assert_eq!(state["handed"], 0, "{state}");
    let (_, denied, flows) = from_host_to_game_port(&sim);
    assert!(denied > 0, "kube-sim refused and counted the hand-over: {flows:?}");
    backend.stop().await;
}

/// In a burst a replica's watch still shows warm Pods other replicas have just claimed, and
/// its claims of those conflict. However long the run of conflicts, the session goes on to the
/// next Pod until one is its own: it starts cold only when no warm Pod is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_of_lost_claims_still_ends_on_a_warm_pod() {
    let sim = sim(0).await;
    let backend = warm_replica(&sim, "lost-claims", 12, |s| s).await;
    // Eleven claims in a row lose (as to claims this watch has not seen yet).
    sim.cluster.add_fault(Fault {
        code: 409,
        count: 11,
        verb: Some(kube_sim::Verb::Patch),
        after: false,
    });
    let bodies = matched(&backend, &players("lost-claims", 2)).await;
    let sid = bodies[0]["session_id"].as_str().unwrap().to_owned();
    assert!(pod_of(&backend, &sid).await.1.starts_with("mp-gs-warm-"));
    let state = warm_state(&backend).await;
    assert_eq!(state["handed"], 1, "{state}");
    assert_eq!(state["cold_starts"], 0, "{state}");
    play(&backend, &bodies).await;
    backend.stop().await;
}

/// Every Kubernetes call the backend makes is one the Role it ships grants, and the Role grants
/// nothing the backend does not use. kube-sim holds each call to that Role as a real API server
/// does (a call it does not grant is refused 403), and counts them: a run through every path
/// that calls the API (warm Pods kept and claimed, a claim lost and read back, a cold start, a
/// session played to the end and its Pod deleted, the reaper's list, the Pod watch) is compared
/// with the Role's rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kubernetes_call_the_backend_makes_is_granted_by_the_role_it_ships() {
    let sim = sim(0).await;
    let backend = warm_replica(&sim, "rbac", 1, |s| s).await;
    // The first claim loses (409): the replica reads the Pod back, sees another session's
    // claim, and moves on; with no other warm Pod the session starts cold.
    sim.cluster.add_fault(Fault {
        code: 409,
        count: 1,
        verb: Some(kube_sim::Verb::Patch),
        after: false,
    });
    let cold = matched(&backend, &players("rbac-cold", 2)).await;
    let state = warm_state(&backend).await;
    assert_eq!(state["cold_starts"], 1, "{state}");
    let warm = matched(&backend, &players("rbac-warm", 2)).await;
    assert_eq!(warm_state(&backend).await["handed"], 1);
    play(&backend, &cold).await;
    play(&backend, &warm).await;
    for body in [&cold[0], &warm[0]] {
        let sid = body["session_id"].as_str().unwrap().to_owned();
        eventually(Duration::from_secs(30), || async {
            let (ns, name) = pod_of(&backend, &sid).await;
            let records = sim.cluster.records();
            let record = records.iter().find(|r| r.namespace == ns && r.name == name)?;
            record.deleted_ms.map(|_| ())
        })
        .await;
    }
    backend.stop().await;

    let made = calls_granted_by_the_role(&sim);
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/backend/rbac.yaml")).unwrap();
    let granted: std::collections::BTreeSet<(String, String)> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap())
        .filter(|doc| doc["kind"] == "Role")
        .flat_map(|doc| doc["rules"].as_sequence().cloned().unwrap_or_default())
        .flat_map(|rule| {
            let resources: Vec<String> = serde_yaml::from_value(rule["resources"].clone()).unwrap();
            let verbs: Vec<String> = serde_yaml::from_value(rule["verbs"].clone()).unwrap();
            resources
                .into_iter()
                .flat_map(move |r| verbs.clone().into_iter().map(move |v| (v, r.clone())))
        })
        .collect();
    assert_eq!(made, granted, "the calls made (left) and the Role's grants (right)");
    let role = backend_role();
    assert!(role.allows(
        &kube_sim::rbac::Request::of(&http::Method::GET, &format!("/api/v1/namespaces/{NS}/pods/x"), None).unwrap()
    ));
}

/// Every (verb, resource) the backend called on `sim`, each checked: none refused by the Role
/// `sim` enforces (the one `deploy/backend/rbac.yaml` ships), all in the backend's namespace.
fn calls_granted_by_the_role(sim: &Sim) -> std::collections::BTreeSet<(String, String)> {
    sim.cluster
        .calls()
        .into_iter()
        .map(|(call, count)| {
            assert_eq!(count.forbidden, 0, "refused by the Role: {call:?}");
            assert_eq!(call.namespace.as_deref(), Some(NS), "{call:?}");
            (call.verb, call.resource)
        })
        .collect()
}

/// A claim the API server applied but whose answer was lost (a 504 after the write reached
/// storage, a connection cut after the request went out) is not taken for a failed one: the
/// replica reads the Pod back, finds its session's label on it, and hands the session to it,
/// rather than leaving that warm Pod labelled for a session that starts another Pod cold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_applied_but_answered_with_an_error_still_hands_its_pod_the_session() {
    let sim = sim(0).await;
    let backend = warm_replica(&sim, "lost-answer", 1, |s| s).await;
    let warm = sim.cluster.records()[0].name.clone();
    sim.cluster.add_fault(Fault {
        code: 504,
        count: 1,
        verb: Some(kube_sim::Verb::Patch),
        after: true,
    });
    let bodies = matched(&backend, &players("lost-answer", 2)).await;
    let sid = bodies[0]["session_id"].as_str().unwrap().to_owned();
    assert_eq!(
        pod_of(&backend, &sid).await.1,
        warm,
        "the session runs on the claimed warm Pod"
    );
    let state = warm_state(&backend).await;
    assert_eq!(state["handed"], 1, "{state}");
    assert_eq!(state["cold_starts"], 0, "{state}");
    let labelled: Vec<String> = sim
        .cluster
        .records()
        .into_iter()
        .filter(|r| r.session.as_deref() == Some(sid.as_str()))
        .map(|r| r.name)
        .collect();
    assert_eq!(labelled, [warm], "one Pod carries the session");
    play(&backend, &bodies).await;
    backend.stop().await;
}

/// A game-server Pod labelled for `sid` that is not its server: a warm Pod whose claim the API
/// server applied while the replica could not read back that it had, so the session started
/// cold on a Pod of its own. Its server waits for players of a session of its own.
fn stray(name: &str, sid: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "matchplane-game-server",
            "matchplane.io/session": sid, "matchplane.io/warm": "true"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "game-server", "image": "game-server:test",
            "env": [{"name": "GAME_BIND", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "SESSION_ID", "value": "00000000-0000-4000-8000-00000000beef"},
                    {"name": "PLAYERS", "value": "x,y"},
                    {"name": "TICKET_SECRET", "value": common::SECRET}]}]}
    }))
    .unwrap()
}

/// Joins `players` (one session's worth) and waits until their session is allocating; its id.
async fn allocating(backend: &Backend, players: &[String]) -> String {
    for p in players {
        assert_eq!(backend.http.join(p).await.0, 200);
    }
    eventually(Duration::from_secs(20), || async {
        let body = backend.http.status(&players[0], 0.0).await;
        (body["status"] == "allocating").then(|| body["session_id"].as_str().unwrap().to_owned())
    })
    .await
}

/// When `sim` recorded the Pod `name` deleted.
async fn deleted(sim: &Sim, name: &str, within: Duration) -> i64 {
    eventually(within, || async {
        sim.cluster
            .records()
            .into_iter()
            .find(|r| r.name == name)
            .and_then(|r| r.deleted_ms)
    })
    .await
}

/// A Pod that carries a matched session's label without being the Pod its record names is
/// deleted (its server would wait for a hand-over that never comes, until its deadline), and
/// its going does not fail the session playing on its own Pod. One labelled while the session
/// was still allocating does not change again: a resync finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_pod_of_a_matched_session_is_deleted_and_the_session_plays_on() {
    let sim = sim(3_000).await;
    let db = common::fresh_database().await;
    let backend = replica(&sim, &common::unique_prefix(), &db, "stray", |s| s).await;
    let roster = players("stray", 2);
    let sid = allocating(&backend, &roster).await;
    // Labelled while the session's own Pod starts (once it is created, so that it still
    // starts in 3 s); the stray would start (and change) a minute later.
    let own = format!("mp-gs-{sid}");
    eventually(Duration::from_secs(20), || async {
        sim.cluster.records().iter().any(|r| r.name == own).then_some(())
    })
    .await;
    let mut behaviour = sim.cluster.behaviour();
    behaviour.start_delay_ms = 60_000;
    sim.cluster.set_behaviour(behaviour);
    assert!(sim.cluster.create(NS, stray("mp-gs-stray-1", &sid)).is_some());
    let bodies = matched(&backend, &roster).await;
    let matched_ms = kube_sim::cluster::now_ms();
    let (_, server) = pod_of(&backend, &sid).await;
    assert_ne!(server, "mp-gs-stray-1");
    let gone = deleted(&sim, "mp-gs-stray-1", Duration::from_secs(20)).await;
    assert!(gone - matched_ms < 15_000, "within a resync, not at its start");
    // One labelled once the session is matched goes as soon as it is seen.
    assert!(sim.cluster.create(NS, stray("mp-gs-stray-2", &sid)).is_some());
    deleted(&sim, "mp-gs-stray-2", Duration::from_secs(20)).await;
    let status = backend.http.status(&roster[0], 0.0).await;
    assert_eq!(status["status"], "matched", "{status}");
    assert_eq!(pod_of(&backend, &sid).await.1, server);
    play(&backend, &bodies).await;
    assert_eq!(ended(&backend, &roster[0], Duration::from_secs(20)).await, "completed");
    backend.stop().await;
}

/// A stray Pod labelled for a session that is still allocating is left alone (it may yet be
/// the session's server); once the session has ended without it, it goes within a resync,
/// though nothing changes it: without the sweep it would stay until its own start, here a
/// minute away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_pod_of_a_session_that_ended_while_allocating_goes_within_a_resync() {
    // Pods start after a minute: every session's start fails at the ready timeout.
    let sim = sim(60_000).await;
    let db = common::fresh_database().await;
    let backend = replica(&sim, &common::unique_prefix(), &db, "stray-alloc", |s| {
        s.server_ready_timeout_seconds(4.0)
    })
    .await;
    let roster = players("stray-alloc", 2);
    let sid = allocating(&backend, &roster).await;
    assert!(sim.cluster.create(NS, stray("mp-gs-stray-alloc", &sid)).is_some());
    let ended_at = eventually(Duration::from_secs(30), || async {
        let (_, session) = backend.http.get(&format!("/sessions/{sid}")).await;
        (session["status"] == "ended").then(std::time::Instant::now)
    })
    .await;
    let (_, session) = backend.http.get(&format!("/sessions/{sid}")).await;
    assert_eq!(session["end_reason"], "failed", "{session}");
    deleted(&sim, "mp-gs-stray-alloc", Duration::from_secs(20)).await;
    assert!(
        ended_at.elapsed() < Duration::from_secs(20),
        "within a resync, not at its start"
    );
    backend.stop().await;
}

/// An API server that goes silent (its node gone, a load balancer dropping the flow: nothing
/// closes the connections and nothing answers on them) does not hang a session's start: the
/// warm Pod's claim and the cold Pod's creates each give up after `KUBE_API_TIMEOUT_SECONDS`,
/// the start fails at its ready timeout, and the session ends `failed`, its players back at
/// the head of the queue. The Pod watch, silent too, is given up and set up again once the API
/// server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_api_server_fails_a_start_instead_of_hanging_it() {
    let mut sim = sim(0).await;
    let relay = testkit::Relay::start(sim.addr).await;
    sim.kubeconfig = std::env::temp_dir().join(format!("kube-sim-{}.yaml", common::unique_prefix()));
    std::fs::write(&sim.kubeconfig, kube_sim::kubeconfig(relay.addr(), NS)).unwrap();
    let backend = warm_replica(&sim, "silent-api", 1, |s| {
        s.kube_api_timeout_seconds(1.0).server_ready_timeout_seconds(4.0)
    })
    .await;

    relay.cut();
    for p in players("silent-api", 2) {
        assert_eq!(backend.http.join(&p).await.0, 200);
    }
    eventually(Duration::from_secs(60), || async {
        let (_, metrics) = backend
            .http
            .request(hyper::Method::GET, "/metrics", &[], Vec::new())
            .await;
        // At 0 from the start: wait for the first failed session.
        metrics
            .as_str()
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("mp_sessions_ended_total{reason=\"failed\"} "))
            .any(|n| n.parse::<u64>().is_ok_and(|n| n > 0))
            .then_some(())
    })
    .await;
    assert!(
        sim.cluster.records().iter().all(|r| r.session.is_none()),
        "no Pod was claimed or created"
    );
    // Once the API server answers again, the Pod watch is set up again within a watch call's
    // timeout and its margin (20 s): a Pod made now is seen, and, labelled for a session
    // nobody knows, deleted.
    relay.heal();
    let healed = std::time::Instant::now();
    assert!(
        sim.cluster
            .create(NS, stray("mp-gs-after-heal", "00000000-0000-4000-8000-0000000000a1"))
            .is_some()
    );
    deleted(&sim, "mp-gs-after-heal", Duration::from_secs(60)).await;
    let seen_after = healed.elapsed();
    assert!(
        seen_after < Duration::from_secs(30),
        "the watch came back after {seen_after:?}"
    );
    backend.stop().await;
}

/// The backend binary as its own process (so it can be killed outright).
fn backend_process(sim: &Sim, prefix: &str, db: &str, port: u16) -> tokio::process::Child {
    tokio::process::Command::new(built_binary("backend"))
        .env_clear()
        .args(["--kubeconfig".as_ref(), sim.kubeconfig.as_os_str()])
        .envs([
            ("BIND", format!("127.0.0.1:{port}")),
            ("REDIS_URL", common::redis_url()),
            ("DATABASE_URL", db.to_owned()),
            ("REDIS_KEY_PREFIX", prefix.to_owned()),
            ("TICKET_SECRET", common::SECRET.to_owned()),
            ("ADMIN_TOKEN", common::ADMIN.to_owned()),
            ("PLAYER_TOKEN_SECRET", common::PLAYER_SECRET.to_owned()),
            ("RUNTIME", "kubernetes".to_owned()),
            ("NAMESPACE", NS.to_owned()),
            ("BACKEND_INTERNAL_URL", format!("http://127.0.0.1:{port}")),
            ("SESSION_SIZE", "2".to_owned()),
            ("INSTANCE_ID", "killed".to_owned()),
            ("FINISHED_POD_GRACE_SECONDS", "1".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ])
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_restarted_leaves_no_orphan_pod_and_no_session_without_a_pod() {
    let sim = sim(0).await;
    let db = common::fresh_database().await;
    let prefix = common::unique_prefix();
    let port = testkit::free_port().await;
    let http = common::Http::new(SocketAddr::from(([127, 0, 0, 1], port)));
    let mut first = backend_process(&sim, &prefix, &db, port);
    testkit::listening(port).await;
    let roster = players("killed", 4);
    for p in &roster {
        assert_eq!(http.join(p).await.0, 200);
    }
    let mut sids = Vec::new();
    for p in &roster {
        let body = eventually(Duration::from_secs(30), || async {
            let body = http.status(p, 5.0).await;
            (body["status"] == "matched").then_some(body)
        })
        .await;
        sids.push(body["session_id"].as_str().unwrap().to_owned());
    }
    // SIGKILL: no drain, no goodbye. The Pods play on.
    first.kill().await.unwrap();
    // While no replica watches: one session's Pod vanishes, and a Pod nobody owns appears.
    let vanished = pod_record(&sim, &sids[0]);
    assert!(sim.cluster.delete(&vanished, Some(0)).is_some());
    let orphan: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "mp-gs-orphan", "labels": {"app.kubernetes.io/name": "matchplane-game-server",
            "matchplane.io/session": "00000000-0000-4000-8000-00000000dead"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "game-server", "image": "game-server:test",
            "env": [{"name": "GAME_BIND", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "SESSION_ID", "value": "00000000-0000-4000-8000-00000000dead"},
                    {"name": "PLAYERS", "value": "x,y"},
                    {"name": "TICKET_SECRET", "value": common::SECRET}]}]}
    }))
    .unwrap();
    assert!(sim.cluster.create(NS, orphan).is_some());
    let _second = backend_process(&sim, &prefix, &db, port);
    testkit::listening(port).await;
    // Reconcile deletes the orphan; the session whose Pod vanished fails; the other plays on.
    eventually(Duration::from_secs(30), || async {
        sim.cluster
            .get(&(NS.to_owned(), "mp-gs-orphan".to_owned()))
            .is_none()
            .then_some(())
    })
    .await;
    eventually(Duration::from_secs(40), || async {
        let body = http.status(&roster[0], 0.0).await;
        (body["status"] == "ended" && body["end_reason"] == "failed").then_some(())
    })
    .await;
    let alive = roster
        .iter()
        .zip(&sids)
        .find(|(_, sid)| **sid != sids[0])
        .map(|(p, _)| p)
        .unwrap();
    assert_eq!(http.status(alive, 0.0).await["status"], "matched");
    let live_pods = sim
        .cluster
        .records()
        .into_iter()
        .filter(|r| r.deleted_ms.is_none())
        .count();
    assert_eq!(live_pods, 1, "only the surviving session's pod");
}

/// The Pod kube-sim holds (or held) for `sid`.
fn pod_record(sim: &Sim, sid: &str) -> (String, String) {
    let record = sim
        .cluster
        .records()
        .into_iter()
        .find(|r| r.session.as_deref() == Some(sid))
        .expect("a pod for the session");
    (record.namespace, record.name)
}

/// A server profile on the kubernetes runtime: BZFlag's own server (the image
/// `bzflag/bzfs:2.4.26`, which kube-sim's kubelet knows as Debian's `/usr/games/bzfs`) runs in a
/// Pod that declares its port with its protocol, probes it, holds no ticket secret, binds the
/// Pod's IP through `MATCHPLANE_HOST` (its arguments expanded by the kubelet from the Pod's
/// environment). Players reach it through the proxy with their tickets and speak BZFlag's
/// handshake; the session completes when bzfs exits after its game. (That such a Pod meets the
/// restricted Pod Security Standard is `make manifests-check`'s, on `backend render-pod --queue`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_profile_runs_in_a_pod_and_its_players_reach_it_through_the_proxy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !std::path::Path::new("/usr/games/bzfs").exists() {
        eprintln!("SKIPPED: /usr/games/bzfs is not installed (apt-get install bzflag-server); .ci/run installs it");
        return;
    }
    let sim = sim(0).await;
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let file = queue_file(
        &prefix,
        r#"
servers:
  bzflag:
    command: ["bzfs", "-p", "${PORT_GAME}", "-i", "${HOST}", "-g", "-time", "3", "-a", "0", "0"]
    image: bzflag/bzfs:2.4.26
    ports: [{name: game, protocol: tcp, container_port: 5154}]
    identity: none
    stop_grace_seconds: 3
queues:
  - {name: bzflag, session_size: 2, server: bzflag}
"#,
    );
    let backend = replica(&sim, &prefix, &db, "r1", |s| s.matchmaking_config(&file)).await;
    let (proxy, _stop) = common::start_proxy(backend.addr, &prefix, &["--player-rate-limit-per-second", "0"]).await;
    let statuses = common::matched_in(&backend.http, "bzflag", &["tank-a", "tank-b"]).await;
    let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();
    let (_, session) = backend.http.get(&format!("/sessions/{sid}")).await;
    assert!(session["addr"].as_str().unwrap().ends_with(":5154"), "{session}");

    // The Pod as the backend created it.
    let name = session["server"].as_str().unwrap().to_owned();
    let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(sim_client(&sim).await, NS);
    let pod = pods.get(&name).await.unwrap();
    let container = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some("bzflag/bzfs:2.4.26"));
    let port = &container.ports.as_ref().unwrap()[0];
    assert_eq!((port.container_port, port.protocol.as_deref()), (5154, Some("TCP")));
    let env: Vec<&str> = container.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(
        env.contains(&"MATCHPLANE_PORT_GAME") && env.contains(&"MATCHPLANE_HOST"),
        "{env:?}"
    );
    assert!(
        !env.contains(&"TICKET_SECRET"),
        "no secret for a server that does not verify tickets"
    );
    assert_eq!(
        container.args.as_ref().unwrap()[..4],
        ["-p", "$(MATCHPLANE_PORT_GAME)", "-i", "$(MATCHPLANE_HOST)"]
    );
    let probe = container.readiness_probe.as_ref().unwrap().tcp_socket.as_ref().unwrap();
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(5154)
    );

    for status in &statuses {
        let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let ticket = status["ticket"].as_str().unwrap();
        stream
            .write_all(format!("JOIN {ticket}\nBZFLAG\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut hello = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut hello))
            .await
            .expect("bzfs answers")
            .unwrap();
        assert_eq!(&hello, b"BZFS0221");
    }
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let reason: String = eventually(Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT end_reason FROM matches WHERE session_id::text = $1")
            .bind(&sid)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .flatten()
    })
    .await;
    assert_eq!(reason, "completed");
    // The finished Pod is reaped, and every call on the way (create, watch, delete) was one
    // the shipped Role grants: a real API server would have refused any other.
    eventually(Duration::from_secs(30), || async {
        let records = sim.cluster.records();
        records.iter().find(|r| r.name == name)?.deleted_ms.map(|_| ())
    })
    .await;
    backend.stop().await;
    let made = calls_granted_by_the_role(&sim);
    for needed in ["create", "watch", "delete"] {
        assert!(made.contains(&(needed.to_owned(), "pods".to_owned())), "{made:?}");
    }
    let _ = std::fs::remove_file(&file);
}

/// `ready: sdk` in a Pod, for a server with only a UDP port (which no kubelet probe can see):
/// the Pod has no probe, and the session is matched only once the server, running, has told
/// the backend through the SDK (here 2 s after it binds, from inside the Pod, with the report
/// URL and token of its environment). A player's UDP flow through the proxy reaches it; an
/// operator's end stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_only_server_in_a_pod_is_ready_when_the_sdk_says_so() {
    use protocol::udp::{self, FromProxy};
    let sim = sim(0).await;
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let file = queue_file(
        &prefix,
        r#"
servers:
  udp-sdk:
    command: ["sdk-example-server", "--ready-after-ms", "2000"]
    image: matchplane/sdk-example:1
    ports: [{name: udp, protocol: udp}]
    ready: sdk
    ends: sdk
queues:
  - {name: udp, session_size: 1, server: udp-sdk}
"#,
    );
    let backend = replica(&sim, &prefix, &db, "r1", |s| s.matchmaking_config(&file)).await;
    let (proxy, _stop) = common::start_proxy(backend.addr, &prefix, &["--player-rate-limit-per-second", "0"]).await;
    let status = common::matched_in(&backend.http, "udp", &["ufo"]).await.remove(0);
    let sid = status["session_id"].as_str().unwrap().to_owned();
    let (session, took) = common::ready_after(&backend.http, &sid).await;
    assert!(
        took >= time::Duration::seconds(2),
        "ready only once the server said so: {session}"
    );
    let name = session["server"].as_str().unwrap().to_owned();
    let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(sim_client(&sim).await, NS);
    let container = pods.get(&name).await.unwrap().spec.unwrap().containers.remove(0);
    assert!(container.readiness_probe.is_none(), "nothing a kubelet could probe");
    let port = &container.ports.as_ref().unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("UDP"));

    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 2048];
    let mut ask = async |datagram: Vec<u8>| {
        client.send_to(&datagram, proxy).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        buf[..n].to_vec()
    };
    let welcome = ask(udp::join([1, 2, 3, 4], status["ticket"].as_str().unwrap())).await;
    let Some(FromProxy::Welcome { id, .. }) = udp::parse_proxy(&welcome) else {
        panic!("{welcome:?}")
    };
    let echo = ask(udp::data(id, b"ping")).await;
    assert_eq!(udp::parse_proxy(&echo), Some(FromProxy::Data { payload: b"echo ping" }));

    let (code, body) = backend
        .http
        .post_as(
            &common::admin_auth(),
            &format!("/match/{sid}/end"),
            serde_json::json!({}),
        )
        .await;
    assert!(code.is_success(), "{body}");
    eventually(Duration::from_secs(30), || async {
        let records = sim.cluster.records();
        records.iter().find(|r| r.name == name)?.deleted_ms.map(|_| ())
    })
    .await;
    backend.stop().await;
    let _ = std::fs::remove_file(&file);
}

/// `warm_pool` on the kubernetes runtime: warm Pods of a profile (labelled with it) poll the
/// backend for their session through the SDK; a session claims one that has polled, hands it
/// the session through Redis, and is matched once the server says ready; it plays through the
/// proxy and completes with the server's report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiles_warm_pods_take_their_sessions_through_the_sdk() {
    let sim = sim(0).await;
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let file = queue_file(
        &prefix,
        r#"
servers:
  warm-sdk:
    command: ["sdk-example-server", "--ready-after-ms", "4000"]
    image: matchplane/sdk-example:1
    ports: [{name: game, protocol: tcp}]
    ready: sdk
    identity: proxy-v2
    ends: sdk
    warm_pool: {min: 1, max: 1}
queues:
  - {name: warm, session_size: 1, server: warm-sdk}
"#,
    );
    let backend = replica(&sim, &prefix, &db, "r1", |s| s.matchmaking_config(&file)).await;
    let (proxy, _stop) = common::start_proxy(backend.addr, &prefix, &["--player-rate-limit-per-second", "0"]).await;
    let pool = || async {
        let (_, health) = backend.http.get("/health").await;
        health["warm_profiles"]["warm-sdk"].clone()
    };
    eventually(Duration::from_secs(30), || async {
        (pool().await["idle"] == 1).then_some(())
    })
    .await;
    // Ready is its probe; warm is its first poll, 4 s after its start, as Redis records it.
    let store = matchmaking_core::store::Store::connect(&common::redis_url(), &prefix)
        .await
        .unwrap();
    let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(sim_client(&sim).await, NS);
    eventually(Duration::from_secs(30), || async {
        let warm = pods
            .list(&kube::api::ListParams::default().labels("matchplane.io/profile=warm-sdk"))
            .await
            .ok()?;
        let name = warm.items.first()?.metadata.name.clone()?;
        matches!(store.warm_server_state(&name).await, Ok((true, _))).then_some(())
    })
    .await;

    let status = common::matched_in(&backend.http, "warm", &["wes"]).await.remove(0);
    let sid = status["session_id"].as_str().unwrap().to_owned();
    let (_, session) = backend.http.get(&format!("/sessions/{sid}")).await;
    let name = session["server"].as_str().unwrap().to_owned();
    assert!(name.starts_with("mp-gs-warm-"), "a warm Pod: {session}");
    let labels = pods.get(&name).await.unwrap().metadata.labels.unwrap();
    assert_eq!(
        labels.get("matchplane.io/profile").map(String::as_str),
        Some("warm-sdk")
    );
    assert_eq!(labels.get("matchplane.io/session"), Some(&sid));

    drop(welcomed(proxy, &status, "wes").await);
    assert_eq!(ended(&backend, "wes", Duration::from_secs(30)).await, "completed");
    assert_eq!(pool().await["handed"], 1);
    backend.stop().await;
    let _ = std::fs::remove_file(&file);
}

/// A client of `sim` with its kubeconfig.
async fn sim_client(sim: &Sim) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&sim.kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// kube-sim refuses what a real API server refuses where the backend depends on it: a Pod in a
/// namespace that does not exist (404, before any validation), a Pod the namespace's Pod Security
/// level does not admit (403, naming each violation), and a dry run stores nothing. A watch with
/// a label selector sees a Pod that starts matching it as ADDED and one that stops as DELETED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_sim_refuses_what_an_api_server_refuses_and_watches_follow_selectors() {
    use futures_util::StreamExt as _;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
    let node = NodeConfig {
        game_server_bin: built_binary("game-server"),
        images: Default::default(),
        namespaces: NodeConfig::namespaces_with(NS, Some("restricted")),
        secrets: Default::default(),
        log_dir: None,
        strict_by_default: true,
        rbac: None,
        network: None,
    };
    let behaviour = Behaviour {
        start_delay_ms: 60_000,
        never_ready: 0,
        bookmark_interval_ms: 500,
        max_watch_seconds: 30,
    };
    let (_cluster, addr, stop): (_, SocketAddr, CancellationToken) = kube_sim::start(node, behaviour).await.unwrap();
    let _stop = stop.drop_guard();
    let kubeconfig = std::env::temp_dir().join(format!("kube-sim-{}.yaml", common::unique_prefix()));
    std::fs::write(&kubeconfig, kube_sim::kubeconfig(addr, NS)).unwrap();
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let code = |e: kube::Error| match e {
        kube::Error::Api(status) => (status.code, status.message),
        other => panic!("{other}"),
    };
    // The backend's own Pod for a session: admitted by the restricted level.
    let template = common::pod_template(NS);
    let spec = backend::runtime::ServerSpec::new(
        "0b6f6a2e-0c63-4f0e-9d55-7cf1d2c0e5a1",
        vec!["a".into(), "b".into()],
        Vec::new(),
        "http://backend:8081",
        &protocol::TicketSecret::new("x".to_owned()).unwrap(),
        Duration::from_secs(60),
    );
    let pod = backend::runtime::kubernetes::render_pod(&template, &spec);
    // Every Pod the backend renders meets the restricted level: a session's, a warm one, a
    // server profile's (its /tmp emptyDir included), and a warm one of a profile.
    let file = std::env::temp_dir().join(format!("restricted-{}.yaml", common::unique_prefix()));
    std::fs::write(
        &file,
        "servers:\n  s: {image: x/s:1, ready: sdk, warm_pool: {max: 2}, ports: [{name: g, protocol: tcp}, {name: u, protocol: udp}]}\nqueues:\n  - {name: q, session_size: 2, server: s}\n",
    )
    .unwrap();
    let mut config = backend::Config::defaults();
    config.matchmaking.matchmaking_config = Some(file.clone());
    let profile = config.kubernetes_profile("q", None).unwrap();
    let rendered = [
        pod.clone(),
        backend::runtime::kubernetes::render_warm_pod(&template, "mp-gs-warm-0123456789ab"),
        backend::runtime::kubernetes::render_warm_profile_pod(
            &template,
            &profile,
            "mp-gs-warm-ba9876543210",
            "http://matchplane-backend:8081/internal/warm/mp-gs-warm-ba9876543210",
            "token",
        ),
        backend::runtime::kubernetes::render_pod(&template, &spec.clone().running("q", profile)),
    ];
    for each in &rendered {
        assert_eq!(
            kube_sim::pod_security::violations(each, "restricted"),
            Vec::<String>::new()
        );
    }
    let _ = std::fs::remove_file(&file);
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), NS);
    let elsewhere: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "nowhere");

    let (status, message) = code(elsewhere.create(&PostParams::default(), &pod).await.unwrap_err());
    assert_eq!((status, message.as_str()), (404, "namespaces \"nowhere\" not found"));

    // Without its security context the same Pod violates the restricted level.
    let mut bare = pod.clone();
    let spec_mut = bare.spec.as_mut().unwrap();
    spec_mut.security_context = None;
    spec_mut.containers[0].security_context = None;
    let (status, message) = code(pods.create(&PostParams::default(), &bare).await.unwrap_err());
    assert_eq!(status, 403);
    assert!(
        message.contains("violates PodSecurity \"restricted:latest\""),
        "{message}"
    );
    assert!(message.contains("allowPrivilegeEscalation != false"), "{message}");

    // A dry run stores nothing.
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    pods.create(&dry, &pod).await.unwrap();
    assert!(pods.list(&Default::default()).await.unwrap().items.is_empty());

    // A watch by label: the Pod starts matching (ADDED), then stops (DELETED).
    let mut watch = pods
        .watch(&WatchParams::default().labels("team=blue"), "0")
        .await
        .unwrap()
        .boxed();
    let name = pod.metadata.name.clone().unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let label = |value: Option<&str>| Patch::Merge(serde_json::json!({"metadata": {"labels": {"team": value}}}));
    // A dry-run patch changes nothing a watch would see.
    let dry_patch = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let tried = pods.patch(&name, &dry_patch, &label(Some("blue"))).await.unwrap();
    assert_eq!(tried.metadata.labels.unwrap()["team"], "blue");
    assert!(
        !pods
            .get(&name)
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap()
            .contains_key("team")
    );
    pods.patch(&name, &PatchParams::default(), &label(Some("blue")))
        .await
        .unwrap();
    pods.patch(&name, &PatchParams::default(), &label(None)).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("a watch event")
        {
            Some(Ok(WatchEvent::Added(p))) => seen.push(("ADDED", p.metadata.name.unwrap())),
            Some(Ok(WatchEvent::Deleted(p))) => seen.push(("DELETED", p.metadata.name.unwrap())),
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, [("ADDED", name.clone()), ("DELETED", name.clone())]);
    // A dry-run delete leaves the Pod.
    let dry_delete = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    pods.delete(&name, &dry_delete).await.unwrap();
    assert!(pods.get(&name).await.is_ok());
    let _ = std::fs::remove_file(&kubeconfig);
}

/// Versions are images: a profile's two versions run side by side on the cluster, each
/// session's Pod of its version's image and labelled with it, and each session says which.
#[tokio::test]
async fn two_versions_of_a_profile_run_side_by_side_as_pods_of_their_images() {
    let sim = sim(0).await;
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let file = queue_file(
        &prefix,
        r#"
servers:
  udp-sdk:
    command: ["sdk-example-server"]
    image: matchplane/sdk-example:1
    ports: [{name: udp, protocol: udp}]
    ready: sdk
    ends: sdk
    versions:
      - {name: "1", weight: 1}
      - {name: "2", image: matchplane/sdk-example:2, weight: 1}
queues:
  - {name: udp, session_size: 1, server: udp-sdk}
"#,
    );
    let backend = replica(&sim, &prefix, &db, "r1", |s| {
        s.matchmaking_config(&file).shutdown_grace_seconds(1.0)
    })
    .await;
    let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(sim_client(&sim).await, NS);
    let mut seen = Vec::new();
    for player in ["v-a", "v-b"] {
        let status = common::matched_in(&backend.http, "udp", &[player]).await.remove(0);
        let sid = status["session_id"].as_str().unwrap().to_owned();
        let (_, session) = backend.http.get(&format!("/sessions/{sid}")).await;
        let pod = pods.get(session["server"].as_str().unwrap()).await.unwrap();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let image = pod.spec.unwrap().containers.remove(0).image.unwrap();
        seen.push((
            status["version"].as_str().unwrap().to_owned(),
            labels.get("matchplane.io/version").cloned().unwrap_or_default(),
            image,
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("1".into(), "1".into(), "matchplane/sdk-example:1".into()),
            ("2".into(), "2".into(), "matchplane/sdk-example:2".into()),
        ]
    );
    // Both run at once: two Pods, each Running.
    let running = sim.cluster.records().iter().filter(|r| r.deleted_ms.is_none()).count();
    assert!(running >= 2, "{running} Pods running");
    backend.stop().await;
    let _ = std::fs::remove_file(&file);
}

/// Unclaimed warm Pods of `profile`'s `version` (the built-in server's with `None`), not being
/// deleted: their images.
fn idle_warm_pods(sim: &Sim, profile: Option<&str>, version: &str) -> Vec<String> {
    sim.cluster
        .records()
        .into_iter()
        .filter(|r| r.deleted_ms.is_none())
        .filter_map(|r| sim.cluster.get(&(r.namespace.clone(), r.name.clone())))
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let is = |k: &str, v: &str| labels.get(k).map(String::as_str) == Some(v);
            is("matchplane.io/warm", "true")
                && labels.get("matchplane.io/profile").map(String::as_str) == profile
                && is("matchplane.io/version", version)
                && !labels.contains_key("matchplane.io/session")
        })
        .filter_map(|pod| pod.spec?.containers.first()?.image.clone())
        .collect()
}

/// Warm Pods per version on a cluster: each version of a profile keeps warm Pods of its own
/// image, labelled with it, and a session claims one of its version's. A drain deletes the
/// drained version's warm Pods and never the Pod of a session it runs, which plays to its end
/// through a restart of the only replica mid-drain; the new replica keeps the drain (no warm
/// Pod of the drained version comes back), and reports the drain done when that last session
/// ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_keeps_warm_pods_of_its_image_and_a_drain_survives_a_replica_restart() {
    let sim = sim(0).await;
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let file = queue_file(
        &prefix,
        r#"
servers:
  canary:
    command: ["sdk-example-server"]
    image: matchplane/sdk-example:1
    ports: [{name: game, protocol: tcp}]
    ready: sdk
    identity: proxy-v2
    ends: sdk
    warm_pool: {min: 1, max: 1}
    versions:
      - {name: "1", weight: 1}
      - {name: "2", image: matchplane/sdk-example:2, weight: 0}
queues:
  - {name: duel, session_size: 1, server: canary}
"#,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = |instance: &str| {
        common::settings(&prefix, &db)
            .kubernetes(&sim.kubeconfig, NS, &format!("http://{addr}"))
            .instance_id(instance)
            .finished_pod_grace_seconds(1.0)
            .server_ready_timeout_seconds(20.0)
            .matchmaking_config(&file)
            .shutdown_grace_seconds(1.0)
            .build()
            .unwrap()
    };
    let first = Backend::start_on(listener, settings("r1")).await;
    let store = matchmaking_core::store::Store::connect(&common::redis_url(), &prefix)
        .await
        .unwrap();
    // Each version's pool: one warm Pod of its own image, warm once it has polled.
    let polled = |version: &'static str| {
        let (sim, store) = (&sim, &store);
        async move {
            eventually(Duration::from_secs(30), || async {
                let pods = sim.cluster.records();
                let warm: Vec<_> = pods
                    .iter()
                    .filter(|r| r.deleted_ms.is_none())
                    .filter_map(|r| sim.cluster.get(&(r.namespace.clone(), r.name.clone())))
                    .filter(|p| {
                        let labels = p.metadata.labels.clone().unwrap_or_default();
                        labels.get("matchplane.io/version").map(String::as_str) == Some(version)
                            && !labels.contains_key("matchplane.io/session")
                    })
                    .collect();
                let name = warm.first()?.metadata.name.clone()?;
                matches!(store.warm_server_state(&name).await, Ok((true, _))).then_some(())
            })
            .await;
        }
    };
    polled("1").await;
    polled("2").await;
    // ... and Ready (its probe), as the pool counts its idle Pods.
    eventually(Duration::from_secs(30), || async {
        let (_, health) = first.http.get("/health").await;
        let pools = &health["warm_profiles"];
        (pools["canary@1"]["idle"] == 1 && pools["canary@2"]["idle"] == 1).then_some(())
    })
    .await;
    assert_eq!(idle_warm_pods(&sim, Some("canary"), "1"), ["matchplane/sdk-example:1"]);
    assert_eq!(idle_warm_pods(&sim, Some("canary"), "2"), ["matchplane/sdk-example:2"]);

    // A session of version 1 claims version 1's warm Pod; its player stays connected.
    let status = common::matched_in(&first.http, "duel", &["old"]).await.remove(0);
    assert_eq!(status["version"], "1");
    let sid = status["session_id"].as_str().unwrap().to_owned();
    let (_, session) = first.http.get(&format!("/sessions/{sid}")).await;
    let running_pod = session["server"].as_str().unwrap().to_owned();
    assert!(running_pod.starts_with("mp-gs-warm-"), "a warm Pod: {session}");
    let key = (NS.to_owned(), running_pod.clone());
    let labels = sim.cluster.get(&key).unwrap().metadata.labels.unwrap();
    assert_eq!(labels.get("matchplane.io/version").map(String::as_str), Some("1"));
    let (proxy, _stop) = common::start_proxy(addr, &prefix, &["--player-rate-limit-per-second", "0"]).await;
    let reader = welcomed(proxy, &status, "old").await;

    // The rollout: version 2 takes every new session, and version 1 drains.
    let put = serde_json::json!({"weights": {"1": 0, "2": 1}});
    let (code, body) = common::as_admin(&first.http, hyper::Method::PUT, "/operator/versions/canary", Some(put)).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = common::as_admin(
        &first.http,
        hyper::Method::POST,
        "/operator/versions/canary/1/drain",
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // Version 1's warm Pod is deleted; version 2's stays; the session's Pod is untouched.
    eventually(Duration::from_secs(15), || async {
        idle_warm_pods(&sim, Some("canary"), "1").is_empty().then_some(())
    })
    .await;
    assert_eq!(idle_warm_pods(&sim, Some("canary"), "2"), ["matchplane/sdk-example:2"]);
    let pod = sim.cluster.get(&key).expect("the session's Pod");
    assert!(
        pod.metadata.deletion_timestamp.is_none(),
        "a drain deletes no session's Pod"
    );

    // The only replica restarts mid-drain, on the same address (the Pods' report URL).
    first.stop().await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let second = Backend::start_on(listener, settings("r2")).await;
    let (_, list) = common::as_admin(&second.http, hyper::Method::GET, "/operator/versions", None).await;
    let one = &list["profiles"][0]["versions"][0];
    assert_eq!(
        (
            one["name"].as_str(),
            one["draining"].as_bool(),
            one["live_sessions"].as_u64()
        ),
        (Some("1"), Some(true), Some(1)),
        "{list}"
    );
    assert_eq!(one["drained_at"], serde_json::Value::Null);
    // A new session runs version 2, on its warm Pod; none of version 1 comes back.
    let fresh = common::matched_in(&second.http, "duel", &["new"]).await.remove(0);
    assert_eq!(fresh["version"], "2");
    let (_, session) = second
        .http
        .get(&format!("/sessions/{}", fresh["session_id"].as_str().unwrap()))
        .await;
    let pod = sim
        .cluster
        .get(&(NS.to_owned(), session["server"].as_str().unwrap().to_owned()))
        .unwrap();
    assert_eq!(
        pod.spec.unwrap().containers[0].image.as_deref(),
        Some("matchplane/sdk-example:2")
    );
    eventually(Duration::from_secs(30), || async {
        (!idle_warm_pods(&sim, Some("canary"), "2").is_empty()).then_some(())
    })
    .await;
    assert!(idle_warm_pods(&sim, Some("canary"), "1").is_empty());

    // The old session plays to its end (its player leaves), and the drain is done.
    drop(reader);
    assert_eq!(ended(&second, "old", Duration::from_secs(30)).await, "completed");
    let drained = eventually(Duration::from_secs(15), || async {
        let (_, list) = common::as_admin(&second.http, hyper::Method::GET, "/operator/versions", None).await;
        let one = list["profiles"][0]["versions"][0].clone();
        one["drained_at"].is_string().then_some(one)
    })
    .await;
    assert_eq!(drained["live_sessions"], 0, "{drained}");
    assert!(idle_warm_pods(&sim, Some("canary"), "1").is_empty());
    second.stop().await;
    let _ = std::fs::remove_file(&file);
}

/// The built-in server's versions with a warm pool, as Pods: each version keeps warm Pods of its
/// own image, labelled with it; a session claims one of its version's and plays on it; a
/// drained version's warm Pods are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_servers_versions_keep_warm_pods_of_their_own_images() {
    let sim = sim(0).await;
    let prefix = common::unique_prefix();
    let file = queue_file(
        &prefix,
        r#"
servers:
  game-server:
    versions:
      - {name: "1", weight: 1}
      - {name: "2", image: matchplane/game-server:2, weight: 1}
queues:
  - {name: casual, session_size: 2}
"#,
    );
    let db = common::fresh_database().await;
    let backend = replica(&sim, &prefix, &db, "r1", |s| {
        s.warm_pool(1, 1).shutdown_grace_seconds(1.0).matchmaking_config(&file)
    })
    .await;
    let pools = || async { backend.http.get("/health").await.1["warm_profiles"].clone() };
    eventually(Duration::from_secs(30), || async {
        let p = pools().await;
        (p["game-server@1"]["idle"] == 1 && p["game-server@2"]["idle"] == 1).then_some(())
    })
    .await;
    // The built-in server's pools together, as before versions.
    assert_eq!(warm_state(&backend).await["idle"], 2);
    assert_eq!(idle_warm_pods(&sim, None, "2"), ["matchplane/game-server:2"]);
    let one = idle_warm_pods(&sim, None, "1");
    assert_eq!(one.len(), 1);
    assert_ne!(
        one[0], "matchplane/game-server:2",
        "version 1 runs the template's image"
    );

    let mut seen = Vec::new();
    for n in 0..2 {
        let roster = players(&format!("bv{n}"), 2);
        let names: Vec<&str> = roster.iter().map(String::as_str).collect();
        let bodies = common::matched_in(&backend.http, "casual", &names).await;
        let sid = bodies[0]["session_id"].as_str().unwrap().to_owned();
        let (_, name) = pod_of(&backend, &sid).await;
        assert!(name.starts_with("mp-gs-warm-"), "handed a warm Pod: {name}");
        let pod = sim.cluster.get(&(NS.to_owned(), name)).unwrap();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        seen.push((
            bodies[0]["version"].as_str().unwrap().to_owned(),
            labels.get("matchplane.io/version").cloned().unwrap_or_default(),
        ));
        play(&backend, &bodies).await;
        assert_eq!(ended(&backend, &roster[0], Duration::from_secs(30)).await, "completed");
    }
    seen.sort();
    assert_eq!(seen, [("1".into(), "1".into()), ("2".into(), "2".into())]);

    let (code, body) = common::as_admin(
        &backend.http,
        hyper::Method::POST,
        "/operator/versions/game-server/2/drain",
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    eventually(Duration::from_secs(15), || async {
        idle_warm_pods(&sim, None, "2").is_empty().then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), || async {
        (idle_warm_pods(&sim, None, "1").len() == 1).then_some(())
    })
    .await;
    backend.stop().await;
    let _ = std::fs::remove_file(&file);
}

/// A queue file of `yaml` for the test with `prefix`.
fn queue_file(prefix: &str, yaml: &str) -> PathBuf {
    let file = std::env::temp_dir().join(format!("queues-{prefix}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    file
}

/// A game connection through `proxy` with the ticket of `status` (the matched status of
/// `player`), once the server has said `WELCOME <player>` on it; it stays open while kept.
async fn welcomed(
    proxy: SocketAddr,
    status: &serde_json::Value,
    player: &str,
) -> tokio::io::BufReader<tokio::net::TcpStream> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let ticket = status["ticket"].as_str().unwrap();
    stream.write_all(format!("JOIN {ticket}\n").as_bytes()).await.unwrap();
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.trim_end(), format!("WELCOME {player}"));
    reader
}

/// A `REGIONS` file naming each `(region, API address)` as a kube-sim cluster, with a
/// kubeconfig of its own.
fn regions_file(prefix: &str, clusters: &[(&str, std::net::SocketAddr)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("regions-{prefix}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut regions = String::from("regions:\n");
    for (name, api) in clusters {
        let kubeconfig = dir.join(format!("{name}.yaml"));
        std::fs::write(&kubeconfig, kube_sim::kubeconfig(*api, NS)).unwrap();
        regions += &format!(
            "  - {{name: {name}, proxy: '{name}.play.example:7777', target: {{context: kube-sim, kubeconfig: '{}'}}}}\n",
            kubeconfig.display()
        );
    }
    let file = dir.join("regions.yaml");
    std::fs::write(&file, regions).unwrap();
    file
}

/// Three kube-sim clusters as three regions (`REGIONS`), each its own kubeconfig context. The
/// first region's API server goes silent (its cluster lost): within the region's down threshold
/// it is down (`/health`, `mp_region_up`), the session running there ends `failed` and its
/// players, requeued at the head, play their match in the next region every latency allows
/// (never in the one beyond their window). Once its API answers again for the up threshold it
/// takes sessions again, and the Pod of the session it lost is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_lost_fails_over_to_the_next_and_comes_back_by_itself() {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let sims = [sim(0).await, sim(0).await, sim(0).await];
    // The first cluster's API is reached through a relay that can go silent.
    let relay = testkit::Relay::start(sims[0].addr).await;
    let regions_file = regions_file(
        &prefix,
        &[("near", relay.addr()), ("next", sims[1].addr), ("far", sims[2].addr)],
    );
    let queues = queue_file(
        &prefix,
        "queues:
  - name: ranked
    session_size: 2
    latency: {attribute: latency_ms, max_ms: 60}
",
    );
    let backend = replica(&sims[0], &prefix, &db, "regions", |s| {
        s.matchmaking_config(&queues)
            .regions(&regions_file)
            .region_thresholds(2, 3)
            .kube_api_timeout_seconds(1.0)
            .server_ready_timeout_seconds(10.0)
    })
    .await;
    let http = &backend.http;
    let join = |player: String| async move {
        let body = serde_json::json!({"player_id": player, "queue": "ranked",
            "attributes": {"latency_ms": {"near": 10, "next": 40, "far": 90}}});
        let (status, answer) = http.post("/match/join", body).await;
        assert!(status.is_success(), "{answer}");
    };
    let matched_in = |player: String, not: Option<String>| async move {
        eventually(Duration::from_secs(60), || async {
            let status = http.status(&player, 2.0).await;
            (status["status"] == "matched" && status["session_id"].as_str() != not.as_deref()).then_some(status)
        })
        .await
    };
    let region_up = |name: &'static str| async move { http.get("/health").await.1["regions"][name]["up"].clone() };

    let first = players("near", 2);
    for p in &first {
        join(p.clone()).await;
    }
    let before = [
        matched_in(first[0].clone(), None).await,
        matched_in(first[1].clone(), None).await,
    ];
    assert_eq!(before[0]["region"], "near", "{}", before[0]);
    let lost = before[0]["session_id"].as_str().unwrap().to_owned();
    let lost_pod = pod_of(&backend, &lost).await.1;
    assert!(sims[0].cluster.records().iter().any(|r| r.name == lost_pod));
    // Both play through a proxy (its Pod runs on: only its cluster's API is cut off).
    let (proxy, _proxy_stop) =
        common::start_proxy(backend.addr, &prefix, &["--player-rate-limit-per-second", "0"]).await;
    let mut games = Vec::new();
    for status in &before {
        let mut game = GameClient::connect(&proxy.to_string()).await;
        game.send(&format!("JOIN {}", status["ticket"].as_str().unwrap())).await;
        assert!(matches!(game.recv().await, Some(ServerReply::Welcome { .. })));
        games.push(game);
    }

    // The near cluster is lost.
    relay.cut();
    eventually(Duration::from_secs(30), || async {
        (region_up("near").await == false).then_some(())
    })
    .await;
    let (_, health) = http.get("/health").await;
    assert!(
        health["regions"]["near"]["reason"]
            .as_str()
            .unwrap()
            .contains("has not answered"),
        "{health}"
    );
    let (_, metrics) = http.request(hyper::Method::GET, "/metrics", &[], Vec::new()).await;
    assert!(metrics.as_str().unwrap().contains("mp_region_up{region=\"near\"} 0"));
    // Its session failed; its players were requeued and matched again, in next (far is beyond
    // their 60 ms window).
    let after = [
        matched_in(first[0].clone(), Some(lost.clone())).await,
        matched_in(first[1].clone(), Some(lost.clone())).await,
    ];
    assert_eq!(after[0]["session_id"], after[1]["session_id"]);
    assert_eq!(after[0]["region"], "next", "{}", after[0]);
    let (_, old) = http.get(&format!("/sessions/{lost}")).await;
    assert_eq!(old["status"], "ended", "{old}");
    assert_eq!(old["end_reason"], "failed", "{old}");
    // The proxy closed their connections to the lost session's server, which still runs.
    for game in &mut games {
        let closed =
            tokio::time::timeout(Duration::from_secs(10), async { while game.recv().await.is_some() {} }).await;
        assert!(closed.is_ok(), "the connection stayed open");
    }
    let sid = after[0]["session_id"].as_str().unwrap().to_owned();
    let (_, session) = http.get(&format!("/sessions/{sid}")).await;
    common::play_to_the_end(session["addr"].as_str().unwrap(), &after).await;
    let sid_pod = pod_of(&backend, &sid).await.1;
    assert!(sims[1].cluster.records().iter().any(|r| r.name == sid_pod));
    assert!(sims[2].cluster.records().is_empty(), "far is beyond every window");

    // The near cluster answers again: after 3 s of answers, near takes sessions again, and the
    // Pod of the session it lost is deleted.
    relay.heal();
    eventually(Duration::from_secs(30), || async {
        (region_up("near").await == true).then_some(())
    })
    .await;
    let again = players("near-again", 2);
    for p in &again {
        join(p.clone()).await;
    }
    let back = matched_in(again[0].clone(), None).await;
    assert_eq!(back["region"], "near", "{back}");
    eventually(Duration::from_secs(60), || async {
        sims[0]
            .cluster
            .records()
            .iter()
            .any(|r| r.name == lost_pod && r.deleted_ms.is_some())
            .then_some(())
    })
    .await;
    let (_, metrics) = http.request(hyper::Method::GET, "/metrics", &[], Vec::new()).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("mp_region_changes_total{region=\"near\",to=\"down\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mp_region_changes_total{region=\"near\",to=\"up\"} 1"),
        "{metrics}"
    );
    backend.stop().await;
}

/// A region whose kubeconfig points nowhere at start: the backend starts all the same, with the
/// region down from the start and saying why, and sessions its players' latency allows
/// elsewhere play there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_whose_cluster_does_not_answer_at_start_is_down_and_the_backend_starts() {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let live = sim(0).await;
    // Nothing listens there.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let regions = regions_file(&prefix, &[("gone", nowhere), ("here", live.addr)]);
    let queues = queue_file(
        &prefix,
        "queues:
  - name: ranked
    session_size: 2
    latency: {attribute: latency_ms, max_ms: 60}
",
    );
    let backend = replica(&live, &prefix, &db, "gone-at-start", |s| {
        s.matchmaking_config(&queues)
            .regions(&regions)
            .kube_api_timeout_seconds(1.0)
    })
    .await;
    let http = &backend.http;
    let (_, health) = http.get("/health").await;
    assert_eq!(health["regions"]["gone"]["up"], false, "{health}");
    assert!(
        health["regions"]["gone"]["reason"]
            .as_str()
            .unwrap()
            .contains("did not answer at start"),
        "{health}"
    );
    assert_eq!(health["regions"]["here"]["up"], true, "{health}");
    // Closer to the region that is gone, but here is within the window: they play here.
    for p in players("gone-at-start", 2) {
        let body = serde_json::json!({"player_id": p, "queue": "ranked",
            "attributes": {"latency_ms": {"gone": 5, "here": 30}}});
        assert!(http.post("/match/join", body).await.0.is_success());
    }
    let status = eventually(Duration::from_secs(60), || async {
        let status = http.status("gone-at-start-0", 2.0).await;
        (status["status"] == "matched").then_some(status)
    })
    .await;
    assert_eq!(status["region"], "here", "{status}");
    backend.stop().await;
}
