//! The kubernetes runtime against a scripted API server: every call's method, path, query and
//! body are checked and answered as the real API would (the controller-rs `ApiServerVerifier`
//! pattern, on `tower_test::mock::pair`). The reaper and reconcile also use the real Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use backend::runtime::kubernetes::{KubernetesRuntime, PodTemplate, pod_name, reconcile, render_pod};
use backend::runtime::{ServerExit, ServerSpec, SessionBook, SessionRuntime, StartError};
use backend::sessions::Sessions;
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use matchmaking_core::store::{FormRules, PlayerView, now_ms};
use protocol::sessions::SessionState;
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

const NS: &str = "games";

fn mock() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, NS), handle)
}

fn template() -> PodTemplate {
    common::pod_template(NS)
}

fn spec(sid: &str, ready_timeout: Duration) -> ServerSpec {
    ServerSpec {
        session_id: sid.into(),
        players: vec!["a".into(), "b".into()],
        teams: Vec::new(),
        report_url: format!("http://matchplane-backend:8081/internal/sessions/{sid}/result"),
        report_token: "token".into(),
        ready_timeout,
        queue: "default".into(),
        profile: std::sync::Arc::new(backend::runtime::Profile::builtin()),
        region: None,
        sdk_ready: backend::runtime::SdkReady::never(),
    }
}

struct Call {
    method: Method,
    uri: String,
    body: Value,
}

async fn next(handle: &mut Handle) -> (Call, Reply) {
    let (request, reply) = timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("an API call within 10 s")
        .expect("the client is alive");
    let method = request.method().clone();
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (Call { method, uri, body }, reply)
}

fn respond(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn failure(code: u16, reason: &str) -> Response<Body> {
    respond(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("scripted {reason}"), "reason": reason, "code": code}),
    )
}

fn events(events: &[(&str, Value)]) -> Response<Body> {
    let lines: String = events
        .iter()
        .map(|(kind, object)| format!("{}\n", json!({"type": kind, "object": object})))
        .collect();
    Response::builder()
        .status(200)
        .body(Body::from(lines.into_bytes()))
        .unwrap()
}

static RESOURCE_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100);

/// The Pod the runtime renders for `sid`, with this status and a fresh resource version.
fn pod(sid: &str, phase: &str, ready: bool, ip: Option<&str>) -> Value {
    let mut pod = serde_json::to_value(render_pod(&template(), &spec(sid, Duration::from_secs(1)))).unwrap();
    let rv = RESOURCE_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    pod["metadata"]["resourceVersion"] = json!(rv.to_string());
    pod["status"] = json!({
        "phase": phase,
        "podIP": ip,
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    });
    pod
}

fn pod_list(items: &[Value], resource_version: &str) -> Response<Body> {
    respond(
        200,
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": resource_version}, "items": items}),
    )
}

const SELECTOR: &str = "labelSelector=app.kubernetes.io%2Fname%3Dmatchplane-game-server";

fn is_list(call: &Call) -> bool {
    call.method == Method::GET && !call.uri.contains("watch=true")
}

fn is_watch(call: &Call) -> bool {
    call.method == Method::GET && call.uri.contains("watch=true")
}

fn is_create(call: &Call) -> bool {
    call.method == Method::POST
}

fn is_delete(call: &Call) -> bool {
    call.method == Method::DELETE
}

/// The scripted API server: calls arrive from the Pod watch and from sessions at once, so a
/// test takes the next call of the kind it expects and holds the others for later.
struct Script {
    handle: Handle,
    held: Vec<(Call, Reply)>,
}

impl Script {
    async fn take(&mut self, want: fn(&Call) -> bool) -> (Call, Reply) {
        if let Some(i) = self.held.iter().position(|(call, _)| want(call)) {
            return self.held.remove(i);
        }
        loop {
            let (call, reply) = next(&mut self.handle).await;
            if want(&call) {
                return (call, reply);
            }
            self.held.push((call, reply));
        }
    }

    /// The watch's first list: of every game-server Pod, by label, paged.
    async fn list(&mut self, items: &[Value], resource_version: &str) {
        let (call, reply) = self.take(is_list).await;
        assert!(
            call.uri.starts_with(&format!("/api/v1/namespaces/{NS}/pods?")),
            "{}",
            call.uri
        );
        assert!(call.uri.contains(SELECTOR), "{}", call.uri);
        assert!(call.uri.contains("limit=500"), "{}", call.uri);
        assert!(!call.uri.contains("fieldSelector"), "never one pod: {}", call.uri);
        reply.send_response(pod_list(items, resource_version));
    }

    /// The next watch call, which must resume from `resource_version`; answered with `sent`
    /// (after which that watch call ends and the runtime watches again).
    async fn watch(&mut self, resource_version: &str, sent: &[(&str, Value)]) {
        let (call, reply) = self.take(is_watch).await;
        assert!(call.uri.contains(SELECTOR), "{}", call.uri);
        assert!(call.uri.contains("allowWatchBookmarks=true"), "{}", call.uri);
        assert!(call.uri.contains("timeoutSeconds=15"), "{}", call.uri);
        assert!(
            call.uri.contains(&format!("resourceVersion={resource_version}")),
            "resumes from {resource_version}: {}",
            call.uri
        );
        assert!(!call.uri.contains("fieldSelector"), "never one pod: {}", call.uri);
        reply.send_response(events(sent));
    }

