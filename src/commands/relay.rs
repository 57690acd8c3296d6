//! `natkit relay`: a STUN/TURN server with an RFC 5780 responder.
//!
//! Turns flags and an optional coturn turnserver.conf into the core's
//! [`ServerConfig`] and the driver's [`DriverConfig`], runs until SIGINT
//! (stop now) or SIGTERM (drain first), and reports what the relay did.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use crate::cli::RelayArgs;
use crate::error::{Status, UsageError, usage};
use crate::net::conn_limit::raise_nofile_limit;
use crate::net::metrics_http::MetricsLimits;
use crate::net::relay_driver::{self, ConnLimits, DriverConfig, Stop};
use crate::output::{self, OutputOptions, Render};
use crate::relay::coturn_conf::{self, CoturnConf, NatkitChoices};
use crate::relay::log_file;
use crate::relay::userdb_redis::{RedisUserDbConfig, parse_target};
use crate::turn::server::auth::AuthFailure;
use crate::turn::server::peer_policy::{Cidr, PeerPolicyConfig, Refusal};
use crate::turn::server::throttle::ThrottleConfig;
use crate::turn::server::unauth_limit::UnauthLimitConfig;
use crate::turn::server::userdb::UserDbConfig;
use crate::turn::server::{Rfc5780, ServerConfig, Stats};

/// What the relay did, printed when it stops.
#[derive(Debug, Serialize)]
pub struct RelayReport {
    /// `udp 127.0.0.1:3478`, `tcp ...`, `tls ...`.
    pub listening: Vec<String>,
    pub relay_ips: Vec<IpAddr>,
    pub uptime_s: f64,
    pub allocations_created: u64,
    pub allocations_ended: u64,
    pub requests: u64,
    pub packets_to_peers: u64,
    pub packets_from_peers: u64,
    pub packets_internal: u64,
    pub bytes_relayed: u64,
    pub tcp_connections: u64,
    /// Peers refused by the safety policy, by reason.
    pub peer_refusals: BTreeMap<String, u64>,
    /// Failed credentials, by reason.
    pub auth_failures: BTreeMap<String, u64>,
    /// Requests refused without an integrity check by the password-guessing throttle.
    pub auth_throttled: u64,
    /// Unauthenticated answers over UDP withheld by the per-source byte budget (amplification).
    pub unauth_rate_limited: u64,
    /// Allocate refused (486) because the client's address reached `--source-quota`.
    pub source_quota_refusals: u64,
    pub dropped_packets: u64,
}

impl Render for RelayReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "natkit relay stopped after {}",
            output::duration(Duration::from_secs_f64(self.uptime_s.max(0.0)))
        )?;
        let mut t = output::Grid::key_value();
        t.row(vec!["listening".to_string(), self.listening.join(", ")]);
        t.row(vec![
            "allocations created / ended".to_string(),
            format!("{} / {}", self.allocations_created, self.allocations_ended),
        ]);
        t.row(vec!["requests".to_string(), self.requests.to_string()]);
        t.row(vec![
            "packets to peers / from peers / internal".to_string(),
            format!("{} / {} / {}", self.packets_to_peers, self.packets_from_peers, self.packets_internal),
        ]);
        t.row(vec!["bytes relayed".to_string(), output::bytes(self.bytes_relayed)]);
        t.row(vec!["TCP/TLS connections".to_string(), self.tcp_connections.to_string()]);
        let fmt_map = |m: &BTreeMap<String, u64>| {
            let v: Vec<String> = m.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
            if v.is_empty() { "none".to_string() } else { v.join(", ") }
        };
        t.row(vec!["peer refusals (403)".to_string(), fmt_map(&self.peer_refusals)]);
        t.row(vec!["authentication failures".to_string(), fmt_map(&self.auth_failures)]);
        t.row(vec!["logins refused unchecked (throttle)".to_string(), self.auth_throttled.to_string()]);
        t.row(vec!["dropped packets".to_string(), self.dropped_packets.to_string()]);
        writeln!(out, "{t}")
    }
}

