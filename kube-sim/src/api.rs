//! The HTTP face: the Pod endpoints of the Kubernetes API (core/v1), and `/sim/*` for
//! settings, faults and figures.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::cluster::{Behaviour, Cluster, Fault, From, Key, PatchError, Verb};
use crate::kubelet::Command;
use crate::selector::{FieldSelector, LabelSelector};
use crate::validate;

/// Bodies larger than this are refused (the real API server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

pub fn router(cluster: Arc<Cluster>) -> axum::Router {
    axum::Router::new()
        .route("/version", get(version))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/api", get(api_versions))
        .route(
            "/apis",
            get(|| async { Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})) }),
        )
        .route("/api/v1", get(api_resources))
        .route("/api/v1/pods", get(list_all))
        .route("/api/v1/namespaces/{ns}/pods", get(list_in).post(create))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            get(read).delete(delete).patch(patch),
        )
        .route("/sim/behaviour", get(behaviour).put(set_behaviour))
        .route("/sim/faults", post(add_fault))
        .route("/sim/watches/cut", post(cut_watches))
        .route("/sim/compact", post(compact))
        .route("/sim/pods", get(records))
        .route("/sim/calls", get(calls))
        .route("/sim/network", get(network))
        .route("/sim/pods/{ns}/{name}/{action}", post(pod_action))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(cluster.clone(), authorize))
        .with_state(cluster)
}

/// Every resource call is counted and held to the Roles kube-sim was given, before anything
/// else looks at it (faults included): a refused call changes nothing.
async fn authorize(
    State(cluster): State<Arc<Cluster>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = request.uri();
    let Some(call) = crate::rbac::Request::of(request.method(), uri.path(), uri.query()) else {
        return next.run(request).await;
    };
    let details = json!({"name": call.name.clone().unwrap_or_default(), "kind": call.resource.clone()});
    match cluster.authorize(call) {
        Ok(()) => next.run(request).await,
        Err(message) => {
            tracing::warn!(%message, "kube-sim: forbidden");
            status(403, "Forbidden", &message, Some(details))
        }
    }
}

/// A `Status` failure, as the API server sends it.
pub fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    let mut response = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response();
    if code == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A pending fault for a read: its answer, in place of the read's.
fn injected(cluster: &Cluster, verb: Verb) -> Option<Response> {
    cluster.fault(verb).map(|fault| fault_answer(fault.code))
}

/// A write under the pending fault for `verb`, if any: refused at once, or (an `after` fault)
/// carried out and then answered with the fault's code instead of its own answer.
fn faulted_write(cluster: &Cluster, verb: Verb, write: impl FnOnce() -> Response) -> Response {
    match cluster.fault(verb) {
        None => write(),
        Some(fault) if !fault.after => fault_answer(fault.code),
        Some(fault) => {
            let done = write();
            tracing::info!(?verb, status = %done.status(), code = fault.code, "kube-sim: a write's answer replaced by an injected fault");
            fault_answer(fault.code)
        }
    }
}

fn fault_answer(code: u16) -> Response {
    let reason = match code {
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    };
    status(code, reason, &format!("kube-sim: injected {code}"), None)
}

async fn version() -> Json<Value> {
    Json(json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0-kube-sim", "platform": "linux/amd64"}))
}

async fn api_versions() -> Json<Value> {
    Json(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}))
}

async fn api_resources() -> Json<Value> {
    Json(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": [
        {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
         "verbs": ["create", "delete", "get", "list", "patch", "watch"], "shortNames": ["po"]}]}),
    )
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    label_selector: Option<String>,
    field_selector: Option<String>,
    resource_version: Option<String>,
    watch: Option<String>,
    allow_watch_bookmarks: Option<bool>,
    send_initial_events: Option<bool>,
    timeout_seconds: Option<u64>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

async fn list_all(State(cluster): State<Arc<Cluster>>, Query(q): Query<ListQuery>) -> Response {
    list_or_watch(cluster, None, q).await
}

