//! STUN message glue over stun-rs (RFC 8489 §5, §14; RFC 5780 §7).
//!
//! stun-rs does the encoding; this module gives natkit the few shapes it
//! needs: a Binding request (optionally with CHANGE-REQUEST), a typed view of
//! a Binding response, and cheap header checks that run before any decoding.

use std::net::SocketAddr;

use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags, ResponsePort};
use stun_rs::attributes::stun::Fingerprint;
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessage, StunMessageBuilder, TransactionId,
};

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
const FINGERPRINT_TYPE: u16 = 0x8028;

/// A fresh random 96-bit transaction id (RFC 8489 §5: uniformly random).
pub fn new_transaction_id() -> [u8; 12] {
    rand::random()
}

/// The transaction id of a STUN message, after checking the header shape
/// (top two bits zero, magic cookie, length a multiple of 4 that fits).
pub fn transaction_id(bytes: &[u8]) -> Option<[u8; 12]> {
    if !looks_like_stun(bytes) {
        return None;
    }
    let mut id = [0u8; 12];
    id.copy_from_slice(&bytes[8..20]);
    Some(id)
}

/// The cheap test of RFC 8489 §7.3 used to demultiplex STUN from other
/// traffic on one socket (RFC 7983): no decoding, no allocation.
pub fn looks_like_stun(bytes: &[u8]) -> bool {
    if bytes.len() < HEADER_LEN || bytes[0] & 0xC0 != 0 {
        return false;
    }
    let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    let cookie = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    cookie == MAGIC_COOKIE && len.is_multiple_of(4) && HEADER_LEN + len <= bytes.len()
}

/// The total length the header announces (header included), for stream framing.
pub fn framed_len(header: &[u8; HEADER_LEN]) -> usize {
    HEADER_LEN + u16::from_be_bytes([header[2], header[3]]) as usize
}

/// Encodes a message built with stun-rs.
pub fn encode(msg: &StunMessage) -> Vec<u8> {
    let encoder = MessageEncoderBuilder::default().build();
    // A STUN message over UDP fits the path MTU, so 2 KiB (room for TURN data) almost always
    // does; zeroing 64 KiB up front would cost every Send indication that much. Only a larger
    // message (TURN data over TCP) takes the second, full-size try.
    let mut last = None;
    for size in [2 * 1024, 64 * 1024] {
        let mut buf = vec![0u8; size];
        match encoder.encode(&mut buf, msg) {
            Ok(n) => {
                buf.truncate(n);
                return buf;
            }
            Err(e) => last = Some(e),
        }
    }
    // Only our own messages come here; an oversized one is a bug, not input.
    panic!("encoding a STUN message natkit built: {last:?}")
}

/// What to ask for in a Binding request (RFC 5780 §7.2 CHANGE-REQUEST).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChangeFlags {
    pub change_ip: bool,
    pub change_port: bool,
}

/// A Binding request with FINGERPRINT.
pub fn binding_request(id: [u8; 12]) -> Vec<u8> {
    binding_request_with(id, ChangeFlags::default())
}

/// A Binding request; with any change flag set it carries CHANGE-REQUEST.
pub fn binding_request_with(id: [u8; 12], change: ChangeFlags) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(BINDING, MessageClass::Request).with_transaction_id(TransactionId::from(id));
    if change.change_ip || change.change_port {
        let flags = match (change.change_ip, change.change_port) {
            (true, true) => ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort,
            (true, false) => ChangeRequestFlags::ChangeIp.into(),
            _ => ChangeRequestFlags::ChangePort.into(),
        };
        b = b.with_attribute(ChangeRequest::new(Some(flags)));
    }
    encode(&b.with_attribute(Fingerprint::default()).build())
}

/// A Binding request with RESPONSE-PORT (RFC 5780 §7.5): the server answers to
/// our source IP at `port` instead, which is how §4.5 probes another socket's mapping.
pub fn binding_request_to_port(id: [u8; 12], port: u16) -> Vec<u8> {
    let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::from(id))
        .with_attribute(ResponsePort::from(port))
        .with_attribute(Fingerprint::default())
        .build();
    encode(&msg)
}

/// The RESPONSE-PORT a request carries, if any.
pub fn response_port(bytes: &[u8]) -> Option<u16> {
    let msg = decode(bytes).ok()?;
    msg.attributes().iter().find_map(|a| a.as_response_port().ok().map(|p| p.as_u16()))
}

/// Whether a message that passed [`looks_like_stun`] is a request (class bits 00, RFC 8489 §5).
pub fn is_request(bytes: &[u8]) -> bool {
    looks_like_stun(bytes) && bytes[0] & 0x01 == 0 && bytes[1] & 0x10 == 0
}

/// The CHANGE-REQUEST flags a Binding request carries (none when it has no such attribute).
pub fn change_flags(bytes: &[u8]) -> Result<ChangeFlags, ResponseError> {
    let msg = decode(bytes)?;
    let mut flags = ChangeFlags::default();
    if let Some(cr) = msg.attributes().iter().find_map(|a| a.as_change_request().ok()) {
        flags.change_ip = cr.flags().contains(ChangeRequestFlags::ChangeIp);
        flags.change_port = cr.flags().contains(ChangeRequestFlags::ChangePort);
    }
    Ok(flags)
}

