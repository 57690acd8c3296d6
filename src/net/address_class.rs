//! Which kind of IP address this is: public, private (RFC 1918, RFC 4193), carrier-grade NAT
//! (RFC 6598), loopback, link-local, … — one answer for every command. `stun-probe` uses it to
//! spot CGNAT and nested NATs, `turn-alloc` to audit relayed addresses and explain refusals,
//! and the relay's peer policy to refuse special-purpose peers (RFC 8656 §21.3).
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo)
//! can be unwrapped with [`canonical`] first, so `::ffff:127.0.0.1` is judged as the loopback
//! address it reaches. The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
//! 2001:db8::/32) count as public: tests and examples stand them in for public addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

/// The class of an IP address, taken as given (see [`AddressClass::of_canonical`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressClass {
    /// Globally routable, as far as NAT traversal needs to know.
    Public,
    /// 0.0.0.0/8 ("this network"), `::`.
    Unspecified,
    /// 127.0.0.0/8, `::1`.
    Loopback,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16), fc00::/7 (unique local), fec0::/10 (old site-local).
    Private,
    /// 100.64.0.0/10, shared address space of carrier-grade NATs (RFC 6598).
    Cgnat,
    /// 169.254.0.0/16 (where cloud metadata lives), fe80::/10.
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4 (future use) other than the broadcast address.
    Reserved,
}

impl AddressClass {
    /// The class of `ip` exactly as written: an IPv4-mapped IPv6 address is IPv6 here.
    pub fn of(ip: IpAddr) -> AddressClass {
        match ip {
            IpAddr::V4(a) => {
                let o = a.octets();
                if o[0] == 0 {
                    AddressClass::Unspecified
                } else if o[0] == 127 {
                    AddressClass::Loopback
                } else if a.is_private() {
                    AddressClass::Private
                } else if o[0] == 100 && (o[1] & 0xC0) == 64 {
                    AddressClass::Cgnat
                } else if a.is_link_local() {
                    AddressClass::LinkLocal
                } else if a.is_broadcast() {
                    AddressClass::Broadcast
                } else if a.is_multicast() {
                    AddressClass::Multicast
                } else if o[0] >= 240 {
                    AddressClass::Reserved
                } else {
                    AddressClass::Public
                }
            }
            IpAddr::V6(a) => {
                let s0 = a.segments()[0];
                if a.is_unspecified() {
                    AddressClass::Unspecified
                } else if a.is_loopback() {
                    AddressClass::Loopback
                } else if s0 & 0xfe00 == 0xfc00 || s0 & 0xffc0 == 0xfec0 {
                    AddressClass::Private
                } else if s0 & 0xffc0 == 0xfe80 {
                    AddressClass::LinkLocal
                } else if s0 & 0xff00 == 0xff00 {
                    AddressClass::Multicast
                } else {
                    AddressClass::Public
                }
            }
        }
    }

    /// The class of where a packet to `ip` really goes: [`canonical`] first.
    pub fn of_canonical(ip: IpAddr) -> AddressClass {
        AddressClass::of(canonical(ip))
    }

    pub fn is_public(self) -> bool {
        self == AddressClass::Public
    }

    /// For sentences: "a private", "a carrier-grade NAT", … (followed by "address").
    pub fn with_article(self) -> &'static str {
        match self {
            AddressClass::Public => "a public",
            AddressClass::Unspecified => "an unspecified",
            AddressClass::Loopback => "a loopback",
            AddressClass::Private => "a private",
            AddressClass::Cgnat => "a carrier-grade NAT",
            AddressClass::LinkLocal => "a link-local",
            AddressClass::Multicast => "a multicast",
            AddressClass::Broadcast => "a broadcast",
            AddressClass::Reserved => "a reserved",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.with_article();
        f.write_str(s.split_once(' ').map_or(s, |(_, rest)| rest))
    }
}

/// The IPv4 address an IPv6 address really points at, if it embeds one; otherwise `ip`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let o = v6.octets();
    let seg = v6.segments();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    // ::ffff:a.b.c.d (IPv4-mapped)
    if seg[..5] == [0; 5] && seg[5] == 0xffff {
        return IpAddr::V4(tail);
    }
    // ::a.b.c.d (IPv4-compatible, deprecated); :: and ::1 are themselves.
    if seg[..6] == [0; 6] && u32::from(tail) > 1 {
        return IpAddr::V4(tail);
    }
    // 64:ff9b::/96 (NAT64 well-known prefix) and 64:ff9b:1::/48 (local-use NAT64).
    if (seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0]) || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1) {
        return IpAddr::V4(tail);
    }
    // 2002:AABB:CCDD::/48 (6to4): the IPv4 address sits in bits 16..48.
    if seg[0] == 0x2002 {
        return IpAddr::V4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // 2001:0::/32 (Teredo): the client's IPv4 address is the last 32 bits, inverted.
    if seg[0] == 0x2001 && seg[1] == 0 {
        return IpAddr::V4(Ipv4Addr::from(!u32::from(tail)));
    }
    ip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddressClass {
        AddressClass::of(s.parse().expect("ip"))
    }

    #[test]
    fn every_range_and_its_neighbours() {
        use AddressClass::*;
        for (ip, want) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("::1", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.15.255.255", Public),
            ("172.32.0.1", Public),
            ("192.168.1.1", Private),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("100.64.0.1", Cgnat),
            ("100.127.255.254", Cgnat),
            ("100.63.255.255", Public),
            ("100.128.0.1", Public),
            ("169.254.169.254", LinkLocal),
            ("169.255.0.1", Public),
            ("fe80::1", LinkLocal),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("8.8.8.8", Public),
            ("203.0.113.5", Public),
            ("198.51.100.1", Public),
            ("2001:db8::1", Public),
            ("2606:4700::1111", Public),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn embedded_ipv4_is_unwrapped_only_when_asked() {
        for (ip, inner) in [
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:0.0.0.0", "0.0.0.0"),
            ("::192.168.0.1", "192.168.0.1"),
            ("64:ff9b::7f00:1", "127.0.0.1"),
            ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"),
            ("2002:a9fe:a9fe::1", "169.254.169.254"),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let inner: IpAddr = inner.parse().expect("ip");
            assert_eq!(canonical(ip), inner, "{ip}");
            assert_eq!(AddressClass::of_canonical(ip), AddressClass::of(inner), "{ip}");
        }
        assert_eq!(class("::ffff:127.0.0.1"), AddressClass::Public, "as written, an IPv6 address");
        for ip in ["::", "::1", "2001:db8::1", "10.0.0.1"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(canonical(ip), ip, "{ip} stays itself");
        }
    }

    #[test]
    fn names_for_sentences() {
        assert_eq!(AddressClass::Cgnat.with_article(), "a carrier-grade NAT");
        assert_eq!(AddressClass::Unspecified.with_article(), "an unspecified");
        assert_eq!(AddressClass::LinkLocal.to_string(), "link-local");
        assert!(AddressClass::Public.is_public() && !AddressClass::Cgnat.is_public());
    }
}
