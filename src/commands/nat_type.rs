//! `natkit nat-type`: NAT behaviour discovery (RFC 5780) and what it means
//! for peer-to-peer. Wires the sans-IO [`Discovery`] core to the multi-socket
//! UDP driver and builds the report.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::NatTypeArgs;
use crate::commands::stun_probe::parse_local;
use crate::error::{Status, usage};
use crate::nat::behavior::{Config, Discovery, Exchange, ExchangeResult, Findings, Timing};
use crate::nat::classify::{Filtering, Mapping, NatType};
use crate::nat::ipv6::{Ipv6Report, Skipped};
use crate::nat::lifetime::{LifetimeConfig, LifetimeResult, LifetimeSearch};
use crate::nat::p2p::{P2p, Verdicts};
use crate::nat::port_allocation::{PortPattern, PortSample, pattern};
use crate::nat::watch::{Change, Field, Snapshot};
use crate::net::server_spec::{Family, Host, ServerSpec};
use crate::net::transport::Transport;
use crate::net::udp::{self, MultiSocketCore, Unreachable};
use crate::output::{self, OutputOptions, Render};
use crate::portmap::{Leases, PortMapper, PortMappingReport, ProtocolReport};

/// Used when no --server is given (listed in README). The first is the stuntman reference
/// server, meant to support RFC 5780; it moved from stun.stunprotocol.org (retired in 2023,
/// jselbie/stunserver#50). The others are plain STUN and add mapping evidence from other IPs.
pub const DEFAULT_SERVERS: &[&str] =
    &["stunserver.stunprotocol.org:3478", "stun.l.google.com:19302", "stun.cloudflare.com:3478"];

/// How long a server that never answers is waited for, in seconds, unless --timeout says
/// otherwise: the udp-blocked verdict comes after it. By then the first requests went out four
/// times on each of two sockets (at 0, 100, 300 and 700 ms), so a path with an RTT up to about
/// 1 s, or one that lost three requests in a row on both sockets, still gets a verdict.
pub const FIRST_CONTACT_S: f64 = 1.0;

/// The report; field names are a public contract (README).
#[derive(Debug, Serialize)]
pub struct NatTypeReport {
    pub nat_type: Option<NatType>,
    pub mapping: Option<Mapping>,
    pub filtering: Option<Filtering>,
    pub hairpinning: Option<bool>,
    pub port_preservation: Option<bool>,
    pub port_allocation: Option<PortAllocation>,
    /// Binding lifetime (RFC 5780 §4.5); not measured by this version.
    pub lifetime_s: Option<f64>,
    /// With --lifetime: the bracket found (longest idle time survived, shortest not).
    pub lifetime: Option<LifetimeResult>,
    pub local: Option<SocketAddr>,
    /// The mapped address the primary server saw.
    pub public: Option<SocketAddr>,
    pub server: ServerInfo,
    /// Lowest round-trip time measured, which sized the waits.
    pub rtt_ms: Option<f64>,
    /// How long the whole discovery took.
    pub duration_ms: f64,
    /// What it means for peer-to-peer, in one sentence.
    pub meaning: Option<String>,
    /// Why something is unknown, or anything else worth knowing.
    pub notes: Vec<String>,
    /// Every STUN exchange made.
    pub tests: Vec<Exchange>,
    /// UPnP-IGD, NAT-PMP and PCP on the default gateway; null with --no-port-mapping.
    pub port_mapping: Option<PortMappingReport>,
    /// Behind a carrier-grade NAT (RFC 6598); the evidence is in `notes`.
    pub cgnat: Option<bool>,
    /// Another NAT beyond the home router; the evidence is in `notes`.
    pub double_nat: Option<bool>,
    /// The same tests over IPv6, run at the same time; null when --local pins IPv4.
    pub ipv6: Option<Ipv6Report>,
    /// What it means for peer-to-peer, per kind of peer; null when `nat_type` is unknown.
    pub p2p: Option<P2p>,
}

#[derive(Debug, Serialize)]
pub struct ServerInfo {
    /// As given (or from the built-in list).
    pub input: String,
    pub address: SocketAddr,
    /// RFC 5780 OTHER-ADDRESS: the alternate IP and port.
    pub other_address: Option<SocketAddr>,
    pub rfc5780: bool,
    /// `other_address` is the RFC 3489 CHANGED-ADDRESS of a classic server (stund), used instead.
    pub rfc3489: bool,
    /// The other servers, for the mapping comparison.
    pub others: Vec<SocketAddr>,
}

