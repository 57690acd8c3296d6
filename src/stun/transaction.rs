//! The STUN client transaction of RFC 8489 §6.2 as a sans-IO state machine.
//!
//! Over UDP a request is retransmitted with a doubling RTO: sent at 0, RTO,
//! 3·RTO, 7·RTO … up to Rc sends, and the transaction fails Rm·RTO after the
//! last one (§6.2.1; RTO 500 ms, Rc 7, Rm 16 by default, so 39.5 s). Over TCP
//! and TLS it is sent once and fails after Ti (§6.2.2, 39.5 s). A caller's
//! overall deadline (`--timeout`) can end it sooner.
//!
//! The core never reads a clock: the driver passes `now` in, sends what
//! [`ClientTransaction::poll_transmit`] returns and wakes at
//! [`ClientTransaction::poll_timeout`].

use std::time::{Duration, Instant};

/// The retransmission parameters of RFC 8489 §6.2.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retransmit {
    /// Initial retransmission timeout.
    pub rto: Duration,
    /// Number of sends in all.
    pub rc: u32,
    /// After the last send, wait `rm × rto` before giving up.
    pub rm: u32,
}

impl Default for Retransmit {
    fn default() -> Self {
        Retransmit { rto: Duration::from_millis(500), rc: 7, rm: 16 }
    }
}

/// Whether the transport retransmits for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reliability {
    /// UDP: natkit retransmits.
    Unreliable(Retransmit),
    /// TCP or TLS: one send, then wait up to `ti`.
    Reliable { ti: Duration },
}

impl Reliability {
    /// RFC 8489 §6.2.2: Ti is 39.5 s.
    pub fn reliable_default() -> Self {
        Reliability::Reliable { ti: Duration::from_millis(39_500) }
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A message with our transaction id arrived.
    Response {
        bytes: Vec<u8>,
        /// Time since the latest send: with retransmissions, the lower bound (Karn).
        rtt: Duration,
        /// Time since the first send.
        elapsed: Duration,
        /// How many times the request was sent.
        sends: u32,
    },
    /// No response before the end of the schedule or the caller's deadline.
    TimedOut { sends: u32, elapsed: Duration },
}

#[derive(Debug)]
pub struct ClientTransaction {
    id: [u8; 12],
    request: Vec<u8>,
    reliability: Reliability,
    /// Nothing is sent before this instant (lets a driver schedule `--count` rounds).
    start_at: Instant,
    /// A hard end chosen by the caller, on top of the RFC schedule.
    deadline: Option<Instant>,
    first_send: Option<Instant>,
    last_send: Option<Instant>,
    sends: u32,
    next_send: Option<Instant>,
    current_rto: Duration,
    give_up_at: Option<Instant>,
    outcome: Option<Outcome>,
}

impl ClientTransaction {
    /// `request` is the encoded STUN request whose transaction id is `id`.
    pub fn new(id: [u8; 12], request: Vec<u8>, reliability: Reliability, start_at: Instant) -> Self {
        let current_rto = match reliability {
            Reliability::Unreliable(r) => r.rto,
            Reliability::Reliable { .. } => Duration::ZERO,
        };
        ClientTransaction {
            id,
            request,
            reliability,
            start_at,
            deadline: None,
            first_send: None,
            last_send: None,
            sends: 0,
            next_send: Some(start_at),
            current_rto,
            give_up_at: None,
            outcome: None,
        }
    }

    /// Ends the transaction at `deadline` even if the RFC schedule runs longer.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    pub fn id(&self) -> &[u8; 12] {
        &self.id
    }

    pub fn start_at(&self) -> Instant {
        self.start_at
    }

