//! The amplification limit on answers sent without authentication (RFC 8489
//! §16.1.2 and RFC 8656 §21.1: a STUN/TURN server can be used to reflect
//! and amplify traffic toward a spoofed source address).
//!
//! Binding answers, 401/438 challenges and other unsigned errors go back to
//! whatever source address a UDP datagram claims, which an attacker can
//! forge. Each source IP gets a token bucket counted in answer *bytes*: a
//! burst, then a steady refill. A flood from one (spoofed) address therefore
//! gets at most `rate` bytes per second back whatever it sends, so beyond
//! the burst the bytes out stay below the bytes in as soon as the flood is
//! faster than `rate`; a client that sends a few requests never notices.
//! The defaults (64 KiB, then 16 KiB/s) answer about 700 challenges at once
//! and 180 a second after: room for hundreds of clients behind one NAT
//! starting together, while any flood above 16 KiB/s gets less than it sends.
//! TCP and TLS are exempt: a handshake proves the address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Limits, from flags (see README "Safety policy").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnauthLimitConfig {
    /// Answer bytes a source may get at once.
    pub burst_bytes: u32,
    /// Answer bytes per second a source gets after the burst.
    pub bytes_per_sec: u32,
    /// Sources tracked at most; past it (after a sweep) new sources get no unauthenticated answer.
    pub max_sources: usize,
}

impl Default for UnauthLimitConfig {
    fn default() -> Self {
        UnauthLimitConfig { burst_bytes: 64 * 1024, bytes_per_sec: 16 * 1024, max_sources: 200_000 }
    }
}

#[derive(Debug)]
pub struct UnauthLimit {
    cfg: UnauthLimitConfig,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl UnauthLimit {
    pub fn new(cfg: UnauthLimitConfig) -> Self {
        UnauthLimit { cfg, buckets: HashMap::new() }
    }

    /// Whether an answer of `bytes` may go to `ip` now; takes the bytes when it may.
    pub fn allow(&mut self, ip: IpAddr, bytes: usize, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.cfg.max_sources {
            self.sweep(now);
            if self.buckets.len() >= self.cfg.max_sources {
                // Fail closed: a table this full is a spoofed flood, and answering
                // it is exactly the amplification this limit exists to stop.
                return false;
            }
        }
        let (burst, rate) = (self.cfg.burst_bytes as f64, self.cfg.bytes_per_sec as f64);
        let (tokens, at) = self.buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= bytes as f64 {
            *tokens -= bytes as f64;
            true
        } else {
            false
        }
    }

    /// Forgets sources whose bucket is full again.
    pub fn sweep(&mut self, now: Instant) {
        let rate = (self.cfg.bytes_per_sec as f64).max(1.0);
        let burst = self.cfg.burst_bytes as f64;
        self.buckets.retain(|_, (tokens, at)| {
            let idle = now.saturating_duration_since(*at);
            *tokens + idle.as_secs_f64() * rate < burst && idle < Duration::from_secs(3600)
        });
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_the_burst_then_the_rate_whatever_it_sends() {
        let t0 = Instant::now();
        let mut l = UnauthLimit::new(UnauthLimitConfig { burst_bytes: 1000, bytes_per_sec: 100, max_sources: 10 });
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        // 10,000 requests of 20 bytes over 10 s, each answered with 92 bytes if allowed.
        let mut out = 0;
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_millis(i as u64);
            if l.allow(ip, 92, now) {
                out += 92;
            }
        }
        let bytes_in = 10_000 * 20;
        assert!(out <= 1000 + 100 * 10, "{out} bytes out");
        assert!(out >= 1000, "the burst is served");
        assert!(out < bytes_in, "out {out} in {bytes_in}");
        let other: IpAddr = "198.51.100.10".parse().unwrap();
        assert!(l.allow(other, 92, t0 + Duration::from_secs(10)), "other sources are not affected");
    }

    #[test]
    fn a_full_table_refuses_newcomers_until_buckets_refill() {
        let t0 = Instant::now();
        let mut l = UnauthLimit::new(UnauthLimitConfig { burst_bytes: 100, bytes_per_sec: 100, max_sources: 2 });
        assert!(l.allow("198.51.100.1".parse().unwrap(), 50, t0));
        assert!(l.allow("198.51.100.2".parse().unwrap(), 50, t0));
        assert!(!l.allow("198.51.100.3".parse().unwrap(), 50, t0));
        assert!(l.allow("198.51.100.3".parse().unwrap(), 50, t0 + Duration::from_secs(1)));
        assert!(l.tracked() <= 2);
    }
}
