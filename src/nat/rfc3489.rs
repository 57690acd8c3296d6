//! Classic STUN servers (RFC 3489 §11.2.3): CHANGED-ADDRESS instead of OTHER-ADDRESS.
//!
//! A server such as Debian's `stund` (Vovida 0.97) honours CHANGE-REQUEST and names its alternate
//! IP and port in CHANGED-ADDRESS (type 0x0005, the MAPPED-ADDRESS format), but sends no RFC 5780
//! OTHER-ADDRESS (0x802C). Its alternate is the same pair of IP and port RFC 5780 would name, so
//! the mapping (§4.3) and filtering (§4.4) tests can run against it; the report says so in a note.
//! The STUN library does not decode this attribute (RFC 5389 removed it), hence this reader.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// RFC 3489 §11.2.3 CHANGED-ADDRESS.
const CHANGED_ADDRESS: u16 = 0x0005;
const HEADER: usize = 20;

/// CHANGED-ADDRESS of a STUN message, if it has a well-formed one. Bounds are checked at every
/// step: this reads what a network peer sent.
pub fn changed_address(msg: &[u8]) -> Option<SocketAddr> {
    let body_len = u16::from_be_bytes([*msg.get(2)?, *msg.get(3)?]) as usize;
    let body = msg.get(HEADER..HEADER.checked_add(body_len)?)?;
    let mut at = 0usize;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == CHANGED_ADDRESS {
            return parse_address(value);
        }
        // Attributes are padded to a multiple of 4 bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// The MAPPED-ADDRESS format: reserved, family (1: IPv4, 2: IPv6), port, address.
fn parse_address(v: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]);
    let ip = match (v.get(1)?, v.len()) {
        (1, 8) => IpAddr::V4(Ipv4Addr::new(v[4], v[5], v[6], v[7])),
        (2, 20) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&v[4..20]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().div_ceil(4) * 4, 0);
        }
        let mut m = vec![0x01, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn changed_address_is_read_after_other_attributes() {
        let software = (0x8022, b"Vovida.org 0.97\0x".to_vec()); // odd length: padded
        let changed = (CHANGED_ADDRESS, vec![0, 1, 0x0d, 0x97, 203, 0, 113, 2]);
        let m = message(&[software, changed]);
        assert_eq!(changed_address(&m), Some("203.0.113.2:3479".parse().unwrap()));
    }

    #[test]
    fn ipv6_changed_address_is_read() {
        let mut v = vec![0, 2, 0x0d, 0x97];
        v.extend_from_slice(&"2001:db8::11".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(changed_address(&message(&[(CHANGED_ADDRESS, v)])), Some("[2001:db8::11]:3479".parse().unwrap()));
    }

    #[test]
    fn truncated_or_malformed_input_gives_none_and_never_panics() {
        let good = message(&[(CHANGED_ADDRESS, vec![0, 1, 0x0d, 0x97, 203, 0, 113, 2])]);
        for n in 0..good.len() {
            assert_eq!(changed_address(&good[..n]), None, "cut at {n}");
        }
        // A length running past the body, a wrong family, a short address.
        assert_eq!(changed_address(&message(&[(CHANGED_ADDRESS, vec![0, 3, 0, 1, 1, 2, 3, 4])])), None);
        assert_eq!(changed_address(&message(&[(CHANGED_ADDRESS, vec![0, 1, 0, 1, 1])])), None);
        let mut lying = good.clone();
        lying[22..24].copy_from_slice(&0xfff0u16.to_be_bytes());
        assert_eq!(changed_address(&lying), None);
        assert_eq!(changed_address(&message(&[])), None);
    }
}
