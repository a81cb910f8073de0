//! The game-server Pod: how it is rendered from a session, and how its status reads.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, LocalObjectReference,
    ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, TCPSocketAction, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::runtime::profiles::{PortProtocol, Profile};
use crate::runtime::{ServerSpec, StartError};

/// The label every game-server Pod carries, and its value.
const APP_LABEL: &str = "app.kubernetes.io/name";
const APP_VALUE: &str = "matchplane-game-server";
/// The label naming a Pod's session.
const SESSION_LABEL: &str = "matchplane.io/session";
/// The label of warm Pods (started without a session; a claim adds the session label).
const WARM_LABEL: &str = "matchplane.io/warm";
/// The label naming the server profile a Pod runs (none on the built-in game server's).
const PROFILE_LABEL: &str = "matchplane.io/profile";
/// The version of its profile a Pod runs, when the profile lists versions.
const VERSION_LABEL: &str = "matchplane.io/version";
/// How long a warm Pod may wait unclaimed before the pool replaces it; its
/// `activeDeadlineSeconds` is this plus the session deadline, and a claim lowers it to the
/// Pod's age plus the session deadline.
pub(crate) const WARM_LIFETIME_SECONDS: i64 = 1800;
/// The game port inside the Pod.
const GAME_PORT: i32 = protocol::server::DEFAULT_PORT as i32;

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
    /// Secrets (in the Pod's namespace) the kubelet pulls the image with: a private registry.
    pub image_pull_secrets: Vec<String>,
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

/// `name` set to the Pod's own IP, of whichever family the cluster gives it (IPv4 or IPv6).
fn pod_ip_env(name: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
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
    if !spec.profile.builtin {
        return render_profile_pod(template, spec);
    }
    let mut session_env = vec![
        env("SESSION_ID", &spec.session_id),
        env("PLAYERS", &spec.players.join(",")),
        env("REPORT_URL", &spec.report_url),
        env("REPORT_TOKEN", &spec.report_token),
    ];
    if let Some(teams) = spec.teams_setting() {
        session_env.push(env("TEAMS", &teams));
    }
    let mut pod = render(
        template,
        pod_name(&spec.session_id),
        (SESSION_LABEL, spec.session_id.clone()),
        session_env,
        template.active_deadline_seconds,
    );
    of_version(&mut pod, &spec.profile);
    pod
}

/// A Pod of the built-in server as `profile` runs it: a version of it runs its own image, and
/// says which it is.
fn of_version(pod: &mut Pod, profile: &Profile) {
    let Some(version) = &profile.version else {
        return;
    };
    if let Some(labels) = pod.metadata.labels.as_mut() {
        labels.insert(VERSION_LABEL.to_owned(), version.clone());
    }
    if let (Some(image), Some(pod_spec)) = (&profile.image, pod.spec.as_mut()) {
        for container in &mut pod_spec.containers {
            container.image = Some(image.clone());
        }
    }
}

/// `text` with each `${NAME}` of a profile written as Kubernetes' own `$(MATCHPLANE_NAME)`,
/// which the kubelet expands from the container's environment.
fn kubernetes_expansion(text: &str) -> String {
    crate::runtime::profiles::substitute(text, &|name| Some(format!("$({name})")))
}

/// The Pod of a session whose queue runs a server profile: the profile's image, its arguments
/// (the profile's command after the program, as the image's entrypoint takes them), every
/// declared port with its protocol, the `MATCHPLANE_*` environment (its ports as the container
/// ports, `MATCHPLANE_HOST` the Pod's IP), a TCP readiness probe on its first TCP port, and a
/// writable `/tmp` (its `HOME`) under a read-only root. No ticket secret: the proxy verified
/// every player. The same restricted security context and caps as the built-in server's.
fn render_profile_pod(template: &PodTemplate, spec: &ServerSpec) -> Pod {
    render_profile(
        template,
        &spec.profile,
        pod_name(&spec.session_id),
        (SESSION_LABEL, spec.session_id.clone()),
        &spec.contract_env(),
        profile_deadline(template, &spec.profile),
    )
}

/// A session's deadline in a Pod of `profile`: matchplane stops it at its cap, and the
/// kubelet's deadline is the backstop after that; the template's without a cap.
pub(crate) fn profile_deadline(template: &PodTemplate, profile: &Profile) -> i64 {
    profile.max_session.map_or(template.active_deadline_seconds, |cap| {
        i64::try_from(cap.as_secs()).unwrap_or(i64::MAX / 2) + 120
    })
}

/// Exactly the warm Pod of `profile` the backend creates: no session, told to poll `url` with
/// `token` for the one it will be handed (`MATCHPLANE_WARM_URL`, `MATCHPLANE_WARM_TOKEN`),
/// labelled warm and with its profile, with room in its deadline for
/// [`WARM_LIFETIME_SECONDS`] of waiting.
pub fn render_warm_profile_pod(template: &PodTemplate, profile: &Profile, name: &str, url: &str, token: &str) -> Pod {
    render_profile(
        template,
        profile,
        name.to_owned(),
        (WARM_LABEL, "true".to_owned()),
        &[
            ("MATCHPLANE_WARM_URL".to_owned(), url.to_owned()),
            ("MATCHPLANE_WARM_TOKEN".to_owned(), token.to_owned()),
        ],
        profile_deadline(template, profile) + WARM_LIFETIME_SECONDS,
    )
}

