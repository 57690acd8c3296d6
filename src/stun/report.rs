//! The report of `natkit stun-probe` (a public JSON contract, README "natkit stun-probe"): one
//! result per server and transport, and the summary; its table for people.

use std::io::Write;

use serde::Serialize;

use crate::output::{self, Render};
use crate::stun::probe::{CertificateCheck, ProbeResult};
use crate::stun::summary::Summary;

#[derive(Debug, Serialize)]
pub struct StunProbeReport {
    pub results: Vec<ProbeResult>,
    pub summary: Summary,
}

impl Render for StunProbeReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let wide = output::layout() == output::Layout::Wide;
        let mut t = if wide {
            output::Grid::new(&[
                "server",
                "transport",
                "mapped",
                "rtt",
                "local",
                "other / origin",
                "software",
                "status",
            ])
        } else {
            output::Grid::new(&["server", "transport", "mapped", "rtt", "status"])
        };
        // An error that several probes share (DNS down, no route) is said once under the table.
        let mut shared_errors: Vec<(&str, usize)> = Vec::new();
        for e in self.results.iter().filter_map(|r| r.error.as_deref()) {
            match shared_errors.iter_mut().find(|(s, _)| *s == e) {
                Some((_, n)) => *n += 1,
                None => shared_errors.push((e, 1)),
            }
        }
        shared_errors.retain(|(_, n)| *n > 1);
        for r in &self.results {
            let rtt = match (r.rtt_ms, r.requests) {
                (Some(avg), _) if !wide && r.loss_pct.unwrap_or(0.0) > 0.0 => {
                    format!("{} ({:.0}% loss)", output::ms(avg), r.loss_pct.unwrap_or(0.0))
                }
                (Some(avg), _) if !wide => output::ms(avg),
                (Some(avg), n) if n > 1 => format!(
                    "{} (min {} max {}, {:.0}% loss)",
                    output::ms(avg),
                    output::ms(r.rtt_min_ms.unwrap_or(avg)),
                    output::ms(r.rtt_max_ms.unwrap_or(avg)),
                    r.loss_pct.unwrap_or(0.0)
                ),
                (Some(avg), _) => output::ms(avg),
                (None, _) => "-".into(),
            };
            let other = match (r.other_address, r.response_origin) {
                (None, None) => "-".to_string(),
                (o, g) => format!("{} / {}", output::cell(&o), output::cell(&g)),
            };
            let mut status = match &r.error {
                None => "ok".to_string(),
                Some(e) => match shared_errors.iter().position(|(s, _)| s == e) {
                    Some(k) => format!("failed [{}]", k + 1),
                    None => e.clone(),
                },
            };
            if r.fingerprint_ok == Some(false) {
                status.push_str(" (bad FINGERPRINT)");
            }
            if let Some(CertificateCheck { valid: false, problem: Some(p) }) = &r.certificate {
                status.push_str(&format!("; certificate {p}"));
            }
            let server = match r.address {
                Some(a) if !r.server.contains(&a.to_string()) => format!("{}\n{a}", r.server),
                _ => r.server.clone(),
            };
            if wide {
                t.row(vec![
                    server,
                    r.transport.to_string(),
                    output::cell(&r.mapped),
                    rtt,
                    output::cell(&r.local),
                    other,
                    r.software.clone().unwrap_or_else(|| "-".into()),
                    status,
                ]);
            } else {
                t.row(vec![server, r.transport.to_string(), output::cell(&r.mapped), rtt, status]);
            }
        }
        writeln!(out, "{t}")?;
        for (k, (e, n)) in shared_errors.iter().enumerate() {
            writeln!(out, "[{}] {n} probes: {e}", k + 1)?;
        }
        for n in &self.summary.notes {
            writeln!(out, "{n}")?;
        }
        Ok(())
    }
}
