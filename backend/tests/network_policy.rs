//! The NetworkPolicies `deploy/` ships, held to every connection matchplane makes and to some it
//! must never make, by kube-sim's evaluation of them (Kubernetes' own rule: a Pod no policy of a
//! direction selects allows everything in it; a selected one allows a connection only if some
//! rule of a selecting policy matches its peer and its port).
//!
//! kube-sim enforces ingress to Pods on the connections it sees (`make demo-kubernetes`, and
//! `kube_sim.rs`'s warm hand-over under the shipped policy); egress, the databases' policy and
//! the parts that run outside it (Redis, PostgreSQL, DNS, Prometheus) are held here.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube_sim::network::{Endpoint, HOST, policies_from_manifest};

/// A Pod as the policies see it.
#[derive(Clone, Copy)]
struct Pod {
    namespace: &'static str,
    name: &'static str,
}

const PROXY: Pod = Pod {
    namespace: "matchplane",
    name: "matchplane-proxy",
};
const BACKEND: Pod = Pod {
    namespace: "matchplane",
    name: "matchplane-backend",
};
const GAME: Pod = Pod {
    namespace: "matchplane",
    name: "matchplane-game-server",
};
const REDIS: Pod = Pod {
    namespace: "databases",
    name: "redis",
};
const POSTGRES: Pod = Pod {
    namespace: "databases",
    name: "postgres",
};
const DNS: Pod = Pod {
    namespace: "kube-system",
    name: "kube-dns",
};
const PROMETHEUS: Pod = Pod {
    namespace: "monitoring",
    name: "prometheus",
};
const STRANGER: Pod = Pod {
    namespace: "default",
    name: "someone-else",
};

impl Pod {
    fn endpoint(&self) -> Endpoint {
        let labels = BTreeMap::from([("app.kubernetes.io/name".to_owned(), self.name.to_owned())]);
        Endpoint::pod(self.namespace, labels, HOST)
    }
}

/// The policies of `files` under deploy/, one each.
fn load(files: &[&str]) -> Vec<NetworkPolicy> {
    let mut out = Vec::new();
    for file in files {
        let path = format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
        out.extend(policies_from_manifest(&std::fs::read_to_string(&path).unwrap(), None).unwrap());
    }
    assert_eq!(out.len(), files.len(), "one policy per file of {files:?}");
    out
}

/// The policies `deploy/` applies in one cluster.
fn policies() -> Vec<NetworkPolicy> {
    load(&[
        "backend/game-servers-networkpolicy.yaml",
        "databases/networkpolicy.yaml",
    ])
}

/// Whether the policies let `from` open a connection to `to` on `port`/`protocol`.
fn allowed(policies: &[NetworkPolicy], from: Pod, to: Pod, port: u16, protocol: &str) -> bool {
    kube_sim::network::allows(policies, &from.endpoint(), &to.endpoint(), port, protocol)
}

#[test]
fn every_connection_matchplane_makes_is_allowed_and_nothing_else_reaches_the_game_servers() {
    let policies = policies();
    let makes = [
        (
            STRANGER,
            PROXY,
            8080,
            "TCP",
            "players reach the public port (the API and game TCP)",
        ),
        (
            STRANGER,
            PROXY,
            8080,
            "UDP",
            "players' datagrams reach the public port's number",
        ),
        (PROXY, BACKEND, 8081, "TCP", "the proxy forwards the API"),
        (PROXY, GAME, 7777, "TCP", "the proxy splices players to their server"),
        (PROXY, GAME, 27015, "TCP", "a server profile's own TCP port"),
        (
            PROXY,
            GAME,
            28785,
            "UDP",
            "the proxy relays players' datagrams to a profile's UDP port",
        ),
        (
            BACKEND,
            GAME,
            7777,
            "TCP",
            "the backend hands a session to a warm pod (ASSIGN)",
        ),
        (
            GAME,
            BACKEND,
            8081,
            "TCP",
            "a game server's SDK calls: its result, ready, health, and a warm one's poll for its session",
        ),
        (GAME, DNS, 53, "UDP", "a game server finds the backend"),
        (GAME, DNS, 53, "TCP", "a game server finds the backend (large answers)"),
        (BACKEND, REDIS, 6379, "TCP", "the backend's state"),
        (BACKEND, POSTGRES, 5432, "TCP", "the match history"),
        (PROXY, REDIS, 6379, "TCP", "the proxy's session lookups"),
        (
            PROMETHEUS,
            BACKEND,
            8081,
            "TCP",
            "deploy/monitoring scrapes every backend's /metrics",
        ),
        (
            PROMETHEUS,
            PROXY,
            8080,
            "TCP",
            "deploy/monitoring scrapes every proxy's /metrics",
        ),
    ];
    for (from, to, port, protocol, why) in makes {
        assert!(
            allowed(&policies, from, to, port, protocol),
            "{} -> {}:{port}/{protocol} is dropped, but {why}",
            from.name,
            to.name
        );
    }
    let never = [
        (
            STRANGER,
            GAME,
            7777,
            "a pod of another namespace reaching a game server",
        ),
        (GAME, REDIS, 6379, "a game server reaching Redis"),
        (GAME, POSTGRES, 5432, "a game server reaching PostgreSQL"),
        (GAME, PROXY, 8080, "a game server reaching the proxy"),
        (BACKEND, GAME, 8081, "anything but the game port on a game server"),
        (
            BACKEND,
            GAME,
            27015,
            "a profile's port (its warm pods take their session by polling the backend)",
        ),
        (
            STRANGER,
            GAME,
            28785,
            "a pod of another namespace reaching a profile's port",
        ),
        (STRANGER, REDIS, 6379, "another namespace reaching Redis"),
    ];
    for (from, to, port, what) in never {
        assert!(!allowed(&policies, from, to, port, "TCP"), "allowed: {what}");
    }
}

