//! The validated settings of `natkit relay`, in the style of ripgrep's
//! `hiargs`: flags and an optional coturn turnserver.conf (flags win) become
//! the sans-IO core's [`ServerConfig`] and the driver's [`DriverConfig`], or a
//! usage error that names the flag and what to give instead (exit 2).
//! Where the file is silent and natkit's default is not coturn's, the
//! differences are listed for one warning each at start (issue #13).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::cli::RelayArgs;
use crate::error::{UsageError, usage};
use crate::net::metrics_http::MetricsLimits;
use crate::net::relay_driver::{ConnLimits, DriverConfig};
use crate::relay::coturn_conf::{self, CoturnConf, NatkitChoices};
use crate::relay::listeners::{Listeners, parse_addr};
use crate::relay::userdb_redis::{RedisUserDbConfig, parse_target};
use crate::turn::server::ServerConfig;
use crate::turn::server::peer_policy::{Cidr, PeerPolicyConfig};
use crate::turn::server::tcp_relay::TcpRelayConfig;
use crate::turn::server::throttle::ThrottleConfig;
use crate::turn::server::unauth_limit::UnauthLimitConfig;
use crate::turn::server::userdb::UserDbConfig;

const DEFAULT_USER_QUOTA: u32 = 100;
const DEFAULT_MAX_ALLOCATIONS: usize = 10_000;

/// Everything resolved from flags and the config file.
pub struct RelayOptions {
    pub core: ServerConfig,
    pub driver: DriverConfig,
    /// `udp+tcp ADDR`, `udp ADDR (RFC 5780)`, `tls ADDR`: for the start line and the report.
    pub listening: Vec<String>,
}

impl RelayOptions {
    pub fn from_args(args: &RelayArgs, conf: &CoturnConf) -> anyhow::Result<RelayOptions> {
        let listeners = Listeners::from_args(args, conf)?;
        let external_ip = args.external_ip.or(conf.external_ip);
        let policy = PeerPolicyConfig {
            allow_loopback: args.allow_loopback_peers || conf.allow_loopback_peers,
            allow_private: args.allow_private_peers,
            allow: cidrs(&args.allow_peer, &conf.allowed_peers, "--allow-peer")?,
            deny: cidrs(&args.deny_peer, &conf.denied_peers, "--deny-peer")?,
            own_addresses: listeners.own_addresses(external_ip),
            host_ips: listeners.host_ips(external_ip),
            allow_host: args.allow_relay_host_peers,
        };
        let core = ServerConfig {
            realm: args.realm.clone().or_else(|| conf.realm.clone()).unwrap_or_else(|| "natkit".into()),
            users: users(args, conf)?,
            secret: secret(args, conf)?,
            policy,
            max_allocations: max_allocations(args, conf),
            user_quota: user_quota(args, conf),
            source_quota: args.source_quota,
            max_permissions: args.max_permissions,
            max_lifetime: Duration::from_secs(args.max_lifetime),
            nonce_lifetime: Duration::from_secs(args.nonce_lifetime.or(conf.stale_nonce).unwrap_or(600)),
            rfc5780: listeners.rfc5780,
            external_ip,
            alternate_server: match args.alternate_server.as_deref() {
                Some(a) => Some(parse_addr(a, 3478, "--alternate-server")?),
                None => conf.alternate_servers.first().copied(),
            },
            throttle: throttle(args)?,
            unauth: UnauthLimitConfig {
                burst_bytes: args.unauth_burst,
                bytes_per_sec: args.unauth_rate,
                ..UnauthLimitConfig::default()
            },
            tcp: TcpRelayConfig {
                max_per_allocation: args.max_tcp_connections as usize,
                bind_timeout: Duration::from_secs(args.tcp_bind_timeout),
            },
            ..ServerConfig::default()
        };
        let (core, userdb) = userdb(args, conf, core)?;
        let listening = listeners.labels();
        let driver = DriverConfig {
            listen: listeners.listen,
            listen_udp_only: listeners.listen_udp_only,
            tls_listen: listeners.tls_listen,
            tls: listeners.tls,
            relay_ips: listeners.relay_ips,
            ports: listeners.ports,
            workers: workers(args),
            metrics: args.metrics.as_deref().map(|m| parse_addr(m, 9641, "--metrics")).transpose()?,
            metrics_limits: MetricsLimits::with_cap(
                args.metrics_max_connections as usize,
                Duration::from_secs(args.metrics_header_timeout),
            ),
            limits: ConnLimits {
                max_connections: args.max_connections as usize,
                max_per_ip: args.max_connections_per_ip as usize,
                tls_handshake: Duration::from_secs(args.tls_handshake_timeout),
                first_message: Duration::from_secs(args.first_message_timeout),
                idle: Duration::from_secs(args.idle_timeout),
                stream_queue_bytes: args.stream_queue_bytes as usize,
            },
            drain_timeout: Duration::from_secs(args.drain_timeout),
            userdb,
        };
        Ok(RelayOptions { core, driver, listening })
    }

