//! What the findings mean for peer-to-peer: for each kind of peer, whether a direct path is
//! expected and how, and one difficulty for the whole. Pure functions of the verdicts (no I/O).
//!
//! The rules follow from RFC 4787's behaviours (see `classify`) and the connectivity checks of
//! ICE (RFC 8445): a peer behind endpoint-independent mapping can be reached by hole punching
//! from anyone whose filter it has opened; port-restricted ↔ symmetric needs the birthday method
//! (many mappings on one side, many probes on the other); symmetric ↔ symmetric needs a relay,
//! unless a router maps a port (UPnP-IGD, NAT-PMP, PCP), which anyone can then reach.

use serde::Serialize;

use crate::nat::classify::NatType;

/// How hard peer-to-peer is from here, overall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Difficulty {
    /// Every kind of peer can reach this host without hole punching (open, full cone, a mapped port).
    Easy,
    /// Hole punching works with every kind of peer (the birthday method for some).
    Medium,
    /// Some peers (symmetric ones) only through a relay.
    Hard,
    /// No UDP: every peer through a relay over TCP or TLS.
    RelayOnly,
}

/// How a direct path to one kind of peer comes about, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum How {
    /// One side simply sends to the other's public address.
    Direct,
    /// Both send at once, opening their filters (ICE connectivity checks).
    HolePunching,
    /// Many mappings against many probes (port prediction for a symmetric NAT).
    Birthday,
    /// A port the router mapped on request, reachable by anyone.
    PortMapping,
    /// No direct path: TURN.
    Relay,
}

/// The kinds of peer the report speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    Open,
    FullCone,
    Restricted,
    PortRestricted,
    Symmetric,
    /// A peer with IPv6 (behind a stateful firewall, the common case), reached over IPv6.
    Ipv6,
}

impl PeerKind {
    const IPV4: [PeerKind; 5] =
        [PeerKind::Open, PeerKind::FullCone, PeerKind::Restricted, PeerKind::PortRestricted, PeerKind::Symmetric];