/// One end of a connection between two clusters: a Pod, and the address the other cluster
/// sees it at.
struct Remote<'a> {
    policies: &'a [NetworkPolicy],
    pod: Pod,
    seen_as: &'static str,
}

/// Whether a connection from one cluster's Pod to another's is let out by the first cluster's
/// policies and let in by the second's.
fn crosses(from: &Remote, to: &Remote, port: u16, protocol: &str) -> bool {
    let outside = |ip: &str| Endpoint::outside(ip.parse().unwrap());
    kube_sim::network::allows(
        from.policies,
        &from.pod.endpoint(),
        &outside(to.seen_as),
        port,
        protocol,
    ) && kube_sim::network::allows(to.policies, &outside(from.seen_as), &to.pod.endpoint(), port, protocol)
}

#[test]
fn a_region_without_the_control_plane_reaches_it_and_nothing_else_does() {
    // The control plane's cluster: deploy/ and the policy admitting the other regions'
    // proxies to Redis. A region's cluster: its game servers' policy. The addresses are the
    // documentation ranges the files name (192.0.2.0/24 the backend, 198.51.100.0/24 the
    // other regions' proxies).
    let mut control = policies();
    control.extend(load(&["regions/databases-networkpolicy.yaml"]));
    let region = load(&["regions/game-servers-networkpolicy.yaml"]);
    fn at<'a>(policies: &'a [NetworkPolicy], pod: Pod, seen_as: &'static str) -> Remote<'a> {
        Remote { policies, pod, seen_as }
    }
    let backend = at(&control, BACKEND, "192.0.2.10");
    let redis = at(&control, REDIS, "192.0.2.20");
    let postgres = at(&control, POSTGRES, "192.0.2.21");
    let game = at(&region, GAME, "10.8.0.5");
    let proxy = at(&region, PROXY, "198.51.100.7");
    let stranger = at(&region, STRANGER, "203.0.113.9");
    let makes = [
        (
            &game,
            &backend,
            8081,
            "a game server's SDK calls: its result, ready, health, a warm one's poll",
        ),
        (
            &backend,
            &game,
            7777,
            "the backend hands a session to a warm pod (ASSIGN)",
        ),
        (
            &proxy,
            &redis,
            6379,
            "the region's proxy looks up the sessions it routes",
        ),
        (&proxy, &backend, 8081, "the region's proxy forwards the API"),
    ];
    for (from, to, port, why) in makes {
        assert!(
            crosses(from, to, port, "TCP"),
            "{} -> {}:{port} across clusters is dropped, but {why}",
            from.pod.name,
            to.pod.name
        );
    }
    // Within the region: the proxy splices players to their server on any of its ports.
    for (port, protocol) in [(7777, "TCP"), (27015, "TCP"), (28785, "UDP")] {
        assert!(
            allowed(&region, PROXY, GAME, port, protocol),
            "proxy -> game server {port}/{protocol}"
        );
    }
    assert!(
        allowed(&region, GAME, DNS, 53, "UDP"),
        "a game server finds the backend"
    );
    let never = [
        (
            &stranger,
            &redis,
            6379,
            "an address outside the regions' proxies reaching Redis",
        ),
        (&proxy, &postgres, 5432, "a region's proxy reaching PostgreSQL"),
        (
            &proxy,
            &redis,
            26379,
            "a region's proxy reaching anything but Redis's port",
        ),
        (&game, &redis, 6379, "a game server reaching Redis"),
        (&game, &postgres, 5432, "a game server reaching PostgreSQL"),
        (&game, &proxy, 8080, "a game server reaching another region's proxy"),
        (
            &stranger,
            &game,
            7777,
            "an address outside the control plane reaching a game server",
        ),
        (&backend, &game, 27015, "the backend reaching a profile's port"),
    ];
    for (from, to, port, what) in never {
        assert!(!crosses(from, to, port, "TCP"), "allowed: {what}");
    }
    assert!(
        !allowed(&region, STRANGER, GAME, 7777, "TCP"),
        "allowed: a pod of another namespace in the region reaching a game server"
    );
}
