//! Candidate gathering (RFC 8445 §5.1.1): host candidates from the machine's
//! interfaces, server-reflexive ones from STUN Binding on the same socket.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::net::udp::{self, UdpEnd};
use crate::stun::message::{BindingResponse, binding_request, new_transaction_id};
use crate::stun::transaction::{ClientTransaction, Outcome, Reliability, Retransmit};

/// The IPs of one family (`v6` or not) to offer as host candidates, in
/// interface order.
///
/// Loopback and link-local addresses are useless to a remote peer, so they
/// are left out — unless the machine has nothing else of that family (a
/// namespace with only `lo`, or two peers on one host), where loopback is the
/// only path.
pub fn host_ips(interfaces: &[IpAddr], v6: bool) -> Vec<IpAddr> {
    let family = |ip: &IpAddr| ip.is_ipv6() == v6;
    let usable = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80 && !v6.is_unspecified(),
    };
    let mut ips: Vec<IpAddr> = interfaces.iter().copied().filter(|ip| family(ip) && usable(ip)).collect();
    if ips.is_empty() {
        ips = interfaces.iter().copied().filter(|ip| family(ip) && ip.is_loopback()).collect();
    }
    let mut seen = Vec::new();
    ips.retain(|ip| {
        let first = !seen.contains(ip);
        seen.push(*ip);
        first
    });
    ips
}

/// Every address of every interface that is up.
pub fn interface_ips() -> Vec<IpAddr> {
    if_addrs::get_if_addrs().map(|v| v.into_iter().map(|i| i.ip()).collect()).unwrap_or_default()
}

/// A server-reflexive address learned from one STUN server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reflexive {
    pub server: SocketAddr,
    pub mapped: SocketAddr,
    pub rtt: Duration,
    /// The server's OTHER-ADDRESS (RFC 5780 §7.4), when it has one.
    pub other: Option<SocketAddr>,
}

/// Asks every server for our mapped address from `socket` (before anything
/// else reads it). Servers that do not answer within `timeout` are skipped.
///
/// Whether the mapping varies by destination needs answers from two server
/// IPs. When fewer answered, an RFC 5780 server's OTHER-ADDRESS is asked too
/// (a second round of one RTT): one such server is enough to tell.
pub async fn server_reflexive(socket: &UdpSocket, servers: &[SocketAddr], timeout: Duration) -> Vec<Reflexive> {
    let mut found = ask(socket, servers, timeout).await;
    let more = second_round(&found);
    if !more.is_empty() {
        found.extend(ask(socket, &more, timeout).await);
    }
    found
}

/// The OTHER-ADDRESSes worth asking: only while fewer than two server IPs answered, and only
/// addresses on an IP not asked yet.
pub fn second_round(found: &[Reflexive]) -> Vec<SocketAddr> {
    let mut ips: Vec<IpAddr> = found.iter().map(|r| r.server.ip()).collect();
    ips.sort();
    ips.dedup();
    if ips.len() >= 2 {
        return Vec::new();
    }
    let mut more: Vec<SocketAddr> = found.iter().filter_map(|r| r.other).filter(|o| !ips.contains(&o.ip())).collect();
    more.sort();
    more.dedup();
    more.truncate(1);
    more
}

async fn ask(socket: &UdpSocket, servers: &[SocketAddr], timeout: Duration) -> Vec<Reflexive> {
    let now = Instant::now();
    let txs = servers
        .iter()
        .map(|s| {
            let id = new_transaction_id();
            let tx =
                ClientTransaction::new(id, binding_request(id), Reliability::Unreliable(Retransmit::default()), now)
                    .with_deadline(now + timeout);
            (*s, tx)
        })
        .collect();
    let (ends, _) = udp::run_transactions(socket, txs).await;
    servers
        .iter()
        .zip(ends)
        .filter_map(|(server, end)| match end {
            UdpEnd::Response { outcome: Outcome::Response { bytes, rtt, .. }, .. } => {
                let r = BindingResponse::parse(&bytes).ok()?;
                let mapped = r.reflexive()?;
                Some(Reflexive { server: *server, mapped, rtt, other: r.other_address })
            }
            _ => None,
        })
        .collect()
}

/// With two or more answers: did the mapped address change with the server?
pub fn mapping_varies(found: &[Reflexive]) -> Option<bool> {
    let mut ips: Vec<IpAddr> = found.iter().map(|r| r.server.ip()).collect();
    ips.sort();
    ips.dedup();
    (ips.len() >= 2).then(|| found.iter().any(|r| r.mapped != found[0].mapped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn loopback_and_link_local_only_when_nothing_else() {
        let mixed = ips(&["127.0.0.1", "10.0.0.2", "169.254.1.1", "::1", "fe80::1", "2001:db8::2"]);
        assert_eq!(host_ips(&mixed, false), ips(&["10.0.0.2"]));
        assert_eq!(host_ips(&mixed, true), ips(&["2001:db8::2"]));
        assert_eq!(host_ips(&ips(&["127.0.0.1", "::1"]), false), ips(&["127.0.0.1"]));
        assert_eq!(host_ips(&ips(&["10.0.0.2", "::1"]), true), ips(&["::1"]));
        assert_eq!(host_ips(&ips(&["10.0.0.2", "2001:db8::2"]), false), ips(&["10.0.0.2"]));
        // Interface order is kept (call picks the first of a family), duplicates dropped.
        assert_eq!(host_ips(&ips(&["10.0.0.3", "10.0.0.2", "10.0.0.3"]), false), ips(&["10.0.0.3", "10.0.0.2"]));
    }

    #[test]
    fn varying_mapping_needs_two_server_ips() {
        let r = |server: &str, mapped: &str| Reflexive {
            server: server.parse().expect("addr"),
            mapped: mapped.parse().expect("addr"),
            rtt: Duration::ZERO,
            other: None,
        };
        assert_eq!(mapping_varies(&[r("198.51.100.1:3478", "203.0.113.1:1")]), None);
        assert_eq!(
            mapping_varies(&[r("198.51.100.1:3478", "203.0.113.1:1"), r("198.51.100.2:3478", "203.0.113.1:1")]),
            Some(false)
        );
        assert_eq!(
            mapping_varies(&[r("198.51.100.1:3478", "203.0.113.1:1"), r("198.51.100.2:3478", "203.0.113.1:2")]),
            Some(true)
        );
    }

    #[test]
    fn an_rfc5780_servers_other_address_is_asked_only_while_one_server_ip_answered() {
        let r = |server: &str, other: Option<&str>| Reflexive {
            server: server.parse().expect("addr"),
            mapped: "203.0.113.11:4000".parse().expect("addr"),
            rtt: Duration::ZERO,
            other: other.map(|o| o.parse().expect("addr")),
        };
        let one = [r("198.51.100.1:3478", Some("198.51.100.2:3479"))];
        assert_eq!(second_round(&one), vec!["198.51.100.2:3479".parse().unwrap()]);
        // No OTHER-ADDRESS, or one on the IP already asked: nothing to add.
        assert!(second_round(&[r("198.51.100.1:3478", None)]).is_empty());
        assert!(second_round(&[r("198.51.100.1:3478", Some("198.51.100.1:3479"))]).is_empty());
        // Two server IPs answered already.
        let two = [r("198.51.100.1:3478", Some("198.51.100.2:3479")), r("198.51.100.3:3478", None)];
        assert!(second_round(&two).is_empty());
    }
}