    fn words(self) -> &'static str {
        match self {
            PeerKind::Open => "open hosts",
            PeerKind::FullCone => "full-cone",
            PeerKind::Restricted => "restricted-cone",
            PeerKind::PortRestricted => "port-restricted-cone",
            PeerKind::Symmetric => "symmetric NAT peers",
            PeerKind::Ipv6 => "IPv6 peers",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    pub peer: PeerKind,
    pub direct: bool,
    pub how: How,
}

/// The `p2p` object of the report.
#[derive(Debug, Clone, Serialize)]
pub struct P2p {
    pub difficulty: Difficulty,
    pub peers: Vec<Peer>,
    /// The plain sentences the table view ends with.
    pub sentences: Vec<String>,
}

/// What the run found that matters here.
#[derive(Debug, Clone, Copy)]
pub struct Verdicts {
    /// The IPv4 (top-level) verdict.
    pub v4: Option<NatType>,
    /// A router mapped a port on request (any of UPnP-IGD, NAT-PMP, PCP).
    pub port_mapped: bool,
    /// The IPv6 verdict; None when IPv6 did not answer (no route, no server, blocked).
    pub v6: Option<NatType>,
}

/// How we reach a peer of kind `peer` when our NAT is `ours` (both IPv4).
fn v4_path(ours: NatType, peer: PeerKind) -> How {
    use NatType as N;
    use PeerKind as P;
    match (ours, peer) {
        (N::UdpBlocked, _) => How::Relay,
        (N::OpenInternet | N::FullCone, P::Open) => How::Direct,
        // Anyone can send to us: the peer's first packet gets through and opens its own filter.
        (N::OpenInternet | N::FullCone, _) => How::HolePunching,
        (_, P::Open) => How::Direct,
        // A restricted cone checks only the IP, which a symmetric NAT keeps.
        (N::RestrictedCone, _) => How::HolePunching,
        (N::PortRestrictedCone | N::SymmetricUdpFirewall, P::Symmetric) => How::Birthday,
        (N::PortRestrictedCone | N::SymmetricUdpFirewall, _) => How::HolePunching,
        (N::Symmetric, P::FullCone | P::Restricted) => How::HolePunching,
        (N::Symmetric, P::PortRestricted) => How::Birthday,
        (N::Symmetric, _) => How::Relay,
    }
}

/// How we reach an IPv6 peer (firewalled, endpoint-independent) given our IPv6 verdict.
fn v6_path(ours: Option<NatType>) -> How {
    match ours {
        Some(NatType::OpenInternet) => How::Direct,
        Some(NatType::UdpBlocked) | None => How::Relay,
        Some(t) => v4_path(t, PeerKind::PortRestricted),
    }
}

/// The `p2p` object, or None when the IPv4 verdict is unknown (nothing to reason from).
pub fn judge(v: Verdicts) -> Option<P2p> {
    let ours = v.v4?;
    let mut peers: Vec<Peer> = PeerKind::IPV4
        .iter()
        .map(|&peer| {
            let mut how = v4_path(ours, peer);
            // A mapped port is reachable by anyone: better than punching, and beats a relay.
            if v.port_mapped && ours != NatType::UdpBlocked && how != How::Direct {
                how = How::PortMapping;
            }
            Peer { peer, direct: how != How::Relay, how }
        })
        .collect();
    let how6 = v6_path(v.v6);
    peers.push(Peer { peer: PeerKind::Ipv6, direct: how6 != How::Relay, how: how6 });

    let v4_hows: Vec<How> = peers.iter().filter(|p| p.peer != PeerKind::Ipv6).map(|p| p.how).collect();
    let difficulty = if ours == NatType::UdpBlocked {
        Difficulty::RelayOnly
    } else if v4_hows.contains(&How::Relay) {
        Difficulty::Hard
    } else if matches!(ours, NatType::OpenInternet | NatType::FullCone) || v.port_mapped {
        Difficulty::Easy
    } else {
        Difficulty::Medium
    };
    let sentences = sentences(difficulty, &peers, v);
    Some(P2p { difficulty, peers, sentences })
}

fn list(kinds: &[PeerKind]) -> String {
    let words: Vec<&str> = kinds.iter().map(|k| k.words()).collect();
    match words.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Two sentences: the IPv4 peers by how they are reached, then IPv6.
fn sentences(difficulty: Difficulty, peers: &[Peer], v: Verdicts) -> Vec<String> {
    let of = |how: How| -> Vec<PeerKind> {
        peers.iter().filter(|p| p.peer != PeerKind::Ipv6 && p.how == how).map(|p| p.peer).collect()
    };
    let mut parts = Vec::new();
    for (how, words) in [
        (How::Direct, "directly"),
        (How::PortMapping, "through the port your router maps"),
        (How::HolePunching, "by hole punching"),
        (How::Birthday, "by the birthday method (many ports at once, slower)"),
    ] {
        let kinds = of(how);
        if !kinds.is_empty() {
            parts.push(format!("{} {words}", list(&kinds)));
        }
    }
    let relay = of(How::Relay);
    let level = match difficulty {
        Difficulty::Easy => "easy",
        Difficulty::Medium => "medium",
        Difficulty::Hard => "hard",
        Difficulty::RelayOnly => "relay-only",
    };
    let first = if difficulty == Difficulty::RelayOnly {
        "Peer-to-peer is relay-only from here: no UDP gets out, so every peer needs a TURN relay over TCP or TLS."
            .to_string()
    } else {
        let mut s = format!("Peer-to-peer is {level} from here (IPv4): you reach {}", parts.join("; "));
        if !relay.is_empty() {
            s.push_str(&format!("; {} only through a relay", list(&relay)));
        }
        s.push('.');
        s
    };
    let second = match (v.v6, peers.iter().find(|p| p.peer == PeerKind::Ipv6).map(|p| p.how)) {
        (None, _) => "Without working IPv6 here, a peer reachable only over IPv6 needs a relay.".to_string(),
        (Some(t), Some(How::Direct)) => {
            format!("Over IPv6 ({t}) every IPv6 peer can reach you directly, whatever their IPv4 NAT does.")
        }
        (Some(t), Some(How::HolePunching | How::PortMapping)) => format!(
            "Over IPv6 ({t}) hole punching reaches any firewalled IPv6 peer, even when both IPv4 NATs are symmetric."
        ),
        (Some(t), Some(How::Birthday)) => {
            format!("Over IPv6 ({t}) your NAT66 varies its ports: IPv6 peers need the birthday method.")
        }
        (Some(t), _) => format!("Over IPv6 ({t}) IPv6 peers need a relay."),
    };
    vec![first, second]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn how(p: &P2p, k: PeerKind) -> How {
        p.peers.iter().find(|x| x.peer == k).map(|x| x.how).unwrap()
    }

    #[test]
    fn unknown_verdict_gives_no_p2p() {
        assert!(judge(Verdicts { v4: None, port_mapped: true, v6: Some(NatType::OpenInternet) }).is_none());
    }

    #[test]
    fn symmetric_without_port_mapping_is_hard_and_relays_symmetric_peers() {
        let p = judge(Verdicts { v4: Some(NatType::Symmetric), port_mapped: false, v6: None }).unwrap();
        assert_eq!(p.difficulty, Difficulty::Hard);
        assert_eq!(how(&p, PeerKind::Symmetric), How::Relay);
        assert_eq!(how(&p, PeerKind::PortRestricted), How::Birthday);
        assert_eq!(how(&p, PeerKind::Restricted), How::HolePunching);
        assert_eq!(how(&p, PeerKind::Open), How::Direct);
        assert_eq!(how(&p, PeerKind::Ipv6), How::Relay);
        assert!(!p.peers.iter().find(|x| x.peer == PeerKind::Symmetric).unwrap().direct);
        assert_eq!(p.sentences.len(), 2);
        assert!(p.sentences[0].contains("symmetric NAT peers only through a relay"), "{:?}", p.sentences);
    }

    #[test]
    fn a_mapped_port_makes_a_symmetric_nat_easy() {
        let p = judge(Verdicts { v4: Some(NatType::Symmetric), port_mapped: true, v6: None }).unwrap();
        assert_eq!(p.difficulty, Difficulty::Easy);
        assert_eq!(how(&p, PeerKind::Symmetric), How::PortMapping);
        assert_eq!(how(&p, PeerKind::Open), How::Direct);
        assert!(p.peers.iter().all(|x| x.peer == PeerKind::Ipv6 || x.direct));
    }

    #[test]
    fn port_restricted_is_medium_with_the_birthday_method_for_symmetric_peers() {
        let p = judge(Verdicts {
            v4: Some(NatType::PortRestrictedCone),
            port_mapped: false,
            v6: Some(NatType::SymmetricUdpFirewall),
        })
        .unwrap();
        assert_eq!(p.difficulty, Difficulty::Medium);
        assert_eq!(how(&p, PeerKind::Symmetric), How::Birthday);
        assert_eq!(how(&p, PeerKind::FullCone), How::HolePunching);
        assert_eq!(how(&p, PeerKind::Ipv6), How::HolePunching);
        assert!(p.sentences[1].contains("hole punching reaches any firewalled IPv6 peer"), "{:?}", p.sentences);
    }

    #[test]
    fn open_and_full_cone_are_easy_and_udp_blocked_is_relay_only() {
        for t in [NatType::OpenInternet, NatType::FullCone] {
            let p = judge(Verdicts { v4: Some(t), port_mapped: false, v6: Some(NatType::OpenInternet) }).unwrap();
            assert_eq!(p.difficulty, Difficulty::Easy, "{t}");
            assert!(p.peers.iter().all(|x| x.direct), "{t}");
        }
        let p = judge(Verdicts { v4: Some(NatType::UdpBlocked), port_mapped: true, v6: None }).unwrap();
        assert_eq!(p.difficulty, Difficulty::RelayOnly);
        assert!(p.peers.iter().all(|x| x.how == How::Relay));
        assert!(p.sentences[0].contains("relay-only"));
    }
}
