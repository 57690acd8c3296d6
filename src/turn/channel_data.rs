//! ChannelData messages (RFC 8656 §12.4): a 4-byte header (channel number,
//! length) and the application data; over TCP/TLS padded to a multiple of
//! four bytes (§12.5). Channel numbers are 0x4000–0x4FFF (§12).
//!
//! The one framing module for both ends: the client (`turn-alloc`, punch's
//! relayed path) builds messages with [`encode`]; the server's data path
//! writes the header in place in front of a peer datagram with
//! [`frame_in_place`] so it never copies or allocates; both read with
//! [`parse`].

use std::ops::RangeInclusive;

/// The numbers a client binds (RFC 8656 §12).
pub const CHANNELS: RangeInclusive<u16> = 0x4000..=0x4FFF;
/// The numbers [`parse`] reads: RFC 5766 allowed up to 0x7FFF and its
/// clients (coturn's `turnutils_uclient` among them) still use them, so the
/// server's channel table, not the framing, decides which numbers are bound.
pub const WIRE_CHANNELS: RangeInclusive<u16> = 0x4000..=0x7FFF;
/// Length of the ChannelData header.
pub const HEADER: usize = 4;
/// Bytes a driver leaves free before a peer datagram so the server core can
/// write the ChannelData header in place.
pub const PEER_HEADROOM: usize = HEADER;
/// Bytes a driver leaves free after a peer datagram for the stream padding.
pub const PEER_TAILROOM: usize = 3;

/// Total length of a message carrying `len` bytes, padded for a stream transport.
fn framed_len(len: usize, pad: bool) -> usize {
    if pad { HEADER + len.div_ceil(4) * 4 } else { HEADER + len }
}

/// Appends a ChannelData message to `out` (no allocation when `out` has room).
pub fn encode_into(out: &mut Vec<u8>, channel: u16, data: &[u8], pad: bool) {
    let start = out.len();
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out.resize(start + framed_len(data.len(), pad), 0);
}

pub fn encode(channel: u16, data: &[u8], pad: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(framed_len(data.len(), true));
    encode_into(&mut v, channel, data, pad);
    v
}

/// Writes the ChannelData header for `len` bytes already at
/// `buf[HEADER..HEADER + len]`, pads to 4 bytes when `pad` (stream
/// transports), and returns the length to send; None when `buf` is too short
/// or `len` does not fit the 16-bit length field.
pub fn frame_in_place(buf: &mut [u8], channel: u16, len: usize, pad: bool) -> Option<usize> {
    let total = framed_len(len, pad);
    if buf.len() < total || len > u16::MAX as usize {
        return None;
    }
    buf[..2].copy_from_slice(&channel.to_be_bytes());
    buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    buf[HEADER + len..total].fill(0);
    Some(total)
}

/// (channel, data) of a ChannelData message; None when it is not one (the
/// number is outside [`WIRE_CHANNELS`]) or is truncated. Trailing padding is ignored.
pub fn parse(bytes: &[u8]) -> Option<(u16, &[u8])> {
    if bytes.len() < HEADER {
        return None;
    }
    let channel = u16::from_be_bytes([bytes[0], bytes[1]]);
    let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    if !WIRE_CHANNELS.contains(&channel) {
        return None;
    }
    bytes.get(HEADER..HEADER + len).map(|d| (channel, d))
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
        assert_eq!(parse(&[0x80, 0x00, 0, 0]), None, "RTP, not ChannelData");
        assert_eq!(parse(&[0x3F, 0xFF, 0, 0]), None);
        assert_eq!(parse(&[0x7F, 0xFF, 0, 1, 9]), Some((0x7FFF, &[9u8][..])), "RFC 5766 numbers are read");
        assert_eq!(parse(&[0x40]), None);
        assert_eq!(parse(&[0x40, 0x00]), None);
    }

    #[test]
    fn framing_in_place_matches_encode() {
        let mut buf = [0xAAu8; 16];
        buf[4..9].copy_from_slice(b"abcde");
        assert_eq!(frame_in_place(&mut buf, 0x4001, 5, true), Some(12));
        assert_eq!(&buf[..12], &encode(0x4001, b"abcde", true)[..]);
        assert_eq!(parse(&buf[..12]), Some((0x4001, &b"abcde"[..])));
        assert_eq!(parse(&buf[..8]), None, "truncated");
        assert_eq!(frame_in_place(&mut buf, 0x4001, 5, false), Some(9));
        assert_eq!(&buf[..9], &encode(0x4001, b"abcde", false)[..]);
        assert_eq!(frame_in_place(&mut buf[..11], 0x4001, 5, true), None, "no room for the padding");
    }
}