    /// The create of `sid`'s pod, answered with `status`.
    async fn create(&mut self, sid: &str, status: u16) -> Call {
        let (call, reply) = self.take(is_create).await;
        assert_eq!(call.uri, format!("/api/v1/namespaces/{NS}/pods?"));
        assert_eq!(call.body["metadata"]["name"], pod_name(sid));
        if status == 201 {
            reply.send_response(respond(201, &call.body));
        } else {
            reply.send_response(failure(status, "Scripted"));
        }
        call
    }
}

fn rv_of(pod: &Value) -> String {
    pod["metadata"]["resourceVersion"].as_str().unwrap().to_owned()
}

fn mock_script() -> (kube::Client, Script) {
    let (client, handle) = mock();
    (
        client,
        Script {
            handle,
            held: Vec::new(),
        },
    )
}

fn runtime(client: kube::Client) -> Arc<KubernetesRuntime> {
    Arc::new(KubernetesRuntime::new(client, template()).with_backoff(Duration::from_millis(10)))
}

type Started = tokio::task::JoinHandle<Result<Box<dyn backend::runtime::ServerHandle>, StartError>>;

fn start(runtime: &Arc<KubernetesRuntime>, spec: ServerSpec) -> Started {
    let runtime = runtime.clone();
    tokio::spawn(async move { runtime.start(spec).await })
}

#[tokio::test]
async fn create_then_follow_the_one_pod_watch_until_ready_gives_the_pod_address() {
    let (client, mut api) = mock_script();
    let sid = "0a0a0a0a-0000-4000-8000-000000000001";
    let started = start(&runtime(client), spec(sid, Duration::from_secs(30)));
    api.list(&[], "5").await;
    let call = api.create(sid, 201).await;
    let want = serde_json::to_value(render_pod(&template(), &spec(sid, Duration::from_secs(30)))).unwrap();
    assert_eq!(call.body, want, "the body is exactly the rendered pod");
    api.watch(
        "5",
        &[
            ("ADDED", pod(sid, "Pending", false, None)),
            ("MODIFIED", pod(sid, "Running", false, Some("10.1.2.3"))),
            ("MODIFIED", pod(sid, "Running", true, Some("10.1.2.3"))),
        ],
    )
    .await;
    let server = started.await.unwrap().unwrap();
    assert_eq!(
        (server.name(), server.addr()),
        (pod_name(sid).as_str(), "10.1.2.3:7777")
    );
}

#[tokio::test]
async fn one_watch_serves_every_session() {
    let (client, mut api) = mock_script();
    let runtime = runtime(client);
    let sids: Vec<String> = (0..3)
        .map(|i| format!("0a0a0a0a-0000-4000-8000-00000000010{i}"))
        .collect();
    let started: Vec<Started> = sids
        .iter()
        .map(|sid| start(&runtime, spec(sid, Duration::from_secs(30))))
        .collect();
    api.list(&[], "5").await;
    for _ in &sids {
        let (call, reply) = api.take(is_create).await;
        reply.send_response(respond(201, &call.body));
    }
    let ready: Vec<(&str, Value)> = sids
        .iter()
        .enumerate()
        .map(|(i, sid)| ("ADDED", pod(sid, "Running", true, Some(&format!("10.0.0.{}", i + 1)))))
        .collect();
    api.watch("5", &ready).await;
    for (i, started) in started.into_iter().enumerate() {
        assert_eq!(started.await.unwrap().unwrap().addr(), format!("10.0.0.{}:7777", i + 1));
    }
    assert!(
        api.held.iter().all(|(call, _)| is_watch(call)),
        "nothing but the resumed watch: {:?}",
        api.held.iter().map(|(c, _)| &c.uri).collect::<Vec<_>>()
    );
    assert!(api.held.len() <= 1);
}

#[tokio::test]
async fn a_pod_that_fails_fails_the_start_and_is_deleted() {
    let (client, mut api) = mock_script();
    let sid = "0a0a0a0a-0000-4000-8000-000000000002";
    let started = start(&runtime(client), spec(sid, Duration::from_secs(30)));
    api.list(&[], "5").await;
    api.create(sid, 201).await;
    api.watch("5", &[("MODIFIED", pod(sid, "Failed", false, None))]).await;
    let (call, reply) = api.take(is_delete).await;
    assert_eq!(call.uri, format!("/api/v1/namespaces/{NS}/pods/{}?", pod_name(sid)));
    assert_eq!(call.body["gracePeriodSeconds"], 0);
    reply.send_response(respond(200, &pod(sid, "Failed", false, None)));
    assert!(matches!(started.await.unwrap(), Err(StartError::Exited(why)) if why.contains("Failed")));
}

