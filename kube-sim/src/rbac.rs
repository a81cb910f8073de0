//! Who may do what: the Roles a manifest binds to a ServiceAccount, enforced the way a real API
//! server's RBAC authorizer enforces them on the calls kube-sim serves, and every call counted.
//!
//! A real cluster refuses a call its caller's Role does not grant with `403 Forbidden`; a test
//! bed that allows everything hides exactly the bug a missing verb causes (a code path that
//! works here and is refused on every real cluster). With a manifest loaded, kube-sim answers
//! such a call as a real API server would; without one, everything is allowed (the caller is
//! then a cluster admin), as before.
//!
//! The Roles are granted in the namespace kube-sim is told to bind them in (as `kustomize`'s
//! `namespace:` rewrites a manifest's), or in their own. A call in any other namespace, or at
//! the cluster scope, is refused: a Role grants nothing outside its namespace.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use axum::http::Method;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use serde::{Deserialize as _, Serialize};

/// One API request, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Request {
    /// The Kubernetes verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`.
    pub verb: String,
    /// The API group (`""` for core).
    pub api_group: String,
    /// The resource, with its subresource as `pods/log`.
    pub resource: String,
    /// `None` at the cluster scope.
    pub namespace: Option<String>,
    /// The object named, for calls on one object.
    #[serde(skip)]
    pub name: Option<String>,
}

impl Request {
    /// The resource request a method and path make, or `None` for a path that names no
    /// resource (discovery, health, `/sim/*`), which every authenticated caller may read.
    pub fn of(method: &Method, path: &str, query: Option<&str>) -> Option<Request> {
        let rest = path.strip_prefix("/api/v1/")?;
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        let (namespace, tail) = match parts.as_slice() {
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some((*ns).to_owned()), tail),
            tail => (None, tail),
        };
        let (resource, name) = match tail {
            [resource] => ((*resource).to_owned(), None),
            [resource, name] => ((*resource).to_owned(), Some((*name).to_owned())),
            [resource, name, sub, ..] => (format!("{resource}/{sub}"), Some((*name).to_owned())),
            [] => return None,
        };
        let watching = query.is_some_and(|q| {
            q.split('&')
                .any(|pair| matches!(pair, "watch=true" | "watch=1" | "watch=True"))
        });
        let verb = match (method.as_str(), name.is_some()) {
            ("GET" | "HEAD", _) if watching => "watch",
            ("GET" | "HEAD", true) => "get",
            ("GET" | "HEAD", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            (other, _) => return Some(Request::new(other.to_lowercase(), resource, namespace, name)),
        };
        Some(Request::new(verb.to_owned(), resource, namespace, name))
    }

    fn new(verb: String, resource: String, namespace: Option<String>, name: Option<String>) -> Request {
        Request {
            verb,
            api_group: String::new(),
            resource,
            namespace,
            name,
        }
    }
}

/// The Roles bound to one ServiceAccount, granted in one namespace.
#[derive(Debug, Clone)]
pub struct Rbac {
    /// `system:serviceaccount:<namespace>:<name>`, as refusals name the caller.
    pub user: String,
    pub namespace: String,
    rules: Vec<PolicyRule>,
}

