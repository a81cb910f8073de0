//! The kubelet: runs each Pod's one container as the real `game-server` process with the
//! Pod's environment on the Pod's own loopback address, probes it, enforces
//! `activeDeadlineSeconds` and graceful deletion, and reports phase, conditions and container
//! state back to the API server.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    Pod, PodCondition, PodIP, Probe,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};

use crate::node::{Key, PodStorage, now, now_ms};

/// What the API server or an operator asks of a Pod's kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Graceful deletion: SIGTERM, then SIGKILL after the grace; then the Pod is removed.
    Stop(Duration),
    /// Kill the container now (SIGKILL); with `restartPolicy: Never` the Pod fails.
    Kill,
    /// Node-pressure eviction: the container is killed and the Pod fails with `Evicted`.
    Evict,
    /// The readiness probe fails from now on (a wedged server, a lost node).
    Unready,
    /// `spec.activeDeadlineSeconds` was lowered to this (counted from scheduling, as before).
    Deadline(Duration),
}

/// How this Pod starts.
pub struct Start {
    pub delay: Duration,
    pub never_ready: bool,
}

const NODE: &str = "kube-sim";
const DEADLINE_EXCEEDED: &str = "Pod was active on the node longer than the specified deadline";
const EVICTED: &str = "The node was low on resource: memory.";

fn condition(type_: &str, status: bool) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        last_transition_time: Some(now()),
        ..PodCondition::default()
    }
}

fn set_condition(pod: &mut Pod, type_: &str, value: bool) {
    let status = pod.status.get_or_insert_with(Default::default);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let wanted = if value { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == wanted => {}
        Some(c) => *c = condition(type_, value),
        None => conditions.push(condition(type_, value)),
    }
}

fn container_of(pod: &Pod) -> Option<Container> {
    pod.spec.as_ref()?.containers.first().cloned()
}

fn container_status(container: &Container, ready: bool, state: ContainerState) -> ContainerStatus {
    ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        image_id: format!("kube-sim://{}", container.image.clone().unwrap_or_default()),
        ready,
        started: Some(state.running.is_some()),
        restart_count: 0,
        state: Some(state),
        ..ContainerStatus::default()
    }
}

/// The container's environment: values, field references and Secret keys; `Err` names what is
/// missing (the container then waits with `CreateContainerConfigError`, as a real kubelet's).
fn environment(
    cluster: &dyn PodStorage,
    pod: &Pod,
    container: &Container,
    ip: Ipv4Addr,
) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => var.value.clone().unwrap_or_default(),
            Some(from) => {
                if let Some(field) = &from.field_ref {
                    match field.field_path.as_str() {
                        "status.podIP" | "status.podIPs" => ip.to_string(),
                        "status.hostIP" | "status.hostIPs" => "127.0.0.1".into(),
                        "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                        "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
                        "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                        "spec.nodeName" => NODE.into(),
                        other => return Err(format!("field {other} is not supported by kube-sim")),
                    }
                } else if let Some(secret) = &from.secret_key_ref {
                    match cluster.config().secrets.get(&(secret.name.clone(), secret.key.clone())) {
                        Some(value) => value.clone(),
                        None if secret.optional == Some(true) => continue,
                        None => return Err(format!("secret {:?} (key {:?}) not found", secret.name, secret.key)),
                    }
                } else {
                    return Err(format!(
                        "env {}: only fieldRef and secretKeyRef are supported",
                        var.name
                    ));
                }
            }
        };
        // A value may refer to the variables defined before it.
        let value = if var.value_from.is_none() {
            expand(&value, &env)
        } else {
            value
        };
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

/// `text` with each `$(VAR)` replaced by `VAR`'s value in `env`, as the kubelet expands a
/// container's `args` and env values: `$$` is a literal `$`, and a reference to a variable not
/// defined is left as written.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, value)) = env.iter().rev().find(|(k, _)| k == &inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn probe_port(probe: &Probe, container: &Container) -> Option<u16> {
    let tcp = probe.tcp_socket.as_ref()?;
    match &tcp.port {
        IntOrString::Int(port) => u16::try_from(*port).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// One probe's running tally.
struct Prober {
    probe: Probe,
    port: Option<u16>,
    successes: i32,
    failures: i32,
    next: Instant,
}

impl Prober {
    fn new(probe: &Probe, container: &Container, started: Instant) -> Prober {
        Prober {
            port: probe_port(probe, container),
            next: started + Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            probe: probe.clone(),
            successes: 0,
            failures: 0,
        }
    }

    /// Probes once; `Some(healthy)` when the result crosses a threshold.
    async fn run(&mut self, ip: Ipv4Addr, forced_failure: bool) -> Option<bool> {
        self.next += Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64);
        let ok = !forced_failure
            && match self.port {
                // Only TCP probes are run; others count as passing.
                None => true,
                Some(port) => {
                    let wait = Duration::from_secs(self.probe.timeout_seconds.unwrap_or(1).max(1) as u64);
                    matches!(
                        timeout(wait, TcpStream::connect(SocketAddr::new(IpAddr::V4(ip), port))).await,
                        Ok(Ok(_))
                    )
                }
            };
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes == self.probe.success_threshold.unwrap_or(1).max(1)).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures == self.probe.failure_threshold.unwrap_or(3).max(1)).then_some(false)
        }
    }
}