#[tokio::test]
async fn a_pod_not_ready_in_time_is_deleted_and_the_start_times_out() {
    let (client, mut api) = mock_script();
    let sid = "0a0a0a0a-0000-4000-8000-000000000003";
    let started = start(&runtime(client), spec(sid, Duration::from_millis(500)));
    api.list(&[], "5").await;
    api.create(sid, 201).await;
    api.watch("5", &[("ADDED", pod(sid, "Pending", false, None))]).await;
    let (call, reply) = api.take(is_delete).await;
    assert_eq!(call.uri, format!("/api/v1/namespaces/{NS}/pods/{}?", pod_name(sid)));
    reply.send_response(respond(200, &pod(sid, "Pending", false, None)));
    assert!(matches!(started.await.unwrap(), Err(StartError::Timeout(_))));
}

#[tokio::test]
async fn throttling_and_conflicts_are_retried() {
    let (client, mut api) = mock_script();
    let sid = "0a0a0a0a-0000-4000-8000-000000000004";
    let started = start(&runtime(client), spec(sid, Duration::from_secs(30)));
    api.list(&[], "5").await;
    api.create(sid, 429).await;
    api.create(sid, 500).await;
    // The earlier attempt did create it: 409 means the pod is ours, go on and follow it.
    api.create(sid, 409).await;
    api.watch("5", &[("ADDED", pod(sid, "Running", true, Some("10.9.9.9")))])
        .await;
    assert_eq!(started.await.unwrap().unwrap().addr(), "10.9.9.9:7777");
}

#[tokio::test]
async fn a_forbidden_create_fails_at_once() {
    let (client, mut api) = mock_script();
    let sid = "0a0a0a0a-0000-4000-8000-000000000005";
    let started = start(&runtime(client), spec(sid, Duration::from_secs(30)));
    api.create(sid, 403).await;
    // Cleanup after a failed start deletes the (absent) pod: a 404 is fine.
    let (_, reply) = api.take(is_delete).await;
    reply.send_response(failure(404, "NotFound"));
    assert!(matches!(started.await.unwrap(), Err(StartError::Spawn(why)) if why.contains("Scripted")));
}

/// Starts `sid`'s server against the script and returns its handle, ready at 10.0.0.9, with
/// the watch resumed at the returned resource version.
async fn ready_server(
    api: &mut Script,
    runtime: &Arc<KubernetesRuntime>,
    sid: &str,
) -> (Box<dyn backend::runtime::ServerHandle>, String) {
    let started = start(runtime, spec(sid, Duration::from_secs(30)));
    api.list(&[], "5").await;
    api.create(sid, 201).await;
    let ready = pod(sid, "Running", true, Some("10.0.0.9"));
    let rv = rv_of(&ready);
    api.watch("5", &[("ADDED", ready)]).await;
    (started.await.unwrap().unwrap(), rv)
}

#[tokio::test]
async fn a_ready_pod_that_stops_being_ready_is_lost() {
    let (client, mut api) = mock_script();
    let runtime = runtime(client);
    let sid = "0a0a0a0a-0000-4000-8000-000000000006";
    let (mut server, rv) = ready_server(&mut api, &runtime, sid).await;
    api.watch(&rv, &[("MODIFIED", pod(sid, "Running", false, Some("10.0.0.9")))])
        .await;
    let exit = timeout(Duration::from_secs(10), server.wait()).await.unwrap();
    assert_eq!(exit, ServerExit::Lost("pod no longer ready".into()));
}

#[tokio::test]
async fn a_pod_deleted_or_evicted_by_someone_else_is_lost_at_once() {
    let (client, mut api) = mock_script();
    let runtime = runtime(client);
    let sid = "0a0a0a0a-0000-4000-8000-000000000007";
    let (mut server, rv) = ready_server(&mut api, &runtime, sid).await;
    // Still running and ready, but being deleted (an eviction, `kubectl delete`): lost now,
    // not after its grace period.
    let mut deleting = pod(sid, "Running", true, Some("10.0.0.9"));
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    api.watch(&rv, &[("MODIFIED", deleting)]).await;
    let exit = timeout(Duration::from_secs(10), server.wait()).await.unwrap();
    assert!(matches!(exit, ServerExit::Lost(why) if why.contains("being deleted")));
}

#[tokio::test]
async fn a_watch_too_old_to_resume_relists_and_a_pod_missing_from_the_relist_is_lost() {
    let (client, mut api) = mock_script();
    let runtime = runtime(client);
    let sid = "0a0a0a0a-0000-4000-8000-000000000008";
    let (mut server, rv) = ready_server(&mut api, &runtime, sid).await;
    // The resource version is compacted away (410 Gone): the watcher lists again, and the
    // pod, deleted meanwhile, is not in the list.
    let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410});
    api.watch(&rv, &[("ERROR", gone)]).await;
    api.list(&[], "900").await;
    let exit = timeout(Duration::from_secs(10), server.wait()).await.unwrap();
    assert_eq!(exit, ServerExit::Lost("pod deleted".into()));
    api.watch("900", &[]).await;
}