    pub fn sends(&self) -> u32 {
        self.sends
    }

    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// The bytes to send now, if a (re)transmission is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<&[u8]> {
        if self.outcome.is_some() {
            return None;
        }
        let due = self.next_send?;
        if now < due {
            return None;
        }
        if self.first_send.is_none() {
            self.first_send = Some(now);
            if let Some(d) = self.deadline {
                // The caller's timeout counts from the first send, not from creation.
                let start_offset = now.saturating_duration_since(self.start_at);
                self.deadline = Some(d + start_offset);
            }
        }
        self.sends += 1;
        self.last_send = Some(now);
        match self.reliability {
            Reliability::Unreliable(r) => {
                if self.sends < r.rc {
                    // Schedule from the due time, not `now`, so a late wake-up does not stretch it.
                    self.next_send = Some(due + self.current_rto);
                    self.current_rto *= 2;
                } else {
                    self.next_send = None;
                    self.give_up_at = Some(due + r.rto * r.rm);
                }
            }
            Reliability::Reliable { ti } => {
                self.next_send = None;
                self.give_up_at = Some(now + ti);
            }
        }
        Some(&self.request)
    }

    /// When the driver must call back: the next send or the end, whichever is first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            return None;
        }
        [self.next_send, self.give_up_at, self.deadline].into_iter().flatten().min()
    }

    /// Ends the transaction if its schedule or deadline has run out.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        let expired = |t: Option<Instant>| t.is_some_and(|t| now >= t);
        if expired(self.give_up_at) || expired(self.deadline) {
            self.outcome = Some(Outcome::TimedOut {
                sends: self.sends,
                elapsed: self.first_send.map(|f| now.saturating_duration_since(f)).unwrap_or_default(),
            });
        }
    }

    /// Offers a received message. Returns true when it belongs to this
    /// transaction (same transaction id), which then ends with it.
    pub fn handle_response(&mut self, bytes: &[u8], now: Instant) -> bool {
        if self.outcome.is_some() || self.first_send.is_none() {
            return false;
        }
        if crate::stun::message::transaction_id(bytes) != Some(self.id) {
            return false;
        }
        let last = self.last_send.unwrap_or(now);
        let first = self.first_send.unwrap_or(now);
        self.outcome = Some(Outcome::Response {
            bytes: bytes.to_vec(),
            rtt: now.saturating_duration_since(last),
            elapsed: now.saturating_duration_since(first),
            sends: self.sends,
        });
        true
    }

    /// Ends the transaction as failed right away (e.g. ICMP port unreachable):
    /// the driver reports why; this only stops the schedule.
    pub fn abort(&mut self, now: Instant) {
        if self.outcome.is_none() {
            self.outcome = Some(Outcome::TimedOut {
                sends: self.sends,
                elapsed: self.first_send.map(|f| now.saturating_duration_since(f)).unwrap_or_default(),
            });
        }
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::{binding_request, new_transaction_id};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives the transaction with a fake clock; returns the send times (ms from t0)
    /// and when it timed out.
    fn run_silent(mut tx: ClientTransaction, t0: Instant) -> (Vec<u64>, u64) {
        let mut now = t0;
        let mut sends = Vec::new();
        loop {
            while tx.poll_transmit(now).is_some() {
                sends.push((now - t0).as_millis() as u64);
            }
            tx.handle_timeout(now);
            if tx.is_done() {
                return (sends, (now - t0).as_millis() as u64);
            }
            now = tx.poll_timeout().expect("a live transaction always has a timeout");
        }
    }

    #[test]
    fn udp_retransmits_with_doubling_rto_and_gives_up_after_rm() {
        let t0 = Instant::now();
        let id = new_transaction_id();
        let tx = ClientTransaction::new(id, binding_request(id), Reliability::Unreliable(Retransmit::default()), t0);
        let (sends, end) = run_silent(tx, t0);
        assert_eq!(sends, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(end, 39_500);
    }

    #[test]
    fn custom_rto_and_rc_follow_the_same_rule() {
        let t0 = Instant::now();
        let id = new_transaction_id();
        let r = Retransmit { rto: ms(100), rc: 3, rm: 4 };
        let tx = ClientTransaction::new(id, binding_request(id), Reliability::Unreliable(r), t0);
        let (sends, end) = run_silent(tx, t0);
        assert_eq!(sends, vec![0, 100, 300]);
        assert_eq!(end, 300 + 400);
    }

    #[test]
    fn caller_deadline_cuts_the_schedule_short() {
        let t0 = Instant::now();
        let id = new_transaction_id();
        let tx = ClientTransaction::new(id, binding_request(id), Reliability::Unreliable(Retransmit::default()), t0)
            .with_deadline(t0 + ms(2000));
        let (sends, end) = run_silent(tx, t0);
        assert_eq!(sends, vec![0, 500, 1500]);
        assert_eq!(end, 2000);
    }

    #[test]
    fn a_scheduled_round_keeps_its_own_deadline() {
        let t0 = Instant::now();
        let id = new_transaction_id();
        let start = t0 + ms(1000);
        let tx = ClientTransaction::new(id, binding_request(id), Reliability::Unreliable(Retransmit::default()), start)
            .with_deadline(start + ms(800));
        let (sends, end) = run_silent(tx, t0);
        assert_eq!(sends, vec![1000, 1500]);
        assert_eq!(end, 1800);
    }

    #[test]
    fn reliable_transport_sends_once_and_waits_ti() {
        let t0 = Instant::now();
        let id = new_transaction_id();
        let tx = ClientTransaction::new(id, binding_request(id), Reliability::reliable_default(), t0);
        let (sends, end) = run_silent(tx, t0);
        assert_eq!(sends, vec![0]);
        assert_eq!(end, 39_500);
    }

    #[test]
    fn response_ends_it_with_rtt_from_the_latest_send() {
        let t0 = Instant::now();
        let id = new_transaction_id();
        let mut tx =
            ClientTransaction::new(id, binding_request(id), Reliability::Unreliable(Retransmit::default()), t0);
        assert!(tx.poll_transmit(t0).is_some());
        assert!(tx.poll_transmit(t0 + ms(499)).is_none());
        assert!(tx.poll_transmit(t0 + ms(500)).is_some());
        let resp = binding_request(id); // any message with our id will do for the core
        assert!(tx.handle_response(&resp, t0 + ms(520)));
        match tx.outcome() {
            Some(Outcome::Response { rtt, elapsed, sends, .. }) => {
                assert_eq!(*rtt, ms(20));
                assert_eq!(*elapsed, ms(520));
                assert_eq!(*sends, 2);
            }
            other => panic!("unexpected outcome {other:?}"),
        }
        assert!(tx.poll_timeout().is_none());
        assert!(tx.poll_transmit(t0 + ms(5000)).is_none());
    }

    #[test]
    fn message_with_another_transaction_id_is_ignored() {
        let t0 = Instant::now();
        let id = new_transaction_id();
        let mut tx =
            ClientTransaction::new(id, binding_request(id), Reliability::Unreliable(Retransmit::default()), t0);
        tx.poll_transmit(t0);
        let other = new_transaction_id();
        assert!(!tx.handle_response(&binding_request(other), t0 + ms(10)));
        assert!(!tx.handle_response(b"garbage", t0 + ms(10)));
        assert!(!tx.is_done());
    }

    #[test]
    fn nothing_is_sent_before_start_at() {
        let t0 = Instant::now();
        let id = new_transaction_id();
        let mut tx = ClientTransaction::new(id, binding_request(id), Reliability::reliable_default(), t0 + ms(300));
        assert!(tx.poll_transmit(t0).is_none());
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(300)));
        assert!(tx.poll_transmit(t0 + ms(300)).is_some());
    }
}
