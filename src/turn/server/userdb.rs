//! Long-term users and REST secrets from a shared user database (coturn's
//! `redis-userdb` schema: `turn/realm/R/user/U/key` holds the hex RFC 8489
//! §9.2.2 key MD5(U:R:PASS), the set `turn/realm/R/secret` the TURN REST
//! secrets), next to `--user` and `--secret`, without the core ever waiting
//! on the database.
//!
//! The core keeps a cache of what the database said per username, found or
//! not found (so a flood of unknown usernames does not reach the database
//! again for the cache's lifetime), bounded in size. A request for an
//! uncached user is parked (a copy of its bytes, bounded in total and per
//! source address) and the core emits a [`Lookup`] effect, one per username
//! however many requests wait for it; the driver carries it out (async, with
//! a timeout) and hands the [`UserDbAnswer`] back to
//! [`Server::handle_userdb_answer`], which fills the cache and runs the
//! parked requests again from the top (FINGERPRINT, nonce, throttle, the
//! credential check), as if they had just arrived.
//!
//! When the database cannot be asked, the parked requests and, for
//! [`DOWN_FOR`] after that, every request for an uncached user, get
//! 500 Server Error (RFC 8489 §14.8: "temporary error, try again"), unsigned
//! and not counted as a failed login. coturn answers 401 in that case, as
//! if the user did not exist; that tells a client its password is wrong and,
//! here, would feed the password-guessing throttle and lock real users out
//! during an outage. Users in the cache keep working.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::auth::{self, AuthFailure, IntegrityKind, UserKey};
use super::{FiveTuple, Server, Target};
use crate::turn::credentials::{RestUsername, check_rest_username, long_term_key, rest_password};

/// After a failed lookup, how long uncached users get 500 without a new
/// lookup: a database that is down is not asked again for every request.
pub const DOWN_FOR: Duration = Duration::from_secs(1);

/// A request bigger than this is not parked (a real TURN request is a few
/// hundred bytes): bounds the memory of the parking lot to
/// `max_pending * MAX_PARKED_BYTES`.
pub const MAX_PARKED_BYTES: usize = 4096;

/// Limits of the user database cache and parking lot (each a `natkit relay` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserDbConfig {
    /// How long an answer (found or not found) is trusted.
    pub cache_ttl: Duration,
    /// Usernames the cache holds at most.
    pub max_cached: usize,
    /// Requests waiting for a lookup, in total and per source address.
    pub max_pending: usize,
    pub max_pending_per_source: usize,
    /// A parked request whose lookup has not come back by then is dropped
    /// (the driver's own timeout is shorter; this only guards the bound).
    pub pending_timeout: Duration,
}

impl Default for UserDbConfig {
    fn default() -> Self {
        UserDbConfig {
            cache_ttl: Duration::from_secs(30),
            max_cached: 100_000,
            max_pending: 1024,
            max_pending_per_source: 16,
            pending_timeout: Duration::from_secs(10),
        }
    }
}

/// The effect: "look up `username` in `realm`". `secrets` asks for the
/// realm's REST secrets too (the username has the REST form and has not expired).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lookup {
    pub realm: String,
    pub username: String,
    pub secrets: bool,
}

/// What the database holds for one username.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRecord {
    /// The long-term key, when the user exists.
    pub key: Option<[u8; 16]>,
    /// The realm's REST secrets (asked only for REST usernames).
    pub secrets: Vec<String>,
}

impl UserRecord {
    fn is_empty(&self) -> bool {
        self.key.is_none() && self.secrets.is_empty()
    }
}

/// The driver's answer to a [`Lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserDbAnswer {
    Found(UserRecord),
    /// The database could not be asked (down, timeout, error).
    Unavailable,
}