impl Rbac {
    /// Reads the Roles, RoleBindings and ServiceAccount of a manifest (YAML documents). Every
    /// Role bound to the one ServiceAccount subject is granted, in `bind_in` if given or else
    /// in the Roles' own namespace.
    pub fn from_manifest(yaml: &str, bind_in: Option<&str>) -> anyhow::Result<Rbac> {
        let mut roles: BTreeMap<String, Role> = BTreeMap::new();
        let mut bindings = Vec::new();
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_yaml::Value::deserialize(document).context("the manifest is not YAML")?;
            let kind = value
                .get("kind")
                .and_then(serde_yaml::Value::as_str)
                .unwrap_or_default();
            match kind {
                "Role" => {
                    let role: Role = serde_yaml::from_value(value).context("a Role")?;
                    let name = role.metadata.name.clone().context("a Role without a name")?;
                    roles.insert(name, role);
                }
                "RoleBinding" => bindings.push(serde_yaml::from_value::<RoleBinding>(value).context("a RoleBinding")?),
                "ClusterRole" | "ClusterRoleBinding" => {
                    bail!(
                        "the manifest grants cluster-wide permissions ({kind}); kube-sim enforces namespaced Roles only"
                    )
                }
                _ => {}
            }
        }
        let mut subject = None;
        let mut rules = Vec::new();
        let mut namespace = None;
        for binding in &bindings {
            if binding.role_ref.kind != "Role" {
                bail!(
                    "RoleBinding {:?} refers to a {}",
                    binding.metadata.name,
                    binding.role_ref.kind
                );
            }
            let role = roles.get(&binding.role_ref.name).with_context(|| {
                format!(
                    "RoleBinding refers to a Role {:?} not in the manifest",
                    binding.role_ref.name
                )
            })?;
            for s in binding.subjects.iter().flatten() {
                if s.kind != "ServiceAccount" {
                    bail!("kube-sim binds ServiceAccounts only, not a {} ({})", s.kind, s.name);
                }
                let ns = s
                    .namespace
                    .clone()
                    .or_else(|| binding.metadata.namespace.clone())
                    .unwrap_or_else(|| "default".to_owned());
                let who = (ns, s.name.clone());
                match &subject {
                    None => subject = Some(who),
                    Some(seen) if *seen == who => {}
                    Some(seen) => {
                        bail!("the manifest binds two ServiceAccounts ({seen:?} and {who:?}); kube-sim plays one")
                    }
                }
            }
            namespace = namespace.or_else(|| role.metadata.namespace.clone());
            rules.extend(role.rules.iter().flatten().cloned());
        }
        let (sa_namespace, sa_name) = subject.context("the manifest binds no ServiceAccount to a Role")?;
        let namespace = bind_in
            .map(str::to_owned)
            .or(namespace)
            .unwrap_or_else(|| "default".to_owned());
        // A ServiceAccount bound in the namespace it lives in moves with it.
        let sa_namespace = if bind_in.is_some() {
            namespace.clone()
        } else {
            sa_namespace
        };
        Ok(Rbac {
            user: format!("system:serviceaccount:{sa_namespace}:{sa_name}"),
            namespace,
            rules,
        })
    }

    /// Whether the bound Roles grant `request`.
    pub fn allows(&self, request: &Request) -> bool {
        request.namespace.as_deref() == Some(self.namespace.as_str())
            && self.rules.iter().any(|rule| {
                let names_ok = rule
                    .resource_names
                    .as_ref()
                    .is_none_or(|names| names.is_empty() || request.name.as_ref().is_some_and(|n| names.contains(n)));
                covers(rule.api_groups.as_deref(), &request.api_group)
                    && covers(rule.resources.as_deref(), &request.resource)
                    && covers(Some(&rule.verbs), &request.verb)
                    && names_ok
            })
    }

    /// The message a real API server sends with its `403 Forbidden`.
    pub fn refusal(&self, request: &Request) -> String {
        let what = match &request.name {
            Some(name) => format!("{} {name:?}", request.resource),
            None => request.resource.clone(),
        };
        let scope = match &request.namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".to_owned(),
        };
        format!(
            "{what} is forbidden: User {:?} cannot {} resource {:?} in API group {:?} {scope}",
            self.user, request.verb, request.resource, request.api_group
        )
    }
}

