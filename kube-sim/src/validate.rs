//! What the API server checks before it stores a Pod: the fields it knows (strict field
//! validation), names, required fields and value ranges. Failures become one `422 Invalid`
//! with a cause per problem, as the real API server answers.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Probe};
use serde_json::Value;

/// One validation failure: the reason the API uses, the field path and a message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

fn required(field: impl Into<String>) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        field: field.into(),
        message: "Required value".into(),
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: message.into(),
    }
}

fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Cause {
    Cause {
        reason: "FieldValueNotSupported",
        field: field.into(),
        message: format!(
            "Unsupported value: {value:?}: supported values: {}",
            supported.join(", ")
        ),
    }
}

/// Fields in `sent` that the typed object dropped: the fields the API does not know.
pub fn unknown_fields(sent: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, known) {
        (Value::Object(sent), Value::Object(known)) => {
            for (key, value) in sent {
                if value.is_null() {
                    continue;
                }
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match known.get(key) {
                    Some(inner) => unknown_fields(value, inner, &here, out),
                    None => out.push(here),
                }
            }
        }
        (Value::Array(sent), Value::Array(known)) => {
            for (i, (s, k)) in sent.iter().zip(known).enumerate() {
                unknown_fields(s, k, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// A DNS-1123 subdomain, what object names must be.
pub fn dns_subdomain(value: &str) -> bool {
    value.len() <= 253 && value.split('.').all(dns_label)
}

fn label_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric()
}

fn label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => dns_subdomain(prefix) && label_name(name),
        None => label_name(key),
    }
}

fn env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn port_name(name: &str) -> bool {
    name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// A resource quantity's value (`500m` → 0.5, `64Mi` → 67108864), if it parses.
pub fn quantity(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * scale)
}

/// The field paths `fieldRef` may name in an env var.
const FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

fn check_env(env: &EnvVar, at: &str, out: &mut Vec<Cause>) {
    if env.name.is_empty() {
        out.push(required(format!("{at}.name")));
    } else if !env_name(&env.name) {
        out.push(invalid(
            format!("{at}.name"),
            format!(
                "{:?}: a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit",
                env.name
            ),
        ));
    }
    if let Some(from) = &env.value_from {
        if env.value.as_deref().is_some_and(|v| !v.is_empty()) {
            out.push(invalid(
                format!("{at}.valueFrom"),
                "may not be specified when `value` is not empty",
            ));
        }
        let sources = [
            from.field_ref.is_some(),
            from.secret_key_ref.is_some(),
            from.config_map_key_ref.is_some(),
            from.resource_field_ref.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            out.push(invalid(
                format!("{at}.valueFrom"),
                "must specify exactly one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            ));
        }
        if let Some(field) = &from.field_ref {
            let path = field.field_path.as_str();
            let labelled = path.starts_with("metadata.labels[") || path.starts_with("metadata.annotations[");
            if !FIELD_PATHS.contains(&path) && !labelled {
                out.push(not_supported(
                    format!("{at}.valueFrom.fieldRef.fieldPath"),
                    path,
                    FIELD_PATHS,
                ));
            }
        }
        if let Some(secret) = &from.secret_key_ref {
            if secret.name.is_empty() {
                out.push(required(format!("{at}.valueFrom.secretKeyRef.name")));
            }
            if secret.key.is_empty() {
                out.push(required(format!("{at}.valueFrom.secretKeyRef.key")));
            }
        }
    }
}

fn check_probe(probe: &Probe, container: &Container, at: &str, out: &mut Vec<Cause>) {
    let handlers = [
        probe.tcp_socket.is_some(),
        probe.http_get.is_some(),
        probe.exec.is_some(),
        probe.grpc.is_some(),
    ];
    if handlers.iter().filter(|h| **h).count() != 1 {
        out.push(required(format!("{at}: must specify a handler type")));
    }
    if let Some(tcp) = &probe.tcp_socket {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        match &tcp.port {
            IntOrString::Int(port) if !(1..=65535).contains(port) => out.push(invalid(
                format!("{at}.tcpSocket.port"),
                format!("{port}: must be between 1 and 65535, inclusive"),
            )),
            IntOrString::String(name)
                if !container
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| p.name.as_deref() == Some(name.as_str())) =>
            {
                out.push(invalid(
                    format!("{at}.tcpSocket.port"),
                    format!("{name:?}: no such named port"),
                ));
            }
            _ => {}
        }
    }
    for (field, value, min) in [
        ("periodSeconds", probe.period_seconds, 1),
        ("timeoutSeconds", probe.timeout_seconds, 1),
        ("failureThreshold", probe.failure_threshold, 1),
        ("successThreshold", probe.success_threshold, 1),
        ("initialDelaySeconds", probe.initial_delay_seconds, 0),
    ] {
        if let Some(value) = value
            && value < min
        {
            out.push(invalid(
                format!("{at}.{field}"),
                format!("{value}: must be greater than or equal to {min}"),
            ));
        }
    }
}

fn check_container(c: &Container, at: &str, out: &mut Vec<Cause>) {
    if c.name.is_empty() {
        out.push(required(format!("{at}.name")));
    } else if !dns_label(&c.name) {
        out.push(invalid(
            format!("{at}.name"),
            format!(
                "{:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
                c.name
            ),
        ));
    }
    if c.image.as_deref().is_none_or(str::is_empty) {
        out.push(required(format!("{at}.image")));
    }
    if let Some(policy) = c.image_pull_policy.as_deref()
        && !["Always", "IfNotPresent", "Never"].contains(&policy)
    {
        out.push(not_supported(
            format!("{at}.imagePullPolicy"),
            policy,
            &["Always", "IfNotPresent", "Never"],
        ));
    }
    let mut port_names = HashSet::new();
    for (i, port) in c.ports.iter().flatten().enumerate() {
        if !(1..=65535).contains(&port.container_port) {
            out.push(invalid(
                format!("{at}.ports[{i}].containerPort"),
                format!("{}: must be between 1 and 65535, inclusive", port.container_port),
            ));
        }
        if let Some(name) = &port.name {
            if !port_name(name) {
                out.push(invalid(
                    format!("{at}.ports[{i}].name"),
                    format!("{name:?}: must be no more than 15 characters, lowercase alphanumerics and '-'"),
                ));
            }
            if !port_names.insert(name.clone()) {
                out.push(Cause {
                    reason: "FieldValueDuplicate",
                    field: format!("{at}.ports[{i}].name"),
                    message: format!("Duplicate value: {name:?}"),
                });
            }
        }
        if let Some(protocol) = port.protocol.as_deref()
            && !["TCP", "UDP", "SCTP"].contains(&protocol)
        {
            out.push(not_supported(
                format!("{at}.ports[{i}].protocol"),
                protocol,
                &["SCTP", "TCP", "UDP"],
            ));
        }
    }
    for (i, env) in c.env.iter().flatten().enumerate() {
        check_env(env, &format!("{at}.env[{i}]"), out);
    }
    if let Some(probe) = &c.readiness_probe {
        check_probe(probe, c, &format!("{at}.readinessProbe"), out);
    }
    if let Some(probe) = &c.liveness_probe {
        check_probe(probe, c, &format!("{at}.livenessProbe"), out);
    }
    if let Some(resources) = &c.resources {
        for (kind, map) in [("requests", &resources.requests), ("limits", &resources.limits)] {
            for (name, q) in map.iter().flatten() {
                if quantity(&q.0).is_none_or(|v| v < 0.0) {
                    out.push(invalid(
                        format!("{at}.resources.{kind}[{name}]"),
                        format!("{:?}: must be a non-negative quantity", q.0),
                    ));
                }
            }
        }
        if let (Some(requests), Some(limits)) = (&resources.requests, &resources.limits) {
            for (name, request) in requests {
                let limit = limits.get(name).and_then(|l| quantity(&l.0));
                if let (Some(request), Some(limit)) = (quantity(&request.0), limit)
                    && request > limit
                {
                    out.push(invalid(
                        format!("{at}.resources.requests[{name}]"),
                        format!("{:?}: must be less than or equal to {name} limit", request),
                    ));
                }
            }
        }
    }
}

/// Checks a Pod sent for `namespace`; every problem found, or none.
pub fn pod(pod: &Pod, namespace: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    let meta = &pod.metadata;
    match (&meta.name, &meta.generate_name) {
        (Some(name), _) if !dns_subdomain(name) => out.push(invalid(
            "metadata.name",
            format!("{name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        )),
        (None, None) => out.push(required("metadata.name")),
        _ => {}
    }
    if let Some(ns) = &meta.namespace
        && ns != namespace
    {
        out.push(invalid(
            "metadata.namespace",
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    for (key, value) in meta.labels.iter().flatten() {
        if !label_key(key) {
            out.push(invalid(format!("metadata.labels: {key:?}"), "invalid label key"));
        }
        if !value.is_empty() && !label_name(value) {
            out.push(invalid(format!("metadata.labels: {value:?}"), "invalid label value"));
        }
    }
    let Some(spec) = &pod.spec else {
        out.push(required("spec"));
        return out;
    };
    if spec.containers.is_empty() {
        out.push(required("spec.containers"));
    }
    let mut names = HashSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        check_container(c, &format!("spec.containers[{i}]"), &mut out);
        if !names.insert(c.name.clone()) {
            out.push(Cause {
                reason: "FieldValueDuplicate",
                field: format!("spec.containers[{i}].name"),
                message: format!("Duplicate value: {:?}", c.name),
            });
        }
    }
    if let Some(policy) = spec.restart_policy.as_deref()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        out.push(not_supported(
            "spec.restartPolicy",
            policy,
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(deadline) = spec.active_deadline_seconds
        && deadline <= 0
    {
        out.push(invalid(
            "spec.activeDeadlineSeconds",
            format!("{deadline}: must be greater than or equal to 1"),
        ));
    }
    if let Some(grace) = spec.termination_grace_period_seconds
        && grace < 0
    {
        out.push(invalid(
            "spec.terminationGracePeriodSeconds",
            format!("{grace}: must be greater than or equal to 0"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_by_their_path() {
        let sent = json!({"metadata": {"name": "a", "colour": "red"}, "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolcy": "Never"}]}});
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(sent.clone()).unwrap();
        let mut unknown = Vec::new();
        super::unknown_fields(&sent, &serde_json::to_value(&pod).unwrap(), "", &mut unknown);
        assert_eq!(unknown, ["metadata.colour", "spec.containers[0].imagePullPolcy"]);
    }

    #[test]
    fn quantities_parse_with_their_suffixes() {
        assert_eq!(super::quantity("500m"), Some(0.5));
        assert_eq!(super::quantity("64Mi"), Some(67_108_864.0));
        assert_eq!(super::quantity("2"), Some(2.0));
        assert_eq!(super::quantity("1e3"), Some(1000.0));
        assert_eq!(super::quantity("12 cores"), None);
    }

    #[test]
    fn names_and_required_fields_are_checked() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "Bad_Name", "namespace": "other", "labels": {"ok": "-bad-"}},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 70000}],
                "env": [{"name": "1X", "value": "v"}]}], "restartPolicy": "Sometimes"}
        }))
        .unwrap();
        let fields: Vec<String> = super::pod(&pod, "games").into_iter().map(|c| c.field).collect();
        for want in [
            "metadata.name",
            "metadata.namespace",
            "spec.containers[0].image",
            "spec.containers[0].ports[0].containerPort",
            "spec.containers[0].env[0].name",
            "spec.restartPolicy",
        ] {
            assert!(fields.iter().any(|f| f == want), "{want} in {fields:?}");
        }
    }
}