/// Counters, served as `natkit_relay_userdb_*`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserDbStats {
    pub lookups: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Lookups that failed (database down, timeout, error).
    pub errors: u64,
    /// Requests answered 500 because the database could not be asked.
    pub unavailable_answers: u64,
    /// Requests dropped: the parking lot was full (in total or for the source), too big, or timed out.
    pub pending_dropped: u64,
    /// Of those, dropped because their source address already had
    /// `max_pending_per_source` requests waiting: one address's flood, cut
    /// before it fills the parking lot that other addresses share.
    pub pending_dropped_per_source: u64,
}

struct Parked {
    from: FiveTuple,
    packet: Vec<u8>,
    at: Instant,
}

/// What the credential check concluded.
pub(super) enum Checked {
    Done(Result<(UserKey, IntegrityKind), AuthFailure>),
    /// Waiting for a lookup: no answer now.
    Parked,
    /// The database cannot be asked: answer 500.
    Unavailable,
}

/// The cache, the parking lot and the lookups to hand to the driver.
pub struct UserDb {
    cfg: UserDbConfig,
    cache: HashMap<String, (UserRecord, Instant)>,
    /// Parked requests by username; a key here means a lookup is in flight.
    pending: HashMap<String, Vec<Parked>>,
    pending_count: usize,
    per_source: HashMap<IpAddr, usize>,
    outbox: VecDeque<Lookup>,
    /// While set and in the future, uncached users get 500 without a lookup.
    down_until: Option<Instant>,
    /// The answer being applied to its parked requests (the cache may be full).
    answering: Option<(String, UserDbAnswer)>,
    stats: UserDbStats,
}

impl UserDb {
    pub fn new(cfg: UserDbConfig) -> UserDb {
        UserDb {
            cfg,
            cache: HashMap::new(),
            pending: HashMap::new(),
            pending_count: 0,
            per_source: HashMap::new(),
            outbox: VecDeque::new(),
            down_until: None,
            answering: None,
            stats: UserDbStats::default(),
        }
    }

    pub fn stats(&self) -> &UserDbStats {
        &self.stats
    }

    /// Requests parked now.
    pub fn pending(&self) -> usize {
        self.pending_count
    }

    /// What is known about `username` now, without asking anyone.
    fn known(&mut self, username: &str, now: Instant) -> Option<UserDbAnswer> {
        if let Some((u, a)) = &self.answering
            && u == username
        {
            return Some(a.clone());
        }
        match self.cache.get(username) {
            Some((r, expires)) if now < *expires => {
                self.stats.cache_hits += 1;
                Some(UserDbAnswer::Found(r.clone()))
            }
            _ => {
                self.stats.cache_misses += 1;
                self.down_until.filter(|t| now < *t).map(|_| UserDbAnswer::Unavailable)
            }
        }
    }

    /// Parks a request until `lookup` is answered; asks for the lookup when
    /// no other request waits for the same username. False when it was
    /// dropped instead (counted).
    fn park(&mut self, lookup: Lookup, from: FiveTuple, packet: &[u8], now: Instant) -> bool {
        let ip = from.remote.ip();
        let source_n = self.per_source.get(&ip).copied().unwrap_or(0);
        let source_full = source_n >= self.cfg.max_pending_per_source;
        if packet.len() > MAX_PARKED_BYTES || self.pending_count >= self.cfg.max_pending || source_full {
            self.stats.pending_dropped += 1;
            self.stats.pending_dropped_per_source += u64::from(source_full);
            return false;
        }
        let waiting = self.pending.entry(lookup.username.clone()).or_default();
        if waiting.is_empty() {
            self.stats.lookups += 1;
            self.outbox.push_back(lookup);
        }
        waiting.push(Parked { from, packet: packet.to_vec(), at: now });
        self.pending_count += 1;
        *self.per_source.entry(ip).or_insert(0) += 1;
        true
    }

    fn unpark(&mut self, p: &Parked) {
        self.pending_count -= 1;
        let ip = p.from.remote.ip();
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }

