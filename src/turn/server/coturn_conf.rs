//! The common options of a coturn `turnserver.conf`, so an operator moving
//! from coturn keeps their file (`natkit relay --config FILE`). Options natkit
//! does not know are collected and reported in one warning, never silently
//! dropped.
//!
//! Format: one option per line, `name=value`, `name value` or a bare `name`
//! for flags; `#` starts a comment; values may be quoted.

use std::net::IpAddr;
use std::path::PathBuf;

use super::peer_policy::{Cidr, range_to_cidrs};

/// What a turnserver.conf said, in natkit's terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoturnConf {
    pub listening_ips: Vec<IpAddr>,
    pub listening_port: Option<u16>,
    pub tls_listening_port: Option<u16>,
    pub alt_listening_port: Option<u16>,
    pub relay_ips: Vec<IpAddr>,
    pub external_ip: Option<IpAddr>,
    pub realm: Option<String>,
    /// `name:password` pairs.
    pub users: Vec<String>,
    pub lt_cred_mech: bool,
    pub use_auth_secret: bool,
    pub static_auth_secret: Option<String>,
    pub cert: Option<PathBuf>,
    pub pkey: Option<PathBuf>,
    pub min_port: Option<u16>,
    pub max_port: Option<u16>,
    pub fingerprint: bool,
    pub verbose: bool,
    pub denied_peers: Vec<Cidr>,
    pub allowed_peers: Vec<Cidr>,
    /// Options natkit does not implement, in file order, each once.
    pub unknown: Vec<String>,
}

/// Options that only make sense in coturn and are accepted without effect.
const IGNORED: &[&str] = &["no-cli", "no-dtls", "simple-log", "no-stdout-log", "log-file", "pidfile"];

pub fn parse(text: &str) -> Result<CoturnConf, String> {
    let mut c = CoturnConf::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let line = line.trim_start_matches("--");
        let (name, value) = match line.find(|ch: char| ch == '=' || ch.is_whitespace()) {
            Some(p) => (line[..p].trim(), line[p + 1..].trim().trim_matches('"').trim()),
            None => (line, ""),
        };
        let at = |what: &str| format!("line {}: {name}: {what} (got '{value}')", i + 1);
        let ip = || value.parse::<IpAddr>().map_err(|_| at("expected an IP address"));
        let port = || value.parse::<u16>().map_err(|_| at("expected a port number"));
        let need = || if value.is_empty() { Err(at("needs a value")) } else { Ok(value.to_string()) };
        match name {
            "listening-ip" => c.listening_ips.push(ip()?),
            "listening-port" => c.listening_port = Some(port()?),
            "tls-listening-port" => c.tls_listening_port = Some(port()?),
            "alt-listening-port" => c.alt_listening_port = Some(port()?),
            "relay-ip" => c.relay_ips.push(ip()?),
            // coturn accepts `public/private`; the public one is what clients are told.
            "external-ip" => {
                let public = value.split('/').next().unwrap_or("");
                c.external_ip = Some(public.parse().map_err(|_| at("expected IP or PUBLIC/PRIVATE"))?);
            }
            "realm" => c.realm = Some(need()?),
            "user" => {
                let u = need()?;
                if !u.contains(':') {
                    return Err(at("expected name:password"));
                }
                c.users.push(u);
            }
            "lt-cred-mech" => c.lt_cred_mech = true,
            "use-auth-secret" => c.use_auth_secret = true,
            "static-auth-secret" => c.static_auth_secret = Some(need()?),
            "cert" => c.cert = Some(PathBuf::from(need()?)),
            "pkey" => c.pkey = Some(PathBuf::from(need()?)),
            "min-port" => c.min_port = Some(port()?),
            "max-port" => c.max_port = Some(port()?),
            "fingerprint" => c.fingerprint = true,
            "verbose" | "Verbose" => c.verbose = true,
            "denied-peer-ip" => c.denied_peers.extend(range_to_cidrs(value).map_err(|e| at(&e))?),
            "allowed-peer-ip" => c.allowed_peers.extend(range_to_cidrs(value).map_err(|e| at(&e))?),
            n if IGNORED.contains(&n) => {}
            n => {
                if !c.unknown.iter().any(|u| u == n) {
                    c.unknown.push(n.to_string());
                }
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_options() {
        let c = parse(
            "# a coturn file\n\
             listening-ip=127.0.0.1\nlistening-ip 127.0.0.2\nlistening-port=3479\n\
             tls-listening-port=5350\nalt-listening-port=3480\n\
             relay-ip=127.0.0.1\nexternal-ip=203.0.113.9/10.0.0.9\nrealm=\"example.org\"\n\
             user=alice:pw\nlt-cred-mech\nuse-auth-secret\nstatic-auth-secret=s3cret\n\
             cert=/etc/c.pem\npkey=/etc/k.pem\nmin-port=50000\nmax-port=50100\nfingerprint\nno-cli\nverbose\n\
             denied-peer-ip=10.0.0.0-10.255.255.255\nallowed-peer-ip=10.1.2.3  # trailing comment\n\
             mobility\nstale-nonce=600\nmobility\n",
        )
        .unwrap();
        assert_eq!(c.listening_ips, vec!["127.0.0.1".parse::<IpAddr>().unwrap(), "127.0.0.2".parse().unwrap()]);
        assert_eq!(
            (c.listening_port, c.tls_listening_port, c.alt_listening_port),
            (Some(3479), Some(5350), Some(3480))
        );
        assert_eq!(c.external_ip, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(c.realm.as_deref(), Some("example.org"));
        assert_eq!(c.users, vec!["alice:pw"]);
        assert!(c.lt_cred_mech && c.use_auth_secret && c.fingerprint && c.verbose);
        assert_eq!(c.static_auth_secret.as_deref(), Some("s3cret"));
        assert_eq!((c.min_port, c.max_port), (Some(50000), Some(50100)));
        assert_eq!(c.denied_peers, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(c.allowed_peers, vec!["10.1.2.3/32".parse().unwrap()]);
        assert_eq!(c.unknown, vec!["mobility", "stale-nonce"]);
    }

    #[test]
    fn bad_values_name_the_line() {
        let e = parse("realm=x\nlistening-port=http\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("listening-port"), "{e}");
        assert!(parse("user=nocolon").is_err());
        assert!(parse("denied-peer-ip=10.0.0.9-10.0.0.1").is_err());
    }
}
