//! The report of `natkit punch` (the JSON contract in README) and its table.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

use is::{Candidate, CandidateKind};
use serde::Serialize;

use crate::ice::checks::CheckRecord;
use crate::output::{self, Render};
use crate::punch::birthday::Side;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Direct,
    Relay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Joined second: offers, controls ICE, is the QUIC client.
    Offerer,
    Answerer,
}

/// A candidate type as SDP names it (RFC 8445 §5.1.1, RFC 8839 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateType {
    Host,
    Srflx,
    Prflx,
    Relay,
}

impl From<CandidateKind> for CandidateType {
    fn from(k: CandidateKind) -> Self {
        match k {
            CandidateKind::Host => CandidateType::Host,
            CandidateKind::ServerReflexive => CandidateType::Srflx,
            CandidateKind::PeerReflexive => CandidateType::Prflx,
            CandidateKind::Relayed => CandidateType::Relay,
        }
    }
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

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    #[serde(rename = "type")]
    pub kind: CandidateType,
    /// This address is a router's port mapping (ours: see `port_mapping`; the peer's: its
    /// description said so); offered as `srflx`.
    pub port_mapped: bool,
}

/// The port mapping punch asked its router for (null with --no-port-mapping or --relay-only).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PortMappingUse {
    /// The router on the way to the servers that was asked (null: none on the way).
    pub gateway: Option<Ipv4Addr>,
    /// The protocol that mapped (null: none did, see `error`).
    pub protocol: Option<crate::portmap::Protocol>,
    /// The mapped address, offered as a candidate.
    pub external: Option<SocketAddr>,
    pub lifetime_s: Option<u32>,
    pub renewals: u32,
    /// Deleted at the end (null when nothing was mapped).
    pub deleted: Option<bool>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PunchReport {
    pub room: String,
    pub role: Option<Role>,
    pub path: Option<PathKind>,
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
    /// Room joined → QUIC handshake done.
    pub connect_ms: Option<f64>,
    pub candidates: Vec<String>,
    pub remote_candidates: Vec<String>,
    /// Our mapped address changed with the STUN server (a hard NAT).
    pub mapping_varies: Option<bool>,
    /// What told `mapping_varies`: two server IPs, or one IP on two ports (port-dependent
    /// mapping only; see punch::observation). Null with it.
    pub mapping_evidence: Option<crate::punch::observation::MappingEvidence>,
    pub checks: Vec<CheckRecord>,
    /// The birthday method, when it was tried (one NAT symmetric, the other not).
    pub birthday: Option<BirthdayReport>,
    pub bytes: u64,
    pub throughput_mbps: Option<f64>,
    pub sha256: Option<String>,
    pub error: Option<String>,
    /// Each time the path moved after connecting (a NAT forgot, the peer moved), in order.
    pub path_changes: Vec<PathChange>,
    /// The router port mapping offered as a candidate.
    pub port_mapping: Option<PortMappingUse>,
}

/// One move of the path after connecting.
#[derive(Debug, Clone, Serialize)]
pub struct PathChange {
    /// Room joined → the new path carried traffic.
    pub at_ms: f64,
    pub from: Option<SocketAddr>,
    pub to: SocketAddr,
    pub why: PathChangeReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathChangeReason {
    /// Consent checks went unanswered; our NAT had given us a new public address, which we
    /// trickled to the peer and checked again (re-punch). `from`/`to`: our mapped address.
    MappingChanged,
    /// The peer's packets now come from a new address, after a re-punch on its side; QUIC
    /// validated and migrated to it. `from`/`to`: the peer's address.
    PeerMoved,
    /// Re-punching did not bring the path back within the fallback time: QUIC moved to the TURN
    /// relay. `to`: the peer's relayed address we now send to (our NAT forgot: our allocation went
    /// with it), or the peer's new address reaching us through our relay.
    RelayFallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BirthdaySide {
    /// Our mapping is stable: we probed random ports of the peer's public IP.
    Prober,
    /// Our mapping varies: we opened many mappings toward the peer.
    Opener,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BirthdayOutcome {
    Running,
    Found,
    GaveUp,
}

#[derive(Debug, Clone, Serialize)]
pub struct BirthdayReport {
    pub side: BirthdaySide,
    /// Sockets the opener bound (1 for the prober).
    pub sockets: usize,
    /// Probes the prober had sent when it ended (0 for the opener).
    pub probes: u32,
    pub outcome: BirthdayOutcome,
}

impl BirthdayReport {
    pub(crate) fn started(side: &Side) -> Self {
        let (side, sockets) = match side {
            Side::Prober { .. } => (BirthdaySide::Prober, 1),
            Side::Opener { sockets, .. } => (BirthdaySide::Opener, *sockets),
        };
        BirthdayReport { side, sockets, probes: 0, outcome: BirthdayOutcome::Running }
    }

    pub(crate) fn found(&mut self, probes: u32) {
        (self.probes, self.outcome) = (probes, BirthdayOutcome::Found);
    }

    pub(crate) fn gave_up(&mut self, probes: u32) {
        (self.probes, self.outcome) = (probes, BirthdayOutcome::GaveUp);
    }
}

/// The candidate type of `addr` among `candidates` (`prflx` when it is none of them).
pub(crate) fn endpoint_of(addr: SocketAddr, candidates: &[Candidate]) -> Endpoint {
    let kind = candidates.iter().find(|c| c.addr() == addr).map_or(CandidateType::Prflx, |c| c.kind().into());
    Endpoint { address: addr, kind, port_mapped: false }
}

impl Render for PunchReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut t = output::Grid::new(&["local", "remote", "requests", "responses", "outcome", "nominated", "rtt"]);
        for c in &self.checks {
            t.row(vec![
                c.local.to_string(),
                c.remote.to_string(),
                c.requests.to_string(),
                c.responses.to_string(),
                c.outcome.to_string(),
                if c.nominated { "yes".into() } else { String::new() },
                c.rtt_ms.map(output::ms).unwrap_or_else(|| "-".into()),
            ]);
        }
        // No check ran (the peer never came): no empty table.
        if !self.checks.is_empty() {
            writeln!(out, "{t}")?;
        }
        if let (Some(l), Some(r), Some(ms)) = (&self.local, &self.remote, self.connect_ms) {
            writeln!(
                out,
                "{} path {} ({}) ↔ {} ({}), QUIC up {ms:.0} ms after joining room {}.",
                match self.path {
                    Some(PathKind::Relay) => "Relayed",
                    _ => "Direct",
                },
                l.address,
                l.kind,
                r.address,
                r.kind,
                self.room
            )?;
        }
        if self.bytes > 0 {
            writeln!(
                out,
                "Moved {} bytes{}{}.",
                self.bytes,
                self.throughput_mbps.map(|m| format!(" at {m:.1} Mbit/s")).unwrap_or_default(),
                self.sha256.as_ref().map(|s| format!(", SHA-256 {s} verified by both ends")).unwrap_or_default()
            )?;
        }
        for c in &self.path_changes {
            let from = c.from.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
            writeln!(out, "Path changed at {:.0} ms: {from} -> {} ({:?}).", c.at_ms, c.to, c.why)?;
        }
        if let Some(e) = &self.error {
            writeln!(out, "FAILED: {e}")?;
        }
        Ok(())
    }
}
