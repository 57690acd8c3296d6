//! Password-guessing throttle for long-term credentials (RFC 8489 §9.2.4
//! checks MESSAGE-INTEGRITY; RFC 8656 §21.2 asks a TURN server to resist
//! credential attacks; the limits here are ours).
//!
//! Two ledgers, one keyed by the client's source IP and one by USERNAME, so
//! neither one host guessing every password nor many hosts guessing one
//! user's password get far. Each ledger lets a burst of failed integrity
//! checks through (a user who mistypes a password a few times is never
//! locked), then locks the key: while locked, a request is refused *before*
//! its MESSAGE-INTEGRITY is checked, so a right password sent during the lock
//! is not accepted either. The first lock lasts `1 / rate` (so checks stay at
//! or under `rate` per second), and every further failure while the key is
//! on record doubles it, up to `max_backoff`. A key is forgotten
//! `max_backoff` after its last lock ended without another failure.
//!
//! A successful login clears the username's record (the owner is back) but
//! not the source's: an attacker holding one valid account must not be able
//! to clear its own address by logging in between guesses.
//!
//! Both tables are bounded; past the bound new keys are not tracked (fail
//! open, counted) rather than locking out every newcomer.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Limits, from flags (see README "Safety policy").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleConfig {
    /// Failed integrity checks let through before the first lock.
    pub burst: u32,
    /// Checked guesses per second per source IP once locked.
    pub source_per_sec: f64,
    /// Checked guesses per second per username once locked.
    pub user_per_sec: f64,
    /// The longest lock.
    pub max_backoff: Duration,
    /// Keys each table tracks at most.
    pub max_keys: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            burst: 10,
            source_per_sec: 2.0,
            user_per_sec: 10.0,
            max_backoff: Duration::from_secs(60),
            max_keys: 100_000,
        }
    }
}

/// Which ledger refused a request; also the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offender {
    Source,
    Username,
}

impl Offender {
    pub const ALL: [Offender; 2] = [Offender::Source, Offender::Username];

