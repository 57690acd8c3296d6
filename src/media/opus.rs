//! Opus audio over the system libopus (Debian `libopus-dev`, via `opusic-sys` without its
//! bundled build): an encoder for the tone we send and a decoder that checks what we receive.
//! WebRTC Opus is 48 kHz, 20 ms frames, two channels signalled (RFC 7587).

use std::ffi::CStr;
use std::os::raw::c_int;

use opusic_sys as ffi;

/// 48 kHz is the only RTP clock rate for Opus (RFC 7587 §4.1).
pub const SAMPLE_RATE: u32 = 48_000;
/// 20 ms frames, the WebRTC default packet time.
pub const FRAME_SAMPLES: usize = 960;
/// We send mono; receivers decode to what the packet says.
pub const CHANNELS: usize = 1;
/// The largest packet libopus is asked to write (RFC 6716 §3.4: at most 1275 bytes per frame).
const MAX_PACKET: usize = 1500;

/// What went wrong inside libopus, with its own message.
#[derive(Debug, thiserror::Error)]
#[error("libopus {call} failed: {message}")]
pub struct OpusError {
    call: &'static str,
    message: String,
}

fn error(call: &'static str, code: c_int) -> OpusError {
    // SAFETY: opus_strerror returns a static NUL-terminated string for any code.
    let message = unsafe { CStr::from_ptr(ffi::opus_strerror(code)) }.to_string_lossy().into_owned();
    OpusError { call, message }
}

/// A libopus encoder, 48 kHz mono.
pub struct OpusEncoder {
    st: *mut ffi::OpusEncoder,
}

// SAFETY: used only through &mut self; libopus state is not tied to a thread.
unsafe impl Send for OpusEncoder {}

impl OpusEncoder {
    pub fn new() -> Result<Self, OpusError> {
        let mut code: c_int = 0;
        // SAFETY: plain constructor; a null result comes with an error code.
        let st = unsafe {
            ffi::opus_encoder_create(SAMPLE_RATE as i32, CHANNELS as c_int, ffi::OPUS_APPLICATION_AUDIO, &mut code)
        };
        if st.is_null() || code != ffi::OPUS_OK {
            return Err(error("opus_encoder_create", code));
        }
        Ok(Self { st })
    }

    /// Encodes one 20 ms frame of [`FRAME_SAMPLES`] mono samples.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, OpusError> {
        if pcm.len() != FRAME_SAMPLES * CHANNELS {
            return Err(OpusError {
                call: "opus_encode",
                message: format!("a 20 ms frame has {} samples, got {}", FRAME_SAMPLES * CHANNELS, pcm.len()),
            });
        }
        let mut out = vec![0u8; MAX_PACKET];
        // SAFETY: pcm holds frame_size samples, out holds max_data_bytes bytes.
        let n = unsafe {
            ffi::opus_encode(self.st, pcm.as_ptr(), FRAME_SAMPLES as c_int, out.as_mut_ptr(), out.len() as i32)
        };
        if n < 0 {
            return Err(error("opus_encode", n));
        }
        out.truncate(n as usize);
        Ok(out)
    }
}

impl Drop for OpusEncoder {
    fn drop(&mut self) {
        // SAFETY: created in new(), destroyed once.
        unsafe { ffi::opus_encoder_destroy(self.st) }
    }
}

/// A libopus decoder, 48 kHz stereo (the browser may send either).
pub struct OpusDecoder {
    st: *mut ffi::OpusDecoder,
}

// SAFETY: as for the encoder.
unsafe impl Send for OpusDecoder {}

impl OpusDecoder {
    pub fn new() -> Result<Self, OpusError> {
        let mut code: c_int = 0;
        // SAFETY: plain constructor; a null result comes with an error code.
        let st = unsafe { ffi::opus_decoder_create(SAMPLE_RATE as i32, 2, &mut code) };
        if st.is_null() || code != ffi::OPUS_OK {
            return Err(error("opus_decoder_create", code));
        }
        Ok(Self { st })
    }

    /// Decodes one packet; returns the number of samples per channel it held.
    pub fn decode(&mut self, packet: &[u8]) -> Result<usize, OpusError> {
        // 120 ms at 48 kHz is the longest Opus packet (RFC 6716 §3.2.5).
        let mut pcm = vec![0i16; 5760 * 2];
        // SAFETY: packet is len bytes; pcm has room for frame_size samples per channel.
        let n = unsafe { ffi::opus_decode(self.st, packet.as_ptr(), packet.len() as i32, pcm.as_mut_ptr(), 5760, 0) };
        if n < 0 {
            return Err(error("opus_decode", n));
        }
        Ok(n as usize)
    }
}

impl Drop for OpusDecoder {
    fn drop(&mut self) {
        // SAFETY: created in new(), destroyed once.
        unsafe { ffi::opus_decoder_destroy(self.st) }
    }
}

/// A sine tone, produced in 20 ms frames: what `--send test` plays.
#[derive(Debug, Clone)]
pub struct Tone {
    frequency_hz: f32,
    amplitude: f32,
    sample: u64,
}

impl Tone {
    pub fn new(frequency_hz: f32) -> Self {
        Self { frequency_hz, amplitude: 0.3 * i16::MAX as f32, sample: 0 }
    }

    /// The next 20 ms of mono samples.
    pub fn next_frame(&mut self) -> Vec<i16> {
        (0..FRAME_SAMPLES)
            .map(|_| {
                let t = self.sample as f32 / SAMPLE_RATE as f32;
                self.sample += 1;
                (self.amplitude * (2.0 * std::f32::consts::PI * self.frequency_hz * t).sin()) as i16
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_encodes_and_decodes_to_twenty_ms() {
        let mut tone = Tone::new(440.0);
        let mut enc = OpusEncoder::new().unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        for _ in 0..5 {
            let packet = enc.encode(&tone.next_frame()).unwrap();
            assert!(!packet.is_empty() && packet.len() < MAX_PACKET);
            assert_eq!(dec.decode(&packet).unwrap(), FRAME_SAMPLES);
        }
    }

    #[test]
    fn tone_is_a_sine_of_the_given_frequency() {
        let frame = Tone::new(1000.0).next_frame();
        // 1 kHz at 48 kHz: 48 samples per period, so sample 12 is the peak and 24 a zero crossing.
        assert!(frame[12] > 9000);
        assert!(frame[24].abs() < 100);
        assert!(frame[36] < -9000);
    }

    #[test]
    fn wrong_frame_length_is_an_error() {
        let mut enc = OpusEncoder::new().unwrap();
        assert!(enc.encode(&[0i16; 100]).is_err());
    }
}
