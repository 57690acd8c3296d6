//! The common options of a coturn `turnserver.conf`, so an operator moving
//! from coturn keeps their file (`natkit relay --config FILE`). Options natkit
//! does not implement are collected and reported in one warning with the
//! reason for each ([`not_implemented_reason`]), never silently dropped;
//! `daemon` is refused (natkit runs in the foreground under systemd).
//!
//! Format: one option per line, `name=value`, `name value` or a bare `name`
//! for flags; `#` starts a comment; values may be quoted.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::turn::server::peer_policy::{Cidr, range_to_cidrs};

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
    /// Allocations per user and in total; 0 (and, in coturn, absence) means unlimited.
    pub user_quota: Option<u32>,
    pub total_quota: Option<u32>,
    /// `allow-loopback-peers`: coturn refuses loopback peers without it, as natkit does.
    pub allow_loopback_peers: bool,
    /// `no-multicast-peers`: coturn relays to multicast peers without it; natkit never does unless allowed.
    pub no_multicast_peers: bool,
    /// `log-file`: the log goes there (reopened on SIGHUP); None also for `log-file=stdout`.
    pub log_file: Option<PathBuf>,
    /// `no-stdout-log`: with a log file, nothing on stderr.
    pub no_stdout_log: bool,
    /// `pidfile`: written at start, removed at exit.
    pub pidfile: Option<PathBuf>,
    /// `stale-nonce[=SECS]`: natkit's `--nonce-lifetime` (coturn's default value is 600).
    pub stale_nonce: Option<u64>,
    /// `alternate-server` (repeatable in coturn): natkit's `--alternate-server` takes the first.
    pub alternate_servers: Vec<SocketAddr>,
    /// `redis-userdb`: coturn's connection string (`ip=.. dbname=.. password=.. port=..`), natkit's `--userdb`.
    pub redis_userdb: Option<String>,
    /// Options natkit does not implement, in file order, each once.
    pub unknown: Vec<String>,
}

/// Options whose effect is already natkit's behaviour: accepted without a word.
/// `simple-log`: natkit always logs to the exact file name (coturn otherwise
/// adds the date and pid to it). `no-cli`, `no-dtls`: natkit has no telnet CLI
/// and no DTLS listener to turn off.
const ALREADY_SO: &[&str] = &["no-cli", "no-dtls", "simple-log"];