    /// Stores an answer; returns the requests that waited for it.
    fn answer(&mut self, username: &str, answer: &UserDbAnswer, now: Instant) -> Vec<Parked> {
        match answer {
            UserDbAnswer::Found(r) => {
                self.down_until = None;
                if self.cache.len() >= self.cfg.max_cached && !self.cache.contains_key(username) {
                    self.cache.retain(|_, (_, exp)| now < *exp);
                    if self.cache.len() >= self.cfg.max_cached
                        && let Some(victim) = self.cache.keys().next().cloned()
                    {
                        self.cache.remove(&victim);
                    }
                }
                if self.cfg.max_cached > 0 {
                    self.cache.insert(username.to_string(), (r.clone(), now + self.cfg.cache_ttl));
                }
            }
            UserDbAnswer::Unavailable => {
                self.stats.errors += 1;
                self.down_until = Some(now + DOWN_FOR);
            }
        }
        let parked = self.pending.remove(username).unwrap_or_default();
        for p in &parked {
            self.unpark(p);
        }
        parked
    }

    /// Drops the requests `client` has parked (its TCP/TLS connection closed:
    /// an Allocate run later would make an allocation nobody can use).
    fn forget(&mut self, client: FiveTuple) {
        let mut gone = Vec::new();
        for waiting in self.pending.values_mut() {
            let (from_client, keep): (Vec<Parked>, Vec<Parked>) = waiting.drain(..).partition(|p| p.from == client);
            *waiting = keep;
            gone.extend(from_client);
        }
        self.pending.retain(|_, w| !w.is_empty());
        for p in &gone {
            self.unpark(p);
        }
    }

    /// Forgets expired cache entries and parked requests whose lookup never came back.
    fn sweep(&mut self, now: Instant) {
        self.cache.retain(|_, (_, exp)| now < *exp);
        let timeout = self.cfg.pending_timeout;
        let mut dropped = Vec::new();
        for waiting in self.pending.values_mut() {
            let (old, keep): (Vec<Parked>, Vec<Parked>) =
                waiting.drain(..).partition(|p| now.saturating_duration_since(p.at) >= timeout);
            *waiting = keep;
            dropped.extend(old);
        }
        // A username left without parked requests has no lookup in flight any more: its answer only fills the cache.
        self.pending.retain(|_, w| !w.is_empty());
        self.stats.pending_dropped += dropped.len() as u64;
        for p in &dropped {
            self.unpark(p);
        }
    }
}

impl Server {
    /// Counters of the user database, when one is configured.
    pub fn userdb_stats(&self) -> Option<&UserDbStats> {
        self.userdb.as_ref().map(|d| d.stats())
    }

    /// Requests waiting for a lookup now.
    pub fn userdb_pending(&self) -> usize {
        self.userdb.as_ref().map_or(0, |d| d.pending())
    }

    /// The next lookup the driver must carry out (an effect); the answer
    /// goes to [`Server::handle_userdb_answer`].
    pub fn poll_userdb_lookup(&mut self) -> Option<Lookup> {
        self.userdb.as_mut()?.outbox.pop_front()
    }

    /// The answer to a [`Lookup`]: fills the cache and runs the requests
    /// that waited for it again; returns what to send.
    pub fn handle_userdb_answer(
        &mut self,
        lookup: &Lookup,
        answer: UserDbAnswer,
        now: Instant,
    ) -> Vec<(Target, Vec<u8>)> {
        let Some(db) = self.userdb.as_mut() else { return Vec::new() };
        let parked = db.answer(&lookup.username, &answer, now);
        db.answering = Some((lookup.username.clone(), answer));
        let mut out = Vec::new();
        for p in parked {
            // Counted once when it first arrived.
            self.stats.requests = self.stats.requests.saturating_sub(1);
            if let Some(t) = self.handle_client(p.from, &p.packet, now) {
                out.push((t.target, t.payload.to_vec()));
            }
        }
        if let Some(db) = self.userdb.as_mut() {
            db.answering = None;
        }
        out
    }

    pub(super) fn forget_parked(&mut self, client: FiveTuple) {
        if let Some(db) = self.userdb.as_mut()
            && db.pending_count > 0
        {
            db.forget(client);
        }
    }

