//! VP8 encoder and decoder over the system libvpx (Debian `libvpx-dev`, via `env-libvpx-sys`).
//!
//! Only what a live call needs: I420 in, one compressed frame out per input frame (no lag, so
//! a frame leaves the encoder as soon as it is captured), keyframes on demand (a browser sends
//! PLI/FIR when it needs one), constant bitrate; and a decoder that tells whether a received
//! frame decodes (RFC 6386 bitstream; packetization is str0m's job, RFC 7741).

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_long, c_ulong};
use std::ptr;

use vpx_sys as ffi;

/// What went wrong inside libvpx, with its own message.
#[derive(Debug, thiserror::Error)]
#[error("libvpx {call} failed: {message}")]
pub struct VpxError {
    call: &'static str,
    message: String,
}

fn check(call: &'static str, err: ffi::vpx_codec_err_t) -> Result<(), VpxError> {
    if err == ffi::vpx_codec_err_t::VPX_CODEC_OK {
        return Ok(());
    }
    // SAFETY: vpx_codec_err_to_string returns a static NUL-terminated string for any code.
    let message = unsafe { CStr::from_ptr(ffi::vpx_codec_err_to_string(err)) }.to_string_lossy().into_owned();
    Err(VpxError { call, message })
}

/// Encoder settings; `fps` also sets the timebase.
#[derive(Debug, Clone, Copy)]
pub struct EncoderConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    /// Longest run of frames without a keyframe, so a viewer that joins late gets a picture.
    pub keyframe_interval: u32,
}

/// One compressed VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    pub data: Vec<u8>,
    pub keyframe: bool,
    pub pts: i64,
}

/// A libvpx VP8 encoder context.
pub struct Vp8Encoder {
    ctx: ffi::vpx_codec_ctx_t,
    config: EncoderConfig,
}

// SAFETY: the context is only used through &mut self; libvpx contexts are not tied to a thread.
unsafe impl Send for Vp8Encoder {}

impl Vp8Encoder {
    pub fn new(config: EncoderConfig) -> Result<Self, VpxError> {
        if !config.width.is_multiple_of(2)
            || !config.height.is_multiple_of(2)
            || config.width == 0
            || config.height == 0
        {
            return Err(VpxError {
                call: "encoder setup",
                message: format!("I420 needs an even, non-zero size, got {}x{}", config.width, config.height),
            });
        }
        // SAFETY: plain FFI calls on zeroed C structs that libvpx fills in, as its examples do.
        unsafe {
            let iface = ffi::vpx_codec_vp8_cx();
            let mut cfg = MaybeUninit::<ffi::vpx_codec_enc_cfg_t>::zeroed().assume_init();
            check("vpx_codec_enc_config_default", ffi::vpx_codec_enc_config_default(iface, &mut cfg, 0))?;
            cfg.g_w = config.width;
            cfg.g_h = config.height;
            cfg.g_timebase.num = 1;
            cfg.g_timebase.den = config.fps as c_int;
            cfg.rc_target_bitrate = config.bitrate_kbps;
            cfg.rc_end_usage = ffi::vpx_rc_mode::VPX_CBR;
            cfg.g_lag_in_frames = 0;
            cfg.g_threads = 1;
            cfg.g_error_resilient = ffi::VPX_ERROR_RESILIENT_DEFAULT;
            cfg.kf_mode = ffi::vpx_kf_mode::VPX_KF_AUTO;
            cfg.kf_max_dist = config.keyframe_interval.max(1);
            let mut ctx = MaybeUninit::<ffi::vpx_codec_ctx_t>::zeroed().assume_init();
            check(
                "vpx_codec_enc_init_ver",
                ffi::vpx_codec_enc_init_ver(&mut ctx, iface, &cfg, 0, ffi::VPX_ENCODER_ABI_VERSION as c_int),
            )?;
            // Fastest realtime preset: the test pattern is easy and the CPU is shared.
            let _ = ffi::vpx_codec_control_(&mut ctx, ffi::vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int, 10 as c_int);
            Ok(Self { ctx, config })
        }
    }

    pub fn config(&self) -> EncoderConfig {
        self.config
    }

