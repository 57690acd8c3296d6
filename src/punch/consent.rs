//! Consent freshness on the selected pair (RFC 7675), sans-IO.
//!
//! After a pair is selected, the ICE agent keeps sending authenticated STUN Binding requests
//! on it (str0m's keepalive: at least every `max_rto`, 3 s by default, faster while
//! unanswered; RFC 7675 §5.1 asks for about one per 5 s). Each authenticated success response
//! renews consent. This core watches the agent's count of responses on the nominated pair
//! (`IceAgent::nominated_pair_responses_received`) and turns silence into two verdicts:
//!
//! - [`ConsentEvent::Lost`] after `lost_after` without a response: the path is very likely
//!   gone (a NAT forgot its mapping, the peer roamed). RFC 7675 §5.1 lets an application
//!   detect this "liveness" loss sooner than the consent timeout and repair the path
//!   (ICE restart, relay) before consent runs out.
//! - [`ConsentEvent::Expired`] after `expiry` (30 s, RFC 7675 §5.1: the consent timeout):
//!   the sender MUST stop sending application data on the pair.
//!
//! A response after `Lost` makes the pair fresh again ([`ConsentEvent::Regained`]); after
//! `Expired` nothing does (a new pair starts a new `Consent`). The caller owns the clock:
//! every call takes `now`, so the tests run on a fake one.

use std::time::{Duration, Instant};