/// A Pod of a profile whose sessions end when its server exits, seen Succeeded while its
/// session is live, completed that session: the reaper ends it `completed`, as its supervisor
/// does (on the replica that supervises it the two race to it; once, a game BZFlag played to
/// its end was recorded `failed` when the reaper got there first). One that Failed fails it.
#[tokio::test]
async fn the_reaper_completes_the_session_of_a_profile_pod_that_exited_with_status_0() {
    let (sessions, store) = sessions().await;
    let exited = ready_session(&store, &["e1", "e2"], "10.0.0.1:5154").await;
    let crashed = ready_session(&store, &["e3", "e4"], "10.0.0.2:5154").await;
    let profiles = backend::runtime::profiles::Profiles::parse(
        r"servers: {bzflag: {command: [bzfs], image: 'bzflag/bzfs:2.4.26', ports: [{name: game, protocol: tcp, container_port: 5154}], identity: none}}",
        None,
        backend::runtime::profiles::Target::Kubernetes,
    )
    .unwrap();
    let secret = protocol::TicketSecret::new(common::SECRET.as_bytes().to_vec()).unwrap();
    let (client, mut api) = mock_script();
    let stop = CancellationToken::new();
    let runtime = KubernetesRuntime::new(client, template())
        .with_backoff(Duration::from_millis(10))
        .with_reap_grace(Duration::ZERO)
        .with_profile_pools(
            &profiles,
            &secret,
            "http://matchplane-backend:8081",
            &Default::default(),
        );
    let (_, reaper) = runtime
        .tasks(Arc::new(sessions.clone()), stop.clone())
        .into_iter()
        .find(|(name, _)| *name == "pod reaper")
        .unwrap();
    let task = tokio::spawn(reaper);
    let of_profile = |sid: &str, phase: &str, ip: &str| {
        let mut pod = pod(sid, phase, false, Some(ip));
        pod["metadata"]["labels"]["matchplane.io/profile"] = json!("bzflag");
        pod
    };
    api.list(
        &[
            of_profile(&exited, "Succeeded", "10.0.0.1"),
            of_profile(&crashed, "Failed", "10.0.0.2"),
        ],
        "50",
    )
    .await;
    // Both finished Pods go (kept for no grace here).
    for _ in 0..2 {
        let (_, reply) = api.take(is_delete).await;
        reply.send_response(respond(200, &json!({})));
    }
    for (player, want) in [
        ("e1", protocol::api::EndReason::Completed),
        ("e3", protocol::api::EndReason::Failed),
    ] {
        match store.player(player).await.unwrap() {
            PlayerView::InSession { record, .. } => assert_eq!(record.end_reason, Some(want), "{player}"),
            other => panic!("{other:?}"),
        }
    }
    stop.cancel();
    drop(api);
    let _ = timeout(Duration::from_secs(5), task).await;
    drop(runtime);
}

/// The sessions service the runtime reports to, over a fresh prefix of the test Redis.
async fn sessions() -> (Sessions, matchmaking_core::store::Store) {
    let store = common::store().await;
    (Sessions::standalone(store.clone(), "replica-a"), store)
}

async fn live_session(store: &matchmaking_core::store::Store, players: &[&str]) -> String {
    for p in players {
        store.join(p, now_ms() - 60_000).await.unwrap();
    }
    let rules = FormRules {
        size: players.len() as u32,
        min_partial: 1,
        flush_wait_ms: 0,
    };
    store.form(&rules, now_ms() - 60_000, "replica-a", 1).await.unwrap()[0]
        .session_id
        .clone()
}

/// A session of `players` whose server, its Pod, is ready at `addr`.
async fn ready_session(store: &matchmaking_core::store::Store, players: &[&str], addr: &str) -> String {
    let sid = live_session(store, players).await;
    store.mark_ready(&sid, &pod_name(&sid), addr, now_ms()).await.unwrap();
    sid
}