    /// No static user, no REST secret and no user database: TURN is refused to everyone.
    pub fn has_no_users(&self) -> bool {
        self.core.users.is_empty() && self.core.secret.is_none() && self.core.userdb.is_none()
    }
}

/// `--config FILE`, parsed; a file that cannot be read or parsed is a usage error.
pub fn read_conf(path: &Path) -> Result<CoturnConf, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError::new(format!("cannot read --config {}: {e}", path.display())))?;
    coturn_conf::parse(&text).map_err(|e| UsageError::new(format!("--config {}: {e}", path.display())))
}

/// What a turnserver.conf says that natkit does differently: options it does
/// not implement (with the reason), `alternate-server` used only while
/// draining, and defaults that differ where the file is silent (a flag given
/// is a choice made). One line each, for warnings at start.
pub fn config_warnings(args: &RelayArgs, conf: &CoturnConf) -> Vec<String> {
    let Some(path) = &args.config else { return Vec::new() };
    let name = path.display();
    let mut warnings = Vec::new();
    if !conf.unknown.is_empty() {
        let why: Vec<String> =
            conf.unknown.iter().map(|o| format!("{o} ({})", coturn_conf::not_implemented_reason(o))).collect();
        warnings.push(format!(
            "{name}: natkit does not implement these turnserver.conf options and ignores them: {}",
            why.join("; ")
        ));
    }
    if !conf.alternate_servers.is_empty() && args.alternate_server.is_none() {
        // coturn redirects every Allocate to its alternate servers (load balancing); natkit only while draining.
        warnings.push(format!(
            "{name}: alternate-server {} is used while draining (300 Try Alternate after SIGTERM), not for every \
             Allocate as coturn does{}",
            conf.alternate_servers[0],
            if conf.alternate_servers.len() > 1 { "; the others are not used" } else { "" }
        ));
    }
    let choices = NatkitChoices {
        user_quota: args.user_quota.is_none().then_some(DEFAULT_USER_QUOTA),
        total_quota: args.max_allocations.is_none().then_some(DEFAULT_MAX_ALLOCATIONS),
        private_peers_flag: args.allow_private_peers || !args.allow_peer.is_empty(),
    };
    warnings.extend(conf.default_differences(choices).iter().map(|d| format!("{name}: {d}")));
    warnings
}

/// `--user NAME:PASS` and the file's `user=`; the first password given for a name wins.
fn users(args: &RelayArgs, conf: &CoturnConf) -> anyhow::Result<HashMap<String, String>> {
    let mut users = HashMap::new();
    for u in args.users.iter().chain(&conf.users) {
        let Some((name, pass)) = u.split_once(':') else {
            return usage(format!("bad --user '{u}': expected NAME:PASS"));
        };
        if name.is_empty() {
            return usage(format!("bad --user '{u}': the name is empty"));
        }
        users.entry(name.to_string()).or_insert_with(|| pass.to_string());
    }
    Ok(users)
}

