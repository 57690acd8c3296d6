//! The allocations table (RFC 8656 §2.2, §6): one allocation per client
//! 5-tuple, each with a relayed transport address (a socket the driver owns,
//! named by a [`RelayId`]), a lifetime, permissions and channels. Indexed by
//! client 5-tuple, by relay socket and by relayed address, so every packet
//! finds its allocation with one hash lookup.
//!
//! The tables hash with foldhash (seeded at random per process) instead of
//! std's SipHash: a lookup sits on every relayed packet, and SipHash of a
//! 5-tuple cost more than the rest of the table work. Flooding a table with
//! colliding keys (HashDoS) is what SipHash guards against; here nobody can
//! insert at will: an entry exists only for an authenticated allocation, and
//! their number is bounded by `--max-allocations`, the per-user and the
//! per-source quotas; packets with attacker-chosen addresses only look up.
//! The seed is random, so the attacker cannot pick colliding keys offline
//! either.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::auth::{IntegrityKind, UserKey};
use super::channels::Channels;
use super::permissions::Permissions;
use super::{FiveTuple, RelayId};
use crate::turn::server::peer_policy::canonical;

/// RFC 8656 §7.2: 10 minutes unless the client asks for another lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// The cap on any requested lifetime (RFC 8656 suggests 3600 s).
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct Allocation {
    pub client: FiveTuple,
    pub relay: RelayId,
    /// What XOR-RELAYED-ADDRESS says (with `--external-ip`, not what the socket is bound to).
    pub relayed: SocketAddr,
    /// The relayed socket's own address.
    pub bound: SocketAddr,
    pub user: UserKey,
    pub integrity: IntegrityKind,
    pub expires: Instant,
    pub permissions: Permissions,
    pub channels: Channels,
    /// The Allocate transaction that made it: a retransmission gets the same answer.
    pub transaction: [u8; 12],
}

/// A requested lifetime turned into the one granted: 0 stays 0 (delete),
/// below the default becomes the default, above the cap becomes the cap.
pub fn granted_lifetime(requested: Option<u32>, max: Duration) -> Duration {
    match requested {
        None => DEFAULT_LIFETIME.min(max),
        Some(0) => Duration::ZERO,
        Some(s) => Duration::from_secs(s as u64).clamp(DEFAULT_LIFETIME.min(max), max),
    }
}

/// A table of this module: std's map with foldhash (see the module doc for why it is safe here).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
pub struct Allocations {
    by_relay: Map<RelayId, Allocation>,
    by_client: Map<FiveTuple, RelayId>,
    by_relayed: Map<SocketAddr, RelayId>,
    per_user: Map<String, u32>,
    /// Allocations per client IP (the quota per source address).
    per_source: Map<IpAddr, u32>,
    /// Relayed addresses of allocations that ended, and since when (None until the next
    /// sweep stamps it): a channel or permission another allocation still holds to one of
    /// them must not reach whatever process binds that port next.
    freed: Map<SocketAddr, Option<Instant>>,
}

/// How long an ended allocation's relayed address stays refused as a peer: the longest a
/// channel binding to it can live elsewhere (RFC 8656 §12: 10 minutes), with a margin.
pub const FREED_QUARANTINE: Duration = Duration::from_secs(660);
/// Freed addresses remembered at most; past it the oldest-stamped go first at the sweep.
const MAX_FREED: usize = 200_000;

impl Allocations {
    pub fn len(&self) -> usize {
        self.by_relay.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_relay.is_empty()
    }