fn signal(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Runs one Pod from scheduling to removal.
pub async fn run(storage: Arc<dyn PodStorage>, key: Key, start: Start, mut commands: mpsc::UnboundedReceiver<Command>) {
    let cluster: &dyn PodStorage = storage.as_ref();
    let Some(pod) = cluster.pod(&key) else { return };
    let Some(container) = container_of(&pod) else { return };
    let port = container
        .ports
        .iter()
        .flatten()
        .next()
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(7777);
    // Where NetworkPolicy is enforced, a Pod whose ports are all TCP gets a relay on its Pod IP
    // (`ip`) and its container listens on an address of its own (`inner`), which its
    // `status.podIP` reads and the kubelet's probes reach directly.
    let declared = crate::relay::declared_ports(&pod);
    let network = cluster.config().network.clone();
    let relayed = network.as_ref().filter(|_| !declared.is_empty()).and_then(|network| {
        if let Some(udp) = crate::network::non_tcp(&declared) {
            tracing::info!(pod = %key.1, port = udp.container_port, "a Pod with a UDP port is not filtered by NetworkPolicy here");
            return None;
        }
        let ports: Vec<u16> = declared.iter().filter_map(|p| u16::try_from(p.container_port).ok()).collect();
        match crate::relay::bind(cluster, &ports) {
            Ok(bound) => Some((network.clone(), bound)),
            Err(e) => {
                tracing::warn!(pod = %key.1, error = %e, "no Pod IP for the NetworkPolicy relay; the Pod is not filtered");
                None
            }
        }
    });
    let (ip, inner, _relay) = match relayed {
        Some((network, (outer, listeners))) => {
            let inner = cluster.pod_ip(port);
            match crate::relay::start(network, storage.clone(), key.clone(), inner, listeners) {
                Ok(guard) => (outer, inner, Some(guard)),
                Err(e) => {
                    tracing::warn!(pod = %key.1, error = %e, "starting the NetworkPolicy relay; the Pod is not filtered");
                    (inner, inner, None)
                }
            }
        }
        None => {
            let ip = cluster.pod_ip(port);
            (ip, ip, None)
        }
    };
    let spec = pod.spec.clone().unwrap_or_default();
    // Scheduled at once onto the one node; the clock of activeDeadlineSeconds starts now.
    let scheduled = Instant::now();
    cluster.update_pod(&key, &mut |pod, _| {
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(NODE.into());
        }
        let status = pod.status.get_or_insert_with(Default::default);
        status.host_ip = Some("127.0.0.1".into());
        status.start_time = Some(now());
        set_condition(pod, "PodScheduled", true);
        set_condition(pod, "Initialized", true);
        set_condition(pod, "ContainersReady", false);
        set_condition(pod, "Ready", false);
        let waiting = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                ..ContainerStateWaiting::default()
            }),
            ..ContainerState::default()
        };
        pod.status.get_or_insert_with(Default::default).container_statuses =
            Some(vec![container_status(&container, false, waiting)]);
    });
    let deadline = spec
        .active_deadline_seconds
        .map(|s| scheduled + Duration::from_secs(s.max(0) as u64));
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let mut deadline_at = deadline.unwrap_or(far);

    // Image pull and container creation; a delete or eviction meanwhile ends it here.
    let mut create_at = Instant::now() + start.delay;
    let env = loop {
        tokio::select! {
            () = sleep_until(create_at) => match environment(cluster, &pod, &container, inner) {
                Ok(env) => break env,
                Err(why) => {
                    cluster.update_pod(&key, &mut |pod, _| {
                        let waiting = ContainerState {
                            waiting: Some(ContainerStateWaiting {
                                reason: Some("CreateContainerConfigError".into()),
                                message: Some(why.clone()),
                            }),
                            ..ContainerState::default()
                        };
                        pod.status.get_or_insert_with(Default::default).container_statuses =
                            Some(vec![container_status(&container, false, waiting)]);
                    });
                    // As a real kubelet: the Pod waits, until deleted or its deadline.
                    create_at = far;
                }
            },
            () = sleep_until(deadline_at) => {
                fail(cluster, &key, &container, "DeadlineExceeded", DEADLINE_EXCEEDED, None);
                return;
            }
            command = commands.recv() => match command {
                Some(Command::Evict) => {
                    fail(cluster, &key, &container, "Evicted", EVICTED, None);
                    return;
                }
                Some(Command::Stop(_) | Command::Kill) | None => {
                    cluster.remove_pod(&key);
                    return;
                }
                Some(Command::Unready) => {}
                Some(Command::Deadline(after)) => deadline_at = deadline_at.min(scheduled + after),
            },
        }
    };

    // The container's stdout and stderr, both into one file when a log directory is set.
    let log = cluster
        .config()
        .log_dir
        .as_ref()
        .and_then(|dir| std::fs::File::create(dir.join(format!("{}_{}.log", key.0, key.1))).ok());
    let (log, log_err) = match log.and_then(|out| Some((out.try_clone().ok()?, out))) {
        Some((out, err)) => (Stdio::from(out), Stdio::from(err)),
        None => (Stdio::null(), Stdio::null()),
    };
    // A known image runs its entrypoint with the container's arguments; any other runs the
    // game server.
    let image = container.image.clone().unwrap_or_default();
    let program = cluster
        .config()
        .images
        .get(&image)
        .unwrap_or(&cluster.config().game_server_bin)
        .clone();
    let args: Vec<String> = container.args.iter().flatten().map(|a| expand(a, &env)).collect();
    let env: HashMap<String, String> = env.into_iter().collect();
    let child = tokio::process::Command::new(&program)
        .args(&args)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            let why = format!("starting {}: {e}", program.display());
            fail(cluster, &key, &container, "StartError", &why, Some(128));
            return;
        }
    };
    let pid = child.id();
    let group = pid.and_then(|p| i32::try_from(p).ok());
    if let (Some(network), Some(group)) = (&network, group) {
        network.started(group, key.clone());
    }
    let started = Instant::now();
    cluster.record_pod(&key, &mut |r| r.started_ms = Some(now_ms()));
    cluster.update_pod(&key, &mut |pod, _| {
        let status = pod.status.get_or_insert_with(Default::default);
        status.phase = Some("Running".into());
        status.pod_ip = Some(ip.to_string());
        status.pod_ips = Some(vec![PodIP { ip: ip.to_string() }]);
        let running = ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(now()),
            }),
            ..ContainerState::default()
        };
        status.container_statuses = Some(vec![container_status(&container, false, running)]);
    });

    let mut readiness = container
        .readiness_probe
        .as_ref()
        .map(|p| Prober::new(p, &container, started));
    let mut liveness = container
        .liveness_probe
        .as_ref()
        .map(|p| Prober::new(p, &container, started));
    let mut ready = false;
    let mut forced_unready = start.never_ready;
    if readiness.is_none() && !forced_unready {
        ready = true;
        set_ready(cluster, &key, true);
    }
    let mut stopping: Option<Instant> = None;
    let mut ending: Option<(&'static str, String)> = None;
    let status = loop {
        let next_probe = [readiness.as_ref(), liveness.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| p.next)
            .min()
            .unwrap_or(far);
        let kill_at = stopping.unwrap_or(far);
        tokio::select! {
            status = child.wait() => break status.ok(),
            () = sleep_until(next_probe) => {
                if let Some(probe) = readiness.as_mut().filter(|p| p.next <= Instant::now())
                    && let Some(healthy) = probe.run(inner, forced_unready).await
                    && healthy != ready
                {
                    ready = healthy;
                    if cluster.pod(&key).is_some_and(|p| p.metadata.deletion_timestamp.is_none()) || !healthy {
                        set_ready(cluster, &key, healthy);
                    }
                }
                if let Some(probe) = liveness.as_mut().filter(|p| p.next <= Instant::now())
                    && probe.run(inner, false).await == Some(false)
                {
                    tracing::info!(pod = %key.1, "liveness probe failed; killing the container");
                    signal(pid, Signal::SIGKILL);
                }
            }
            () = sleep_until(deadline_at), if ending.is_none() => {
                ending = Some(("DeadlineExceeded", DEADLINE_EXCEEDED.into()));
                signal(pid, Signal::SIGKILL);
            }
            () = sleep_until(kill_at) => {
                signal(pid, Signal::SIGKILL);
                stopping = Some(far);
            }
            command = commands.recv() => match command {
                Some(Command::Stop(grace)) => {
                    if stopping.is_none() {
                        signal(pid, Signal::SIGTERM);
                        ready = false;
                        set_ready(cluster, &key, false);
                    }
                    let at = Instant::now() + grace;
                    stopping = Some(stopping.map_or(at, |s| s.min(at)));
                }
                Some(Command::Kill) | None => signal(pid, Signal::SIGKILL),
                Some(Command::Evict) => {
                    ending = Some(("Evicted", EVICTED.into()));
                    signal(pid, Signal::SIGKILL);
                }
                Some(Command::Unready) => forced_unready = true,
                Some(Command::Deadline(after)) => deadline_at = deadline_at.min(scheduled + after),
            },
        }
    };
    let code = status.and_then(|s| {
        use std::os::unix::process::ExitStatusExt;
        s.code().or_else(|| s.signal().map(|sig| 128 + sig))
    });
    // Whatever the container left behind in its group goes too.
    signal(pid, Signal::SIGKILL);
    if let (Some(network), Some(group)) = (&network, group) {
        network.ended(group);
    }
    match ending {
        Some((reason, message)) => fail(cluster, &key, &container, reason, &message, code),
        None => finish(cluster, &key, &container, code),
    }
    // A deletion that raced the container's exit: its command may still be queued (it was sent
    // before the phase above made the API server remove finished Pods by itself).
    commands.close();
    let mut deleting = stopping.is_some();
    while let Ok(command) = commands.try_recv() {
        deleting |= matches!(command, Command::Stop(_) | Command::Kill);
    }
    if deleting
        || cluster
            .pod(&key)
            .is_some_and(|pod| pod.metadata.deletion_timestamp.is_some())
    {
        cluster.remove_pod(&key);
    }
}