#[tokio::test]
async fn the_reaper_ends_a_finished_pods_session_and_deletes_finished_and_orphaned_pods() {
    let (sessions, store) = sessions().await;
    let finished = ready_session(&store, &["r1", "r2"], "10.0.0.1:7777").await;
    let stopped = ready_session(&store, &["r3", "r4"], "10.0.0.2:7777").await;
    store
        .end_session(&stopped, protocol::api::EndReason::Stopped, now_ms(), None)
        .await
        .unwrap();
    // A pod whose session is over and which is already being deleted: left alone.
    let terminating = live_session(&store, &["r5", "r6"]).await;
    store
        .end_session(&terminating, protocol::api::EndReason::Stopped, now_ms(), None)
        .await
        .unwrap();
    let mut terminating_pod = pod(&terminating, "Running", true, Some("10.0.0.3"));
    terminating_pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");

    let (client, mut api) = mock_script();
    let stop = CancellationToken::new();
    let runtime = KubernetesRuntime::new(client, template())
        .with_backoff(Duration::from_millis(10))
        .with_reap_grace(Duration::ZERO);
    let mut tasks = runtime.tasks(Arc::new(sessions.clone()), stop.clone());
    assert_eq!(tasks.len(), 1);
    let (name, reaper) = tasks.remove(0);
    assert_eq!(name, "pod reaper");
    let task = tokio::spawn(reaper);
    // The reaper acts on what the runtime's one pod watch lists and sees.
    api.list(
        &[
            terminating_pod,
            pod(&finished, "Succeeded", false, Some("10.0.0.1")),
            pod(&stopped, "Running", true, Some("10.0.0.2")),
        ],
        "50",
    )
    .await;
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        let (call, reply) = api.take(is_delete).await;
        deleted.push(call.uri.clone());
        reply.send_response(respond(200, &json!({})));
    }
    deleted.sort();
    let mut want = vec![
        format!("/api/v1/namespaces/{NS}/pods/{}?", pod_name(&finished)),
        format!("/api/v1/namespaces/{NS}/pods/{}?", pod_name(&stopped)),
    ];
    want.sort();
    assert_eq!(deleted, want);
    // A change the watch saw before the deletion (the Pod still running, no deletion mark)
    // does not delete it again; the next delete is the stray Pod of a session nobody knows.
    let unknown = "0a0a0a0a-0000-4000-8000-0000000000ff";
    api.watch(
        "50",
        &[
            ("MODIFIED", pod(&stopped, "Running", true, Some("10.0.0.2"))),
            ("ADDED", pod(unknown, "Running", true, Some("10.0.0.4"))),
        ],
    )
    .await;
    let (call, reply) = api.take(is_delete).await;
    reply.send_response(respond(200, &json!({})));
    assert_eq!(call.uri, format!("/api/v1/namespaces/{NS}/pods/{}?", pod_name(unknown)));
    match store.player("r1").await.unwrap() {
        PlayerView::InSession { record, .. } => {
            assert_eq!(record.state, SessionState::Ended);
            assert_eq!(
                record.end_reason,
                Some(protocol::api::EndReason::Failed),
                "finished without a report"
            );
        }
        other => panic!("{other:?}"),
    }
    match store.player("r3").await.unwrap() {
        PlayerView::InSession { record, .. } => assert_eq!(
            record.end_reason,
            Some(protocol::api::EndReason::Stopped),
            "first end wins"
        ),
        other => panic!("{other:?}"),
    }
    stop.cancel();
    drop(api);
    let _ = timeout(Duration::from_secs(5), task).await;
    drop(runtime);
}

/// A Pod whose server reported its result is exiting by itself: it is kept for the finished
/// Pods' grace (for `kubectl logs`), not deleted the moment its session ends; a Pod whose
/// session an operator stopped, without a report, is deleted at once.
#[tokio::test]
async fn a_pod_that_reported_is_kept_for_the_grace_and_a_stopped_one_is_not() {
    let (sessions, store) = sessions().await;
    let reported = ready_session(&store, &["g1", "g2"], "10.0.1.1:7777").await;
    let report = json!({"session_id": reported, "end_reason": "completed", "requested_seconds": null,
        "started_at": null, "ended_at": "2026-01-01T00:00:00Z", "players": []})
    .to_string();
    store
        .end_session(&reported, protocol::api::EndReason::Completed, now_ms(), Some(&report))
        .await
        .unwrap();
    let (client, mut api) = mock_script();
    let stop = CancellationToken::new();
    let runtime = KubernetesRuntime::new(client, template())
        .with_backoff(Duration::from_millis(10))
        .with_reap_grace(Duration::from_secs(2));
    let mut tasks = runtime.tasks(Arc::new(sessions.clone()), stop.clone());
    let task = tokio::spawn(tasks.remove(0).1);
    api.list(&[pod(&reported, "Running", true, Some("10.0.1.1"))], "70")
        .await;
    let began = std::time::Instant::now();
    let (call, reply) = timeout(Duration::from_secs(10), api.take(is_delete)).await.unwrap();
    reply.send_response(respond(200, &json!({})));
    assert_eq!(
        call.uri,
        format!("/api/v1/namespaces/{NS}/pods/{}?", pod_name(&reported))
    );
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "kept for the grace, not {:?}",
        began.elapsed()
    );
    // An operator's stop, no report: its still running Pod goes at once.
    let stopped = ready_session(&store, &["g3", "g4"], "10.0.1.2:7777").await;
    store
        .end_session(&stopped, protocol::api::EndReason::Stopped, now_ms(), None)
        .await
        .unwrap();
    api.watch("70", &[("ADDED", pod(&stopped, "Running", true, Some("10.0.1.2")))])
        .await;
    let began = std::time::Instant::now();
    let (call, reply) = timeout(Duration::from_secs(10), api.take(is_delete)).await.unwrap();
    reply.send_response(respond(200, &json!({})));
    assert_eq!(
        call.uri,
        format!("/api/v1/namespaces/{NS}/pods/{}?", pod_name(&stopped))
    );
    assert!(
        began.elapsed() < Duration::from_millis(1500),
        "at once, not {:?}",
        began.elapsed()
    );
    stop.cancel();
    drop(api);
    let _ = timeout(Duration::from_secs(5), task).await;
    drop(runtime);
}

