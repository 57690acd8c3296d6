//! `natkit turn-alloc`: validates the arguments into an [`AuditConfig`], runs the audit
//! of a TURN server ([`crate::turn::audit`]) once or, with `--every`, as a blackbox
//! probe, and emits the report.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{PeerTransportChoice, TurnAllocArgs, TurnTransportChoice};
use crate::error::{Status, UsageError, usage};
use crate::net::metrics_http::MetricsLimits;
use crate::net::server_spec::{Family, ServerSpec};
use crate::net::tls::{TlsClient, TlsOptions};
use crate::net::transport::Transport;
use crate::output::{self, OutputOptions};
use crate::turn::audit::probe::{self, ProbeReport};
use crate::turn::audit::render::run_line;
use crate::turn::audit::report::{Applicable, Step};
use crate::turn::audit::scenario::{DataPeer, Plan};
use crate::turn::audit::{self, AuditConfig, CredentialSpec, QualityPlan, StepName, TurnAllocReport};
use crate::turn::credentials::Credentials;
use crate::turn::server::Family as RelayFamily;

pub async fn run(args: TurnAllocArgs, opts: &OutputOptions) -> anyhow::Result<Status> {
    let cfg = config(&args)?;
    if let Some(every) = args.every {
        return watch(&args, &cfg, Duration::from_secs(every), opts).await;
    }
    let report = audit::run(&cfg).await?;
    output::emit(&report, opts)?;
    Ok(Status::from_ok(report.ok))
}

/// The arguments as the audit takes them; bad input is an error (exit 2).
pub fn config(args: &TurnAllocArgs) -> anyhow::Result<AuditConfig> {
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 600.0) {
        return usage(format!("--timeout {} is out of range: give seconds above 0, at most 600", args.timeout));
    }
    if let Some(w) = args.nonce_wait
        && !(w.is_finite() && (0.0..=7200.0).contains(&w))
    {
        return usage(format!("--nonce-wait {w} is out of range: give seconds from 0 to 7200"));
    }
    let spec = ServerSpec::parse(&args.server)?;
    let transport = transport_for(args, &spec)?;
    let credentials = match (&args.user, &args.password, &args.secret) {
        (Some(u), Some(p), None) => CredentialSpec::LongTerm(Credentials { username: u.clone(), password: p.clone() }),
        (name, None, Some(s)) => CredentialSpec::Rest { secret: s.clone(), name: name.clone() },
        (Some(_), None, None) => return usage("--user needs --password (or use --secret for TURN REST credentials)"),
        _ => CredentialSpec::None,
    };
    let peer = match &args.peer {
        Some(p) => Some(
            p.parse::<SocketAddr>()
                .map_err(|_| UsageError::new(format!("bad --peer '{p}': expected IP:PORT of a UDP echo peer")))?,
        ),
        None => None,
    };
    // --peer-transport tcp: --peer is a TCP echo peer for the RFC 6062 step; the UDP steps use
    // a second allocation as their peer.
    let (peer, tcp_peer) = match (args.peer_transport, peer) {
        (PeerTransportChoice::Udp, Some(p)) => (DataPeer::UdpEcho(p), None),
        (PeerTransportChoice::Udp, None) => (DataPeer::SecondAllocation, None),
        (PeerTransportChoice::Tcp, _) if transport == Transport::Udp => {
            return usage(
                "--peer-transport tcp needs --transport tcp or tls: RFC 6062 relays TCP only for a TCP or TLS client",
            );
        }
        (PeerTransportChoice::Tcp, Some(p)) => (DataPeer::SecondAllocation, Some(p)),
        (PeerTransportChoice::Tcp, None) => {
            return usage("--peer-transport tcp needs --peer IP:PORT of a TCP echo peer");
        }
    };
    let tls = TlsOptions { insecure: args.insecure, ca: args.ca.clone() };
    if transport == Transport::Tls {
        // Read the CA file now, so a bad one is bad input before any run.
        TlsClient::new(&tls)?;
    }
    let plan = Plan {
        server: args.server.clone(),
        spec,
        transport,
        credentials: credentials.source(),
        expected_realm: args.realm.clone(),
        relay_family: if args.ipv6 { RelayFamily::V6 } else { RelayFamily::V4 },
        lifetime: args.lifetime,
        nonce_wait: args.nonce_wait.map(Duration::from_secs_f64),
        peer,
        tcp_peer,
        timeout: Duration::from_secs_f64(args.timeout),
    };
    Ok(AuditConfig {
        plan,
        credentials,
        resolve_family: Family::from_flags(args.ipv4, args.ipv6),
        tls,
        quality: QualityPlan { packets: args.packets, rate: args.rate, size: args.size as usize },
    })
}

