//! The API server's storage: Pods under resource versions, a bounded event history for watches
//! to resume from, and the faults an operator or test has asked for.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};

use crate::kubelet::{self, Command};
pub use crate::node::{Key, NodeConfig, PodRecord, now, now_ms};
use crate::node::{PodStorage, timestamp};
use crate::selector::{FieldSelector, LabelSelector};

/// One change, as a watch sends it.
#[derive(Debug)]
pub struct Event {
    pub kind: &'static str,
    pub resource_version: u64,
    pub pod: Pod,
    /// A MODIFIED event's labels before the change, when the change touched them: a watch
    /// whose label selector the Pod starts or stops matching sees ADDED or DELETED instead.
    pub previous_labels: Option<Option<BTreeMap<String, String>>>,
}

/// An API call the faults apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Create,
    Delete,
    Get,
    List,
    Patch,
    Watch,
}

/// "Answer the next `count` calls (of `verb`, or any) with `code`."
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct Fault {
    pub code: u16,
    pub count: u32,
    #[serde(default)]
    pub verb: Option<Verb>,
    /// Carry a write (create, delete, patch) out first and answer `code` in place of its
    /// answer: the change is made but the caller is not told, as when a real API server
    /// times out (504) after the write reached storage. Reads are refused at once either way.
    #[serde(default)]
    pub after: bool,
}

/// Settings that can change while it runs.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Behaviour {
    /// How long a Pod waits before its container starts (scheduling and image pull).
    pub start_delay_ms: u64,
    /// The next this many Pods never pass their readiness probe.
    pub never_ready: u32,
    /// Every how many ms a watch that asked for bookmarks gets one.
    pub bookmark_interval_ms: u64,
    /// The longest a watch call lasts, whatever it asked for.
    pub max_watch_seconds: u64,
}

/// The state behind the lock.
struct State {
    resource_version: u64,
    pods: BTreeMap<Key, Pod>,
    history: VecDeque<Arc<Event>>,
    /// Watches may resume from this resource version or later; older ones get 410 Gone.
    oldest: u64,
    faults: Vec<Fault>,
    behaviour: Behaviour,
    kubelets: HashMap<Key, mpsc::UnboundedSender<Command>>,
    records: BTreeMap<Key, PodRecord>,
    next_ip: u32,
}

/// How often one kind of API call was made, and how often it was refused for want of a
/// permission.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallCount {
    pub allowed: u64,
    pub forbidden: u64,
}

pub struct Cluster {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
    /// Bumped to cut every open watch.
    cuts: watch::Sender<u64>,
    history_limit: usize,
    pub node: NodeConfig,
    /// Every API call made, by what the authorizer saw; a lock of its own, off the storage's.
    calls: Mutex<BTreeMap<crate::rbac::Request, CallCount>>,
}

/// A starting point for Pod IPs that differs between kube-sim instances.
fn random_start() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % (239 * 65_536)
}

/// Why a watch cannot start.
#[derive(Debug)]
pub struct TooOld {
    pub asked: u64,
    pub oldest: u64,
}

/// Why a patch was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PatchError {
    NotFound,
    /// The precondition's resource version is not the Pod's.
    Conflict(String),
    /// The patch changes what may not change, or the result is not a valid Pod.
    Invalid(String),
}

