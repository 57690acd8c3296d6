//! Media for `natkit call`: what we send (a generated test picture encoded to VP8, frames from
//! an IVF file, an Opus tone) and what we do with what we receive (decode to check it, record
//! to `.ivf` and `.ogg`). Codec libraries are the system libvpx and libopus.

pub mod ivf;
pub mod ogg_opus;
pub mod opus;
pub mod pattern;
pub mod vp8;
