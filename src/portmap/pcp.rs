//! PCP MAP messages (RFC 6887 §7 header, §11 MAP opcode): pure encode/decode, no I/O.
//!
//! A mapping is deleted by sending the same MAP request with lifetime 0 (§15); the server only
//! accepts that with the nonce that created the mapping (§11.1), so the caller keeps the nonce.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const VERSION: u8 = 2;
const OP_MAP: u8 = 1;
const RESPONSE: u8 = 0x80;
const UDP: u8 = 17;
/// A MAP request or response: 24-byte header + 36-byte MAP body.
pub const MAP_LEN: usize = 60;

/// An address as PCP carries it: IPv6, or IPv4-mapped IPv6 (§5).
fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn from_v6(b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    let v6 = Ipv6Addr::from(a);
    v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
}

/// A MAP request for UDP `internal_port` from `client` (the source address the server will see,
/// or it answers ADDRESS_MISMATCH). `suggested_external` may be unspecified (any address).
pub fn map_udp_request(
    nonce: [u8; 12],
    client: IpAddr,
    internal_port: u16,
    suggested_external: Option<(IpAddr, u16)>,
    lifetime_s: u32,
) -> [u8; MAP_LEN] {
    let mut b = [0u8; MAP_LEN];
    b[0] = VERSION;
    b[1] = OP_MAP;
    b[4..8].copy_from_slice(&lifetime_s.to_be_bytes());
    b[8..24].copy_from_slice(&to_v6(client).octets());
    b[24..36].copy_from_slice(&nonce);
    b[36] = UDP;
    b[40..42].copy_from_slice(&internal_port.to_be_bytes());
    let (ip, port) = suggested_external.unwrap_or((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    b[42..44].copy_from_slice(&port.to_be_bytes());
    b[44..60].copy_from_slice(&to_v6(ip).octets());
    b
}

/// What a PCP MAP answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapResponse {
    pub result: u8,
    pub lifetime_s: u32,
    pub epoch: u32,
    pub nonce: [u8; 12],
    pub internal_port: u16,
    pub external_port: u16,
    pub external_ip: IpAddr,
}

/// Why a PCP answer is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Map(MapResponse),
    /// A well-formed response header with an error and no MAP body (e.g. UNSUPP_VERSION from a
    /// NAT-PMP-only router, which answers with its own version 0 header, §9).
    Error {
        version: u8,
        result: u8,
    },
}

/// Result code names (RFC 6887 §7.4).
pub fn result_name(code: u8) -> &'static str {
    match code {
        0 => "success",
        1 => "UNSUPP_VERSION",
        2 => "NOT_AUTHORIZED",
        3 => "MALFORMED_REQUEST",
        4 => "UNSUPP_OPCODE",
        5 => "UNSUPP_OPTION",
        6 => "MALFORMED_OPTION",
        7 => "NETWORK_FAILURE",
        8 => "NO_RESOURCES",
        9 => "UNSUPP_PROTOCOL",
        10 => "USER_EX_QUOTA",
        11 => "CANNOT_PROVIDE_EXTERNAL",
        12 => "ADDRESS_MISMATCH",
        13 => "EXCESSIVE_REMOTE_PEERS",
        _ => "unknown result code",
    }
}

/// Parses an answer; None for anything that is not a PCP (or NAT-PMP version-error) response.
pub fn parse(b: &[u8]) -> Option<Parsed> {
    if b.len() < 4 || b[1] & RESPONSE == 0 {
        return None;
    }
    // A NAT-PMP server answers a version it does not know with its own header (RFC 6886 §3.5).
    if b[0] == 0 {
        let code = u16::from_be_bytes([b[2], b[3]]);
        return Some(Parsed::Error { version: 0, result: code.min(255) as u8 });
    }
    if b[0] != VERSION || b.len() < 24 {
        return None;
    }
    let result = b[3];
    if b[1] & !RESPONSE != OP_MAP || b.len() < MAP_LEN {
        return (result != 0).then_some(Parsed::Error { version: b[0], result });
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&b[24..36]);
    Some(Parsed::Map(MapResponse {
        result,
        lifetime_s: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        epoch: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        nonce,
        internal_port: u16::from_be_bytes([b[40], b[41]]),
        external_port: u16::from_be_bytes([b[42], b[43]]),
        external_ip: from_v6(&b[44..60]),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(req: &[u8; MAP_LEN], result: u8, lifetime: u32, ext: (Ipv4Addr, u16)) -> [u8; MAP_LEN] {
        let mut b = *req;
        b[1] |= RESPONSE;
        b[3] = result;
        b[4..8].copy_from_slice(&lifetime.to_be_bytes());
        b[8..24].fill(0);
        b[42..44].copy_from_slice(&ext.1.to_be_bytes());
        b[44..60].copy_from_slice(&ext.0.to_ipv6_mapped().octets());
        b
    }

    #[test]
    fn map_request_carries_client_nonce_port_and_lifetime() {
        let client: IpAddr = "10.1.0.2".parse().unwrap();
        let r = map_udp_request([7; 12], client, 40000, None, 60);
        assert_eq!(&r[..2], &[2, 1]);
        assert_eq!(&r[4..8], &60u32.to_be_bytes());
        assert_eq!(from_v6(&r[8..24]), client);
        assert_eq!(&r[24..36], &[7; 12]);
        assert_eq!(r[36], 17);
        assert_eq!(&r[40..42], &40000u16.to_be_bytes());
        assert_eq!(from_v6(&r[44..60]), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn map_answer_gives_the_external_address_and_lifetime() {
        let req = map_udp_request([7; 12], "10.1.0.2".parse().unwrap(), 40000, None, 60);
        let a = answer(&req, 0, 120, (Ipv4Addr::new(198, 51, 100, 1), 40000));
        let Some(Parsed::Map(m)) = parse(&a) else { panic!("not a MAP answer") };
        assert_eq!((m.result, m.lifetime_s, m.nonce, m.internal_port), (0, 120, [7; 12], 40000));
        assert_eq!(m.external_ip, IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)));
        assert_eq!(m.external_port, 40000);
        assert_eq!(result_name(12), "ADDRESS_MISMATCH");
    }

    #[test]
    fn nat_pmp_version_error_and_garbage_are_told_apart() {
        assert_eq!(parse(&[0, 0x81, 0, 1, 0, 0, 0, 0]), Some(Parsed::Error { version: 0, result: 1 }));
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[2, 1, 0, 0]), None, "a request is not an answer");
        let req = map_udp_request([1; 12], "10.1.0.2".parse().unwrap(), 1, None, 0);
        assert_eq!(parse(&req[..30]), None, "a truncated request is not an answer");
    }
}
