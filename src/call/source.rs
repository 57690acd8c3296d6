//! What `natkit call` sends: `--send test` (the generated picture encoded to VP8 plus an Opus
//! tone), `--send FILE.ivf` (VP8 frames from a file, looped, plus the tone) or `--send none`.
//! Each source says when its next frame is due, so the call keeps a steady frame rate.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::media::ivf::{IvfError, IvfReader};
use crate::media::opus::{FRAME_SAMPLES, OpusEncoder, OpusError, SAMPLE_RATE, Tone};
use crate::media::pattern::{TestPattern, clock_text};
use crate::media::vp8::{EncoderConfig, Vp8Encoder, VpxError};

/// The `--send` choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendChoice {
    Test,
    Ivf(PathBuf),
    None,
}

impl std::str::FromStr for SendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "test" => Ok(SendChoice::Test),
            "none" => Ok(SendChoice::None),
            f if f.to_ascii_lowercase().ends_with(".ivf") => Ok(SendChoice::Ivf(PathBuf::from(f))),
            other => Err(format!("'{other}' is not test, none or a FILE.ivf")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Vpx(#[from] VpxError),
    #[error(transparent)]
    Opus(#[from] OpusError),
    #[error("{path}: {source}")]
    Ivf { path: String, source: IvfError },
}

/// One encoded video frame ready for RTP: data, whether it is a keyframe, its 90 kHz time.
#[derive(Debug)]
pub struct VideoFrame {
    pub data: Vec<u8>,
    pub keyframe: bool,
    pub rtp_time: u64,
}

/// Size and rate of the generated picture.
#[derive(Debug, Clone, Copy)]
pub struct PatternSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
}

impl Default for PatternSettings {
    fn default() -> Self {
        PatternSettings { width: 640, height: 360, fps: 30, bitrate_kbps: 600 }
    }
}

/// A VP8 video source.
pub enum VideoSource {
    Pattern { pattern: TestPattern, encoder: Box<Vp8Encoder>, index: u64, fps: u32 },
    Ivf { reader: IvfReader<BufReader<File>>, path: String, index: u64, interval: Duration },
}

impl VideoSource {
    pub fn pattern(s: PatternSettings) -> Result<Self, SourceError> {
        let encoder = Vp8Encoder::new(EncoderConfig {
            width: s.width,
            height: s.height,
            fps: s.fps,
            bitrate_kbps: s.bitrate_kbps,
            keyframe_interval: s.fps * 3,
        })?;
        Ok(VideoSource::Pattern {
            pattern: TestPattern::new(s.width, s.height),
            encoder: Box::new(encoder),
            index: 0,
            fps: s.fps.max(1),
        })
    }

    pub fn ivf(path: &std::path::Path) -> Result<Self, SourceError> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|e| SourceError::Ivf { path: shown.clone(), source: e.into() })?;
        let reader =
            IvfReader::new(BufReader::new(file)).map_err(|e| SourceError::Ivf { path: shown.clone(), source: e })?;
        reader.require_vp8().map_err(|e| SourceError::Ivf { path: shown.clone(), source: e })?;
        let h = reader.header();
        // IVF gives the frame rate as rate/scale; fall back to 30 fps when it is nonsense.
        let interval = if h.rate > 0 && h.scale > 0 && h.rate / h.scale <= 240 {
            Duration::from_secs_f64(h.scale as f64 / h.rate as f64)
        } else {
            Duration::from_secs_f64(1.0 / 30.0)
        };
        Ok(VideoSource::Ivf { reader, path: shown, index: 0, interval })
    }

    /// Time between frames.
    pub fn interval(&self) -> Duration {
        match self {
            VideoSource::Pattern { fps, .. } => Duration::from_secs_f64(1.0 / *fps as f64),
            VideoSource::Ivf { interval, .. } => *interval,
        }
    }

    /// The next frame; `force_keyframe` is honoured by the encoder (an IVF file cannot).
    pub fn next_frame(&mut self, force_keyframe: bool) -> Result<Option<VideoFrame>, SourceError> {
        let interval = self.interval();
        match self {
            VideoSource::Pattern { pattern, encoder, index, .. } => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                let picture = pattern.draw(*index, &clock_text(now));
                let rtp_time = (*index as f64 * interval.as_secs_f64() * 90_000.0).round() as u64;
                let pts = *index as i64;
                *index += 1;
                Ok(encoder.encode(pts, &picture, force_keyframe)?.into_iter().next().map(|f| VideoFrame {
                    data: f.data,
                    keyframe: f.keyframe,
                    rtp_time,
                }))
            }
            VideoSource::Ivf { reader, path, index, .. } => {
                let ivf = |e| SourceError::Ivf { path: path.clone(), source: e };
                let frame = match reader.next_frame().map_err(ivf)? {
                    Some(f) => f,
                    None => {
                        // Loop the file for as long as the call lasts.
                        reader.rewind().map_err(ivf)?;
                        match reader.next_frame().map_err(ivf)? {
                            Some(f) => f,
                            None => return Ok(None),
                        }
                    }
                };
                let rtp_time = (*index as f64 * interval.as_secs_f64() * 90_000.0).round() as u64;
                *index += 1;
                // VP8 payload header bit P (RFC 6386 §9.1): 0 means keyframe.
                let keyframe = frame.data.first().is_some_and(|b| b & 1 == 0);
                Ok(Some(VideoFrame { data: frame.data, keyframe, rtp_time }))
            }
        }
    }
}