#[derive(Debug, Serialize)]
pub struct PortAllocation {
    #[serde(flatten)]
    pub pattern: Option<PortPattern>,
    pub samples: Vec<PortSample>,
}

/// The core as the multi-socket UDP driver sees it.
impl MultiSocketCore for Discovery {
    fn poll_transmit(&mut self, now: Instant) -> Option<(usize, SocketAddr, Vec<u8>)> {
        Discovery::poll_transmit(self, now).map(|t| (t.socket, t.destination, t.bytes))
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Discovery::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Discovery::handle_timeout(self, now)
    }
    fn handle_input(&mut self, socket: usize, from: SocketAddr, bytes: &[u8], now: Instant) {
        Discovery::handle_input(self, socket, from, bytes, now)
    }
    fn handle_unreachable(&mut self, socket: usize, destination: SocketAddr, why: Unreachable, now: Instant) {
        Discovery::handle_unreachable(self, socket, destination, why, now)
    }
    fn is_done(&self) -> bool {
        Discovery::is_done(self)
    }
}

/// Runs the command; Ctrl-C is handled here rather than by the caller, so the port mappings
/// made on the router are deleted before the command ends with exit 130.
pub async fn run(args: NatTypeArgs, opts: &OutputOptions) -> anyhow::Result<Status> {
    if let Some(every) = args.every {
        return watch(&args, every, opts).await;
    }
    let leases = Leases::default();
    let outcome = tokio::select! {
        r = discover(&args, opts, &leases) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    // Every path out (report, error, Ctrl-C) leaves nothing on the router.
    delete_leftovers(&leases).await;
    let Some(report) = outcome else { return Err(crate::error::Interrupted.into()) };
    let report = report?;
    output::emit(&report, opts)?;
    let ok = matches!(report.nat_type, Some(t) if t != NatType::UdpBlocked);
    Ok(Status::from_ok(ok))
}

/// The longest --every interval (a day); the shortest is the time a run takes.
const MAX_EVERY_S: f64 = 86_400.0;

/// `--every SECS`: a run every SECS seconds (or as soon as the previous one ends, if it took
/// longer), one line each on stdout: the first lists the watched fields, later ones what changed.
/// Ctrl-C ends it between or during runs; the port mappings of a run cut short are deleted first,
/// and the exit is 0 (Ctrl-C is how this mode ends).
async fn watch(args: &NatTypeArgs, every: f64, opts: &OutputOptions) -> anyhow::Result<Status> {
    if !(every.is_finite() && every > 0.0 && every <= MAX_EVERY_S) {
        return usage(format!("--every {every} is out of range: give seconds above 0 and at most {MAX_EVERY_S}"));
    }
    let period = Duration::from_secs_f64(every);
    let json = matches!(opts.format, output::Format::Json);
    let first_start = Instant::now();
    let mut before: Option<Snapshot> = None;
    let mut next = tokio::time::Instant::now();
    for run in 1u64.. {
        let leases = Leases::default();
        let outcome = tokio::select! {
            r = discover(args, opts, &leases) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        };
        delete_leftovers(&leases).await;
        let Some(report) = outcome else { return Ok(Status::from_ok(true)) };
        // Bad input is found on the first run and ends it; a later failure is printed and retried.
        let report = match report {
            Ok(r) => r,
            Err(e) if run == 1 => return Err(e),
            Err(e) => {
                tracing::warn!("run {run} failed: {e:#}; trying again in {every} s");
                next += period;
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => continue,
                    _ = tokio::signal::ctrl_c() => return Ok(Status::from_ok(true)),
                }
            }
        };
        let now = snapshot(&report);
        let changes = before.as_ref().map(|b| now.changes_since(b)).unwrap_or_default();
        let elapsed = first_start.elapsed().as_secs_f64();
        let mut out = std::io::stdout().lock();
        if json {
            let line =
                WatchLine { run, elapsed_s: (elapsed * 1000.0).round() / 1000.0, changes: &changes, report: &report };
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
        } else {
            let what = match (&before, changes.is_empty()) {
                (None, _) => now.summary(),
                (Some(_), true) => "no change".to_string(),
                (Some(_), false) => changes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("; "),
            };
            writeln!(out, "run {run} at +{elapsed:.1} s: {what}")?;
        }
        out.flush()?;
        drop(out);
        before = Some(now);
        next += period;
        // A run that took longer than the period starts the next one at once.
        tokio::select! {
            _ = tokio::time::sleep_until(next.max(tokio::time::Instant::now())) => {}
            _ = tokio::signal::ctrl_c() => return Ok(Status::from_ok(true)),
        }
        if next < tokio::time::Instant::now() {
            next = tokio::time::Instant::now();
        }
    }
    Ok(Status::from_ok(true))
}

