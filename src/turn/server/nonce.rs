//! Stateless nonces (RFC 8489 §9.2, RFC 8656 §7.1 error 438).
//!
//! A nonce is `hex(issued_at) ‖ hex(HMAC-SHA256(key, issued_at ‖ client))[..16]`:
//! the server checks it by recomputing the MAC, so it keeps no table of
//! nonces, a nonce only works for the client transport address it was given
//! to, and it goes stale `lifetime` after it was issued (then 438 with a
//! fresh one).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

const TS_HEX: usize = 16;
const MAC_HEX: usize = 16;

/// What a presented nonce is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Ours, but older than the lifetime: answer 438.
    Stale,
    /// Not made by this server for this client (also answered 438, with a fresh one).
    Invalid,
}

#[derive(Debug, Clone)]
pub struct Nonces {
    key: [u8; 32],
    lifetime: Duration,
    epoch: Instant,
}

impl Nonces {
    /// `epoch` is any fixed instant (the server's start); nonces count seconds from it.
    pub fn new(key: [u8; 32], lifetime: Duration, epoch: Instant) -> Self {
        Nonces { key, lifetime, epoch }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn mac(&self, issued: u64, client: SocketAddr) -> [u8; 8] {
        // HMAC takes any key length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(&issued.to_be_bytes());
        m.update(client.to_string().as_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 8];
        out.copy_from_slice(&full[..8]);
        out
    }

    pub fn issue(&self, client: SocketAddr, now: Instant) -> String {
        let issued = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let mut s = format!("{issued:016x}");
        for b in self.mac(issued, client) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub fn check(&self, nonce: &str, client: SocketAddr, now: Instant) -> NonceCheck {
        if nonce.len() != TS_HEX + MAC_HEX || !nonce.is_ascii() {
            return NonceCheck::Invalid;
        }
        let Ok(issued) = u64::from_str_radix(&nonce[..TS_HEX], 16) else { return NonceCheck::Invalid };
        let mac = self.mac(issued, client);
        let mut expected = String::with_capacity(MAC_HEX);
        for b in mac {
            expected.push_str(&format!("{b:02x}"));
        }
        if expected != nonce[TS_HEX..] {
            return NonceCheck::Invalid;
        }
        let age_ms = (now.saturating_duration_since(self.epoch).as_millis() as u64).saturating_sub(issued);
        if Duration::from_millis(age_ms) >= self.lifetime { NonceCheck::Stale } else { NonceCheck::Valid }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_valid_for_its_client_until_it_goes_stale() {
        let t0 = Instant::now();
        let n = Nonces::new([7; 32], Duration::from_secs(600), t0);
        let client: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let other: SocketAddr = "198.51.100.2:5001".parse().unwrap();
        let nonce = n.issue(client, t0 + Duration::from_secs(5));
        assert_eq!(n.check(&nonce, client, t0 + Duration::from_secs(6)), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, client, t0 + Duration::from_secs(604)), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, client, t0 + Duration::from_secs(605)), NonceCheck::Stale);
        assert_eq!(n.check(&nonce, other, t0 + Duration::from_secs(6)), NonceCheck::Invalid);
    }

    #[test]
    fn forged_and_garbage_nonces_are_invalid() {
        let t0 = Instant::now();
        let n = Nonces::new([7; 32], Duration::from_secs(600), t0);
        let client: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let other_server = Nonces::new([8; 32], Duration::from_secs(600), t0);
        assert_eq!(n.check(&other_server.issue(client, t0), client, t0), NonceCheck::Invalid);
        for junk in ["", "abc", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "ééééééééééééééééé"] {
            assert_eq!(n.check(junk, client, t0), NonceCheck::Invalid, "{junk}");
        }
    }
}