    /// Encodes one I420 frame (`width*height*3/2` bytes). `force_keyframe` answers a PLI/FIR.
    pub fn encode(&mut self, pts: i64, i420: &[u8], force_keyframe: bool) -> Result<Vec<EncodedFrame>, VpxError> {
        let (w, h) = (self.config.width as usize, self.config.height as usize);
        if i420.len() < w * h * 3 / 2 {
            return Err(VpxError {
                call: "vpx_codec_encode",
                message: format!("frame has {} bytes, {}x{} I420 needs {}", i420.len(), w, h, w * h * 3 / 2),
            });
        }
        let flags = if force_keyframe { ffi::VPX_EFLAG_FORCE_KF as ffi::vpx_enc_frame_flags_t } else { 0 };
        let mut out = Vec::new();
        // SAFETY: the image wraps `i420`, which outlives the encode call and is large enough
        // (checked above); libvpx only reads it. Packets are copied out before the next call.
        unsafe {
            let mut image = MaybeUninit::<ffi::vpx_image_t>::zeroed().assume_init();
            if ffi::vpx_img_wrap(
                &mut image,
                ffi::vpx_img_fmt::VPX_IMG_FMT_I420,
                self.config.width,
                self.config.height,
                1,
                i420.as_ptr() as *mut u8,
            )
            .is_null()
            {
                return Err(VpxError { call: "vpx_img_wrap", message: "could not wrap the frame".into() });
            }
            check(
                "vpx_codec_encode",
                ffi::vpx_codec_encode(&mut self.ctx, &image, pts, 1, flags, ffi::VPX_DL_REALTIME as c_ulong),
            )?;
            let mut iter: ffi::vpx_codec_iter_t = ptr::null();
            loop {
                let pkt = ffi::vpx_codec_get_cx_data(&mut self.ctx, &mut iter);
                if pkt.is_null() {
                    break;
                }
                if (*pkt).kind != ffi::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    continue;
                }
                let frame = (*pkt).data.frame;
                let data = std::slice::from_raw_parts(frame.buf as *const u8, frame.sz as usize).to_vec();
                out.push(EncodedFrame { data, keyframe: frame.flags & ffi::VPX_FRAME_IS_KEY != 0, pts: frame.pts });
            }
        }
        Ok(out)
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: ctx was initialised in new() and is destroyed once.
        unsafe {
            ffi::vpx_codec_destroy(&mut self.ctx);
        }
    }
}

/// Size of a decoded picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureSize {
    pub width: u32,
    pub height: u32,
}

/// A libvpx VP8 decoder context: used to check that what a peer sent really decodes.
pub struct Vp8Decoder {
    ctx: ffi::vpx_codec_ctx_t,
}

// SAFETY: as for the encoder.
unsafe impl Send for Vp8Decoder {}

impl Vp8Decoder {
    pub fn new() -> Result<Self, VpxError> {
        // SAFETY: zeroed context and default (null) config, as libvpx's examples do.
        unsafe {
            let mut ctx = MaybeUninit::<ffi::vpx_codec_ctx_t>::zeroed().assume_init();
            check(
                "vpx_codec_dec_init_ver",
                ffi::vpx_codec_dec_init_ver(
                    &mut ctx,
                    ffi::vpx_codec_vp8_dx(),
                    ptr::null(),
                    0,
                    ffi::VPX_DECODER_ABI_VERSION as c_int,
                ),
            )?;
            Ok(Self { ctx })
        }
    }

    /// Decodes one frame; returns the picture size of each picture it produced.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Vec<PictureSize>, VpxError> {
        let mut out = Vec::new();
        // SAFETY: libvpx reads `frame` during the call only; images are read before the next call.
        unsafe {
            check(
                "vpx_codec_decode",
                ffi::vpx_codec_decode(&mut self.ctx, frame.as_ptr(), frame.len() as _, ptr::null_mut(), 0 as c_long),
            )?;
            let mut iter: ffi::vpx_codec_iter_t = ptr::null();
            loop {
                let img = ffi::vpx_codec_get_frame(&mut self.ctx, &mut iter);
                if img.is_null() {
                    break;
                }
                out.push(PictureSize { width: (*img).d_w, height: (*img).d_h });
            }
        }
        Ok(out)
    }
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: ctx was initialised in new() and is destroyed once.
        unsafe {
            ffi::vpx_codec_destroy(&mut self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EncoderConfig {
        EncoderConfig { width: 160, height: 120, fps: 30, bitrate_kbps: 300, keyframe_interval: 30 }
    }

    #[test]
    fn first_frame_is_a_keyframe_and_decodes_to_the_same_size() {
        let mut enc = Vp8Encoder::new(config()).unwrap();
        let frame = vec![128u8; 160 * 120 * 3 / 2];
        let out = enc.encode(0, &frame, false).unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe);
        let mut dec = Vp8Decoder::new().unwrap();
        assert_eq!(dec.decode(&out[0].data).unwrap(), vec![PictureSize { width: 160, height: 120 }]);
    }

    #[test]
    fn forced_keyframe_is_a_keyframe() {
        let mut enc = Vp8Encoder::new(config()).unwrap();
        let frame = vec![100u8; 160 * 120 * 3 / 2];
        for pts in 0..3 {
            enc.encode(pts, &frame, false).unwrap();
        }
        let not_forced = enc.encode(3, &frame, false).unwrap();
        assert!(!not_forced[0].keyframe);
        let forced = enc.encode(4, &frame, true).unwrap();
        assert!(forced[0].keyframe);
    }

    #[test]
    fn odd_size_and_short_frame_are_errors() {
        assert!(Vp8Encoder::new(EncoderConfig { width: 161, ..config() }).is_err());
        let mut enc = Vp8Encoder::new(config()).unwrap();
        assert!(enc.encode(0, &[0u8; 10], false).is_err());
    }

    #[test]
    fn garbage_does_not_decode() {
        let mut dec = Vp8Decoder::new().unwrap();
        assert!(dec.decode(&[0xff; 40]).is_err());
    }
}