/// Everything resolved from flags and the config file.
struct Plan {
    core: ServerConfig,
    driver: DriverConfig,
    listening: Vec<String>,
}

pub async fn run(args: RelayArgs, opts: &OutputOptions) -> anyhow::Result<Status> {
    let conf = match &args.config {
        Some(path) => read_conf(path)?,
        None => CoturnConf::default(),
    };
    // The log file first, so every warning below lands in it too.
    if let Some(path) = &conf.log_file {
        log_file::open(path, !conf.no_stdout_log).map_err(|e| {
            UsageError::new(format!(
                "cannot open log-file {} for appending: {e}; fix the path or its permissions, or remove log-file",
                path.display()
            ))
        })?;
    }
    let config_name = args.config.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    if !conf.unknown.is_empty() && !opts.quiet {
        let why: Vec<String> =
            conf.unknown.iter().map(|o| format!("{o} ({})", coturn_conf::not_implemented_reason(o))).collect();
        tracing::warn!(
            "{config_name}: natkit does not implement these turnserver.conf options and ignores them: {}",
            why.join("; ")
        );
    }
    if !conf.alternate_servers.is_empty() && args.alternate_server.is_none() && !opts.quiet {
        // coturn redirects every Allocate to its alternate servers (load balancing); natkit only while draining.
        tracing::warn!(
            "{config_name}: alternate-server {} is used while draining (300 Try Alternate after SIGTERM), not for every \
             Allocate as coturn does{}",
            conf.alternate_servers[0],
            if conf.alternate_servers.len() > 1 { "; the others are not used" } else { "" }
        );
    }
    if let Some(path) = &args.config
        && !opts.quiet
    {
        for d in coturn_differences(&args, &conf) {
            tracing::warn!("{}: {d}", path.display());
        }
    }
    let nofile = raise_nofile_limit();
    let mut plan = plan(&args, &conf)?;
    let fds = fit_descriptors(&mut plan, nofile);
    if let Some(w) = &fds.warning
        && !opts.quiet
    {
        tracing::warn!("{w}");
    }
    if plan.core.users.is_empty() && plan.core.secret.is_none() && plan.core.userdb.is_none() && !opts.quiet {
        tracing::warn!("no --user and no --secret: STUN is answered, every TURN allocation is refused (401)");
    }
    // Handlers before the first socket: a signal that comes as soon as the port answers is not lost.
    let stop = stop_requests()?;
    reopen_log_on_hangup()?;
    // Every bind first: a busy port is an error, and "listening on" is only said when true.
    let bound = relay_driver::bind(&plan.driver).await.map_err(|e| UsageError::new(e.to_string()))?;
    // After the bind: a pidfile names a process that serves (or none, when the bind failed).
    let _pidfile = conf.pidfile.as_deref().map(PidFile::write).transpose()?;
    let userdb = match (&plan.driver.userdb, &plan.core.userdb) {
        (Some(d), Some(c)) => format!(
            "; users also from {} (cached {} s)",
            crate::relay::userdb_redis::redacted(&d.url),
            c.cache_ttl.as_secs()
        ),
        _ => String::new(),
    };
    let start_line = format!(
        "natkit relay: listening on {}; relaying from {} ports {}-{}; file descriptors {}{userdb}",
        plan.listening.join(", "),
        plan.driver.relay_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" and "),
        plan.driver.ports.0,
        plan.driver.ports.1,
        fds.limit
    );
    log_file::line(&start_line);
    if log_file::stderr_wanted() {
        output::notice(opts, &start_line);
    }
    let started = Instant::now();
    let (stats, tcp_connections) = relay_driver::run(plan.core, plan.driver.clone(), bound, stop)
        .await
        .map_err(|e| UsageError::new(e.to_string()))?;
    let report = report(&plan.listening, &plan.driver.relay_ips, &stats, tcp_connections, started.elapsed());
    tracing::info!(
        allocations = report.allocations_created,
        packets = report.packets_to_peers + report.packets_from_peers + report.packets_internal,
        "natkit relay stopped"
    );
    log_file::line(&format!(
        "natkit relay: stopped after {} s; {} allocations created",
        started.elapsed().as_secs(),
        report.allocations_created
    ));
    output::emit(&report, opts)?;
    Ok(Status::Ok)
}

