//! The `kubernetes` runtime: one bare Pod per session.
//!
//! The Pod runs the game server under the `restricted` Pod Security Standard, with no
//! service-account token, resource limits and `activeDeadlineSeconds` as a hard cap; the ticket
//! secret comes from a Secret. The runtime waits on a watch of that one Pod (never polling)
//! until it is Ready (its IP is the server address), finishes, disappears, or the ready timeout
//! passes (then it deletes the Pod). API calls that fail with 409, 429, 5xx or a transport error
//! are retried with backoff; Pod creations are bounded in parallel.
//!
//! Pods outlive the replica that created them: the [`reaper`] (run by every replica) reports
//! the sessions of Pods that finished without a report to the sessions service and deletes
//! finished Pods, and at start [`reconcile`] deletes Pods without a live session and reports
//! live sessions without a Pod.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSecurityContext,
    PodSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, TCPSocketAction,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use protocol::sessions::SessionState;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, timeout_at};
use tokio_util::sync::CancellationToken;

use super::{ServerExit, ServerHandle, ServerSpec, SessionRuntime, StartError, Task};
use crate::sessions::Sessions;
use crate::store::now_ms;

/// The label every game-server Pod carries, and its value.
const APP_LABEL: &str = "app.kubernetes.io/name";
const APP_VALUE: &str = "matchplane-game-server";
/// The label naming a Pod's session.
const SESSION_LABEL: &str = "matchplane.io/session";
/// The game port inside the Pod.
const GAME_PORT: i32 = 7777;
/// Pod creations in flight at once, per replica.
const PARALLEL_CREATES: usize = 16;
/// How long a finished Pod is kept (for `kubectl logs`) before the reaper deletes it.
const REAP_GRACE: Duration = Duration::from_secs(30);
/// Live sessions younger than this are not failed for lacking a Pod at start: their
/// replica may be creating it.
const RECONCILE_MIN_AGE: Duration = Duration::from_secs(30);

/// Everything about game-server Pods that is not per session.
#[derive(Debug, Clone, PartialEq)]
pub struct PodTemplate {
    pub namespace: String,
    pub image: String,
    pub pull_policy: String,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// The Secret and key holding `TICKET_SECRET`.
    pub secret_name: String,
    pub secret_key: String,
    /// Open timeout + longest match + margin: the kubelet kills the Pod after this.
    pub active_deadline_seconds: i64,
    /// Game-server settings passed on as environment (START_POLICY, ...).
    pub extra_env: Vec<(String, String)>,
}

/// The Pod's name for a session: stable, so a retried create finds its own Pod.
pub fn pod_name(session_id: &str) -> String {
    format!("mp-gs-{}", session_id.to_ascii_lowercase())
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.to_owned())),
        ("memory".to_owned(), Quantity(memory.to_owned())),
    ])
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

/// Exactly the Pod the backend creates for `spec`.
pub fn render_pod(template: &PodTemplate, spec: &ServerSpec) -> Pod {
    let labels = BTreeMap::from([
        (APP_LABEL.to_owned(), APP_VALUE.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "matchplane-backend".to_owned(),
        ),
        (SESSION_LABEL.to_owned(), spec.session_id.clone()),
    ]);
    let mut env_vars = vec![
        // The Pod's own IP, of whichever family the cluster gives it (IPv4 or IPv6).
        EnvVar {
            name: "GAME_BIND".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env("GAME_PORT", &GAME_PORT.to_string()),
        env("SESSION_ID", &spec.session_id),
        env("PLAYERS", &spec.players.join(",")),
        EnvVar {
            name: "TICKET_SECRET".to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: template.secret_name.clone(),
                    key: template.secret_key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env("REPORT_URL", &spec.report_url),
        env("REPORT_TOKEN", &spec.report_token),
        env("LOG_FORMAT", "json"),
    ];
    let fixed: Vec<String> = env_vars.iter().map(|e| e.name.clone()).collect();
    env_vars.extend(
        template
            .extra_env
            .iter()
            .filter(|(k, _)| !fixed.contains(k))
            .map(|(k, v)| env(k, v)),
    );
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&spec.session_id)),
            namespace: Some(template.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            active_deadline_seconds: Some(template.active_deadline_seconds),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(20),
            node_selector: (!template.node_selector.is_empty()).then(|| template.node_selector.clone()),
            tolerations: (!template.tolerations.is_empty()).then(|| template.tolerations.clone()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: "game-server".to_owned(),
                image: Some(template.image.clone()),
                image_pull_policy: Some(template.pull_policy.clone()),
                ports: Some(vec![ContainerPort {
                    name: Some("game".to_owned()),
                    container_port: GAME_PORT,
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                }]),
                env: Some(env_vars),
                readiness_probe: Some(Probe {
                    tcp_socket: Some(TCPSocketAction {
                        port: IntOrString::Int(GAME_PORT),
                        ..TCPSocketAction::default()
                    }),
                    period_seconds: Some(1),
                    failure_threshold: Some(3),
                    ..Probe::default()
                }),
                // A wedged server (not even accepting) is killed; with restartPolicy Never its
                // session then fails and the reaper cleans up.
                liveness_probe: Some(Probe {
                    tcp_socket: Some(TCPSocketAction {
                        port: IntOrString::Int(GAME_PORT),
                        ..TCPSocketAction::default()
                    }),
                    period_seconds: Some(10),
                    failure_threshold: Some(3),
                    ..Probe::default()
                }),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities(&template.cpu_request, &template.memory_request)),
                    limits: Some(quantities(&template.cpu_limit, &template.memory_limit)),
                    ..ResourceRequirements::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    privileged: Some(false),
                    read_only_root_filesystem: Some(true),
                    run_as_non_root: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".to_owned()]),
                        ..Capabilities::default()
                    }),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".to_owned(),
                        ..SeccompProfile::default()
                    }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// The game port at a Pod IP, as `ip:port` (`[ip]:port` for IPv6).
