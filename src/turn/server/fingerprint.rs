//! FINGERPRINT on what clients send (RFC 8489 §14.7, §7.3): when a message
//! carries one and it does not match, the message is discarded. A request
//! with a wrong FINGERPRINT may be something else that only looks like STUN
//! (RFC 7983 demultiplexing), or a forgery; either way it is not answered.
//!
//! The CRC runs on every Send indication that carries FINGERPRINT, so it is
//! table-driven and never allocates.

use crate::stun::message::{HEADER_LEN, attributes};

pub const FINGERPRINT: u16 = 0x8028;
pub(super) const XOR: u32 = 0x5354_554e;

/// What the message's FINGERPRINT says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FingerprintCheck {
    Absent,
    Valid,
    /// Present and wrong, or not the last attribute, or not 4 bytes long.
    Invalid,
}

const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC-32 (ISO-HDLC) of `bytes`, the checksum FINGERPRINT carries (before the XOR).
pub(super) fn crc32(bytes: &[u8]) -> u32 {
    !crc32_update(0xFFFF_FFFF, bytes)
}

/// The FINGERPRINT value of `bytes` (the message up to the attribute, its
/// header length already counting it), for a message encoded by hand.
pub fn compute(bytes: &[u8]) -> u32 {
    crc32(bytes) ^ XOR
}

/// Checks FINGERPRINT in a message whose header passed `looks_like_stun`.
pub fn check(bytes: &[u8]) -> FingerprintCheck {
    let end = HEADER_LEN + u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    let Some((start, _, value)) = attributes(bytes).find(|(_, t, _)| *t == FINGERPRINT) else {
        return FingerprintCheck::Absent;
    };
    // RFC 8489 §14.7: FINGERPRINT is the last attribute, 32 bits.
    if value.len() != 4 || start + 8 != end {
        return FingerprintCheck::Invalid;
    }
    // The CRC covers the message up to FINGERPRINT, with the header's length
    // already counting it (which it does, since it is the last attribute).
    let crc = !crc32_update(0xFFFF_FFFF, &bytes[..start]);
    let got = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
    if got == crc ^ XOR { FingerprintCheck::Valid } else { FingerprintCheck::Invalid }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::binding_request;

    #[test]
    fn the_table_crc_is_crc32() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(!crc32_update(0xFFFF_FFFF, b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_good_fingerprint_passes_and_any_flipped_bit_fails() {
        let good = binding_request([3; 12]);
        assert_eq!(check(&good), FingerprintCheck::Valid);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            // Bits of the header length or the attribute TLV can make the message unreadable
            // instead; what matters is that it is never Valid.
            if crate::stun::message::looks_like_stun(&bad) {
                assert_ne!(check(&bad), FingerprintCheck::Valid, "bit flipped at byte {i}");
            }
        }
        let mut none = good[..good.len() - 8].to_vec();
        let len = (none.len() - HEADER_LEN) as u16;
        none[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(check(&none), FingerprintCheck::Absent);
    }
}