    pub fn label(self) -> &'static str {
        match self {
            Offender::Source => "source",
            Offender::Username => "username",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What [`AuthThrottle::record_failure`] did to the keys involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Locked {
    /// The source was locked for the first time since it was last forgiven (log it once).
    pub source_first: bool,
    /// Likewise for the username.
    pub user_first: bool,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    /// Failures since the record began, drained at `rate` per second (a leaky bucket).
    level: f64,
    at: Instant,
    /// Locks so far; each doubles the next one.
    strikes: u32,
    locked_until: Option<Instant>,
}

#[derive(Debug)]
struct Ledger<K> {
    burst: f64,
    rate: f64,
    max_backoff: Duration,
    max_keys: usize,
    records: HashMap<K, Record>,
}

impl<K: Hash + Eq + Clone> Ledger<K> {
    fn new(burst: u32, rate: f64, max_backoff: Duration, max_keys: usize) -> Self {
        Ledger { burst: burst as f64, rate: rate.max(0.001), max_backoff, max_keys, records: HashMap::new() }
    }

    fn forgiven(&self, r: &Record, now: Instant) -> bool {
        match r.locked_until {
            Some(until) => now >= until + self.max_backoff,
            None => r.level - now.saturating_duration_since(r.at).as_secs_f64() * self.rate <= 0.0,
        }
    }

    fn is_locked(&self, key: &K, now: Instant) -> bool {
        self.records.get(key).and_then(|r| r.locked_until).is_some_and(|until| now < until)
    }

    fn backoff(&self, strikes: u32) -> Duration {
        let first = 1.0 / self.rate;
        let secs = first * 2f64.powi(strikes.min(30) as i32);
        Duration::from_secs_f64(secs).min(self.max_backoff)
    }

    /// Counts one failed check; Some(first) when it locked the key.
    /// None from an untracked key (table full) too.
    fn fail(&mut self, key: &K, now: Instant) -> Option<bool> {
        if let Some(r) = self.records.get(key).copied()
            && self.forgiven(&r, now)
        {
            self.records.remove(key);
        }
        if !self.records.contains_key(key) && self.records.len() >= self.max_keys {
            self.sweep(now);
            if self.records.len() >= self.max_keys {
                return None;
            }
        }
        let (burst, rate) = (self.burst, self.rate);
        let r =
            self.records.entry(key.clone()).or_insert(Record { level: 0.0, at: now, strikes: 0, locked_until: None });
        if r.strikes > 0 {
            // Already caught once and not yet forgiven: every failure locks again, longer.
            let strikes = r.strikes;
            let d = self.backoff(strikes);
            let r = self.records.get_mut(key)?;
            r.strikes += 1;
            r.locked_until = Some(now + d);
            return Some(false);
        }
        r.level = (r.level - now.saturating_duration_since(r.at).as_secs_f64() * rate).max(0.0) + 1.0;
        r.at = now;
        if r.level < burst {
            return None;
        }
        let d = self.backoff(0);
        let r = self.records.get_mut(key)?;
        r.strikes = 1;
        r.locked_until = Some(now + d);
        Some(true)
    }

    fn clear(&mut self, key: &K) {
        self.records.remove(key);
    }

    fn sweep(&mut self, now: Instant) {
        let mut records = std::mem::take(&mut self.records);
        records.retain(|_, r| !self.forgiven(r, now));
        self.records = records;
    }
}

/// The two ledgers.
#[derive(Debug)]
pub struct AuthThrottle {
    sources: Ledger<IpAddr>,
    users: Ledger<String>,
}

impl AuthThrottle {
    pub fn new(cfg: ThrottleConfig) -> Self {
        AuthThrottle {
            sources: Ledger::new(cfg.burst, cfg.source_per_sec, cfg.max_backoff, cfg.max_keys),
            users: Ledger::new(cfg.burst, cfg.user_per_sec, cfg.max_backoff, cfg.max_keys),
        }
    }

    /// Whether a request from `source` for `username` may have its integrity
    /// checked now; `Err` names the ledger that refuses it.
    pub fn gate(&self, source: IpAddr, username: &str, now: Instant) -> Result<(), Offender> {
        if self.sources.is_locked(&source, now) {
            return Err(Offender::Source);
        }
        // A lookup by &str without allocating a String.
        if self.users.records.get(username).and_then(|r| r.locked_until).is_some_and(|until| now < until) {
            return Err(Offender::Username);
        }
        Ok(())
    }

    /// A failed check. `username` is Some only when the user exists (a wrong
    /// password): unknown names only count against the source, so random
    /// names cannot fill the username table.
    pub fn record_failure(&mut self, source: IpAddr, username: Option<&str>, now: Instant) -> Locked {
        let source_first = self.sources.fail(&source, now) == Some(true);
        let user_first = username.is_some_and(|u| self.users.fail(&u.to_string(), now) == Some(true));
        Locked { source_first, user_first }
    }

    /// A successful login: the username's record goes, the source's stays.
    pub fn record_success(&mut self, username: &str) {
        if self.users.records.contains_key(username) {
            self.users.clear(&username.to_string());
        }
    }

    /// Forgets records that have been quiet long enough.
    pub fn sweep(&mut self, now: Instant) {
        self.sources.sweep(now);
        self.users.sweep(now);
    }

    /// Keys on record (sources, usernames).
    pub fn tracked(&self) -> (usize, usize) {
        (self.sources.records.len(), self.users.records.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Sends `n` guesses evenly over `over` starting at `t`; returns how many were checked.
    fn guess(th: &mut AuthThrottle, src: IpAddr, user: &str, t: Instant, n: u32, over: Duration) -> u32 {
        let mut checked = 0;
        for i in 0..n {
            let now = t + over.mul_f64(i as f64 / n as f64);
            if th.gate(src, user, now).is_ok() {
                checked += 1;
                th.record_failure(src, Some(user), now);
            }
        }
        checked
    }

    #[test]
    fn a_burst_of_ten_is_checked_then_the_source_is_locked() {
        let t0 = Instant::now();
        let mut th = AuthThrottle::new(ThrottleConfig::default());
        let a = ip("198.51.100.7");
        for i in 0..9 {
            assert!(th.gate(a, "alice", t0).is_ok(), "guess {i}");
            assert_eq!(th.record_failure(a, Some("alice"), t0), Locked::default());
        }
        assert!(th.gate(a, "alice", t0).is_ok());
        let l = th.record_failure(a, Some("alice"), t0);
        assert!(l.source_first && l.user_first, "the tenth failure locks both");
        assert_eq!(th.gate(a, "alice", t0), Err(Offender::Source));
        assert_eq!(th.gate(ip("198.51.100.8"), "bob", t0), Ok(()), "other sources and users are untouched");
        assert_eq!(th.gate(ip("198.51.100.8"), "alice", t0), Err(Offender::Username), "alice is locked everywhere");
        // First lock of the user ledger: 1/10 s; of the source: 1/2 s.
        assert_eq!(th.gate(ip("198.51.100.8"), "alice", t0 + Duration::from_millis(100)), Ok(()));
        assert_eq!(th.gate(a, "carol", t0 + Duration::from_millis(499)), Err(Offender::Source));
        assert_eq!(th.gate(a, "carol", t0 + Duration::from_millis(500)), Ok(()));
    }

    #[test]
    fn ten_thousand_guesses_from_one_source_are_mostly_never_checked() {
        let t0 = Instant::now();
        let mut th = AuthThrottle::new(ThrottleConfig::default());
        // 8,300 guesses/s (the rate of the break): 10,000 in 1.2 s.
        let checked = guess(&mut th, ip("198.51.100.7"), "alice", t0, 10_000, Duration::from_millis(1200));
        // 10 in the burst, then locks of 0.5 s, 1 s, ...: one more check at 0.5 s at most.
        assert!(checked <= 12, "{checked} checked");
        // Over a long run the growing backoff keeps it well under 2 per second.
        let t1 = t0 + Duration::from_secs(2);
        let checked = guess(&mut th, ip("198.51.100.7"), "alice", t1, 100_000, Duration::from_secs(600));
        assert!(checked <= 20, "{checked} checked in 10 min (2/s would be 1200)");
    }

    #[test]
    fn many_sources_against_one_username_are_held_to_its_rate() {
        let t0 = Instant::now();
        let mut th = AuthThrottle::new(ThrottleConfig::default());
        let mut checked = 0;
        // 1,000 sources, 5 guesses each (under the source burst), over 10 s.
        for i in 0..5000u32 {
            let src = IpAddr::from([203, 0, (i / 5 / 250) as u8, (i / 5 % 250) as u8 + 1]);
            let now = t0 + Duration::from_millis(i as u64 * 2);
            if th.gate(src, "alice", now).is_ok() {
                checked += 1;
                th.record_failure(src, Some("alice"), now);
            }
        }
        assert!(checked <= 10 + 10 * 10, "{checked} checked in 10 s: more than 10/s after the burst");
        assert!(checked >= 10);
    }

    #[test]
    fn the_owner_logging_in_clears_the_username_but_not_the_source() {
        let t0 = Instant::now();
        let mut th = AuthThrottle::new(ThrottleConfig::default());
        let a = ip("198.51.100.7");
        for _ in 0..10 {
            th.record_failure(a, Some("alice"), t0);
        }
        th.record_success("alice");
        assert_eq!(th.gate(ip("198.51.100.9"), "alice", t0), Ok(()));
        assert_eq!(th.gate(a, "alice", t0), Err(Offender::Source));
    }

    #[test]
    fn backoff_grows_and_is_forgiven_after_a_quiet_spell() {
        let t0 = Instant::now();
        let cfg = ThrottleConfig { max_backoff: Duration::from_secs(8), ..Default::default() };
        let mut th = AuthThrottle::new(cfg);
        let a = ip("198.51.100.7");
        for _ in 0..10 {
            th.record_failure(a, None, t0);
        }
        let mut t = t0;
        let mut locks = Vec::new();
        for _ in 0..6 {
            // Wait out the lock, fail once more.
            while th.gate(a, "x", t).is_err() {
                t += Duration::from_millis(10);
            }
            let start = t;
            th.record_failure(a, None, t);
            while th.gate(a, "x", t).is_err() {
                t += Duration::from_millis(10);
            }
            locks.push((t - start).as_millis());
        }
        assert_eq!(locks, [1000, 2000, 4000, 8000, 8000, 8000]);
        // Quiet for max_backoff after the last lock ended: a fresh burst.
        t += Duration::from_secs(8);
        th.sweep(t);
        assert_eq!(th.tracked(), (0, 0));
        for _ in 0..9 {
            th.record_failure(a, None, t);
        }
        assert_eq!(th.gate(a, "x", t), Ok(()));
    }

    #[test]
    fn unknown_usernames_only_count_against_the_source_and_tables_are_bounded() {
        let t0 = Instant::now();
        let mut th = AuthThrottle::new(ThrottleConfig { max_keys: 3, ..Default::default() });
        for i in 0..10u8 {
            th.record_failure(IpAddr::from([198, 51, 100, i]), None, t0);
        }
        assert_eq!(th.tracked(), (3, 0), "past the bound new keys are not tracked");
        assert_eq!(th.gate(IpAddr::from([198, 51, 100, 9]), "x", t0), Ok(()));
    }
}
