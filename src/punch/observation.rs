//! Whether our NAT's mapping varies with the destination (RFC 4787 §4.1), from the STUN answers
//! punch got, and a second observation point when they all came from one IP: the signal server's
//! own address, where `natkit signal` answers STUN Binding on the UDP port of its listener
//! (`signal::stun_udp`).
//!
//! Two server IPs (or an RFC 5780 server's OTHER-ADDRESS) show any variation. One IP on two ports
//! (the one-server deployment: relay on IP:3478, signal on IP:8080) shows a mapping that depends on
//! the destination port, which is what symmetric NATs do (Linux `masquerade fully-random`, most
//! CGNATs of that kind); it cannot show an address-dependent-only mapping (same mapping for every
//! port of one IP, a new one per IP): that NAT looks endpoint-independent from one IP. For punch
//! the miss costs the birthday method on such a pair, not correctness: the relay still follows.
//!
//! Pure apart from [`signal_udp_endpoint`]'s name lookup.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::ice::gather::Reflexive;

/// What told whether the mapping varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingEvidence {
    /// Answers from two or more server IPs: any dependence on the destination shows.
    TwoIps,
    /// Answers from one IP on two or more ports: only a port-dependent mapping shows.
    OneIpTwoPorts,
}

/// Did our mapped address change with the server, and on what evidence? `(None, None)` when all
/// answers came from one server address (or none came).
pub fn mapping_varies(found: &[Reflexive]) -> (Option<bool>, Option<MappingEvidence>) {
    let differs = || found.iter().any(|r| r.mapped != found[0].mapped);
    let mut ips: Vec<IpAddr> = found.iter().map(|r| r.server.ip()).collect();
    ips.sort();
    ips.dedup();
    if ips.len() >= 2 {
        return (Some(differs()), Some(MappingEvidence::TwoIps));
    }
    let mut servers: Vec<SocketAddr> = found.iter().map(|r| r.server).collect();
    servers.sort();
    servers.dedup();
    if servers.len() >= 2 {
        return (Some(differs()), Some(MappingEvidence::OneIpTwoPorts));
    }
    (None, None)
}

/// Whether asking the signal server's address is worth a round: the answers so far came from
/// exactly one server IP, and not yet from `signal`.
pub fn worth_asking(found: &[Reflexive], signal: SocketAddr) -> bool {
    mapping_varies(found).0.is_none() && !found.is_empty() && found.iter().all(|r| r.server != signal)
}

/// `host` and port of a signal URL (`ws://HOST:PORT/…`, `wss://[v6]:PORT`, default ports 80/443).
pub fn signal_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => 80,
        "wss" | "https" => 443,
        _ => return None,
    };
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
    .filter(|(h, _)| !h.is_empty())
}

/// The signal server's address as a STUN server: its host on the UDP port of its URL (IPv4, as
/// punch gathers IPv4 only).
pub async fn signal_udp_endpoint(url: &str) -> Option<SocketAddr> {
    let (host, port) = signal_host_port(url)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port)).filter(|a| a.is_ipv4());
    }
    tokio::net::lookup_host((host.as_str(), port)).await.ok()?.find(|a| a.is_ipv4())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn r(server: &str, mapped: &str) -> Reflexive {
        Reflexive { server: server.parse().unwrap(), mapped: mapped.parse().unwrap(), rtt: Duration::ZERO, other: None }
    }

    #[test]
    fn one_ip_on_two_ports_tells_a_port_dependent_mapping() {
        let relay = "198.51.100.1:3478";
        let signal = "198.51.100.1:8080";
        let symmetric = [r(relay, "203.0.113.12:40001"), r(signal, "203.0.113.12:51234")];
        assert_eq!(mapping_varies(&symmetric), (Some(true), Some(MappingEvidence::OneIpTwoPorts)));
        let kept = [r(relay, "203.0.113.11:40000"), r(signal, "203.0.113.11:40000")];
        assert_eq!(mapping_varies(&kept), (Some(false), Some(MappingEvidence::OneIpTwoPorts)));
    }

    #[test]
    fn two_ips_are_stronger_evidence_and_one_address_is_none() {
        let two = [r("198.51.100.1:3478", "203.0.113.11:1"), r("198.51.100.2:3478", "203.0.113.11:1")];
        assert_eq!(mapping_varies(&two), (Some(false), Some(MappingEvidence::TwoIps)));
        let one = [r("198.51.100.1:3478", "203.0.113.11:1")];
        assert_eq!(mapping_varies(&one), (None, None));
        assert_eq!(mapping_varies(&[]), (None, None));
        let signal: SocketAddr = "198.51.100.1:8080".parse().unwrap();
        assert!(worth_asking(&one, signal));
        assert!(!worth_asking(&two, signal), "already known");
        assert!(!worth_asking(&[], signal), "no STUN answer to compare with");
        assert!(!worth_asking(&[r("198.51.100.1:8080", "203.0.113.11:1")], signal), "asked already");
    }

    #[test]
    fn the_signal_urls_host_and_port() {
        let hp = |u: &str| signal_host_port(u);
        assert_eq!(hp("ws://198.51.100.1:8080/ws"), Some(("198.51.100.1".into(), 8080)));
        assert_eq!(hp("wss://signal.example.org"), Some(("signal.example.org".into(), 443)));
        assert_eq!(hp("http://u:p@example.org/x"), Some(("example.org".into(), 80)));
        assert_eq!(hp("ws://[2001:db8::1]:9000/ws"), Some(("2001:db8::1".into(), 9000)));
        assert_eq!(hp("ws://[2001:db8::1]"), Some(("2001:db8::1".into(), 80)));
        assert_eq!(hp("ftp://x"), None);
        assert_eq!(hp("ws://:80"), None);
        assert_eq!(hp("ws://host:notaport"), None);
    }
}
