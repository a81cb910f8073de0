//! One watch of every game-server Pod per replica.
//!
//! A kube-runtime `watcher` (list, then watch from the list's resource version with
//! bookmarks; a relist after `410 Gone`; backoff on errors; a server-side timeout per watch
//! call, so a silently dead connection is noticed within it) feeds a reflector store. Every
//! change is passed on to whoever waits on that Pod (a session starting or running its
//! server) and to the reaper. Nothing else in the backend watches Pods, so the API server
//! carries one watch per replica whatever the number of sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::pod::{PodState, label_selector, pod_state};

/// Seconds each watch call lasts on the server; a connection that went silent (the API
/// server's host gone, a load balancer dropping the flow) is given up, and the watch resumed,
/// after this plus kube-runtime's 5 s margin. While it is silent no Pod change is seen: no
/// start sees its Pod ready, no finished Pod is reaped. Resuming costs one watch call from
/// the last resource version, so short calls are cheap: 15 s bounds that blindness to 20 s
/// (it was 65 s at 60).
const WATCH_TIMEOUT_SECONDS: u32 = 15;

/// What the watch knows of one Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not seen yet (just created, or the first list is not in).
    NotYet,
    /// It exists, in this state; `terminating` once something asked to delete it.
    Present { state: PodState, terminating: bool },
    /// It was deleted (seen deleted, or missing from a relist after having been seen).
    Gone,
}

impl Seen {
    fn of(pod: &Pod) -> Seen {
        Seen::Present {
            state: pod_state(pod),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// A change the reaper should look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// This Pod was added or changed; its current object is in the store.
    Pod(String),
    /// This Pod was deleted; it served this session (if it had the label).
    Deleted { name: String, session: Option<String> },
    /// A (re)list completed: the store holds every Pod there is.
    Resynced,
}

struct Shared {
    store: Store<Pod>,
    namespace: String,
    waiters: Mutex<HashMap<String, watch::Sender<Seen>>>,
    changes: Mutex<Option<mpsc::UnboundedSender<Change>>>,
    /// Whether the first list has completed.
    synced: AtomicBool,
}

/// The replica's view of its game-server Pods. Cheap to clone; the watch stops when the last
/// clone is dropped.
#[derive(Clone)]
pub(crate) struct PodWatch {
    shared: Arc<Shared>,
    _stop: Arc<DropGuard>,
}

impl PodWatch {
    /// Starts watching every game-server Pod in `pods`' namespace.
    pub(crate) fn start(pods: Api<Pod>, namespace: &str) -> PodWatch {
        let writer = Writer::<Pod>::default();
        let shared = Arc::new(Shared {
            store: writer.as_reader(),
            namespace: namespace.to_owned(),
            waiters: Mutex::new(HashMap::new()),
            changes: Mutex::new(None),
            synced: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        tokio::spawn(run(pods, writer, shared.clone(), stop.clone()));
        PodWatch {
            shared,
            _stop: Arc::new(stop.drop_guard()),
        }
    }

    /// Follows one Pod by name. Subscribe before creating it, so no change is missed.
    pub(crate) fn follow(&self, name: &str) -> watch::Receiver<Seen> {
        let mut waiters = self.shared.waiters.lock().unwrap();
        waiters.retain(|_, tx| tx.receiver_count() > 0);
        if let Some(tx) = waiters.get(name) {
            return tx.subscribe();
        }
        let now = match self.get(name) {
            Some(pod) => Seen::of(&pod),
            None => Seen::NotYet,
        };
        let (tx, rx) = watch::channel(now);
        waiters.insert(name.to_owned(), tx);
        rx
    }

    /// The Pod as last seen, if it exists.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Pod>> {
        self.shared
            .store
            .get(&ObjectRef::new(name).within(&self.shared.namespace))
    }

    /// Whether a first list has completed (so [`PodWatch::pods`] is every Pod there is).
    pub(crate) fn synced(&self) -> bool {
        self.shared.synced.load(Ordering::Acquire)
    }

    /// Every Pod as last seen.
    pub(crate) fn pods(&self) -> Vec<Arc<Pod>> {
        self.shared.store.state()
    }

    /// The changes the reaper acts on, starting with every Pod already known (and a resync if
    /// the first list is in). One consumer: a later call replaces the earlier one.
    pub(crate) fn changes(&self) -> mpsc::UnboundedReceiver<Change> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut changes = self.shared.changes.lock().unwrap();
        // Under the lock the watch task sends with: a change applied after this snapshot is
        // sent on `tx` by that task.
        for pod in self.shared.store.state() {
            if let Some(name) = pod.metadata.name.clone() {
                let _ = tx.send(Change::Pod(name));
            }
        }
        if self.shared.synced.load(Ordering::Acquire) {
            let _ = tx.send(Change::Resynced);
        }
        *changes = Some(tx);
        rx
    }
}

impl Shared {
    fn tell(&self, name: &str, seen: Seen) {
        if let Some(tx) = self.waiters.lock().unwrap().get(name) {
            tx.send_replace(seen);
        }
    }

    fn change(&self, change: Change) {
        if let Some(tx) = self.changes.lock().unwrap().as_ref() {
            let _ = tx.send(change);
        }
    }

    /// After a (re)list: a Pod that was seen before and is not listed now was deleted while
    /// the watch was down.
    fn relisted(&self) {
        let listed: std::collections::HashSet<String> = self
            .store
            .state()
            .iter()
            .filter_map(|pod| pod.metadata.name.clone())
            .collect();
        for (name, tx) in self.waiters.lock().unwrap().iter() {
            let was_seen = matches!(*tx.borrow(), Seen::Present { .. });
            if was_seen && !listed.contains(name) {
                tx.send_replace(Seen::Gone);
            }
        }
        self.synced.store(true, Ordering::Release);
        self.change(Change::Resynced);
    }
}

async fn run(pods: Api<Pod>, writer: Writer<Pod>, shared: Arc<Shared>, stop: CancellationToken) {
    let config = watcher::Config::default()
        .labels(&label_selector())
        .timeout(WATCH_TIMEOUT_SECONDS);
    let stream = reflector::reflector(writer, watcher::watcher(pods, config).default_backoff());
    let mut stream = std::pin::pin!(stream);
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = stream.next() => event,
        };
        match event {
            Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => {
                if let Some(name) = pod.metadata.name.clone() {
                    shared.tell(&name, Seen::of(&pod));
                    shared.change(Change::Pod(name));
                }
            }
            Some(Ok(Event::Delete(pod))) => {
                if let Some(name) = pod.metadata.name.clone() {
                    shared.tell(&name, Seen::Gone);
                    let session = super::pod::session_of(&pod);
                    shared.change(Change::Deleted { name, session });
                }
            }
            Some(Ok(Event::Init)) => {}
            Some(Ok(Event::InitDone)) => shared.relisted(),
            // The watcher resumes by itself (relisting after 410 Gone), with backoff.
            Some(Err(e)) => tracing::warn!(error = %e, "watching game-server pods failed; resuming"),
            None => {
                tracing::error!("the pod watch ended");
                return;
            }
        }
    }
}
