//! Binding requests from classic RFC 3489 clients (no magic cookie, a
//! 128-bit transaction id), answered as RFC 8489 §11 says a server SHOULD
//! and as coturn and stund do: the answer echoes the 16-byte id and carries
//! MAPPED-ADDRESS (RFC 3489 §11.2.1), SOURCE-ADDRESS (§11.2.3, the socket
//! the answer leaves from) and, when the RFC 5780 responder has an
//! alternate, CHANGED-ADDRESS (§11.2.4); CHANGE-REQUEST (§11.2.4) is obeyed
//! the same way as in RFC 5780.
//!
//! Only these attributes: an RFC 3489 parser (stund's, Debian's `stun`)
//! rejects a message with a comprehension-required attribute it does not
//! know. RESPONSE-ADDRESS is ignored on purpose: honouring it would let
//! anyone aim the server's answers at a third party. Shared Secret requests
//! and other classic messages are not answered.

use std::net::{IpAddr, SocketAddr};

use super::Rfc5780;
use crate::stun::message::{HEADER_LEN, MAGIC_COOKIE};

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const MAPPED_ADDRESS: u16 = 0x0001;
const CHANGE_REQUEST: u16 = 0x0003;
const SOURCE_ADDRESS: u16 = 0x0004;
const CHANGED_ADDRESS: u16 = 0x0005;
const CHANGE_IP: u32 = 0x04;
const CHANGE_PORT: u32 = 0x02;

/// Whether `bytes` is a classic RFC 3489 Binding request: the header shape
/// of STUN without the magic cookie, an exact length, type Binding Request.
pub fn is_classic_binding(bytes: &[u8]) -> bool {
    if bytes.len() < HEADER_LEN || bytes[0] & 0xC0 != 0 {
        return false;
    }
    let t = u16::from_be_bytes([bytes[0], bytes[1]]);
    let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    let cookie = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    t == BINDING_REQUEST && cookie != MAGIC_COOKIE && len.is_multiple_of(4) && HEADER_LEN + len == bytes.len()
}

/// Why a classic request gets no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// Its attributes run past the message.
    Malformed,
    /// CHANGE-REQUEST asks for another IP or port and there is no alternate
    /// (answering from the same socket would tell the client a lie).
    CannotChange,
    /// `out` too small (never with the core's scratch).
    NoRoom,
}

/// The CHANGE-REQUEST flags (change IP, change port), or Err on a malformed message.
fn change_flags(bytes: &[u8]) -> Result<(bool, bool), Unanswered> {
    let end = bytes.len();
    let mut pos = HEADER_LEN;
    let mut flags = (false, false);
    while pos + 4 <= end {
        let t = u16::from_be_bytes([bytes[pos], bytes[pos + 1]]);
        let len = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
        let vend = pos + 4 + len;
        if vend > end {
            return Err(Unanswered::Malformed);
        }
        if t == CHANGE_REQUEST && len == 4 {
            let v = u32::from_be_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]);
            flags = (v & CHANGE_IP != 0, v & CHANGE_PORT != 0);
        }
        // RFC 3489 attributes are multiples of 4 already; round up anyway.
        pos = pos + 4 + len.div_ceil(4) * 4;
    }
    Ok(flags)
}