    pub(super) fn sweep_userdb(&mut self, now: Instant) {
        if let Some(db) = self.userdb.as_mut() {
            db.sweep(now);
        }
    }

    /// The key check of RFC 8489 §9.2.4 over every source of keys: `--user`
    /// and `--secret` first (never a lookup), then the user database.
    pub(super) fn check_credentials(
        &mut self,
        from: FiveTuple,
        packet: &[u8],
        username: &str,
        now: Instant,
    ) -> Checked {
        let wall = self.wall(now);
        let flagged = self.auth.key_for(username, wall);
        if let Ok(k) = &flagged
            && let Some(kind) = auth::verify_integrity(packet, &k.key)
        {
            return Checked::Done(Ok((k.clone(), kind)));
        }
        let rest = check_rest_username(username, wall);
        let realm = self.auth.realm().to_string();
        let Some(db) = self.userdb.as_mut() else {
            return Checked::Done(flagged.and(Err(AuthFailure::BadIntegrity)));
        };
        if flagged.is_ok() && rest == RestUsername::Malformed {
            // A `--user` with a wrong password: the database is not asked about a name the flags own.
            return Checked::Done(Err(AuthFailure::BadIntegrity));
        }
        let record = match db.known(username, now) {
            Some(UserDbAnswer::Found(r)) => r,
            Some(UserDbAnswer::Unavailable) => {
                db.stats.unavailable_answers += 1;
                return Checked::Unavailable;
            }
            None => {
                let lookup = Lookup {
                    realm,
                    username: username.to_string(),
                    secrets: matches!(rest, RestUsername::Valid { .. }),
                };
                db.park(lookup, from, packet, now);
                return Checked::Parked;
            }
        };
        if let Some(key) = record.key
            && let Some(kind) = auth::verify_integrity(packet, &key)
        {
            // Only the key is known: answers are signed with it (see encode).
            return Checked::Done(Ok((UserKey { username: username.to_string(), password: String::new(), key }, kind)));
        }
        if matches!(rest, RestUsername::Valid { .. }) {
            for secret in &record.secrets {
                let password = rest_password(secret, username);
                let key = long_term_key(username, &realm, &password);
                if let Some(kind) = auth::verify_integrity(packet, &key) {
                    return Checked::Done(Ok((UserKey { username: username.to_string(), password, key }, kind)));
                }
            }
        }
        let why = if flagged.is_ok() || record.key.is_some() || (rest != RestUsername::Malformed && !record.is_empty())
        {
            AuthFailure::BadIntegrity
        } else if rest == RestUsername::Expired {
            AuthFailure::ExpiredRestUsername
        } else {
            AuthFailure::UnknownUser
        };
        Checked::Done(Err(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::transport::Transport;

    fn ft(ip: &str, port: u16) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            local: "127.0.0.1:3478".parse().unwrap(),
            remote: format!("{ip}:{port}").parse().unwrap(),
        }
    }

    fn lookup(u: &str) -> Lookup {
        Lookup { realm: "r".into(), username: u.into(), secrets: false }
    }

    fn cfg() -> UserDbConfig {
        UserDbConfig {
            cache_ttl: Duration::from_secs(30),
            max_cached: 3,
            max_pending: 4,
            max_pending_per_source: 2,
            pending_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn one_lookup_per_username_however_many_requests_wait() {
        let t0 = Instant::now();
        let mut db = UserDb::new(cfg());
        assert!(db.park(lookup("alice"), ft("198.51.100.1", 1), b"a", t0));
        assert!(db.park(lookup("alice"), ft("198.51.100.2", 1), b"b", t0));
        assert_eq!(db.outbox.len(), 1);
        assert_eq!(db.stats.lookups, 1);
        let parked = db.answer("alice", &UserDbAnswer::Found(UserRecord { key: Some([1; 16]), secrets: vec![] }), t0);
        assert_eq!(parked.len(), 2);
        assert_eq!(db.pending(), 0);
        assert!(db.per_source.is_empty());
    }

    #[test]
    fn the_parking_lot_is_bounded_in_total_per_source_and_in_size() {
        let t0 = Instant::now();
        let mut db = UserDb::new(cfg());
        assert!(db.park(lookup("u1"), ft("198.51.100.1", 1), b"x", t0));
        assert!(db.park(lookup("u2"), ft("198.51.100.1", 2), b"x", t0));
        assert!(!db.park(lookup("u3"), ft("198.51.100.1", 3), b"x", t0), "per-source bound");
        assert!(db.park(lookup("u3"), ft("198.51.100.2", 1), b"x", t0));
        assert!(!db.park(lookup("u4"), ft("198.51.100.3", 1), &[0; MAX_PARKED_BYTES + 1], t0), "too big");
        assert!(db.park(lookup("u4"), ft("198.51.100.3", 1), b"x", t0));
        assert!(!db.park(lookup("u5"), ft("198.51.100.4", 1), b"x", t0), "total bound");
        assert_eq!(db.stats.pending_dropped, 3);
        assert_eq!(db.stats.pending_dropped_per_source, 1, "only the per-source refusal counts as one address's flood");
        assert_eq!(db.outbox.len(), 4, "a dropped request asks for nothing");
    }

    #[test]
    fn answers_are_cached_found_or_not_until_the_ttl_and_the_cache_is_bounded() {
        let t0 = Instant::now();
        let mut db = UserDb::new(cfg());
        let found = UserDbAnswer::Found(UserRecord { key: Some([7; 16]), secrets: vec![] });
        let none = UserDbAnswer::Found(UserRecord::default());
        db.answer("alice", &found, t0);
        db.answer("ghost", &none, t0);
        assert_eq!(db.known("alice", t0 + Duration::from_secs(29)), Some(found.clone()));
        assert_eq!(db.known("ghost", t0 + Duration::from_secs(29)), Some(none.clone()), "negative entries too");
        assert_eq!(db.known("alice", t0 + Duration::from_secs(30)), None, "expired: ask again");
        for u in ["b", "c", "d", "e"] {
            db.answer(u, &none, t0);
        }
        assert!(db.cache.len() <= 3);
        db.sweep(t0 + Duration::from_secs(31));
        assert!(db.cache.is_empty());
    }

    #[test]
    fn a_failed_lookup_answers_uncached_users_500_for_a_while_and_keeps_cached_ones() {
        let t0 = Instant::now();
        let mut db = UserDb::new(cfg());
        let found = UserDbAnswer::Found(UserRecord { key: Some([7; 16]), secrets: vec![] });
        db.answer("alice", &found, t0);
        db.park(lookup("bob"), ft("198.51.100.1", 1), b"x", t0);
        let parked = db.answer("bob", &UserDbAnswer::Unavailable, t0);
        assert_eq!(parked.len(), 1);
        assert_eq!(db.stats.errors, 1);
        assert_eq!(db.known("carol", t0 + Duration::from_millis(500)), Some(UserDbAnswer::Unavailable));
        assert_eq!(db.known("alice", t0 + Duration::from_millis(500)), Some(found));
        assert_eq!(db.known("carol", t0 + DOWN_FOR), None, "then a lookup is tried again");
    }

    #[test]
    fn a_closed_connection_takes_its_parked_requests_with_it() {
        let t0 = Instant::now();
        let mut db = UserDb::new(cfg());
        let tcp = FiveTuple { transport: Transport::Tcp, ..ft("198.51.100.1", 1) };
        db.park(lookup("bob"), tcp, b"x", t0);
        db.park(lookup("bob"), ft("198.51.100.2", 1), b"y", t0);
        db.forget(tcp);
        assert_eq!(db.pending(), 1);
        let parked = db.answer("bob", &UserDbAnswer::Found(UserRecord::default()), t0);
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].packet, b"y");
    }

    #[test]
    fn parked_requests_whose_lookup_never_returns_are_dropped() {
        let t0 = Instant::now();
        let mut db = UserDb::new(cfg());
        db.park(lookup("bob"), ft("198.51.100.1", 1), b"x", t0);
        db.sweep(t0 + Duration::from_secs(9));
        assert_eq!(db.pending(), 1);
        db.sweep(t0 + Duration::from_secs(10));
        assert_eq!(db.pending(), 0);
        assert!(db.pending.is_empty() && db.per_source.is_empty());
        assert_eq!(db.stats.pending_dropped, 1);
    }

    // The whole core with a user database and a fake clock.

    use std::time::UNIX_EPOCH;

    use stun_rs::attributes::stun::{MessageIntegrity, Nonce, Realm, UserName};
    use stun_rs::attributes::turn::RequestedTrasport;
    use stun_rs::methods::ALLOCATE;
    use stun_rs::{Algorithm, AlgorithmId, HMACKey, MessageClass, StunMessage, StunMessageBuilder, TransactionId};

    use super::super::throttle::ThrottleConfig;
    use super::super::{Family, RelayId, RelayOpenError, RelayPorts, ServerConfig};

    struct Ports(u64);

    impl RelayPorts for Ports {
        fn open(&mut self, _: Family) -> Result<(RelayId, std::net::SocketAddr), RelayOpenError> {
            self.0 += 1;
            Ok((RelayId(self.0), std::net::SocketAddr::new("198.51.100.1".parse().unwrap(), 50_000 + self.0 as u16)))
        }
        fn close(&mut self, _: RelayId) {}
    }

    const WALL: u64 = 1_700_000_000;

    fn server(ttl: Duration) -> (Server, Instant) {
        let cfg = ServerConfig {
            realm: "lab".into(),
            userdb: Some(UserDbConfig { cache_ttl: ttl, ..UserDbConfig::default() }),
            throttle: ThrottleConfig { burst: 3, ..ThrottleConfig::default() },
            ..ServerConfig::default()
        };
        let t0 = Instant::now();
        (Server::new(cfg, Box::new(Ports(0)), t0, UNIX_EPOCH + Duration::from_secs(WALL)), t0)
    }

    fn allocate_req(auth: Option<(&str, &str, &str)>) -> Vec<u8> {
        let mut b = StunMessageBuilder::new(ALLOCATE, MessageClass::Request)
            .with_transaction_id(TransactionId::from(crate::stun::message::new_transaction_id()))
            .with_attribute(RequestedTrasport::new(stun_rs::protocols::UDP));
        if let Some((user, pass, nonce)) = auth {
            let key = HMACKey::new_long_term(user, "lab", pass, Algorithm::from(AlgorithmId::MD5)).unwrap();
            b = b
                .with_attribute(UserName::new(user).unwrap())
                .with_attribute(Realm::new("lab").unwrap())
                .with_attribute(Nonce::new(nonce).unwrap())
                .with_attribute(MessageIntegrity::new(key));
        }
        crate::stun::message::encode(&b.build())
    }

    fn send(s: &mut Server, from: FiveTuple, req: &[u8], now: Instant) -> Option<Vec<u8>> {
        s.handle_client(from, req, now).map(|t| t.payload.to_vec())
    }

    fn code(m: &StunMessage) -> Option<u16> {
        m.attributes().iter().find_map(|a| a.as_error_code().ok()).map(|e| e.error_code().error_code())
    }

    fn nonce(s: &mut Server, from: FiveTuple, now: Instant) -> String {
        let out = s.handle_client(from, &allocate_req(None), now).expect("a 401").payload.to_vec();
        let m = crate::stun::message::decode(&out).unwrap();
        m.attributes().iter().find_map(|a| a.as_nonce().ok()).unwrap().as_str().to_string()
    }

    fn key(user: &str, pass: &str) -> [u8; 16] {
        long_term_key(user, "lab", pass)
    }

    #[test]
    fn a_database_user_allocates_after_one_lookup_and_the_answer_is_signed_with_its_key() {
        let (mut s, t0) = server(Duration::from_secs(30));
        let c = ft("203.0.113.10", 4000);
        let n = nonce(&mut s, c, t0);
        let req = allocate_req(Some(("carol", "pw", &n)));
        assert!(s.handle_client(c, &req, t0).is_none(), "parked, not answered");
        let l = s.poll_userdb_lookup().expect("a lookup effect");
        assert_eq!(l, Lookup { realm: "lab".into(), username: "carol".into(), secrets: false });
        assert_eq!(s.poll_userdb_lookup(), None);
        let answer = UserDbAnswer::Found(UserRecord { key: Some(key("carol", "pw")), secrets: vec![] });
        let out = s.handle_userdb_answer(&l, answer, t0);
        assert_eq!(out.len(), 1);
        let m = crate::stun::message::decode(&out[0].1).unwrap();
        assert_eq!(m.class(), MessageClass::SuccessResponse, "error {:?}", code(&m));
        assert!(auth::verify_integrity(&out[0].1, &key("carol", "pw")).is_some(), "signed with the database key");
        assert_eq!(s.stats().allocations_created, 1);
        // A second client of the same user: from the cache, no lookup.
        let c2 = ft("203.0.113.11", 4000);
        let n2 = nonce(&mut s, c2, t0);
        let t = send(&mut s, c2, &allocate_req(Some(("carol", "pw", &n2))), t0).expect("answered at once");
        assert_eq!(crate::stun::message::decode(&t).unwrap().class(), MessageClass::SuccessResponse);
        assert_eq!(s.poll_userdb_lookup(), None);
        let st = s.userdb_stats().unwrap();
        assert_eq!((st.lookups, st.cache_hits), (1, 1));
        // Past the TTL the database is asked again.
        let later = t0 + Duration::from_secs(31);
        let c3 = ft("203.0.113.12", 4000);
        let n3 = nonce(&mut s, c3, later);
        assert!(s.handle_client(c3, &allocate_req(Some(("carol", "pw", &n3))), later).is_none());
        assert!(s.poll_userdb_lookup().is_some());
    }

    #[test]
    fn an_unknown_user_is_cached_as_unknown_and_refused_401() {
        let (mut s, t0) = server(Duration::from_secs(30));
        let c = ft("203.0.113.10", 4000);
        let n = nonce(&mut s, c, t0);
        assert!(s.handle_client(c, &allocate_req(Some(("ghost", "pw", &n))), t0).is_none());
        let l = s.poll_userdb_lookup().unwrap();
        let out = s.handle_userdb_answer(&l, UserDbAnswer::Found(UserRecord::default()), t0);
        assert_eq!(code(&crate::stun::message::decode(&out[0].1).unwrap()), Some(401));
        assert_eq!(s.stats().auth_failures[AuthFailure::UnknownUser.index()], 1);
        let t = send(&mut s, c, &allocate_req(Some(("ghost", "pw", &n))), t0).expect("from the cache");
        assert_eq!(code(&crate::stun::message::decode(&t).unwrap()), Some(401));
        assert_eq!(s.poll_userdb_lookup(), None, "a negative entry is not asked again");
    }

    #[test]
    fn a_rest_secret_from_the_database_signs_rest_usernames() {
        let (mut s, t0) = server(Duration::from_secs(30));
        let c = ft("203.0.113.10", 4000);
        let n = nonce(&mut s, c, t0);
        let user = format!("{}:dave", WALL + 600);
        let pass = rest_password("second", &user);
        assert!(s.handle_client(c, &allocate_req(Some((&user, &pass, &n))), t0).is_none());
        let l = s.poll_userdb_lookup().unwrap();
        assert!(l.secrets, "a REST username asks for the realm's secrets");
        let rec = UserRecord { key: None, secrets: vec!["first".into(), "second".into()] };
        let out = s.handle_userdb_answer(&l, UserDbAnswer::Found(rec), t0);
        let m = crate::stun::message::decode(&out[0].1).unwrap();
        assert_eq!(m.class(), MessageClass::SuccessResponse, "error {:?}", code(&m));
        // An expired REST username asks for no secret and is refused as expired.
        let old = format!("{}:dave", WALL - 1);
        assert!(s.handle_client(c, &allocate_req(Some((&old, "x", &n))), t0).is_none());
        let l = s.poll_userdb_lookup().unwrap();
        assert!(!l.secrets);
        let out = s.handle_userdb_answer(&l, UserDbAnswer::Found(UserRecord::default()), t0);
        assert_eq!(code(&crate::stun::message::decode(&out[0].1).unwrap()), Some(401));
        assert_eq!(s.stats().auth_failures[AuthFailure::ExpiredRestUsername.index()], 1);
    }

    #[test]
    fn database_down_answers_500_without_feeding_the_throttle_and_cached_users_still_work() {
        let (mut s, t0) = server(Duration::from_secs(30));
        let c = ft("203.0.113.10", 4000);
        let n = nonce(&mut s, c, t0);
        // carol is cached while the database is up.
        s.handle_client(c, &allocate_req(Some(("carol", "pw", &n))), t0);
        let l = s.poll_userdb_lookup().unwrap();
        s.handle_userdb_answer(
            &l,
            UserDbAnswer::Found(UserRecord { key: Some(key("carol", "pw")), secrets: vec![] }),
            t0,
        );
        // Then it goes down: the parked request and, for a while, every uncached user get 500.
        let d = ft("203.0.113.20", 4000);
        let nd = nonce(&mut s, d, t0);
        assert!(s.handle_client(d, &allocate_req(Some(("erin", "pw", &nd))), t0).is_none());
        let l = s.poll_userdb_lookup().unwrap();
        let out = s.handle_userdb_answer(&l, UserDbAnswer::Unavailable, t0);
        assert_eq!(code(&crate::stun::message::decode(&out[0].1).unwrap()), Some(500));
        for i in 0..10 {
            let t = send(&mut s, d, &allocate_req(Some((&format!("u{i}"), "pw", &nd))), t0).expect("500 at once");
            assert_eq!(code(&crate::stun::message::decode(&t).unwrap()), Some(500));
        }
        assert_eq!(s.poll_userdb_lookup(), None, "no lookup while the database is known to be down");
        assert_eq!(s.stats().auth_throttled.iter().sum::<u64>(), 0, "an outage is not a failed login");
        let st = s.userdb_stats().unwrap();
        assert_eq!((st.errors, st.unavailable_answers), (1, 11));
        let c2 = ft("203.0.113.11", 4000);
        let n2 = nonce(&mut s, c2, t0);
        let t = send(&mut s, c2, &allocate_req(Some(("carol", "pw", &n2))), t0).expect("cached user");
        assert_eq!(crate::stun::message::decode(&t).unwrap().class(), MessageClass::SuccessResponse);
        // After DOWN_FOR a lookup is tried again.
        let later = t0 + DOWN_FOR;
        assert!(s.handle_client(d, &allocate_req(Some(("erin", "pw", &nd))), later).is_none());
        assert!(s.poll_userdb_lookup().is_some());
    }

    #[test]
    fn the_throttle_refuses_a_locked_source_before_any_lookup() {
        let (mut s, t0) = server(Duration::from_secs(30));
        let c = ft("203.0.113.10", 4000);
        let n = nonce(&mut s, c, t0);
        let mut lookups = 0;
        for i in 0..100 {
            s.handle_client(c, &allocate_req(Some((&format!("nobody{i}"), "pw", &n))), t0);
            while let Some(l) = s.poll_userdb_lookup() {
                lookups += 1;
                s.handle_userdb_answer(&l, UserDbAnswer::Found(UserRecord::default()), t0);
            }
        }
        assert_eq!(lookups, 3, "the source is locked after the burst of 3 unknown users");
        assert!(s.stats().auth_throttled.iter().sum::<u64>() >= 97);
    }
}
