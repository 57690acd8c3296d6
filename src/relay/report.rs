//! What `natkit relay` did, printed when it stops: the typed summary built
//! from the core's [`Stats`] and rendered as a table or JSON by the output
//! layer. Its field names are a public contract (README, relay JSON).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::output::{self, Render};
use crate::turn::server::Stats;
use crate::turn::server::auth::AuthFailure;
use crate::turn::server::peer_policy::Refusal;

/// What the relay did, printed when it stops.
#[derive(Debug, Serialize)]
pub struct RelayReport {
    /// `udp 127.0.0.1:3478`, `tcp ...`, `tls ...`.
    pub listening: Vec<String>,
    pub relay_ips: Vec<IpAddr>,
    pub uptime_s: f64,
    pub allocations_created: u64,
    pub allocations_ended: u64,
    pub requests: u64,
    pub packets_to_peers: u64,
    pub packets_from_peers: u64,
    pub packets_internal: u64,
    pub bytes_relayed: u64,
    pub tcp_connections: u64,
    /// Peers refused by the safety policy, by reason.
    pub peer_refusals: BTreeMap<String, u64>,
    /// Failed credentials, by reason.
    pub auth_failures: BTreeMap<String, u64>,
    /// Requests refused without an integrity check by the password-guessing throttle.
    pub auth_throttled: u64,
    /// Unauthenticated answers over UDP withheld by the per-source byte budget (amplification).
    pub unauth_rate_limited: u64,
    /// Allocate refused (486) because the client's address reached `--source-quota`.
    pub source_quota_refusals: u64,
    pub dropped_packets: u64,
}

impl Render for RelayReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "natkit relay stopped after {}",
            output::duration(Duration::from_secs_f64(self.uptime_s.max(0.0)))
        )?;
        let mut t = output::Grid::key_value();
        t.row(vec!["listening".to_string(), self.listening.join(", ")]);
        t.row(vec![
            "allocations created / ended".to_string(),
            format!("{} / {}", self.allocations_created, self.allocations_ended),
        ]);
        t.row(vec!["requests".to_string(), self.requests.to_string()]);
        t.row(vec![
            "packets to peers / from peers / internal".to_string(),
            format!("{} / {} / {}", self.packets_to_peers, self.packets_from_peers, self.packets_internal),
        ]);
        t.row(vec!["bytes relayed".to_string(), output::bytes(self.bytes_relayed)]);
        t.row(vec!["TCP/TLS connections".to_string(), self.tcp_connections.to_string()]);
        let fmt_map = |m: &BTreeMap<String, u64>| {
            let v: Vec<String> = m.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
            if v.is_empty() { "none".to_string() } else { v.join(", ") }
        };
        t.row(vec!["peer refusals (403)".to_string(), fmt_map(&self.peer_refusals)]);
        t.row(vec!["authentication failures".to_string(), fmt_map(&self.auth_failures)]);
        t.row(vec!["logins refused unchecked (throttle)".to_string(), self.auth_throttled.to_string()]);
        t.row(vec!["dropped packets".to_string(), self.dropped_packets.to_string()]);
        writeln!(out, "{t}")
    }
}

impl RelayReport {
    /// The summary of a run: what it listened on, the core's counters, the
    /// driver's TCP connection count and how long it ran.
    pub fn new(listening: &[String], relay_ips: &[IpAddr], s: &Stats, tcp: u64, up: Duration) -> RelayReport {
        RelayReport {
            listening: listening.to_vec(),
            relay_ips: relay_ips.to_vec(),
            uptime_s: (up.as_secs_f64() * 10.0).round() / 10.0,
            allocations_created: s.allocations_created,
            allocations_ended: s.allocations_deleted + s.allocations_expired,
            requests: s.requests,
            packets_to_peers: s.packets_to_peers,
            packets_from_peers: s.packets_from_peers,
            packets_internal: s.packets_internal,
            bytes_relayed: s.bytes_to_peers + s.bytes_from_peers + s.bytes_internal,
            tcp_connections: tcp,
            peer_refusals: Refusal::ALL.iter().map(|r| (r.label().to_string(), s.refusals[r.index()])).collect(),
            auth_failures: AuthFailure::ALL
                .iter()
                .map(|a| (a.label().to_string(), s.auth_failures[a.index()]))
                .collect(),
            auth_throttled: s.auth_throttled.iter().sum(),
            unauth_rate_limited: s.unauth_rate_limited,
            source_quota_refusals: s.source_quota_reached,
            dropped_packets: s.dropped_total(),
        }
    }
}