fn covers(granted: Option<&[String]>, wanted: &str) -> bool {
    granted.is_some_and(|list| list.iter().any(|g| g == "*" || g == wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: app, namespace: home}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: app, namespace: home}
rules:
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["create", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: app, namespace: home}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: app}
subjects: [{kind: ServiceAccount, name: app, namespace: home}]
"#;

    fn req(method: &str, path: &str, query: Option<&str>) -> Request {
        Request::of(&method.parse().unwrap(), path, query).unwrap()
    }

    #[test]
    fn verbs_are_read_off_method_path_and_query() {
        let cases = [
            ("GET", "/api/v1/namespaces/home/pods", None, "list"),
            (
                "GET",
                "/api/v1/namespaces/home/pods",
                Some("watch=true&resourceVersion=4"),
                "watch",
            ),
            ("GET", "/api/v1/namespaces/home/pods/p", None, "get"),
            ("POST", "/api/v1/namespaces/home/pods", None, "create"),
            ("PATCH", "/api/v1/namespaces/home/pods/p", None, "patch"),
            ("PUT", "/api/v1/namespaces/home/pods/p", None, "update"),
            ("DELETE", "/api/v1/namespaces/home/pods/p", None, "delete"),
            ("DELETE", "/api/v1/namespaces/home/pods", None, "deletecollection"),
        ];
        for (method, path, query, verb) in cases {
            assert_eq!(req(method, path, query).verb, verb, "{method} {path} {query:?}");
        }
        assert_eq!(req("GET", "/api/v1/pods", None).namespace, None);
        assert_eq!(
            req("GET", "/api/v1/namespaces/home/pods/p/log", None).resource,
            "pods/log"
        );
        assert!(Request::of(&Method::GET, "/version", None).is_none());
        assert!(Request::of(&Method::GET, "/api/v1", None).is_none());
        assert!(Request::of(&Method::GET, "/sim/pods", None).is_none());
    }

    #[test]
    fn only_what_the_role_grants_in_its_namespace_is_allowed() {
        let rbac = Rbac::from_manifest(MANIFEST, None).unwrap();
        assert_eq!(rbac.user, "system:serviceaccount:home:app");
        assert!(rbac.allows(&req("POST", "/api/v1/namespaces/home/pods", None)));
        assert!(rbac.allows(&req("GET", "/api/v1/namespaces/home/pods", Some("watch=1"))));
        let get = req("GET", "/api/v1/namespaces/home/pods/p", None);
        assert!(!rbac.allows(&get), "get is not granted");
        assert_eq!(
            rbac.refusal(&get),
            r#"pods "p" is forbidden: User "system:serviceaccount:home:app" cannot get resource "pods" in API group "" in the namespace "home""#
        );
        assert!(!rbac.allows(&req("GET", "/api/v1/namespaces/other/pods", None)));
        let everywhere = req("GET", "/api/v1/pods", None);
        assert!(!rbac.allows(&everywhere));
        assert!(rbac.refusal(&everywhere).ends_with("at the cluster scope"));
        assert!(!rbac.allows(&req("GET", "/api/v1/namespaces/home/pods/p/log", None)));
    }

    #[test]
    fn bound_elsewhere_the_role_moves_with_its_namespace() {
        let rbac = Rbac::from_manifest(MANIFEST, Some("games")).unwrap();
        assert_eq!(rbac.user, "system:serviceaccount:games:app");
        assert!(rbac.allows(&req("POST", "/api/v1/namespaces/games/pods", None)));
        assert!(!rbac.allows(&req("POST", "/api/v1/namespaces/home/pods", None)));
    }

    #[test]
    fn manifests_it_cannot_play_are_refused() {
        assert!(Rbac::from_manifest("kind: ServiceAccount\nmetadata: {name: a}\n", None).is_err());
        let cluster_wide = format!("{MANIFEST}---\nkind: ClusterRole\nmetadata: {{name: x}}\n");
        assert!(Rbac::from_manifest(&cluster_wide, None).is_err());
        assert!(Rbac::from_manifest("{{{", None).is_err());
    }

    #[test]
    fn the_shipped_backend_role_is_read() {
        let yaml =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/backend/rbac.yaml")).unwrap();
        let rbac = Rbac::from_manifest(&yaml, None).unwrap();
        assert_eq!(rbac.user, "system:serviceaccount:matchplane:matchplane-backend");
        assert_eq!(rbac.namespace, "matchplane");
    }
}
