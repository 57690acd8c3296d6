//! The STUN and TURN servers a `call` or `punch` session gathers its server-reflexive and relayed
//! candidates from (RFC 8445 §5.1.1), resolved to UDP addresses (the session's own socket) with
//! TURN credentials. Two sources, one resolver: the flags (`cli::IceServerArgs`: long-term
//! credentials, or TURN REST ones from a shared secret), where a bad server is the user's mistake
//! (exit 2); and the signaling server's `ice_servers` (RTCIceServer dictionaries, as the page
//! passes them to RTCPeerConnection), where an unusable entry is logged and skipped.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::cli::IceServerArgs;
use crate::error::{UsageError, usage};
use crate::net::server_spec::{Family, Scheme, ServerSpec};
use crate::net::transport::Transport;
use crate::signal::protocol::IceServer;
use crate::turn::credentials::{Credentials, rest_credentials};

/// TURN REST usernames made from `--turn-secret` stay valid this long.
const REST_TTL: Duration = Duration::from_secs(86_400);

/// Servers to gather from; empty when the flags named none.
#[derive(Debug, Default)]
pub struct IceServers {
    pub stun: Vec<SocketAddr>,
    pub turn: Option<(SocketAddr, Credentials)>,
}

/// Why a server URL gives no UDP address.
#[derive(Debug)]
enum Unusable {
    /// Not a server address or STUN/TURN URI.
    Spec(UsageError),
    /// Its name does not resolve (to the family asked for).
    Resolve(UsageError),
    /// A TCP or TLS server (`?transport=tcp`, `stuns:`, `turns:`): sessions gather over UDP only.
    NotUdp,
}

/// The one resolver: a STUN or TURN server reached over UDP (the session's own socket).
async fn udp_server(url: &str, family: Family) -> Result<(ServerSpec, SocketAddr), Unusable> {
    let spec = ServerSpec::parse(url).map_err(Unusable::Spec)?;
    if matches!(spec.transport, Some(t) if t != Transport::Udp) {
        return Err(Unusable::NotUdp);
    }
    let addr = spec.resolve(Transport::Udp, family).await.map_err(Unusable::Resolve)?;
    Ok((spec, addr))
}

/// [`udp_server`] for a flag: anything unusable is a usage error that says what to drop.
async fn flag_server(url: &str, family: Family, command: &str) -> anyhow::Result<SocketAddr> {
    match udp_server(url, family).await {
        Ok((_, addr)) => Ok(addr),
        Err(Unusable::Spec(e) | Unusable::Resolve(e)) => Err(e.into()),
        Err(Unusable::NotUdp) => usage(format!(
            "{url}: only UDP STUN/TURN servers are supported by {command} (drop ?transport=tcp, stuns:, turns:)"
        )),
    }
}

/// Resolves the flags; bad or unresolvable servers are usage errors (exit 2).
pub async fn resolve(args: &IceServerArgs, family: Family, command: &str) -> anyhow::Result<IceServers> {
    let mut stun = Vec::new();
    for url in &args.stun {
        stun.push(flag_server(url, family, command).await?);
    }
    let turn = match &args.turn {
        None => None,
        Some(url) => {
            let addr = flag_server(url, family, command).await?;
            let creds = match (&args.turn_user, &args.turn_password, &args.turn_secret) {
                (Some(u), Some(p), None) => Credentials { username: u.clone(), password: p.clone() },
                (name, None, Some(secret)) => rest_credentials(secret, name.as_deref(), SystemTime::now(), REST_TTL),
                _ => return usage("--turn needs --turn-user U --turn-password P, or --turn-secret S"),
            };
            Some((addr, creds))
        }
    };
    Ok(IceServers { stun, turn })
}

/// UDP STUN servers and the first UDP TURN server with credentials from the `created` message's
/// `ice_servers`, resolved to `family`. Entries natkit cannot use (TCP/TLS, which the page may
/// use; URLs it does not read) are skipped quietly, names that do not resolve with a warning.
pub async fn from_signal(ice: &[IceServer], family: Family) -> IceServers {
    let mut servers = IceServers::default();
    for server in ice {
        for url in &server.urls {
            let (spec, addr) = match udp_server(url, family).await {
                Ok(found) => found,
                Err(Unusable::Spec(_) | Unusable::NotUdp) => continue,
                Err(Unusable::Resolve(e)) => {
                    tracing::warn!("ice server {url} from the signaling server: {e}");
                    continue;
                }
            };
            match (spec.scheme, &server.username, &server.credential) {
                (Some(Scheme::Stun), _, _) => servers.stun.push(addr),
                (Some(Scheme::Turn), Some(u), Some(p)) if servers.turn.is_none() => {
                    servers.turn = Some((addr, Credentials { username: u.clone(), password: p.clone() }));
                }
                _ => {}
            }
        }
    }
    tracing::info!(
        "from the signaling server: {} STUN, {} TURN",
        servers.stun.len(),
        usize::from(servers.turn.is_some())
    );
    servers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str, creds: Option<(&str, &str)>) -> IceServer {
        IceServer {
            urls: vec![url.to_string()],
            username: creds.map(|c| c.0.to_string()),
            credential: creds.map(|c| c.1.to_string()),
        }
    }

    #[tokio::test]
    async fn the_signal_list_keeps_udp_stun_and_the_first_udp_turn_with_credentials() {
        let ice = [
            entry("stun:198.51.100.1", None),
            entry("stuns:198.51.100.9", None),
            entry("turn:198.51.100.2:3479?transport=tcp", Some(("u", "p"))),
            entry("turn:198.51.100.3", None),
            entry("turn:198.51.100.4:3480", Some(("alice", "wonderland"))),
            entry("turn:198.51.100.5", Some(("bob", "builder"))),
            entry("http://198.51.100.6", None),
            entry("stun:[2001:db8::1]", None),
        ];
        let servers = from_signal(&ice, Family::V4).await;
        assert_eq!(servers.stun, vec!["198.51.100.1:3478".parse::<SocketAddr>().unwrap()]);
        let (addr, creds) = servers.turn.expect("a TURN server");
        assert_eq!(addr, "198.51.100.4:3480".parse::<SocketAddr>().unwrap());
        assert_eq!((creds.username.as_str(), creds.password.as_str()), ("alice", "wonderland"));
    }

    #[tokio::test]
    async fn a_tcp_or_tls_server_flag_is_a_usage_error_that_says_what_to_drop() {
        let args = IceServerArgs {
            stun: vec!["stuns:198.51.100.1".into()],
            turn: None,
            turn_user: None,
            turn_password: None,
            turn_secret: None,
            relay_only: false,
        };
        let err = resolve(&args, Family::Any, "call").await.expect_err("TLS is refused");
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err}");
        assert!(err.to_string().contains("only UDP STUN/TURN servers are supported by call"), "{err}");
        let args = IceServerArgs { stun: vec!["198.51.100.1:3479".into()], ..args };
        let servers = resolve(&args, Family::Any, "call").await.expect("a UDP server");
        assert_eq!(servers.stun, vec!["198.51.100.1:3479".parse::<SocketAddr>().unwrap()]);
        assert!(servers.turn.is_none());
    }
}