/// Why natkit does not implement a coturn option (said once at start).
pub fn not_implemented_reason(option: &str) -> &'static str {
    match option {
        "mobility" => "MOBILITY-TICKET (RFC 8016) is not implemented",
        "syslog" => "natkit logs to stderr (journald under systemd) or log-file",
        "no-tls" | "no-tcp" | "no-udp" | "no-udp-relay" => "listeners are chosen with --listen/--tls-listen instead",
        "no-tcp-relay" => {
            "TCP relaying (RFC 6062) is always offered to TCP/TLS clients; --max-tcp-connections caps it per allocation"
        }
        "dh-file" | "cipher-list" | "ec-curve-name" | "no-tlsv1" | "no-tlsv1_1" | "no-tlsv1_2" | "dh2066" => {
            "TLS is rustls with its safe defaults (TLS 1.2 and 1.3 only); nothing to tune"
        }
        "cli-ip" | "cli-port" | "cli-password" | "cli-max-output-sessions" => "natkit has no telnet CLI; use --metrics",
        "web-admin" | "web-admin-ip" | "web-admin-port" | "web-admin-listen-on-workers" => {
            "natkit has no web admin; use --metrics"
        }
        "prometheus" | "prometheus-port" => "use --metrics ADDR (Prometheus text)",
        "userdb" | "db" | "psql-userdb" | "mysql-userdb" | "mongo-userdb" => {
            "of coturn's user databases natkit reads Redis (redis-userdb, --userdb); move the users with turnadmin"
        }
        "redis-statsdb" => "allocation status is not written to Redis; use --metrics",
        "oauth" | "server-name" => "third-party authorization (RFC 7635) is not implemented",
        "max-bps" | "bps-capacity" => "bandwidth caps are not implemented",
        "channel-lifetime" | "permission-lifetime" | "max-allocate-lifetime" => {
            "lifetimes are RFC 8656's (permission 300 s, channel 600 s); the allocation cap is --max-lifetime"
        }
        "relay-threads" | "general-threads" => "use --workers N",
        "proc-user" | "proc-group" => "the unit file's DynamicUser/User= sets the user",
        "aux-server" | "udp-self-balance" => "use --alternate-server and a load balancer",
        "check-origin-consistency" => "ORIGIN is not checked",
        "secure-stun" => "Binding stays unauthenticated (bounded by --unauth-burst/--unauth-rate)",
        _ => "not a coturn option natkit knows",
    }
}

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
            "user-quota" => c.user_quota = Some(value.parse().map_err(|_| at("expected a number (0: unlimited)"))?),
            "total-quota" => c.total_quota = Some(value.parse().map_err(|_| at("expected a number (0: unlimited)"))?),
            "allow-loopback-peers" => c.allow_loopback_peers = true,
            "no-multicast-peers" => c.no_multicast_peers = true,
            "log-file" => match need()?.as_str() {
                // coturn's special names: stdout is natkit's stderr default; syslog is not implemented.
                "stdout" | "-" => {}
                "syslog" => push_unknown(&mut c.unknown, "syslog"),
                path => c.log_file = Some(PathBuf::from(path)),
            },
            "no-stdout-log" => c.no_stdout_log = true,
            "pidfile" => c.pidfile = Some(PathBuf::from(need()?)),
            "redis-userdb" => c.redis_userdb = Some(need()?),
            // coturn: a bare `stale-nonce` means 600 s.
            "stale-nonce" => {
                let secs = if value.is_empty() { 600 } else { value.parse().map_err(|_| at("expected seconds"))? };
                if !(1..=86_400).contains(&secs) {
                    return Err(at("expected seconds from 1 to 86400"));
                }
                c.stale_nonce = Some(secs);
            }
            "alternate-server" => {
                let a = need()?;
                let addr = a
                    .parse::<SocketAddr>()
                    .or_else(|_| a.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 3478)))
                    .map_err(|_| at("expected IP or IP:PORT"))?;
                c.alternate_servers.push(addr);
            }
            "daemon" => {
                return Err(at("natkit relay does not fork into the background; run it under systemd with \
                     deploy/natkit-relay.service (or your supervisor) and remove this line"));
            }
            n if ALREADY_SO.contains(&n) => {}
            n => push_unknown(&mut c.unknown, n),
        }
    }
    Ok(c)
}

fn push_unknown(unknown: &mut Vec<String>, name: &str) {
    if !unknown.iter().any(|u| u == name) {
        unknown.push(name.to_string());
    }
}

/// A default natkit does not share with coturn, for an option a
/// turnserver.conf leaves out: what coturn does then, what natkit does, and
/// how to get coturn's behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultDifference {
    pub option: &'static str,
    pub coturn: &'static str,
    pub natkit: String,
    pub keep_coturn: &'static str,
}

impl std::fmt::Display for DefaultDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no {} in the file: coturn then {}; natkit {}; to keep coturn's, {}",
            self.option, self.coturn, self.natkit, self.keep_coturn
        )
    }
}

/// What natkit applies where the file is silent (after its own flags), to compare with coturn.
#[derive(Debug, Clone, Copy)]
pub struct NatkitChoices {
    /// `None` when the command line set it (the operator chose; nothing to say).
    pub user_quota: Option<u32>,
    pub total_quota: Option<usize>,
    /// Whether the command line allows private peers or the multicast class.
    pub private_peers_flag: bool,
}

