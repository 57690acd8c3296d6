//! The report of `natkit punch` (the JSON contract in README) and its table.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

use is::Candidate;
use serde::Serialize;

pub use crate::ice::candidate_type::CandidateType;
use crate::ice::checks::{CheckOutcome, CheckRecord};
pub use crate::ice::role::Role;
use crate::output::{self, Render};
use crate::punch::birthday::Side;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Direct,
    Relay,
}

/// One end of the path in use. In JSON also `family` ("ipv4"/"ipv6"), taken from the address so
/// it can never disagree with it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub kind: CandidateType,
    /// This address is a router's port mapping (ours: see `port_mapping`; the peer's: its
    /// description said so); offered as `srflx`.
    pub port_mapped: bool,
}

/// The address family of an endpoint, as the JSON names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(addr: SocketAddr) -> Self {
        if addr.is_ipv6() { Family::Ipv6 } else { Family::Ipv4 }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Endpoint", 4)?;
        st.serialize_field("address", &self.address)?;
        st.serialize_field("type", &self.kind)?;
        st.serialize_field("port_mapped", &self.port_mapped)?;
        st.serialize_field("family", &Family::of(self.address))?;
        st.end()
    }
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

#[derive(Debug, Default, Serialize)]
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

/// How the path in use was found: the table says it, not only the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// An ICE connectivity check (RFC 8445 §7.2) proved the pair.
    Ice,
    /// The birthday method (one side symmetric) found it: `birthday.outcome` is `found`.
    Birthday,
    /// Through the TURN relay: one end is a relayed candidate.
    Relay,
    /// ICE checks to an address a router mapped on request (UPnP-IGD, NAT-PMP or PCP): one end is port-mapped.
    PortMapping,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Ice => "ICE",
            Method::Birthday => "birthday",
            Method::Relay => "relay",
            Method::PortMapping => "port mapping",
        })
    }
}

impl PunchReport {
    /// How the path in use was found (`None` before there is one).
    pub fn method(&self) -> Option<Method> {
        self.connect_ms?;
        Some(if self.path == Some(PathKind::Relay) {
            Method::Relay
        } else if self.birthday.as_ref().is_some_and(|b| b.outcome == BirthdayOutcome::Found) {
            Method::Birthday
        } else if [&self.local, &self.remote].into_iter().flatten().any(|e| e.port_mapped) {
            Method::PortMapping
        } else {
            Method::Ice
        })
    }

    /// The candidate type SDP gave `addr` among our (`ours`) or the peer's candidates.
    fn kind_of(&self, addr: SocketAddr, ours: bool) -> Option<CandidateType> {
        let lines = if ours { &self.candidates } else { &self.remote_candidates };
        lines
            .iter()
            .filter_map(|l| Candidate::from_sdp_string(l).ok())
            .find(|c| c.addr() == addr)
            .map(|c| c.kind().into())
    }

