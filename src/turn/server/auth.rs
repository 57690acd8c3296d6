//! Long-term credentials on the server side (RFC 8489 §9.2.4, RFC 8656 §7.2):
//! static users (`--user NAME:PASS`) and TURN REST usernames checked against
//! a shared secret (`--secret`, coturn's `use-auth-secret`), the
//! MESSAGE-INTEGRITY / MESSAGE-INTEGRITY-SHA256 check over the raw bytes, and
//! the per-source limit on 401 answers to failed credentials.
//!
//! Keys and REST passwords come from [`crate::turn::credentials`], the same
//! code the clients use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;
use sha2::Sha256;

use crate::stun::message::{HEADER_LEN, attributes};
use crate::turn::credentials::{RestUsername, check_rest_username, long_term_key, rest_password};

pub const MESSAGE_INTEGRITY: u16 = 0x0008;
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;

/// Why credentials were refused; also the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFailure {
    UnknownUser,
    /// MESSAGE-INTEGRITY does not match: wrong password (or realm).
    BadIntegrity,
    ExpiredRestUsername,
    MalformedRestUsername,
    /// The realm the client used is not ours.
    WrongRealm,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 5] = [
        AuthFailure::UnknownUser,
        AuthFailure::BadIntegrity,
        AuthFailure::ExpiredRestUsername,
        AuthFailure::MalformedRestUsername,
        AuthFailure::WrongRealm,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::ExpiredRestUsername => "expired_rest_username",
            AuthFailure::MalformedRestUsername => "malformed_rest_username",
            AuthFailure::WrongRealm => "wrong_realm",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which integrity attribute the client used; the answer uses the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityKind {
    Sha1,
    Sha256,
}

/// A user's key material, enough to check requests and sign answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKey {
    pub username: String,
    pub password: String,
    pub key: [u8; 16],
}

/// Who may use the relay.
#[derive(Debug, Clone)]
pub struct Authenticator {
    realm: String,
    users: HashMap<String, String>,
    secret: Option<String>,
}

impl Authenticator {
    pub fn new(realm: String, users: HashMap<String, String>, secret: Option<String>) -> Self {
        Authenticator { realm, users, secret }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The key for `username`: a static user first, then a REST username if a secret is set.
    pub fn key_for(&self, username: &str, wall: SystemTime) -> Result<UserKey, AuthFailure> {
        let password = if let Some(p) = self.users.get(username) {
            p.clone()
        } else if let Some(secret) = &self.secret {
            match check_rest_username(username, wall) {
                RestUsername::Valid { .. } => rest_password(secret, username),
                RestUsername::Expired => return Err(AuthFailure::ExpiredRestUsername),
                RestUsername::Malformed => return Err(AuthFailure::MalformedRestUsername),
            }
        } else {
            return Err(AuthFailure::UnknownUser);
        };
        let key = long_term_key(username, &self.realm, &password);
        Ok(UserKey { username: username.to_string(), password, key })
    }
}

/// Where the integrity attribute sits and what it claims.
struct IntegrityAttr<'a> {
    start: usize,
    kind: IntegrityKind,
    value: &'a [u8],
}

/// Finds MESSAGE-INTEGRITY-SHA256 (preferred) or MESSAGE-INTEGRITY in a
/// message whose header passed `looks_like_stun`.
fn find_integrity(bytes: &[u8]) -> Option<IntegrityAttr<'_>> {
    let mut found: Option<IntegrityAttr<'_>> = None;
    for (start, t, value) in attributes(bytes) {
        match t {
            MESSAGE_INTEGRITY_SHA256 => return Some(IntegrityAttr { start, kind: IntegrityKind::Sha256, value }),
            // MESSAGE-INTEGRITY-SHA256 may follow MESSAGE-INTEGRITY (RFC 8489 §14.6); keep looking.
            MESSAGE_INTEGRITY if found.is_none() => {
                found = Some(IntegrityAttr { start, kind: IntegrityKind::Sha1, value })
            }
            _ => {}
        }
    }
    found
}