async fn list_in(State(cluster): State<Arc<Cluster>>, Path(ns): Path<String>, Query(q): Query<ListQuery>) -> Response {
    list_or_watch(cluster, Some(ns), q).await
}

fn pod_json(pod: &Pod) -> Value {
    serde_json::to_value(pod).unwrap_or(Value::Null)
}

async fn list_or_watch(cluster: Arc<Cluster>, ns: Option<String>, q: ListQuery) -> Response {
    let labels = match LabelSelector::parse(q.label_selector.as_deref().unwrap_or("")) {
        Ok(l) => l,
        Err(e) => return status(400, "BadRequest", &format!("unable to parse requirement: {e}"), None),
    };
    let fields = match FieldSelector::parse(q.field_selector.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(e) => return status(400, "BadRequest", &e, None),
    };
    let watching = matches!(q.watch.as_deref(), Some("true" | "1"));
    if watching {
        if let Some(fault) = injected(&cluster, Verb::Watch) {
            return fault;
        }
        return watch(cluster, ns, labels, fields, q);
    }
    if let Some(fault) = injected(&cluster, Verb::List) {
        return fault;
    }
    let after: Option<Key> = match q.continue_.as_deref().filter(|c| !c.is_empty()) {
        Some(token) => match token.split_once('/') {
            Some((ns, name)) => Some((ns.to_owned(), name.to_owned())),
            None => return status(400, "BadRequest", "invalid continue token", None),
        },
        None => None,
    };
    let (items, rv, next) = cluster.list(
        ns.as_deref(),
        &labels,
        &fields,
        after.as_ref(),
        q.limit.filter(|l| *l > 0),
    );
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some((ns, name)) = next {
        metadata["continue"] = json!(format!("{ns}/{name}"));
    }
    // List items carry no kind and apiVersion, as the real API server sends them.
    let items: Vec<Value> = items
        .iter()
        .map(|pod| {
            let mut v = pod_json(pod);
            if let Some(o) = v.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            v
        })
        .collect();
    Json(json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items})).into_response()
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut bytes = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": metadata}),
    )
}

