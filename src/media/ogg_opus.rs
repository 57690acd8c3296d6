//! Ogg/Opus file writer (RFC 7845) for `--record DIR`: the identification header (`OpusHead`)
//! and comment header (`OpusTags`) each on their own page, then one Opus packet per Ogg packet
//! with the granule position counted in 48 kHz samples. Paging and CRC come from the `ogg` crate.

use std::io::Write;

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

/// Writes one Opus stream to an `.ogg` file.
pub struct OggOpusWriter<W: Write> {
    writer: PacketWriter<'static, W>,
    serial: u32,
    /// Samples written so far at 48 kHz: the granule position of the last packet.
    granule: u64,
    packets: u64,
}

impl<W: Write> OggOpusWriter<W> {
    /// Starts the stream; `channels` is what the Opus packets carry (WebRTC signals 2).
    pub fn new(inner: W, channels: u8, serial: u32) -> std::io::Result<Self> {
        let mut writer = PacketWriter::new(inner);
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(channels);
        head.extend_from_slice(&312u16.to_le_bytes()); // pre-skip: libopus' usual encoder delay
        head.extend_from_slice(&48_000u32.to_le_bytes()); // input sample rate (informational)
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family 0: mono or stereo
        writer.write_packet(head, serial, PacketWriteEndInfo::EndPage, 0)?;
        let vendor = concat!("natkit ", env!("CARGO_PKG_VERSION"));
        let mut tags = Vec::new();
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
        writer.write_packet(tags, serial, PacketWriteEndInfo::EndPage, 0)?;
        Ok(Self { writer, serial, granule: 0, packets: 0 })
    }

    /// Appends one Opus packet lasting `samples` (48 kHz) samples.
    pub fn write_packet(&mut self, packet: &[u8], samples: u64) -> std::io::Result<()> {
        self.granule += samples;
        self.packets += 1;
        // A page per second of audio keeps seeking cheap without many tiny pages.
        let end = if self.packets.is_multiple_of(50) {
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        self.writer.write_packet(packet.to_vec(), self.serial, end, self.granule)
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Ends the logical stream (an empty last packet flagged end-of-stream) and returns the sink.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.writer.write_packet(Vec::new(), self.serial, PacketWriteEndInfo::EndStream, self.granule)?;
        Ok(self.writer.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::opus::{FRAME_SAMPLES, OpusDecoder, OpusEncoder, Tone};
    use ogg::reading::PacketReader;
    use std::io::Cursor;

    #[test]
    fn recorded_tone_reads_back_as_ogg_opus() {
        let mut w = OggOpusWriter::new(Vec::new(), 1, 7).unwrap();
        let (mut tone, mut enc) = (Tone::new(440.0), OpusEncoder::new().unwrap());
        let mut sent = Vec::new();
        for _ in 0..60 {
            let p = enc.encode(&tone.next_frame()).unwrap();
            w.write_packet(&p, FRAME_SAMPLES as u64).unwrap();
            sent.push(p);
        }
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[..4], b"OggS");
        let mut r = PacketReader::new(Cursor::new(bytes));
        let head = r.read_packet().unwrap().unwrap();
        assert_eq!(&head.data[..8], b"OpusHead");
        assert_eq!(head.data[9], 1, "channel count");
        let tags = r.read_packet().unwrap().unwrap();
        assert_eq!(&tags.data[..8], b"OpusTags");
        let mut dec = OpusDecoder::new().unwrap();
        let mut got = Vec::new();
        let mut last_granule = 0;
        while let Some(p) = r.read_packet().unwrap() {
            if p.data.is_empty() {
                continue;
            }
            assert_eq!(dec.decode(&p.data).unwrap(), FRAME_SAMPLES);
            last_granule = p.absgp_page();
            got.push(p.data);
        }
        assert_eq!(got, sent);
        assert_eq!(last_granule, 60 * FRAME_SAMPLES as u64);
    }
}