    /// The pair table: the path in use first (its addresses, types and how it was found),
    /// then the other checks, those that succeeded before those that got no response.
    fn pair_table(&self, layout: output::Layout) -> output::Grid {
        let wide = layout == output::Layout::Wide;
        let mut t = if wide {
            output::Grid::new(&[
                "local",
                "type",
                "remote",
                "type",
                "pair",
                "method",
                "requests",
                "responses",
                "nominated",
                "rtt",
            ])
        } else {
            output::Grid::new(&["local", "remote", "pair", "rtt"])
        };
        let kind = |k: Option<CandidateType>| k.map(|k| k.to_string()).unwrap_or_default();
        let joined = |a: SocketAddr, k: Option<CandidateType>| match k {
            Some(k) => format!("{a} {k}"),
            None => a.to_string(),
        };
        let rtt = |c: Option<&CheckRecord>| c.and_then(|c| c.rtt_ms).map(output::ms).unwrap_or_else(|| "-".into());
        // The check that proved the path in use, when ICE found it (the birthday method and
        // a relayed QUIC have none of their own, or one toward another local address).
        let in_use = match (&self.local, &self.remote, self.method()) {
            (Some(l), Some(r), Some(m)) => {
                let check = self
                    .checks
                    .iter()
                    .find(|c| c.local == l.address && c.remote == r.address)
                    .or_else(|| self.checks.iter().find(|c| c.remote == r.address && c.nominated));
                let state = if wide { "in use".to_string() } else { format!("in use ({m})") };
                t.row(if wide {
                    vec![
                        l.address.to_string(),
                        l.kind.to_string(),
                        r.address.to_string(),
                        r.kind.to_string(),
                        state,
                        m.to_string(),
                        check.map(|c| c.requests.to_string()).unwrap_or_default(),
                        check.map(|c| c.responses.to_string()).unwrap_or_default(),
                        if check.is_some_and(|c| c.nominated) { "yes".into() } else { String::new() },
                        rtt(check),
                    ]
                } else {
                    vec![joined(l.address, Some(l.kind)), joined(r.address, Some(r.kind)), state, rtt(check)]
                });
                check.map(|c| (c.local, c.remote))
            }
            _ => None,
        };
        let mut rest: Vec<&CheckRecord> = self.checks.iter().filter(|c| Some((c.local, c.remote)) != in_use).collect();
        // Stable: the agent's order within each group.
        rest.sort_by_key(|c| (c.outcome != CheckOutcome::Succeeded, !c.nominated));
        for c in rest {
            let (lk, rk) = (self.kind_of(c.local, true), self.kind_of(c.remote, false));
            t.row(if wide {
                vec![
                    c.local.to_string(),
                    kind(lk),
                    c.remote.to_string(),
                    kind(rk),
                    c.outcome.to_string(),
                    String::new(),
                    c.requests.to_string(),
                    c.responses.to_string(),
                    if c.nominated { "yes".into() } else { String::new() },
                    rtt(Some(c)),
                ]
            } else {
                vec![joined(c.local, lk), joined(c.remote, rk), c.outcome.to_string(), rtt(Some(c))]
            });
        }
        t
    }
}

