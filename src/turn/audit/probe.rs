//! `turn-alloc --every`: the TURN audit (RFC 8656 allocate, permission, Send/Data
//! indications §10, channels §12, refresh §7) run again and again as a blackbox
//! probe, with the last run served as Prometheus text (exposition format 0.0.4).
//!
//! Three pieces, each with one job:
//! - [`Cadence`]: when the next run starts (every SECS after the previous *start*;
//!   a run slower than that is followed at once, never overlapped). Pure, no clock.
//! - [`ProbeState`]: the counters and the last run's [`RunOutcome`], rendered as
//!   metrics in the style of Prometheus' blackbox exporter (`probe_success`, …).
//!   Labels come only from the fixed set of step names, never from the server,
//!   the user or an address, so the series count cannot grow (coturn#666).
//! - [`run_every`] and [`serve_metrics`]: the drivers (timer loop, HTTP endpoint).
//!
//! The audit itself is the rest of [`crate::turn::audit`]: this module sees a run
//! only through [`ProbeReport::outcome`].

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::net::metrics_http::{self, MetricsLimits, Paths};

/// What the probe keeps of one run: only values with a fixed label set.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub ok: bool,
    /// Every step of the audit, passed or not (a skipped step did not pass).
    pub steps: Vec<StepOutcome>,
    /// The step that failed first, when one did.
    pub failed_step: Option<StepOutcome>,
    /// Time the authenticated Allocate took, when it passed.
    pub allocate: Option<Duration>,
    /// Mean round trip of the quality test, when any packet came back.
    pub rtt: Option<Duration>,
    /// Lost packets / sent packets of the quality test (0..=1).
    pub loss_ratio: Option<f64>,
    pub jitter: Option<Duration>,
    pub warnings: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// A step name from the audit's fixed list (a metric label value).
    pub name: &'static str,
    pub ok: bool,
    /// What went wrong, for the one-line summary (never a metric label).
    pub detail: String,
}

/// A run's report as the probe sees it.
pub trait ProbeReport {
    fn outcome(&self) -> RunOutcome;
}

/// Which run this is and when it started (for JSON Lines and the summary line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunInfo {
    /// 1 for the first run.
    pub run: u64,
    pub started: SystemTime,
}

/// When the next run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub at: Instant,
    /// The run took longer than the period: the next one starts right after it.
    pub overran: bool,
}

/// The schedule: one run every `every`, counted from the previous run's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    pub every: Duration,
}

impl Cadence {
    /// The next start for a run that started at `started` and ended at `finished`.
    pub fn next(&self, started: Instant, finished: Instant) -> Next {
        let due = started + self.every;
        if finished > due { Next { at: finished, overran: true } } else { Next { at: due, overran: false } }
    }
}

/// Counters and the last run, shared by the loop (writer) and the endpoint (reader).
#[derive(Debug, Default)]
pub struct ProbeState {
    runs_total: u64,
    failures_total: u64,
    last: Option<LastRun>,
}

#[derive(Debug)]
struct LastRun {
    outcome: RunOutcome,
    started: SystemTime,
    took: Duration,
}

impl ProbeState {
    /// Counts a finished run and keeps it as the one `/metrics` shows.
    pub fn record(&mut self, outcome: RunOutcome, started: SystemTime, took: Duration) {
        self.runs_total += 1;
        if !outcome.ok {
            self.failures_total += 1;
        }
        self.last = Some(LastRun { outcome, started, took });
    }

    pub fn runs_total(&self) -> u64 {
        self.runs_total
    }

    /// Prometheus text. Before the first run ends only the counters are there; a
    /// value the last run did not measure (no RTT when allocate failed) is left
    /// out rather than kept from an older run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            if samples.is_empty() {
                return;
            }
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {}", number(*v));
            }
        };
        let one = |v: Option<f64>| v.map(|v| vec![(String::new(), v)]).unwrap_or_default();
        let last = self.last.as_ref();
        let o = last.map(|l| &l.outcome);
        metric(
            "natkit_probe_success",
            "gauge",
            "1 when every step of the last run passed, else 0.",
            &one(o.map(|o| f64::from(u8::from(o.ok)))),
        );
        let steps: Vec<(String, f64)> = o
            .map(|o| o.steps.iter().map(|s| (format!("{{step=\"{}\"}}", s.name), f64::from(u8::from(s.ok)))).collect())
            .unwrap_or_default();
        metric("natkit_probe_step_success", "gauge", "1 when this step passed in the last run, else 0.", &steps);
        metric(
            "natkit_probe_duration_seconds",
            "gauge",
            "How long the last run took.",
            &one(last.map(|l| l.took.as_secs_f64())),
        );
        metric(
            "natkit_probe_allocate_seconds",
            "gauge",
            "Time the authenticated Allocate took in the last run.",
            &one(o.and_then(|o| o.allocate).map(|d| d.as_secs_f64())),
        );
        metric(
            "natkit_probe_rtt_seconds",
            "gauge",
            "Mean round trip through the relay in the last run.",
            &one(o.and_then(|o| o.rtt).map(|d| d.as_secs_f64())),
        );
        metric(
            "natkit_probe_loss_ratio",
            "gauge",
            "Share of test packets lost through the relay in the last run (0 to 1).",
            &one(o.and_then(|o| o.loss_ratio)),
        );
        metric(
            "natkit_probe_jitter_seconds",
            "gauge",
            "RFC 3550 interarrival jitter through the relay in the last run.",
            &one(o.and_then(|o| o.jitter).map(|d| d.as_secs_f64())),
        );
        metric(
            "natkit_probe_warnings",
            "gauge",
            "Audit warnings of the last run (an open relay, a reachable private peer, ...).",
            &one(o.map(|o| o.warnings as f64)),
        );
        metric(
            "natkit_probe_last_run_timestamp_seconds",
            "gauge",
            "Unix time the last finished run started.",
            &one(last.map(|l| unix_seconds(l.started))),
        );
        metric("natkit_probe_runs_total", "counter", "Runs finished.", &[(String::new(), self.runs_total as f64)]);
        metric(
            "natkit_probe_failures_total",
            "counter",
            "Runs that failed a step.",
            &[(String::new(), self.failures_total as f64)],
        );
        out
    }
}