    pub fn user_count(&self, user: &str) -> u32 {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    /// Allocations whose client is at `ip` (canonically: `::ffff:a.b.c.d` counts as `a.b.c.d`).
    pub fn source_count(&self, ip: IpAddr) -> u32 {
        self.per_source.get(&canonical(ip)).copied().unwrap_or(0)
    }

    pub fn insert(&mut self, a: Allocation) {
        *self.per_user.entry(a.user.username.clone()).or_default() += 1;
        *self.per_source.entry(canonical(a.client.remote.ip())).or_default() += 1;
        self.by_client.insert(a.client, a.relay);
        self.by_relayed.insert(a.relayed, a.relay);
        self.by_relayed.insert(a.bound, a.relay);
        if !self.freed.is_empty() {
            self.freed.remove(&a.relayed);
            self.freed.remove(&a.bound);
        }
        self.by_relay.insert(a.relay, a);
    }

    pub fn remove(&mut self, relay: RelayId) -> Option<Allocation> {
        let a = self.by_relay.remove(&relay)?;
        self.by_client.remove(&a.client);
        self.by_relayed.remove(&a.relayed);
        self.by_relayed.remove(&a.bound);
        self.freed.insert(a.relayed, None);
        self.freed.insert(a.bound, None);
        if let Some(n) = self.per_user.get_mut(&a.user.username) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&a.user.username);
            }
        }
        let ip = canonical(a.client.remote.ip());
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
        Some(a)
    }

    pub fn relay_of_client(&self, client: &FiveTuple) -> Option<RelayId> {
        self.by_client.get(client).copied()
    }

    pub fn by_client_mut(&mut self, client: &FiveTuple) -> Option<&mut Allocation> {
        let id = self.by_client.get(client)?;
        self.by_relay.get_mut(id)
    }

    pub fn get(&self, relay: RelayId) -> Option<&Allocation> {
        self.by_relay.get(&relay)
    }

    pub fn get_mut(&mut self, relay: RelayId) -> Option<&mut Allocation> {
        self.by_relay.get_mut(&relay)
    }

    /// The allocation whose relayed address is `addr` (compared canonically,
    /// so `::ffff:127.0.0.1:5000` finds `127.0.0.1:5000`).
    pub fn relay_at(&self, addr: SocketAddr) -> Option<RelayId> {
        if let Some(&r) = self.by_relayed.get(&addr) {
            return Some(r);
        }
        // A second lookup only when the canonical form differs (an IPv4-mapped IPv6 address).
        let c = canonical(addr.ip());
        if c == addr.ip() {
            return None;
        }
        self.by_relayed.get(&SocketAddr::new(c, addr.port())).copied()
    }

    /// Whether `addr` was the relayed address of an allocation that ended recently and is
    /// not live again (compared canonically). One lookup, none while nothing has ended.
    pub fn recently_freed(&self, addr: SocketAddr) -> bool {
        if self.freed.is_empty() {
            return false;
        }
        let c = SocketAddr::new(canonical(addr.ip()), addr.port());
        self.freed.contains_key(&addr) || (c != addr && self.freed.contains_key(&c))
    }

    /// Stamps newly freed addresses with `now` and forgets those older than the quarantine.
    pub fn sweep_freed(&mut self, now: Instant) {
        for t in self.freed.values_mut() {
            t.get_or_insert(now);
        }
        self.freed.retain(|_, t| t.is_some_and(|t| now.saturating_duration_since(t) < FREED_QUARANTINE));
        if self.freed.len() > MAX_FREED {
            let mut stamps: Vec<Instant> = self.freed.values().filter_map(|t| *t).collect();
            stamps.sort_unstable();
            let cut = stamps[self.freed.len() - MAX_FREED];
            self.freed.retain(|_, t| t.is_some_and(|t| t > cut));
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Allocation> {
        self.by_relay.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Allocation> {
        self.by_relay.values_mut()
    }

    /// The allocations whose lifetime ran out at `now`.
    pub fn expired(&self, now: Instant) -> Vec<RelayId> {
        self.by_relay.values().filter(|a| a.expires <= now).map(|a| a.relay).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocation(relay: u64, relayed: &str, client: &str) -> Allocation {
        let relayed: SocketAddr = relayed.parse().unwrap();
        Allocation {
            client: FiveTuple {
                transport: crate::net::transport::Transport::Udp,
                local: "198.51.100.1:3478".parse().unwrap(),
                remote: client.parse().unwrap(),
            },
            relay: RelayId(relay),
            relayed,
            bound: relayed,
            user: UserKey { username: "u".into(), password: "p".into(), key: [0; 16] },
            integrity: IntegrityKind::Sha1,
            expires: Instant::now() + DEFAULT_LIFETIME,
            permissions: Permissions::default(),
            channels: Channels::default(),
            transaction: [0; 12],
        }
    }

    #[test]
    fn a_relayed_address_is_found_as_itself_or_ipv4_mapped_and_nothing_else() {
        let mut t = Allocations::default();
        t.insert(allocation(1, "198.51.100.1:50000", "203.0.113.7:4000"));
        t.insert(allocation(2, "[2001:db8::1]:50001", "203.0.113.8:4000"));
        let at = |t: &Allocations, a: &str| t.relay_at(a.parse().unwrap());
        assert_eq!(at(&t, "198.51.100.1:50000"), Some(RelayId(1)));
        assert_eq!(at(&t, "[::ffff:198.51.100.1]:50000"), Some(RelayId(1)), "mapped form of the same address");
        assert_eq!(at(&t, "[2001:db8::1]:50001"), Some(RelayId(2)));
        assert_eq!(at(&t, "198.51.100.1:50001"), None, "another port");
        assert_eq!(at(&t, "[::ffff:198.51.100.2]:50000"), None);
        assert_eq!(at(&t, "[2001:db8::2]:50001"), None);
        t.remove(RelayId(1));
        assert_eq!(at(&t, "[::ffff:198.51.100.1]:50000"), None);
        assert!(t.recently_freed("[::ffff:198.51.100.1]:50000".parse().unwrap()));
    }

    #[test]
    fn lifetimes_are_clamped_as_the_rfc_says() {
        let max = MAX_LIFETIME;
        assert_eq!(granted_lifetime(None, max), DEFAULT_LIFETIME);
        assert_eq!(granted_lifetime(Some(0), max), Duration::ZERO);
        assert_eq!(granted_lifetime(Some(30), max), DEFAULT_LIFETIME);
        assert_eq!(granted_lifetime(Some(1200), max), Duration::from_secs(1200));
        assert_eq!(granted_lifetime(Some(u32::MAX), max), MAX_LIFETIME);
        assert_eq!(granted_lifetime(Some(900), Duration::from_secs(300)), Duration::from_secs(300));
    }
}
