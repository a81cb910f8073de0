//! Listening sockets sized for bursts.
//!
//! A thousand players pressing "play" at once open a thousand connections in the same
//! instant; a listen queue shorter than that drops SYNs, and each dropped client waits a whole
//! second for its retry. Servers here listen with [`BURST_BACKLOG`]; the kernel silently caps
//! any backlog at `net.core.somaxconn`; [`listen`] asks for what the kernel allows and warns
//! only when that is short of a burst.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The listen backlog of the proxy and the backend.
pub const BURST_BACKLOG: u32 = 8192;

/// The kernel's cap on listen backlogs (`/proc/sys/net/core/somaxconn`), where it says.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The backlog a listener asking for `wanted` gets, and whether the kernel capped it.
pub fn effective_backlog(wanted: u32, cap: Option<u32>) -> (u32, bool) {
    match cap {
        Some(cap) if cap < wanted => (cap, true),
        _ => (wanted, false),
    }
}

/// A backlog below this drops SYNs when a thousand players press "play" at once.
pub const LOW_BACKLOG: u32 = 1024;

/// Whether a listener that asked for `wanted` and got `effective` should say so as a warning:
/// only when the kernel's cap leaves less than a burst's worth ([`LOW_BACKLOG`]). A cap above
/// that (4,096 by default since Linux 5.4) fits the machine and is reported at info.
pub fn backlog_is_short(wanted: u32, effective: u32) -> bool {
    effective < wanted.min(LOW_BACKLOG)
}

/// Binds `addr` (with `SO_REUSEADDR`, as std does) and listens with `backlog`, or the kernel's
/// cap when that is lower; one line at start says which, a warning only when the cap is short.
pub fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let (effective, capped) = effective_backlog(backlog, somaxconn());
    if backlog_is_short(backlog, effective) {
        tracing::warn!(
            asked = backlog,
            effective,
            "the kernel caps the listen backlog (net.core.somaxconn) below a burst of players; a burst of more connections than that drops SYNs: raise it with sysctl -w net.core.somaxconn={backlog}"
        );
    } else {
        tracing::info!(backlog = effective, kernel_cap = capped, "listen backlog");
    }
    socket.listen(effective)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_cap_is_noticed() {
        assert_eq!(effective_backlog(8192, Some(4096)), (4096, true));
        assert_eq!(effective_backlog(8192, Some(65535)), (8192, false));
        assert_eq!(effective_backlog(1024, None), (1024, false));
    }

    #[test]
    fn only_a_cap_below_a_burst_is_worth_a_warning() {
        // Linux's default since 5.4 holds a burst: info, not a warning.
        assert!(!backlog_is_short(BURST_BACKLOG, 4096));
        assert!(!backlog_is_short(BURST_BACKLOG, BURST_BACKLOG));
        // Older kernels' 128 does not.
        assert!(backlog_is_short(BURST_BACKLOG, 128));
        // A listener that asked for little is not short for getting it.
        assert!(!backlog_is_short(64, 64));
    }

    #[tokio::test]
    async fn a_listener_accepts_a_burst_beyond_the_default_backlog() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), BURST_BACKLOG).unwrap();
        let addr = listener.local_addr().unwrap();
        // 1,500 connections before a single accept: more than tokio's default queue (1,024)
        // holds, so with it some would wait for a SYN retry. With the burst backlog (and a
        // kernel cap above 1,500, as on any modern kernel) all complete at once.
        let cap = somaxconn().unwrap_or(4096);
        let burst = 1500.min(cap as usize);
        let mut streams = Vec::new();
        for _ in 0..burst {
            let connect = tokio::net::TcpStream::connect(addr);
            let stream = tokio::time::timeout(std::time::Duration::from_millis(500), connect)
                .await
                .expect("connected without a SYN retry")
                .unwrap();
            streams.push(stream);
        }
        for _ in 0..burst {
            listener.accept().await.unwrap();
        }
    }
}
