//! Batches on punch's shared socket: the datagrams of one GRO read split and sorted (RFC 7983
//! demultiplexing, per segment), and QUIC's GSO batches framed as ChannelData for the relay
//! (RFC 8656 §12.4). Sans-IO: bytes in, bytes out; the mux owns the socket.
//!
//! With UDP GRO the kernel hands over several datagrams of one flow in one buffer, each `stride`
//! bytes apart (the last may be shorter). A batch from the peer is mostly QUIC, but a STUN check
//! or answer of the same size from the same address can sit among them: each segment is
//! classified on its own, STUN ones are taken out, and the QUIC ones are packed to the front of
//! the buffer so quinn still reads them at one stride ([`Packer`]). A batch from the TURN server
//! holds ChannelData messages: their payloads are packed the same way, four bytes shorter each.

use crate::stun::message::looks_like_stun;
use crate::turn::channel_data;

/// What one received datagram is, by its first bytes (RFC 7983 §7; RFC 9443 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// For the ICE agent (or the birthday prober).
    Stun,
    /// For quinn: a long header (≥ 0xC0) or a short header with the fixed bit (0x40–0x7F).
    Quic,
    /// Neither: counted and dropped.
    Other,
}

pub fn classify(datagram: &[u8]) -> Kind {
    if looks_like_stun(datagram) {
        Kind::Stun
    } else if datagram.first().is_some_and(|b| *b >= 0x40) {
        Kind::Quic
    } else {
        Kind::Other
    }
}

/// The segments of a GRO buffer of `len` bytes at `stride`: (start, end) of each.
pub fn segments(len: usize, stride: usize) -> impl Iterator<Item = (usize, usize)> {
    let stride = stride.max(1);
    (0..len).step_by(stride).map(move |start| (start, (start + stride).min(len)))
}

/// Packs datagrams to the front of a receive buffer so that they lie `stride` apart with only the
/// last one shorter: the shape quinn expects of a GRO buffer. Packing never overtakes what it has
/// yet to read (each datagram is written at or before where it was), so it works in place.
#[derive(Debug, Default)]
pub struct Packer {
    written: usize,
    stride: usize,
    /// A shorter datagram was packed: it must stay the last.
    closed: bool,
}

impl Packer {
    /// Moves `buf[from..to]` to the end of what is packed; false (nothing moved) when the datagram
    /// cannot follow at this stride (longer than the first, or after a shorter one).
    pub fn push_within(&mut self, buf: &mut [u8], from: usize, to: usize) -> bool {
        let len = to.saturating_sub(from);
        if !self.admit(len) || from < self.written {
            return false;
        }
        // Mostly the datagram is already in place (nothing before it was taken out): a memmove onto
        // itself would still copy every byte received.
        if from != self.written {
            buf.copy_within(from..to, self.written);
        }
        self.written += len;
        true
    }

    /// Copies `data` to the end of what is packed (a datagram that came in a STUN Data indication);
    /// false when it does not fit the stride or the buffer.
    pub fn push_bytes(&mut self, buf: &mut [u8], data: &[u8]) -> bool {
        if self.written + data.len() > buf.len() || !self.admit(data.len()) {
            return false;
        }
        buf[self.written..self.written + data.len()].copy_from_slice(data);
        self.written += data.len();
        true
    }

    fn admit(&mut self, len: usize) -> bool {
        if len == 0 || self.closed {
            return false;
        }
        if self.written == 0 {
            self.stride = len;
        } else if len > self.stride {
            return false;
        } else if len < self.stride {
            self.closed = true;
        }
        true
    }

