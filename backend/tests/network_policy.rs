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

fn policies() -> Vec<NetworkPolicy> {
    let mut out = Vec::new();
    for file in [
        "backend/game-servers-networkpolicy.yaml",
        "databases/networkpolicy.yaml",
    ] {
        let path = format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
        out.extend(policies_from_manifest(&std::fs::read_to_string(&path).unwrap(), None).unwrap());
    }
    assert_eq!(out.len(), 2, "the policies deploy/ ships");
    out
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
