//! The relay on a Pod's IP where NetworkPolicy is enforced (see [`crate::network`]): kube-sim
//! accepts each connection to a declared TCP port, decides it by the policies, and splices an
//! admitted one to the container's own address; a refused one is reset.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ContainerPort, Pod};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::network::{Endpoint, Network};
use crate::node::{Key, PodStorage};

/// A Pod IP on which every port of `ports` is free, with a listener bound on each.
pub fn bind(cluster: &dyn PodStorage, ports: &[u16]) -> std::io::Result<(Ipv4Addr, Vec<std::net::TcpListener>)> {
    let mut last = None;
    for _ in 0..100 {
        let ip = cluster.pod_ip(ports[0]);
        let bound: std::io::Result<Vec<std::net::TcpListener>> = ports
            .iter()
            .map(|port| {
                let listener = std::net::TcpListener::bind((ip, *port))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .collect();
        match bound {
            Ok(listeners) => return Ok((ip, listeners)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free Pod IP")))
}

/// The Pod as the policies see it.
pub fn endpoint(pod: &Pod) -> Option<Endpoint> {
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
    let mut endpoint = Endpoint::pod(
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.labels.clone().unwrap_or_default(),
        ip,
    );
    endpoint.ports = declared_ports(pod);
    Some(endpoint)
}

/// Every port the Pod's containers declare.
pub fn declared_ports(pod: &Pod) -> Vec<ContainerPort> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .cloned()
        .collect()
}

/// Relays each listener's connections to the same port on `inner` until the guard drops.
pub fn start(
    network: Arc<Network>,
    storage: Arc<dyn PodStorage>,
    key: Key,
    inner: Ipv4Addr,
    listeners: Vec<std::net::TcpListener>,
) -> std::io::Result<DropGuard> {
    let stop = CancellationToken::new();
    for listener in listeners {
        let listener = TcpListener::from_std(listener)?;
        let (network, storage, key, stop) = (network.clone(), storage.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, peer)) = accepted else {
                    // Out of descriptors, say: a moment before the next try, not a busy loop.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let (network, storage, key) = (network.clone(), storage.clone(), key.clone());
                tokio::spawn(async move {
                    let _ = connection(&network, storage, &key, inner, stream, peer).await;
                });
            }
        });
    }
    Ok(stop.drop_guard())
}

async fn connection(
    network: &Arc<Network>,
    storage: Arc<dyn PodStorage>,
    key: &Key,
    inner: Ipv4Addr,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    let finder = network.clone();
    let caller = tokio::task::spawn_blocking(move || finder.caller(peer, local))
        .await
        .map_err(std::io::Error::other)?;
    let Some(to) = storage.pod(key).as_ref().and_then(endpoint) else {
        return Ok(());
    };
    let pods = |k: &Key| storage.pod(k).as_ref().and_then(endpoint);
    if !network.decide(&caller, peer.ip(), key, &to, local.port(), &pods) {
        // Reset at once: the caller fails as one whose packets a CNI drops would, only faster.
        stream.set_zero_linger()?;
        return Ok(());
    }
    let mut upstream = TcpStream::connect((inner, local.port())).await?;
    upstream.set_nodelay(true)?;
    stream.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
    Ok(())
}
