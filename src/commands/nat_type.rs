//! `natkit nat-type`: NAT behaviour discovery (RFC 5780) and what it means for peer-to-peer.
//! Validates the flags, resolves the servers, plans the IPv6 run beside the IPv4 one, runs the
//! discovery ([`crate::net::nat_discovery`]) with port mapping at the same time, and builds the
//! report ([`crate::nat::report`]); `--every` repeats it and prints what changed.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::cli::NatTypeArgs;
use crate::cli::local::parse_local;
use crate::error::{Status, usage};
use crate::nat::behavior::{Config, Timing};
use crate::nat::classify::NatType;
use crate::nat::ipv6::{Ipv6Report, Skipped};
use crate::nat::lifetime::LifetimeResult;
use crate::nat::report::{NatTypeReport, WatchLine};
use crate::nat::watch::Snapshot;
use crate::net::nat_discovery::{FamilyRun, measure_lifetime, resolve_servers};
use crate::net::server_spec::Family;
use crate::net::udp;
use crate::output::{self, OutputOptions};
use crate::portmap::{Leases, PortMapper, PortMappingReport};

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
        match report {
            Ok(report) => {
                let now = report.snapshot();
                let changes = before.as_ref().map(|b| now.changes_since(b)).unwrap_or_default();
                let elapsed_s = first_start.elapsed().as_secs_f64();
                let line = WatchLine { run, elapsed_s, changes: &changes, report: &report, first: before.is_none() };
                let mut out = std::io::stdout().lock();
                line.write(&mut out, json)?;
                out.flush()?;
                before = Some(now);
            }
            Err(e) if run == 1 => return Err(e),
            Err(e) => tracing::warn!("run {run} failed: {e:#}; trying again in {every} s"),
        }
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
    let (v4, v6) = resolve_servers(&inputs, builtin, family).await?;
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
    let mut report = NatTypeReport::from_findings(f, primary_input, primary, others, started.elapsed(), args.ports);
    report.complete(primary, port_mapping, ipv6, lifetime);
    Ok(report)
}

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