#[tokio::test]
async fn reconcile_deletes_orphan_pods_and_fails_sessions_without_a_pod() {
    let (sessions, store) = sessions().await;
    let with_pod = live_session(&store, &["c1", "c2"]).await;
    let without_pod = live_session(&store, &["c3", "c4"]).await;
    let orphan = "0a0a0a0a-0000-4000-8000-00000000dead";
    let gone = "0a0a0a0a-0000-4000-8000-00000000beef";
    let (client, mut api) = mock();
    let pods = kube::Api::<Pod>::namespaced(client, NS);
    let task = tokio::spawn({
        let sessions = sessions.clone();
        async move { reconcile(&pods, &sessions, Duration::from_secs(1)).await.unwrap() }
    });
    let (call, reply) = next(&mut api).await;
    assert_eq!(call.method, Method::GET);
    assert!(!call.uri.contains("watch=true"));
    assert!(
        call.uri
            .contains("labelSelector=app.kubernetes.io%2Fname%3Dmatchplane-game-server"),
        "{}",
        call.uri
    );
    reply.send_response(respond(
        200,
        &json!({
            "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
            "items": [pod(&with_pod, "Running", true, Some("10.0.0.5")), pod(orphan, "Running", true, Some("10.0.0.6")),
                      pod(gone, "Running", true, Some("10.0.0.7"))],
        }),
    ));
    let (call, reply) = next(&mut api).await;
    assert_eq!(
        (call.method.clone(), call.uri.as_str()),
        (
            Method::DELETE,
            format!("/api/v1/namespaces/{NS}/pods/{}?", pod_name(orphan)).as_str()
        )
    );
    reply.send_response(respond(200, &json!({})));
    // Gone by the time reconcile deletes it (another replica was quicker): not counted.
    let (call, reply) = next(&mut api).await;
    assert_eq!(
        (call.method.clone(), call.uri.as_str()),
        (
            Method::DELETE,
            format!("/api/v1/namespaces/{NS}/pods/{}?", pod_name(gone)).as_str()
        )
    );
    reply.send_response(failure(404, "NotFound"));
    assert_eq!(
        task.await.unwrap(),
        (1, 1),
        "one pod really deleted, one session failed"
    );
    // The session without a pod failed; it was still allocating, so its players are queued again.
    assert_eq!(store.queued_players().await.unwrap(), vec!["c3", "c4"]);
    assert!(
        store
            .live_sessions()
            .await
            .unwrap()
            .iter()
            .all(|s| s.session_id != without_pod)
    );
    assert!(
        store
            .live_sessions()
            .await
            .unwrap()
            .iter()
            .any(|s| s.session_id == with_pod)
    );
}

/// A book of sessions in memory: what a runtime reads and reports, without Redis.
#[derive(Default)]
struct MemoryBook {
    live: Vec<matchmaking_core::store::LiveSession>,
    lost: std::sync::Mutex<Vec<(String, String)>>,
}

impl SessionBook for MemoryBook {
    fn instance(&self) -> &str {
        "memory"
    }

    fn live(
        &self,
    ) -> futures_util::future::BoxFuture<'_, matchmaking_core::store::Result<Vec<matchmaking_core::store::LiveSession>>>
    {
        Box::pin(async { Ok(self.live.clone()) })
    }

    fn record<'a>(
        &'a self,
        session_id: &'a str,
    ) -> futures_util::future::BoxFuture<'a, matchmaking_core::store::Result<Option<protocol::sessions::SessionRecord>>>
    {
        Box::pin(async move {
            Ok(self
                .live
                .iter()
                .find(|s| s.session_id == session_id)
                .map(|s| s.record.clone()))
        })
    }

    fn server_lost<'a>(
        &'a self,
        session_id: &'a str,
        why: &'a str,
    ) -> futures_util::future::BoxFuture<'a, matchmaking_core::store::Result<()>> {
        self.lost.lock().unwrap().push((session_id.to_owned(), why.to_owned()));
        Box::pin(async { Ok(()) })
    }

    fn server_completed<'a>(
        &'a self,
        session_id: &'a str,
        why: &'a str,
    ) -> futures_util::future::BoxFuture<'a, matchmaking_core::store::Result<()>> {
        self.lost
            .lock()
            .unwrap()
            .push((session_id.to_owned(), format!("completed: {why}")));
        Box::pin(async { Ok(()) })
    }

    fn warm_pool_lease(
        &self,
        _ttl: Duration,
    ) -> futures_util::future::BoxFuture<'_, matchmaking_core::store::Result<bool>> {
        Box::pin(async { Ok(true) })
    }

    fn warm_server_state<'a>(
        &'a self,
        _id: &'a str,
    ) -> futures_util::future::BoxFuture<'a, matchmaking_core::store::Result<(bool, bool)>> {
        Box::pin(async { Ok((false, false)) })
    }

    fn offer_warm<'a>(
        &'a self,
        _id: &'a str,
        _session: &'a protocol::api::WarmSession,
    ) -> futures_util::future::BoxFuture<'a, matchmaking_core::store::Result<bool>> {
        Box::pin(async { Ok(false) })
    }
}