/// Applies a JSON merge patch (RFC 7386) to `target`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(map) = target else { return };
    for (key, value) in fields {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A watch's start: the events to send first, the live feed, and the signal that cuts it.
pub struct Subscription {
    pub first: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    pub cuts: watch::Receiver<u64>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub enum From {
    /// Synthetic ADDED events for what exists, then changes.
    Now,
    /// Every change after this resource version.
    After(u64),
}

impl Cluster {
    pub fn new(node: NodeConfig, behaviour: Behaviour, history_limit: usize) -> Arc<Cluster> {
        Arc::new(Cluster {
            state: Mutex::new(State {
                resource_version: 1,
                pods: BTreeMap::new(),
                history: VecDeque::new(),
                oldest: 1,
                faults: Vec::new(),
                behaviour,
                kubelets: HashMap::new(),
                records: BTreeMap::new(),
                next_ip: random_start(),
            }),
            events: broadcast::channel(8192).0,
            cuts: watch::Sender::new(0),
            history_limit,
            node,
            calls: Mutex::new(BTreeMap::new()),
        })
    }

    /// Holds an API call to the Roles, if any, and counts it: `Err` with the refusal's
    /// message when it is forbidden.
    pub fn authorize(&self, request: crate::rbac::Request) -> Result<(), String> {
        let refused = match &self.node.rbac {
            Some(rbac) if !rbac.allows(&request) => Some(rbac.refusal(&request)),
            _ => None,
        };
        let key = crate::rbac::Request { name: None, ..request };
        let mut calls = self.calls.lock().unwrap();
        let count = calls.entry(key).or_default();
        match refused {
            None => {
                count.allowed += 1;
                Ok(())
            }
            Some(message) => {
                count.forbidden += 1;
                Err(message)
            }
        }
    }

    /// Every kind of API call made so far (verb, group, resource, namespace) and its counts.
    pub fn calls(&self) -> Vec<(crate::rbac::Request, CallCount)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(r, c)| (r.clone(), c.clone()))
            .collect()
    }

    fn emit(&self, state: &mut State, kind: &'static str, pod: &mut Pod) -> u64 {
        self.emit_change(state, kind, pod, None)
    }

    /// [`Cluster::emit`] for a change of the Pod's labels from `previous_labels`.
    fn emit_change(
        &self,
        state: &mut State,
        kind: &'static str,
        pod: &mut Pod,
        previous_labels: Option<Option<BTreeMap<String, String>>>,
    ) -> u64 {
        state.resource_version += 1;
        let rv = state.resource_version;
        pod.metadata.resource_version = Some(rv.to_string());
        let event = Arc::new(Event {
            kind,
            resource_version: rv,
            pod: pod.clone(),
            previous_labels,
        });
        state.history.push_back(event.clone());
        while state.history.len() > self.history_limit {
            if let Some(dropped) = state.history.pop_front() {
                state.oldest = dropped.resource_version;
            }
        }
        let _ = self.events.send(event);
        rv
    }

    /// Takes one matching fault, if any is pending.
    pub fn fault(&self, verb: Verb) -> Option<Fault> {
        let mut state = self.state.lock().unwrap();
        let i = state
            .faults
            .iter()
            .position(|f| f.count > 0 && f.verb.is_none_or(|v| v == verb))?;
        let fault = &mut state.faults[i];
        fault.count -= 1;
        let taken = fault.clone();
        state.faults.retain(|f| f.count > 0);
        Some(taken)
    }

    pub fn add_fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    pub fn behaviour(&self) -> Behaviour {
        self.state.lock().unwrap().behaviour.clone()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().behaviour = behaviour;
    }

    pub fn resource_version(&self) -> u64 {
        self.state.lock().unwrap().resource_version
    }

    /// Stores a new, validated Pod and hands it to the kubelet; `None` if the name is taken.
    pub fn create(self: &Arc<Self>, namespace: &str, mut pod: Pod) -> Option<Pod> {
        let mut state = self.state.lock().unwrap();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = (namespace.to_owned(), name.clone());
        if state.pods.contains_key(&key) {
            return None;
        }
        state.next_ip += 1;
        let n = state.next_ip;
        let meta = &mut pod.metadata;
        meta.namespace = Some(namespace.to_owned());
        meta.uid = Some(format!("{:032x}", (now_ms() as u128) << 32 | u128::from(n)));
        meta.creation_timestamp = Some(now());
        meta.generation = Some(1);
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.restart_policy.get_or_insert_with(|| "Always".into());
        spec.termination_grace_period_seconds.get_or_insert(30);
        spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
        spec.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
        for c in &mut spec.containers {
            c.termination_message_path
                .get_or_insert_with(|| "/dev/termination-log".into());
            c.image_pull_policy.get_or_insert_with(|| {
                if c.image
                    .as_deref()
                    .is_some_and(|i| i.ends_with(":latest") || !i.contains(':'))
                {
                    "Always".into()
                } else {
                    "IfNotPresent".into()
                }
            });
        }
        pod.status = Some(PodStatus {
            phase: Some("Pending".into()),
            qos_class: Some("Burstable".into()),
            ..PodStatus::default()
        });
        let never_ready = state.behaviour.never_ready > 0;
        if never_ready {
            state.behaviour.never_ready -= 1;
        }
        let start_delay = Duration::from_millis(state.behaviour.start_delay_ms);
        self.emit(&mut state, "ADDED", &mut pod);
        state.records.insert(
            key.clone(),
            PodRecord {
                namespace: namespace.to_owned(),
                name,
                session: pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("matchplane.io/session").cloned()),
                created_ms: now_ms(),
                ..PodRecord::default()
            },
        );
        state.pods.insert(key.clone(), pod.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        state.kubelets.insert(key.clone(), tx);
        drop(state);
        tokio::spawn(kubelet::run(
            self.clone(),
            key,
            kubelet::Start {
                delay: start_delay,
                never_ready,
            },
            rx,
        ));
        Some(pod)
    }

    /// A Pod IP: the next free loopback address (one no process listens on at `port`). Each
    /// kube-sim starts at a random point of 127.16.0.0–127.254.255.255, so several on one
    /// machine (parallel tests) do not hand out the same addresses.
    pub fn pod_ip(&self, port: u16) -> Ipv4Addr {
        let mut state = self.state.lock().unwrap();
        loop {
            state.next_ip = state.next_ip.wrapping_add(1);
            let n = state.next_ip % (239 * 65_536);
            let ip = Ipv4Addr::new(127, 16 + (n >> 16) as u8, (n >> 8) as u8, n as u8);
            if n as u8 == 0 || n as u8 == 255 {
                continue;
            }
            if std::net::TcpListener::bind((ip, port)).is_ok() {
                return ip;
            }
        }
    }

    pub fn get(&self, key: &Key) -> Option<Pod> {
        self.state.lock().unwrap().pods.get(key).cloned()
    }

    /// Changes a Pod (its status, as the kubelet reports); false if it is gone.
    pub fn update(&self, key: &Key, change: impl FnOnce(&mut Pod, &mut PodRecord)) -> bool {
        let mut state = self.state.lock().unwrap();
        let State { pods, records, .. } = &mut *state;
        let (Some(pod), Some(record)) = (pods.get_mut(key), records.get_mut(key)) else {
            return false;
        };
        change(pod, record);
        let status = pod.status.clone().unwrap_or_default();
        record.phase = status.phase.clone();
        record.reason = status.reason.clone();
        let mut pod = pod.clone();
        self.emit(&mut state, "MODIFIED", &mut pod);
        state.pods.insert(key.clone(), pod);
        true
    }

    /// Removes a Pod for good (the end of a deletion).
    pub fn remove(&self, key: &Key) -> Option<Pod> {
        let mut state = self.state.lock().unwrap();
        let mut pod = state.pods.remove(key)?;
        state.kubelets.remove(key);
        if let Some(record) = state.records.get_mut(key) {
            record.deleted_ms = Some(now_ms());
        }
        self.emit(&mut state, "DELETED", &mut pod);
        Some(pod)
    }

    /// A delete request: with a grace period the Pod is marked and its container stopped (the
    /// kubelet removes it when the container is gone); without one, or when nothing runs, it
    /// goes at once. `None` if there is no such Pod.
    pub fn delete(&self, key: &Key, grace: Option<i64>) -> Option<Pod> {
        self.delete_if(key, grace, None).ok().flatten()
    }

    /// [`Cluster::delete`] under a precondition: with `version`, only the Pod at that resource
    /// version is deleted (`Conflict` otherwise), as `DeleteOptions.preconditions` asks.
    pub fn delete_if(&self, key: &Key, grace: Option<i64>, version: Option<&str>) -> Result<Option<Pod>, PatchError> {
        let mut state = self.state.lock().unwrap();
        let Some(pod) = state.pods.get(key).cloned() else {
            return Ok(None);
        };
        if let Some(version) = version
            && pod.metadata.resource_version.as_deref() != Some(version)
        {
            return Err(PatchError::Conflict(format!(
                "Operation cannot be fulfilled on pods {:?}: the ResourceVersion in the precondition ({version}) does not match the ResourceVersion in record ({}). The object might have been modified",
                key.1,
                pod.metadata.resource_version.as_deref().unwrap_or_default()
            )));
        }
        let grace = grace
            .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0);
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let kubelet = state.kubelets.get(key).filter(|k| !k.is_closed()).cloned();
        if grace == 0 || finished || kubelet.is_none() {
            drop(state);
            if let Some(kubelet) = kubelet {
                let _ = kubelet.send(Command::Kill);
            }
            return Ok(self.remove(key));
        }
        if let Some(current) = pod.metadata.deletion_grace_period_seconds
            && current <= grace
        {
            return Ok(Some(pod));
        }
        let mut pod = pod;
        pod.metadata.deletion_timestamp = Some(timestamp(now_ms().saturating_add(grace.saturating_mul(1000))));
        pod.metadata.deletion_grace_period_seconds = Some(grace);
        self.emit(&mut state, "MODIFIED", &mut pod);
        state.pods.insert(key.clone(), pod.clone());
        drop(state);
        if let Some(kubelet) = kubelet {
            let _ = kubelet.send(Command::Stop(Duration::from_secs(grace as u64)));
        }
        Ok(Some(pod))
    }

    /// A merge patch of a Pod (RFC 7386) as the API server applies one to a running Pod: only
    /// labels, annotations and a lower `spec.activeDeadlineSeconds` may change (status is the
    /// kubelet's). A `metadata.resourceVersion` in the patch is a precondition: the patch
    /// applies only to that version, else `Conflict` (optimistic concurrency, as kube-rs and
    /// kubectl use it).
    pub fn patch(&self, key: &Key, patch: &serde_json::Value) -> Result<Pod, PatchError> {
        self.patch_or_try(key, patch, false)
    }

    /// [`Cluster::patch`], or with `dry_run` everything it checks and the Pod it would make,
    /// with nothing stored or sent to watches (`?dryRun=All`).
    pub fn patch_or_try(&self, key: &Key, patch: &serde_json::Value, dry_run: bool) -> Result<Pod, PatchError> {
        let mut state = self.state.lock().unwrap();
        let current = state.pods.get(key).ok_or(PatchError::NotFound)?.clone();
        let version = current.metadata.resource_version.clone().unwrap_or_default();
        if let Some(wanted) = patch.pointer("/metadata/resourceVersion")
            && wanted.as_str() != Some(version.as_str())
        {
            return Err(PatchError::Conflict(format!(
                "Operation cannot be fulfilled on pods {:?}: the object has been modified; please apply your changes to the latest version and try again",
                key.1
            )));
        }
        let before = serde_json::to_value(&current).map_err(|e| PatchError::Invalid(e.to_string()))?;
        let mut merged = before.clone();
        merge_patch(&mut merged, patch);
        let parsed: Pod = serde_json::from_value(merged.clone())
            .map_err(|e| PatchError::Invalid(format!("the patched Pod does not parse: {e}")))?;
        // Only the mutable parts are taken from the patch (status is the kubelet's)...
        let mut patched = current.clone();
        patched.metadata.labels = parsed.metadata.labels.filter(|l| !l.is_empty());
        patched.metadata.annotations = parsed.metadata.annotations.filter(|a| !a.is_empty());
        let old_deadline = current.spec.as_ref().and_then(|s| s.active_deadline_seconds);
        let new_deadline = parsed.spec.as_ref().and_then(|s| s.active_deadline_seconds);
        if let Some(spec) = patched.spec.as_mut() {
            spec.active_deadline_seconds = new_deadline;
        }
        // ...and everything else must be as it was.
        let strip = |mut pod: serde_json::Value| {
            for pointer in ["/metadata", "/status"] {
                if let Some(v) = pod.pointer_mut(pointer) {
                    *v = serde_json::Value::Null;
                }
            }
            if let Some(serde_json::Value::Object(spec)) = pod.pointer_mut("/spec") {
                spec.remove("activeDeadlineSeconds");
            }
            pod
        };
        let meta_rest = |pod: &serde_json::Value| {
            let mut meta = pod.get("metadata").cloned().unwrap_or_default();
            if let serde_json::Value::Object(m) = &mut meta {
                for mutable in ["labels", "annotations", "resourceVersion"] {
                    m.remove(mutable);
                }
            }
            meta
        };
        if strip(merged.clone()) != strip(before.clone()) || meta_rest(&merged) != meta_rest(&before) {
            return Err(PatchError::Invalid(
                "spec: Forbidden: kube-sim's pod updates may change only metadata labels and annotations and lower `spec.activeDeadlineSeconds` (a real API server also takes `spec.containers[*].image` and added `spec.tolerations`)".into(),
            ));
        }
        if new_deadline != old_deadline {
            match (old_deadline, new_deadline) {
                (_, Some(new)) if new <= 0 => {
                    return Err(PatchError::Invalid(
                        "spec.activeDeadlineSeconds: Invalid value: must be greater than 0".into(),
                    ));
                }
                (Some(old), Some(new)) if new > old => {
                    return Err(PatchError::Invalid(format!(
                        "spec.activeDeadlineSeconds: Invalid value: {new}: must be less than or equal to previous value ({old})"
                    )));
                }
                (Some(_), None) => {
                    return Err(PatchError::Invalid(
                        "spec.activeDeadlineSeconds: Invalid value: cannot be removed once set".into(),
                    ));
                }
                _ => {}
            }
        }
        let namespace = key.0.clone();
        let causes: Vec<String> = crate::validate::pod(&patched, &namespace)
            .into_iter()
            .filter(|c| c.field.starts_with("metadata.labels"))
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        if !causes.is_empty() {
            return Err(PatchError::Invalid(causes.join(", ")));
        }
        if dry_run {
            return Ok(patched);
        }
        if patched == current {
            return Ok(current);
        }
        if let Some(record) = state.records.get_mut(key) {
            record.session = patched
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("matchplane.io/session").cloned());
        }
        let previous = (current.metadata.labels != patched.metadata.labels).then(|| current.metadata.labels.clone());
        self.emit_change(&mut state, "MODIFIED", &mut patched, previous);
        state.pods.insert(key.clone(), patched.clone());
        if new_deadline != old_deadline
            && let (Some(seconds), Some(kubelet)) = (new_deadline, state.kubelets.get(key))
        {
            let _ = kubelet.send(Command::Deadline(Duration::from_secs(seconds as u64)));
        }
        Ok(patched)
    }

    /// Sends the kubelet of a Pod a command (evict, kill, unready); false if no such Pod.
    pub fn tell_kubelet(&self, key: &Key, command: Command) -> bool {
        match self.state.lock().unwrap().kubelets.get(key) {
            Some(kubelet) => kubelet.send(command).is_ok(),
            None => false,
        }
    }

    /// Every Pod matching, in name order, from `after` on, at most `limit`; with the
    /// resource version of the snapshot and the key to continue from.
    pub fn list(
        &self,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        after: Option<&Key>,
        limit: Option<usize>,
    ) -> (Vec<Pod>, u64, Option<Key>) {
        let state = self.state.lock().unwrap();
        let mut items = Vec::new();
        let mut next = None;
        for (key, pod) in &state.pods {
            if after.is_some_and(|after| key <= after)
                || namespace.is_some_and(|ns| ns != key.0)
                || !labels.matches(pod.metadata.labels.as_ref())
                || !fields.matches(pod)
            {
                continue;
            }
            if limit.is_some_and(|limit| items.len() >= limit) {
                next = Some(key.clone());
                break;
            }
            items.push(pod.clone());
        }
        // The continue key is the last item returned: the next page starts after it.
        let cont = next.and_then(|_| {
            items.last().map(|p: &Pod| {
                (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                )
            })
        });
        (items, state.resource_version, cont)
    }

    /// Starts a watch: the events to send first, then a live feed (subscribed under the same
    /// lock, so nothing falls between).
    pub fn watch(&self, from: From) -> Result<Subscription, TooOld> {
        let state = self.state.lock().unwrap();
        let first = match from {
            From::Now => state
                .pods
                .values()
                .map(|pod| {
                    Arc::new(Event {
                        kind: "ADDED",
                        resource_version: pod
                            .metadata
                            .resource_version
                            .as_deref()
                            .and_then(|rv| rv.parse().ok())
                            .unwrap_or(0),
                        pod: pod.clone(),
                        previous_labels: None,
                    })
                })
                .collect(),
            From::After(rv) if rv < state.oldest => {
                return Err(TooOld {
                    asked: rv,
                    oldest: state.oldest,
                });
            }
            From::After(rv) => state
                .history
                .iter()
                .filter(|e| e.resource_version > rv)
                .cloned()
                .collect(),
        };
        Ok(Subscription {
            first,
            live: self.events.subscribe(),
            cuts: self.cuts.subscribe(),
        })
    }

    /// Cuts every open watch (clients see their connection fail and resume).
    pub fn cut_watches(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Forgets the event history: a watch resuming from before now gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.history.clear();
        state.oldest = state.resource_version;
    }

    pub fn records(&self) -> Vec<PodRecord> {
        self.state.lock().unwrap().records.values().cloned().collect()
    }

    pub fn record(&self, key: &Key, change: impl FnOnce(&mut PodRecord)) {
        if let Some(record) = self.state.lock().unwrap().records.get_mut(key) {
            change(record);
        }
    }

    /// Stops every container (at shutdown).
    pub fn stop_all(&self) {
        for kubelet in self.state.lock().unwrap().kubelets.values() {
            let _ = kubelet.send(Command::Kill);
        }
    }
}

