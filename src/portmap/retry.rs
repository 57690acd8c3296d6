//! When to (re)send a port-mapping request and when to give up: a sans-IO schedule.
//!
//! RFC 6886 §3.1 and RFC 6887 §8.1.1 start at 250 ms and double, for up to minutes; natkit asks
//! the gateway on the LAN, where an answer takes a millisecond, so it sends at 0, 250 and 750 ms
//! and gives up at [`GIVE_UP`] (documented in README): a router without the protocol costs at
//! most that, and usually nothing, since its ICMP port unreachable ends the wait at once.

use std::time::{Duration, Instant};

/// Send times after the first, relative to it.
const RESENDS: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(750)];
/// No answer by then: the protocol is not there.
pub const GIVE_UP: Duration = Duration::from_millis(1250);

/// One request's retransmission state.
#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    sent: usize,
}

impl Schedule {
    pub fn new(now: Instant) -> Self {
        Schedule { start: now, sent: 0 }
    }

    /// True when the request should go out (again) now.
    pub fn poll_transmit(&mut self, now: Instant) -> bool {
        let due = match self.sent {
            0 => true,
            n => RESENDS.get(n - 1).is_some_and(|d| now >= self.start + *d),
        };
        if due {
            self.sent += 1;
        }
        due
    }

    /// The next time to wake: a resend or the end.
    pub fn poll_timeout(&self) -> Instant {
        match self.sent {
            0 => self.start,
            n => self.start + RESENDS.get(n - 1).copied().unwrap_or(GIVE_UP),
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.start + GIVE_UP
    }

    /// How many times the request went out.
    pub fn sends(&self) -> usize {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_three_times_then_gives_up_at_the_bound() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert!(s.poll_transmit(t0));
        assert!(!s.poll_transmit(t0));
        assert_eq!(s.poll_timeout(), t0 + Duration::from_millis(250));
        assert!(s.poll_transmit(t0 + Duration::from_millis(250)));
        assert_eq!(s.poll_timeout(), t0 + Duration::from_millis(750));
        assert!(s.poll_transmit(t0 + Duration::from_millis(800)));
        assert_eq!(s.poll_timeout(), t0 + GIVE_UP);
        assert!(!s.poll_transmit(t0 + Duration::from_millis(1200)));
        assert!(!s.expired(t0 + Duration::from_millis(1200)));
        assert!(s.expired(t0 + GIVE_UP));
        assert_eq!(s.sends(), 3);
    }
}