impl CoturnConf {
    /// Every option this file leaves out whose coturn default natkit does not
    /// share, so an operator moving from coturn is told once, at start,
    /// instead of finding out at the 101st allocation.
    pub fn default_differences(&self, natkit: NatkitChoices) -> Vec<DefaultDifference> {
        let mut v = Vec::new();
        if let (None, Some(n)) = (self.user_quota, natkit.user_quota) {
            v.push(DefaultDifference {
                option: "user-quota",
                coturn: "allows unlimited allocations per user",
                natkit: format!("allows {n} per user (486 beyond)"),
                keep_coturn: "add `user-quota=0` to the file or pass --user-quota 0",
            });
        }
        if let (None, Some(n)) = (self.total_quota, natkit.total_quota) {
            v.push(DefaultDifference {
                option: "total-quota",
                coturn: "allows unlimited allocations in total",
                natkit: format!("allows {n} in total (508 beyond)"),
                keep_coturn: "add `total-quota=0` to the file or pass --max-allocations with a larger number",
            });
        }
        if self.denied_peers.is_empty() && self.allowed_peers.is_empty() && !natkit.private_peers_flag {
            v.push(DefaultDifference {
                option: "denied-peer-ip",
                coturn: "relays to private and link-local peers (RFC 1918, fc00::/7, 169.254.0.0/16, the cloud metadata address) and, without no-multicast-peers, to multicast",
                natkit: "refuses them (403)".to_string(),
                keep_coturn: "pass --allow-private-peers, or allowed-peer-ip ranges for the peers you mean (natkit never relays to multicast)",
            });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_userdb_is_read_and_other_user_databases_are_explained() {
        let c =
            parse("redis-userdb=\"ip=127.0.0.1 dbname=2 password=pw port=6380 connect_timeout=5\"\npsql-userdb=x\n")
                .unwrap();
        assert_eq!(c.redis_userdb.as_deref(), Some("ip=127.0.0.1 dbname=2 password=pw port=6380 connect_timeout=5"));
        assert_eq!(c.unknown, vec!["psql-userdb"]);
        assert!(not_implemented_reason("psql-userdb").contains("turnadmin"));
    }

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
             mobility\nstale-nonce=300\nmobility\nsyslog\n",
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
        assert_eq!(c.unknown, vec!["mobility", "syslog"]);
        assert_eq!(c.stale_nonce, Some(300));
        assert!(not_implemented_reason("mobility").contains("RFC 8016"));
    }

    #[test]
    fn logging_pidfile_nonce_and_alternate_options_are_read_and_daemon_is_refused() {
        let c = parse(
            "log-file=/var/log/turn.log\nsimple-log\nno-stdout-log\npidfile=\"/run/turn.pid\"\nstale-nonce\n\
             alternate-server=203.0.113.5\nalternate-server=[2001:db8::5]:3479\n",
        )
        .unwrap();
        assert_eq!(c.log_file, Some(PathBuf::from("/var/log/turn.log")));
        assert!(c.no_stdout_log && c.unknown.is_empty(), "{:?}", c.unknown);
        assert_eq!(c.pidfile, Some(PathBuf::from("/run/turn.pid")));
        assert_eq!(c.stale_nonce, Some(600), "bare stale-nonce is coturn's 600 s");
        assert_eq!(
            c.alternate_servers,
            vec!["203.0.113.5:3478".parse::<SocketAddr>().unwrap(), "[2001:db8::5]:3479".parse().unwrap()]
        );
        assert_eq!(parse("log-file=stdout\n").unwrap().log_file, None);
        assert_eq!(parse("log-file=syslog\n").unwrap().unknown, vec!["syslog"]);
        let e = parse("realm=x\ndaemon\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("deploy/natkit-relay.service"), "{e}");
        assert!(parse("stale-nonce=0").is_err() && parse("alternate-server=nowhere").is_err());
    }

    #[test]
    fn quotas_are_read_and_missing_ones_are_named_with_coturn_s_meaning() {
        let c = parse("user-quota=0\ntotal-quota=500\nallow-loopback-peers\nno-multicast-peers\n").unwrap();
        assert_eq!((c.user_quota, c.total_quota), (Some(0), Some(500)));
        assert!(c.allow_loopback_peers && c.no_multicast_peers && c.unknown.is_empty());
        let choices = NatkitChoices { user_quota: Some(100), total_quota: Some(10_000), private_peers_flag: false };
        assert_eq!(c.default_differences(choices).iter().map(|d| d.option).collect::<Vec<_>>(), vec!["denied-peer-ip"]);
        let silent = parse("realm=x\n").unwrap();
        let all = silent.default_differences(choices);
        assert_eq!(
            all.iter().map(|d| d.option).collect::<Vec<_>>(),
            vec!["user-quota", "total-quota", "denied-peer-ip"]
        );
        assert!(all[0].to_string().contains("unlimited") && all[0].to_string().contains("user-quota=0"));
        let flags = NatkitChoices { user_quota: None, total_quota: None, private_peers_flag: true };
        assert!(silent.default_differences(flags).is_empty(), "flags given: the operator chose");
        assert!(parse("user-quota=lots").is_err());
    }

    #[test]
    fn bad_values_name_the_line() {
        let e = parse("realm=x\nlistening-port=http\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("listening-port"), "{e}");
        assert!(parse("user=nocolon").is_err());
        assert!(parse("denied-peer-ip=10.0.0.9-10.0.0.1").is_err());
    }
}