/// The kubelet's view of the cluster.
impl PodStorage for Cluster {
    fn config(&self) -> &NodeConfig {
        &self.node
    }

    fn pod(&self, key: &Key) -> Option<Pod> {
        self.get(key)
    }

    fn update_pod(&self, key: &Key, change: &mut dyn FnMut(&mut Pod, &mut PodRecord)) -> bool {
        self.update(key, change)
    }

    fn remove_pod(&self, key: &Key) {
        self.remove(key);
    }

    fn record_pod(&self, key: &Key, change: &mut dyn FnMut(&mut PodRecord)) {
        self.record(key, change);
    }

    fn pod_ip(&self, port: u16) -> Ipv4Addr {
        Cluster::pod_ip(self, port)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cluster() -> Arc<Cluster> {
        let node = NodeConfig {
            game_server_bin: "/nonexistent/game-server".into(),
            images: HashMap::new(),
            namespaces: NodeConfig::namespaces_with("default", None),
            secrets: HashMap::new(),
            log_dir: None,
            strict_by_default: true,
            rbac: None,
            network: None,
        };
        // Containers never start within a test: the Pod stays Pending.
        let behaviour = Behaviour {
            start_delay_ms: 3_600_000,
            never_ready: 0,
            bookmark_interval_ms: 1000,
            max_watch_seconds: 30,
        };
        Cluster::new(node, behaviour, 100)
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "warm-1", "labels": {"app": "game", "matchplane.io/warm": "true"}},
            "spec": {"activeDeadlineSeconds": 600, "containers": [{"name": "c", "image": "i:1"}]}
        }))
        .unwrap()
    }

    #[test]
    fn merge_patches_follow_rfc_7386() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "d": [1, 2]});
        merge_patch(&mut target, &json!({"a": {"b": null, "e": 3}, "d": [3]}));
        assert_eq!(target, json!({"a": {"c": 2, "e": 3}, "d": [3]}));
    }

    #[tokio::test]
    async fn a_patch_under_a_stale_resource_version_conflicts_and_changes_nothing() {
        let cluster = cluster();
        let key = ("games".to_owned(), "warm-1".to_owned());
        let created = cluster.create("games", pod()).unwrap();
        let version = created.metadata.resource_version.clone().unwrap();
        let claim = |session: &str| {
            json!({"metadata": {"resourceVersion": version, "labels": {"matchplane.io/session": session}},
                   "spec": {"activeDeadlineSeconds": 300}})
        };
        let patched = cluster.patch(&key, &claim("s1")).unwrap();
        let labels = patched.metadata.labels.clone().unwrap();
        assert_eq!(labels["matchplane.io/session"], "s1");
        assert_eq!(labels["app"], "game", "a merge patch keeps the other labels");
        assert_eq!(patched.spec.as_ref().unwrap().active_deadline_seconds, Some(300));
        assert_ne!(patched.metadata.resource_version.as_deref(), Some(version.as_str()));
        // A second claim read the same version: it loses, and the Pod keeps the first claim.
        assert!(matches!(
            cluster.patch(&key, &claim("s2")),
            Err(PatchError::Conflict(_))
        ));
        let now = cluster.get(&key).unwrap();
        assert_eq!(now.metadata.labels.unwrap()["matchplane.io/session"], "s1");
        assert_eq!(cluster.records()[0].session.as_deref(), Some("s1"));
        // A delete under the version read before the claim conflicts too: a claimed Pod is
        // never deleted as an idle one.
        assert!(matches!(
            cluster.delete_if(&key, Some(0), Some(&version)),
            Err(PatchError::Conflict(_))
        ));
        assert!(cluster.get(&key).is_some());
        let current = now.metadata.resource_version.clone().unwrap();
        assert!(cluster.delete_if(&key, Some(0), Some(&current)).unwrap().is_some());
        assert!(cluster.get(&key).is_none());
    }

    #[tokio::test]
    async fn only_labels_annotations_and_a_lower_deadline_may_change() {
        let cluster = cluster();
        let key = ("games".to_owned(), "warm-1".to_owned());
        cluster.create("games", pod()).unwrap();
        for refused in [
            json!({"spec": {"activeDeadlineSeconds": 601}}),
            json!({"spec": {"activeDeadlineSeconds": null}}),
            json!({"spec": {"activeDeadlineSeconds": 0}}),
            json!({"spec": {"restartPolicy": "Never"}}),
            json!({"spec": {"containers": [{"name": "c", "image": "other:2"}]}}),
            json!({"metadata": {"labels": {"bad key!": "x"}}}),
        ] {
            assert!(
                matches!(cluster.patch(&key, &refused), Err(PatchError::Invalid(_))),
                "{refused}"
            );
        }
        let before = cluster.get(&key).unwrap();
        let same = cluster
            .patch(&key, &json!({"metadata": {"labels": {"app": "game"}}}))
            .unwrap();
        assert_eq!(
            same.metadata.resource_version, before.metadata.resource_version,
            "a no-op keeps the version"
        );
        let missing = ("games".to_owned(), "nope".to_owned());
        assert_eq!(cluster.patch(&missing, &json!({})), Err(PatchError::NotFound));
    }
}