fn render_profile(
    template: &PodTemplate,
    profile: &Profile,
    name: String,
    role: (&str, String),
    vars: &[(String, String)],
    deadline: i64,
) -> Pod {
    let mut env_vars = vec![pod_ip_env(crate::runtime::profiles::HOST)];
    env_vars.extend(vars.iter().map(|(k, v)| env(k, v)));
    env_vars.extend(
        profile
            .ports
            .iter()
            .map(|p| env(&p.variable(), &p.container_port.to_string())),
    );
    env_vars.push(env("HOME", "/tmp"));
    env_vars.extend(profile.env.iter().map(|(k, v)| env(k, &kubernetes_expansion(v))));
    let ports = profile
        .ports
        .iter()
        .map(|p| ContainerPort {
            container_port: i32::from(p.container_port),
            protocol: Some(p.protocol.as_str().to_ascii_uppercase()),
            ..ContainerPort::default()
        })
        .collect();
    // Ready once its first TCP port accepts; killed once it stops accepting for 30 s.
    let probe = |period| {
        profile.first(PortProtocol::Tcp).map(|port| Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(port.container_port)),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(period),
            failure_threshold: Some(3),
            ..Probe::default()
        })
    };
    let mut container = base_container(template, profile.image.clone().unwrap_or_default(), env_vars, ports);
    container.args =
        (profile.command.len() > 1).then(|| profile.command[1..].iter().map(|a| kubernetes_expansion(a)).collect());
    container.readiness_probe = probe(1);
    container.liveness_probe = probe(10);
    container.volume_mounts = Some(vec![VolumeMount {
        name: "tmp".to_owned(),
        mount_path: "/tmp".to_owned(),
        ..VolumeMount::default()
    }]);
    let mut pod = pod_around(template, name, role, container, deadline);
    if let Some(labels) = pod.metadata.labels.as_mut() {
        labels.insert(PROFILE_LABEL.to_owned(), profile.name.clone());
        if let Some(version) = &profile.version {
            labels.insert(VERSION_LABEL.to_owned(), version.clone());
        }
    }
    if let Some(pod_spec) = pod.spec.as_mut() {
        pod_spec.termination_grace_period_seconds =
            Some(i64::try_from(profile.stop_grace.as_secs()).unwrap_or(3600).max(1) + 5);
        pod_spec.volumes = Some(vec![Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("256Mi".to_owned())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        }]);
    }
    pod
}

/// A warm Pod's name: `mp-gs-warm-` and 12 random hex digits.
pub fn warm_pod_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("mp-gs-warm-{}", &id[..12])
}

/// Exactly the warm Pod the backend creates: no session, its own name as `WARM_SERVER_ID`,
/// labelled warm, with room in its deadline for [`WARM_LIFETIME_SECONDS`] of waiting.
pub fn render_warm_pod(template: &PodTemplate, name: &str) -> Pod {
    render(
        template,
        name.to_owned(),
        (WARM_LABEL, "true".to_owned()),
        vec![env("WARM_SERVER_ID", name)],
        template.active_deadline_seconds + WARM_LIFETIME_SECONDS,
    )
}

/// A warm Pod of the built-in server as `profile` (the built-in profile, or a version of it)
/// runs it: [`render_warm_pod`]'s, of the version's image and labelled with it.
pub fn render_warm_builtin_pod(template: &PodTemplate, profile: &Profile, name: &str) -> Pod {
    let mut pod = render_warm_pod(template, name);
    of_version(&mut pod, profile);
    pod
}

fn render(
    template: &PodTemplate,
    name: String,
    role: (&str, String),
    session_env: Vec<EnvVar>,
    active_deadline_seconds: i64,
) -> Pod {
    let mut env_vars = vec![pod_ip_env("GAME_BIND"), env("GAME_PORT", &GAME_PORT.to_string())];
    env_vars.extend(session_env);
    env_vars.extend([
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
        env("LOG_FORMAT", "json"),
    ]);
    let fixed: Vec<String> = env_vars.iter().map(|e| e.name.clone()).collect();
    env_vars.extend(
        template
            .extra_env
            .iter()
            .filter(|(k, _)| !fixed.contains(k))
            .map(|(k, v)| env(k, v)),
    );
    let ports = vec![ContainerPort {
        name: Some("game".to_owned()),
        container_port: GAME_PORT,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }];
    let mut container = base_container(template, template.image.clone(), env_vars, ports);
    container.readiness_probe = Some(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(GAME_PORT),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(1),
        failure_threshold: Some(3),
        ..Probe::default()
    });
    // A wedged server (not even accepting) is killed; with restartPolicy Never its session
    // then fails and the reaper cleans up.
    container.liveness_probe = Some(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(GAME_PORT),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Probe::default()
    });
    pod_around(template, name, role, container, active_deadline_seconds)
}