    /// Bytes packed so far.
    pub fn len(&self) -> usize {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// The stride quinn reads the packed datagrams at.
    pub fn stride(&self) -> usize {
        self.stride
    }
}

/// Frames each `segment`-byte piece of `contents` (a QUIC GSO batch) as ChannelData on `channel`
/// into `out` (cleared first; no allocation once it has grown), so the batch goes to the TURN server
/// in one GSO send. Returns the stride of the framed batch. No padding: over UDP it is optional
/// (RFC 8656 §12.5), and without it every message but the last has the same length.
pub fn frame_channel_data(out: &mut Vec<u8>, channel: u16, contents: &[u8], segment: usize) -> usize {
    out.clear();
    let segment = segment.max(1);
    for piece in contents.chunks(segment) {
        channel_data::encode_into(out, channel, piece, false);
    }
    segment + channel_data::HEADER
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quic(len: usize, tag: u8) -> Vec<u8> {
        let mut v = vec![tag; len];
        v[0] = 0x40 | (tag & 0x3F);
        v
    }

    fn stun_of(len: usize) -> Vec<u8> {
        // A Binding request padded with one attribute to `len` bytes (len - 20 is a multiple of 4).
        let mut v = crate::stun::message::binding_request(crate::stun::message::new_transaction_id());
        v.resize(len, 0);
        let body = (len - 20) as u16;
        v[2..4].copy_from_slice(&body.to_be_bytes());
        v
    }

    /// Splits a GRO buffer the way the mux does: STUN out, QUIC packed, the rest dropped.
    fn demux(buf: &mut [u8], stride: usize) -> (Packer, Vec<Vec<u8>>, usize) {
        let mut p = Packer::default();
        let (mut stun, mut dropped) = (Vec::new(), 0);
        for (a, b) in segments(buf.len(), stride) {
            match classify(&buf[a..b]) {
                Kind::Stun => stun.push(buf[a..b].to_vec()),
                Kind::Quic if p.push_within(buf, a, b) => {}
                _ => dropped += 1,
            }
        }
        (p, stun, dropped)
    }

    #[test]
    fn a_stun_check_among_quic_segments_is_taken_out_and_the_rest_keep_one_stride() {
        let (q1, s, q2, q3) = (quic(48, 1), stun_of(48), quic(48, 2), quic(30, 3));
        let mut buf = [q1.clone(), s.clone(), q2.clone(), q3.clone()].concat();
        let (p, stun, dropped) = demux(&mut buf, 48);
        assert_eq!((stun, dropped), (vec![s], 0));
        assert_eq!((p.len(), p.stride()), (48 + 48 + 30, 48));
        assert_eq!(&buf[..p.len()], [q1, q2, q3].concat().as_slice());
    }

    #[test]
    fn garbage_segments_are_dropped_and_a_buffer_of_only_stun_packs_nothing() {
        let mut buf = [vec![0x01; 40], stun_of(40)].concat();
        let (p, stun, dropped) = demux(&mut buf, 40);
        assert!(p.is_empty());
        assert_eq!((stun.len(), dropped), (1, 1));
        let mut empty: [u8; 0] = [];
        assert!(demux(&mut empty, 1200).0.is_empty());
    }

    #[test]
    fn a_datagram_after_a_shorter_one_or_longer_than_the_first_is_refused() {
        let mut buf = vec![0u8; 64];
        let mut p = Packer::default();
        assert!(p.push_bytes(&mut buf, &[0x41; 10]));
        assert!(!p.push_bytes(&mut buf, &[0x41; 11]), "longer than the stride");
        assert!(p.push_bytes(&mut buf, &[0x41; 10]));
        assert!(p.push_bytes(&mut buf, &[0x41; 4]));
        assert!(!p.push_bytes(&mut buf, &[0x41; 4]), "after a shorter one");
        assert!(!p.push_bytes(&mut buf, &[]), "empty");
        assert_eq!((p.len(), p.stride()), (24, 10));
        let mut small = [0u8; 8];
        assert!(!Packer::default().push_bytes(&mut small, &[0x41; 9]), "does not fit the buffer");
    }

    #[test]
    fn channel_data_framed_for_gso_unpacks_to_the_same_datagrams_at_the_same_stride() {
        let datagrams = [quic(1200, 1), quic(1200, 2), quic(700, 3)];
        let contents = datagrams.concat();
        let mut framed = Vec::new();
        let stride = frame_channel_data(&mut framed, 0x4001, &contents, 1200);
        assert_eq!((stride, framed.len()), (1204, contents.len() + 3 * 4));
        // The receiving side: each ChannelData segment unwrapped, payloads packed in place.
        let mut p = Packer::default();
        let mut buf = framed.clone();
        for (a, b) in segments(buf.len(), stride) {
            let (channel, data) = channel_data::parse(&framed[a..b]).expect("ChannelData");
            assert_eq!(channel, 0x4001);
            let at = a + channel_data::HEADER;
            assert!(p.push_within(&mut buf, at, at + data.len()));
        }
        assert_eq!((p.len(), p.stride()), (contents.len(), 1200));
        assert_eq!(&buf[..p.len()], contents.as_slice());
        // One datagram, no GSO: one message.
        frame_channel_data(&mut framed, 0x4001, &datagrams[2], 1200);
        assert_eq!(framed.len(), 704);
    }

    #[test]
    fn segments_cover_the_buffer_with_a_short_last_one() {
        assert_eq!(segments(10, 4).collect::<Vec<_>>(), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(segments(0, 4).count(), 0);
        assert_eq!(segments(3, 0).count(), 3, "a zero stride reads one byte at a time, never loops");
    }
}
