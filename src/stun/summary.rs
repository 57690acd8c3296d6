//! What the answers of `natkit stun-probe` mean together (RFC 8489 Binding results; RFC 4787 for
//! the mapping, RFC 6598 for carrier-grade NAT): behind a NAT or not, a mapping that varies by
//! destination, UDP blocked while TCP/TLS answer, CGNAT and nested NAT, and the sentences that
//! say so. Pure: results in, summary out.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::net::address_class::AddressClass;
use crate::net::transport::Transport;
use crate::stun::probe::ProbeResult;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub probes: usize,
    pub answered: usize,
    pub failed: usize,
    /// A mapped address differs from the local one.
    pub behind_nat: Option<bool>,
    /// Over UDP from one socket, two servers at different IPs saw different mapped addresses.
    pub mapping_varies_by_destination: Option<bool>,
    /// UDP got no answer at all while TCP or TLS did.
    pub udp_blocked: Option<bool>,
    /// A mapped address is in 100.64.0.0/10 (carrier-grade NAT); null when nobody answered.
    pub cgnat: Option<bool>,
    /// A mapped address is private (RFC 1918, fc00::/7): a NAT behind another NAT; null when nobody answered.
    pub nested_nat: Option<bool>,
    /// Distinct public addresses seen.
    pub mapped_addresses: Vec<SocketAddr>,
    /// What the results mean, in sentences.
    pub notes: Vec<String>,
}

