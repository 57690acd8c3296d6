//! Which peers a relay may talk to (RFC 8656 §21.3 "Open TURN server", and
//! the lessons of coturn's CVE-2020-26262 and the TURN-abuse research).
//!
//! A relay that forwards to any address lets anyone reach the relay's
//! loopback services, the private network it sits in, and the cloud
//! metadata endpoint. The checklist, in order:
//! 1. canonicalise the address: an IPv6 address that carries an IPv4 address
//!    (IPv4-mapped, IPv4-compatible, 6to4, NAT64, Teredo) is judged as that
//!    IPv4 address, because that is where the packet ends up;
//! 2. `--deny-peer` ranges are refused, whatever else says;
//! 3. another live allocation's relayed address on this relay is allowed (the
//!    packet is delivered internally, never leaves the process);
//! 4. the relay's own listening addresses (also under `--external-ip`) are
//!    refused (no loops through the relay); the core adds the relayed
//!    addresses of allocations that ended recently, on every packet, so a
//!    channel to a freed relayed port cannot reach what took the port next;
//! 5. every other port of the relay host's own non-loopback addresses is
//!    refused unless `--allow-relay-host-peers` (its SSH, its databases);
//! 6. `--allow-peer` ranges are allowed;
//! 7. special-purpose ranges are refused unless a flag allows their class.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::Serialize;

use crate::net::address_class::AddressClass;

/// An IP range in CIDR notation (`10.0.0.0/8`, `fe80::/10`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` (already canonical) is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => prefix_eq(&net.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(a)) => prefix_eq(&net.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xFFu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not an IP range: expected CIDR like 10.0.0.0/8, 2001:db8::/32 or a bare IP");
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = ip.trim_matches(|c| c == '[' || c == ']').parse().map_err(|_| bad())?;
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Cidr::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The coturn-style "min-max" IP range (`denied-peer-ip=10.0.0.0-10.255.255.255`),
/// converted to the CIDRs that cover it exactly.
pub fn range_to_cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    let Some((lo, hi)) = s.split_once('-') else { return Ok(vec![s.trim().parse()?]) };
    let bad = || format!("'{s}' is not an IP range: expected MIN-MAX of the same family");
    let lo: IpAddr = lo.trim().parse().map_err(|_| bad())?;
    let hi: IpAddr = hi.trim().parse().map_err(|_| bad())?;
    let (mut lo, hi, bits, v4) = match (lo, hi) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32u32, true),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128u32, false),
        _ => return Err(bad()),
    };
    if lo > hi {
        return Err(bad());
    }
    let mut out = Vec::new();
    loop {
        // The largest aligned block starting at lo that does not pass hi.
        let mut size = if lo == 0 { bits } else { lo.trailing_zeros().min(bits) };
        while size > 0 && (size >= 128 || lo + ((1u128 << size) - 1) > hi) {
            size -= 1;
        }
        let addr = if v4 { IpAddr::V4(Ipv4Addr::from(lo as u32)) } else { IpAddr::V6(Ipv6Addr::from(lo)) };
        out.push(Cidr { addr, prefix: (bits - size) as u8 });
        let next = if size >= 128 { None } else { lo.checked_add(1u128 << size) };
        match next {
            Some(n) if n <= hi && n > lo => lo = n,
            _ => break,
        }
    }
    Ok(out)
}

/// Why a peer was refused; also the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// In a `--deny-peer` range.
    Denied,
    Unspecified,
    Loopback,
    /// RFC 1918, 100.64.0.0/10 (CGNAT), fc00::/7, fec0::/10.
    Private,
    /// 169.254.0.0/16 (cloud metadata lives here), fe80::/10.
    LinkLocal,
    Multicast,
    Broadcast,
    /// 240.0.0.0/4.
    Reserved,
    /// One of the relay's own listening addresses, or the relayed address of an allocation
    /// that has ended (whatever took the port since is not a peer).
    OwnAddress,
    /// Any other port of an address of the relay host (an interface, relay or external
    /// address), unless `--allow-relay-host-peers`.
    OwnHost,
}

