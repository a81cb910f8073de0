//! NetworkPolicy, enforced on connections to Pod IPs as a cluster's CNI enforces it.
//!
//! A test bed that lets every connection through hides exactly the bug a policy causes: a
//! connection that works here and is dropped on every cluster that enforces the policies
//! shipped beside it. With policies loaded (`--network-policy`), each Pod whose ports are all
//! TCP gets a relay on its Pod IP: its container listens on a second loopback address of its
//! own (which its `status.podIP` reads), and kube-sim accepts on the Pod IP, finds which
//! process opened the connection (the owner of the peer socket, from `/proc`), and lets the
//! connection through only if the policies admit that process's Pod on that port.
//!
//! Who a process is: a container kube-sim runs is its Pod (by process group); a process
//! running one of the `--host-workload` programs is the Pod those labels describe, in
//! `--namespace` (the backend and proxy of a demo, run on the host); anything else is outside
//! the cluster (matched only by a rule that admits every peer, or an `ipBlock` holding
//! 127.0.0.1). A refused connection is reset and counted (`/sim/network`), as a dropped one
//! would fail the caller on a real cluster.
//!
//! What is not enforced, and why: egress (a container's outgoing connections do not pass
//! kube-sim; `backend/tests/network_policy.rs` holds the shipped egress rules to every
//! connection statically), and Pods with a UDP port (a datagram relay would have to keep a
//! flow table per peer; such a Pod listens on its Pod IP directly and is not filtered).
//! kube-sim's own probes reach containers directly, as a real kubelet's are not filtered.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::ContainerPort;
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize as _, Serialize};

/// One end of a connection as the policies see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `None`: outside the cluster (no Pod, no namespace).
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// What `ipBlock` rules match.
    pub ip: IpAddr,
    /// The ports the Pod declares, for rules that name a port.
    pub ports: Vec<ContainerPort>,
}

impl Endpoint {
    /// A Pod in `namespace` with `labels` at `ip`.
    pub fn pod(namespace: &str, labels: BTreeMap<String, String>, ip: IpAddr) -> Endpoint {
        Endpoint {
            namespace: Some(namespace.to_owned()),
            labels,
            ip,
            ports: Vec::new(),
        }
    }

    /// A peer outside the cluster at `ip`.
    pub fn outside(ip: IpAddr) -> Endpoint {
        Endpoint {
            namespace: None,
            labels: BTreeMap::new(),
            ip,
            ports: Vec::new(),
        }
    }

    /// A namespace's labels as a real API server sets them: its name under
    /// `kubernetes.io/metadata.name`.
    fn namespace_labels(&self) -> Option<BTreeMap<String, String>> {
        let name = self.namespace.as_ref()?;
        Some([("kubernetes.io/metadata.name".to_owned(), name.clone())].into())
    }
}

/// The NetworkPolicies of a manifest (its other documents skipped), each moved into
/// `namespace` when one is given (as `kustomize`'s `namespace:` rewrites a manifest's).
pub fn policies_from_manifest(yaml: &str, namespace: Option<&str>) -> anyhow::Result<Vec<NetworkPolicy>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).context("reading the manifest")?;
        if value.get("kind").and_then(serde_yaml::Value::as_str) != Some("NetworkPolicy") {
            continue;
        }
        let mut policy: NetworkPolicy = serde_yaml::from_value(value).context("a NetworkPolicy")?;
        if let Some(namespace) = namespace {
            policy.metadata.namespace = Some(namespace.to_owned());
        }
        let name = policy.metadata.name.clone().unwrap_or_default();
        if let Some(spec) = &policy.spec {
            let selectors = std::iter::once(spec.pod_selector.as_ref()).chain(
                spec.ingress
                    .iter()
                    .flatten()
                    .flat_map(|r| r.from.iter().flatten())
                    .chain(spec.egress.iter().flatten().flat_map(|r| r.to.iter().flatten()))
                    .flat_map(|p| [p.pod_selector.as_ref(), p.namespace_selector.as_ref()]),
            );
            for selector in selectors.flatten() {
                for expression in selector.match_expressions.iter().flatten() {
                    if !matches!(expression.operator.as_str(), "In" | "NotIn" | "Exists" | "DoesNotExist") {
                        bail!(
                            "NetworkPolicy {name}: unknown selector operator {:?}",
                            expression.operator
                        );
                    }
                }
            }
        }
        out.push(policy);
    }
    Ok(out)
}