impl Render for PunchReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let t = self.pair_table(output::layout());
        // No check ran and no path (the peer never came): no empty table.
        if !self.checks.is_empty() || self.method().is_some() {
            writeln!(out, "{t}")?;
        }
        if let (Some(m), Some(ms)) = (self.method(), self.connect_ms) {
            // The addresses and types are the table's first row; the sentence says how.
            let path = match self.path {
                Some(PathKind::Relay) => "Relayed",
                _ => "Direct",
            };
            let how = match m {
                Method::Ice => "found by ICE checks".to_string(),
                Method::Birthday => "found by the birthday method".to_string(),
                Method::Relay => "through the TURN relay".to_string(),
                Method::PortMapping => "found by ICE checks to a router's port mapping".to_string(),
            };
            output::say(out, &format!("{path} path {how}, QUIC up {ms:.0} ms after joining room {}.", self.room))?;
        }
        if self.bytes > 0 {
            output::say(
                out,
                &format!(
                    "Moved {}{}{}.",
                    output::bytes(self.bytes),
                    self.throughput_mbps.map(|m| format!(" at {m:.1} Mbit/s")).unwrap_or_default(),
                    if self.sha256.is_some() { ", SHA-256 verified by both ends" } else { "" }
                ),
            )?;
            if let Some(s) = &self.sha256 {
                writeln!(out, "SHA-256 {s}")?;
            }
        }
        for c in &self.path_changes {
            let from = c.from.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
            let why = match c.why {
                PathChangeReason::MappingChanged => "our NAT mapping changed",
                PathChangeReason::PeerMoved => "the peer moved",
                PathChangeReason::RelayFallback => "no direct path came back: moved to the TURN relay",
            };
            output::say(out, &format!("Path changed at {:.0} ms ({why}): {from} -> {}.", c.at_ms, c.to))?;
        }
        if let Some(e) = &self.error {
            output::say(out, &format!("FAILED: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(local: &str, remote: &str, outcome: CheckOutcome, nominated: bool) -> CheckRecord {
        CheckRecord {
            local: local.parse().expect("addr"),
            remote: remote.parse().expect("addr"),
            requests: 3,
            responses: u32::from(outcome == CheckOutcome::Succeeded),
            outcome,
            nominated,
            rtt_ms: (outcome == CheckOutcome::Succeeded).then_some(0.42),
        }
    }

    fn report() -> PunchReport {
        PunchReport {
            room: "r1".into(),
            role: Some(Role::Answerer),
            path: Some(PathKind::Direct),
            local: Some(Endpoint {
                address: "10.0.1.2:5000".parse().expect("addr"),
                kind: CandidateType::Host,
                port_mapped: false,
            }),
            remote: Some(Endpoint {
                address: "203.0.113.9:6000".parse().expect("addr"),
                kind: CandidateType::Srflx,
                port_mapped: false,
            }),
            connect_ms: Some(248.0),
            candidates: vec!["candidate:1 1 udp 2130706431 10.0.1.2 5000 typ host".into()],
            remote_candidates: vec![
                "candidate:1 1 udp 2130706431 10.0.2.2 6000 typ host".into(),
                "candidate:2 1 udp 1694498815 203.0.113.9 6000 typ srflx raddr 10.0.2.2 rport 6000".into(),
            ],
            mapping_varies: Some(false),
            mapping_evidence: None,
            // What the controlled side saw: its own check of the pair in use still unanswered
            // when USE-CANDIDATE came, and a failed check listed first.
            checks: vec![
                check("10.0.1.2:5000", "10.0.2.2:6000", CheckOutcome::NoResponse, false),
                check("10.0.1.2:5000", "203.0.113.9:6000", CheckOutcome::NoResponse, true),
            ],
            ..PunchReport::default()
        }
    }

    fn rendered(r: &PunchReport) -> String {
        let mut out = Vec::new();
        r.render(&mut out).expect("render");
        String::from_utf8(out).expect("utf-8")
    }

    /// The rows of the table: lines with a cell separator, header first.
    fn rows(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.starts_with('│')).collect()
    }

    #[test]
    fn the_pair_in_use_is_the_first_row_with_types_and_method() {
        let text = rendered(&report());
        let rows = rows(&text);
        assert!(rows[1].contains("10.0.1.2:5000 host"), "{text}");
        assert!(rows[1].contains("203.0.113.9:6000 srflx"), "{text}");
        assert!(rows[1].contains("in use (ICE)"), "{text}");
        // The failed check toward the peer's host address comes after, typed from its SDP line.
        assert!(rows[2].contains("10.0.2.2:6000 host") && rows[2].contains("no-response"), "{text}");
        assert_eq!(rows.len(), 3, "the pair in use is not listed twice: {text}");
        assert!(text.contains("found by ICE checks"), "{text}");
    }

    #[test]
    fn a_port_mapped_end_says_so_in_the_table() {
        let mut r = report();
        if let Some(remote) = r.remote.as_mut() {
            remote.port_mapped = true;
        }
        assert_eq!(r.method(), Some(Method::PortMapping));
        let text = rendered(&r);
        assert!(rows(&text)[1].contains("in use (port mapping)"), "{text}");
        assert!(text.contains("to a router's port mapping"), "{text}");
    }

    #[test]
    fn a_birthday_path_says_so_in_the_table() {
        let mut r = report();
        r.birthday = Some(BirthdayReport {
            side: BirthdaySide::Prober,
            sockets: 1,
            probes: 412,
            outcome: BirthdayOutcome::Found,
        });
        r.remote = Some(Endpoint {
            address: "203.0.113.9:41234".parse().expect("addr"),
            kind: CandidateType::Prflx,
            port_mapped: false,
        });
        let text = rendered(&r);
        let rows = rows(&text);
        assert!(rows[1].contains("203.0.113.9:41234 prflx") && rows[1].contains("in use (birthday)"), "{text}");
        assert!(text.contains("found by the birthday method"), "{text}");
    }

    #[test]
    fn the_wide_table_has_the_types_and_the_method_in_their_own_columns() {
        let text = report().pair_table(output::Layout::Wide).to_string();
        let rows = rows(&text);
        assert!(rows[0].contains("method") && rows[0].contains("requests"), "{text}");
        assert!(rows[1].contains("srflx") && rows[1].contains("in use") && rows[1].contains("ICE"), "{text}");
    }
}