/// Signals as stop requests: SIGTERM (what systemd, Kubernetes and most
/// orchestrators send when scaling in) drains; SIGINT (Ctrl-C at a terminal)
/// stops now; a second signal during a drain stops now (the driver's rule).
fn stop_requests() -> anyhow::Result<tokio::sync::mpsc::Receiver<Stop>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let stop = tokio::select! {
                _ = term.recv() => Stop::Drain,
                _ = int.recv() => Stop::Now,
            };
            if tx.send(stop).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// SIGHUP reopens the log file by name (logrotate renamed it), as coturn
/// does; without a log file it is ignored rather than ending the relay.
fn reopen_log_on_hangup() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match log_file::reopen() {
                Ok(Some(path)) => tracing::info!("SIGHUP: log file {} reopened", path.display()),
                Ok(None) => tracing::info!("SIGHUP: no log-file to reopen"),
                // Lines keep going to the old file descriptor; say so where it can be seen.
                Err(e) => tracing::error!("SIGHUP: cannot reopen the log file: {e}; still writing to the old one"),
            }
        }
    });
    Ok(())
}

/// coturn's `pidfile`: this process's id, written at start, removed when the
/// relay ends (Drop, on every way out of `run`).
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: &Path) -> Result<PidFile, UsageError> {
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|e| {
            UsageError::new(format!(
                "cannot write pidfile {}: {e}; fix the path or its permissions, or remove pidfile",
                path.display()
            ))
        })?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const DEFAULT_USER_QUOTA: u32 = 100;
const DEFAULT_MAX_ALLOCATIONS: usize = 10_000;

/// Where the file is silent and natkit's default is not coturn's: one warning
/// line each, once at start (only with --config; a flag given is a choice made).
fn coturn_differences(args: &RelayArgs, conf: &CoturnConf) -> Vec<String> {
    let choices = NatkitChoices {
        user_quota: args.user_quota.is_none().then_some(DEFAULT_USER_QUOTA),
        total_quota: args.max_allocations.is_none().then_some(DEFAULT_MAX_ALLOCATIONS),
        private_peers_flag: args.allow_private_peers || !args.allow_peer.is_empty(),
    };
    conf.default_differences(choices).iter().map(|d| d.to_string()).collect()
}

/// Descriptors kept for everything but connections and relayed sockets:
/// listeners, epoll sets, wakers, the metrics endpoint, log files.
const RESERVED_FDS: u64 = 64;

/// The descriptor limit in force and, when it is too low for the configured
/// caps, the warning that says what it lowered.
struct Descriptors {
    limit: u64,
    warning: Option<String>,
}

