//! The `natkit call` report, a public JSON contract (README "natkit call"): the candidate
//! pair ICE chose, how long connecting took, and per direction and media kind what flowed.

use std::io::Write;
use std::net::SocketAddr;

use serde::Serialize;

pub use crate::ice::candidate_type::CandidateType;
pub use crate::ice::role::Role;
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
    pub role: Option<Role>,
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

/// What the call knew when no candidate pair had worked: the facts the diagnosis may state.
#[derive(Debug, Clone, Default)]
pub struct IceFacts {
    /// `--connect-timeout`, in seconds.
    pub after_s: f64,
    /// Types of our candidates and of the peer's (from its SDP and its trickle).
    pub local: Vec<CandidateType>,
    pub remote: Vec<CandidateType>,
    /// STUN servers asked for a server-reflexive candidate.
    pub stun_servers: usize,
    /// A TURN server was asked for a relayed candidate.
    pub turn_server: bool,
    /// Why a server gave no candidate (`STUN 203.0.113.1:3478: no answer …`).
    pub gather_failures: Vec<String>,
}

/// "host 2, srflx 1" (or "none").
fn kinds(list: &[CandidateType]) -> String {
    let mut parts = Vec::new();
    for k in [CandidateType::Host, CandidateType::Srflx, CandidateType::Prflx, CandidateType::Relay] {
        let n = list.iter().filter(|x| **x == k).count();
        if n > 0 {
            parts.push(format!("{k} {n}"));
        }
    }
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}

/// Why no candidate pair worked, saying only what the call knows (RFC 8445 §6.1.2: pairs are
/// formed from both sides' candidates); never a guess at the peer's NAT that the facts do not
/// support.
pub fn no_pair_diagnosis(f: &IceFacts) -> String {
    let mut s = format!(
        "ICE failed: no candidate pair worked after {:.0} s (our candidates: {}; the peer's: {})",
        f.after_s,
        kinds(&f.local),
        kinds(&f.remote)
    );
    let has = |list: &[CandidateType], k: CandidateType| list.contains(&k);
    let mut why: Vec<String> = Vec::new();
    if f.remote.is_empty() {
        why.push("the peer sent no candidates, neither in its SDP nor trickled".into());
    }
    if f.local.is_empty() {
        why.push("we had no candidate to offer".into());
    }
    if f.stun_servers == 0 && !f.turn_server {
        why.push("no STUN or TURN server was given (--stun, --turn, or natkit signal --stun/--turn)".into());
    } else if f.stun_servers > 0 && !has(&f.local, CandidateType::Srflx) {
        why.push(format!("no server-reflexive candidate came from the {} STUN server(s)", f.stun_servers));
    }
    if f.turn_server && !has(&f.local, CandidateType::Relay) {
        why.push("the TURN server gave no relayed candidate".into());
    }
    why.extend(f.gather_failures.iter().cloned());
    let both_reflexive = has(&f.local, CandidateType::Srflx) && has(&f.remote, CandidateType::Srflx);
    let any_relay = has(&f.local, CandidateType::Relay) || has(&f.remote, CandidateType::Relay);
    if both_reflexive && !any_relay {
        // Only here is a NAT the likely cause: both sides know their public address and still
        // no check got through.
        why.push("both sides had server-reflexive candidates and no check got through: a NAT that maps per destination (symmetric) or a firewall is in the way".into());
    }
    if why.is_empty() {
        why.push("no connectivity check got an answer".into());
    }
    s.push_str(": ");
    s.push_str(&why.join("; "));
    if !any_relay {
        s.push_str("; a TURN server (--turn) relays where nothing else gets through");
    }
    s
}

fn opt_f(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into())
}