fn secret(args: &RelayArgs, conf: &CoturnConf) -> anyhow::Result<Option<String>> {
    let secret = args.secret.clone().or_else(|| conf.static_auth_secret.clone());
    if secret.as_deref() == Some("") {
        return usage("--secret is empty");
    }
    Ok(secret)
}

fn cidrs(flags: &[String], file: &[Cidr], flag: &str) -> Result<Vec<Cidr>, UsageError> {
    let mut v: Vec<Cidr> = flags
        .iter()
        .map(|s| s.parse::<Cidr>().map_err(|e| UsageError::new(format!("bad {flag}: {e}"))))
        .collect::<Result<_, _>>()?;
    v.extend(file.iter().copied());
    Ok(v)
}

// 0 is "unlimited", in coturn's files and in natkit's flags alike.
fn user_quota(args: &RelayArgs, conf: &CoturnConf) -> u32 {
    match args.user_quota.or(conf.user_quota).unwrap_or(DEFAULT_USER_QUOTA) {
        0 => u32::MAX,
        n => n,
    }
}

fn max_allocations(args: &RelayArgs, conf: &CoturnConf) -> usize {
    match args.max_allocations.or(conf.total_quota.map(|n| n as usize)) {
        Some(0) => usize::MAX,
        Some(n) => n,
        None => DEFAULT_MAX_ALLOCATIONS,
    }
}

fn throttle(args: &RelayArgs) -> anyhow::Result<ThrottleConfig> {
    for (flag, rate) in [("--auth-source-rate", args.auth_source_rate), ("--auth-user-rate", args.auth_user_rate)] {
        if !(rate.is_finite() && (0.001..=1_000_000.0).contains(&rate)) {
            return usage(format!("bad {flag} {rate}: expected checked logins per second, 0.001 to 1000000"));
        }
    }
    Ok(ThrottleConfig {
        burst: args.auth_burst,
        source_per_sec: args.auth_source_rate,
        user_per_sec: args.auth_user_rate,
        max_backoff: Duration::from_secs(args.auth_max_backoff),
        ..ThrottleConfig::default()
    })
}

fn workers(args: &RelayArgs) -> usize {
    args.workers
        .map(|w| w as usize)
        // Most of a relay's CPU is the kernel's send path, which runs on the
        // sending thread; fewer workers wake less often and batch more, and
        // leave cores to the rest of the machine (measured: scripts/bench-relay).
        .unwrap_or_else(|| (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) / 2).clamp(1, 8))
}

/// `--userdb` (or the file's `redis-userdb`): the core's cache and parking
/// limits and the driver's Redis address and timeout.
fn userdb(
    args: &RelayArgs,
    conf: &CoturnConf,
    mut core: ServerConfig,
) -> Result<(ServerConfig, Option<RedisUserDbConfig>), UsageError> {
    let Some(raw) = args.userdb.as_deref().or(conf.redis_userdb.as_deref()) else {
        return Ok((core, None));
    };
    let (url, conf_timeout) = parse_target(raw).map_err(|e| UsageError::new(format!("bad --userdb: {e}")))?;
    let timeout = args.userdb_timeout.map(Duration::from_millis).or(conf_timeout).unwrap_or(Duration::from_secs(1));
    core.userdb = Some(UserDbConfig {
        cache_ttl: Duration::from_secs(args.userdb_cache),
        max_cached: args.userdb_cache_size as usize,
        max_pending: args.userdb_max_pending as usize,
        max_pending_per_source: args.userdb_max_pending_per_ip as usize,
        // Past the driver's own timeout with room to spare: only a lost answer gets here.
        pending_timeout: timeout * 2 + Duration::from_secs(1),
    });
    Ok((core, Some(RedisUserDbConfig { url, timeout })))
}
