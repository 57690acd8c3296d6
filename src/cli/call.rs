//! Arguments of `natkit call`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::call::source::SendChoice;

#[derive(Debug, Args)]
#[command(
    about = "A WebRTC call from the terminal: join a room on `natkit signal`, send test video and audio, report what flowed"
)]
pub struct CallArgs {
    /// Signaling server: ws://HOST:PORT or wss://HOST:PORT (`natkit signal`; path /ws by default)
    #[arg(long, value_name = "URL")]
    pub signal: String,

    /// Room to join; the browser page or another `natkit call` joins the same one
    #[arg(long, value_name = "ROOM")]
    pub room: String,

    /// What to send: `test` (moving colour bars with a frame counter and the time, VP8, plus
    /// a 440 Hz Opus tone), a VP8 FILE.ivf (looped, plus the tone), or `none` (receive only)
    #[arg(long, value_name = "test|FILE.ivf|none", default_value = "test")]
    pub send: SendChoice,

    /// Hang up after this many seconds connected (default: run until Ctrl-C or the peer leaves)
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Write received video to DIR/video.ivf and audio to DIR/audio.ogg
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,

    /// Local UDP address for media; a specific IP offers only that host candidate
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:0")]
    pub bind: SocketAddr,

    #[command(flatten)]
    pub servers: super::IceServerArgs,

    /// Give up if no peer is in the room after this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub wait: f64,

    /// Give up if ICE and DTLS have not connected this many seconds after the offer
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    pub connect_timeout: f64,

    /// Video size and rate of `--send test`
    #[arg(long, value_name = "WxH", default_value = "640x360")]
    pub size: String,

    /// Frames per second of `--send test`
    #[arg(long, value_name = "FPS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub fps: u32,

    /// Target video bitrate of `--send test`
    #[arg(long, value_name = "KBPS", default_value_t = 600)]
    pub bitrate: u32,

    /// Accept any TLS certificate from a wss:// signaling server (e.g. --tls-self-signed)
    #[arg(long)]
    pub insecure: bool,

    /// Trust this PEM CA certificate for wss://
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}