/// Lowers the connection and allocation caps to what `nofile` descriptors can
/// hold, so running out of descriptors is a refused connection or a 508,
/// never a stuck accept loop or a UDP client refused because of a TCP flood.
/// Every connection and every relayed socket takes one descriptor; beyond the
/// listeners' share, half the rest may go to connections and the other half
/// (at least) to allocations.
fn fit_descriptors(plan: &mut Plan, nofile: u64) -> Descriptors {
    let listeners = (plan.driver.listen.len() + plan.driver.listen_udp_only.len()) * plan.driver.workers
        + plan.driver.listen.len()
        + plan.driver.tls_listen.len();
    let budget = nofile.saturating_sub(RESERVED_FDS + listeners as u64).max(2);
    let conns = (plan.driver.limits.max_connections as u64).min(budget / 2).max(1);
    let allocs = (plan.core.max_allocations as u64).min(budget - conns).max(1);
    let (was_allocs, was_conns) = (plan.core.max_allocations as u64, plan.driver.limits.max_connections as u64);
    // A cap trimmed by a few descriptors (the defaults under a 20,000 limit) is not worth a
    // warning; one cut to less than nine tenths of what was configured is.
    let noticeably = |now: u64, was: u64| now.saturating_mul(10) < was.saturating_mul(9);
    let mut lowered = Vec::new();
    if allocs < plan.core.max_allocations as u64 {
        let was = match plan.core.max_allocations {
            usize::MAX => "unlimited".to_string(),
            n => n.to_string(),
        };
        lowered.push(format!("--max-allocations {was} to {allocs}"));
        plan.core.max_allocations = allocs as usize;
    }
    if conns < plan.driver.limits.max_connections as u64 {
        lowered.push(format!("--max-connections {} to {conns}", plan.driver.limits.max_connections));
        plan.driver.limits.max_connections = conns as usize;
    }
    let worth_saying = noticeably(allocs, was_allocs) || noticeably(conns, was_conns);
    let warning = (!lowered.is_empty() && worth_saying).then(|| {
        format!(
            "the file-descriptor limit ({nofile}, the hard limit could not be raised further) caps {}: raise it \
             (systemd LimitNOFILE=65536, or `ulimit -Hn` before starting) to serve more",
            lowered.join(" and ")
        )
    });
    Descriptors { limit: nofile, warning }
}

fn report(listening: &[String], relay_ips: &[IpAddr], s: &Stats, tcp: u64, up: Duration) -> RelayReport {
    RelayReport {
        listening: listening.to_vec(),
        relay_ips: relay_ips.to_vec(),
        uptime_s: (up.as_secs_f64() * 10.0).round() / 10.0,
        allocations_created: s.allocations_created,
        allocations_ended: s.allocations_deleted + s.allocations_expired,
        requests: s.requests,
        packets_to_peers: s.packets_to_peers,
        packets_from_peers: s.packets_from_peers,
        packets_internal: s.packets_internal,
        bytes_relayed: s.bytes_to_peers + s.bytes_from_peers + s.bytes_internal,
        tcp_connections: tcp,
        peer_refusals: Refusal::ALL.iter().map(|r| (r.label().to_string(), s.refusals[r.index()])).collect(),
        auth_failures: AuthFailure::ALL.iter().map(|a| (a.label().to_string(), s.auth_failures[a.index()])).collect(),
        auth_throttled: s.auth_throttled.iter().sum(),
        unauth_rate_limited: s.unauth_rate_limited,
        source_quota_refusals: s.source_quota_reached,
        dropped_packets: s.dropped_total(),
    }
}

fn read_conf(path: &Path) -> Result<CoturnConf, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError::new(format!("cannot read --config {}: {e}", path.display())))?;
    coturn_conf::parse(&text).map_err(|e| UsageError::new(format!("--config {}: {e}", path.display())))
}

/// `PORT`, `IP`, `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (see `cli::listen`); a bare port is on every IPv4 address.
fn parse_addr(s: &str, default_port: u16, flag: &str) -> Result<SocketAddr, UsageError> {
    crate::cli::listen::parse_listen(s, SocketAddr::from(([0, 0, 0, 0], default_port)))
        .map_err(|e| UsageError::new(format!("bad {flag} {e}")))
}

fn parse_ports(s: &str) -> Result<(u16, u16), UsageError> {
    let bad = || UsageError::new(format!("bad --ports '{s}': expected MIN-MAX with 1024 <= MIN <= MAX <= 65535"));
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?);
    if lo < 1024 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn parse_cidrs(v: &[String], flag: &str) -> Result<Vec<Cidr>, UsageError> {
    v.iter().map(|s| s.parse::<Cidr>().map_err(|e| UsageError::new(format!("bad {flag}: {e}")))).collect()
}

/// Interface addresses, so "listening on 0.0.0.0" still tells the policy which IPs are the relay's own.
fn interface_ips() -> Vec<IpAddr> {
    let mut v = crate::ice::gather::interface_ips();
    v.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    v.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    v.dedup();
    v
}

fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, UsageError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| UsageError::new(format!("cannot read --cert {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| UsageError::new(format!("bad PEM in --cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return usage_err(format!("no certificate in --cert {} (expected PEM)", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| UsageError::new(format!("cannot read a PEM private key from --key {}: {e}", key.display())))?;
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| UsageError::new(format!("--cert and --key do not make a usable TLS identity: {e}")))?;
    Ok(Arc::new(cfg))
}

fn usage_err<T>(msg: String) -> Result<T, UsageError> {
    Err(UsageError::new(msg))
}

fn plan(args: &RelayArgs, conf: &CoturnConf) -> anyhow::Result<Plan> {
    let conf_port = conf.listening_port.unwrap_or(3478);
    // Listeners: flags, else the file, else every interface on 3478.
    let mut listen: Vec<SocketAddr> =
        args.listen.iter().map(|s| parse_addr(s, 3478, "--listen")).collect::<Result<_, _>>()?;
    if listen.is_empty() && (!conf.listening_ips.is_empty() || conf.listening_port.is_some()) {
        let ips = if conf.listening_ips.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        } else {
            conf.listening_ips.clone()
        };
        // With an alt-listening-port, coturn's second listening-ip is the RFC 5780 alternate, not a listener of its own.
        let n =
            if conf.alt_listening_port.is_some() && ips.len() == 2 && args.alt_ip.is_none() { 1 } else { ips.len() };
        listen = ips[..n].iter().map(|ip| SocketAddr::new(*ip, conf_port)).collect();
    }
    if listen.is_empty() {
        listen.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3478));
        if std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).is_ok() {
            listen.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 3478));
        }
    }
    let mut tls_listen: Vec<SocketAddr> =
        args.tls_listen.iter().map(|s| parse_addr(s, 5349, "--tls-listen")).collect::<Result<_, _>>()?;
    let cert = args.cert.clone().or_else(|| conf.cert.clone());
    let key = args.key.clone().or_else(|| conf.pkey.clone());
    if tls_listen.is_empty()
        && let Some(p) = conf.tls_listening_port
        && cert.is_some()
        && key.is_some()
    {
        tls_listen = listen.iter().map(|a| SocketAddr::new(a.ip(), p)).collect();
    }
    let tls = match (&cert, &key, tls_listen.is_empty()) {
        (_, _, true) => None,
        (Some(c), Some(k), false) => Some(load_tls(c, k)?),
        _ => return usage("TLS listeners need both --cert FILE and --key FILE (PEM)"),
    };

    // RFC 5780: two IPs and two ports around the first listener.
    let alt_ip = args.alt_ip.or_else(|| {
        (conf.alt_listening_port.is_some() && conf.listening_ips.len() == 2).then(|| conf.listening_ips[1])
    });
    let alt_port = args.alt_port.or(conf.alt_listening_port);
    let primary = listen[0];
    let rfc5780 = match (alt_ip, alt_port) {
        (None, None) => None,
        (None, Some(_)) if args.alt_port.is_some() => {
            return usage("--alt-port needs --alt-ip too: RFC 5780 needs a second IP to answer change-IP requests");
        }
        (None, Some(_)) => {
            tracing::warn!("alt-listening-port without a second listening-ip: the RFC 5780 responder stays off");
            None
        }
        (Some(ip), port) => {
            if primary.ip().is_unspecified() {
                return usage(format!(
                    "--alt-ip needs a specific first --listen IP (not {}): RFC 5780 answers name the exact address",
                    primary.ip()
                ));
            }
            if ip.is_ipv4() != primary.is_ipv4() || ip == primary.ip() {
                return usage(format!("--alt-ip {ip} must be another IP of the same family as --listen {primary}"));
            }
            let port = port.unwrap_or(primary.port().wrapping_add(1));
            if port == primary.port() {
                return usage(format!("--alt-port {port} must differ from the listen port"));
            }
            Some(Rfc5780 { ips: [primary.ip(), ip], ports: [primary.port(), port] })
        }
    };
    let listen_udp_only: Vec<SocketAddr> =
        rfc5780.map(|r| r.addresses().into_iter().filter(|a| !listen.contains(a)).collect()).unwrap_or_default();

    // Relayed sockets: flags, file, the listen IP, or the first interface address of the family.
    let mut relay_ips: Vec<IpAddr> =
        if !args.relay_ip.is_empty() { args.relay_ip.clone() } else { conf.relay_ips.clone() };
    if relay_ips.is_empty() {
        for v4 in [true, false] {
            let Some(l) = listen.iter().find(|a| a.is_ipv4() == v4) else { continue };
            let ip = if !l.ip().is_unspecified() {
                Some(l.ip())
            } else {
                interface_ips().into_iter().find(|i| {
                    i.is_ipv4() == v4
                        && !i.is_loopback()
                        && !matches!(i, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80)
                })
            };
            if let Some(ip) = ip {
                relay_ips.push(ip);
            }
        }
    }
    if relay_ips.iter().filter(|i| i.is_ipv4()).count() > 1 || relay_ips.iter().filter(|i| i.is_ipv6()).count() > 1 {
        return usage("give at most one --relay-ip per address family");
    }
    if relay_ips.is_empty() {
        return usage("no address to relay from: give --relay-ip IP");
    }
    let ports = match (&args.ports, conf.min_port, conf.max_port) {
        (Some(p), _, _) => parse_ports(p)?,
        (None, lo, hi) if lo.is_some() || hi.is_some() => {
            parse_ports(&format!("{}-{}", lo.unwrap_or(49152), hi.unwrap_or(65535)))?
        }
        _ => (49152, 65535),
    };

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
    let secret = args.secret.clone().or_else(|| conf.static_auth_secret.clone());
    if secret.as_deref() == Some("") {
        return usage("--secret is empty");
    }

    let own_ips = interface_ips();
    let mut own_addresses = Vec::new();
    for a in listen.iter().chain(&tls_listen).chain(&listen_udp_only) {
        if a.ip().is_unspecified() {
            own_addresses
                .extend(own_ips.iter().filter(|i| i.is_ipv4() == a.is_ipv4()).map(|i| SocketAddr::new(*i, a.port())));
        } else {
            own_addresses.push(*a);
        }
    }
    let external_ip = args.external_ip.or(conf.external_ip);
    if let Some(x) = external_ip {
        // Behind a 1:1 NAT the external IP is this host too: its listening ports are ours.
        let ports: Vec<u16> = listen.iter().chain(&tls_listen).chain(&listen_udp_only).map(|a| a.port()).collect();
        for p in ports {
            let a = SocketAddr::new(x, p);
            if !own_addresses.contains(&a) {
                own_addresses.push(a);
            }
        }
    }
    // Every address of this host, whatever port: interfaces (also when listening on a specific
    // IP), listen, alternate, relay and external IPs. Loopback is left to its own class.
    let mut host_ips: Vec<IpAddr> = own_ips.clone();
    host_ips.extend(listen.iter().chain(&tls_listen).chain(&listen_udp_only).map(|a| a.ip()));
    host_ips.extend(relay_ips.iter().copied());
    host_ips.extend(external_ip);
    host_ips.retain(|ip| !ip.is_loopback() && !ip.is_unspecified());
    host_ips.sort();
    host_ips.dedup();
    let mut allow = parse_cidrs(&args.allow_peer, "--allow-peer")?;
    allow.extend(conf.allowed_peers.iter().copied());
    let mut deny = parse_cidrs(&args.deny_peer, "--deny-peer")?;
    deny.extend(conf.denied_peers.iter().copied());
    let policy = PeerPolicyConfig {
        allow_loopback: args.allow_loopback_peers || conf.allow_loopback_peers,
        allow_private: args.allow_private_peers,
        allow,
        deny,
        own_addresses,
        host_ips,
        allow_host: args.allow_relay_host_peers,
    };
    let metrics = args.metrics.as_deref().map(|m| parse_addr(m, 9641, "--metrics")).transpose()?;
    let workers = args
        .workers
        .map(|w| w as usize)
        // Most of a relay's CPU is the kernel's send path, which runs on the
        // sending thread; fewer workers wake less often and batch more, and
        // leave cores to the rest of the machine (measured: scripts/bench-relay).
        .unwrap_or_else(|| (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) / 2).clamp(1, 8));

    // 0 is "unlimited", in coturn's files and in natkit's flags alike.
    let user_quota = match args.user_quota.or(conf.user_quota).unwrap_or(DEFAULT_USER_QUOTA) {
        0 => u32::MAX,
        n => n,
    };
    let max_allocations = match args.max_allocations.or(conf.total_quota.map(|n| n as usize)) {
        Some(0) => usize::MAX,
        Some(n) => n,
        None => DEFAULT_MAX_ALLOCATIONS,
    };
    for (flag, rate) in [("--auth-source-rate", args.auth_source_rate), ("--auth-user-rate", args.auth_user_rate)] {
        if !(rate.is_finite() && (0.001..=1_000_000.0).contains(&rate)) {
            return usage(format!("bad {flag} {rate}: expected checked logins per second, 0.001 to 1000000"));
        }
    }
    let throttle = ThrottleConfig {
        burst: args.auth_burst,
        source_per_sec: args.auth_source_rate,
        user_per_sec: args.auth_user_rate,
        max_backoff: Duration::from_secs(args.auth_max_backoff),
        ..ThrottleConfig::default()
    };
    let core = ServerConfig {
        realm: args.realm.clone().or_else(|| conf.realm.clone()).unwrap_or_else(|| "natkit".into()),
        users,
        secret,
        policy,
        max_allocations,
        user_quota,
        source_quota: args.source_quota,
        max_permissions: args.max_permissions,
        max_lifetime: Duration::from_secs(args.max_lifetime),
        nonce_lifetime: Duration::from_secs(args.nonce_lifetime.or(conf.stale_nonce).unwrap_or(600)),
        rfc5780,
        external_ip,
        alternate_server: match args.alternate_server.as_deref() {
            Some(a) => Some(parse_addr(a, 3478, "--alternate-server")?),
            None => conf.alternate_servers.first().copied(),
        },
        throttle,
        unauth: UnauthLimitConfig {
            burst_bytes: args.unauth_burst,
            bytes_per_sec: args.unauth_rate,
            ..UnauthLimitConfig::default()
        },
        tcp: crate::turn::server::tcp_relay::TcpRelayConfig {
            max_per_allocation: args.max_tcp_connections as usize,
            bind_timeout: Duration::from_secs(args.tcp_bind_timeout),
        },
        ..ServerConfig::default()
    };
    let (core, userdb) = userdb_plan(args, conf, core)?;
    let mut listening: Vec<String> = Vec::new();
    for a in &listen {
        listening.push(format!("udp+tcp {a}"));
    }
    for a in &listen_udp_only {
        listening.push(format!("udp {a} (RFC 5780)"));
    }
    for a in &tls_listen {
        listening.push(format!("tls {a}"));
    }
    let limits = ConnLimits {
        max_connections: args.max_connections as usize,
        max_per_ip: args.max_connections_per_ip as usize,
        tls_handshake: Duration::from_secs(args.tls_handshake_timeout),
        first_message: Duration::from_secs(args.first_message_timeout),
        idle: Duration::from_secs(args.idle_timeout),
    };
    let driver = DriverConfig {
        listen,
        listen_udp_only,
        tls_listen,
        tls,
        relay_ips,
        ports,
        workers,
        metrics,
        metrics_limits: MetricsLimits::with_cap(
            args.metrics_max_connections as usize,
            Duration::from_secs(args.metrics_header_timeout),
        ),
        limits,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        userdb,
    };
    Ok(Plan { core, driver, listening })
}

/// `--userdb` (or the file's `redis-userdb`): the core's cache and parking
/// limits and the driver's Redis address and timeout.
fn userdb_plan(
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
