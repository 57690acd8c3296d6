//! Quality of the relayed path in `turn-alloc`'s quality step: loss, round-trip times
//! (min/avg/p99) and RFC 3550 §6.4.1 interarrival jitter, plus the test packet that
//! carries its sequence number and send time. Pure arithmetic over samples the driver
//! collected: no sockets, no clock.

use std::time::Duration;

use serde::Serialize;

/// Round-trip times of the quality test, in milliseconds (JSON `stats.rtt_ms`).
#[derive(Debug, Clone, Serialize)]
pub struct RttStats {
    pub min: f64,
    pub avg: f64,
    pub p99: f64,
}

/// What the quality test measured (JSON `stats`).
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub sent: u32,
    pub received: u32,
    pub loss_pct: f64,
    pub rtt_ms: Option<RttStats>,
    /// RFC 3550 interarrival jitter of the one-way transit (both allocations are
    /// ours, so both ends read one clock); with --peer, of the round trips.
    pub jitter_ms: Option<f64>,
}

/// The samples one quality run collected, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    /// Packets handed to the relay.
    pub sent: u32,
    /// Round trip of each packet that came back.
    pub rtts: Vec<f64>,
    /// One-way transit of each packet the second allocation received (empty with an
    /// external peer: it does not tell us when a packet arrived).
    pub transits: Vec<f64>,
}

/// Which samples the jitter is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitterOf {
    /// One-way transits: the echoing end is our own second allocation.
    Transit,
    /// Round trips: an external `--peer` echoes, so only round trips are seen.
    RoundTrip,
}

impl Stats {
    /// Loss, RTT summary and jitter of `samples`.
    pub fn from_samples(samples: &Samples, jitter_of: JitterOf) -> Stats {
        let sent = samples.sent;
        let received = samples.rtts.len() as u32;
        let jitter_source = match jitter_of {
            JitterOf::Transit => &samples.transits,
            JitterOf::RoundTrip => &samples.rtts,
        };
        Stats {
            sent,
            received,
            loss_pct: loss_pct(sent, received),
            rtt_ms: summarize_rtts(&samples.rtts),
            jitter_ms: rfc3550_jitter(jitter_source).map(round3),
        }
    }

    /// Whether the step passed: nothing was asked for, or something came back.
    pub fn passed(&self) -> bool {
        self.sent == 0 || self.received > 0
    }

    /// The step's detail sentence.
    pub fn detail(&self) -> String {
        match &self.rtt_ms {
            Some(r) => format!(
                "{} of {} packets back ({:.1}% loss), rtt min/avg/p99 {:.2}/{:.2}/{:.2} ms, jitter {:.2} ms",
                self.received,
                self.sent,
                self.loss_pct,
                r.min,
                r.avg,
                r.p99,
                self.jitter_ms.unwrap_or(0.0)
            ),
            None if self.sent == 0 => "skipped: --packets 0".into(),
            None => format!("none of {} packets came back", self.sent),
        }
    }
}

/// Share of `sent` packets that did not come back, in percent (0 when none were sent).
pub fn loss_pct(sent: u32, received: u32) -> f64 {
    if sent == 0 { 0.0 } else { round3(100.0 * (sent - received.min(sent)) as f64 / sent as f64) }
}

/// Rounds to microseconds when the unit is milliseconds: JSON stays readable.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// min, mean and 99th percentile (nearest rank) of `rtts`; None when empty.
pub fn summarize_rtts(rtts: &[f64]) -> Option<RttStats> {
    if rtts.is_empty() {
        return None;
    }
    let mut v = rtts.to_vec();
    v.sort_by(f64::total_cmp);
    let p99_idx = ((v.len() as f64 * 0.99).ceil() as usize).saturating_sub(1).min(v.len() - 1);
    Some(RttStats { min: round3(v[0]), avg: round3(v.iter().sum::<f64>() / v.len() as f64), p99: round3(v[p99_idx]) })
}

/// RFC 3550 §6.4.1: J += (|D| − J) / 16 over successive transit times.
pub fn rfc3550_jitter(transits: &[f64]) -> Option<f64> {
    if transits.len() < 2 {
        return None;
    }
    let mut j = 0.0;
    for w in transits.windows(2) {
        j += ((w[1] - w[0]).abs() - j) / 16.0;
    }
    Some(j)
}

