//! The `ice_servers` list handed to each client in `created`: the STUN and
//! TURN URIs given on the command line (RFC 7064/7065), and with a shared
//! secret, time-limited TURN REST credentials (the scheme of coturn's
//! `use-auth-secret` and `natkit relay --secret`), so the page never holds a
//! static TURN password.
//!
//! Credentials are per client *address*, not per connection: otherwise one
//! address could mint a fresh username per connection and take the relay's
//! per-username allocation quota again and again. Time is cut into windows of
//! half the TTL; every client from one address (one /64 for IPv6, which a
//! single host can fill) in one window gets the same username,
//! `EXPIRY:NAME`, where NAME is an HMAC of the address under the secret (it
//! names no address) and EXPIRY is the window's start plus the TTL. So each
//! credential has between half and all of the TTL left when handed out, and
//! one address holds at most two live usernames at a time and obtains at most
//! three within any TTL.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::UsageError;
use crate::net::server_spec::{Scheme, ServerSpec};
use crate::signal::protocol::IceServer;
use crate::turn::credentials::rest_credentials;

/// How long per-client TURN credentials stay valid.
pub const DEFAULT_TURN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Default)]
pub struct IceConfig {
    stun: Vec<String>,
    turn: Vec<String>,
    turn_secret: Option<String>,
    ttl: Duration,
}

impl IceConfig {
    /// Checks that `--stun` values are stun:/stuns: URIs and `--turn` values
    /// turn:/turns: URIs, as `RTCPeerConnection` requires.
    pub fn new(
        stun: &[String],
        turn: &[String],
        turn_secret: Option<String>,
        ttl: Duration,
    ) -> Result<Self, UsageError> {
        for (list, flag, ok) in
            [(stun, "--stun", [Scheme::Stun, Scheme::Stuns]), (turn, "--turn", [Scheme::Turn, Scheme::Turns])]
        {
            for url in list {
                let spec = ServerSpec::parse(url)?;
                if !spec.scheme.is_some_and(|s| ok.contains(&s)) {
                    let want =
                        if flag == "--stun" { "stun:HOST[:PORT]" } else { "turn:HOST[:PORT][?transport=udp|tcp]" };
                    return Err(UsageError::new(format!(
                        "{flag} '{url}' is not a URI browsers accept here; write {want}"
                    )));
                }
            }
        }
        if turn_secret.is_some() && turn.is_empty() {
            return Err(UsageError::new("--turn-secret needs at least one --turn URI to hand out"));
        }
        Ok(IceConfig { stun: stun.to_vec(), turn: turn.to_vec(), turn_secret, ttl })
    }

    /// The list for a client connecting from `client`. Without `--turn-secret`
    /// TURN entries carry no credentials (a TURN server that needs none, or
    /// the page supplies them).
    pub fn for_client(&self, client: IpAddr, now: SystemTime) -> Vec<IceServer> {
        let mut out = Vec::new();
        if !self.stun.is_empty() {
            out.push(IceServer { urls: self.stun.clone(), username: None, credential: None });
        }
        if !self.turn.is_empty() {
            let creds = self.turn_secret.as_deref().map(|s| {
                let window = (self.ttl.as_secs() / 2).max(1);
                let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let window_start = UNIX_EPOCH + Duration::from_secs(secs - secs % window);
                rest_credentials(s, Some(&address_name(s, client)), window_start, self.ttl)
            });
            out.push(IceServer {
                urls: self.turn.clone(),
                username: creds.as_ref().map(|c| c.username.clone()),
                credential: creds.map(|c| c.password),
            });
        }
        out
    }
}

/// The name in a TURN username for clients from `client`: 128 bits of
/// HMAC-SHA256 under the secret, of the IPv4 address or the IPv6 /64.
fn address_name(secret: &str, client: IpAddr) -> String {
    let key: Vec<u8> = match crate::net::address_class::canonical(client) {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets()[..8].to_vec(),
    };
    // HMAC accepts keys of any length.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(b"natkit signal turn user\0");
    mac.update(&key);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::credentials::{RestUsername, check_rest_username, rest_password};
    use std::time::UNIX_EPOCH;

    fn cfg(ttl: u64) -> IceConfig {
        IceConfig::new(
            &["stun:127.0.0.1:3478".into()],
            &["turn:127.0.0.1:3478?transport=udp".into()],
            Some("s3cret".into()),
            Duration::from_secs(ttl),
        )
        .unwrap()
    }

    fn user(list: &[IceServer]) -> String {
        list[1].username.clone().unwrap()
    }

    #[test]
    fn one_address_gets_one_valid_rest_credential_per_window() {
        let cfg = cfg(600);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let list = cfg.for_client(ip, at(1_000));
        assert_eq!(list[0], IceServer { urls: vec!["stun:127.0.0.1:3478".into()], username: None, credential: None });
        let u = user(&list);
        // Window of 300 s starting at 900: expiry 900 + 600.
        assert!(u.starts_with("1500:"), "{u}");
        assert!(!u.contains("203.0.113.7"), "the name does not give the address away: {u}");
        assert_eq!(list[1].credential.as_deref(), Some(rest_password("s3cret", &u).as_str()));
        assert_eq!(check_rest_username(&u, at(1_000)), RestUsername::Valid { expires_in: 500 });
        // Same address, same window: the same credential, however many connections.
        assert_eq!(user(&cfg.for_client(ip, at(1_199))), u);
        assert_eq!(user(&cfg.for_client("::ffff:203.0.113.7".parse().unwrap(), at(1_100))), u);
        // Next window: a new one, still with at least half the TTL left.
        let next = user(&cfg.for_client(ip, at(1_200)));
        assert!(next.starts_with("1800:"), "{next}");
        // Another address: another name.
        assert_ne!(user(&cfg.for_client("203.0.113.8".parse().unwrap(), at(1_000))), u);
    }

    #[test]
    fn an_ipv6_host_cannot_mint_names_by_changing_its_interface_id() {
        let cfg = cfg(600);
        let now = UNIX_EPOCH + Duration::from_secs(5_000);
        let a = user(&cfg.for_client("2001:db8:1:2::1".parse().unwrap(), now));
        assert_eq!(user(&cfg.for_client("2001:db8:1:2:ffff::9".parse().unwrap(), now)), a);
        assert_ne!(user(&cfg.for_client("2001:db8:1:3::1".parse().unwrap(), now)), a);
    }

    #[test]
    fn credentials_handed_out_over_a_ttl_are_bounded_per_address() {
        let cfg = cfg(600);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let names: std::collections::BTreeSet<String> =
            (0..=600).map(|s| user(&cfg.for_client(ip, UNIX_EPOCH + Duration::from_secs(10_050 + s)))).collect();
        assert!(names.len() <= 3, "{names:?}");
    }

    #[test]
    fn wrong_schemes_are_usage_errors() {
        assert!(IceConfig::new(&["turn:h".into()], &[], None, DEFAULT_TURN_TTL).is_err());
        assert!(IceConfig::new(&[], &["stun:h".into()], None, DEFAULT_TURN_TTL).is_err());
        assert!(IceConfig::new(&[], &["https://h".into()], None, DEFAULT_TURN_TTL).is_err());
        assert!(IceConfig::new(&[], &[], Some("s".into()), DEFAULT_TURN_TTL).is_err());
        assert!(
            IceConfig::new(&[], &[], None, DEFAULT_TURN_TTL)
                .unwrap()
                .for_client("127.0.0.1".parse().unwrap(), SystemTime::now())
                .is_empty()
        );
    }
}
