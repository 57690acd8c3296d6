//! `natkit stun-probe`: STUN Binding (RFC 8489) to many servers at once over UDP, TCP and TLS,
//! and what the answers mean together. Validates the flags, resolves the servers under one
//! deadline, runs the probes ([`crate::stun::probe`]), and reports with the summary
//! ([`crate::stun::summary`]).

use std::time::Duration;

use crate::cli::local::parse_local;
use crate::cli::{StunProbeArgs, TransportChoice};
use crate::error::{Status, usage};
use crate::net::server_spec::{Family, ResolveError, ServerSpec};
use crate::net::tls::{TlsClient, TlsOptions};
use crate::net::transport::Transport;
use crate::output::{self, OutputOptions};
use crate::stun::probe::{Rounds, Target, probe_all};
use crate::stun::report::StunProbeReport;
use crate::stun::summary::summarize;

/// Used when no SERVER is given; listed in README.
pub const DEFAULT_SERVERS: &[&str] = &[
    "stun.l.google.com:19302",
    "stun1.l.google.com:19302",
    "stun.cloudflare.com:3478",
    "global.stun.twilio.com:3478",
    "stun.nextcloud.com:443",
];

pub async fn run(args: StunProbeArgs, opts: &OutputOptions) -> anyhow::Result<Status> {
    let report = probe(&args, opts).await?;
    output::emit(&report, opts)?;
    Ok(Status::from_ok(report.summary.failed == 0 && report.summary.probes > 0))
}

/// Runs every probe and builds the report.
pub async fn probe(args: &StunProbeArgs, opts: &OutputOptions) -> anyhow::Result<StunProbeReport> {
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 600.0) {
        return usage(format!("--timeout {} is out of range: give seconds above 0, at most 600", args.timeout));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let interval = Duration::from_millis(args.interval);
    let family = Family::from_flags(args.ipv4, args.ipv6);
    let local = args.local.as_deref().map(parse_local).transpose()?;

    let builtin = args.servers.is_empty();
    let inputs: Vec<String> =
        if builtin { DEFAULT_SERVERS.iter().map(|s| s.to_string()).collect() } else { args.servers.clone() };
    let specs = inputs.iter().map(|s| ServerSpec::parse(s)).collect::<Result<Vec<_>, _>>()?;

    let wanted: Vec<Transport> = match args.transport {
        TransportChoice::Udp => vec![Transport::Udp],
        TransportChoice::Tcp => vec![Transport::Tcp],
        TransportChoice::Tls => vec![Transport::Tls],
        TransportChoice::All => vec![Transport::Udp, Transport::Tcp, Transport::Tls],
    };
    // Every name is resolved at once under the command's own deadline: a DNS server that never
    // answers must cost `--timeout`, not a resolver timeout per name one after another.
    let deadline = tokio::time::Instant::now() + timeout;
    let pairs: Vec<(ServerSpec, Transport)> = specs
        .iter()
        .flat_map(|spec| {
            let ts = match spec.transport {
                Some(t) => vec![t],
                None => wanted.clone(),
            };
            ts.into_iter().map(move |t| (spec.clone(), t))
        })
        .collect();
    let lookups = pairs.iter().map(|(spec, t)| spec.resolve_by(*t, family, deadline));
    let resolved = futures::future::join_all(lookups).await;
    let mut targets = Vec::new();
    for ((spec, t), addr) in pairs.into_iter().zip(resolved) {
        let addr = match addr {
            Ok(a) => Ok(a),
            // A name the user typed that does not exist is bad input (exit 2); a DNS server that
            // does not answer is an outage, reported per server like a server that does not answer.
            Err(ResolveError::BadName(e)) if !builtin => return Err(e.into()),
            Err(e) => Err(e.describe(timeout)),
        };
        if let (Ok(a), Some(l)) = (&addr, local)
            && a.is_ipv4() != l.is_ipv4()
        {
            return usage(format!(
                "--local {l} and server {} ({a}) are different address families; use -4/-6 or another --local",
                spec.input
            ));
        }
        targets.push(Target { spec, transport: t, addr });
    }

    let tls = if targets.iter().any(|t| t.transport == Transport::Tls) {
        Some(TlsClient::new(&TlsOptions { insecure: args.insecure, ca: args.ca.clone() })?)
    } else {
        None
    };

    let pb = output::progress(opts, targets.len() as u64, "probing");
    let rounds = Rounds { count: args.count, interval, timeout, local };
    let results = probe_all(&targets, &rounds, tls.as_ref(), args.insecure, &|| pb.inc(1)).await;
    pb.finish_and_clear();
    let summary = summarize(&results);
    Ok(StunProbeReport { results, summary })
}