fn allocating(session_id: &str, players: &[&str]) -> matchmaking_core::store::LiveSession {
    let record: protocol::sessions::SessionRecord = serde_json::from_value(json!({
        "state": "allocating", "players": players, "joined_ms": players.iter().map(|_| 0).collect::<Vec<_>>(),
        "created_ms": now_ms() - 60_000, "instance": "replica-a",
    }))
    .unwrap();
    matchmaking_core::store::LiveSession {
        session_id: session_id.to_owned(),
        record,
    }
}

/// The runtime through its seam alone: no Redis, a scripted API server. Reconcile reports the
/// session without a Pod to its book (and nothing else), and deletes the Pod of no session.
#[tokio::test]
async fn reconcile_reports_to_its_book_without_redis() {
    let with_pod = "0a0a0a0a-0000-4000-8000-0000000000a1";
    let without_pod = "0a0a0a0a-0000-4000-8000-0000000000a2";
    let orphan = "0a0a0a0a-0000-4000-8000-0000000000a3";
    let book = Arc::new(MemoryBook {
        live: vec![
            allocating(with_pod, &["b1", "b2"]),
            allocating(without_pod, &["b3", "b4"]),
        ],
        ..MemoryBook::default()
    });
    let (client, mut api) = mock();
    let pods = kube::Api::<Pod>::namespaced(client, NS);
    let task = tokio::spawn({
        let book = book.clone();
        async move { reconcile(&pods, book.as_ref(), Duration::from_secs(1)).await.unwrap() }
    });
    let (call, reply) = next(&mut api).await;
    assert_eq!(call.method, Method::GET);
    reply.send_response(respond(
        200,
        &json!({
            "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "3"},
            "items": [pod(with_pod, "Running", true, Some("10.0.0.5")), pod(orphan, "Running", true, Some("10.0.0.6"))],
        }),
    ));
    let (call, reply) = next(&mut api).await;
    assert_eq!(
        (call.method.clone(), call.uri.as_str()),
        (
            Method::DELETE,
            format!("/api/v1/namespaces/{NS}/pods/{}?", pod_name(orphan)).as_str()
        )
    );
    reply.send_response(respond(200, &json!({})));
    assert_eq!(task.await.unwrap(), (1, 1));
    let lost = book.lost.lock().unwrap().clone();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].0, without_pod);
}

#[test]
fn the_pod_meets_the_restricted_pod_security_standard() {
    let pod = render_pod(
        &template(),
        &spec("0a0a0a0a-0000-4000-8000-000000000009", Duration::from_secs(1)),
    );
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.active_deadline_seconds, Some(86_580));
    let psc = spec.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    assert_eq!(spec.containers.len(), 1);
    let c = &spec.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let resources = c.resources.as_ref().unwrap();
    assert!(
        resources.requests.as_ref().unwrap().contains_key("cpu")
            && resources.limits.as_ref().unwrap().contains_key("memory")
    );
    assert!(c.readiness_probe.as_ref().unwrap().tcp_socket.is_some());
    let env = c.env.as_ref().unwrap();
    let secret = env.iter().find(|e| e.name == "TICKET_SECRET").unwrap();
    assert!(secret.value.is_none(), "never inline");
    assert_eq!(
        secret
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "matchplane-ticket"
    );
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["matchplane.io/session"], "0a0a0a0a-0000-4000-8000-000000000009");
}

#[tokio::test]
async fn a_tls_client_for_a_real_cluster_builds() {
    // What `RUNTIME=kubernetes` does in a cluster: an https API server needs rustls with a
    // crypto provider; this fails (or panics) if the build has none or two.
    let config = kube::Config::new("https://10.96.0.1:443".parse().unwrap());
    assert!(kube::Client::try_from(config).is_ok());
}

