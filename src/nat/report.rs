//! The report of `natkit nat-type` (a public JSON contract, README "natkit nat-type"): what the
//! RFC 5780 tests found (mapping §4.3, filtering §4.4, hairpinning §4.6, lifetime §4.5), port
//! mapping on the gateway, IPv6, CGNAT/double NAT and what it means for peer-to-peer; built from
//! the discovery core's [`Findings`], with its table and sentences for people.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use crate::nat::behavior::{Exchange, ExchangeResult, Findings};
use crate::nat::classify::{Filtering, Mapping, NatType};
use crate::nat::ipv6::Ipv6Report;
use crate::nat::lifetime::LifetimeResult;
use crate::nat::p2p::{P2p, Verdicts};
use crate::nat::port_allocation::{PortPattern, PortSample, pattern};
use crate::nat::watch::{Change, Field, Snapshot};
use crate::output::{self, Render};
use crate::portmap::{PortMappingReport, ProtocolReport};

/// The report; field names are a public contract (README).
#[derive(Debug, Serialize)]
pub struct NatTypeReport {
    pub nat_type: Option<NatType>,
    pub mapping: Option<Mapping>,
    pub filtering: Option<Filtering>,
    pub hairpinning: Option<bool>,
    pub port_preservation: Option<bool>,
    pub port_allocation: Option<PortAllocation>,
    /// Binding lifetime (RFC 5780 §4.5); not measured by this version.
    pub lifetime_s: Option<f64>,
    /// With --lifetime: the bracket found (longest idle time survived, shortest not).
    pub lifetime: Option<LifetimeResult>,
    pub local: Option<SocketAddr>,
    /// The mapped address the primary server saw.
    pub public: Option<SocketAddr>,
    pub server: ServerInfo,
    /// Lowest round-trip time measured, which sized the waits.
    pub rtt_ms: Option<f64>,
    /// How long the whole discovery took.
    pub duration_ms: f64,
    /// What it means for peer-to-peer, in one sentence.
    pub meaning: Option<String>,
    /// Why something is unknown, or anything else worth knowing.
    pub notes: Vec<String>,
    /// Every STUN exchange made.
    pub tests: Vec<Exchange>,
    /// UPnP-IGD, NAT-PMP and PCP on the default gateway; null with --no-port-mapping.
    pub port_mapping: Option<PortMappingReport>,
    /// Behind a carrier-grade NAT (RFC 6598); the evidence is in `notes`.
    pub cgnat: Option<bool>,
    /// Another NAT beyond the home router; the evidence is in `notes`.
    pub double_nat: Option<bool>,
    /// The same tests over IPv6, run at the same time; null when --local pins IPv4.
    pub ipv6: Option<Ipv6Report>,
    /// What it means for peer-to-peer, per kind of peer; null when `nat_type` is unknown.
    pub p2p: Option<P2p>,
}

#[derive(Debug, Serialize)]
pub struct ServerInfo {
    /// As given (or from the built-in list).
    pub input: String,
    pub address: SocketAddr,
    /// RFC 5780 OTHER-ADDRESS: the alternate IP and port.
    pub other_address: Option<SocketAddr>,
    pub rfc5780: bool,
    /// `other_address` is the RFC 3489 CHANGED-ADDRESS of a classic server (stund), used instead.
    pub rfc3489: bool,
    /// The other servers, for the mapping comparison.
    pub others: Vec<SocketAddr>,
}

#[derive(Debug, Serialize)]
pub struct PortAllocation {
    #[serde(flatten)]
    pub pattern: Option<PortPattern>,
    pub samples: Vec<PortSample>,
}

