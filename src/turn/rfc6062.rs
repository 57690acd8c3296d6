//! The wire parts of TURN TCP allocations (RFC 6062) that stun-rs does not
//! know, shared by the server core and the client: the methods (§6.1
//! Connect, ConnectionBind, ConnectionAttempt), the CONNECTION-ID attribute
//! (§6.2), and signing a message that carries it. stun-rs cannot encode an
//! attribute it does not know, so such a message is encoded by stun-rs
//! without its MESSAGE-INTEGRITY and FINGERPRINT, CONNECTION-ID is appended
//! here, and the message is then signed and fingerprinted here (RFC 8489
//! §14.5–§14.7), the same computation the server's check undoes.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::stun::message::{HEADER_LEN, attributes, looks_like_stun};
use crate::turn::server::auth::{IntegrityKind, MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256};
use crate::turn::server::fingerprint;

/// §6.1: the three methods RFC 6062 adds.
pub const CONNECT: u16 = 0x000A;
pub const CONNECTION_BIND: u16 = 0x000B;
pub const CONNECTION_ATTEMPT: u16 = 0x000C;
/// §6.2: a 32-bit value naming one peer connection of an allocation.
pub const CONNECTION_ID: u16 = 0x002A;
/// REQUESTED-TRANSPORT's protocol number for TCP (§5.1).
pub const PROTOCOL_TCP: u8 = 6;

/// The CONNECTION-ID a message carries. The four bytes are kept as sent
/// (coturn treats them as opaque bytes; so do we, read big-endian).
pub fn connection_id(bytes: &[u8]) -> Option<u32> {
    if !looks_like_stun(bytes) {
        return None;
    }
    attributes(bytes).find(|(_, t, _)| *t == CONNECTION_ID).and_then(|(_, _, v)| {
        let v: [u8; 4] = v.try_into().ok()?;
        Some(u32::from_be_bytes(v))
    })
}

/// Appends one attribute (padded to four bytes) and fixes the header length.
pub fn append_attribute(msg: &mut Vec<u8>, kind: u16, value: &[u8]) {
    msg.extend_from_slice(&kind.to_be_bytes());
    msg.extend_from_slice(&(value.len() as u16).to_be_bytes());
    msg.extend_from_slice(value);
    msg.resize(msg.len() + (4 - value.len() % 4) % 4, 0);
    let body = msg.len() - HEADER_LEN;
    set_length(msg, body);
}

/// Sets REQUESTED-TRANSPORT (RFC 8656 §18.7) to TCP in a message encoded
/// with UDP there: stun-rs has no constant for TCP and no way to make one.
/// Done before signing. Returns whether the attribute was found.
pub fn set_requested_transport_tcp(msg: &mut [u8]) -> bool {
    let Some((start, _, _)) = attributes(msg).find(|(_, t, v)| *t == REQUESTED_TRANSPORT && v.len() == 4) else {
        return false;
    };
    msg[start + 4] = PROTOCOL_TCP;
    true
}

const REQUESTED_TRANSPORT: u16 = 0x0019;

pub fn append_connection_id(msg: &mut Vec<u8>, id: u32) {
    append_attribute(msg, CONNECTION_ID, &id.to_be_bytes());
}

fn set_length(msg: &mut [u8], body: usize) {
    msg[2..4].copy_from_slice(&(body as u16).to_be_bytes());
}

/// Adds MESSAGE-INTEGRITY (or -SHA256) with `key` when given, then
/// FINGERPRINT when asked: each covers the message before it, with the
/// header length already counting it (RFC 8489 §14.5, §14.6, §14.7).
pub fn finish(msg: &mut Vec<u8>, key: Option<(&[u8], IntegrityKind)>, with_fingerprint: bool) {
    if let Some((key, kind)) = key {
        let (attr, len) = match kind {
            IntegrityKind::Sha1 => (MESSAGE_INTEGRITY, 20),
            IntegrityKind::Sha256 => (MESSAGE_INTEGRITY_SHA256, 32),
        };
        let body = msg.len() - HEADER_LEN + 4 + len;
        set_length(msg, body);
        let mac = match kind {
            IntegrityKind::Sha1 => {
                let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            }
            IntegrityKind::Sha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            }
        };
        append_attribute(msg, attr, &mac);
    }
    if with_fingerprint {
        let body = msg.len() - HEADER_LEN + 8;
        set_length(msg, body);
        let crc = fingerprint::compute(msg);
        append_attribute(msg, fingerprint::FINGERPRINT, &crc.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::server::auth::verify_integrity;
    use crate::turn::server::fingerprint::{FingerprintCheck, check};

    #[test]
    fn a_signed_message_with_connection_id_verifies_and_reads_back() {
        let mut msg = crate::stun::message::binding_request(crate::stun::message::new_transaction_id());
        // Drop the FINGERPRINT the helper added: 8 bytes at the end.
        msg.truncate(msg.len() - 8);
        let body = msg.len() - HEADER_LEN;
        set_length(&mut msg, body);
        append_connection_id(&mut msg, 0xDEAD_BEEF);
        let key = [7u8; 16];
        for kind in [IntegrityKind::Sha1, IntegrityKind::Sha256] {
            let mut m = msg.clone();
            finish(&mut m, Some((&key, kind)), true);
            assert!(looks_like_stun(&m));
            assert_eq!(connection_id(&m), Some(0xDEAD_BEEF));
            assert_eq!(verify_integrity(&m, &key), Some(kind));
            assert_eq!(verify_integrity(&m, &[8u8; 16]), None);
            assert_eq!(check(&m), FingerprintCheck::Valid);
        }
    }

    #[test]
    fn a_short_or_missing_connection_id_is_none() {
        let mut msg = crate::stun::message::binding_request([1; 12]);
        assert_eq!(connection_id(&msg), None);
        append_attribute(&mut msg, CONNECTION_ID, &[1, 2]);
        assert_eq!(connection_id(&msg), None);
        assert_eq!(connection_id(&[0u8; 3]), None);
    }
}
