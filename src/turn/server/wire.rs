//! The per-packet STUN wire formats, read and written by hand so the data
//! path never allocates: the STUN header type (RFC 8489 §5),
//! XOR-PEER-ADDRESS (RFC 8656 §18.3) and Send/Data indications (§11).
//! ChannelData framing (§12.4) is in [`crate::turn::channel_data`], shared
//! with the client. Requests go through stun-rs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::stun::message::{HEADER_LEN, MAGIC_COOKIE, attributes, transaction_id};

pub const XOR_PEER_ADDRESS: u16 = 0x0012;
pub const DATA: u16 = 0x0013;
pub const FINGERPRINT: u16 = 0x8028;

/// The class of a STUN message (the two C bits of the type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Method and class from the 14-bit message type.
pub fn method_and_class(bytes: &[u8]) -> (u16, Class) {
    let t = u16::from_be_bytes([bytes[0], bytes[1]]);
    let method = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

fn message_type(method: u16, class: Class) -> u16 {
    let c = match class {
        Class::Request => 0,
        Class::Indication => 1,
        Class::Success => 2,
        Class::Error => 3,
    };
    (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

/// Decodes an XOR-ed address value (XOR-PEER-ADDRESS and friends).
pub fn xor_address(value: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (value[1], value.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            for i in 0..4 {
                o[i] = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            for i in 0..16 {
                let k = if i < 4 { cookie[i] } else { txid[i - 4] };
                o[i] = value[4 + i] ^ k;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => None,
    }
}

fn put_xor_address(out: &mut [u8], addr: SocketAddr, txid: &[u8; 12]) -> usize {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    out[0] = 0;
    out[2..4].copy_from_slice(&(addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => {
            out[1] = 0x01;
            for (i, b) in a.octets().iter().enumerate() {
                out[4 + i] = b ^ cookie[i];
            }
            8
        }
        IpAddr::V6(a) => {
            out[1] = 0x02;
            for (i, b) in a.octets().iter().enumerate() {
                out[4 + i] = b ^ if i < 4 { cookie[i] } else { txid[i - 4] };
            }
            20
        }
    }
}

/// XOR-PEER-ADDRESS and DATA of a Send indication, borrowed from the packet.
pub fn send_indication(bytes: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let txid = transaction_id(bytes)?;
    let mut peer = None;
    let mut data = None;
    for (_, t, v) in attributes(bytes) {
        match t {
            XOR_PEER_ADDRESS if peer.is_none() => peer = xor_address(v, &txid),
            DATA if data.is_none() => data = Some(v),
            _ => {}
        }
    }
    Some((peer?, data?))
}

/// Writes a Data indication (method 0x007) carrying `data` from `peer` into
/// `out`; returns its length, or None if `out` is too small.
pub fn data_indication(out: &mut [u8], peer: SocketAddr, data: &[u8], txid: [u8; 12]) -> Option<usize> {
    let addr_len = if peer.is_ipv4() { 8 } else { 20 };
    let body = 4 + addr_len + 4 + data.len().div_ceil(4) * 4;
    let total = HEADER_LEN + body;
    if out.len() < total || body > u16::MAX as usize {
        return None;
    }
    out[..2].copy_from_slice(&message_type(0x007, Class::Indication).to_be_bytes());
    out[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(&txid);
    let mut p = HEADER_LEN;
    out[p..p + 2].copy_from_slice(&XOR_PEER_ADDRESS.to_be_bytes());
    out[p + 2..p + 4].copy_from_slice(&(addr_len as u16).to_be_bytes());
    put_xor_address(&mut out[p + 4..], peer, &txid);
    p += 4 + addr_len;
    out[p..p + 2].copy_from_slice(&DATA.to_be_bytes());
    out[p + 2..p + 4].copy_from_slice(&(data.len() as u16).to_be_bytes());
    p += 4;
    out[p..p + data.len()].copy_from_slice(data);
    out[p + data.len()..total].fill(0);
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_and_class_round_trip() {
        for (m, c) in
            [(0x001, Class::Request), (0x003, Class::Success), (0x006, Class::Indication), (0x009, Class::Error)]
        {
            let t = message_type(m, c).to_be_bytes();
            assert_eq!(method_and_class(&[t[0], t[1]]), (m, c));
        }
        assert_eq!(message_type(0x001, Class::Request), 0x0001);
        assert_eq!(message_type(0x001, Class::Success), 0x0101);
        assert_eq!(message_type(0x007, Class::Indication), 0x0017);
        assert_eq!(message_type(0x003, Class::Error), 0x0113);
    }

    #[test]
    fn data_indication_decodes_with_stun_rs() {
        let mut buf = [0u8; 256];
        for peer in ["203.0.113.4:5000", "[2001:db8::7]:6000"] {
            let peer: SocketAddr = peer.parse().unwrap();
            let n = data_indication(&mut buf, peer, b"hello", [3; 12]).unwrap();
            let msg = crate::stun::message::decode(&buf[..n]).expect("valid STUN");
            assert_eq!(msg.method(), stun_rs::methods::DATA);
            let got = msg.attributes().iter().find_map(|a| a.as_xor_peer_address().ok()).unwrap();
            assert_eq!(*got.socket_address(), peer);
            let d = msg.attributes().iter().find_map(|a| a.as_data().ok()).unwrap();
            assert_eq!(d.as_bytes(), b"hello");
            assert_eq!(send_indication(&buf[..n]), Some((peer, &b"hello"[..])));
        }
        assert_eq!(data_indication(&mut buf[..30], "203.0.113.4:5000".parse().unwrap(), b"hello", [3; 12]), None);
    }

    #[test]
    fn a_send_indication_shorter_than_a_header_is_refused_not_a_panic() {
        let mut buf = [0u8; 256];
        let n = data_indication(&mut buf, "203.0.113.4:5000".parse().unwrap(), b"hello", [3; 12]).unwrap();
        for len in [0, 8, HEADER_LEN - 1] {
            assert_eq!(send_indication(&buf[..len]), None, "{len} bytes");
        }
        assert!(send_indication(&buf[..n]).is_some());
    }
}
