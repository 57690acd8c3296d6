//! The `ice_servers` list handed to each client in `created`: the STUN and
//! TURN URIs given on the command line (RFC 7064/7065), and with a shared
//! secret, per-client time-limited TURN REST credentials (the scheme of
//! coturn's `use-auth-secret` and `natkit relay --secret`), so the page
//! never holds a static TURN password.

use std::time::{Duration, SystemTime};

use crate::error::UsageError;
use crate::net::server::{Scheme, ServerSpec};
use crate::signal::protocol::{IceServer, PeerId};
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

    /// The list for one client. Without `--turn-secret` TURN entries carry no
    /// credentials (a TURN server that needs none, or the page supplies them).
    pub fn for_client(&self, peer: &PeerId, now: SystemTime) -> Vec<IceServer> {
        let mut out = Vec::new();
        if !self.stun.is_empty() {
            out.push(IceServer { urls: self.stun.clone(), username: None, credential: None });
        }
        if !self.turn.is_empty() {
            let creds = self.turn_secret.as_deref().map(|s| rest_credentials(s, Some(peer.as_str()), now, self.ttl));
            out.push(IceServer {
                urls: self.turn.clone(),
                username: creds.as_ref().map(|c| c.username.clone()),
                credential: creds.map(|c| c.password),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::credentials::{RestUsername, check_rest_username, rest_password};
    use std::time::UNIX_EPOCH;

    #[test]
    fn each_client_gets_its_own_rest_credentials() {
        let cfg = IceConfig::new(
            &["stun:127.0.0.1:3478".into()],
            &["turn:127.0.0.1:3478?transport=udp".into()],
            Some("s3cret".into()),
            Duration::from_secs(600),
        )
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let list = cfg.for_client(&PeerId::from("p1"), now);
        assert_eq!(list[0], IceServer { urls: vec!["stun:127.0.0.1:3478".into()], username: None, credential: None });
        let user = list[1].username.clone().unwrap();
        assert_eq!(user, "1600:p1");
        assert_eq!(list[1].credential.as_deref(), Some(rest_password("s3cret", &user).as_str()));
        assert_eq!(check_rest_username(&user, now), RestUsername::Valid { expires_in: 600 });
        let other = cfg.for_client(&PeerId::from("p2"), now);
        assert_ne!(other[1].credential, list[1].credential);
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
                .for_client(&"p".into(), SystemTime::now())
                .is_empty()
        );
    }
}
