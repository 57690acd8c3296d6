//! What lies beyond the home router: carrier-grade NAT (RFC 6598 shared address space,
//! 100.64.0.0/10) and double NAT, judged from evidence already gathered (no I/O): this host's
//! address, the router on the path, the external address the router claims over port mapping
//! (UPnP-IGD, NAT-PMP, PCP) and the public address a STUN server saw (RFC 5780 mapping-1).
//! Every verdict comes with a note naming the evidence; without evidence it stays null.

use std::net::{IpAddr, Ipv4Addr};

use crate::net::address_class::AddressClass;

/// The verdicts and the notes that justify them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Upstream {
    pub cgnat: Option<bool>,
    pub double_nat: Option<bool>,
    pub notes: Vec<String>,
}

/// What was seen. `router_external`: the protocol that said it and the address it claimed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence<'a> {
    pub local: Option<IpAddr>,
    pub public: Option<IpAddr>,
    pub gateway: Option<Ipv4Addr>,
    pub router_external: Option<(&'a str, IpAddr)>,
}

fn is_cgnat(ip: IpAddr) -> bool {
    AddressClass::of_canonical(ip) == AddressClass::Cgnat
}

pub fn judge(e: Evidence) -> Upstream {
    let mut u = Upstream::default();
    let no_nat = matches!((e.local, e.public), (Some(l), Some(p)) if l == p);

    // CGNAT: any address on our side of the internet in the shared address space.
    let mut cgnat_seen = Vec::new();
    if let Some(l) = e.local.filter(|l| is_cgnat(*l)) {
        cgnat_seen.push(format!("this host's address {l} is in 100.64.0.0/10"));
    }
    if let Some(g) = e.gateway.filter(|g| is_cgnat(IpAddr::V4(*g))) {
        cgnat_seen.push(format!("the first hop {g} is in 100.64.0.0/10"));
    }
    if let Some((proto, x)) = e.router_external.filter(|(_, x)| is_cgnat(*x)) {
        cgnat_seen.push(format!("the router's external address ({proto}) {x} is in 100.64.0.0/10"));
    }

    // Double NAT: the router's own external address is not the one the internet sees.
    match (e.router_external, e.public) {
        (Some((proto, x)), Some(p)) if x != p => {
            u.double_nat = Some(true);
            u.notes.push(format!(
                "double NAT: the router says ({proto}) its external address is {x}, but the STUN server saw {p}: another NAT sits beyond it"
            ));
        }
        (Some((proto, x)), Some(_)) => {
            u.double_nat = Some(false);
            u.notes.push(format!(
                "no double NAT: the router's external address ({proto}) {x} is the public address the STUN server saw"
            ));
        }
        (Some((proto, x)), None) if !AddressClass::of_canonical(x).is_public() => {
            u.double_nat = Some(true);
            u.notes.push(format!(
                "double NAT: the router's external address ({proto}) {x} is {}",
                AddressClass::of_canonical(x).with_article()
            ));
        }
        _ if no_nat => {
            u.double_nat = Some(false);
        }
        _ => u.notes.push(
            "double_nat unknown: no router told its external address over port mapping (UPnP-IGD, NAT-PMP, PCP)".into(),
        ),
    }

    if !cgnat_seen.is_empty() {
        u.cgnat = Some(true);
        u.notes.push(format!("CGNAT: {}", cgnat_seen.join("; ")));
    } else if no_nat {
        u.cgnat = Some(false);
        u.double_nat = Some(false);
        u.notes.push("no CGNAT and no double NAT: the STUN server saw this host's own address".into());
    } else if u.double_nat == Some(false) {
        u.cgnat = Some(false);
    } else {
        // A carrier NAT may use private (RFC 1918) space instead of 100.64/10: cannot tell.
        u.notes.push("cgnat unknown: no address on the path is in 100.64.0.0/10, but the NAT beyond the router (if any) is not seen".into());
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn router_holding_the_public_address_is_neither_cgnat_nor_double_nat() {
        let u = judge(Evidence {
            local: Some(ip("10.1.0.2")),
            public: Some(ip("203.0.113.11")),
            gateway: Some("10.1.0.1".parse().unwrap()),
            router_external: Some(("UPnP-IGD", ip("203.0.113.11"))),
        });
        assert_eq!((u.cgnat, u.double_nat), (Some(false), Some(false)));
        assert!(u.notes.iter().any(|n| n.contains("UPnP-IGD") && n.contains("203.0.113.11")), "{u:?}");
    }

    #[test]
    fn router_behind_a_carrier_nat_is_cgnat_and_double_nat_with_the_evidence_named() {
        let u = judge(Evidence {
            local: Some(ip("192.168.1.20")),
            public: Some(ip("198.51.100.1")),
            gateway: Some("192.168.1.1".parse().unwrap()),
            router_external: Some(("NAT-PMP", ip("100.64.3.7"))),
        });
        assert_eq!((u.cgnat, u.double_nat), (Some(true), Some(true)));
        assert!(u.notes.iter().any(|n| n.starts_with("CGNAT:") && n.contains("NAT-PMP") && n.contains("100.64.3.7")));
        assert!(u.notes.iter().any(|n| n.starts_with("double NAT:") && n.contains("198.51.100.1")));
    }

    #[test]
    fn a_private_router_address_is_double_nat_but_not_proof_of_cgnat() {
        let u = judge(Evidence {
            local: Some(ip("192.168.1.20")),
            public: Some(ip("198.51.100.1")),
            gateway: None,
            router_external: Some(("PCP", ip("10.0.0.5"))),
        });
        assert_eq!((u.cgnat, u.double_nat), (None, Some(true)));
        // Without STUN the router's private external address is still evidence.
        let u = judge(Evidence { router_external: Some(("PCP", ip("10.0.0.5"))), ..Default::default() });
        assert_eq!(u.double_nat, Some(true));
    }

    #[test]
    fn a_host_in_shared_address_space_is_cgnat_even_without_port_mapping() {
        let u = judge(Evidence {
            local: Some(ip("100.70.1.2")),
            public: Some(ip("198.51.100.1")),
            gateway: Some("100.70.0.1".parse().unwrap()),
            router_external: None,
        });
        assert_eq!((u.cgnat, u.double_nat), (Some(true), None));
        assert!(u.notes.iter().any(|n| n.contains("this host's address 100.70.1.2")));
        assert!(u.notes.iter().any(|n| n.contains("first hop 100.70.0.1")));
    }

    #[test]
    fn no_nat_at_all_is_false_false_and_no_evidence_is_null_null() {
        let u = judge(Evidence {
            local: Some(ip("203.0.113.101")),
            public: Some(ip("203.0.113.101")),
            ..Default::default()
        });
        assert_eq!((u.cgnat, u.double_nat), (Some(false), Some(false)));
        let u = judge(Evidence { local: Some(ip("10.1.0.2")), public: Some(ip("203.0.113.11")), ..Default::default() });
        assert_eq!((u.cgnat, u.double_nat), (None, None));
        assert_eq!(u.notes.len(), 2, "{u:?}");
    }
}
