//! `natkit call`: a WebRTC media session from the terminal (see `crate::call`).

use std::time::Duration;

use crate::call::driver::{self, CallOptions, Sources};
use crate::call::report::Outcome;
use crate::call::source::{AudioSource, PatternSettings, SendChoice, VideoSource};
use crate::cli::CallArgs;
use crate::error::{Status, UsageError, usage};
use crate::net::server_spec::Family;
use crate::net::tls::TlsOptions;
use crate::output::{self, OutputOptions};
use crate::signal::client::{ClientOptions, normalize_url};
use crate::signal::protocol::RoomId;

fn seconds(flag: &str, v: f64) -> Result<Duration, UsageError> {
    if v.is_finite() && v > 0.0 && v < 1e7 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(UsageError::new(format!("{flag} must be a positive number of seconds, got {v}")))
    }
}

fn parse_size(s: &str) -> Result<(u32, u32), UsageError> {
    let bad =
        || UsageError::new(format!("--size '{s}' is not WIDTHxHEIGHT with even numbers from 16 to 1920, e.g. 640x360"));
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
    if !(16..=1920).contains(&w) || !(16..=1920).contains(&h) || w % 2 == 1 || h % 2 == 1 {
        return Err(bad());
    }
    Ok((w, h))
}

pub async fn run(args: CallArgs, opts: &OutputOptions) -> anyhow::Result<Status> {
    normalize_url(&args.signal).map_err(|e| UsageError::new(e.to_string()))?;
    let room = RoomId(args.room.clone());
    if let Some(problem) = room.problem() {
        return usage(format!("--room: {problem}"));
    }
    let duration = args.duration.map(|d| seconds("--duration", d)).transpose()?;
    let wait = seconds("--wait", args.wait)?;
    let connect_timeout = seconds("--connect-timeout", args.connect_timeout)?;
    let (width, height) = parse_size(&args.size)?;
    if let Some(dir) = &args.record {
        std::fs::create_dir_all(dir)
            .map_err(|e| UsageError::new(format!("--record: cannot create directory {}: {e}", dir.display())))?;
    }
    let sources = match &args.send {
        SendChoice::Test => Sources {
            video: Some(VideoSource::pattern(PatternSettings {
                width,
                height,
                fps: args.fps,
                bitrate_kbps: args.bitrate,
            })?),
            audio: Some(AudioSource::tone(440.0)?),
        },
        SendChoice::Ivf(path) => Sources {
            video: Some(VideoSource::ivf(path).map_err(|e| UsageError::new(format!("--send: {e}")))?),
            audio: Some(AudioSource::tone(440.0)?),
        },
        SendChoice::None => Sources { video: None, audio: None },
    };
    let family = if args.bind.is_ipv4() { Family::V4 } else { Family::V6 };
    let servers = crate::ice::server_list::resolve(&args.servers, family, "call").await?;
    let call_opts = CallOptions {
        signal_url: args.signal.clone(),
        client: ClientOptions { tls: TlsOptions { insecure: args.insecure, ca: args.ca.clone() } },
        room,
        bind: args.bind,
        duration,
        wait,
        connect_timeout,
        record: args.record.clone(),
        live_stats: output::shows_status(opts),
        stun: servers.stun,
        turn: servers.turn,
        relay_only: args.servers.relay_only,
    };
    let report = driver::run(call_opts, sources).await;
    output::emit(&report, opts)?;
    Ok(match report.outcome {
        Outcome::Interrupted => Status::Interrupted,
        o => Status::from_ok(o != Outcome::Failed),
    })
}