/// Why a message that should be a Binding response is not a usable one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("not a STUN message ({len} bytes that do not start with a STUN header)")]
    NotStun { len: usize },
    #[error("malformed STUN message: {0}")]
    Malformed(String),
    #[error("unexpected STUN message (method {method:#05x}, class {class}) where a Binding response was due")]
    Unexpected { method: u16, class: &'static str },
}

/// The typed content of a Binding success or error response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BindingResponse {
    /// `Some((code, reason))` for an error response.
    pub error: Option<(u16, String)>,
    pub xor_mapped: Option<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    pub other_address: Option<SocketAddr>,
    pub response_origin: Option<SocketAddr>,
    pub software: Option<String>,
    /// None when the message had no FINGERPRINT.
    pub fingerprint_ok: Option<bool>,
}

impl BindingResponse {
    /// XOR-MAPPED-ADDRESS, falling back to MAPPED-ADDRESS (RFC 8489 §14.1).
    pub fn reflexive(&self) -> Option<SocketAddr> {
        self.xor_mapped.or(self.mapped)
    }

    /// Decodes a Binding response, checking FINGERPRINT when present.
    pub fn parse(bytes: &[u8]) -> Result<Self, ResponseError> {
        if !looks_like_stun(bytes) {
            return Err(ResponseError::NotStun { len: bytes.len() });
        }
        let fingerprint_ok = has_attribute(bytes, FINGERPRINT_TYPE).then(|| fingerprint_valid(bytes));
        let msg = decode(bytes)?;
        let class = msg.class();
        if msg.method() != BINDING || !matches!(class, MessageClass::SuccessResponse | MessageClass::ErrorResponse) {
            return Err(ResponseError::Unexpected { method: msg.method().as_u16(), class: class_name(class) });
        }
        let mut r = BindingResponse { fingerprint_ok, ..Default::default() };
        for attr in msg.attributes() {
            if let Ok(a) = attr.as_xor_mapped_address() {
                r.xor_mapped = Some(*a.socket_address());
            } else if let Ok(a) = attr.as_mapped_address() {
                r.mapped = Some(*a.socket_address());
            } else if let Ok(a) = attr.as_other_address() {
                r.other_address = Some(*a.socket_address());
            } else if let Ok(a) = attr.as_response_origin() {
                r.response_origin = Some(*a.socket_address());
            } else if let Ok(a) = attr.as_software() {
                // Printable text only: some servers pad it with NULs (stund: "Vovida.org 0.97\0").
                let text: String = a.as_str().chars().filter(|c| !c.is_control()).collect();
                r.software = Some(text.trim().to_string()).filter(|t| !t.is_empty());
            } else if let Ok(a) = attr.as_error_code() {
                let e = a.error_code();
                r.error = Some((e.error_code(), e.reason().to_string()));
            }
        }
        if class == MessageClass::ErrorResponse && r.error.is_none() {
            r.error = Some((0, "error response without ERROR-CODE".into()));
        }
        Ok(r)
    }
}

/// Decodes any STUN message without integrity checks (the caller checks those
/// with the right key).
pub fn decode(bytes: &[u8]) -> Result<StunMessage, ResponseError> {
    let decoder = MessageDecoderBuilder::default().build();
    decoder.decode(bytes).map(|(m, _)| m).map_err(|e| ResponseError::Malformed(format!("{e:?}")))
}

pub fn class_name(c: MessageClass) -> &'static str {
    match c {
        MessageClass::Request => "request",
        MessageClass::Indication => "indication",
        MessageClass::SuccessResponse => "success response",
        MessageClass::ErrorResponse => "error response",
    }
}

/// Walks the attribute TLVs without decoding them: (offset, type, value).
/// The header must have passed [`looks_like_stun`].
pub(crate) fn attributes(bytes: &[u8]) -> impl Iterator<Item = (usize, u16, &[u8])> {
    let end = HEADER_LEN + u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    let mut pos = HEADER_LEN;
    std::iter::from_fn(move || {
        if pos + 4 > end {
            return None;
        }
        let t = u16::from_be_bytes([bytes[pos], bytes[pos + 1]]);
        let len = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
        let start = pos;
        let vend = pos + 4 + len;
        if vend > end {
            return None;
        }
        pos = pos + 4 + len.div_ceil(4) * 4;
        Some((start, t, &bytes[start + 4..vend]))
    })
}

fn has_attribute(bytes: &[u8], t: u16) -> bool {
    attributes(bytes).any(|(_, at, _)| at == t)
}

