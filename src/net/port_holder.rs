//! Who holds a port: the process behind an EADDRINUSE, found the way `ss -p`
//! finds it (Linux only): the socket's inode in /proc/net/{udp,udp6,tcp,tcp6},
//! then the process whose /proc/PID/fd has a link to `socket:[INODE]`.
//!
//! Only for error messages: a process of another user is found only when we
//! may read its /proc/PID/fd (root may); one in another network namespace is
//! not found at all.

use std::net::SocketAddr;

use crate::net::transport::Transport;

/// A process that holds a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// /proc/PID/comm: the executable's name, e.g. `turnserver`.
    pub name: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, pid {}", self.name, self.pid)
    }
}

/// TCP state LISTEN in /proc/net/tcp.
const TCP_LISTEN: &str = "0A";

/// Inodes of the sockets bound to `port` (any address) in one /proc/net table:
/// for TCP only listeners, for UDP every socket.
fn inodes_on_port(table: &str, port: u16, listeners_only: bool) -> Vec<u64> {
    let want = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let local_port = f.get(1)?.rsplit(':').next()?;
            if local_port != want || (listeners_only && *f.get(3)? != TCP_LISTEN) {
                return None;
            }
            f.get(9)?.parse().ok().filter(|i| *i != 0)
        })
        .collect()
}

/// The processes (other than this one) holding a `transport` socket on `addr`'s port.
pub fn holders(transport: Transport, addr: SocketAddr) -> Vec<Holder> {
    let (tables, listeners_only) = match transport {
        Transport::Udp => (["/proc/net/udp", "/proc/net/udp6"], false),
        Transport::Tcp | Transport::Tls => (["/proc/net/tcp", "/proc/net/tcp6"], true),
    };
    let inodes: Vec<u64> = tables
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|text| inodes_on_port(&text, addr.port(), listeners_only))
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|l| {
                    let l = l.to_str()?.to_string();
                    l.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok()
                })
                .is_some_and(|i| inodes.contains(&i))
        });
        if holds {
            let name = std::fs::read_to_string(p.path().join("comm")).map(|s| s.trim().to_string()).unwrap_or_default();
            found.push(Holder { pid, name });
        }
    }
    found
}

/// " (held by turnserver, pid 1234)" or "" when no holder was found.
pub fn describe(transport: Transport, addr: SocketAddr) -> String {
    let h = holders(transport, addr);
    if h.is_empty() {
        return String::new();
    }
    format!(" (held by {})", h.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  1: 0100007F:0D96 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41234 2 0000000000000000 0\n\
  2: 00000000:0D97 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41235 2 0000000000000000 0\n";

    #[test]
    fn finds_the_inodes_of_a_port_in_proc_net_udp() {
        assert_eq!(inodes_on_port(UDP, 3478, false), vec![41234]);
        assert_eq!(inodes_on_port(UDP, 3479, false), vec![41235]);
        assert!(inodes_on_port(UDP, 3480, false).is_empty());
        assert!(inodes_on_port(UDP, 3478, true).is_empty(), "07 is not LISTEN");
    }

    #[test]
    fn our_own_socket_is_not_reported_as_a_holder() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        assert!(inodes_on_port(&std::fs::read_to_string("/proc/net/udp").unwrap(), addr.port(), false).len() == 1);
        assert!(holders(Transport::Udp, addr).is_empty(), "this process is skipped");
    }
}
