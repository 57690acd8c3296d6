//! What `natkit call` does with received media: decode it (so the report can say the frames
//! were real, not just packets) and, with `--record DIR`, write video to `video.ivf` and audio
//! to `audio.ogg`, files a person can play (`ffplay`, VLC, a browser).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::media::ivf::{IvfHeader, IvfWriter};
use crate::media::ogg_opus::OggOpusWriter;
use crate::media::opus::OpusDecoder;
use crate::media::vp8::Vp8Decoder;

/// Counters for one received kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeCounts {
    /// Frames that decoded.
    pub frames: u64,
    /// Frames the decoder refused (after the first good one: before a keyframe, misses are normal).
    pub decode_errors: u64,
    /// Picture size of the last decoded video frame.
    pub width: u32,
    pub height: u32,
}

/// Receives VP8 frames.
pub struct VideoSink {
    decoder: Vp8Decoder,
    counts: DecodeCounts,
    record: Option<PathBuf>,
    writer: Option<IvfWriter<BufWriter<File>>>,
    first_rtp_time: Option<u64>,
}

/// Receives Opus packets.
pub struct AudioSink {
    decoder: OpusDecoder,
    counts: DecodeCounts,
    writer: Option<OggOpusWriter<BufWriter<File>>>,
}

impl VideoSink {
    pub fn new(record_dir: Option<&Path>) -> anyhow::Result<Self> {
        Ok(VideoSink {
            decoder: Vp8Decoder::new()?,
            counts: DecodeCounts::default(),
            record: record_dir.map(|d| d.join("video.ivf")),
            writer: None,
            first_rtp_time: None,
        })
    }

    /// One depacketized VP8 frame and its 90 kHz RTP time.
    pub fn push(&mut self, frame: &[u8], rtp_time: u64) -> anyhow::Result<()> {
        match self.decoder.decode(frame) {
            Ok(pictures) => {
                if let Some(p) = pictures.last() {
                    self.counts.width = p.width;
                    self.counts.height = p.height;
                }
                self.counts.frames += pictures.len() as u64;
                if !pictures.is_empty() {
                    self.record(frame, rtp_time)?;
                }
            }
            Err(e) if self.counts.frames > 0 => {
                tracing::debug!("video frame did not decode: {e}");
                self.counts.decode_errors += 1;
            }
            Err(_) => {} // waiting for the first keyframe
        }
        Ok(())
    }

    fn record(&mut self, frame: &[u8], rtp_time: u64) -> anyhow::Result<()> {
        let Some(path) = &self.record else { return Ok(()) };
        if self.writer.is_none() {
            // The file starts at the first frame that decoded (a keyframe), so it plays.
            let header = IvfHeader {
                fourcc: *b"VP80",
                width: self.counts.width as u16,
                height: self.counts.height as u16,
                rate: 90_000,
                scale: 1,
                frames: 0,
            };
            let file = File::create(path).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
            self.writer = Some(IvfWriter::new(BufWriter::new(file), header)?);
            self.first_rtp_time = Some(rtp_time);
        }
        if let Some(w) = &mut self.writer {
            // Timebase 1/90000: the pts is the RTP time since the first recorded frame.
            w.write_frame(rtp_time.saturating_sub(self.first_rtp_time.unwrap_or(rtp_time)), frame)?;
        }
        Ok(())
    }

    pub fn counts(&self) -> DecodeCounts {
        self.counts
    }

    /// Closes the recording; returns its path if anything was written.
    pub fn finish(&mut self) -> anyhow::Result<Option<PathBuf>> {
        match self.writer.take() {
            Some(w) => {
                w.finish()?;
                Ok(self.record.clone())
            }
            None => Ok(None),
        }
    }
}

impl AudioSink {
    pub fn new(record_dir: Option<&Path>) -> anyhow::Result<Self> {
        let writer = match record_dir {
            Some(d) => {
                let path = d.join("audio.ogg");
                let file = File::create(&path).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
                Some(OggOpusWriter::new(BufWriter::new(file), 2, rand::random())?)
            }
            None => None,
        };
        Ok(AudioSink { decoder: OpusDecoder::new()?, counts: DecodeCounts::default(), writer })
    }

    /// One Opus packet.
    pub fn push(&mut self, packet: &[u8]) -> anyhow::Result<()> {
        match self.decoder.decode(packet) {
            Ok(samples) => {
                self.counts.frames += 1;
                if let Some(w) = &mut self.writer {
                    w.write_packet(packet, samples as u64)?;
                }
            }
            Err(e) => {
                tracing::debug!("audio packet did not decode: {e}");
                self.counts.decode_errors += 1;
            }
        }
        Ok(())
    }

    pub fn counts(&self) -> DecodeCounts {
        self.counts
    }

    pub fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(w) = self.writer.take() {
            w.finish()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ivf::IvfReader;
    use crate::media::vp8::{EncoderConfig, Vp8Encoder};

    #[test]
    fn decoded_video_is_counted_and_recorded_from_the_first_keyframe() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = VideoSink::new(Some(dir.path())).unwrap();
        let mut enc = Vp8Encoder::new(EncoderConfig {
            width: 160,
            height: 120,
            fps: 30,
            bitrate_kbps: 200,
            keyframe_interval: 90,
        })
        .unwrap();
        let picture = vec![90u8; 160 * 120 * 3 / 2];
        let frames: Vec<_> = (0..4).map(|i| enc.encode(i, &picture, false).unwrap().remove(0)).collect();
        // A delta frame before any keyframe: not counted, not recorded, not an error.
        sink.push(&frames[1].data, 0).unwrap();
        for (i, f) in frames.iter().enumerate() {
            sink.push(&f.data, 1000 + i as u64 * 3000).unwrap();
        }
        assert_eq!(sink.counts(), DecodeCounts { frames: 4, decode_errors: 0, width: 160, height: 120 });
        let path = sink.finish().unwrap().unwrap();
        let mut r = IvfReader::new(File::open(path).unwrap()).unwrap();
        assert_eq!(r.header().frames, 4);
        assert_eq!(r.next_frame().unwrap().unwrap().pts, 0);
        assert_eq!(r.next_frame().unwrap().unwrap().pts, 3000);
    }

    #[test]
    fn broken_audio_is_a_decode_error() {
        let mut sink = AudioSink::new(None).unwrap();
        // Code 3 (several frames) needs a frame-count byte: one byte alone is invalid.
        sink.push(&[0x03]).unwrap();
        assert_eq!(sink.counts().decode_errors, 1);
    }
}
