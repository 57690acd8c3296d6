//! The `natkit call` report, a public JSON contract (README "natkit call"): the candidate
//! pair ICE chose, how long connecting took, and per direction and media kind what flowed.

use std::io::Write;
use std::net::SocketAddr;

use serde::Serialize;

use crate::output::{self, Render};

/// How the call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `--duration` elapsed with the call up.
    Completed,
    /// SIGINT (Ctrl-C) hung up a connected call.
    HungUp,
    /// The other side left the room or closed the session.
    PeerLeft,
    /// The call failed; `error` says why.
    Failed,
    /// Ctrl-C before the call connected (exit 130).
    Interrupted,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Completed => "completed",
            Outcome::HungUp => "hung up",
            Outcome::PeerLeft => "peer left",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        })
    }
}

/// ICE candidate type (RFC 8445 §5.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateType {
    Host,
    Srflx,
    Prflx,
    Relay,
}

impl std::fmt::Display for CandidateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CandidateType::Host => "host",
            CandidateType::Srflx => "srflx",
            CandidateType::Prflx => "prflx",
            CandidateType::Relay => "relay",
        })
    }
}

/// One end of the chosen candidate pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PathEnd {
    #[serde(rename = "type")]
    pub kind: Option<CandidateType>,
    pub address: SocketAddr,
}

/// The candidate pair media flowed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CallPath {
    pub local: PathEnd,
    pub remote: PathEnd,
}

/// What flowed in one direction for one media kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MediaStats {
    pub codec: Option<String>,
    pub packets: u64,
    /// RTP payload bytes.
    pub bytes: u64,
    /// Video: frames sent / frames received that decoded. Audio: Opus packets.
    pub frames: u64,
    /// Received only: frames the decoder refused after the first good one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_errors: Option<u64>,
    /// Fraction lost (0.0–1.0) in the last RTCP report interval: for sent media as the peer
    /// reported it (receiver report), for received media as we measured it.
    pub packet_loss: Option<f64>,
    /// Interarrival jitter (RFC 3550 §6.4.1) in ms.
    pub jitter_ms: Option<f64>,
    /// Round-trip time from RTCP (sender/receiver report timing), in ms.
    pub rtt_ms: Option<f64>,
    /// Average over the connected time.
    pub bitrate_kbps: Option<f64>,
}

/// Video and audio of one direction.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DirectionStats {
    pub video: MediaStats,
    pub audio: MediaStats,
}

/// Where the received media was written (`--record`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Recording {
    pub video: Option<String>,
    pub audio: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallReport {
    pub room: String,
    /// Our id and the peer's id on the signaling server.
    pub id: Option<String>,
    pub peer: Option<String>,
    /// `offerer` (we joined second) or `answerer`.
    pub role: Option<String>,
    pub outcome: Outcome,
    pub path: Option<CallPath>,
    /// From the offer (sent or received) to ICE and DTLS connected.
    pub connect_ms: Option<f64>,
    /// Connected time.
    pub duration_s: f64,
    pub sent: DirectionStats,
    pub received: DirectionStats,
    pub recording: Option<Recording>,
    pub error: Option<String>,
}

impl CallReport {
    pub fn new(room: &str) -> Self {
        CallReport {
            room: room.to_string(),
            id: None,
            peer: None,
            role: None,
            outcome: Outcome::Failed,
            path: None,
            connect_ms: None,
            duration_s: 0.0,
            sent: DirectionStats::default(),
            received: DirectionStats::default(),
            recording: None,
            error: None,
        }
    }
}

fn opt_f(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into())
}

impl Render for CallReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let path = match &self.path {
            Some(p) => format!(
                "{} {} ↔ {} {}",
                p.local.kind.map(|k| k.to_string()).unwrap_or_else(|| "?".into()),
                p.local.address,
                p.remote.kind.map(|k| k.to_string()).unwrap_or_else(|| "?".into()),
                p.remote.address
            ),
            None => "-".into(),
        };
        writeln!(
            out,
            "room {}  role {}  outcome {}  path {}  connect {} ms  duration {:.1} s",
            self.room,
            self.role.as_deref().unwrap_or("-"),
            self.outcome,
            path,
            opt_f(self.connect_ms, 0),
            self.duration_s
        )?;
        let mut t = output::Grid::new(&[
            "direction",
            "kind",
            "codec",
            "packets",
            "bytes",
            "frames",
            "loss",
            "jitter ms",
            "rtt ms",
            "kbps",
        ]);
        for (dir, d) in [("sent", &self.sent), ("received", &self.received)] {
            for (kind, m) in [("video", &d.video), ("audio", &d.audio)] {
                t.row(vec![
                    dir.to_string(),
                    kind.to_string(),
                    m.codec.clone().unwrap_or_else(|| "-".into()),
                    m.packets.to_string(),
                    m.bytes.to_string(),
                    m.frames.to_string(),
                    opt_f(m.packet_loss, 3),
                    opt_f(m.jitter_ms, 1),
                    opt_f(m.rtt_ms, 1),
                    opt_f(m.bitrate_kbps, 0),
                ]);
            }
        }
        writeln!(out, "{t}")?;
        if let Some(r) = &self.recording {
            writeln!(
                out,
                "recorded: video {}  audio {}",
                r.video.as_deref().unwrap_or("-"),
                r.audio.as_deref().unwrap_or("-")
            )?;
        }
        if let Some(e) = &self.error {
            writeln!(out, "error: {e}")?;
        }
        Ok(())
    }
}
