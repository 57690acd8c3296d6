//! Warnings a client can cause once per request (an Allocate refused because
//! the relay is full or has no free port), written at most once per
//! [`WARN_EVERY`] with the number of refusals each line stands for, so a
//! client that repeats the request cannot flood the log. The refusals
//! themselves are counted in the metrics either way.

use std::time::{Duration, Instant};

/// Shortest time between two lines of one warning.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// One warning's state.
#[derive(Debug, Default)]
pub struct WarnLimit {
    last: Option<Instant>,
    /// Occurrences since the last line written (this one included once due).
    pending: u64,
}

impl WarnLimit {
    /// Records one occurrence; Some(n) when a line is due now, standing for
    /// `n` occurrences (this one and those held back since the last line).
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_minute_standing_for_what_was_held_back() {
        let t0 = Instant::now();
        let mut w = WarnLimit::default();
        assert_eq!(w.due(t0), Some(1), "the first one is written");
        assert!((0..500).all(|i| w.due(t0 + Duration::from_millis(i)).is_none()));
        assert_eq!(w.due(t0 + WARN_EVERY), Some(501), "then one line for the 500 held back and this one");
        assert_eq!(w.due(t0 + WARN_EVERY + Duration::from_secs(1)), None);
    }
}