/// One JSON Line of --every: the run number, seconds since the first began, what changed since
/// the previous run (empty on the first) and the whole report.
#[derive(Serialize)]
struct WatchLine<'a> {
    run: u64,
    elapsed_s: f64,
    changes: &'a [Change],
    report: &'a NatTypeReport,
}

/// The fields --every watches, as text.
fn snapshot(r: &NatTypeReport) -> Snapshot {
    let text = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
    let mut fields = vec![
        (Field::PublicIp, text(r.public.map(|p| p.ip().to_string()))),
        (Field::NatType, text(r.nat_type.map(|t| t.to_string()))),
    ];
    if let Some(v6) = &r.ipv6 {
        let none = if v6.answer { "unknown" } else { "none" };
        fields.push((Field::Ipv6PublicIp, v6.public.map(|p| p.ip().to_string()).unwrap_or_else(|| none.into())));
        fields.push((Field::Ipv6NatType, v6.nat_type.map(|t| t.to_string()).unwrap_or_else(|| none.into())));
    }
    if let Some(pm) = &r.port_mapping {
        let mapped: Vec<&str> = [("upnp", &pm.upnp), ("nat_pmp", &pm.nat_pmp), ("pcp", &pm.pcp)]
            .into_iter()
            .filter(|(_, p)| p.mapped.is_some())
            .map(|(n, _)| n)
            .collect();
        fields.push((Field::PortMapping, if mapped.is_empty() { "none".into() } else { mapped.join("+") }));
    }
    if let Some(p) = &r.p2p {
        let d = serde_json::to_value(p.difficulty).ok().and_then(|v| v.as_str().map(String::from));
        fields.push((Field::Difficulty, text(d)));
    }
    Snapshot { fields }
}

/// Deletes the mappings still registered (a probe cut short by Ctrl-C or an error), bounded by
/// the port-mapping timeouts; what fails is logged, with what to do.
async fn delete_leftovers(leases: &Leases) {
    let left = leases.outstanding();
    if left.is_empty() {
        return;
    }
    let Ok(mapper) = PortMapper::for_default_gateway() else {
        tracing::warn!("{} port mapping(s) may be left on the router: no default gateway to delete them", left.len());
        return;
    };
    for e in leases.delete_all(&mapper).await {
        tracing::warn!("a test port mapping may be left on the router {}: {e}", mapper.gateway);
    }
}