fn watch(
    cluster: Arc<Cluster>,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    q: ListQuery,
) -> Response {
    let initial = q.send_initial_events == Some(true);
    let from = match q.resource_version.as_deref() {
        None | Some("" | "0") => From::Now,
        Some(_) if initial => From::Now,
        Some(rv) => match rv.parse() {
            Ok(rv) => From::After(rv),
            Err(_) => return status(400, "BadRequest", &format!("invalid resource version {rv:?}"), None),
        },
    };
    let behaviour = cluster.behaviour();
    let limit = Duration::from_secs(
        q.timeout_seconds
            .unwrap_or(behaviour.max_watch_seconds)
            .min(behaviour.max_watch_seconds),
    );
    let bookmarks = q.allow_watch_bookmarks == Some(true);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let wanted = move |pod: &Pod| {
        ns.as_deref()
            .is_none_or(|ns| pod.metadata.namespace.as_deref() == Some(ns))
            && labels.matches(pod.metadata.labels.as_ref())
            && fields.matches(pod)
    };
    // What a watch sends of an event, as a real API server's watch cache does: a Pod that
    // starts matching the selectors arrives as ADDED, one that stops as DELETED.
    let seen = move |event: &crate::cluster::Event| -> Option<&'static str> {
        let now = wanted(&event.pod);
        let before = match (&event.previous_labels, event.kind) {
            (Some(labels), "MODIFIED") => {
                let mut old = event.pod.clone();
                old.metadata.labels.clone_from(labels);
                wanted(&old)
            }
            _ => now,
        };
        match (event.kind, before, now) {
            ("MODIFIED", false, true) => Some("ADDED"),
            ("MODIFIED", true, false) => Some("DELETED"),
            (kind, _, true) => Some(kind),
            _ => None,
        }
    };
    match cluster.watch(from) {
        Err(too_old) => {
            // As the real API server: a 200 whose one event is an ERROR carrying 410 Gone.
            let object = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {} ({})", too_old.asked, too_old.oldest),
                "reason": "Expired", "code": 410});
            let _ = tx.try_send(Ok(line("ERROR", object)));
        }
        Ok(crate::cluster::Subscription {
            first,
            mut live,
            mut cuts,
        }) => {
            let interval = Duration::from_millis(behaviour.bookmark_interval_ms.max(10));
            tokio::spawn(async move {
                let mut last = cluster.resource_version();
                for event in first {
                    last = last.max(event.resource_version);
                    if let Some(kind) = seen(&event)
                        && tx.send(Ok(line(kind, pod_json(&event.pod)))).await.is_err()
                    {
                        return;
                    }
                }
                if initial && bookmarks && tx.send(Ok(bookmark(last, true))).await.is_err() {
                    return;
                }
                let end = tokio::time::sleep(limit);
                tokio::pin!(end);
                let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                loop {
                    tokio::select! {
                        () = &mut end => return,
                        () = tx.closed() => return,
                        _ = cuts.changed() => {
                            let _ = tx.send(Err(std::io::Error::other("kube-sim: watch cut"))).await;
                            return;
                        }
                        _ = ticks.tick(), if bookmarks => {
                            if tx.send(Ok(bookmark(cluster.resource_version(), false))).await.is_err() {
                                return;
                            }
                        }
                        event = live.recv() => match event {
                            Ok(event) => {
                                if let Some(kind) = seen(&event)
                                    && tx.send(Ok(line(kind, pod_json(&event.pod)))).await.is_err()
                                {
                                    return;
                                }
                            }
                            // Too slow a reader: cut it; it resumes from its last version.
                            Err(RecvError::Lagged(_)) => {
                                let _ = tx.send(Err(std::io::Error::other("kube-sim: watcher too slow"))).await;
                                return;
                            }
                            Err(RecvError::Closed) => return,
                        },
                    }
                }
            });
        }
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(500, "InternalError", "building the watch response", None))
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateQuery {
    field_validation: Option<String>,
    dry_run: Option<String>,
}

async fn create(
    State(cluster): State<Arc<Cluster>>,
    Path(ns): Path<String>,
    Query(q): Query<CreateQuery>,
    body: Bytes,
) -> Response {
    faulted_write(&cluster, Verb::Create, || create_pod(&cluster, ns, &q, &body))
}

fn create_pod(cluster: &Arc<Cluster>, ns: String, q: &CreateQuery, body: &[u8]) -> Response {
    let sent: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return status(400, "BadRequest", &format!("the body is not JSON: {e}"), None),
    };
    if sent.get("kind").and_then(Value::as_str).is_some_and(|k| k != "Pod") {
        return status(400, "BadRequest", "the body is not a Pod", None);
    }
    let mut pod: Pod = match serde_json::from_value(sent.clone()) {
        Ok(p) => p,
        Err(e) => return status(400, "BadRequest", &format!("the body is not a valid Pod: {e}"), None),
    };
    let name_for = |pod: &Pod| pod.metadata.name.clone().unwrap_or_default();
    // The namespace must exist (then the Pod must be valid, and its Pod Security level admit
    // it: the order in which a real API server's admission refuses).
    let Some(level) = cluster.node.namespaces.get(&ns) else {
        return status(
            404,
            "NotFound",
            &format!("namespaces {ns:?} not found"),
            Some(json!({"name": ns, "kind": "namespaces"})),
        );
    };
    let mut unknown = Vec::new();
    validate::unknown_fields(&sent, &pod_json(&pod), "", &mut unknown);
    let directive = q
        .field_validation
        .as_deref()
        .unwrap_or(if cluster.node.strict_by_default {
            "Strict"
        } else {
            "Warn"
        });
    let mut causes = validate::pod(&pod, &ns);
    if directive == "Strict" {
        causes.extend(unknown.iter().map(|field| validate::Cause {
            reason: "FieldValueInvalid",
            field: field.clone(),
            message: format!("unknown field {field:?}"),
        }));
    }
    if !causes.is_empty() {
        let message = format!(
            "Pod {:?} is invalid: {}",
            name_for(&pod),
            causes
                .iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let details = json!({"name": name_for(&pod), "kind": "Pod", "causes": causes});
        return status(422, "Invalid", &message, Some(details));
    }
    if let Some(level) = level {
        let violations = crate::pod_security::violations(&pod, level);
        if !violations.is_empty() {
            return status(
                403,
                "Forbidden",
                &format!(
                    "pods {:?} is forbidden: violates PodSecurity \"{level}:latest\": {}",
                    name_for(&pod),
                    violations.join(", ")
                ),
                Some(json!({"name": name_for(&pod), "kind": "pods"})),
            );
        }
    }
    if pod.metadata.name.is_none()
        && let Some(prefix) = &pod.metadata.generate_name
    {
        pod.metadata.name = Some(format!("{prefix}{:05x}", cluster.resource_version() & 0xfffff));
    }
    if q.dry_run.is_some() {
        return (StatusCode::CREATED, Json(pod_json(&pod))).into_response();
    }
    let name = name_for(&pod);
    match cluster.create(&ns, pod) {
        Some(pod) => {
            let mut response = (StatusCode::CREATED, Json(pod_json(&pod))).into_response();
            if directive == "Warn" {
                for field in &unknown {
                    if let Ok(v) = HeaderValue::from_str(&format!("299 - \"unknown field \\\"{field}\\\"\"")) {
                        response.headers_mut().append("warning", v);
                    }
                }
            }
            response
        }
        None => status(
            409,
            "AlreadyExists",
            &format!("pods {name:?} already exists"),
            Some(json!({"name": name, "kind": "pods"})),
        ),
    }
}