impl NatTypeReport {
    /// The report of one discovery: `f` from the primary server (`input`, resolved to `address`) and
    /// the `others`; what is not in the findings (port mapping, IPv6, p2p, lifetime) is filled later.
    pub fn from_findings(
        f: Findings,
        input: String,
        address: SocketAddr,
        others: Vec<SocketAddr>,
        duration: Duration,
        ports: u16,
    ) -> NatTypeReport {
        let port_allocation =
            (ports > 0).then(|| PortAllocation { pattern: pattern(&f.port_samples), samples: f.port_samples.clone() });
        NatTypeReport {
            nat_type: f.nat_type,
            mapping: f.mapping,
            filtering: f.filtering,
            hairpinning: f.hairpinning,
            port_preservation: f.port_preservation,
            port_allocation,
            lifetime_s: None,
            lifetime: None,
            local: f.local,
            public: f.public,
            server: ServerInfo {
                input,
                address,
                other_address: f.other_address,
                rfc5780: f.other_address.is_some() && !f.rfc3489,
                rfc3489: f.rfc3489,
                others,
            },
            rtt_ms: f.rtt.map(|r| r.as_secs_f64() * 1000.0),
            duration_ms: duration.as_secs_f64() * 1000.0,
            meaning: f.nat_type.map(|t| t.meaning().to_string()),
            notes: f.notes.iter().map(ToString::to_string).collect(),
            tests: f.exchanges,
            port_mapping: None,
            cgnat: None,
            double_nat: None,
            ipv6: None,
            p2p: None,
        }
    }

    /// Fills `cgnat` and `double_nat` from what the run saw, with notes naming the evidence.
    pub fn judge_upstream(&mut self, primary: SocketAddr) {
        let report = self;
        let pm = report.port_mapping.as_ref();
        let router_external = pm.and_then(|pm| {
            [("UPnP-IGD", &pm.upnp), ("NAT-PMP", &pm.nat_pmp), ("PCP", &pm.pcp)]
                .into_iter()
                .find_map(|(name, p)| p.external_ip.map(|ip| (name, ip)))
        });
        let gateway = pm.and_then(|pm| pm.gateway).or(match primary.ip() {
            IpAddr::V4(v4) => crate::portmap::gateway_towards(v4),
            IpAddr::V6(_) => None,
        });
        let u = crate::nat::upstream::judge(crate::nat::upstream::Evidence {
            local: report.local.map(|a| a.ip()),
            public: report.public.map(|a| a.ip()),
            gateway,
            router_external,
        });
        report.cgnat = u.cgnat;
        report.double_nat = u.double_nat;
        report.notes.extend(u.notes);
    }

    /// Folds in what ran beside the main discovery (port mapping, IPv6, the lifetime test), then
    /// judges CGNAT / double NAT and peer-to-peer from the whole: `judge_upstream` reads the port
    /// mapping, and the p2p verdicts read IPv6 and the port mapping, so the order is fixed here.
    pub fn complete(
        &mut self,
        primary: SocketAddr,
        port_mapping: Option<PortMappingReport>,
        ipv6: Option<Ipv6Report>,
        lifetime: Option<LifetimeResult>,
    ) {
        self.port_mapping = port_mapping;
        self.ipv6 = ipv6;
        self.judge_upstream(primary);
        self.p2p = crate::nat::p2p::judge(Verdicts {
            v4: self.nat_type,
            port_mapped: self
                .port_mapping
                .as_ref()
                .is_some_and(|pm| [&pm.upnp, &pm.nat_pmp, &pm.pcp].iter().any(|p| p.mapped.is_some())),
            v6: self.ipv6.as_ref().filter(|v| v.answer).and_then(|v| v.nat_type),
        });
        if let Some(l) = lifetime {
            self.lifetime_s = l.lifetime_s();
            if let Some(n) = &l.note {
                self.notes.push(format!("lifetime: {n}"));
            }
            self.lifetime = Some(l);
        }
    }