/// RFC 7675 §5.1: consent expires 30 s after the last authenticated response.
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The default for `--path-lost-after`: well under QUIC's idle timeout and the consent
/// timeout, and above the agent's 3 s check interval plus one retransmission.
pub const DEFAULT_LOST_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentConfig {
    /// Silence after which the path is reported lost (liveness, repairable).
    pub lost_after: Duration,
    /// Silence after which consent has expired (sending on the pair must stop).
    pub expiry: Duration,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig { lost_after: DEFAULT_LOST_AFTER, expiry: CONSENT_TIMEOUT }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentState {
    /// Answers are arriving.
    Fresh,
    /// No answer for `lost_after`: repair the path; consent still holds.
    Lost,
    /// No answer for `expiry`: consent is gone for good.
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentEvent {
    Lost { silent_for: Duration },
    Regained,
    Expired { silent_for: Duration },
}

/// Consent for one selected pair.
#[derive(Debug)]
pub struct Consent {
    config: ConsentConfig,
    state: ConsentState,
    /// When consent was last renewed (selection counts as a renewal: the pair just answered).
    fresh_at: Instant,
    /// The agent's response count at the last look; any change means new responses arrived.
    seen: Option<u64>,
}

impl Consent {
    /// Consent for a pair selected at `now`.
    pub fn new(config: ConsentConfig, now: Instant) -> Self {
        // `lost_after` above `expiry` would make `Lost` unreachable; keep the order sane.
        let config = ConsentConfig { lost_after: config.lost_after.min(config.expiry), ..config };
        Consent { config, state: ConsentState::Fresh, fresh_at: now, seen: None }
    }

    pub fn state(&self) -> ConsentState {
        self.state
    }

    /// Feeds the agent's count of authenticated responses on the selected pair. The first
    /// call only records the baseline; a later different value (the count only grows, but a
    /// re-nominated pair starts again from zero) renews consent.
    pub fn handle_responses(&mut self, now: Instant, count: u64) -> Option<ConsentEvent> {
        let changed = self.seen.is_some_and(|s| s != count);
        self.seen = Some(count);
        if !changed || self.state == ConsentState::Expired {
            return None;
        }
        self.fresh_at = now;
        let was = std::mem::replace(&mut self.state, ConsentState::Fresh);
        (was == ConsentState::Lost).then_some(ConsentEvent::Regained)
    }

    /// When `handle_timeout` has something to say next; `None` once expired.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ConsentState::Fresh => Some(self.fresh_at + self.config.lost_after),
            ConsentState::Lost => Some(self.fresh_at + self.config.expiry),
            ConsentState::Expired => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Option<ConsentEvent> {
        let silent_for = now.saturating_duration_since(self.fresh_at);
        match self.state {
            ConsentState::Fresh | ConsentState::Lost if silent_for >= self.config.expiry => {
                self.state = ConsentState::Expired;
                Some(ConsentEvent::Expired { silent_for })
            }
            ConsentState::Fresh if silent_for >= self.config.lost_after => {
                self.state = ConsentState::Lost;
                Some(ConsentEvent::Lost { silent_for })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn answers_keep_consent_fresh() {
        let t0 = Instant::now();
        let mut c = Consent::new(ConsentConfig::default(), t0);
        assert_eq!(c.handle_responses(t0, 1), None);
        for i in 1..=20u64 {
            let now = t0 + secs(3 * i);
            assert_eq!(c.handle_responses(now, 1 + i), None);
            assert_eq!(c.handle_timeout(now), None);
            assert_eq!(c.poll_timeout(), Some(now + DEFAULT_LOST_AFTER));
        }
        assert_eq!(c.state(), ConsentState::Fresh);
    }

    #[test]
    fn silence_is_lost_after_five_seconds_then_expires_at_thirty() {
        let t0 = Instant::now();
        let mut c = Consent::new(ConsentConfig::default(), t0);
        c.handle_responses(t0, 7);
        // The same count is no news.
        assert_eq!(c.handle_responses(t0 + secs(4), 7), None);
        assert_eq!(c.handle_timeout(t0 + secs(4)), None);
        assert_eq!(c.poll_timeout(), Some(t0 + secs(5)));
        assert_eq!(c.handle_timeout(t0 + secs(5)), Some(ConsentEvent::Lost { silent_for: secs(5) }));
        assert_eq!(c.state(), ConsentState::Lost);
        // Lost is said once.
        assert_eq!(c.handle_timeout(t0 + secs(6)), None);
        assert_eq!(c.poll_timeout(), Some(t0 + CONSENT_TIMEOUT));
        assert_eq!(c.handle_timeout(t0 + secs(29)), None);
        assert_eq!(c.handle_timeout(t0 + secs(30)), Some(ConsentEvent::Expired { silent_for: secs(30) }));
        assert_eq!(c.poll_timeout(), None);
        // RFC 7675 §5.1: once expired, a late answer does not bring consent back on this pair.
        assert_eq!(c.handle_responses(t0 + secs(31), 8), None);
        assert_eq!(c.state(), ConsentState::Expired);
    }

    #[test]
    fn an_answer_after_loss_regains_consent() {
        let t0 = Instant::now();
        let mut c = Consent::new(ConsentConfig::default(), t0);
        c.handle_responses(t0, 0);
        assert!(matches!(c.handle_timeout(t0 + secs(6)), Some(ConsentEvent::Lost { .. })));
        assert_eq!(c.handle_responses(t0 + secs(7), 1), Some(ConsentEvent::Regained));
        assert_eq!(c.state(), ConsentState::Fresh);
        assert_eq!(c.poll_timeout(), Some(t0 + secs(7) + DEFAULT_LOST_AFTER));
        assert_eq!(c.handle_timeout(t0 + secs(37)), Some(ConsentEvent::Expired { silent_for: secs(30) }));
    }

    #[test]
    fn a_late_timer_past_expiry_reports_expiry_not_loss() {
        let t0 = Instant::now();
        let mut c = Consent::new(ConsentConfig::default(), t0);
        assert_eq!(c.handle_timeout(t0 + secs(40)), Some(ConsentEvent::Expired { silent_for: secs(40) }));
    }

    #[test]
    fn a_renominated_pair_restarting_its_count_still_renews() {
        let t0 = Instant::now();
        let mut c = Consent::new(ConsentConfig::default(), t0);
        c.handle_responses(t0, 12);
        assert!(matches!(c.handle_timeout(t0 + secs(5)), Some(ConsentEvent::Lost { .. })));
        assert_eq!(c.handle_responses(t0 + secs(6), 1), Some(ConsentEvent::Regained));
    }

    #[test]
    fn lost_after_longer_than_expiry_is_clamped() {
        let t0 = Instant::now();
        let cfg = ConsentConfig { lost_after: secs(60), expiry: secs(30) };
        let mut c = Consent::new(cfg, t0);
        assert_eq!(c.poll_timeout(), Some(t0 + secs(30)));
        assert!(matches!(c.handle_timeout(t0 + secs(30)), Some(ConsentEvent::Expired { .. })));
    }
}
