//! Whether a server's process group has bound its ports, as Linux shows it: the sockets of
//! `/proc/net/{tcp,tcp6,udp,udp6}` (a TCP socket listening, a UDP socket bound) whose inode
//! is an open file of a process in the group. Nothing is sent to the server, so a readiness
//! check never looks like a player to it, and a port some other process took does not count.

use std::collections::HashSet;

use crate::runtime::profiles::PortProtocol;

/// `/proc/net/tcp`'s state of a listening socket.
const TCP_LISTEN: &str = "0A";

/// The inodes of the sockets bound to `port` (TCP: listening) in `table`, a `/proc/net/*`
/// file's text.
fn sockets_on(table: &str, port: u16, listening_only: bool) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            let bound_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (bound_port == port && (!listening_only || *state == TCP_LISTEN)).then_some(inode)
        })
        .collect()
}

/// The socket inodes open in the processes of group `pgid`.
fn group_sockets(pgid: i32) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return inodes;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if process_group(pid) != Some(pgid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// The process group of `pid`, from `/proc/<pid>/stat` (the fifth field; the command name,
/// the second, is in parentheses and may hold anything).
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

/// Whether the processes of group `pgid` have bound every one of `ports`.
pub(super) fn all_bound(ports: &[(PortProtocol, u16)], pgid: i32) -> bool {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/net/{name}")).unwrap_or_default();
    let (tcp, udp) = (read("tcp") + &read("tcp6"), read("udp") + &read("udp6"));
    let mut owned: Option<HashSet<u64>> = None;
    ports.iter().all(|&(protocol, port)| {
        let candidates = match protocol {
            PortProtocol::Tcp => sockets_on(&tcp, port, true),
            PortProtocol::Udp => sockets_on(&udp, port, false),
        };
        if candidates.is_empty() {
            return false;
        }
        let owned = owned.get_or_insert_with(|| group_sockets(pgid));
        candidates.iter().any(|inode| owned.contains(inode))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_tables_are_read_by_port_state_and_inode() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:1F91 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 333 2 0000000000000000 0\n";
        assert_eq!(sockets_on(table, 0x1F90, true), vec![111]);
        assert_eq!(sockets_on(table, 0x1F90, false), vec![111, 222]);
        assert_eq!(sockets_on(table, 0x1F91, false), vec![333]);
        assert!(sockets_on(table, 80, false).is_empty());
    }

    #[test]
    fn a_port_counts_only_when_the_group_itself_bound_it() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ports = [
            (PortProtocol::Tcp, tcp.local_addr().unwrap().port()),
            (PortProtocol::Udp, udp.local_addr().unwrap().port()),
        ];
        let own = nix::unistd::getpgrp().as_raw();
        assert!(all_bound(&ports, own));
        // Another group (no such group here) did not bind them.
        assert!(!all_bound(&ports, i32::MAX - 7));
        // A TCP port bound but not listening is not ready.
        let socket = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .unwrap();
        let addr = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, 0);
        nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &addr).unwrap();
        let bound: nix::sys::socket::SockaddrIn =
            nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&socket)).unwrap();
        assert!(!all_bound(&[(PortProtocol::Tcp, bound.port())], own));
        drop(udp);
        assert!(!all_bound(&ports, own), "a closed port is not bound");
    }
}