    /// The fields --every watches, as text.
    pub fn snapshot(&self) -> Snapshot {
        let r = self;
        let text = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
        let mut fields = vec![
            (Field::PublicIp, text(r.public.map(|p| p.ip().to_string()))),
            (Field::NatType, text(r.nat_type.map(|t| t.to_string()))),
        ];
        if let Some(v6) = &r.ipv6 {
            let none = if v6.answer { "unknown" } else { "none" };
            fields.push((Field::Ipv6PublicIp, v6.public.map(|p| p.ip().to_string()).unwrap_or_else(|| none.into())));
            fields.push((Field::Ipv6NatType, v6.nat_type.map(|t| t.to_string()).unwrap_or_else(|| none.into())));
        }
        if let Some(pm) = &r.port_mapping {
            let mapped: Vec<&str> = [("upnp", &pm.upnp), ("nat_pmp", &pm.nat_pmp), ("pcp", &pm.pcp)]
                .into_iter()
                .filter(|(_, p)| p.mapped.is_some())
                .map(|(n, _)| n)
                .collect();
            fields.push((Field::PortMapping, if mapped.is_empty() { "none".into() } else { mapped.join("+") }));
        }
        if let Some(p) = &r.p2p {
            let d = serde_json::to_value(p.difficulty).ok().and_then(|v| v.as_str().map(String::from));
            fields.push((Field::Difficulty, text(d)));
        }
        Snapshot { fields }
    }
}

/// One line of `--every` on stdout: the run number, seconds since the first run began, what
/// changed since the previous run (empty on the first) and the whole report. As JSON Lines these
/// four fields are a public contract (README "Watching").
#[derive(Serialize)]
pub struct WatchLine<'a> {
    pub run: u64,
    pub elapsed_s: f64,
    pub changes: &'a [Change],
    pub report: &'a NatTypeReport,
    /// The first run lists the watched fields instead of changes.
    #[serde(skip)]
    pub first: bool,
}

impl WatchLine<'_> {
    /// JSON Lines with `json`, else `run N at +T s: …` (the watched fields first, then what changed).
    pub fn write(&self, out: &mut dyn Write, json: bool) -> std::io::Result<()> {
        if json {
            let line = WatchLine { elapsed_s: (self.elapsed_s * 1000.0).round() / 1000.0, ..*self };
            serde_json::to_writer(&mut *out, &line)?;
            return writeln!(out);
        }
        let what = match (self.first, self.changes.is_empty()) {
            (true, _) => self.report.snapshot().summary(),
            (false, true) => "no change".to_string(),
            (false, false) => self.changes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("; "),
        };
        writeln!(out, "run {} at +{:.1} s: {what}", self.run, self.elapsed_s)
    }
}

/// One protocol's port-mapping outcome in a table cell.
fn describe_port_mapping(p: &ProtocolReport) -> String {
    let ext = p.external_ip.map(|ip| format!(", router's external IP {ip}")).unwrap_or_default();
    match (p.available, p.mapped) {
        (_, Some(m)) => {
            let life = p.lifetime_s.map(|l| format!(" for {l} s")).unwrap_or_default();
            let del = match p.deleted {
                Some(true) => "deleted",
                _ => "NOT deleted",
            };
            format!("yes: mapped {m}{life}, {del}{ext}")
        }
        (true, None) => format!("yes, no mapping{ext}: {}", p.error.as_deref().unwrap_or("unknown")),
        (false, None) => format!("no ({})", p.error.as_deref().unwrap_or("no answer")),
    }
}

fn yes_no(v: Option<bool>) -> String {
    match v {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "unknown".into(),
    }
}

fn describe_result(r: &Option<ExchangeResult>) -> String {
    match r {
        None => "pending".into(),
        Some(ExchangeResult::Answered { from, mapped, rtt_ms, .. }) => {
            format!("mapped {} from {from} in {}", output::cell(mapped), output::ms(*rtt_ms))
        }
        Some(ExchangeResult::Error { from, code, reason, .. }) => format!("error {code} {reason} from {from}"),
        Some(ExchangeResult::Hairpinned { from, .. }) => format!("came back to socket 0 from {from}"),
        Some(ExchangeResult::Timeout { after_ms }) => format!("no answer ({})", output::ms(*after_ms)),
        Some(ExchangeResult::Unreachable { error, .. }) => error.to_string(),
        Some(ExchangeResult::Skipped { reason }) => format!("skipped: {reason}"),
    }
}