const PROBE_MAGIC: &[u8; 4] = b"NKQ1";
const PROBE_HEADER: usize = 16;

/// A quality test packet: magic, sequence number, send time in µs since the run's
/// start (`sent`), padding up to `size` (at least the 16-byte header).
pub fn encode_probe(seq: u32, sent: Duration, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.max(PROBE_HEADER));
    p.extend_from_slice(PROBE_MAGIC);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(sent.as_micros() as u64).to_be_bytes());
    p.resize(size.max(PROBE_HEADER), 0x5a);
    p
}

/// The sequence number and send time (since the run's start) of a test packet;
/// None for anything else (a late or foreign datagram is not a sample).
pub fn decode_probe(p: &[u8]) -> Option<(u32, Duration)> {
    if p.len() < PROBE_HEADER || &p[..4] != PROBE_MAGIC {
        return None;
    }
    let seq = u32::from_be_bytes(p[4..8].try_into().ok()?);
    let us = u64::from_be_bytes(p[8..16].try_into().ok()?);
    Some((seq, Duration::from_micros(us)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_follows_rfc3550() {
        assert_eq!(rfc3550_jitter(&[1.0]), None);
        let j = rfc3550_jitter(&[10.0, 12.0, 10.0]).expect("jitter");
        // J1 = 2/16 = 0.125, J2 = 0.125 + (2 - 0.125)/16
        assert!((j - (0.125 + 1.875 / 16.0)).abs() < 1e-9);
    }

    #[test]
    fn rtt_summary_has_min_avg_p99() {
        let v: Vec<f64> = (1..=100).map(|i| i as f64).collect();
        let s = summarize_rtts(&v).expect("stats");
        assert_eq!((s.min, s.avg, s.p99), (1.0, 50.5, 99.0));
        assert!(summarize_rtts(&[]).is_none());
    }

    #[test]
    fn probes_round_trip_and_junk_is_ignored() {
        let p = encode_probe(7, Duration::from_micros(1234), 172);
        assert_eq!(p.len(), 172);
        assert_eq!(decode_probe(&p), Some((7, Duration::from_micros(1234))));
        assert_eq!(encode_probe(1, Duration::ZERO, 3).len(), 16, "never shorter than the header");
        assert!(decode_probe(b"short").is_none());
        assert!(decode_probe(&[0u8; 32]).is_none());
    }

    #[test]
    fn loss_counts_what_did_not_come_back_and_never_goes_negative() {
        assert_eq!(loss_pct(0, 0), 0.0);
        assert_eq!(loss_pct(4, 3), 25.0);
        assert_eq!(loss_pct(3, 1), 66.667);
        assert_eq!(loss_pct(2, 5), 0.0, "duplicates do not make loss negative");
    }

    #[test]
    fn jitter_is_over_transits_with_our_peer_and_over_round_trips_with_an_external_one() {
        let s = Samples { sent: 3, rtts: vec![1.0, 1.0, 1.0], transits: vec![10.0, 12.0, 10.0] };
        let own = Stats::from_samples(&s, JitterOf::Transit);
        assert_eq!(own.jitter_ms, Some(round3(0.125 + 1.875 / 16.0)));
        assert_eq!(Stats::from_samples(&s, JitterOf::RoundTrip).jitter_ms, Some(0.0));
        assert_eq!((own.sent, own.received, own.loss_pct), (3, 3, 0.0));
        assert!(own.passed());
        assert!(own.detail().starts_with("3 of 3 packets back (0.0% loss), rtt min/avg/p99 1.00/1.00/1.00 ms"));
    }

    #[test]
    fn a_run_with_nothing_back_fails_and_one_with_nothing_sent_is_skipped() {
        let lost = Stats::from_samples(&Samples { sent: 5, ..Samples::default() }, JitterOf::Transit);
        assert!(!lost.passed());
        assert_eq!(lost.detail(), "none of 5 packets came back");
        assert_eq!(lost.loss_pct, 100.0);
        let none = Stats::from_samples(&Samples::default(), JitterOf::Transit);
        assert!(none.passed());
        assert_eq!(none.detail(), "skipped: --packets 0");
    }
}