/// Resolves the servers, runs the tests and builds the report. Port mappings made are
/// registered in `leases` (and deleted before this returns, unless it is dropped midway).
pub async fn discover(args: &NatTypeArgs, opts: &OutputOptions, leases: &Leases) -> anyhow::Result<NatTypeReport> {
    let (max_timeout, default_timeout) = if args.lifetime { (3600.0, 180.0) } else { (60.0, FIRST_CONTACT_S) };
    let timeout = args.timeout.unwrap_or(default_timeout);
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= max_timeout) {
        return usage(format!("--timeout {timeout} is out of range: give seconds above 0 and at most {max_timeout}"));
    }
    // With --lifetime the timeout bounds the whole run; a silent server is still given up quickly.
    let first_contact = if args.lifetime { timeout.min(FIRST_CONTACT_S) } else { timeout };
    let local = args.local.as_deref().map(parse_local).transpose()?;
    let builtin = args.servers.is_empty();
    let inputs: Vec<String> =
        if builtin { DEFAULT_SERVERS.iter().map(|s| s.to_string()).collect() } else { args.servers.clone() };
    let family = match local {
        Some(l) if l.is_ipv4() => Family::V4,
        Some(_) => Family::V6,
        None => Family::Any,
    };
    let mut specs = Vec::with_capacity(inputs.len());
    for input in &inputs {
        let spec = ServerSpec::parse(input)?;
        if matches!(spec.transport, Some(Transport::Tcp | Transport::Tls)) {
            return usage(format!(
                "server '{input}' asks for TCP or TLS; NAT behaviour discovery runs over UDP (give HOST[:PORT] or stun:HOST)"
            ));
        }
        specs.push(spec);
    }
    // All names at once (the built-in list is three), each to both families: one DNS wait.
    let resolved = futures::future::join_all(specs.iter().map(|s| resolve_both(s, family))).await;
    let (mut v4, mut v6): (Vec<Named>, Vec<Named>) = (Vec::new(), Vec::new());
    for (input, r) in inputs.iter().zip(resolved) {
        match r {
            Ok(Both { v4: a, v6: b }) => {
                v4.extend(a.map(|a| (input.clone(), a)));
                v6.extend(b.map(|b| (input.clone(), b)));
            }
            // A name the user typed that does not resolve is bad input; the built-in list may be offline.
            Err(e) if !builtin => return Err(e.into()),
            Err(e) => tracing::info!("skipping built-in server {input}: {e}"),
        }
    }
    // The top-level report is IPv4 (as it always was) unless --local or the servers leave only IPv6.
    let main_is_v6 = match local {
        Some(l) => l.is_ipv6(),
        None => v4.is_empty() && !v6.is_empty(),
    };
    let servers = if main_is_v6 { v6.clone() } else { v4.clone() };
    let Some((primary_input, primary)) = servers.first().cloned() else {
        return match (builtin, local) {
            (true, _) => {
                usage("none of the built-in STUN servers resolved (no DNS?); give one with --server HOST[:PORT]")
            }
            (false, Some(l)) => usage(format!(
                "no server has an address of --local {l}'s family; give one with --server, or drop --local"
            )),
            (false, None) => usage("no server resolved to an address; check the names"),
        };
    };

    // IPv6 beside IPv4: its own sockets and core, driven at the same time, so it adds no wall time.
    // No v6 server or no v6 route is found out before any packet is sent.
    let v6_plan = match (main_is_v6, local) {
        (true, _) => V6Plan::IsMain,
        (false, Some(_)) => V6Plan::NotAsked,
        (false, None) => match v6.first() {
            None => V6Plan::Skip(Skipped::NoServer),
            Some((_, s)) if udp::local_ip_towards(*s).is_none() => V6Plan::Skip(Skipped::NoRoute(*s)),
            Some(_) => V6Plan::Run,
        },
    };

    let cfg = Config {
        servers: servers.iter().map(|(_, a)| *a).collect(),
        port_samples: args.ports as usize,
        timeout: Duration::from_secs_f64(first_contact),
        timing: Timing::default(),
    };
    let main = FamilyRun::bind(cfg, local)?;
    let side = match v6_plan {
        V6Plan::Run => {
            let cfg6 = Config {
                servers: v6.iter().map(|(_, a)| *a).collect(),
                port_samples: 0,
                timeout: Duration::from_secs_f64(first_contact),
                timing: Timing::default(),
            };
            // A v6 socket that cannot be bound (IPv6 disabled) is the same as no route.
            match FamilyRun::bind(cfg6, None) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::info!("IPv6 not tested: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    let bind_ip = main.bind_ip;

    let pb = output::progress(opts, 1, "discovering NAT behaviour");
    let started = Instant::now();
    let (mut main, mut side) = (main.start(started), side.map(|s| s.start(started)));
    // Port mapping talks to the gateway, STUN to the servers: all at once.
    let port_mapping =
        async { if args.no_port_mapping { None } else { Some(PortMappingReport::probe(primary, leases).await) } };
    let v6_run = async {
        if let Some(s) = side.as_mut() {
            s.drive().await;
        }
    };
    let ((), (), port_mapping) = tokio::join!(main.drive(), v6_run, port_mapping);
    pb.finish_and_clear();

    let f = main.core.findings();
    let ipv6 = match (v6_plan, side) {
        (V6Plan::IsMain, _) => Some(Ipv6Report::from_findings(f.clone(), primary_input.clone(), primary)),
        (V6Plan::NotAsked, _) => None,
        (V6Plan::Skip(why), _) => Some(Ipv6Report::skipped(why)),
        (V6Plan::Run, Some(s)) => {
            let (input, addr) = v6[0].clone();
            Some(Ipv6Report::from_findings(s.core.findings(), input, addr))
        }
        (V6Plan::Run, None) => Some(Ipv6Report::skipped(Skipped::NoRoute(v6[0].1))),
    };
    let mut lifetime = None;
    if args.lifetime {
        lifetime = Some(match (f.other_address, f.public) {
            (Some(_), Some(_)) if !f.rfc3489 => {
                let left = Duration::from_secs_f64(timeout).saturating_sub(started.elapsed());
                measure_lifetime(primary, bind_ip, left, opts).await?
            }
            _ => LifetimeResult {
                alive_s: None,
                dead_s: None,
                rounds: 0,
                probes: 0,
                note: Some("the lifetime test needs an RFC 5780 server that answered: not run".into()),
            },
        });
    }
    let others = servers[1..].iter().map(|(_, a)| *a).collect();
    let mut report = build_report(f, primary_input, primary, others, started.elapsed(), args.ports);
    report.port_mapping = port_mapping;
    report.ipv6 = ipv6;
    judge_upstream(&mut report, primary);
    report.p2p = crate::nat::p2p::judge(Verdicts {
        v4: report.nat_type,
        port_mapped: report
            .port_mapping
            .as_ref()
            .is_some_and(|pm| [&pm.upnp, &pm.nat_pmp, &pm.pcp].iter().any(|p| p.mapped.is_some())),
        v6: report.ipv6.as_ref().filter(|v| v.answer).and_then(|v| v.nat_type),
    });
    if let Some(l) = lifetime {
        report.lifetime_s = l.lifetime_s();
        if let Some(n) = &l.note {
            report.notes.push(format!("lifetime: {n}"));
        }
        report.lifetime = Some(l);
    }
    Ok(report)
}

/// A server as given and one address it resolved to.
type Named = (String, SocketAddr);

/// What to do about IPv6 beside the main run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum V6Plan {
    /// The main run is IPv6 already (only v6 servers, or a v6 --local): `ipv6` repeats it.
    IsMain,
    /// --local pins IPv4: `ipv6` is null.
    NotAsked,
    /// Not tested, for this reason (one line, no time spent).
    Skip(Skipped),
    Run,
}

/// A server's first address of each family (a name may have both, A and AAAA).
struct Both {
    v4: Option<SocketAddr>,
    v6: Option<SocketAddr>,
}

/// One lookup per name (getaddrinfo returns both families at once); `family` limits it (--local).
async fn resolve_both(spec: &ServerSpec, family: Family) -> Result<Both, crate::error::UsageError> {
    let port = spec.port_for(Transport::Udp);
    let all: Vec<SocketAddr> = match &spec.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| {
                crate::error::UsageError::new(format!("cannot resolve '{name}': {e}; check the name and your DNS"))
            })?
            .collect(),
    };
    let both = Both {
        v4: all.iter().copied().find(|a| a.is_ipv4() && family.admits(&a.ip())),
        v6: all.iter().copied().find(|a| a.is_ipv6() && family.admits(&a.ip())),
    };
    if both.v4.is_none() && both.v6.is_none() {
        // The same words as a single-family resolution would use.
        spec.resolve(Transport::Udp, family).await?;
    }
    Ok(both)
}