impl Refusal {
    pub const ALL: [Refusal; 10] = [
        Refusal::Denied,
        Refusal::Unspecified,
        Refusal::Loopback,
        Refusal::Private,
        Refusal::LinkLocal,
        Refusal::Multicast,
        Refusal::Broadcast,
        Refusal::Reserved,
        Refusal::OwnAddress,
        Refusal::OwnHost,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::Unspecified => "unspecified",
            Refusal::Loopback => "loopback",
            Refusal::Private => "private",
            Refusal::LinkLocal => "link_local",
            Refusal::Multicast => "multicast",
            Refusal::Broadcast => "broadcast",
            Refusal::Reserved => "reserved",
            Refusal::OwnAddress => "own_address",
            Refusal::OwnHost => "own_host",
        }
    }

    /// The reason phrase of the 403 (RFC 8489 §14.8, under 128 characters):
    /// what the peer is and the flag that would allow it, if one does. The
    /// client has authenticated by then, so this tells nothing to a stranger.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Denied => "peer address is in a --deny-peer range",
            Refusal::Unspecified => "peer address is unspecified",
            Refusal::Loopback => "peer address is loopback; see --allow-loopback-peers",
            Refusal::Private => "peer address is private; see --allow-private-peers or --allow-peer",
            Refusal::LinkLocal => "peer address is link-local; see --allow-private-peers or --allow-peer",
            Refusal::Multicast => "peer address is multicast; see --allow-peer",
            Refusal::Broadcast => "peer address is broadcast; see --allow-peer",
            Refusal::Reserved => "peer address is reserved (240.0.0.0/4); see --allow-peer",
            Refusal::OwnAddress => "peer address is one of this relay's own listening or freed relayed addresses",
            Refusal::OwnHost => "peer address belongs to the relay host; see --allow-relay-host-peers",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

pub use crate::net::address_class::canonical;

/// The special-purpose class of a canonical address, if it has one (CGNAT space counts as private).
pub fn classify(ip: IpAddr) -> Option<Refusal> {
    match AddressClass::of(ip) {
        AddressClass::Public => None,
        AddressClass::Unspecified => Some(Refusal::Unspecified),
        AddressClass::Loopback => Some(Refusal::Loopback),
        AddressClass::Private | AddressClass::Cgnat => Some(Refusal::Private),
        AddressClass::LinkLocal => Some(Refusal::LinkLocal),
        AddressClass::Multicast => Some(Refusal::Multicast),
        AddressClass::Broadcast => Some(Refusal::Broadcast),
        AddressClass::Reserved => Some(Refusal::Reserved),
    }
}

/// The operator's choices (flags and config file).
#[derive(Debug, Clone, Default)]
pub struct PeerPolicyConfig {
    pub allow_loopback: bool,
    pub allow_private: bool,
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// Where the relay listens (unspecified IPs already expanded to interface addresses), also
    /// under `--external-ip`: refused always.
    pub own_addresses: Vec<SocketAddr>,
    /// Every non-loopback address of the relay host (interfaces, listen, relay, alternate and
    /// external IPs): any port refused unless `allow_host`. Loopback is the loopback class.
    pub host_ips: Vec<IpAddr>,
    pub allow_host: bool,
}

/// The verdict on one peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Another allocation's relayed address: deliver inside the relay.
    Internal,
    Refuse(Refusal),
}

#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    cfg: PeerPolicyConfig,
}

impl PeerPolicy {
    pub fn new(cfg: PeerPolicyConfig) -> Self {
        PeerPolicy { cfg }
    }