/// Whether `selector` selects `labels` (an empty selector selects everything).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let listed = || value.is_some_and(|v| e.values.iter().flatten().any(|w| w == v));
        match e.operator.as_str() {
            "In" => listed(),
            "NotIn" => !listed(),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_label && by_expression
}

fn in_block(block: &IPBlock, ip: IpAddr) -> bool {
    let contains = |cidr: &str| {
        let Some((net, bits)) = cidr.split_once('/') else {
            return false;
        };
        let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
            return false;
        };
        match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) if bits <= 32 => {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) if bits <= 128 => {
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    };
    contains(&block.cidr) && !block.except.iter().flatten().any(|e| contains(e))
}

/// Whether a rule's peer (of a policy in `policy_namespace`) is `endpoint`.
fn peer_matches(peer: &NetworkPolicyPeer, policy_namespace: &str, endpoint: &Endpoint) -> bool {
    if let Some(block) = &peer.ip_block {
        return in_block(block, endpoint.ip);
    }
    let Some(namespace) = endpoint.namespace.as_deref() else {
        return false;
    };
    let namespace_ok = match &peer.namespace_selector {
        Some(selector) => endpoint.namespace_labels().is_some_and(|l| selects(selector, &l)),
        None => namespace == policy_namespace,
    };
    namespace_ok && peer.pod_selector.as_ref().is_none_or(|s| selects(s, &endpoint.labels))
}

/// Whether a rule's ports hold `port`/`protocol` of `to` (a named port is looked up among the
/// Pod's declared ports).
fn port_matches(ports: Option<&Vec<NetworkPolicyPort>>, to: &Endpoint, port: u16, protocol: &str) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return true;
    };
    ports.iter().any(|p| {
        p.protocol.as_deref().unwrap_or("TCP") == protocol
            && match &p.port {
                None => true,
                Some(IntOrString::Int(first)) => {
                    let last = p.end_port.unwrap_or(*first);
                    (*first..=last).contains(&i32::from(port))
                }
                Some(IntOrString::String(name)) => to.ports.iter().any(|c| {
                    c.name.as_deref() == Some(name.as_str())
                        && c.container_port == i32::from(port)
                        && c.protocol.as_deref().unwrap_or("TCP") == protocol
                }),
            }
    })
}

/// Whether a policy governs `endpoint`'s traffic in `direction` (`Ingress` or `Egress`).
fn governs(policy: &NetworkPolicy, endpoint: &Endpoint, direction: &str) -> bool {
    let Some(spec) = &policy.spec else { return false };
    let types = match &spec.policy_types {
        Some(types) => types.iter().any(|t| t == direction),
        // Without policyTypes: Ingress always, Egress when it has egress rules.
        None => direction == "Ingress" || spec.egress.is_some(),
    };
    types
        && endpoint.namespace.is_some()
        && policy.metadata.namespace == endpoint.namespace
        && spec.pod_selector.as_ref().is_none_or(|s| selects(s, &endpoint.labels))
}

/// Whether `policies` let `from` open a connection to `to` on `port`/`protocol`: Kubernetes'
/// rule, for each direction, that a Pod no policy governs allows everything, and a governed
/// one allows only what some rule of a governing policy admits.
pub fn allows(policies: &[NetworkPolicy], from: &Endpoint, to: &Endpoint, port: u16, protocol: &str) -> bool {
    let admitted = |direction: &str, subject: &Endpoint, other: &Endpoint| {
        let governing: Vec<&NetworkPolicy> = policies.iter().filter(|p| governs(p, subject, direction)).collect();
        governing.is_empty()
            || governing.iter().any(|policy| {
                let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
                let Some(spec) = &policy.spec else { return false };
                // Each rule of the direction as (its peers, its ports).
                let rules: Vec<_> = if direction == "Ingress" {
                    spec.ingress
                        .iter()
                        .flatten()
                        .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                        .collect()
                } else {
                    spec.egress
                        .iter()
                        .flatten()
                        .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                        .collect()
                };
                rules.into_iter().any(|(peers, ports)| {
                    peers
                        .filter(|peers| !peers.is_empty())
                        .is_none_or(|peers| peers.iter().any(|p| peer_matches(p, namespace, other)))
                        && port_matches(ports, to, port, protocol)
                })
            })
    };
    admitted("Egress", from, to) && admitted("Ingress", to, from)
}

