//! The report of `natkit turn-alloc` (README "turn-alloc", JSON section): one named step
//! after another, what the server told us, the quality figures and the audit's warnings.
//! The same value feeds the table and the JSON; field names are a public contract.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::probe::{ProbeReport, RunOutcome, StepOutcome};
use super::quality::Stats;
use super::tcp_relay::TcpRelayReport;
use crate::net::transport::Transport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepName {
    Resolve,
    Connect,
    Binding,
    AllocateUnauthenticated,
    Allocate,
    AllocatePeer,
    CreatePermission,
    DataIndication,
    ChannelBind,
    ChannelData,
    Quality,
    Audit,
    Refresh,
    Deallocate,
    /// RFC 6062 TCP relaying to a TCP echo peer (`--peer-transport tcp`).
    TcpRelay,
}

impl StepName {
    pub const ALL: [StepName; 15] = [
        StepName::Resolve,
        StepName::Connect,
        StepName::Binding,
        StepName::AllocateUnauthenticated,
        StepName::Allocate,
        StepName::AllocatePeer,
        StepName::CreatePermission,
        StepName::DataIndication,
        StepName::ChannelBind,
        StepName::ChannelData,
        StepName::Quality,
        StepName::Audit,
        StepName::Refresh,
        StepName::Deallocate,
        StepName::TcpRelay,
    ];

    /// The JSON name (kebab-case), as a `'static` str: the probe's metric label values.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Resolve => "resolve",
            StepName::Connect => "connect",
            StepName::Binding => "binding",
            StepName::AllocateUnauthenticated => "allocate-unauthenticated",
            StepName::Allocate => "allocate",
            StepName::AllocatePeer => "allocate-peer",
            StepName::CreatePermission => "create-permission",
            StepName::DataIndication => "data-indication",
            StepName::ChannelBind => "channel-bind",
            StepName::ChannelData => "channel-data",
            StepName::Quality => "quality",
            StepName::Audit => "audit",
            StepName::Refresh => "refresh",
            StepName::Deallocate => "deallocate",
            StepName::TcpRelay => "tcp-relay",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: StepName,
    pub ok: bool,
    /// True when the step did not run because an earlier one failed.
    pub skipped: bool,
    pub ms: f64,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct TurnAllocReport {
    pub ok: bool,
    pub server: String,
    pub address: Option<SocketAddr>,
    pub transport: Transport,
    pub relayed: Option<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    pub lifetime_s: Option<u32>,
    pub steps: Vec<Step>,
    pub stats: Option<Stats>,
    pub warnings: Vec<String>,
    /// `--peer-transport tcp`: the RFC 6062 step's findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_relay: Option<TcpRelayReport>,
}

/// Steps that do not apply to a run, so they are not listed as "not run" either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applicable {
    /// A second allocation is the data peer (no `--peer` UDP echo peer).
    pub allocate_peer: bool,
    /// `--peer-transport tcp`.
    pub tcp_relay: bool,
}

impl Applicable {
    fn admits(self, name: StepName) -> bool {
        match name {
            StepName::AllocatePeer => self.allocate_peer,
            StepName::TcpRelay => self.tcp_relay,
            _ => true,
        }
    }
}

impl TurnAllocReport {
    /// A report before any step ran: not ok, nothing learned yet.
    pub fn not_run(server: &str, transport: Transport) -> Self {
        TurnAllocReport {
            ok: false,
            server: server.to_string(),
            address: None,
            transport,
            relayed: None,
            mapped: None,
            lifetime_s: None,
            steps: Vec::new(),
            stats: None,
            warnings: Vec::new(),
            tcp_relay: None,
        }
    }

    /// Lists the steps that never ran, so the report shows how far the run got, and
    /// sets `ok`: every step ran and passed (`finished`: the scenario reached its end).
    pub fn finish(&mut self, applicable: Applicable, finished: bool) {
        for name in StepName::ALL {
            let ran = self.steps.iter().any(|s| s.name == name);
            if !ran && applicable.admits(name) {
                self.steps.push(Step { name, ok: false, skipped: true, ms: 0.0, detail: "not run".into() });
            }
        }
        self.ok = finished && self.steps.iter().all(|s| s.ok);
    }
}

impl ProbeReport for TurnAllocReport {
    fn outcome(&self) -> RunOutcome {
        let step = |s: &Step| StepOutcome { name: s.name.as_str(), ok: s.ok, detail: s.detail.clone() };
        let secs = |ms: f64| Duration::try_from_secs_f64(ms / 1000.0).ok();
        RunOutcome {
            ok: self.ok,
            steps: self.steps.iter().map(step).collect(),
            failed_step: self.steps.iter().find(|s| !s.ok && !s.skipped).map(step),
            allocate: self.steps.iter().find(|s| s.name == StepName::Allocate && s.ok).and_then(|s| secs(s.ms)),
            rtt: self.stats.as_ref().and_then(|st| st.rtt_ms.as_ref()).and_then(|r| secs(r.avg)),
            loss_ratio: self.stats.as_ref().filter(|st| st.sent > 0).map(|st| st.loss_pct / 100.0),
            jitter: self.stats.as_ref().and_then(|st| st.jitter_ms).and_then(secs),
            warnings: self.warnings.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_labels_are_the_json_names() {
        for name in StepName::ALL {
            assert_eq!(serde_json::to_value(name).expect("json"), name.as_str(), "{name:?}");
        }
        assert_eq!(StepName::AllocateUnauthenticated.as_str(), "allocate-unauthenticated");
        assert_eq!(StepName::CreatePermission.as_str(), "create-permission");
    }

    #[test]
    fn steps_that_never_ran_are_listed_unless_they_do_not_apply() {
        let mut r = TurnAllocReport::not_run("x", Transport::Udp);
        r.steps.push(Step { name: StepName::Resolve, ok: true, skipped: false, ms: 1.0, detail: String::new() });
        r.finish(Applicable { allocate_peer: false, tcp_relay: false }, true);
        assert!(!r.ok, "a run that stopped early is not ok");
        let names: Vec<_> = r.steps.iter().map(|s| s.name).collect();
        assert!(!names.contains(&StepName::AllocatePeer) && !names.contains(&StepName::TcpRelay));
        assert_eq!(names.len(), 13);
        assert!(r.steps[1..].iter().all(|s| s.skipped && s.detail == "not run"));
    }
}
