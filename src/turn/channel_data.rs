//! ChannelData messages (RFC 8656 §12.4): a 4-byte header (channel number,
//! length) and the application data; over TCP/TLS padded to a multiple of
//! four bytes (§12.5). Channel numbers are 0x4000–0x4FFF (§12).

use std::ops::RangeInclusive;

pub const CHANNELS: RangeInclusive<u16> = 0x4000..=0x4FFF;

/// True when the first byte says ChannelData (RFC 7983: 64–79).
pub fn is_channel_data(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| (0x40..=0x4F).contains(b))
}

/// Appends a ChannelData message to `out` (no allocation when `out` has room).
pub fn encode_into(out: &mut Vec<u8>, channel: u16, data: &[u8], pad: bool) {
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    if pad {
        let padding = (4 - data.len() % 4) % 4;
        out.extend_from_slice(&[0u8; 3][..padding]);
    }
}

pub fn encode(channel: u16, data: &[u8], pad: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + data.len() + 3);
    encode_into(&mut v, channel, data, pad);
    v
}

/// (channel, data) of a ChannelData message; None when it is not one or is truncated.
/// Trailing padding is ignored.
pub fn parse(bytes: &[u8]) -> Option<(u16, &[u8])> {
    if bytes.len() < 4 || !is_channel_data(bytes) {
        return None;
    }
    let channel = u16::from_be_bytes([bytes[0], bytes[1]]);
    let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    if !CHANNELS.contains(&channel) {
        return None;
    }
    bytes.get(4..4 + len).map(|d| (channel, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_and_without_padding() {
        assert_eq!(encode(0x4001, b"abcde", false), vec![0x40, 0x01, 0, 5, b'a', b'b', b'c', b'd', b'e']);
        let padded = encode(0x4001, b"abcde", true);
        assert_eq!(padded.len(), 12);
        assert_eq!(parse(&padded), Some((0x4001, &b"abcde"[..])));
    }

    #[test]
    fn rejects_truncated_and_out_of_range() {
        assert_eq!(parse(&[0x40, 0x01, 0, 9, 1, 2]), None);
        assert_eq!(parse(&[0x50, 0x00, 0, 0]), None);
        assert_eq!(parse(&[0x40]), None);
    }
}