/// Whether the message carries an integrity attribute at all.
pub fn has_integrity(bytes: &[u8]) -> bool {
    find_integrity(bytes).is_some()
}

/// Checks the integrity attribute with `key` (RFC 8489 §14.5, §14.6): the HMAC
/// covers the message up to the attribute, with the header length counting
/// up to and including it. Returns the kind used when it matches.
pub fn verify_integrity(bytes: &[u8], key: &[u8]) -> Option<IntegrityKind> {
    let a = find_integrity(bytes)?;
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&bytes[..HEADER_LEN]);
    let covered_len = (a.start + 4 + a.value.len() - HEADER_LEN) as u16;
    header[2..4].copy_from_slice(&covered_len.to_be_bytes());
    let ok = match a.kind {
        IntegrityKind::Sha1 => {
            let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).ok()?;
            m.update(&header);
            m.update(&bytes[HEADER_LEN..a.start]);
            a.value.len() == 20 && m.verify_slice(a.value).is_ok()
        }
        IntegrityKind::Sha256 => {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
            m.update(&header);
            m.update(&bytes[HEADER_LEN..a.start]);
            // RFC 8489 §14.6: at least 16 bytes, truncation allowed.
            (16..=32).contains(&a.value.len()) && a.value.len() % 4 == 0 && m.verify_truncated_left(a.value).is_ok()
        }
    };
    ok.then_some(a.kind)
}

/// Token buckets per source IP for 401 answers to failed credentials, so a
/// password guesser gets a few answers a second and then silence.
#[derive(Debug)]
pub struct FailureLimiter {
    burst: f64,
    per_sec: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    max_sources: usize,
}

impl FailureLimiter {
    pub fn new(burst: u32, per_sec: f64) -> Self {
        FailureLimiter { burst: burst as f64, per_sec, buckets: HashMap::new(), max_sources: 100_000 }
    }

    /// Whether one more 401 may be sent to `ip` now.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= self.max_sources && !self.buckets.contains_key(&ip) {
            self.sweep(now);
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        let (burst, rate) = (self.burst, self.per_sec);
        let (tokens, at) = self.buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets sources whose bucket has refilled.
    pub fn sweep(&mut self, now: Instant) {
        let full_after = Duration::from_secs_f64(self.burst / self.per_sec.max(0.001));
        self.buckets.retain(|_, (_, at)| now.saturating_duration_since(*at) < full_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_users_and_rest_usernames() {
        let users = HashMap::from([("alice".to_string(), "pw".to_string())]);
        let a = Authenticator::new("r".into(), users, Some("s3cret".into()));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let k = a.key_for("alice", now).unwrap();
        assert_eq!(k.key, long_term_key("alice", "r", "pw"));
        let k = a.key_for("2000:bob", now).unwrap();
        assert_eq!(k.password, rest_password("s3cret", "2000:bob"));
        assert_eq!(a.key_for("999:bob", now), Err(AuthFailure::ExpiredRestUsername));
        assert_eq!(a.key_for("bob", now), Err(AuthFailure::MalformedRestUsername));
        let no_secret = Authenticator::new("r".into(), HashMap::new(), None);
        assert_eq!(no_secret.key_for("2000:bob", now), Err(AuthFailure::UnknownUser));
    }

    #[test]
    fn limiter_allows_a_burst_then_refills() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(3, 1.0);
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let other: IpAddr = "198.51.100.10".parse().unwrap();
        assert!(l.allow(ip, t0) && l.allow(ip, t0) && l.allow(ip, t0));
        assert!(!l.allow(ip, t0));
        assert!(l.allow(other, t0), "limits are per source");
        assert!(l.allow(ip, t0 + Duration::from_millis(1001)));
        assert!(!l.allow(ip, t0 + Duration::from_millis(1002)));
        l.sweep(t0 + Duration::from_secs(60));
        assert!(l.buckets.is_empty());
    }
}