fn game_address(ip: &str) -> Result<String, StartError> {
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| StartError::Exited(format!("the pod reports an IP that does not parse: {ip:?}")))?;
    Ok(std::net::SocketAddr::new(ip, GAME_PORT as u16).to_string())
}

/// Where a Pod stands, for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PodState {
    /// Scheduled or starting.
    Pending,
    /// Ready at this IP.
    Ready(String),
    /// Succeeded or Failed (with the phase and reason).
    Finished(String),
}

/// Reads a Pod's state from its status.
fn pod_state(pod: &Pod) -> PodState {
    let Some(status) = &pod.status else {
        return PodState::Pending;
    };
    if let Some(phase @ ("Succeeded" | "Failed")) = status.phase.as_deref() {
        return PodState::Finished(match &status.reason {
            Some(reason) => format!("{phase} ({reason})"),
            None => phase.to_owned(),
        });
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match (&status.pod_ip, ready) {
        (Some(ip), true) if !ip.is_empty() => PodState::Ready(ip.clone()),
        _ => PodState::Pending,
    }
}

/// Whether an API failure is worth another try: conflicts, throttling, server errors and
/// transport problems.
fn retryable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 409 || status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

fn is_code(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// Creates Pods and waits on them.
pub struct KubernetesRuntime {
    pods: Api<Pod>,
    template: PodTemplate,
    creations: Semaphore,
    /// Pause between retries and re-watches (shorter in tests).
    backoff: Duration,
}

impl KubernetesRuntime {
    pub fn new(client: kube::Client, template: PodTemplate) -> Self {
        KubernetesRuntime {
            pods: Api::namespaced(client, &template.namespace),
            template,
            creations: Semaphore::new(PARALLEL_CREATES),
            backoff: Duration::from_millis(200),
        }
    }

    async fn create(&self, pod: &Pod) -> Result<(), StartError> {
        let _permit = self
            .creations
            .acquire()
            .await
            .map_err(|e| StartError::Spawn(e.to_string()))?;
        let mut delay = self.backoff;
        loop {
            match self.pods.create(&PostParams::default(), pod).await {
                Ok(_) => return Ok(()),
                // The name is the session's: an earlier attempt of ours already created it.
                Err(e) if is_code(&e, 409) => return Ok(()),
                Err(e) if retryable(&e) => {
                    tracing::warn!(error = %e, "creating the pod failed; retrying");
                    sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(StartError::Spawn(format!("creating the pod: {e}"))),
            }
        }
    }

    async fn delete(&self, name: &str, grace: Option<u32>) {
        let params = match grace {
            Some(seconds) => DeleteParams::default().grace_period(seconds),
            None => DeleteParams::default(),
        };
        let _ = delete_pod(&self.pods, name, &params, self.backoff).await;
    }

    async fn spawn(&self, spec: ServerSpec) -> Result<Box<dyn ServerHandle>, StartError> {
        let pod = render_pod(&self.template, &spec);
        let name = pod_name(&spec.session_id);
        let deadline = Instant::now() + spec.ready_timeout;
        let ready = timeout_at(deadline, async {
            self.create(&pod).await?;
            watch_pod(&self.pods, &name, self.backoff, |state| match state {
                Some(PodState::Ready(ip)) => Some(game_address(&ip)),
                Some(PodState::Finished(why)) => Some(Err(StartError::Exited(format!("pod {why}")))),
                None => Some(Err(StartError::Exited("pod deleted".into()))),
                Some(PodState::Pending) => None,
            })
            .await
        })
        .await;
        match ready {
            Ok(Ok(addr)) => Ok(Box::new(PodServer {
                pods: self.pods.clone(),
                addr,
                name,
                backoff: self.backoff,
            })),
            Ok(Err(e)) => {
                self.delete(&name, Some(0)).await;
                Err(e)
            }
            Err(_) => {
                self.delete(&name, Some(0)).await;
                Err(StartError::Timeout(spec.ready_timeout))
            }
        }
    }

    /// The same runtime with another retry pause (tests use a short one).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }
}

impl SessionRuntime for KubernetesRuntime {
    fn start(&self, spec: ServerSpec) -> BoxFuture<'_, Result<Box<dyn ServerHandle>, StartError>> {
        Box::pin(self.spawn(spec))
    }

    fn servers_outlive_backend(&self) -> bool {
        true
    }

    fn recover<'a>(&'a self, sessions: &'a Sessions) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let (deleted, failed) = reconcile(&self.pods, sessions, RECONCILE_MIN_AGE).await?;
            if deleted + failed > 0 {
                tracing::warn!(deleted, failed, "reconciled pods against sessions");
            }
            Ok(())
        })
    }

    fn tasks(&self, sessions: Sessions, stop: CancellationToken) -> Vec<Task> {
        vec![(
            "pod reaper",
            Box::pin(reaper(self.pods.clone(), sessions, REAP_GRACE, stop)),
        )]
    }
}