impl Render for NatTypeReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut t = output::Grid::key_value();
        let unknown = |s: Option<String>| s.unwrap_or_else(|| "unknown".into());
        t.row(vec!["NAT type".into(), unknown(self.nat_type.map(|v| v.to_string()))]);
        t.row(vec!["Mapping".into(), unknown(self.mapping.map(|v| v.to_string()))]);
        t.row(vec!["Filtering".into(), unknown(self.filtering.map(|v| v.to_string()))]);
        t.row(vec!["Hairpinning".into(), yes_no(self.hairpinning)]);
        t.row(vec!["Port preservation".into(), yes_no(self.port_preservation)]);
        if let Some(pa) = &self.port_allocation {
            let p = match pa.pattern {
                Some(PortPattern::Preserving) => "preserving".to_string(),
                Some(PortPattern::Sequential { step }) => format!("sequential, step {step}"),
                Some(PortPattern::Random) => "random".to_string(),
                None => "unknown (too few answers)".to_string(),
            };
            let ports: Vec<String> = pa.samples.iter().map(|s| format!("{}→{}", s.local, s.mapped)).collect();
            t.row(vec!["Port allocation".into(), format!("{p} ({})", ports.join(", "))]);
        }
        if let Some(l) = &self.lifetime {
            let text = match (l.alive_s, l.dead_s) {
                (Some(a), Some(d)) => {
                    format!("{:.1} s (alive after {a:.1} s idle, gone after {d:.1} s)", (a + d) / 2.0)
                }
                (Some(a), None) => format!("at least {a:.0} s"),
                (None, Some(d)) => format!("under {d:.1} s"),
                (None, None) => "unknown".into(),
            };
            t.row(vec!["Binding lifetime".into(), text]);
        }
        if let Some(pm) = &self.port_mapping {
            t.row(vec!["Gateway".into(), output::cell(&pm.gateway)]);
            t.row(vec!["UPnP-IGD".into(), describe_port_mapping(&pm.upnp)]);
            t.row(vec!["NAT-PMP".into(), describe_port_mapping(&pm.nat_pmp)]);
            t.row(vec!["PCP".into(), describe_port_mapping(&pm.pcp)]);
        }
        if let Some(v6) = &self.ipv6 {
            t.row(vec!["IPv6".into(), v6.summary()]);
            if v6.answer {
                let m = v6.mapping.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into());
                let f = v6.filtering.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into());
                t.row(vec!["IPv6 mapping, filtering".into(), format!("{m}, {f}")]);
                t.row(vec!["IPv6 hairpinning".into(), yes_no(v6.hairpinning)]);
            }
        }
        t.row(vec!["CGNAT".into(), yes_no(self.cgnat)]);
        t.row(vec!["Double NAT".into(), yes_no(self.double_nat)]);
        t.row(vec!["Local".into(), output::cell(&self.local)]);
        t.row(vec!["Public".into(), output::cell(&self.public)]);
        let rfc = if self.server.rfc5780 {
            format!("RFC 5780, other address {}", output::cell(&self.server.other_address))
        } else if self.server.rfc3489 {
            format!("RFC 3489, changed address {}", output::cell(&self.server.other_address))
        } else {
            "no RFC 5780".into()
        };
        t.row(vec!["Server".into(), format!("{} ({}; {rfc})", self.server.input, self.server.address)]);
        t.row(vec!["RTT".into(), self.rtt_ms.map(output::ms).unwrap_or_else(|| "-".into())]);
        t.row(vec!["Took".into(), output::duration(std::time::Duration::from_secs_f64(self.duration_ms / 1000.0))]);
        writeln!(out, "{t}")?;

        // Compact: what was asked where and what came back; --wide adds the socket, the
        // CHANGE-REQUEST flags and the number of sends.
        let wide = output::layout() == output::Layout::Wide;
        let mut tests = if wide {
            output::Grid::new(&["test", "socket", "to", "change-request", "sends", "result"])
        } else {
            output::Grid::new(&["test", "to", "result"])
        };
        for e in &self.tests {
            let test = serde_json::to_value(e.test).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            let change = match (e.change_request.change_ip, e.change_request.change_port) {
                (true, true) => "ip+port",
                (true, false) => "ip",
                (false, true) => "port",
                (false, false) => "-",
            };
            tests.row(if wide {
                vec![
                    test,
                    e.socket.to_string(),
                    e.destination.to_string(),
                    change.into(),
                    e.sends.to_string(),
                    describe_result(&e.result),
                ]
            } else {
                vec![test, e.destination.to_string(), describe_result(&e.result)]
            });
        }
        writeln!(out, "{tests}")?;
        for n in &self.notes {
            output::say(out, &format!("note: {n}"))?;
        }
        match &self.meaning {
            Some(m) => output::say(out, m)?,
            None => output::say(
                out,
                "Not enough was learned to say what this means for peer-to-peer; see the notes above.",
            )?,
        }
        for s in self.p2p.iter().flat_map(|p| &p.sentences) {
            output::say(out, s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::watch::Field;

    fn report(public: &str) -> NatTypeReport {
        let f = Findings {
            nat_type: Some(NatType::FullCone),
            mapping: None,
            filtering: None,
            hairpinning: None,
            port_preservation: None,
            port_samples: Vec::new(),
            local: None,
            public: Some(public.parse().unwrap()),
            other_address: None,
            rfc3489: false,
            rtt: None,
            notes: Vec::new(),
            exchanges: Vec::new(),
        };
        let server: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        NatTypeReport::from_findings(f, "lab".into(), server, Vec::new(), Duration::from_millis(5), 0)
    }

    fn line(l: &WatchLine<'_>, json: bool) -> String {
        let mut out = Vec::new();
        l.write(&mut out, json).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn watch_lines_list_the_fields_first_then_only_what_changed() {
        let (a, b) = (report("198.51.100.7:4000"), report("198.51.100.9:4000"));
        let first = WatchLine { run: 1, elapsed_s: 0.0, changes: &[], report: &a, first: true };
        assert_eq!(line(&first, false), format!("run 1 at +0.0 s: {}\n", a.snapshot().summary()));
        let same = WatchLine { run: 2, elapsed_s: 1.04, changes: &[], report: &a, first: false };
        assert_eq!(line(&same, false), "run 2 at +1.0 s: no change\n");
        let changes = b.snapshot().changes_since(&a.snapshot());
        assert!(changes.iter().any(|c| c.field == Field::PublicIp), "{changes:?}");
        let moved = WatchLine { run: 3, elapsed_s: 2.0, changes: &changes, report: &b, first: false };
        assert!(line(&moved, false).contains("198.51.100.9"), "{}", line(&moved, false));
    }

    #[test]
    fn a_json_watch_line_has_its_four_fields_and_rounds_elapsed_to_the_millisecond() {
        let r = report("198.51.100.7:4000");
        let l = WatchLine { run: 4, elapsed_s: 1.23456, changes: &[], report: &r, first: false };
        let text = line(&l, true);
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text:?}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["run"], 4);
        assert_eq!(v["elapsed_s"], 1.235);
        assert!(v["changes"].as_array().is_some_and(|c| c.is_empty()));
        assert_eq!(v["report"]["public"], "198.51.100.7:4000");
        assert!(v.get("first").is_none(), "first is not part of the contract");
    }
}
