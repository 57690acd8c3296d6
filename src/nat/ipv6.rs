//! The IPv6 half of `nat-type`: the same RFC 5780 tests (§4.3 mapping, §4.4 filtering, §4.6
//! hairpinning) run on their own sockets toward the IPv6 servers, at the same time as IPv4, and
//! reported in one object. Without NAT66 the answer is mostly `open-internet` or
//! `symmetric-udp-firewall` (a stateful firewall, RFC 6092 §3.2's recommended default).

use std::net::SocketAddr;

use serde::Serialize;

use crate::nat::behavior::{Exchange, Findings};
use crate::nat::classify::{Filtering, Mapping, NatType};

/// Why IPv6 was not tested; each is one line in the report and costs no time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// None of the servers has an IPv6 address (AAAA record, or a v6 literal).
    NoServer,
    /// The host has no route to the IPv6 server (the kernel refused to pick a source).
    NoRoute(SocketAddr),
}

/// The `ipv6` object of the report; field names are a public contract (README).
#[derive(Debug, Clone, Serialize)]
pub struct Ipv6Report {
    /// Whether this host has a route to the IPv6 server; null when there was no server to route to.
    pub route: Option<bool>,
    /// Whether the IPv6 server answered.
    pub answer: bool,
    pub local: Option<SocketAddr>,
    pub public: Option<SocketAddr>,
    pub mapping: Option<Mapping>,
    pub filtering: Option<Filtering>,
    pub nat_type: Option<NatType>,
    pub hairpinning: Option<bool>,
    pub rtt_ms: Option<f64>,
    /// The IPv6 server used (primary first), as given and as resolved.
    pub server: Option<Ipv6Server>,
    pub tests: Vec<Exchange>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ipv6Server {
    pub input: String,
    pub address: SocketAddr,
    pub other_address: Option<SocketAddr>,
    pub rfc5780: bool,
    pub rfc3489: bool,
}

impl Ipv6Report {
    /// IPv6 was not tested, and why (one note).
    pub fn skipped(why: Skipped) -> Self {
        let (route, note) = match why {
            Skipped::NoServer => {
                (None, "no server has an IPv6 address: give one with --server [2001:db8::10]:3478 to test IPv6".into())
            }
            Skipped::NoRoute(to) => (Some(false), format!("no IPv6 route to {to}: this host has no IPv6 connectivity")),
        };
        Ipv6Report {
            route,
            answer: false,
            local: None,
            public: None,
            mapping: None,
            filtering: None,
            nat_type: None,
            hairpinning: None,
            rtt_ms: None,
            server: None,
            tests: Vec::new(),
            notes: vec![note],
        }
    }

    /// What the IPv6 run found against `input` (resolved to `address`).
    pub fn from_findings(f: Findings, input: String, address: SocketAddr) -> Self {
        let answer = f.public.is_some();
        Ipv6Report {
            route: Some(true),
            answer,
            local: f.local,
            public: f.public,
            mapping: f.mapping,
            filtering: f.filtering,
            nat_type: f.nat_type,
            hairpinning: f.hairpinning,
            rtt_ms: f.rtt.map(|r| r.as_secs_f64() * 1000.0),
            server: Some(Ipv6Server {
                input,
                address,
                other_address: f.other_address,
                rfc5780: f.other_address.is_some() && !f.rfc3489,
                rfc3489: f.rfc3489,
            }),
            tests: f.exchanges,
            notes: f.notes.iter().map(ToString::to_string).collect(),
        }
    }

    /// The one-line summary for the table view.
    pub fn summary(&self) -> String {
        if !self.answer {
            // The first note says why (no server, no route, silence, an ICMP error).
            return match self.notes.first() {
                Some(n) => n.clone(),
                None => "no answer from the IPv6 server".into(),
            };
        }
        let name = self.nat_type.map(|t| t.to_string()).unwrap_or_else(|| "unknown".into());
        let public = self.public.map(|p| p.to_string()).unwrap_or_default();
        let translated = match (self.public, self.local) {
            (Some(p), Some(l)) if p != l => format!(" (NAT66: local {l})"),
            _ => String::new(),
        };
        format!("{name}, public {public}{translated}")
    }
}
