//! Permissions of one allocation (RFC 8656 §9): a peer IP address (ports do
//! not matter) with an expiry 300 s after the last CreatePermission or
//! ChannelBind that named it. A short vector: lookups scan it and never
//! allocate, which is what the per-packet path needs.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// RFC 8656 §9: the permission lifetime is 300 s and cannot be changed.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermissionFull;

#[derive(Debug, Clone, Default)]
pub struct Permissions {
    entries: Vec<(IpAddr, Instant)>,
}

impl Permissions {
    /// Installs or refreshes the permission for `ip`; refuses a new one past `max`.
    pub fn install(&mut self, ip: IpAddr, now: Instant, max: usize) -> Result<(), PermissionFull> {
        let expires = now + PERMISSION_LIFETIME;
        if let Some(e) = self.entries.iter_mut().find(|(a, _)| *a == ip) {
            e.1 = expires;
            return Ok(());
        }
        self.entries.retain(|(_, t)| *t > now);
        if self.entries.len() >= max {
            return Err(PermissionFull);
        }
        self.entries.push((ip, expires));
        Ok(())
    }

    /// Would all of `ips` fit (new ones counted once)?
    pub fn room_for(&self, ips: &[IpAddr], now: Instant, max: usize) -> bool {
        let live = self.entries.iter().filter(|(_, t)| *t > now).count();
        let new = ips
            .iter()
            .enumerate()
            .filter(|(i, ip)| !ips[..*i].contains(ip))
            .filter(|(_, ip)| !self.entries.iter().any(|(a, t)| a == *ip && *t > now))
            .count();
        live + new <= max
    }

    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        self.entries.iter().any(|(a, t)| *a == ip && *t > now)
    }

    /// Drops expired entries; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries.retain(|(_, t)| *t > now);
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_lasts_300_s_and_is_refreshed_by_reinstalling() {
        let t0 = Instant::now();
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        let mut p = Permissions::default();
        p.install(ip, t0, 10).unwrap();
        assert!(p.allows(ip, t0 + Duration::from_secs(299)));
        assert!(!p.allows(ip, t0 + Duration::from_secs(300)));
        p.install(ip, t0 + Duration::from_secs(200), 10).unwrap();
        assert!(p.allows(ip, t0 + Duration::from_secs(499)));
        assert_eq!(p.expire(t0 + Duration::from_secs(500)), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn quota_counts_only_live_permissions() {
        let t0 = Instant::now();
        let mut p = Permissions::default();
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        p.install(a, t0, 1).unwrap();
        assert_eq!(p.install(b, t0, 1), Err(PermissionFull));
        assert!(!p.room_for(&[b], t0, 1));
        assert!(p.room_for(&[a, a], t0, 1));
        assert!(p.install(b, t0 + PERMISSION_LIFETIME, 1).is_ok(), "the expired one made room");
    }
}
