//! The NetworkPolicies `deploy/` ships, held to every connection matchplane makes and to some it
//! must never make. kube-sim enforces no NetworkPolicy, so without this a connection a real
//! cluster's CNI drops (the backend's hand-over of a session to a warm Pod, once) passes every
//! other test.
//!
//! The evaluation is Kubernetes' own rule for the policies these manifests use: a Pod selected by
//! no policy of a direction allows everything in it; a selected one allows a connection only if
//! some rule of a selecting policy matches its peer (pod selector in the policy's namespace,
//! namespace selector, or any peer) and its port.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

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
    fn labels(&self) -> BTreeMap<String, String> {
        [("app.kubernetes.io/name".to_owned(), self.name.to_owned())].into()
    }

    fn namespace_labels(&self) -> BTreeMap<String, String> {
        [("kubernetes.io/metadata.name".to_owned(), self.namespace.to_owned())].into()
    }
}

fn policies() -> Vec<NetworkPolicy> {
    let mut out = Vec::new();
    for file in [
        "backend/game-servers-networkpolicy.yaml",
        "databases/networkpolicy.yaml",
    ] {
        let path = format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
        let yaml = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&yaml) {
            let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
            if value["kind"] == "NetworkPolicy" {
                out.push(serde_yaml::from_value(value).unwrap());
            }
        }
    }
    assert_eq!(out.len(), 2, "the policies deploy/ ships");
    out
}

/// `matchLabels` only: the manifests use nothing else (an expression would be refused here).
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.match_expressions.is_none(),
        "matchExpressions are not evaluated here"
    );
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
}

fn peer_matches(peer: &NetworkPolicyPeer, policy_namespace: &str, pod: Pod) -> bool {
    assert!(peer.ip_block.is_none(), "ipBlock is not evaluated here");
    let namespace_ok = match &peer.namespace_selector {
        Some(selector) => selects(selector, &pod.namespace_labels()),
        None => pod.namespace == policy_namespace,
    };
    let pod_ok = peer.pod_selector.as_ref().is_none_or(|s| selects(s, &pod.labels()));
    namespace_ok && pod_ok
}

fn port_matches(ports: Option<&Vec<NetworkPolicyPort>>, port: i32, protocol: &str) -> bool {
    ports.is_none_or(|ports| {
        ports.iter().any(|p| {
            p.protocol.as_deref().unwrap_or("TCP") == protocol
                && p.port.as_ref().is_none_or(|want| *want == IntOrString::Int(port))
        })
    })
}

/// Whether the policies let `from` open a connection to `to` on `port`/`protocol`.
fn allowed(policies: &[NetworkPolicy], from: Pod, to: Pod, port: i32, protocol: &str) -> bool {
    let applies = |p: &NetworkPolicy, pod: Pod, direction: &str| {
        let spec = p.spec.as_ref().unwrap();
        p.metadata.namespace.as_deref() == Some(pod.namespace)
            && selects(&spec.pod_selector.clone().unwrap_or_default(), &pod.labels())
            && spec.policy_types.iter().flatten().any(|t| t == direction)
    };
    let egress: Vec<&NetworkPolicy> = policies.iter().filter(|p| applies(p, from, "Egress")).collect();
    let egress_ok = egress.is_empty()
        || egress.iter().any(|p| {
            let namespace = p.metadata.namespace.as_deref().unwrap();
            p.spec.as_ref().unwrap().egress.iter().flatten().any(|rule| {
                rule.to
                    .as_ref()
                    .is_none_or(|peers| peers.iter().any(|peer| peer_matches(peer, namespace, to)))
                    && port_matches(rule.ports.as_ref(), port, protocol)
            })
        });
    let ingress: Vec<&NetworkPolicy> = policies.iter().filter(|p| applies(p, to, "Ingress")).collect();
    let ingress_ok = ingress.is_empty()
        || ingress.iter().any(|p| {
            let namespace = p.metadata.namespace.as_deref().unwrap();
            p.spec.as_ref().unwrap().ingress.iter().flatten().any(|rule| {
                rule.from
                    .as_ref()
                    .is_none_or(|peers| peers.iter().any(|peer| peer_matches(peer, namespace, from)))
                    && port_matches(rule.ports.as_ref(), port, protocol)
            })
        });
    egress_ok && ingress_ok
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