/// Deletes a Pod, retrying what is worth retrying; true when this call deleted it (a Pod
/// already gone, or one that could not be deleted, is false).
async fn delete_pod(pods: &Api<Pod>, name: &str, params: &DeleteParams, backoff: Duration) -> bool {
    for _ in 0..5 {
        match pods.delete(name, params).await {
            Ok(_) => return true,
            Err(e) if is_code(&e, 404) => return false,
            Err(e) if retryable(&e) => sleep(backoff).await,
            Err(e) => {
                tracing::warn!(pod = name, error = %e, "deleting the pod failed");
                return false;
            }
        }
    }
    tracing::warn!(pod = name, "deleting the pod kept failing; giving up for now");
    false
}

/// Watches one Pod until `decide` returns a value for its state (`None`: deleted).
/// Watch streams that end or fail are re-established.
async fn watch_pod<T>(
    pods: &Api<Pod>,
    name: &str,
    backoff: Duration,
    mut decide: impl FnMut(Option<PodState>) -> Option<T>,
) -> T {
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(60);
    loop {
        match pods.watch(&params, "0").await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    let decided = match event {
                        Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) => decide(Some(pod_state(&pod))),
                        Ok(WatchEvent::Deleted(_)) => decide(None),
                        Ok(WatchEvent::Bookmark(_)) => None,
                        Ok(WatchEvent::Error(status)) => {
                            tracing::debug!(pod = name, %status, "watch error; watching again");
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(pod = name, error = %e, "watch failed; watching again");
                            break;
                        }
                    };
                    if let Some(value) = decided {
                        return value;
                    }
                }
            }
            Err(e) => tracing::warn!(pod = name, error = %e, "cannot watch the pod; retrying"),
        }
        sleep(backoff).await;
    }
}

struct PodServer {
    pods: Api<Pod>,
    name: String,
    addr: String,
    backoff: Duration,
}

impl ServerHandle for PodServer {
    fn name(&self) -> &str {
        &self.name
    }

    fn addr(&self) -> &str {
        &self.addr
    }

    fn wait(&mut self) -> BoxFuture<'_, ServerExit> {
        Box::pin(watch_pod(&self.pods, &self.name, self.backoff, |state| match state {
            Some(PodState::Finished(why)) if why == "Succeeded" => Some(ServerExit::Exited(Some(0))),
            Some(PodState::Finished(why)) => Some(ServerExit::Lost(why)),
            None => Some(ServerExit::Lost("pod deleted".into())),
            _ => None,
        }))
    }

    fn terminate(&mut self) -> BoxFuture<'_, ()> {
        // A normal delete: the kubelet sends SIGTERM, the server drains and reports.
        Box::pin(async move {
            let _ = delete_pod(&self.pods, &self.name, &DeleteParams::default(), self.backoff).await;
        })
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = delete_pod(
                &self.pods,
                &self.name,
                &DeleteParams::default().grace_period(0),
                self.backoff,
            )
            .await;
        })
    }
}

fn session_of(pod: &Pod) -> Option<String> {
    pod.metadata.labels.as_ref()?.get(SESSION_LABEL).cloned()
}

fn label_selector() -> String {
    format!("{APP_LABEL}={APP_VALUE}")
}