fn set_ready(cluster: &dyn PodStorage, key: &Key, ready: bool) {
    cluster.update_pod(key, &mut |pod, record| {
        set_condition(pod, "ContainersReady", ready);
        set_condition(pod, "Ready", ready);
        if let Some(status) = pod
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
            .and_then(|s| s.first_mut())
        {
            status.ready = ready;
        }
        if ready && record.ready_ms.is_none() {
            record.ready_ms = Some(now_ms());
        }
    });
}

fn terminated(container: &Container, code: Option<i32>, reason: &str) -> ContainerStatus {
    let state = ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code.unwrap_or(137),
            reason: Some(reason.into()),
            finished_at: Some(now()),
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    };
    container_status(container, false, state)
}

/// The container exited by itself: `Succeeded` on 0, `Failed` otherwise (`restartPolicy:
/// Never`; kube-sim restarts nothing).
fn finish(cluster: &dyn PodStorage, key: &Key, container: &Container, code: Option<i32>) {
    cluster.update_pod(key, &mut |pod, record| {
        let ok = code == Some(0);
        let status = pod.status.get_or_insert_with(Default::default);
        status.phase = Some(if ok { "Succeeded" } else { "Failed" }.into());
        status.container_statuses = Some(vec![terminated(
            container,
            code,
            if ok { "Completed" } else { "Error" },
        )]);
        set_condition(pod, "ContainersReady", false);
        set_condition(pod, "Ready", false);
        record.finished_ms = Some(now_ms());
    });
}

/// The Pod failed for a reason of the node's (deadline, eviction, a container that cannot
/// start).
fn fail(cluster: &dyn PodStorage, key: &Key, container: &Container, reason: &str, message: &str, code: Option<i32>) {
    cluster.update_pod(key, &mut |pod, record| {
        let status = pod.status.get_or_insert_with(Default::default);
        status.phase = Some("Failed".into());
        status.reason = Some(reason.into());
        status.message = Some(message.into());
        status.container_statuses = Some(vec![terminated(container, code, "Error")]);
        set_condition(pod, "ContainersReady", false);
        set_condition(pod, "Ready", false);
        record.finished_ms = Some(now_ms());
    });
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn variables_expand_as_the_kubelet_expands_them() {
        let env = vec![("A".to_owned(), "1".to_owned()), ("B".to_owned(), "two".to_owned())];
        assert_eq!(expand("-p $(A) $(B)x", &env), "-p 1 twox");
        assert_eq!(expand("$$(A) $(C) $A $", &env), "$(A) $(C) $A $");
    }
}
