//! Channel bindings of one allocation (RFC 8656 §12): a channel number
//! 0x4000–0x7FFF (see [`MAX_CHANNEL`]) bound to one peer transport address for 600 s after the
//! last ChannelBind. A number stays with its peer and a peer with its
//! number while bound. Lookups scan a short vector and never allocate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// RFC 8656 §12: a binding lasts 10 minutes unless refreshed.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
pub const MIN_CHANNEL: u16 = 0x4000;
/// RFC 8656 narrowed the range to 0x4FFF; RFC 5766 clients (coturn's own
/// `turnutils_uclient` among them) still pick numbers up to 0x7FFF, and
/// ChannelData framing is the same for all of them, so they are accepted.
pub const MAX_CHANNEL: u16 = 0x7FFF;

/// Why a ChannelBind is refused (all answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    NumberOutOfRange,
    /// The number is bound to another peer.
    NumberTaken,
    /// The peer is bound to another number.
    PeerTaken,
    Full,
}

#[derive(Debug, Clone, Copy)]
struct Binding {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug, Clone, Default)]
pub struct Channels {
    bindings: Vec<Binding>,
}

impl Channels {
    pub fn bind(&mut self, number: u16, peer: SocketAddr, now: Instant, max: usize) -> Result<(), BindError> {
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&number) {
            return Err(BindError::NumberOutOfRange);
        }
        self.bindings.retain(|b| b.expires > now);
        for b in &mut self.bindings {
            match (b.number == number, b.peer == peer) {
                (true, true) => {
                    b.expires = now + CHANNEL_LIFETIME;
                    return Ok(());
                }
                (true, false) => return Err(BindError::NumberTaken),
                (false, true) => return Err(BindError::PeerTaken),
                _ => {}
            }
        }
        if self.bindings.len() >= max {
            return Err(BindError::Full);
        }
        self.bindings.push(Binding { number, peer, expires: now + CHANNEL_LIFETIME });
        Ok(())
    }

    pub fn peer_of(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.bindings.iter().find(|b| b.number == number && b.expires > now).map(|b| b.peer)
    }

    pub fn number_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.bindings.iter().find(|b| b.peer == peer && b.expires > now).map(|b| b.number)
    }

    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.bindings.len();
        self.bindings.retain(|b| b.expires > now);
        before - self.bindings.len()
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn binding_lasts_600_s_and_refresh_extends_it() {
        let t0 = Instant::now();
        let mut c = Channels::default();
        c.bind(0x4001, sa("203.0.113.1:9"), t0, 8).unwrap();
        assert_eq!(c.peer_of(0x4001, t0 + Duration::from_secs(599)), Some(sa("203.0.113.1:9")));
        assert_eq!(c.number_of(sa("203.0.113.1:9"), t0), Some(0x4001));
        assert_eq!(c.peer_of(0x4001, t0 + CHANNEL_LIFETIME), None);
        c.bind(0x4001, sa("203.0.113.1:9"), t0 + Duration::from_secs(500), 8).unwrap();
        assert!(c.peer_of(0x4001, t0 + Duration::from_secs(1099)).is_some());
        assert_eq!(c.expire(t0 + Duration::from_secs(1100)), 1);
    }

    #[test]
    fn numbers_and_peers_are_exclusive_and_in_range() {
        let t0 = Instant::now();
        let mut c = Channels::default();
        c.bind(0x4001, sa("203.0.113.1:9"), t0, 8).unwrap();
        assert_eq!(c.bind(0x4001, sa("203.0.113.2:9"), t0, 8), Err(BindError::NumberTaken));
        assert_eq!(c.bind(0x4002, sa("203.0.113.1:9"), t0, 8), Err(BindError::PeerTaken));
        assert_eq!(c.bind(0x3FFF, sa("203.0.113.3:9"), t0, 8), Err(BindError::NumberOutOfRange));
        assert_eq!(c.bind(0x8000, sa("203.0.113.3:9"), t0, 8), Err(BindError::NumberOutOfRange));
        assert!(c.bind(0x7FFF, sa("203.0.113.3:9"), t0, 8).is_ok(), "RFC 5766 range");
        assert_eq!(c.bind(0x4002, sa("203.0.113.4:9"), t0, 1), Err(BindError::Full));
    }
}
