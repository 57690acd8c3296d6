//! NAT-PMP messages (RFC 6886 §3.2 external address, §3.3 mapping): pure encode/decode, no I/O.
//!
//! A mapping is deleted by asking for it again with lifetime 0 and external port 0 (§3.4); the
//! router finds it by internal port and client address, so a delete needs nothing but the port.

use std::net::Ipv4Addr;

/// The port a NAT-PMP (and PCP) server listens on (RFC 6886 §3.1, RFC 6887 §19.1).
pub const SERVER_PORT: u16 = 5351;
const VERSION: u8 = 0;
const OP_EXTERNAL_ADDRESS: u8 = 0;
const OP_MAP_UDP: u8 = 1;
const RESPONSE: u8 = 128;

/// Request for the router's external IPv4 address (§3.2).
pub fn external_address_request() -> [u8; 2] {
    [VERSION, OP_EXTERNAL_ADDRESS]
}

/// Request to map UDP `internal_port` for `lifetime_s` (0 with external port 0: delete, §3.4).
pub fn map_udp_request(internal_port: u16, suggested_external: u16, lifetime_s: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = VERSION;
    b[1] = OP_MAP_UDP;
    b[4..6].copy_from_slice(&internal_port.to_be_bytes());
    b[6..8].copy_from_slice(&suggested_external.to_be_bytes());
    b[8..12].copy_from_slice(&lifetime_s.to_be_bytes());
    b
}

/// What a NAT-PMP answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    ExternalAddress {
        epoch: u32,
        ip: Ipv4Addr,
    },
    Mapped {
        epoch: u32,
        internal_port: u16,
        external_port: u16,
        lifetime_s: u32,
    },
    /// A non-zero result code (§3.5) to the request with this opcode.
    Failed {
        opcode: u8,
        code: u16,
    },
}

/// Result code names (RFC 6886 §3.5).
pub fn result_name(code: u16) -> &'static str {
    match code {
        1 => "unsupported version",
        2 => "not authorized/refused",
        3 => "network failure",
        4 => "out of resources",
        5 => "unsupported opcode",
        _ => "unknown result code",
    }
}

/// Parses an answer; None for anything that is not a well-formed NAT-PMP response.
pub fn parse(b: &[u8]) -> Option<Response> {
    if b.len() < 8 || b[0] != VERSION || b[1] & RESPONSE == 0 {
        return None;
    }
    let opcode = b[1] & !RESPONSE;
    let code = u16::from_be_bytes([b[2], b[3]]);
    let epoch = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    if code != 0 {
        return Some(Response::Failed { opcode, code });
    }
    match opcode {
        OP_EXTERNAL_ADDRESS if b.len() >= 12 => {
            Some(Response::ExternalAddress { epoch, ip: Ipv4Addr::new(b[8], b[9], b[10], b[11]) })
        }
        OP_MAP_UDP if b.len() >= 16 => Some(Response::Mapped {
            epoch,
            internal_port: u16::from_be_bytes([b[8], b[9]]),
            external_port: u16::from_be_bytes([b[10], b[11]]),
            lifetime_s: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_request_has_the_rfc_layout() {
        let r = map_udp_request(40000, 40001, 60);
        assert_eq!(r, [0, 1, 0, 0, 0x9c, 0x40, 0x9c, 0x41, 0, 0, 0, 60]);
        assert_eq!(external_address_request(), [0, 0]);
    }

    #[test]
    fn answers_are_parsed_and_errors_named() {
        let ext = [0, 128, 0, 0, 0, 0, 0, 9, 198, 51, 100, 1];
        assert_eq!(parse(&ext), Some(Response::ExternalAddress { epoch: 9, ip: Ipv4Addr::new(198, 51, 100, 1) }));
        let map = [0, 129, 0, 0, 0, 0, 0, 1, 0x9c, 0x40, 0x9c, 0x41, 0, 0, 0, 120];
        assert_eq!(
            parse(&map),
            Some(Response::Mapped { epoch: 1, internal_port: 40000, external_port: 40001, lifetime_s: 120 })
        );
        let refused = [0, 129, 0, 2, 0, 0, 0, 1];
        assert_eq!(parse(&refused), Some(Response::Failed { opcode: 1, code: 2 }));
        assert_eq!(result_name(2), "not authorized/refused");
    }

    #[test]
    fn truncated_requests_and_other_protocols_are_not_answers() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0, 128, 0, 0, 0, 0, 0, 9, 198]), None);
        assert_eq!(parse(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None, "a request is not an answer");
        assert_eq!(parse(&[2, 0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None, "PCP is not NAT-PMP");
    }
}