/// The game-server container every Pod has: `image` with `env` and `ports`, the template's
/// pull policy and resources, and the restricted security context.
fn base_container(
    template: &PodTemplate,
    image: String,
    env_vars: Vec<EnvVar>,
    ports: Vec<ContainerPort>,
) -> Container {
    Container {
        name: "game-server".to_owned(),
        image: Some(image),
        image_pull_policy: Some(template.pull_policy.clone()),
        ports: Some(ports),
        env: Some(env_vars),
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
    }
}

/// The Pod around `container`: named, labelled with its role, in the template's namespace and
/// placement, never restarted, no service-account token, and the kubelet's deadline.
fn pod_around(
    template: &PodTemplate,
    name: String,
    (role_label, role_value): (&str, String),
    container: Container,
    active_deadline_seconds: i64,
) -> Pod {
    let labels = BTreeMap::from([
        (APP_LABEL.to_owned(), APP_VALUE.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "matchplane-backend".to_owned(),
        ),
        (role_label.to_owned(), role_value),
    ]);
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(template.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            active_deadline_seconds: Some(active_deadline_seconds),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(20),
            node_selector: (!template.node_selector.is_empty()).then(|| template.node_selector.clone()),
            tolerations: (!template.tolerations.is_empty()).then(|| template.tolerations.clone()),
            image_pull_secrets: (!template.image_pull_secrets.is_empty()).then(|| {
                template
                    .image_pull_secrets
                    .iter()
                    .map(|name| LocalObjectReference { name: name.clone() })
                    .collect()
            }),
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
            containers: vec![container],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// The game port at a Pod IP, as `ip:port` (`[ip]:port` for IPv6).
pub(crate) fn game_address(ip: &str) -> Result<String, StartError> {
    port_address(ip, GAME_PORT as u16)
}

/// `port` at a Pod IP, as `ip:port` (`[ip]:port` for IPv6).
pub(crate) fn port_address(ip: &str, port: u16) -> Result<String, StartError> {
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| StartError::Exited(format!("the pod reports an IP that does not parse: {ip:?}")))?;
    Ok(std::net::SocketAddr::new(ip, port).to_string())
}

/// Where a Pod stands, for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PodState {
    /// Not ready: scheduled, starting, or no longer passing its readiness probe.
    Pending,
    /// Ready at this IP.
    Ready(String),
    /// Succeeded or Failed (with the phase and reason).
    Finished(String),
}

/// Reads a Pod's state from its status.
pub(crate) fn pod_state(pod: &Pod) -> PodState {
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

/// The session a game-server Pod serves, from its label.
pub(crate) fn session_of(pod: &Pod) -> Option<String> {
    pod.metadata.labels.as_ref()?.get(SESSION_LABEL).cloned()
}

/// The server profile a Pod runs, from its label; `None` for the built-in game server.
pub(crate) fn profile_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(PROFILE_LABEL).map(String::as_str)
}

/// The version of its profile a Pod runs, from its label; `None` when its profile has none.
pub(crate) fn version_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(VERSION_LABEL).map(String::as_str)
}

/// Whether a Pod was started warm (it may since have been claimed by a session).
pub(crate) fn is_warm(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get(WARM_LABEL).is_some_and(|v| v == "true"))
}

/// A warm Pod no session has claimed, not being deleted, not finished.
pub(crate) fn unclaimed_warm(pod: &Pod) -> bool {
    is_warm(pod)
        && session_of(pod).is_none()
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(pod_state(pod), PodState::Finished(_))
}

/// The merge patch that claims the warm Pod `pod` for `session`: the session label under the
/// precondition of the version read (so two claims of one Pod cannot both succeed, on any
/// replica), and a deadline lowered to the Pod's age plus a session's deadline.
pub(crate) fn claim_patch(pod: &Pod, session: &str, session_deadline_seconds: i64) -> serde_json::Value {
    let age = pod.metadata.creation_timestamp.as_ref().map_or(0, |created| {
        (k8s_openapi::jiff::Timestamp::now() - created.0).get_seconds().max(0)
    });
    let current = pod
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .unwrap_or(i64::MAX);
    serde_json::json!({
        "metadata": {
            "resourceVersion": pod.metadata.resource_version,
            "labels": {SESSION_LABEL: session},
        },
        "spec": {"activeDeadlineSeconds": (age + 1 + session_deadline_seconds).min(current)},
    })
}

/// The merge patch that gives a claimed warm Pod up before it is deleted: without its session
/// label, its deletion is not taken for the session's server going away.
pub(crate) fn unclaim_patch() -> serde_json::Value {
    serde_json::json!({"metadata": {"labels": {SESSION_LABEL: null, WARM_LABEL: "failed"}}})
}

/// The label selector matching every game-server Pod.
pub(crate) fn label_selector() -> String {
    format!("{APP_LABEL}={APP_VALUE}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_ips_of_both_families_make_dialable_addresses() {
        assert_eq!(super::game_address("10.244.0.7").unwrap(), "10.244.0.7:7777");
        assert_eq!(super::game_address("fd00:10:244::7").unwrap(), "[fd00:10:244::7]:7777");
        assert!(super::game_address("not-an-ip").is_err());
    }
}