/// RFC 8489 §14.7: CRC-32 of the message up to FINGERPRINT, XOR 0x5354554e,
/// with the header length covering FINGERPRINT.
fn fingerprint_valid(bytes: &[u8]) -> bool {
    let Some((start, _, value)) = attributes(bytes).find(|(_, t, _)| *t == FINGERPRINT_TYPE) else {
        return false;
    };
    if value.len() != 4 {
        return false;
    }
    let mut covered = bytes[..start].to_vec();
    let len = (start + 8 - HEADER_LEN) as u16;
    covered[2..4].copy_from_slice(&len.to_be_bytes());
    let expected = crc32(&covered) ^ 0x5354_554e;
    u32::from_be_bytes([value[0], value[1], value[2], value[3]]) == expected
}

/// CRC-32 (ISO-HDLC), bitwise: FINGERPRINT is checked once per response, so a
/// table is not worth it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use stun_rs::attributes::stun::{Software, XorMappedAddress};

    fn success_response(id: [u8; 12], mapped: SocketAddr) -> Vec<u8> {
        let msg = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(TransactionId::from(id))
            .with_attribute(XorMappedAddress::from(mapped))
            .with_attribute(Software::new("natkit-test").expect("valid software"))
            .with_attribute(Fingerprint::default())
            .build();
        encode(&msg)
    }

    #[test]
    fn a_message_larger_than_the_first_buffer_still_encodes_whole() {
        use stun_rs::attributes::turn::{Data, XorPeerAddress};
        let data = vec![7u8; 8000];
        let msg = StunMessageBuilder::new(stun_rs::methods::SEND, MessageClass::Indication)
            .with_attribute(XorPeerAddress::from(SocketAddr::from(([203, 0, 113, 9], 7000))))
            .with_attribute(Data::new(data.clone()))
            .build();
        let bytes = encode(&msg);
        assert_eq!(bytes.len(), 20 + 12 + 4 + 8000);
        let back = decode(&bytes).expect("decodes");
        let got = back.attributes().iter().find_map(|a| a.as_data().ok().map(|d| d.as_bytes().to_vec()));
        assert_eq!(got, Some(data));
    }

    #[test]
    fn binding_request_has_header_id_and_valid_fingerprint() {
        let id = new_transaction_id();
        let req = binding_request(id);
        assert_eq!(transaction_id(&req), Some(id));
        assert!(fingerprint_valid(&req));
    }

    #[test]
    fn change_request_is_encoded() {
        let id = new_transaction_id();
        let req = binding_request_with(id, ChangeFlags { change_ip: true, change_port: true });
        let msg = decode(&req).expect("decodes");
        let cr = msg.attributes().iter().find_map(|a| a.as_change_request().ok()).expect("has CHANGE-REQUEST");
        assert!(cr.flags().contains(ChangeRequestFlags::ChangeIp));
        assert!(cr.flags().contains(ChangeRequestFlags::ChangePort));
    }

    #[test]
    fn parses_mapped_address_software_and_fingerprint() {
        let id = new_transaction_id();
        let mapped = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 40000);
        let r = BindingResponse::parse(&success_response(id, mapped)).expect("parses");
        assert_eq!(r.reflexive(), Some(mapped));
        assert_eq!(r.software.as_deref(), Some("natkit-test"));
        assert_eq!(r.fingerprint_ok, Some(true));
        assert!(r.error.is_none());
    }

    #[test]
    fn corrupted_fingerprint_is_reported_not_fatal() {
        let id = new_transaction_id();
        let mut bytes = success_response(id, "198.51.100.1:1".parse().expect("addr"));
        let n = bytes.len();
        bytes[n - 1] ^= 0xFF;
        let r = BindingResponse::parse(&bytes).expect("still parses");
        assert_eq!(r.fingerprint_ok, Some(false));
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        assert!(matches!(BindingResponse::parse(b"hello"), Err(ResponseError::NotStun { .. })));
        let id = new_transaction_id();
        let bytes = success_response(id, "198.51.100.1:1".parse().expect("addr"));
        for cut in 0..bytes.len() {
            let _ = BindingResponse::parse(&bytes[..cut]);
        }
        let mut lying = bytes.clone();
        lying[3] = 0x04; // header length shorter than the attributes
        let _ = BindingResponse::parse(&lying);
    }

    #[test]
    fn change_flags_round_trip_and_requests_are_told_apart() {
        let id = new_transaction_id();
        let both = ChangeFlags { change_ip: true, change_port: true };
        assert_eq!(change_flags(&binding_request_with(id, both)), Ok(both));
        let port = ChangeFlags { change_ip: false, change_port: true };
        assert_eq!(change_flags(&binding_request_with(id, port)), Ok(port));
        assert_eq!(change_flags(&binding_request(id)), Ok(ChangeFlags::default()));
        assert!(is_request(&binding_request(id)));
        assert!(!is_request(&success_response(id, "198.51.100.1:1".parse().expect("addr"))));
    }

    #[test]
    fn response_port_round_trips() {
        let id = new_transaction_id();
        assert_eq!(response_port(&binding_request_to_port(id, 40123)), Some(40123));
        assert_eq!(response_port(&binding_request(id)), None);
    }

    #[test]
    fn a_request_is_not_a_response() {
        let id = new_transaction_id();
        assert!(matches!(BindingResponse::parse(&binding_request(id)), Err(ResponseError::Unexpected { .. })));
    }
}
