//! TURN credentials: long-term keys (RFC 8489 §9.2) and the TURN REST API
//! shared-secret scheme (draft-uberti-behave-turn-rest, what coturn's
//! `use-auth-secret` implements): username `expiry-unix-time[:name]`,
//! password `base64(HMAC-SHA1(secret, username))`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// A username and password to present to a TURN server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Time-limited REST credentials valid for `ttl` from `now`.
pub fn rest_credentials(secret: &str, name: Option<&str>, now: SystemTime, ttl: Duration) -> Credentials {
    let expiry = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + ttl.as_secs();
    let username = match name {
        Some(n) if !n.is_empty() => format!("{expiry}:{n}"),
        _ => expiry.to_string(),
    };
    let password = rest_password(secret, &username);
    Credentials { username, password }
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn rest_password(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// What a server concludes from a REST username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestUsername {
    /// Not expired; seconds left.
    Valid {
        expires_in: u64,
    },
    Expired,
    /// Does not start with a unix time.
    Malformed,
}

/// Checks the expiry part of a REST username against `now`.
pub fn check_rest_username(username: &str, now: SystemTime) -> RestUsername {
    let ts = username.split(':').next().unwrap_or("");
    let Ok(expiry) = ts.parse::<u64>() else { return RestUsername::Malformed };
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if expiry <= now { RestUsername::Expired } else { RestUsername::Valid { expires_in: expiry - now } }
}

/// The long-term key of RFC 8489 §9.2.2: MD5 of `username:realm:password`,
/// the HMAC key for MESSAGE-INTEGRITY and MESSAGE-INTEGRITY-SHA256.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(format!("{username}:{realm}:{password}").as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_coturn_scheme() {
        // printf '%s' 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(rest_password("secret", "1700000000:alice"), "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    #[test]
    fn rest_username_carries_expiry_and_name() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let c = rest_credentials("s", Some("bob"), now, Duration::from_secs(600));
        assert_eq!(c.username, "1600:bob");
        assert_eq!(check_rest_username(&c.username, now), RestUsername::Valid { expires_in: 600 });
        assert_eq!(check_rest_username(&c.username, now + Duration::from_secs(600)), RestUsername::Expired);
        assert_eq!(check_rest_username("bob", now), RestUsername::Malformed);
        assert_eq!(rest_credentials("s", None, now, Duration::from_secs(1)).username, "1001");
    }

    #[test]
    fn long_term_key_is_md5_of_user_realm_password() {
        // printf 'user:realm:pass' | openssl dgst -md5
        assert_eq!(
            long_term_key("user", "realm", "pass"),
            [0x84, 0x93, 0xfb, 0xc5, 0x3b, 0xa5, 0x82, 0xfb, 0x4c, 0x04, 0x4c, 0x45, 0x6b, 0xdc, 0x40, 0xeb]
        );
    }
}