fn put_address(out: &mut [u8], pos: usize, t: u16, a: SocketAddr) -> Option<usize> {
    let (family, ip): (u8, Vec<u8>) = match a.ip() {
        IpAddr::V4(v4) => (0x01, v4.octets().to_vec()),
        IpAddr::V6(v6) => (0x02, v6.octets().to_vec()),
    };
    let len = 4 + ip.len();
    let slot = out.get_mut(pos..pos + 4 + len)?;
    slot[0..2].copy_from_slice(&t.to_be_bytes());
    slot[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    slot[4] = 0;
    slot[5] = family;
    slot[6..8].copy_from_slice(&a.port().to_be_bytes());
    slot[8..].copy_from_slice(&ip);
    Some(pos + 4 + len)
}

/// Writes the answer to `request` (which passed [`is_classic_binding`]) that
/// arrived from `client` on the listener `local` into `out`; returns its
/// length and the local address it must leave from.
pub fn answer(
    request: &[u8],
    client: SocketAddr,
    local: SocketAddr,
    rfc5780: Option<Rfc5780>,
    out: &mut [u8],
) -> Result<(usize, SocketAddr), Unanswered> {
    let (change_ip, change_port) = change_flags(request)?;
    let positions = rfc5780.and_then(|r| r.position(local).map(|p| (r, p)));
    let (origin, changed) = match positions {
        Some((r, (i, j))) => {
            let (si, sj) = (if change_ip { 1 - i } else { i }, if change_port { 1 - j } else { j });
            (SocketAddr::new(r.ips[si], r.ports[sj]), Some(SocketAddr::new(r.ips[1 - i], r.ports[1 - j])))
        }
        None if change_ip || change_port => return Err(Unanswered::CannotChange),
        None => (local, None),
    };
    let header = out.get_mut(..HEADER_LEN).ok_or(Unanswered::NoRoom)?;
    header[0..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
    // The 16-byte transaction id of RFC 3489 sits where RFC 8489 has cookie + id.
    header[4..HEADER_LEN].copy_from_slice(&request[4..HEADER_LEN]);
    let mut pos = put_address(out, HEADER_LEN, MAPPED_ADDRESS, client).ok_or(Unanswered::NoRoom)?;
    pos = put_address(out, pos, SOURCE_ADDRESS, origin).ok_or(Unanswered::NoRoom)?;
    if let Some(c) = changed {
        pos = put_address(out, pos, CHANGED_ADDRESS, c).ok_or(Unanswered::NoRoom)?;
    }
    out[2..4].copy_from_slice(&((pos - HEADER_LEN) as u16).to_be_bytes());
    Ok((pos, origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classic(change: Option<u32>) -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0x00, 0x00];
        m.extend_from_slice(&[0xAB; 16]);
        if let Some(flags) = change {
            m.extend_from_slice(&[0x00, 0x03, 0x00, 0x04]);
            m.extend_from_slice(&flags.to_be_bytes());
        }
        let len = (m.len() - HEADER_LEN) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn responder() -> Rfc5780 {
        Rfc5780 { ips: ["198.51.100.1".parse().unwrap(), "198.51.100.2".parse().unwrap()], ports: [3478, 3479] }
    }

    #[test]
    fn classic_requests_are_told_apart_from_rfc_8489_ones() {
        assert!(is_classic_binding(&classic(None)));
        assert!(is_classic_binding(&classic(Some(6))));
        assert!(!is_classic_binding(&crate::stun::message::binding_request([1; 12])), "has the magic cookie");
        let mut wrong_len = classic(Some(0));
        wrong_len.push(0);
        assert!(!is_classic_binding(&wrong_len));
        let mut shared_secret = classic(None);
        shared_secret[1] = 0x02;
        assert!(!is_classic_binding(&shared_secret));
        assert!(!is_classic_binding(&[0u8; 19]));
    }

    #[test]
    fn the_answer_echoes_the_id_and_names_mapped_source_and_changed_addresses() {
        let mut out = [0u8; 128];
        let client = sa("203.0.113.9:40000");
        let (n, from) = answer(
            &classic(Some(CHANGE_IP | CHANGE_PORT)),
            client,
            sa("198.51.100.1:3478"),
            Some(responder()),
            &mut out,
        )
        .unwrap();
        assert_eq!(from, sa("198.51.100.2:3479"), "change IP and port");
        assert_eq!(&out[0..2], &[0x01, 0x01]);
        assert_eq!(&out[4..20], &[0xAB; 16]);
        assert_eq!(n, 20 + 3 * 12);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]) as usize, n - 20);
        // MAPPED-ADDRESS 203.0.113.9:40000
        assert_eq!(&out[20..32], &[0, 1, 0, 8, 0, 1, 0x9C, 0x40, 203, 0, 113, 9]);
        // SOURCE-ADDRESS: where it leaves from; CHANGED-ADDRESS: the other IP and port.
        assert_eq!(&out[32..44], &[0, 4, 0, 8, 0, 1, 0x0D, 0x97, 198, 51, 100, 2]);
        assert_eq!(&out[44..56], &[0, 5, 0, 8, 0, 1, 0x0D, 0x97, 198, 51, 100, 2]);
        let (_, from) =
            answer(&classic(Some(CHANGE_PORT)), client, sa("198.51.100.2:3479"), Some(responder()), &mut out).unwrap();
        assert_eq!(from, sa("198.51.100.2:3478"));
    }

    #[test]
    fn without_an_alternate_no_change_is_possible_and_none_is_faked() {
        let mut out = [0u8; 128];
        let client = sa("[2001:db8::9]:40000");
        let (n, from) = answer(&classic(None), client, sa("[2001:db8::1]:3478"), None, &mut out).unwrap();
        assert_eq!(from, sa("[2001:db8::1]:3478"));
        assert_eq!(n, 20 + 2 * 24, "MAPPED and SOURCE, IPv6");
        assert_eq!(
            answer(&classic(Some(CHANGE_IP)), client, sa("[2001:db8::1]:3478"), None, &mut out),
            Err(Unanswered::CannotChange)
        );
        let mut bad = classic(Some(0));
        bad[22..24].copy_from_slice(&[0, 40]);
        assert_eq!(answer(&bad, client, sa("[2001:db8::1]:3478"), None, &mut out), Err(Unanswered::Malformed));
    }
}
