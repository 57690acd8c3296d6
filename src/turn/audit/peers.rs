//! The peer audit of `turn-alloc`: asks the server for permissions (RFC 8656 §9) to
//! addresses a public relay must refuse (loopback, unspecified, private, link-local
//! and the cloud metadata address; RFC 8656 §21.1.1 and §17 on peer address policy),
//! and, when it grants loopback, whether it really relays to its own loopback.
//! Sans-IO: the scenario asks for each permission and feeds the answers back here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::net::address_class::AddressClass;

/// One address to ask a permission for, and what kind of address it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProbe {
    pub ip: IpAddr,
    pub kind: &'static str,
}

/// The addresses a relay must refuse, of the relayed address's family.
pub fn probes(v6: bool) -> Vec<PeerProbe> {
    let p = |ip: IpAddr, kind| PeerProbe { ip, kind };
    if v6 {
        vec![
            p(IpAddr::V6(Ipv6Addr::LOCALHOST), "loopback"),
            p(IpAddr::V6(Ipv6Addr::UNSPECIFIED), "unspecified"),
            p(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)), "private (fc00::/7)"),
            p(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)), "link-local"),
        ]
    } else {
        vec![
            p(IpAddr::V4(Ipv4Addr::LOCALHOST), "loopback"),
            p(IpAddr::V4(Ipv4Addr::UNSPECIFIED), "unspecified (0.0.0.0)"),
            p(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), "private (10/8)"),
            p(IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1)), "private (172.16/12)"),
            p(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)), "private (192.168/16)"),
            p(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), "link-local (cloud metadata)"),
        ]
    }
}

/// The audit's progress: which probe is next, what was refused and accepted.
#[derive(Debug, Clone)]
pub struct PeerAudit {
    probes: Vec<PeerProbe>,
    next: usize,
    /// The server's port: each probe asks for `ip:port`, its own port on that address.
    port: u16,
    loopback: IpAddr,
    refused: Vec<IpAddr>,
    accepted: Vec<IpAddr>,
    relays_loopback: bool,
    pub warnings: Vec<String>,
}

impl PeerAudit {
    pub fn new(server: SocketAddr, relayed: SocketAddr) -> Self {
        let v6 = relayed.is_ipv6();
        PeerAudit {
            probes: probes(v6),
            next: 0,
            port: server.port(),
            loopback: if v6 { IpAddr::V6(Ipv6Addr::LOCALHOST) } else { IpAddr::V4(Ipv4Addr::LOCALHOST) },
            refused: Vec::new(),
            accepted: Vec::new(),
            relays_loopback: false,
            warnings: Vec::new(),
        }
    }

    /// The peer of the next permission to ask for, if any is left.
    pub fn next_peer(&self) -> Option<SocketAddr> {
        self.probes.get(self.next).map(|p| SocketAddr::new(p.ip, self.port))
    }

    /// The server's answer to the current probe: granted or refused.
    pub fn answered(&mut self, granted: bool) {
        let Some(probe) = self.probes.get(self.next).copied() else { return };
        self.next += 1;
        if !granted {
            self.refused.push(probe.ip);
            return;
        }
        self.accepted.push(probe.ip);
        let fix = if AddressClass::of_canonical(probe.ip) == AddressClass::Loopback {
            "coturn: drop --allow-loopback-peers"
        } else if probe.ip.is_unspecified() {
            "coturn: denied-peer-ip=0.0.0.0-0.255.255.255"
        } else {
            "coturn: add a denied-peer-ip line for the range"
        };
        self.warnings.push(format!(
            "the server accepts a permission to {} ({}): anyone with credentials can reach that range through it ({fix}; natkit relay refuses it by default)",
            probe.ip, probe.kind
        ));
    }

    /// The connection broke: no more probes.
    pub fn stop(&mut self) {
        self.next = self.probes.len();
    }

    /// Where to send a STUN request through the relay to learn whether it reaches its
    /// own loopback: only when it granted a loopback permission.
    pub fn loopback_target(&self) -> Option<SocketAddr> {
        self.accepted.contains(&self.loopback).then(|| SocketAddr::new(self.loopback, self.port))
    }

    /// Whether the STUN request through the relay to its own loopback was answered.
    pub fn loopback_answered(&mut self, answered: bool) {
        self.relays_loopback = answered;
        if answered && let Some(target) = self.loopback_target() {
            self.warnings.push(format!(
                "the server relays to its own loopback: a STUN request sent through it to {target} was answered — services bound to localhost on the TURN host are reachable"
            ));
        }
    }

    /// The step's detail.
    pub fn detail(&self) -> String {
        let list = |ips: &[IpAddr]| ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
        let mut d = if self.refused.is_empty() {
            "refused nothing".to_string()
        } else {
            format!("refused permissions to {}", list(&self.refused))
        };
        if !self.accepted.is_empty() {
            d.push_str(&format!("; ACCEPTED {}", list(&self.accepted)));
        }
        if self.relays_loopback {
            d.push_str("; relays to its own loopback");
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit() -> PeerAudit {
        PeerAudit::new("198.51.100.1:3478".parse().expect("server"), "198.51.100.1:50000".parse().expect("relayed"))
    }

    #[test]
    fn a_relay_refusing_every_probe_gets_no_warning() {
        let mut a = audit();
        let mut asked = Vec::new();
        while let Some(peer) = a.next_peer() {
            asked.push(peer);
            a.answered(false);
        }
        assert_eq!(asked.len(), 6);
        assert!(asked.iter().all(|p| p.port() == 3478), "each probe asks for the server's own port");
        assert_eq!(a.loopback_target(), None, "no loopback check when loopback was refused");
        assert!(a.warnings.is_empty());
        assert!(a.detail().starts_with("refused permissions to 127.0.0.1, 0.0.0.0, 10.0.0.1"), "{}", a.detail());
    }

    #[test]
    fn a_granted_loopback_is_checked_and_warned_about() {
        let mut a = audit();
        a.answered(true);
        while a.next_peer().is_some() {
            a.answered(false);
        }
        assert_eq!(a.loopback_target(), Some("127.0.0.1:3478".parse().expect("target")));
        a.loopback_answered(true);
        assert_eq!(a.warnings.len(), 2);
        assert!(a.warnings[0].contains("drop --allow-loopback-peers"), "{:?}", a.warnings);
        assert!(a.detail().ends_with("; ACCEPTED 127.0.0.1; relays to its own loopback"), "{}", a.detail());
    }

    #[test]
    fn ipv6_relays_are_probed_with_ipv6_addresses() {
        let a = PeerAudit::new("[2001:db8::1]:3478".parse().expect("s"), "[2001:db8::1]:50000".parse().expect("r"));
        assert!(probes(true).iter().all(|p| p.ip.is_ipv6()));
        assert_eq!(a.next_peer(), Some("[::1]:3478".parse().expect("peer")));
    }
}