/// A program run on the host that counts as a Pod with `labels` in kube-sim's namespace.
#[derive(Debug, Clone)]
pub struct HostWorkload {
    pub labels: BTreeMap<String, String>,
    pub program: PathBuf,
}

impl HostWorkload {
    /// `KEY=VALUE[,KEY=VALUE...]@PROGRAM`.
    pub fn parse(entry: &str) -> anyhow::Result<HostWorkload> {
        let (labels, program) = entry
            .rsplit_once('@')
            .with_context(|| format!("--host-workload {entry:?}: expected KEY=VALUE[,KEY=VALUE...]@PROGRAM"))?;
        let mut parsed = BTreeMap::new();
        for pair in labels.split(',') {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .with_context(|| format!("--host-workload {entry:?}: label {pair:?} is not KEY=VALUE"))?;
            parsed.insert(k.to_owned(), v.to_owned());
        }
        let program = std::fs::canonicalize(program)
            .with_context(|| format!("--host-workload {entry:?}: {program} is not a file"))?;
        Ok(HostWorkload {
            labels: parsed,
            program,
        })
    }
}

/// Connections seen between one caller and one Pod port.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Flow {
    /// The caller: `pod <namespace>/<name>`, `host <program> (<labels>)`, or `outside ...`.
    pub from: String,
    /// `<namespace>/<pod>`.
    pub to: String,
    pub port: u16,
    pub protocol: &'static str,
    pub allowed: u64,
    pub denied: u64,
}

/// The policies kube-sim enforces, who is who, and what it let through or refused.
#[derive(Debug)]
pub struct Network {
    policies: Vec<NetworkPolicy>,
    namespace: String,
    workloads: Vec<HostWorkload>,
    /// Each running container's process group → its Pod (namespace, name).
    groups: Mutex<HashMap<i32, crate::node::Key>>,
    flows: Mutex<BTreeMap<(String, String, u16), Flow>>,
}

/// Who opened a connection.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A container kube-sim runs.
    Pod(crate::node::Key),
    /// A `--host-workload` process.
    Host(usize),
    /// Anything else; the reason says what was found.
    Outside(String),
}

impl Network {
    pub fn new(policies: Vec<NetworkPolicy>, namespace: &str, workloads: Vec<HostWorkload>) -> Network {
        Network {
            policies,
            namespace: namespace.to_owned(),
            workloads,
            groups: Mutex::new(HashMap::new()),
            flows: Mutex::new(BTreeMap::new()),
        }
    }

    /// Loads every NetworkPolicy of the manifests at `paths`, granted in `namespace`.
    pub fn load(paths: &[PathBuf], namespace: &str, workloads: Vec<HostWorkload>) -> anyhow::Result<Network> {
        let mut policies = Vec::new();
        for path in paths {
            let yaml = std::fs::read_to_string(path).with_context(|| format!("--network-policy {}", path.display()))?;
            let found = policies_from_manifest(&yaml, Some(namespace))
                .with_context(|| format!("--network-policy {}", path.display()))?;
            anyhow::ensure!(
                !found.is_empty(),
                "--network-policy {}: no NetworkPolicy in it",
                path.display()
            );
            policies.extend(found);
        }
        Ok(Network::new(policies, namespace, workloads))
    }

    pub fn policies(&self) -> &[NetworkPolicy] {
        &self.policies
    }

    /// A container started: its process group is `pod`.
    pub fn started(&self, group: i32, pod: crate::node::Key) {
        self.groups.lock().unwrap().insert(group, pod);
    }

    /// A container ended.
    pub fn ended(&self, group: i32) {
        self.groups.lock().unwrap().remove(&group);
    }