/// One family's discovery: its sockets and core.
struct FamilyRun {
    sockets: Vec<tokio::net::UdpSocket>,
    locals: Vec<SocketAddr>,
    cfg: Config,
    bind_ip: IpAddr,
}

/// A [`FamilyRun`] under way.
struct Running {
    sockets: Vec<tokio::net::UdpSocket>,
    core: Discovery,
}

impl FamilyRun {
    /// Binds the sockets the core needs (socket 0 on `local` if given), in the servers' family.
    fn bind(cfg: Config, local: Option<SocketAddr>) -> anyhow::Result<FamilyRun> {
        let primary = cfg.servers[0];
        let unspecified =
            if primary.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
        let bind_ip = local.map(|l| l.ip()).unwrap_or(unspecified);
        let mut sockets = Vec::with_capacity(cfg.sockets_needed());
        for i in 0..cfg.sockets_needed() {
            let addr = match (i, local) {
                (0, Some(l)) => l,
                _ => SocketAddr::new(bind_ip, 0),
            };
            let s = udp::bind(addr).map_err(|e| {
                if i == 0 && local.is_some() {
                    anyhow::Error::new(crate::error::UsageError::new(format!(
                        "cannot bind --local {addr}: {e}; pick an address of this host and a free port"
                    )))
                } else {
                    anyhow::anyhow!("binding a UDP socket on {addr}: {e}")
                }
            })?;
            sockets.push(s);
        }
        // The address a server would see without a NAT: the bound IP, or the one routing picks.
        let host_ip =
            if bind_ip.is_unspecified() { udp::local_ip_towards(primary).unwrap_or(bind_ip) } else { bind_ip };
        let locals: Vec<SocketAddr> = sockets
            .iter()
            .map(|s| s.local_addr().map(|a| SocketAddr::new(host_ip, a.port())))
            .collect::<Result<_, _>>()?;
        Ok(FamilyRun { sockets, locals, cfg, bind_ip })
    }