/// With Pods, a profile's versions are images: each session's Pod runs its version's image,
/// carries the version's label and is told its version.
#[test]
fn a_versions_pod_runs_its_image_and_carries_its_version() {
    let profiles = backend::runtime::profiles::Profiles::parse(
        r#"
servers:
  arena:
    image: "registry.example/arena:1.4"
    ports: [{name: game, protocol: tcp}]
    versions:
      - {name: "1.4", weight: 1}
      - {name: "1.5", image: "registry.example/arena:1.5", weight: 1}
queues:
  - {name: dm, session_size: 2, server: arena}
"#,
        Some(
            &matchmaking_core::queues::Queues::parse("queues:\n  - {name: dm, session_size: 2, server: arena}\n")
                .unwrap(),
        ),
        backend::runtime::profiles::Target::Kubernetes,
    )
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let sid = uuid::Uuid::new_v4().to_string();
        let spec = spec(&sid, Duration::from_secs(5)).running("dm", profiles.pick("dm"));
        let pod = serde_json::to_value(render_pod(&template(), &spec)).unwrap();
        let labels = &pod["metadata"]["labels"];
        let container = &pod["spec"]["containers"][0];
        let env = |name: &str| {
            container["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .and_then(|e| e["value"].as_str().map(str::to_owned))
        };
        assert_eq!(labels["matchplane.io/profile"], "arena");
        seen.push((
            labels["matchplane.io/version"].as_str().unwrap().to_owned(),
            container["image"].as_str().unwrap().to_owned(),
            env("MATCHPLANE_VERSION"),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("1.4".into(), "registry.example/arena:1.4".into(), Some("1.4".into())),
            ("1.5".into(), "registry.example/arena:1.5".into(), Some("1.5".into())),
        ]
    );
}

/// A version of the built-in game server runs its own image as the built-in server's Pod,
/// labelled with its version; the version without an image runs the template's.
#[test]
fn a_version_of_the_built_in_server_runs_its_image() {
    let profiles = backend::runtime::profiles::Profiles::parse(
        r#"
servers:
  game-server:
    versions:
      - {name: "1", weight: 1}
      - {name: "2", image: "registry.example/game-server:2", weight: 1}
queues:
  - {name: casual, session_size: 2}
"#,
        Some(&matchmaking_core::queues::Queues::parse("queues:\n  - {name: casual, session_size: 2}\n").unwrap()),
        backend::runtime::profiles::Target::Kubernetes,
    )
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let sid = uuid::Uuid::new_v4().to_string();
        let spec = spec(&sid, Duration::from_secs(5)).running("casual", profiles.pick("casual"));
        let pod = serde_json::to_value(render_pod(&template(), &spec)).unwrap();
        let container = &pod["spec"]["containers"][0];
        assert!(
            container["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "SESSION_ID"),
            "the built-in server's Pod: {pod}"
        );
        seen.push((
            pod["metadata"]["labels"]["matchplane.io/version"]
                .as_str()
                .unwrap()
                .to_owned(),
            container["image"].as_str().unwrap().to_owned(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("1".to_owned(), template().image),
            ("2".to_owned(), "registry.example/game-server:2".to_owned()),
        ]
    );
}

/// `backend render-pod --queue Q --version V` prints the Pod of a version (a session's, or with
/// `--warm` a warm one): its image and its version label. A profile with versions needs one
/// named; a version it does not have, or one for a profile without versions, is refused.
#[test]
fn render_pod_prints_a_versions_pod_and_refuses_a_version_it_does_not_have() {
    let file = std::env::temp_dir().join(format!("render-versions-{}.yaml", common::unique_prefix()));
    std::fs::write(
        &file,
        r#"
servers:
  arena:
    image: "registry.example/arena:1.4"
    ready: sdk
    ports: [{name: game, protocol: tcp}]
    warm_pool: {min: 1, max: 2}
    versions:
      - {name: "1.4", weight: 1}
      - {name: "1.5", image: "registry.example/arena:1.5", weight: 1}
  plain:
    image: "registry.example/plain:1"
    ports: [{name: game, protocol: tcp}]
queues:
  - {name: dm, session_size: 2, server: arena}
  - {name: solo, session_size: 1, server: plain}
"#,
    )
    .unwrap();
    let render = |args: &[&str]| {
        let out = std::process::Command::new(common::built_binary("backend"))
            .env_clear()
            .env("MATCHMAKING_CONFIG", &file)
            .arg("render-pod")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    };
    for args in [
        &[
            "--session-id",
            "s-1",
            "--players",
            "a,b",
            "--queue",
            "dm",
            "--version",
            "1.5",
        ][..],
        &["--warm", "--queue", "dm", "--version", "1.5"][..],
    ] {
        let (code, out, err) = render(args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        let pod: Pod = serde_yaml::from_str(&out).unwrap();
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels.get("matchplane.io/version").map(String::as_str), Some("1.5"));
        assert_eq!(
            pod.spec.unwrap().containers[0].image.as_deref(),
            Some("registry.example/arena:1.5")
        );
    }
    for (args, want) in [
        (
            &["--warm", "--queue", "dm"][..],
            r#"backend: --queue dm: server "arena" has versions (1.4, 1.5): name one with --version"#,
        ),
        (
            &["--warm", "--queue", "dm", "--version", "2.0"][..],
            r#"backend: --version 2.0: server "arena" has no such version (it has 1.4, 1.5)"#,
        ),
        (
            &[
                "--session-id",
                "s-2",
                "--players",
                "a",
                "--queue",
                "solo",
                "--version",
                "1",
            ][..],
            r#"backend: --version 1: server "plain" of queue "solo" has no versions"#,
        ),
    ] {
        assert_eq!(render(args), (Some(2), String::new(), want.to_owned()), "{args:?}");
    }
    let _ = std::fs::remove_file(&file);
}