impl Render for CallReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let wide = output::layout() == output::Layout::Wide;
        let end = |e: &PathEnd| match e.kind {
            Some(k) => format!("{} {k}", e.address),
            None => e.address.to_string(),
        };
        // Facts first, one per row, so an address never shares a line with a sentence.
        let mut facts = output::Grid::key_value();
        facts.row(vec!["room".into(), self.room.clone()]);
        facts.row(vec!["role".into(), output::cell(&self.role)]);
        facts.row(vec!["outcome".into(), self.outcome.to_string()]);
        if let Some(p) = &self.path {
            facts.row(vec!["path".into(), format!("{} ↔ {}", end(&p.local), end(&p.remote))]);
        }
        facts.row(vec!["connect".into(), self.connect_ms.map(output::ms).unwrap_or_else(|| "-".into())]);
        facts.row(vec!["duration".into(), output::duration(std::time::Duration::from_secs_f64(self.duration_s))]);
        writeln!(out, "{facts}")?;
        let mut t = if wide {
            output::Grid::new(&[
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
            ])
        } else {
            output::Grid::new(&["direction", "kind", "codec", "frames", "loss", "rtt ms", "kbps"])
        };
        for (dir, d) in [("sent", &self.sent), ("received", &self.received)] {
            for (kind, m) in [("video", &d.video), ("audio", &d.audio)] {
                t.row(if wide {
                    vec![
                        dir.to_string(),
                        kind.to_string(),
                        m.codec.clone().unwrap_or_else(|| "-".into()),
                        m.packets.to_string(),
                        output::bytes(m.bytes),
                        m.frames.to_string(),
                        opt_f(m.packet_loss, 3),
                        opt_f(m.jitter_ms, 1),
                        opt_f(m.rtt_ms, 1),
                        opt_f(m.bitrate_kbps, 0),
                    ]
                } else {
                    vec![
                        dir.to_string(),
                        kind.to_string(),
                        m.codec.clone().unwrap_or_else(|| "-".into()),
                        m.frames.to_string(),
                        opt_f(m.packet_loss, 3),
                        opt_f(m.rtt_ms, 1),
                        opt_f(m.bitrate_kbps, 0),
                    ]
                });
            }
        }
        writeln!(out, "{t}")?;
        if let Some(r) = &self.recording {
            output::say(
                out,
                &format!(
                    "recorded: video {} audio {}",
                    r.video.as_deref().unwrap_or("-"),
                    r.audio.as_deref().unwrap_or("-")
                ),
            )?;
        }
        if let Some(e) = &self.error {
            output::say(out, &format!("error: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CandidateType::*;

    #[test]
    fn loopback_only_and_no_servers_blames_what_is_missing_not_the_peers_nat() {
        let f = IceFacts { after_s: 10.0, local: vec![Host], remote: vec![Host], ..Default::default() };
        let d = no_pair_diagnosis(&f);
        assert!(!d.contains("symmetric"), "{d}");
        assert!(d.contains("our candidates: host 1; the peer's: host 1"), "{d}");
        assert!(d.contains("no STUN or TURN server was given"), "{d}");
    }

    #[test]
    fn a_silent_stun_server_and_a_peer_without_candidates_are_named() {
        let f = IceFacts {
            after_s: 10.0,
            local: vec![Host],
            remote: vec![],
            stun_servers: 1,
            gather_failures: vec!["STUN 203.0.113.1:3478: no answer".into()],
            ..Default::default()
        };
        let d = no_pair_diagnosis(&f);
        assert!(d.contains("the peer sent no candidates"), "{d}");
        assert!(d.contains("no server-reflexive candidate came from the 1 STUN server"), "{d}");
        assert!(d.contains("STUN 203.0.113.1:3478: no answer"), "{d}");
        assert!(!d.contains("symmetric"), "{d}");
    }

    #[test]
    fn both_sides_reflexive_and_nothing_through_may_be_a_symmetric_nat() {
        let f = IceFacts {
            after_s: 10.0,
            local: vec![Host, Srflx],
            remote: vec![Host, Srflx],
            stun_servers: 2,
            ..Default::default()
        };
        let d = no_pair_diagnosis(&f);
        assert!(d.contains("symmetric"), "{d}");
        assert!(d.contains("--turn"), "{d}");
    }
}