    fn start(self, now: Instant) -> Running {
        Running { sockets: self.sockets, core: Discovery::new(self.cfg, self.locals, now) }
    }
}

impl Running {
    async fn drive(&mut self) {
        udp::drive(&self.sockets, &mut self.core).await
    }
}

/// Runs the §4.5 search on its own sockets, with a progress bar bounded by the time left.
async fn measure_lifetime(
    server: SocketAddr,
    bind_ip: IpAddr,
    bound: Duration,
    opts: &OutputOptions,
) -> anyhow::Result<LifetimeResult> {
    // Leave room for the last probe's answer after its idle time.
    let max_idle = bound.saturating_sub(Duration::from_secs(2)).max(Duration::from_secs(1));
    let cfg = LifetimeConfig { server, max_idle, parallel: 4, timeout: bound, timing: Timing::default() };
    let mut sockets = Vec::new();
    for _ in 0..cfg.sockets_needed() {
        let addr = SocketAddr::new(bind_ip, 0);
        sockets.push(udp::bind(addr).map_err(|e| anyhow::anyhow!("binding a UDP socket on {addr}: {e}"))?);
    }
    let pb = output::progress(opts, bound.as_secs().max(1), "measuring binding lifetime (s)");
    let mut core = LifetimeDriver { search: LifetimeSearch::new(cfg, Instant::now()), pb: pb.clone() };
    udp::drive(&sockets, &mut core).await;
    pb.finish_and_clear();
    Ok(core.search.result())
}

/// The lifetime core plus the progress bar it moves.
struct LifetimeDriver {
    search: LifetimeSearch,
    pb: indicatif::ProgressBar,
}

