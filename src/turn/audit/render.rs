//! How a `turn-alloc` report reads for a person: the step table with the failing
//! step's sentence and the warnings ([`Render`]), and the one line per run that
//! `--every` prints ([`run_line`]). JSON is the report's own serialisation.

use std::io::Write;
use std::time::Duration;

use super::probe::RunOutcome;
use super::report::TurnAllocReport;
use crate::output::{self, Render};

impl Render for TurnAllocReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut t = output::Grid::new(&["step", "result", "ms", "detail"]);
        for s in &self.steps {
            let result = match (s.ok, s.skipped) {
                (true, _) => "ok",
                (false, true) => "-",
                (false, false) => "FAILED",
            };
            t.row(vec![
                s.name.as_str().to_string(),
                result.into(),
                if s.skipped { "-".into() } else { format!("{:.1}", s.ms) },
                s.detail.clone(),
            ]);
        }
        writeln!(out, "{t}")?;
        let addr = self.address.map(|a| a.to_string()).unwrap_or_else(|| self.server.clone());
        if self.ok {
            output::say(
                out,
                &format!(
                    "{} over {} relays: relayed address {}, server-reflexive {}.",
                    addr,
                    self.transport.name(),
                    output::cell(&self.relayed),
                    output::cell(&self.mapped)
                ),
            )?;
        } else if let Some(f) = self.steps.iter().find(|s| !s.ok && !s.skipped) {
            output::say(out, &format!("FAILED at {}: {}", f.name.as_str(), f.detail))?;
        }
        for w in &self.warnings {
            output::say(out, &format!("warning: {w}"))?;
        }
        Ok(())
    }
}

/// The compact line for a person watching: time, run, ok/FAILED, allocate, rtt, loss,
/// and the failing step with its detail last (it is the long part).
pub fn run_line(started: &str, run: u64, o: &RunOutcome) -> String {
    let ms = |d: Option<Duration>| d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0)).unwrap_or("-".into());
    let mut line = format!(
        "{started}  run {run}  {}  allocate {}  rtt {}  loss {}",
        if o.ok { "ok" } else { "FAILED" },
        ms(o.allocate),
        ms(o.rtt),
        o.loss_ratio.map(|l| format!("{:.1}%", l * 100.0)).unwrap_or("-".into())
    );
    if o.warnings > 0 {
        line.push_str(&format!("  warnings {}", o.warnings));
    }
    if let Some(f) = &o.failed_step {
        line.push_str(&format!("  at {}: {}", f.name, f.detail.replace('\n', " ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::transport::Transport;
    use crate::turn::audit::probe::ProbeReport;
    use crate::turn::audit::quality::Stats;
    use crate::turn::audit::report::{Step, StepName};

    #[test]
    fn a_probe_run_is_one_line_with_the_failing_step_last() {
        let mut report = TurnAllocReport {
            ok: false,
            server: "turn.example:3478".into(),
            address: None,
            transport: Transport::Udp,
            relayed: None,
            mapped: None,
            lifetime_s: None,
            steps: vec![
                Step { name: StepName::Allocate, ok: true, skipped: false, ms: 2.5, detail: String::new() },
                Step { name: StepName::ChannelData, ok: false, skipped: false, ms: 9.0, detail: "no\nanswer".into() },
                Step { name: StepName::Refresh, ok: false, skipped: true, ms: 0.0, detail: "not run".into() },
            ],
            stats: Some(Stats { sent: 4, received: 3, loss_pct: 25.0, rtt_ms: None, jitter_ms: Some(1.0) }),
            warnings: vec!["open".into()],
            tcp_relay: None,
        };
        let o = report.outcome();
        assert_eq!(o.failed_step.as_ref().map(|f| f.name), Some("channel-data"));
        assert_eq!(o.loss_ratio, Some(0.25));
        assert_eq!(o.jitter, Some(Duration::from_millis(1)));
        assert_eq!(
            run_line("T", 7, &o),
            "T  run 7  FAILED  allocate 2.5 ms  rtt -  loss 25.0%  warnings 1  at channel-data: no answer"
        );
        report.ok = true;
        report.steps.truncate(1);
        report.warnings.clear();
        assert_eq!(run_line("T", 8, &report.outcome()), "T  run 8  ok  allocate 2.5 ms  rtt -  loss 25.0%");
    }
}