    /// Judges `peer`; `is_relayed` says whether an address is one of this
    /// relay's allocations (checked on the canonical address).
    pub fn check(&self, peer: SocketAddr, is_relayed: impl Fn(SocketAddr) -> bool) -> Verdict {
        let ip = canonical(peer.ip());
        let peer = SocketAddr::new(ip, peer.port());
        if self.cfg.deny.iter().any(|c| c.contains(ip)) {
            return Verdict::Refuse(Refusal::Denied);
        }
        if is_relayed(peer) {
            return Verdict::Internal;
        }
        if self.cfg.own_addresses.iter().any(|a| canonical(a.ip()) == ip && a.port() == peer.port()) {
            return Verdict::Refuse(Refusal::OwnAddress);
        }
        if !self.cfg.allow_host && self.cfg.host_ips.iter().any(|h| canonical(*h) == ip) {
            return Verdict::Refuse(Refusal::OwnHost);
        }
        if self.cfg.allow.iter().any(|c| c.contains(ip)) {
            return Verdict::Allow;
        }
        match classify(ip) {
            Some(Refusal::Loopback) if self.cfg.allow_loopback => Verdict::Allow,
            Some(Refusal::Private | Refusal::LinkLocal) if self.cfg.allow_private => Verdict::Allow,
            Some(r) => Verdict::Refuse(r),
            None => Verdict::Allow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn strict() -> PeerPolicy {
        PeerPolicy::new(PeerPolicyConfig { own_addresses: vec![sa("198.51.100.1:3478")], ..Default::default() })
    }

    fn verdict(p: &PeerPolicy, s: &str) -> Verdict {
        p.check(sa(s), |_| false)
    }

    #[test]
    fn every_refusal_has_a_short_reason_naming_its_flag() {
        for r in Refusal::ALL {
            assert!(r.reason().len() < 128, "{r}: RFC 8489 §14.8 caps the reason phrase");
        }
        assert!(Refusal::Loopback.reason().contains("--allow-loopback-peers"));
        assert!(Refusal::OwnHost.reason().contains("--allow-relay-host-peers"));
        assert!(Refusal::Private.reason().contains("--allow-private-peers"));
    }

    #[test]
    fn public_peers_are_allowed() {
        let p = strict();
        assert_eq!(verdict(&p, "203.0.113.5:4000"), Verdict::Allow);
        assert_eq!(verdict(&p, "[2001:db8::1]:4000"), Verdict::Allow);
        assert_eq!(verdict(&p, "8.8.8.8:53"), Verdict::Allow);
    }

    #[test]
    fn every_special_range_is_refused_by_default() {
        let p = strict();
        for (addr, why) in [
            ("0.0.0.0:1", Refusal::Unspecified),
            ("0.1.2.3:1", Refusal::Unspecified),
            ("[::]:1", Refusal::Unspecified),
            ("127.0.0.1:1", Refusal::Loopback),
            ("127.255.0.9:1", Refusal::Loopback),
            ("[::1]:1", Refusal::Loopback),
            ("10.1.2.3:1", Refusal::Private),
            ("172.16.0.1:1", Refusal::Private),
            ("172.31.255.255:1", Refusal::Private),
            ("192.168.1.1:1", Refusal::Private),
            ("100.64.0.1:1", Refusal::Private),
            ("100.127.255.254:1", Refusal::Private),
            ("[fc00::1]:1", Refusal::Private),
            ("[fd12:3456::1]:1", Refusal::Private),
            ("[fec0::1]:1", Refusal::Private),
            ("169.254.169.254:80", Refusal::LinkLocal),
            ("[fe80::1]:1", Refusal::LinkLocal),
            ("224.0.0.1:1", Refusal::Multicast),
            ("239.255.255.250:1900", Refusal::Multicast),
            ("[ff02::1]:1", Refusal::Multicast),
            ("255.255.255.255:1", Refusal::Broadcast),
            ("240.0.0.1:1", Refusal::Reserved),
            ("198.51.100.1:3478", Refusal::OwnAddress),
        ] {
            assert_eq!(verdict(&p, addr), Verdict::Refuse(why), "{addr}");
        }
        // Neighbours of the ranges are public.
        for addr in ["172.32.0.1:1", "172.15.255.255:1", "100.128.0.1:1", "169.255.0.1:1", "198.51.100.1:3479"] {
            assert_eq!(verdict(&p, addr), Verdict::Allow, "{addr}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_unwrapped_first() {
        let p = strict();
        for (addr, why) in [
            ("[::ffff:127.0.0.1]:1", Refusal::Loopback),
            ("[::ffff:10.0.0.1]:1", Refusal::Private),
            ("[::ffff:169.254.169.254]:80", Refusal::LinkLocal),
            ("[::127.0.0.1]:1", Refusal::Loopback),
            ("[::192.168.0.1]:1", Refusal::Private),
            ("[2002:7f00:1::]:1", Refusal::Loopback),
            ("[2002:a9fe:a9fe::1]:80", Refusal::LinkLocal),
            ("[64:ff9b::7f00:1]:1", Refusal::Loopback),
            ("[64:ff9b::10.0.0.1]:1", Refusal::Private),
            ("[64:ff9b:1::a9fe:a9fe]:80", Refusal::LinkLocal),
            ("[2001:0:4136:e378:8000:63bf:80ff:fffe]:1", Refusal::Loopback), // Teredo, client 127.0.0.1
            ("[::ffff:198.51.100.1]:3478", Refusal::OwnAddress),
            ("[::ffff:0.0.0.0]:1", Refusal::Unspecified),
        ] {
            assert_eq!(verdict(&p, addr), Verdict::Refuse(why), "{addr}");
        }
        assert_eq!(verdict(&p, "[::ffff:203.0.113.9]:1"), Verdict::Allow);
        assert_eq!(verdict(&p, "[2002:cb00:7109::]:1"), Verdict::Allow);
        assert_eq!(canonical("::ffff:1.2.3.4".parse().unwrap()), "1.2.3.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn flags_allow_their_class_only() {
        let p = PeerPolicy::new(PeerPolicyConfig {
            allow_loopback: true,
            own_addresses: vec![sa("127.0.0.1:3478")],
            ..Default::default()
        });
        assert_eq!(verdict(&p, "127.0.0.1:5000"), Verdict::Allow);
        assert_eq!(verdict(&p, "[::ffff:127.0.0.1]:5000"), Verdict::Allow);
        assert_eq!(verdict(&p, "10.0.0.1:1"), Verdict::Refuse(Refusal::Private));
        assert_eq!(verdict(&p, "127.0.0.1:3478"), Verdict::Refuse(Refusal::OwnAddress), "never the relay's own port");
        let p = PeerPolicy::new(PeerPolicyConfig { allow_private: true, ..Default::default() });
        assert_eq!(verdict(&p, "10.0.0.1:1"), Verdict::Allow);
        assert_eq!(verdict(&p, "127.0.0.1:1"), Verdict::Refuse(Refusal::Loopback));
        assert_eq!(verdict(&p, "224.0.0.1:1"), Verdict::Refuse(Refusal::Multicast));
    }

    #[test]
    fn allow_and_deny_ranges_and_internal_delivery() {
        let p = PeerPolicy::new(PeerPolicyConfig {
            allow: vec!["10.9.0.0/16".parse().unwrap()],
            deny: vec!["203.0.113.0/24".parse().unwrap(), "10.9.9.0/24".parse().unwrap()],
            ..Default::default()
        });
        assert_eq!(verdict(&p, "10.9.1.1:1"), Verdict::Allow);
        assert_eq!(verdict(&p, "10.9.9.1:1"), Verdict::Refuse(Refusal::Denied), "deny wins over allow");
        assert_eq!(verdict(&p, "203.0.113.7:1"), Verdict::Refuse(Refusal::Denied));
        assert_eq!(verdict(&p, "[::ffff:203.0.113.7]:1"), Verdict::Refuse(Refusal::Denied));
        let relayed = sa("127.0.0.1:50000");
        assert_eq!(p.check(relayed, |a| a == relayed), Verdict::Internal);
        assert_eq!(p.check(sa("[::ffff:127.0.0.1]:50000"), |a| a == relayed), Verdict::Internal);
        assert_eq!(p.check(sa("127.0.0.1:50001"), |a| a == relayed), Verdict::Refuse(Refusal::Loopback));
    }

    #[test]
    fn every_port_of_the_relay_host_is_refused_unless_allowed() {
        let cfg = PeerPolicyConfig {
            own_addresses: vec![sa("203.0.113.1:3478"), sa("198.51.100.77:3478")],
            host_ips: vec![
                "203.0.113.1".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
                "198.51.100.77".parse().unwrap(),
            ],
            allow: vec!["203.0.113.0/24".parse().unwrap()],
            ..Default::default()
        };
        let p = PeerPolicy::new(cfg.clone());
        for (addr, why) in [
            ("203.0.113.1:22", Refusal::OwnHost),
            ("[::ffff:203.0.113.1]:22", Refusal::OwnHost),
            ("[2001:db8::1]:5432", Refusal::OwnHost),
            ("198.51.100.77:22", Refusal::OwnHost),
            ("198.51.100.77:3478", Refusal::OwnAddress),
            ("203.0.113.1:50000", Refusal::OwnHost),
        ] {
            assert_eq!(verdict(&p, addr), Verdict::Refuse(why), "{addr}");
        }
        assert_eq!(verdict(&p, "203.0.113.9:22"), Verdict::Allow, "a neighbour is not the host");
        let live = sa("203.0.113.1:50000");
        assert_eq!(p.check(live, |a| a == live), Verdict::Internal, "a live allocation is reachable");
        let open = PeerPolicy::new(PeerPolicyConfig { allow_host: true, allow_loopback: true, ..cfg });
        assert_eq!(verdict(&open, "203.0.113.1:22"), Verdict::Allow);
        assert_eq!(verdict(&open, "203.0.113.1:3478"), Verdict::Refuse(Refusal::OwnAddress));
    }

    #[test]
    fn cidr_and_ranges_parse() {
        let c: Cidr = "192.168.0.0/16".parse().unwrap();
        assert!(c.contains("192.168.200.1".parse().unwrap()));
        assert!(!c.contains("192.169.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        let r = range_to_cidrs("10.0.0.0-10.255.255.255").unwrap();
        assert_eq!(r, vec!["10.0.0.0/8".parse::<Cidr>().unwrap()]);
        let r = range_to_cidrs("192.168.1.1-192.168.1.6").unwrap();
        let s: Vec<String> = r.iter().map(|c| c.to_string()).collect();
        assert_eq!(s, ["192.168.1.1/32", "192.168.1.2/31", "192.168.1.4/31", "192.168.1.6/32"]);
        assert_eq!(range_to_cidrs("0.0.0.0-255.255.255.255").unwrap(), vec!["0.0.0.0/0".parse().unwrap()]);
        assert!(range_to_cidrs("10.0.0.9-10.0.0.1").is_err());
        assert!(range_to_cidrs("10.0.0.1-::1").is_err());
    }
}
