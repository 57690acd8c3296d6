//! Server addresses as users write them, and their resolution.
//!
//! Accepted forms: `host`, `host:port`, `1.2.3.4`, `[v6]:port`, a bare IPv6
//! address, and URIs: `stun:`/`stuns:` (RFC 7064) and `turn:`/`turns:` with
//! `?transport=udp|tcp` (RFC 7065).

use std::net::{IpAddr, SocketAddr};

use crate::error::UsageError;
use crate::net::transport::Transport;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Stun,
    Stuns,
    Turn,
    Turns,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// A server as given on the command line, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Exactly what the user typed, for reports.
    pub input: String,
    pub scheme: Option<Scheme>,
    pub host: Host,
    pub port: Option<u16>,
    /// The transport a URI pins (`stuns:`/`turns:` → TLS, `?transport=tcp` → TCP).
    pub transport: Option<Transport>,
}

/// Which address families resolution may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Any,
    V4,
    V6,
}

impl Family {
    pub fn from_flags(v4: bool, v6: bool) -> Self {
        match (v4, v6) {
            (true, false) => Family::V4,
            (false, true) => Family::V6,
            _ => Family::Any,
        }
    }

    pub fn admits(self, ip: &IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        }
    }
}

impl ServerSpec {
    pub fn parse(input: &str) -> Result<Self, UsageError> {
        let s = input.trim();
        let bad = |why: &str| {
            UsageError::new(format!(
                "bad server '{input}': {why}; expected HOST, HOST:PORT, [IPV6]:PORT or a stun:/stuns:/turn:/turns: URI"
            ))
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (scheme, rest) = match s.split_once(':') {
            Some((sch, rest)) if !rest.starts_with("//") || sch.eq_ignore_ascii_case("stun") => {
                match sch.to_ascii_lowercase().as_str() {
                    "stun" => (Some(Scheme::Stun), rest),
                    "stuns" => (Some(Scheme::Stuns), rest),
                    "turn" => (Some(Scheme::Turn), rest),
                    "turns" => (Some(Scheme::Turns), rest),
                    _ => (None, s),
                }
            }
            Some((sch, _)) if matches!(sch.to_ascii_lowercase().as_str(), "http" | "https" | "ws" | "wss") => {
                return Err(bad(&format!("'{sch}://' is not a STUN or TURN URI")));
            }
            _ => (None, s),
        };
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let mut transport = match scheme {
            Some(Scheme::Stuns) | Some(Scheme::Turns) => Some(Transport::Tls),
            _ => None,
        };
        if let Some(q) = query {
            for kv in q.split('&') {
                match kv.split_once('=') {
                    Some(("transport", "udp")) if transport.is_none() => transport = Some(Transport::Udp),
                    Some(("transport", "tcp")) if transport.is_none() => transport = Some(Transport::Tcp),
                    Some(("transport", "tcp")) | Some(("transport", "udp")) => {}
                    _ => return Err(bad(&format!("unknown URI parameter '{kv}' (only transport=udp|tcp)"))),
                }
            }
        }
        let (host, port) = split_host_port(hostport).map_err(|w| bad(&w))?;
        if port == Some(0) {
            return Err(bad("port 0 is not a server port"));
        }
        Ok(ServerSpec { input: input.to_string(), scheme, host, port, transport })
    }

    /// The port to use over `transport`: the explicit one, else the default.
    pub fn port_for(&self, transport: Transport) -> u16 {
        self.port.unwrap_or_else(|| transport.default_port())
    }

    /// [`ServerSpec::resolve`] bounded by `deadline`, with the failure typed:
    /// a name that does not exist is the user's mistake (exit 2), a resolver
    /// that cannot be reached or does not answer in time is the network's.
    pub async fn resolve_by(
        &self,
        transport: Transport,
        family: Family,
        deadline: tokio::time::Instant,
    ) -> Result<SocketAddr, ResolveError> {
        match tokio::time::timeout_at(deadline, self.resolve(transport, family)).await {
            Ok(Ok(a)) => Ok(a),
            // getaddrinfo's EAI_AGAIN: the resolver could not be reached; says nothing of the name.
            Ok(Err(e)) if e.0.contains("Temporary failure") => Err(ResolveError::Outage(e.0)),
            Ok(Err(e)) => Err(ResolveError::BadName(e)),
            Err(_) => Err(ResolveError::TimedOut),
        }
    }

    /// Resolves to the first address of the wanted family.
    pub async fn resolve(&self, transport: Transport, family: Family) -> Result<SocketAddr, UsageError> {
        let port = self.port_for(transport);
        match &self.host {
            Host::Ip(ip) if family.admits(ip) => Ok(SocketAddr::new(*ip, port)),
            Host::Ip(ip) => Err(UsageError::new(format!(
                "{ip} is not an {} address (drop -4/-6)",
                if family == Family::V4 { "IPv4" } else { "IPv6" }
            ))),
            Host::Name(name) => {
                let addrs = tokio::net::lookup_host((name.as_str(), port)).await.map_err(|e| {
                    UsageError::new(format!("cannot resolve '{name}': {e}; check the name and your DNS"))
                })?;
                let all: Vec<SocketAddr> = addrs.collect();
                all.iter().copied().find(|a| family.admits(&a.ip())).ok_or_else(|| {
                    UsageError::new(match family {
                        Family::Any => format!("'{name}' resolved to no address"),
                        Family::V4 => format!("'{name}' has no IPv4 address (try without -4)"),
                        Family::V6 => format!("'{name}' has no IPv6 address (try without -6)"),
                    })
                })
            }
        }
    }
}

/// Why [`ServerSpec::resolve_by`] gave no address.
#[derive(Debug)]
pub enum ResolveError {
    /// The name does not exist or has no address of the family: bad input.
    BadName(UsageError),
    /// The resolver could not be reached.
    Outage(String),
    /// No answer before the deadline.
    TimedOut,
}

impl ResolveError {
    /// The sentence for a report, `waited` being the deadline's length.
    pub fn describe(&self, waited: std::time::Duration) -> String {
        match self {
            ResolveError::BadName(e) => e.to_string(),
            ResolveError::Outage(e) => e.clone(),
            ResolveError::TimedOut => {
                format!("no DNS answer within {:.1} s; check your network and DNS server", waited.as_secs_f64())
            }
        }
    }
}

fn split_host_port(s: &str) -> Result<(Host, Option<u16>), String> {
    let parse_port = |p: &str| p.parse::<u16>().map_err(|_| format!("'{p}' is not a port number (1-65535)"));
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or("missing ']' after the IPv6 address")?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("'{ip}' is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':').ok_or("expected ':PORT' after ']'")?)?),
        };
        return Ok((Host::Ip(ip), port));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((Host::Ip(ip), None));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (s, None),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((Host::Ip(ip), port));
    }
    let valid = host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        return Err(format!("'{host}' is not a host name or IP address"));
    }
    Ok((Host::Name(host.to_ascii_lowercase()), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ServerSpec {
        ServerSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn plain_forms() {
        assert_eq!(p("stun.example.org").host, Host::Name("stun.example.org".into()));
        assert_eq!(p("stun.example.org").port, None);
        assert_eq!(p("stun.example.org:19302").port, Some(19302));
        assert_eq!(p("127.0.0.1:3478").host, Host::Ip("127.0.0.1".parse().expect("ip")));
        assert_eq!(p("[::1]:5000").port, Some(5000));
        assert_eq!(p("::1").host, Host::Ip("::1".parse().expect("ip")));
        assert_eq!(p("[2001:db8::1]").port, None);
    }

    #[test]
    fn uris() {
        let s = p("stuns:stun.example.org");
        assert_eq!(s.scheme, Some(Scheme::Stuns));
        assert_eq!(s.transport, Some(Transport::Tls));
        assert_eq!(s.port_for(Transport::Tls), 5349);
        let t = p("turn:198.51.100.1:3479?transport=tcp");
        assert_eq!(t.scheme, Some(Scheme::Turn));
        assert_eq!(t.transport, Some(Transport::Tcp));
        assert_eq!(t.port, Some(3479));
        assert_eq!(p("stun:[::1]:3478").port, Some(3478));
        assert_eq!(p("STUN:Example.ORG").host, Host::Name("example.org".into()));
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for bad in [
            "",
            "host:0",
            "host:99999",
            "host:abc",
            "[::1",
            "[zz]:1",
            "bad host!",
            "http://x",
            "turn:x?foo=bar",
            ":3478",
        ] {
            assert!(ServerSpec::parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn default_ports() {
        assert_eq!(p("x").port_for(Transport::Udp), 3478);
        assert_eq!(p("x").port_for(Transport::Tls), 5349);
    }
}