    /// Who owns the socket that connected from `peer` to `local` (a blocking `/proc` scan).
    pub fn caller(&self, peer: SocketAddr, local: SocketAddr) -> Caller {
        let groups = self.groups.lock().unwrap().clone();
        match owner(peer, local, &|pid| {
            let group = process_group(pid)?;
            if let Some(pod) = groups.get(&group) {
                return Some(Caller::Pod(pod.clone()));
            }
            let exe = executable(pid)?;
            self.workloads.iter().position(|w| w.program == exe).map(Caller::Host)
        }) {
            Ok(Some(caller)) => caller,
            Ok(None) => Caller::Outside(format!("{peer}, a process that is neither a Pod nor a host workload")),
            Err(why) => Caller::Outside(format!("{peer}, owner unknown: {why}")),
        }
    }

    /// The caller as the policies see it (a Pod gone meanwhile is outside).
    fn endpoint(
        &self,
        caller: &Caller,
        peer: IpAddr,
        pods: &dyn Fn(&crate::node::Key) -> Option<Endpoint>,
    ) -> (String, Endpoint) {
        match caller {
            Caller::Pod(key) => match pods(key) {
                Some(endpoint) => (format!("pod {}/{}", key.0, key.1), endpoint),
                None => (format!("pod {}/{} (gone)", key.0, key.1), Endpoint::outside(peer)),
            },
            Caller::Host(i) => {
                let w = &self.workloads[*i];
                let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let name = w
                    .program
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                (
                    format!("host {name} ({})", labels.join(",")),
                    Endpoint::pod(&self.namespace, w.labels.clone(), peer),
                )
            }
            Caller::Outside(why) => (format!("outside ({why})"), Endpoint::outside(peer)),
        }
    }

    /// Decides a TCP connection from `caller` (at `peer`) to Pod `to` (`to_name`) on `port`,
    /// and counts it.
    pub fn decide(
        &self,
        caller: &Caller,
        peer: IpAddr,
        to_name: &crate::node::Key,
        to: &Endpoint,
        port: u16,
        pods: &dyn Fn(&crate::node::Key) -> Option<Endpoint>,
    ) -> bool {
        let (from_name, from) = self.endpoint(caller, peer, pods);
        let allowed = allows(&self.policies, &from, to, port, "TCP");
        let target = format!("{}/{}", to_name.0, to_name.1);
        if !allowed {
            tracing::warn!(from = %from_name, to = %target, port, "connection refused by NetworkPolicy");
        }
        let mut flows = self.flows.lock().unwrap();
        let flow = flows
            .entry((from_name.clone(), target.clone(), port))
            .or_insert_with(|| Flow {
                from: from_name,
                to: target,
                port,
                protocol: "TCP",
                ..Flow::default()
            });
        if allowed {
            flow.allowed += 1;
        } else {
            flow.denied += 1;
        }
        allowed
    }

    /// Every caller → Pod port seen, with how many connections were let through and refused.
    pub fn flows(&self) -> Vec<Flow> {
        self.flows.lock().unwrap().values().cloned().collect()
    }
}

/// `/proc/net/tcp`'s spelling of an address: each 32-bit word of it in the machine's order,
/// as hex, then the port.
fn proc_address(addr: SocketAddr) -> (String, String) {
    let words = |bytes: &[u8]| -> String {
        bytes
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect()
    };
    let port = format!("{:04X}", addr.port());
    match addr.ip() {
        IpAddr::V4(ip) => {
            let mapped = ip.to_ipv6_mapped();
            (
                format!("{}:{port}", words(&ip.octets())),
                format!("{}:{port}", words(&mapped.octets())),
            )
        }
        IpAddr::V6(ip) => {
            let spelled = format!("{}:{port}", words(&ip.octets()));
            (spelled.clone(), spelled)
        }
    }
}

/// The inode of the socket connected from `peer` to `local`, from `/proc/net/tcp{,6}`.
fn socket_inode(peer: SocketAddr, local: SocketAddr) -> anyhow::Result<Option<u64>> {
    let (peer4, peer6) = proc_address(peer);
    let (local4, local6) = proc_address(local);
    for (table, want_local, want_remote) in [("/proc/net/tcp", &peer4, &local4), ("/proc/net/tcp6", &peer6, &local6)] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[1] == want_local.as_str() && fields[2] == want_remote.as_str() {
                return Ok(fields[9].parse().ok());
            }
        }
    }
    if !Path::new("/proc/net/tcp").exists() {
        bail!("no /proc/net/tcp (enforcing NetworkPolicy needs Linux)");
    }
    Ok(None)
}

