//! Checks the Pods that rendered manifests would run, as a real cluster would refuse or break
//! them: `cargo run -p kube-sim --example pod_check -- LEVEL FILE...` reads every Pod,
//! Deployment, StatefulSet, DaemonSet and Job in the YAML files and says, one line each, what
//! its Pod (template) violates at the Pod Security LEVEL, and which Secret or ConfigMap volume
//! its containers' user could not read (the kubelet writes those files as root, group
//! `fsGroup` when set, with the volume's `defaultMode`, 0644 unless given). Exit 1 on any.
//! `make manifests-check` runs it on deploy/ and its overlays.

use std::process::ExitCode;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};

/// The Pod a workload object would run, with its name.
fn pod_of(doc: &serde_json::Value) -> Option<(String, Pod)> {
    let kind = doc["kind"].as_str()?;
    let name = format!("{kind}/{}", doc["metadata"]["name"].as_str().unwrap_or("?"));
    let template = match kind {
        "Pod" => return serde_json::from_value(doc.clone()).ok().map(|pod| (name, pod)),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &doc["spec"]["template"],
        _ => return None,
    };
    let template: PodTemplateSpec = serde_json::from_value(template.clone()).ok()?;
    Some((
        name,
        Pod {
            metadata: template.metadata.unwrap_or_default(),
            spec: template.spec,
            status: None,
        },
    ))
}

/// The Secret and ConfigMap volumes a container's user cannot read.
fn unreadable(spec: &PodSpec) -> Vec<String> {
    let pod_sc = spec.security_context.as_ref();
    let mut out = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        let mode = match (&volume.secret, &volume.config_map) {
            (Some(secret), _) => secret.default_mode,
            (_, Some(map)) => map.default_mode,
            _ => continue,
        }
        .unwrap_or(0o644);
        for container in &spec.containers {
            let mounted = container.volume_mounts.iter().flatten().any(|m| m.name == volume.name);
            if !mounted {
                continue;
            }
            let sc = container.security_context.as_ref();
            let user = sc
                .and_then(|s| s.run_as_user)
                .or_else(|| pod_sc.and_then(|s| s.run_as_user));
            // Files are owned by root, and by group fsGroup when the Pod sets one (the
            // container's user is in that group).
            let readable = user == Some(0)
                || mode & 0o004 != 0
                || (mode & 0o040 != 0 && pod_sc.and_then(|s| s.fs_group).is_some());
            if !readable {
                out.push(format!(
                    "volume {:?} (mode {mode:o}) cannot be read by container {:?}, user {}: set fsGroup, or a mode others may read",
                    volume.name,
                    container.name,
                    user.map_or_else(|| "of the image".to_owned(), |u| u.to_string())
                ));
            }
        }
    }
    out
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(level) = args
        .next()
        .filter(|l| kube_sim::pod_security::LEVELS.contains(&l.as_str()))
    else {
        eprintln!("usage: pod_check privileged|baseline|restricted FILE...");
        return ExitCode::from(2);
    };
    let mut problems = 0;
    let mut pods = 0;
    for file in args {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("pod_check: {file}: {e}");
                return ExitCode::from(2);
            }
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let Ok(value) = <serde_json::Value as serde::Deserialize>::deserialize(doc) else {
                eprintln!("pod_check: {file}: not YAML");
                return ExitCode::from(2);
            };
            let Some((name, pod)) = pod_of(&value) else { continue };
            pods += 1;
            let spec = pod.spec.clone().unwrap_or_default();
            let found = kube_sim::pod_security::violations(&pod, &level)
                .into_iter()
                .map(|v| format!("violates {level}: {v}"))
                .chain(unreadable(&spec));
            for problem in found {
                println!("{file}: {name}: {problem}");
                problems += 1;
            }
        }
    }
    if problems > 0 {
        return ExitCode::FAILURE;
    }
    println!("pod_check: {pods} Pods meet {level}, and each can read its Secret and ConfigMap volumes");
    ExitCode::SUCCESS
}