fn not_found(name: &str) -> Response {
    status(
        404,
        "NotFound",
        &format!("pods {name:?} not found"),
        Some(json!({"name": name, "kind": "pods"})),
    )
}

async fn read(State(cluster): State<Arc<Cluster>>, Path((ns, name)): Path<(String, String)>) -> Response {
    if let Some(fault) = injected(&cluster, Verb::Get) {
        return fault;
    }
    match cluster.get(&(ns, name.clone())) {
        Some(pod) => Json(pod_json(&pod)).into_response(),
        None => not_found(&name),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeleteQuery {
    grace_period_seconds: Option<i64>,
    dry_run: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PatchQuery {
    dry_run: Option<String>,
}

async fn delete(
    State(cluster): State<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
    body: Bytes,
) -> Response {
    faulted_write(&cluster, Verb::Delete, || delete_pod(&cluster, ns, name, &q, &body))
}

fn delete_pod(cluster: &Cluster, ns: String, name: String, q: &DeleteQuery, body: &[u8]) -> Response {
    let options: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return status(400, "BadRequest", &format!("DeleteOptions are not JSON: {e}"), None),
        }
    };
    let grace = options
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or(q.grace_period_seconds);
    let version = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str);
    // A dry run checks what a delete would, and deletes nothing.
    if q.dry_run.is_some()
        || options
            .get("dryRun")
            .is_some_and(|d| d.as_array().is_some_and(|a| !a.is_empty()))
    {
        return match cluster.get(&(ns, name.clone())) {
            None => not_found(&name),
            Some(pod) if version.is_some_and(|v| pod.metadata.resource_version.as_deref() != Some(v)) => status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on pods {name:?}: the ResourceVersion in the precondition does not match"
                ),
                Some(json!({"name": name, "kind": "pods"})),
            ),
            Some(pod) => Json(pod_json(&pod)).into_response(),
        };
    }
    match cluster.delete_if(&(ns, name.clone()), grace, version) {
        Ok(Some(pod)) => Json(pod_json(&pod)).into_response(),
        Ok(None) | Err(PatchError::NotFound) => not_found(&name),
        Err(PatchError::Conflict(message)) => {
            status(409, "Conflict", &message, Some(json!({"name": name, "kind": "pods"})))
        }
        Err(PatchError::Invalid(message)) => status(422, "Invalid", &message, None),
    }
}