fn process_group(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp ...: the name may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

fn executable(pid: u32) -> Option<PathBuf> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let text = exe.to_string_lossy();
    // A binary rebuilt while it runs reads "<path> (deleted)".
    Some(PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text)))
}

/// The caller owning the socket from `peer` to `local`: the first process that `who` names
/// and that holds the socket. Only processes `who` names are searched.
fn owner(peer: SocketAddr, local: SocketAddr, who: &dyn Fn(u32) -> Option<Caller>) -> anyhow::Result<Option<Caller>> {
    let Some(inode) = socket_inode(peer, local)? else {
        return Ok(None);
    };
    let link = PathBuf::from(format!("socket:[{inode}]"));
    for entry in std::fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Some(caller) = who(pid) else { continue };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == link))
        {
            return Ok(Some(caller));
        }
    }
    Ok(None)
}

/// The first port of `ports` that is not TCP, if any.
pub fn non_tcp(ports: &[ContainerPort]) -> Option<&ContainerPort> {
    ports.iter().find(|p| p.protocol.as_deref().unwrap_or("TCP") != "TCP")
}

/// The loopback address 127.0.0.1, what every host process connects from.
pub const HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_are_spelled_as_the_kernel_spells_them() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let (v4, v6) = proc_address(addr);
        if cfg!(target_endian = "little") {
            assert_eq!(v4, "0100007F:1F90");
            assert_eq!(v6, "0000000000000000FFFF00000100007F:1F90");
        }
    }

    #[test]
    fn a_connection_from_this_process_is_found_in_proc() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let inode = socket_inode(peer, listener.local_addr().unwrap()).unwrap();
        assert!(inode.is_some(), "the client's socket is in /proc/net/tcp");
        // Its owner is this process.
        let link = PathBuf::from(format!("socket:[{}]", inode.unwrap()));
        let held = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == link));
        assert!(held);
        drop(client);
    }

    #[test]
    fn selectors_blocks_and_ports() {
        let yaml = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: elsewhere}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [game]}]}
  ingress:
    - from: [{podSelector: {matchLabels: {app: proxy}}}]
      ports: [{port: 7000, endPort: 7010}, {port: game}]
    - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
";
        let policies = policies_from_manifest(yaml, Some("ns")).unwrap();
        assert_eq!(policies[0].metadata.namespace.as_deref(), Some("ns"));
        let labels = |app: &str| BTreeMap::from([("app".to_owned(), app.to_owned())]);
        let mut game = Endpoint::pod("ns", labels("game"), "127.1.0.1".parse().unwrap());
        game.ports = vec![ContainerPort {
            name: Some("game".into()),
            container_port: 7777,
            ..ContainerPort::default()
        }];
        let proxy = Endpoint::pod("ns", labels("proxy"), HOST);
        let other_ns = Endpoint::pod("other", labels("proxy"), HOST);
        assert!(allows(&policies, &proxy, &game, 7005, "TCP"));
        assert!(allows(&policies, &proxy, &game, 7777, "TCP"), "the named port");
        assert!(!allows(&policies, &proxy, &game, 7011, "TCP"));
        assert!(!allows(&policies, &proxy, &game, 7005, "UDP"));
        assert!(!allows(&policies, &other_ns, &game, 7005, "TCP"));
        assert!(allows(
            &policies,
            &Endpoint::outside("10.2.3.4".parse().unwrap()),
            &game,
            1,
            "TCP"
        ));
        assert!(!allows(
            &policies,
            &Endpoint::outside("10.1.3.4".parse().unwrap()),
            &game,
            1,
            "TCP"
        ));
        assert!(!allows(&policies, &Endpoint::outside(HOST), &game, 7005, "TCP"));
        // A Pod no policy selects takes anything.
        let web = Endpoint::pod("ns", labels("web"), HOST);
        assert!(allows(&policies, &Endpoint::outside(HOST), &web, 80, "TCP"));
        let bad = yaml.replace("operator: In", "operator: Like");
        assert!(policies_from_manifest(&bad, None).is_err());
    }
}