/// Shared state, as the loop and the endpoint hold it.
pub type SharedState = Arc<Mutex<ProbeState>>;

/// Runs `audit` at once, then every `cadence.every` after the previous start, until
/// the future is dropped (Ctrl-C): it returns only an error. Runs never overlap. Each report goes to `emit`
/// with its [`RunInfo`]; an error from `audit` or `emit` ends the loop.
pub async fn run_every<R, F, Fut>(
    cadence: Cadence,
    state: SharedState,
    mut audit: F,
    mut emit: impl FnMut(&R, RunInfo) -> anyhow::Result<()>,
) -> anyhow::Result<Infallible>
where
    R: ProbeReport,
    F: FnMut(RunInfo) -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
{
    let mut overrun_said = false;
    let mut run = 0u64;
    loop {
        run += 1;
        let info = RunInfo { run, started: SystemTime::now() };
        let started = Instant::now();
        let report = audit(info).await?;
        let finished = Instant::now();
        state.lock().unwrap_or_else(PoisonError::into_inner).record(report.outcome(), info.started, finished - started);
        emit(&report, info)?;
        let next = cadence.next(started, finished);
        if next.overran && !overrun_said {
            // Said once: a slow relay would otherwise repeat this every run.
            overrun_said = true;
            tracing::warn!(
                "run {run} took {:.1} s, longer than --every {} s: the next run starts right after each slow one \
                 (runs never overlap; said once)",
                (finished - started).as_secs_f64(),
                cadence.every.as_secs_f64()
            );
        }
        tokio::time::sleep_until(next.at.into()).await;
    }
}

/// Serves `GET /metrics` from `state` until the task is dropped: the whole
/// request head is read first, within a header timeout, with a cap on
/// connections ([`metrics_http`]); one render per scrape, under the lock for
/// microseconds.
pub async fn serve_metrics(listener: tokio::net::TcpListener, limits: MetricsLimits, state: SharedState) {
    metrics_http::serve(listener, limits, Paths::Only("/metrics"), "turn-alloc", move || {
        state.lock().unwrap_or_else(PoisonError::into_inner).render()
    })
    .await
}

/// A sample value as Prometheus reads it (integers without a fraction).
fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-12-01T13:55:02.125Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ok: bool) -> RunOutcome {
        let step = |name, ok| StepOutcome { name, ok, detail: String::new() };
        RunOutcome {
            ok,
            steps: vec![step("allocate", true), step("channel-data", ok)],
            failed_step: (!ok).then(|| step("channel-data", false)),
            allocate: Some(Duration::from_millis(3)),
            rtt: ok.then(|| Duration::from_micros(400)),
            loss_ratio: ok.then_some(0.25),
            jitter: None,
            warnings: 1,
        }
    }

    #[test]
    fn next_run_starts_a_period_after_the_previous_start_or_right_after_a_slow_run() {
        let c = Cadence { every: Duration::from_secs(10) };
        let t0 = Instant::now();
        assert_eq!(c.next(t0, t0 + Duration::from_secs(3)), Next { at: t0 + Duration::from_secs(10), overran: false });
        let late = t0 + Duration::from_secs(12);
        assert_eq!(c.next(t0, late), Next { at: late, overran: true });
    }

    #[test]
    fn metrics_show_only_counters_before_the_first_run() {
        let text = ProbeState::default().render();
        assert!(text.contains("natkit_probe_runs_total 0\n"), "{text}");
        assert!(!text.contains("natkit_probe_success"), "{text}");
    }

    #[test]
    fn metrics_show_the_last_run_and_count_every_run() {
        let mut s = ProbeState::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        s.record(outcome(true), t, Duration::from_millis(500));
        let text = s.render();
        assert!(text.contains("natkit_probe_success 1\n"), "{text}");
        assert!(text.contains("natkit_probe_rtt_seconds 0.0004\n"), "{text}");
        assert!(text.contains("natkit_probe_loss_ratio 0.25\n"), "{text}");
        assert!(!text.contains("natkit_probe_jitter_seconds"), "not measured, not shown: {text}");
        assert!(text.contains("natkit_probe_last_run_timestamp_seconds 1700000000\n"), "{text}");
        s.record(outcome(false), t, Duration::from_millis(500));
        let text = s.render();
        assert!(text.contains("natkit_probe_success 0\n"), "{text}");
        assert!(text.contains("natkit_probe_step_success{step=\"channel-data\"} 0\n"), "{text}");
        assert!(text.contains("natkit_probe_step_success{step=\"allocate\"} 1\n"), "{text}");
        assert!(!text.contains("natkit_probe_rtt_seconds"), "no stale RTT from run 1: {text}");
        assert!(text.contains("natkit_probe_runs_total 2\n") && text.contains("natkit_probe_failures_total 1\n"));
        assert_eq!(s.runs_total(), 2);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_764_597_302_125);
        assert_eq!(rfc3339(t), "2025-12-01T13:55:02.125Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    }
}
