//! The shared STUN/TURN flags of `call` and `punch` (`cli::IceServerArgs`), resolved to UDP
//! server addresses and TURN credentials (long-term, or TURN REST from a shared secret).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::cli::IceServerArgs;
use crate::error::usage;
use crate::net::server_spec::{Family, ServerSpec};
use crate::net::transport::Transport;
use crate::turn::credentials::{Credentials, rest_credentials};

/// TURN REST usernames made from `--turn-secret` stay valid this long.
const REST_TTL: Duration = Duration::from_secs(86_400);

/// Servers to gather from; empty when the flags named none.
#[derive(Debug, Default)]
pub struct IceServers {
    pub stun: Vec<SocketAddr>,
    pub turn: Option<(SocketAddr, Credentials)>,
}

/// A STUN or TURN server reached over UDP (the session's own socket).
async fn udp_server(url: &str, family: Family, command: &str) -> anyhow::Result<SocketAddr> {
    let spec = ServerSpec::parse(url)?;
    if matches!(spec.transport, Some(t) if t != Transport::Udp) {
        return usage(format!(
            "{url}: only UDP STUN/TURN servers are supported by {command} (drop ?transport=tcp, stuns:, turns:)"
        ));
    }
    Ok(spec.resolve(Transport::Udp, family).await?)
}

/// Resolves the flags; bad or unresolvable servers are usage errors (exit 2).
pub async fn resolve(args: &IceServerArgs, family: Family, command: &str) -> anyhow::Result<IceServers> {
    let mut stun = Vec::new();
    for url in &args.stun {
        stun.push(udp_server(url, family, command).await?);
    }
    let turn = match &args.turn {
        None => None,
        Some(url) => {
            let addr = udp_server(url, family, command).await?;
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