/// The Opus tone, 20 ms per packet.
pub struct AudioSource {
    tone: Tone,
    encoder: OpusEncoder,
    samples: u64,
}

/// One Opus packet and its 48 kHz RTP time.
#[derive(Debug)]
pub struct AudioFrame {
    pub data: Vec<u8>,
    pub rtp_time: u64,
}

impl AudioSource {
    pub fn tone(frequency_hz: f32) -> Result<Self, SourceError> {
        Ok(AudioSource { tone: Tone::new(frequency_hz), encoder: OpusEncoder::new()?, samples: 0 })
    }

    pub fn interval(&self) -> Duration {
        Duration::from_micros(FRAME_SAMPLES as u64 * 1_000_000 / SAMPLE_RATE as u64)
    }

    pub fn next_frame(&mut self) -> Result<AudioFrame, SourceError> {
        let data = self.encoder.encode(&self.tone.next_frame())?;
        let rtp_time = self.samples;
        self.samples += FRAME_SAMPLES as u64;
        Ok(AudioFrame { data, rtp_time })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ivf::{IvfHeader, IvfWriter};

    #[test]
    fn send_choice_parses() {
        assert_eq!("test".parse::<SendChoice>().unwrap(), SendChoice::Test);
        assert_eq!("none".parse::<SendChoice>().unwrap(), SendChoice::None);
        assert_eq!("a/b.IVF".parse::<SendChoice>().unwrap(), SendChoice::Ivf("a/b.IVF".into()));
        assert!("movie.mp4".parse::<SendChoice>().is_err());
    }

    #[test]
    fn pattern_source_gives_steady_rtp_times_and_a_first_keyframe() {
        let mut s =
            VideoSource::pattern(PatternSettings { width: 160, height: 120, fps: 30, bitrate_kbps: 200 }).unwrap();
        let a = s.next_frame(false).unwrap().unwrap();
        let b = s.next_frame(false).unwrap().unwrap();
        assert!(a.keyframe);
        assert_eq!(a.rtp_time, 0);
        assert_eq!(b.rtp_time, 3000);
    }

    #[test]
    fn ivf_source_loops_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.ivf");
        let header = IvfHeader { fourcc: *b"VP80", width: 160, height: 120, rate: 25, scale: 1, frames: 0 };
        let mut w = IvfWriter::new(File::create(&path).unwrap(), header).unwrap();
        w.write_frame(0, &[0x10, 1, 2]).unwrap();
        w.write_frame(1, &[0x11, 3]).unwrap();
        w.finish().unwrap();
        let mut s = VideoSource::ivf(&path).unwrap();
        assert_eq!(s.interval(), Duration::from_millis(40));
        let frames: Vec<_> = (0..3).map(|_| s.next_frame(false).unwrap().unwrap()).collect();
        assert!(frames[0].keyframe && !frames[1].keyframe);
        assert_eq!(frames[2].data, vec![0x10, 1, 2]);
        assert_eq!(frames[2].rtp_time, 2 * 3600);
    }

    #[test]
    fn audio_source_is_twenty_ms_packets() {
        let mut a = AudioSource::tone(440.0).unwrap();
        assert_eq!(a.interval(), Duration::from_millis(20));
        a.next_frame().unwrap();
        assert_eq!(a.next_frame().unwrap().rtp_time, 960);
    }
}