/// A merge patch (`application/merge-patch+json`; a strategic merge patch is applied the same
/// way, which is what it does to labels, annotations and scalars). JSON patches and server-side
/// apply are not served.
async fn patch(
    State(cluster): State<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<PatchQuery>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let dry_run = q.dry_run.is_some();
    faulted_write(&cluster, Verb::Patch, || {
        patch_pod(&cluster, ns, name, dry_run, &headers, &body)
    })
}

fn patch_pod(
    cluster: &Cluster,
    ns: String,
    name: String,
    dry_run: bool,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !matches!(
        media,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return status(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
            None,
        );
    }
    let sent: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return status(400, "BadRequest", "a merge patch is a JSON object", None),
        Err(e) => return status(400, "BadRequest", &format!("the body is not JSON: {e}"), None),
    };
    match cluster.patch_or_try(&(ns, name.clone()), &sent, dry_run) {
        Ok(pod) => Json(pod_json(&pod)).into_response(),
        Err(PatchError::NotFound) => not_found(&name),
        Err(PatchError::Conflict(message)) => {
            status(409, "Conflict", &message, Some(json!({"name": name, "kind": "pods"})))
        }
        Err(PatchError::Invalid(message)) => status(
            422,
            "Invalid",
            &format!("Pod {name:?} is invalid: {message}"),
            Some(json!({"name": name, "kind": "Pod"})),
        ),
    }
}

async fn behaviour(State(cluster): State<Arc<Cluster>>) -> Json<Behaviour> {
    Json(cluster.behaviour())
}

async fn set_behaviour(State(cluster): State<Arc<Cluster>>, Json(behaviour): Json<Behaviour>) -> Json<Behaviour> {
    cluster.set_behaviour(behaviour);
    Json(cluster.behaviour())
}

async fn add_fault(State(cluster): State<Arc<Cluster>>, Json(fault): Json<Fault>) -> Response {
    if !(400..=599).contains(&fault.code) {
        return status(
            400,
            "BadRequest",
            "a fault's code is an HTTP error status (400-599)",
            None,
        );
    }
    cluster.add_fault(fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn cut_watches(State(cluster): State<Arc<Cluster>>) -> StatusCode {
    cluster.cut_watches();
    StatusCode::NO_CONTENT
}

async fn compact(State(cluster): State<Arc<Cluster>>) -> StatusCode {
    cluster.compact();
    StatusCode::NO_CONTENT
}

async fn records(State(cluster): State<Arc<Cluster>>) -> Response {
    Json(cluster.records()).into_response()
}

async fn calls(State(cluster): State<Arc<Cluster>>) -> Response {
    let calls: Vec<Value> = cluster
        .calls()
        .into_iter()
        .map(|(call, count)| {
            json!({"verb": call.verb, "api_group": call.api_group, "resource": call.resource,
                "namespace": call.namespace, "allowed": count.allowed, "forbidden": count.forbidden})
        })
        .collect();
    Json(calls).into_response()
}

/// Every caller → Pod port kube-sim relayed, with the connections let through and refused by
/// the NetworkPolicies it enforces (empty when it enforces none).
async fn network(State(cluster): State<Arc<Cluster>>) -> Response {
    let flows = crate::node::PodStorage::config(cluster.as_ref())
        .network
        .as_ref()
        .map(|n| n.flows())
        .unwrap_or_default();
    Json(flows).into_response()
}

async fn pod_action(
    State(cluster): State<Arc<Cluster>>,
    Path((ns, name, action)): Path<(String, String, String)>,
) -> Response {
    let key = (ns, name.clone());
    let done = match action.as_str() {
        "evict" => cluster.tell_kubelet(&key, Command::Evict),
        "kill" => cluster.tell_kubelet(&key, Command::Kill),
        "unready" => cluster.tell_kubelet(&key, Command::Unready),
        "delete" => cluster.delete(&key, None).is_some(),
        _ => return status(404, "NotFound", "actions: evict, kill, unready, delete", None),
    };
    if done {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(&name)
    }
}