/// At start: deletes game-server Pods whose session is not live, and reports live sessions
/// older than `min_age` that have no Pod as lost. Returns (pods deleted, sessions failed).
pub async fn reconcile(pods: &Api<Pod>, sessions: &Sessions, min_age: Duration) -> anyhow::Result<(usize, usize)> {
    let listed = pods.list(&ListParams::default().labels(&label_selector())).await?;
    let live = sessions.live().await?;
    let live_ids: HashSet<&str> = live.iter().map(|s| s.session_id.as_str()).collect();
    let mut with_pod = HashSet::new();
    let mut deleted = 0;
    for pod in &listed.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        match session_of(pod) {
            Some(sid) if live_ids.contains(sid.as_str()) => {
                with_pod.insert(sid);
            }
            _ => {
                tracing::warn!(pod = %name, "deleting a game-server pod without a live session");
                if delete_pod(pods, &name, &DeleteParams::default(), Duration::from_millis(200)).await {
                    deleted += 1;
                }
            }
        }
    }
    let now = now_ms();
    let min_age_ms = i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX);
    let mut failed = 0;
    for session in live.iter().filter(|s| !with_pod.contains(&s.session_id)) {
        if now - session.record.created_ms < min_age_ms {
            continue;
        }
        sessions.server_lost(&session.session_id, "no pod at start").await?;
        failed += 1;
    }
    Ok((deleted, failed))
}

/// Watches every game-server Pod: a Pod that finished is reported to the sessions service
/// (which ends its session; a no-op after a report) and is deleted after `grace`; a Pod whose
/// session is over or unknown is deleted. Idempotent, so every replica runs it.
pub async fn reaper(pods: Api<Pod>, sessions: Sessions, grace: Duration, stop: CancellationToken) {
    let params = WatchParams::default().labels(&label_selector()).timeout(120);
    let deleting = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let mut backoff = ReaperBackoff::default();
    while !stop.is_cancelled() {
        let stream = match pods.watch(&params, "0").await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "reaper: cannot watch pods; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = sleep(backoff.next()) => continue,
                }
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = stream.next() => event,
            };
            let pod = match event {
                Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => pod,
                Some(Ok(WatchEvent::Error(status))) => {
                    tracing::debug!(%status, "reaper: watch error; watching again");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = sleep(backoff.next()) => break,
                    }
                }
                Some(Ok(_)) => continue,
                // The server ended the watch (its timeout): watch again at once.
                None => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "reaper: watch failed; watching again");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = sleep(backoff.next()) => break,
                    }
                }
            };
            backoff = ReaperBackoff::default();
            let (Some(name), Some(sid)) = (pod.metadata.name.clone(), session_of(&pod)) else {
                continue;
            };
            // Already being deleted (by us, an operator or the kubelet's deadline): its end
            // arrives as a later event, and deleting it again would do nothing.
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let finished = match pod_state(&pod) {
                PodState::Finished(why) => Some(why),
                _ => None,
            };
            if terminating && finished.is_none() {
                continue;
            }
            let session_over = match sessions.record(&sid).await {
                Ok(Some(record)) => record.state == SessionState::Ended,
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "reaper: cannot read the session");
                    sleep(backoff.next()).await;
                    continue;
                }
            };
            if let Some(why) = &finished
                && !session_over
                && let Err(e) = sessions
                    .server_lost(&sid, &format!("pod {name} finished without a report: {why}"))
                    .await
            {
                tracing::warn!(error = %e, "reaper: cannot report the lost server");
                continue;
            }
            let finished = finished.is_some();
            if (finished || session_over) && !terminating && deleting.lock().unwrap().insert(name.clone()) {
                // Running pods of ended sessions are told to drain now; finished ones are kept
                // a little for `kubectl logs`.
                let wait = if finished { grace } else { Duration::ZERO };
                let (pods, deleting) = (pods.clone(), deleting.clone());
                tokio::spawn(async move {
                    sleep(wait).await;
                    let _ = delete_pod(&pods, &name, &DeleteParams::default(), Duration::from_millis(200)).await;
                    deleting.lock().unwrap().remove(&name);
                });
            }
        }
    }
}

/// The reaper's pause after a failure: 200 ms doubling to 10 s, reset by a good event.
struct ReaperBackoff(Duration);

impl Default for ReaperBackoff {
    fn default() -> Self {
        ReaperBackoff(Duration::from_millis(200))
    }
}

impl ReaperBackoff {
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
        wait
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reaper_backs_off_doubling_to_ten_seconds() {
        let mut backoff = super::ReaperBackoff::default();
        let waits: Vec<u128> = (0..8).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
    }

    #[test]
    fn pod_ips_of_both_families_make_dialable_addresses() {
        assert_eq!(super::game_address("10.244.0.7").unwrap(), "10.244.0.7:7777");
        assert_eq!(super::game_address("fd00:10:244::7").unwrap(), "[fd00:10:244::7]:7777");
        assert!(super::game_address("not-an-ip").is_err());
    }
}
