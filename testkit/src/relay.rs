//! A TCP relay in front of a test service, whose links can go silent the way they do when the
//! service's host loses power or drops off the network: nothing closes them (no FIN, no RST)
//! and nothing answers on them any more.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Relays loopback connections to one target until dropped.
pub struct Relay {
    addr: SocketAddr,
    /// Bumped by every [`Relay::cut`]: a link forwards only while this is still what it saw when
    /// it started.
    epoch: watch::Sender<u64>,
    cut: Arc<Mutex<bool>>,
    stop: CancellationToken,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let (epoch, _) = watch::channel(0u64);
        let cut = Arc::new(Mutex::new(false));
        let stop = CancellationToken::new();
        let relay = Relay { addr, epoch, cut, stop };
        let (epoch, cut, stop) = (relay.epoch.clone(), relay.cut.clone(), relay.stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                };
                let silent = *cut.lock().expect("relay state");
                tokio::spawn(link(client, target, silent, epoch.subscribe(), stop.clone()));
            }
        });
        relay
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every link open now goes silent for good, and links accepted from now on are held
    /// silent too (until [`Relay::heal`]); their sockets stay open until the relay is dropped.
    pub fn cut(&self) {
        *self.cut.lock().expect("relay state") = true;
        self.epoch.send_modify(|epoch| *epoch += 1);
    }

    /// Links accepted from now on are relayed again (the target is reachable once more); the
    /// ones already silent stay silent, as connections to a vanished host do.
    pub fn heal(&self) {
        *self.cut.lock().expect("relay state") = false;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Relays one connection until either side closes or the relay is cut; then, silent, holds
/// its sockets open until the relay is dropped.
async fn link(
    mut client: TcpStream,
    target: SocketAddr,
    silent: bool,
    mut epoch: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let seen = *epoch.borrow_and_update();
    let mut server = None;
    if !silent {
        let Ok(mut upstream) = TcpStream::connect(target).await else {
            return;
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => return,
            _ = epoch.wait_for(|now| *now != seen) => {}
            () = stop.cancelled() => return,
        }
        server = Some(upstream);
    }
    stop.cancelled().await;
    drop((client, server));
}
