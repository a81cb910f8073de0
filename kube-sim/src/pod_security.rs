//! The Pod Security admission a real API server runs on create: the namespace's
//! `pod-security.kubernetes.io/enforce` level (`privileged`, `baseline` or `restricted`) and the
//! checks of the Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards),
//! each violation worded as the admission words it.

use k8s_openapi::api::core::v1::{Container, Pod};

/// The levels, from the most permissive.
pub const LEVELS: [&str; 3] = ["privileged", "baseline", "restricted"];

/// Capabilities the baseline level lets a container add.
const BASELINE_CAPABILITIES: [&str; 14] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
    "SYS_ADMIN",
];

/// Volume types the restricted level allows.
const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn containers(pod: &Pod) -> Vec<&Container> {
    let spec = pod.spec.as_ref();
    spec.map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()).collect())
        .unwrap_or_default()
}

/// What `pod` violates at `level`, in the admission's words; empty when it may run.
pub fn violations(pod: &Pod, level: &str) -> Vec<String> {
    let mut out = Vec::new();
    if level == "privileged" {
        return out;
    }
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    let pod_sc = spec.security_context.as_ref();
    let containers = containers(pod);
    // Baseline.
    let host: Vec<&str> = [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ]
    .into_iter()
    .filter(|(_, on)| *on == Some(true))
    .map(|(name, _)| name)
    .collect();
    if !host.is_empty() {
        out.push(format!(
            "host namespaces ({})",
            host.iter().map(|h| format!("{h}=true")).collect::<Vec<_>>().join(", ")
        ));
    }
    for c in &containers {
        let sc = c.security_context.as_ref();
        if sc.and_then(|s| s.privileged) == Some(true) {
            out.push(format!(
                "privileged (container {:?} must not set securityContext.privileged=true)",
                c.name
            ));
        }
        let added: Vec<&String> = sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|caps| caps.add.as_ref())
            .map(|add| {
                add.iter()
                    .filter(|a| !BASELINE_CAPABILITIES.contains(&a.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        if !added.is_empty() {
            out.push(format!(
                "non-default capabilities (container {:?} must not include {:?} in securityContext.capabilities.add)",
                c.name, added
            ));
        }
        for port in c.ports.iter().flatten() {
            if port.host_port.is_some_and(|p| p != 0) {
                out.push(format!(
                    "hostPort (container {:?} uses hostPort {})",
                    c.name,
                    port.host_port.unwrap_or_default()
                ));
            }
        }
        if sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .is_some_and(|p| p.type_ == "Unconfined")
        {
            out.push(format!(
                "seccompProfile (container {:?} must not set securityContext.seccompProfile.type to \"Unconfined\")",
                c.name
            ));
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            out.push(format!("hostPath volumes (volume {:?})", volume.name));
        }
    }
    if level == "baseline" {
        return out;
    }
    // Restricted.
    for volume in spec.volumes.iter().flatten() {
        let value = serde_json::to_value(volume).unwrap_or_default();
        let kind = value
            .as_object()
            .and_then(|o| o.keys().find(|k| k.as_str() != "name").cloned())
            .unwrap_or_default();
        if volume.host_path.is_none() && !RESTRICTED_VOLUMES.contains(&kind.as_str()) {
            out.push(format!(
                "restricted volume types (volume {:?} uses restricted volume type {kind:?})",
                volume.name
            ));
        }
    }
    let pod_non_root = pod_sc.and_then(|s| s.run_as_non_root);
    let pod_seccomp = pod_sc.and_then(|s| s.seccomp_profile.as_ref()).map(|p| p.type_.clone());
    for c in &containers {
        let sc = c.security_context.as_ref();
        if sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
            out.push(format!("allowPrivilegeEscalation != false (container {:?} must set securityContext.allowPrivilegeEscalation=false)", c.name));
        }
        let drops_all = sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|caps| caps.drop.as_ref())
            .is_some_and(|d| d.iter().any(|c| c == "ALL"));
        let adds_only_bind = sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|caps| caps.add.as_ref())
            .is_none_or(|a| a.iter().all(|c| c == "NET_BIND_SERVICE"));
        if !drops_all || !adds_only_bind {
            out.push(format!(
                "unrestricted capabilities (container {:?} must set securityContext.capabilities.drop=[\"ALL\"])",
                c.name
            ));
        }
        if sc.and_then(|s| s.run_as_non_root).or(pod_non_root) != Some(true) {
            out.push(format!(
                "runAsNonRoot != true (pod or container {:?} must set securityContext.runAsNonRoot=true)",
                c.name
            ));
        }
        if sc.and_then(|s| s.run_as_user).or(pod_sc.and_then(|s| s.run_as_user)) == Some(0) {
            out.push(format!(
                "runAsUser=0 (pod or container {:?} must not set runAsUser=0)",
                c.name
            ));
        }
        let seccomp = sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| p.type_.clone())
            .or(pod_seccomp.clone());
        if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
            out.push(format!("seccompProfile (pod or container {:?} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")", c.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_bare_pod_meets_privileged_only_and_a_hardened_one_meets_restricted() {
        let bare =
            pod(serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}));
        assert!(violations(&bare, "privileged").is_empty());
        assert!(violations(&bare, "baseline").is_empty());
        let restricted = violations(&bare, "restricted");
        assert_eq!(restricted.len(), 4, "{restricted:?}");
        assert!(restricted[0].starts_with("allowPrivilegeEscalation != false (container \"c\""));
        let hardened = pod(serde_json::json!({"metadata": {"name": "p"}, "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "tmp", "emptyDir": {}}],
            "containers": [{"name": "c", "image": "x", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}));
        assert!(
            violations(&hardened, "restricted").is_empty(),
            "{:?}",
            violations(&hardened, "restricted")
        );
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let risky = pod(serde_json::json!({"metadata": {"name": "p"}, "spec": {
            "hostNetwork": true,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN"]}}}]}}));
        let found = violations(&risky, "baseline");
        for want in [
            "host namespaces (hostNetwork=true)",
            "privileged (container",
            "non-default capabilities",
            "hostPort (container \"c\" uses hostPort 80)",
            "hostPath volumes (volume \"root\")",
        ] {
            assert!(found.iter().any(|v| v.starts_with(want)), "{want} in {found:?}");
        }
    }
}