/// What the results mean together.
pub fn summarize(results: &[ProbeResult]) -> Summary {
    let answered: Vec<&ProbeResult> = results.iter().filter(|r| r.mapped.is_some()).collect();
    let failed = results.iter().filter(|r| r.mapped.is_none() || r.error.is_some()).count();
    let behind_nat = if answered.is_empty() {
        None
    } else {
        Some(answered.iter().any(|r| r.local.is_some_and(|l| Some(l) != r.mapped)))
    };

    // Same local socket, different server IPs: compare what each saw.
    let mut varies = None;
    for v6 in [false, true] {
        let udp: Vec<&&ProbeResult> = answered
            .iter()
            .filter(|r| r.transport == Transport::Udp && r.address.is_some_and(|a| a.is_ipv6() == v6))
            .collect();
        let mut dest_ips: Vec<IpAddr> = udp.iter().filter_map(|r| r.address.map(|a| a.ip())).collect();
        dest_ips.sort();
        dest_ips.dedup();
        if dest_ips.len() >= 2 {
            let first = udp[0].mapped;
            let v = udp.iter().any(|r| r.mapped != first);
            varies = Some(varies.unwrap_or(false) || v);
        }
    }

    let udp_probed = results.iter().any(|r| r.transport == Transport::Udp && r.address.is_some());
    let stream_ok = answered.iter().any(|r| r.transport != Transport::Udp);
    let udp_ok = answered.iter().any(|r| r.transport == Transport::Udp);
    let udp_blocked =
        (udp_probed && results.iter().any(|r| r.transport != Transport::Udp)).then_some(!udp_ok && stream_ok);

    let mut mapped_addresses: Vec<SocketAddr> = answered.iter().filter_map(|r| r.mapped).collect();
    mapped_addresses.sort();
    mapped_addresses.dedup();
    let class = |a: &SocketAddr| AddressClass::of_canonical(a.ip());
    let known = !mapped_addresses.is_empty();
    let cgnat = known.then(|| mapped_addresses.iter().any(|a| class(a) == AddressClass::Cgnat));
    let nested_nat =
        known.then(|| behind_nat == Some(true) && mapped_addresses.iter().any(|a| class(a) == AddressClass::Private));

    let mut notes = Vec::new();
    match behind_nat {
        None => notes.push("No server answered: nothing can be said about the path.".to_string()),
        Some(false) => notes.push("Not behind a NAT: servers see your local address and port.".to_string()),
        Some(true) => {
            notes.push("Behind a NAT: servers see a different address or port than your socket's.".to_string())
        }
    }
    match varies {
        Some(true) => notes.push(
            "The mapped address varies by destination: address-dependent (symmetric) mapping; direct connections will often need a relay (run `natkit nat-type`).".into(),
        ),
        Some(false) => notes.push("The mapped address is the same for every destination: endpoint-independent mapping, good for hole punching.".into()),
        None => {}
    }
    if udp_blocked == Some(true) {
        notes.push(
            "UDP got no answer while TCP/TLS did: UDP looks blocked; WebRTC will need TURN over TCP or TLS.".into(),
        );
    }
    if cgnat == Some(true) {
        notes.push("The mapped address is in 100.64.0.0/10: your ISP runs carrier-grade NAT, so the servers see your ISP's NAT, not your router.".into());
    }
    if nested_nat == Some(true) {
        notes.push(
            "The mapped address is private: these servers sit behind the same NAT, or your NAT is behind another one."
                .into(),
        );
    }
    if failed > 0 {
        notes.push(format!("{failed} of {} probes failed; each one's error is given with it.", results.len()));
    }

    Summary {
        probes: results.len(),
        answered: answered.len(),
        failed,
        behind_nat,
        mapping_varies_by_destination: varies,
        udp_blocked,
        cgnat,
        nested_nat,
        mapped_addresses,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::server_spec::ServerSpec;
    use crate::stun::probe::Target;

    fn result(transport: Transport, server: &str, local: &str, mapped: Option<&str>) -> ProbeResult {
        let t = Target {
            spec: ServerSpec::parse(server).expect("spec"),
            transport,
            addr: Ok(server.parse().expect("addr")),
        };
        let mut r = ProbeResult::empty(&t);
        r.local = Some(local.parse().expect("local"));
        r.mapped = mapped.map(|m| m.parse().expect("mapped"));
        if r.mapped.is_none() {
            r.error = Some("no response".into());
        }
        r
    }

    #[test]
    fn same_mapping_everywhere_is_endpoint_independent() {
        let rs = vec![
            result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", Some("203.0.113.9:5000")),
            result(Transport::Udp, "198.51.100.2:3478", "10.0.0.2:5000", Some("203.0.113.9:5000")),
        ];
        let s = summarize(&rs);
        assert_eq!(s.behind_nat, Some(true));
        assert_eq!(s.mapping_varies_by_destination, Some(false));
        assert_eq!(s.failed, 0);
    }

    #[test]
    fn mapping_that_changes_with_destination_is_flagged() {
        let rs = vec![
            result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", Some("203.0.113.9:40001")),
            result(Transport::Udp, "198.51.100.2:3478", "10.0.0.2:5000", Some("203.0.113.9:40002")),
        ];
        assert_eq!(summarize(&rs).mapping_varies_by_destination, Some(true));
    }

    #[test]
    fn udp_silent_while_tcp_answers_means_udp_blocked() {
        let rs = vec![
            result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", None),
            result(Transport::Tcp, "198.51.100.1:3478", "10.0.0.2:41000", Some("203.0.113.9:41000")),
        ];
        let s = summarize(&rs);
        assert_eq!(s.udp_blocked, Some(true));
        assert_eq!(s.failed, 1);
    }

    #[test]
    fn cgnat_and_nested_nat_are_detected() {
        let rs = vec![result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", Some("100.64.3.4:6000"))];
        assert_eq!(summarize(&rs).cgnat, Some(true));
        let rs = vec![result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", Some("192.168.1.4:6000"))];
        assert_eq!(summarize(&rs).nested_nat, Some(true));
    }

    #[test]
    fn nothing_answered_is_unknown_not_false() {
        let rs = vec![result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", None)];
        let s = summarize(&rs);
        assert_eq!((s.cgnat, s.nested_nat, s.behind_nat), (None, None, None));
    }

    #[test]
    fn loopback_is_not_behind_nat() {
        let rs = vec![result(Transport::Udp, "127.0.0.1:3478", "127.0.0.1:5000", Some("127.0.0.1:5000"))];
        assert_eq!(summarize(&rs).behind_nat, Some(false));
    }
}