/// The transport to the server: `--transport`, else the URI's, else UDP.
fn transport_for(args: &TurnAllocArgs, spec: &ServerSpec) -> anyhow::Result<Transport> {
    Ok(match (spec.transport, args.transport) {
        (Some(Transport::Tls), Some(t)) if t != TurnTransportChoice::Tls => {
            return usage(format!("'{}' is a turns: URI (TLS) but --transport says otherwise", args.server));
        }
        (_, Some(TurnTransportChoice::Udp)) => Transport::Udp,
        (_, Some(TurnTransportChoice::Tcp)) => Transport::Tcp,
        (_, Some(TurnTransportChoice::Tls)) => Transport::Tls,
        (Some(t), None) => t,
        (None, None) => Transport::Udp,
    })
}

/// `--every`: the audit as a blackbox probe (`turn::audit::probe`), a report per run on
/// stdout and, with `--metrics`, the last one as Prometheus text. Ends only with Ctrl-C (exit 130).
async fn watch(
    args: &TurnAllocArgs,
    cfg: &AuditConfig,
    every: Duration,
    opts: &OutputOptions,
) -> anyhow::Result<Status> {
    let state = probe::SharedState::default();
    // Bound before the first run, so a taken address is bad input (exit 2) at once.
    let _endpoint = match args.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                UsageError::new(format!("cannot serve --metrics on {addr} (TCP): {e}; pick another address"))
            })?;
            tracing::info!("probe metrics on http://{}/metrics", listener.local_addr().unwrap_or(addr));
            let limits = MetricsLimits::with_cap(
                args.metrics_max_connections as usize,
                Duration::from_secs(args.metrics_header_timeout),
            );
            Some(AbortOnDrop(tokio::spawn(probe::serve_metrics(listener, limits, state.clone()))))
        }
        None => None,
    };
    let cadence = probe::Cadence { every };
    let never =
        probe::run_every(cadence, state, |info| audit_run(cfg, info), |report, info| emit_run(report, info, opts));
    match never.await? {}
}

/// Ends the metrics endpoint with the command (Ctrl-C drops the command's future).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One probe run. The first run's bad input ends the command (exit 2); later, a name
/// that stopped resolving is a failed run, not the end of the watch.
async fn audit_run(cfg: &AuditConfig, info: probe::RunInfo) -> anyhow::Result<TurnAllocReport> {
    match audit::run(cfg).await {
        Ok(report) => Ok(report),
        Err(e) if info.run > 1 => {
            let mut report = TurnAllocReport::not_run(&cfg.plan.server, cfg.plan.transport);
            let detail = format!("{e:#}");
            report.steps.push(Step { name: StepName::Resolve, ok: false, skipped: false, ms: 0.0, detail });
            let applicable = Applicable {
                allocate_peer: cfg.plan.peer == DataPeer::SecondAllocation,
                tcp_relay: cfg.plan.tcp_peer.is_some(),
            };
            report.finish(applicable, false);
            Ok(report)
        }
        Err(e) => Err(e.into()),
    }
}

/// A run's report in JSON Lines: the single-run object plus `run` and `started`.
#[derive(Serialize)]
struct ProbeLine<'a> {
    run: u64,
    /// RFC 3339 UTC.
    started: String,
    #[serde(flatten)]
    report: &'a TurnAllocReport,
}

fn emit_run(report: &TurnAllocReport, info: probe::RunInfo, opts: &OutputOptions) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let started = probe::rfc3339(info.started);
    match opts.format {
        output::Format::Json => output::json_line(&ProbeLine { run: info.run, started, report }, &mut out),
        output::Format::Table => {
            writeln!(out, "{}", run_line(&started, info.run, &report.outcome()))?;
            out.flush()?;
            Ok(())
        }
    }
}