impl MultiSocketCore for LifetimeDriver {
    fn poll_transmit(&mut self, now: Instant) -> Option<(usize, SocketAddr, Vec<u8>)> {
        self.search.poll_transmit(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        // Wake at least every second so the bar moves.
        let tick = Instant::now() + Duration::from_secs(1);
        self.search.poll_timeout().map(|t| t.min(tick))
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.search.handle_timeout(now);
        self.pb.set_position(self.search.progress(now).0.as_secs());
    }
    fn handle_input(&mut self, socket: usize, _from: SocketAddr, bytes: &[u8], now: Instant) {
        self.search.handle_input(socket, bytes, now)
    }
    fn handle_unreachable(&mut self, _socket: usize, _destination: SocketAddr, _why: Unreachable, _now: Instant) {
        // A probe whose answer never comes is counted dead by its silence wait.
    }
    fn is_done(&self) -> bool {
        self.search.is_done()
    }
}

fn build_report(
    f: Findings,
    input: String,
    address: SocketAddr,
    others: Vec<SocketAddr>,
    duration: Duration,
    ports: u16,
) -> NatTypeReport {
    let port_allocation =
        (ports > 0).then(|| PortAllocation { pattern: pattern(&f.port_samples), samples: f.port_samples.clone() });
    NatTypeReport {
        nat_type: f.nat_type,
        mapping: f.mapping,
        filtering: f.filtering,
        hairpinning: f.hairpinning,
        port_preservation: f.port_preservation,
        port_allocation,
        lifetime_s: None,
        lifetime: None,
        local: f.local,
        public: f.public,
        server: ServerInfo {
            input,
            address,
            other_address: f.other_address,
            rfc5780: f.other_address.is_some() && !f.rfc3489,
            rfc3489: f.rfc3489,
            others,
        },
        rtt_ms: f.rtt.map(|r| r.as_secs_f64() * 1000.0),
        duration_ms: duration.as_secs_f64() * 1000.0,
        meaning: f.nat_type.map(|t| t.meaning().to_string()),
        notes: f.notes.iter().map(ToString::to_string).collect(),
        tests: f.exchanges,
        port_mapping: None,
        cgnat: None,
        double_nat: None,
        ipv6: None,
        p2p: None,
    }
}

/// Fills `cgnat` and `double_nat` from what the run saw, with notes naming the evidence.
fn judge_upstream(report: &mut NatTypeReport, primary: SocketAddr) {
    let pm = report.port_mapping.as_ref();
    let router_external = pm.and_then(|pm| {
        [("UPnP-IGD", &pm.upnp), ("NAT-PMP", &pm.nat_pmp), ("PCP", &pm.pcp)]
            .into_iter()
            .find_map(|(name, p)| p.external_ip.map(|ip| (name, ip)))
    });
    let gateway = pm.and_then(|pm| pm.gateway).or(match primary.ip() {
        IpAddr::V4(v4) => crate::portmap::gateway_towards(v4),
        IpAddr::V6(_) => None,
    });
    let u = crate::nat::upstream::judge(crate::nat::upstream::Evidence {
        local: report.local.map(|a| a.ip()),
        public: report.public.map(|a| a.ip()),
        gateway,
        router_external,
    });
    report.cgnat = u.cgnat;
    report.double_nat = u.double_nat;
    report.notes.extend(u.notes);
}

/// One protocol's port-mapping outcome in a table cell.
fn describe_port_mapping(p: &ProtocolReport) -> String {
    let ext = p.external_ip.map(|ip| format!(", router's external IP {ip}")).unwrap_or_default();
    match (p.available, p.mapped) {
        (_, Some(m)) => {
            let life = p.lifetime_s.map(|l| format!(" for {l} s")).unwrap_or_default();
            let del = match p.deleted {
                Some(true) => "deleted",
                _ => "NOT deleted",
            };
            format!("yes: mapped {m}{life}, {del}{ext}")
        }
        (true, None) => format!("yes, no mapping{ext}: {}", p.error.as_deref().unwrap_or("unknown")),
        (false, None) => format!("no ({})", p.error.as_deref().unwrap_or("no answer")),
    }
}

fn yes_no(v: Option<bool>) -> String {
    match v {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "unknown".into(),
    }
}

fn describe_result(r: &Option<ExchangeResult>) -> String {
    match r {
        None => "pending".into(),
        Some(ExchangeResult::Answered { from, mapped, rtt_ms, .. }) => {
            format!("mapped {} from {from} in {}", output::cell(mapped), output::ms(*rtt_ms))
        }
        Some(ExchangeResult::Error { from, code, reason, .. }) => format!("error {code} {reason} from {from}"),
        Some(ExchangeResult::Hairpinned { from, .. }) => format!("came back to socket 0 from {from}"),
        Some(ExchangeResult::Timeout { after_ms }) => format!("no answer ({})", output::ms(*after_ms)),
        Some(ExchangeResult::Unreachable { error, .. }) => error.to_string(),
        Some(ExchangeResult::Skipped { reason }) => format!("skipped: {reason}"),
    }
}

impl Render for NatTypeReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut t = output::Grid::key_value();
        let unknown = |s: Option<String>| s.unwrap_or_else(|| "unknown".into());
        t.row(vec!["NAT type".into(), unknown(self.nat_type.map(|v| v.to_string()))]);
        t.row(vec!["Mapping".into(), unknown(self.mapping.map(|v| v.to_string()))]);
        t.row(vec!["Filtering".into(), unknown(self.filtering.map(|v| v.to_string()))]);
        t.row(vec!["Hairpinning".into(), yes_no(self.hairpinning)]);
        t.row(vec!["Port preservation".into(), yes_no(self.port_preservation)]);
        if let Some(pa) = &self.port_allocation {
            let p = match pa.pattern {
                Some(PortPattern::Preserving) => "preserving".to_string(),
                Some(PortPattern::Sequential { step }) => format!("sequential, step {step}"),
                Some(PortPattern::Random) => "random".to_string(),
                None => "unknown (too few answers)".to_string(),
            };
            let ports: Vec<String> = pa.samples.iter().map(|s| format!("{}→{}", s.local, s.mapped)).collect();
            t.row(vec!["Port allocation".into(), format!("{p} ({})", ports.join(", "))]);
        }
        if let Some(l) = &self.lifetime {
            let text = match (l.alive_s, l.dead_s) {
                (Some(a), Some(d)) => {
                    format!("{:.1} s (alive after {a:.1} s idle, gone after {d:.1} s)", (a + d) / 2.0)
                }
                (Some(a), None) => format!("at least {a:.0} s"),
                (None, Some(d)) => format!("under {d:.1} s"),
                (None, None) => "unknown".into(),
            };
            t.row(vec!["Binding lifetime".into(), text]);
        }
        if let Some(pm) = &self.port_mapping {
            t.row(vec!["Gateway".into(), output::cell(&pm.gateway)]);
            t.row(vec!["UPnP-IGD".into(), describe_port_mapping(&pm.upnp)]);
            t.row(vec!["NAT-PMP".into(), describe_port_mapping(&pm.nat_pmp)]);
            t.row(vec!["PCP".into(), describe_port_mapping(&pm.pcp)]);
        }
        if let Some(v6) = &self.ipv6 {
            t.row(vec!["IPv6".into(), v6.summary()]);
            if v6.answer {
                let m = v6.mapping.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into());
                let f = v6.filtering.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into());
                t.row(vec!["IPv6 mapping, filtering".into(), format!("{m}, {f}")]);
                t.row(vec!["IPv6 hairpinning".into(), yes_no(v6.hairpinning)]);
            }
        }
        t.row(vec!["CGNAT".into(), yes_no(self.cgnat)]);
        t.row(vec!["Double NAT".into(), yes_no(self.double_nat)]);
        t.row(vec!["Local".into(), output::cell(&self.local)]);
        t.row(vec!["Public".into(), output::cell(&self.public)]);
        let rfc = if self.server.rfc5780 {
            format!("RFC 5780, other address {}", output::cell(&self.server.other_address))
        } else if self.server.rfc3489 {
            format!("RFC 3489, changed address {}", output::cell(&self.server.other_address))
        } else {
            "no RFC 5780".into()
        };
        t.row(vec!["Server".into(), format!("{} ({}; {rfc})", self.server.input, self.server.address)]);
        t.row(vec!["RTT".into(), self.rtt_ms.map(output::ms).unwrap_or_else(|| "-".into())]);
        t.row(vec!["Took".into(), output::duration(std::time::Duration::from_secs_f64(self.duration_ms / 1000.0))]);
        writeln!(out, "{t}")?;

        // Compact: what was asked where and what came back; --wide adds the socket, the
        // CHANGE-REQUEST flags and the number of sends.
        let wide = output::layout() == output::Layout::Wide;
        let mut tests = if wide {
            output::Grid::new(&["test", "socket", "to", "change-request", "sends", "result"])
        } else {
            output::Grid::new(&["test", "to", "result"])
        };
        for e in &self.tests {
            let test = serde_json::to_value(e.test).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            let change = match (e.change_request.change_ip, e.change_request.change_port) {
                (true, true) => "ip+port",
                (true, false) => "ip",
                (false, true) => "port",
                (false, false) => "-",
            };
            tests.row(if wide {
                vec![
                    test,
                    e.socket.to_string(),
                    e.destination.to_string(),
                    change.into(),
                    e.sends.to_string(),
                    describe_result(&e.result),
                ]
            } else {
                vec![test, e.destination.to_string(), describe_result(&e.result)]
            });
        }
        writeln!(out, "{tests}")?;
        for n in &self.notes {
            output::say(out, &format!("note: {n}"))?;
        }
        match &self.meaning {
            Some(m) => output::say(out, m)?,
            None => output::say(
                out,
                "Not enough was learned to say what this means for peer-to-peer; see the notes above.",
            )?,
        }
        for s in self.p2p.iter().flat_map(|p| &p.sentences) {
            output::say(out, s)?;
        }
        Ok(())
    }
}
