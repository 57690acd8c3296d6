//! `natkit turn-alloc`: proves a TURN server (RFC 8656) relays, end to end,
//! one named step at a time, and audits what an attacker with credentials
//! could do with it.
//!
//! By default the data test needs no outside peer: a second allocation on the
//! same server is the peer of the first, so data goes client → relay A →
//! relay B → client and back. The data round trip runs with Send/Data
//! indications (§10) before the channel is bound, since a bound channel makes
//! the server switch to ChannelData (§12), then with ChannelData.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::cli::PeerTransportChoice;
use crate::cli::{TurnAllocArgs, TurnTransportChoice};
use crate::error::{Status, UsageError, usage};
use crate::net::address_class::AddressClass;
use crate::net::metrics_http::MetricsLimits;
use crate::net::server_spec::{Family, Host, ResolveError, ServerSpec};
use crate::net::stream;
use crate::net::tls::{CertVerdict, TlsClient, TlsOptions};
use crate::net::transport::Transport;
use crate::net::turn_session::{Answer, Link, PeerData, TurnSession};
use crate::output::{self, OutputOptions, Render};
use crate::stun::message::{BindingResponse, binding_request, new_transaction_id};
use crate::stun::transaction::{Reliability, Retransmit};
use crate::turn::audit::quality::{self, JitterOf, Samples, Stats};
use crate::turn::client::{Auth, ClientConfig, DataPath, Failure, Request, Success, TurnClient};
use crate::turn::credentials::{Credentials, rest_credentials};
use crate::turn::probe::{self, ProbeReport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepName {
    Resolve,
    Connect,
    Binding,
    AllocateUnauthenticated,
    Allocate,
    AllocatePeer,
    CreatePermission,
    DataIndication,
    ChannelBind,
    ChannelData,
    Quality,
    Audit,
    Refresh,
    Deallocate,
    /// RFC 6062 TCP relaying to a TCP echo peer (`--peer-transport tcp`).
    TcpRelay,
}

impl StepName {
    const ALL: [StepName; 15] = [
        StepName::Resolve,
        StepName::Connect,
        StepName::Binding,
        StepName::AllocateUnauthenticated,
        StepName::Allocate,
        StepName::AllocatePeer,
        StepName::CreatePermission,
        StepName::DataIndication,
        StepName::ChannelBind,
        StepName::ChannelData,
        StepName::Quality,
        StepName::Audit,
        StepName::Refresh,
        StepName::Deallocate,
        StepName::TcpRelay,
    ];

    fn label(self) -> String {
        self.as_str().to_string()
    }

    /// The JSON name (kebab-case), as a `'static` str: the probe's metric label values.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Resolve => "resolve",
            StepName::Connect => "connect",
            StepName::Binding => "binding",
            StepName::AllocateUnauthenticated => "allocate-unauthenticated",
            StepName::Allocate => "allocate",
            StepName::AllocatePeer => "allocate-peer",
            StepName::CreatePermission => "create-permission",
            StepName::DataIndication => "data-indication",
            StepName::ChannelBind => "channel-bind",
            StepName::ChannelData => "channel-data",
            StepName::Quality => "quality",
            StepName::Audit => "audit",
            StepName::Refresh => "refresh",
            StepName::Deallocate => "deallocate",
            StepName::TcpRelay => "tcp-relay",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: StepName,
    pub ok: bool,
    /// True when the step did not run because an earlier one failed.
    pub skipped: bool,
    pub ms: f64,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct TurnAllocReport {
    pub ok: bool,
    pub server: String,
    pub address: Option<SocketAddr>,
    pub transport: Transport,
    pub relayed: Option<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    pub lifetime_s: Option<u32>,
    pub steps: Vec<Step>,
    pub stats: Option<Stats>,
    pub warnings: Vec<String>,
    /// `--peer-transport tcp`: the RFC 6062 step's findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_relay: Option<crate::turn::audit_tcp::TcpRelayReport>,
}

/// Ends the run at the failed step.
struct Stop;

const CHANNEL: u16 = 0x4000;

struct Ctx<'a> {
    args: &'a TurnAllocArgs,
    spec: ServerSpec,
    transport: Transport,
    timeout: Duration,
    credentials: Option<Credentials>,
    tls: Option<TlsClient>,
    report: TurnAllocReport,
    /// Set when the server name does not exist: the run ends as bad input.
    bad_input: Option<UsageError>,
}

pub async fn run(args: TurnAllocArgs, opts: &OutputOptions) -> anyhow::Result<Status> {
    if let Some(every) = args.every {
        return watch(&args, Duration::from_secs(every), opts).await;
    }
    let report = audit(&args).await?;
    output::emit(&report, opts)?;
    Ok(Status::from_ok(report.ok))
}

/// Runs every step and builds the report; bad input is an error (exit 2).
pub async fn audit(args: &TurnAllocArgs) -> anyhow::Result<TurnAllocReport> {
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
        (Some(u), Some(p), None) => Some(Credentials { username: u.clone(), password: p.clone() }),
        (name, None, Some(s)) => {
            Some(rest_credentials(s, name.as_deref(), SystemTime::now(), Duration::from_secs(3600)))
        }
        (Some(_), None, None) => return usage("--user needs --password (or use --secret for TURN REST credentials)"),
        _ => None,
    };
    if let Some(p) = &args.peer {
        p.parse::<SocketAddr>()
            .map_err(|_| UsageError::new(format!("bad --peer '{p}': expected IP:PORT of a UDP echo peer")))?;
    }
    // --peer-transport tcp: --peer is a TCP echo peer for the RFC 6062 step; the UDP steps use
    // a second allocation as their peer.
    let udp_args;
    let (args, tcp_peer) = match args.peer_transport {
        PeerTransportChoice::Udp => (args, None),
        PeerTransportChoice::Tcp => {
            if transport == Transport::Udp {
                return usage(
                    "--peer-transport tcp needs --transport tcp or tls: RFC 6062 relays TCP only for a TCP or TLS client",
                );
            }
            let Some(peer) = args.peer.as_deref().and_then(|p| p.parse::<SocketAddr>().ok()) else {
                return usage("--peer-transport tcp needs --peer IP:PORT of a TCP echo peer");
            };
            udp_args = TurnAllocArgs { peer: None, ..args.clone() };
            (&udp_args, Some(peer))
        }
    };
    let tls = if transport == Transport::Tls {
        Some(TlsClient::new(&TlsOptions { insecure: args.insecure, ca: args.ca.clone() })?)
    } else {
        None
    };
    let mut ctx = Ctx {
        args,
        transport,
        timeout: Duration::from_secs_f64(args.timeout),
        credentials,
        tls,
        report: TurnAllocReport::not_run(args, transport),
        spec,
        bad_input: None,
    };
    let mut finished = ctx.run_steps().await.is_ok();
    if finished && let (Some(peer), Some(server)) = (tcp_peer, ctx.report.address) {
        let t = Instant::now();
        let cfg = crate::turn::audit_tcp::TcpAuditConfig {
            server,
            host: &ctx.spec.host,
            tls: ctx.tls.as_ref(),
            credentials: ctx.credentials.clone(),
            peer,
            messages: args.packets.clamp(1, 1000),
            size: args.size as usize,
            timeout: ctx.timeout,
        };
        let r = crate::turn::audit_tcp::run(&cfg).await;
        let mut detail = r.detail.clone();
        if let Some(rtt) = r.rtt_ms {
            detail.push_str(&format!(", RTT min/avg/max {:.2}/{:.2}/{:.2} ms", rtt.min, rtt.avg, rtt.max));
        }
        ctx.report.steps.push(Step { name: StepName::TcpRelay, ok: r.ok, skipped: false, ms: ms_since(t), detail });
        finished = r.ok;
        ctx.report.tcp_relay = Some(r);
    }
    // A server name that does not exist is bad input, like everywhere else: exit 2, no step table.
    if let Some(e) = ctx.bad_input {
        return Err(e.into());
    }
    list_steps_not_run(&mut ctx.report, args);
    ctx.report.ok = finished && ctx.report.steps.iter().all(|s| s.ok);
    Ok(ctx.report)
}

impl TurnAllocReport {
    /// A report before any step ran: not ok, nothing learned yet.
    fn not_run(args: &TurnAllocArgs, transport: Transport) -> Self {
        TurnAllocReport {
            ok: false,
            server: args.server.clone(),
            address: None,
            transport,
            relayed: None,
            mapped: None,
            lifetime_s: None,
            steps: Vec::new(),
            stats: None,
            warnings: Vec::new(),
            tcp_relay: None,
        }
    }
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

/// Steps that never ran are listed, so the report shows how far the run got.
fn list_steps_not_run(report: &mut TurnAllocReport, args: &TurnAllocArgs) {
    for name in StepName::ALL {
        let ran = report.steps.iter().any(|s| s.name == name);
        let not_applicable = (name == StepName::AllocatePeer && args.peer.is_some())
            || (name == StepName::TcpRelay && args.peer_transport != PeerTransportChoice::Tcp);
        if !ran && !not_applicable {
            report.steps.push(Step { name, ok: false, skipped: true, ms: 0.0, detail: "not run".into() });
        }
    }
}

/// `--every`: the audit as a blackbox probe (`turn::probe`), a report per run on stdout
/// and, with `--metrics`, the last one as Prometheus text. Ends only with Ctrl-C (exit 130).
async fn watch(args: &TurnAllocArgs, every: Duration, opts: &OutputOptions) -> anyhow::Result<Status> {
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
        probe::run_every(cadence, state, |info| audit_run(args, info), |report, info| emit_run(report, info, opts));
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
async fn audit_run(args: &TurnAllocArgs, info: probe::RunInfo) -> anyhow::Result<TurnAllocReport> {
    match audit(args).await {
        Err(e) if info.run > 1 && e.downcast_ref::<UsageError>().is_some() => {
            // The first run got past the same checks, so only the lookup can fail here.
            let transport = ServerSpec::parse(&args.server)
                .ok()
                .and_then(|spec| transport_for(args, &spec).ok())
                .unwrap_or(Transport::Udp);
            let mut report = TurnAllocReport::not_run(args, transport);
            report.steps.push(Step {
                name: StepName::Resolve,
                ok: false,
                skipped: false,
                ms: 0.0,
                detail: format!("{e:#}"),
            });
            list_steps_not_run(&mut report, args);
            Ok(report)
        }
        other => other,
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

/// The compact line for a person watching: time, run, ok/FAILED, allocate, rtt, loss,
/// and the failing step with its detail last (it is the long part).
fn run_line(started: &str, run: u64, o: &probe::RunOutcome) -> String {
    let ms = |d: Option<Duration>| d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0)).unwrap_or("-".into());
    let mut line = format!(
        "{started}  run {run}  {}  allocate {}  rtt {}  loss {}",
        if o.ok { "ok" } else { "FAILED" },
        ms(o.allocate),
        ms(o.rtt),
        o.loss_ratio.map(|l| format!("{:.1}%", l * 100.0)).unwrap_or("-".into())
    );
    if o.warnings > 0 {
        line.push_str(&format!("  warnings {}", o.warnings));
    }
    if let Some(f) = &o.failed_step {
        line.push_str(&format!("  at {}: {}", f.name, f.detail.replace('\n', " ")));
    }
    line
}

impl probe::ProbeReport for TurnAllocReport {
    fn outcome(&self) -> probe::RunOutcome {
        let step = |s: &Step| probe::StepOutcome { name: s.name.as_str(), ok: s.ok, detail: s.detail.clone() };
        let secs = |ms: f64| Duration::try_from_secs_f64(ms / 1000.0).ok();
        probe::RunOutcome {
            ok: self.ok,
            steps: self.steps.iter().map(step).collect(),
            failed_step: self.steps.iter().find(|s| !s.ok && !s.skipped).map(step),
            allocate: self.steps.iter().find(|s| s.name == StepName::Allocate && s.ok).and_then(|s| secs(s.ms)),
            rtt: self.stats.as_ref().and_then(|st| st.rtt_ms.as_ref()).and_then(|r| secs(r.avg)),
            loss_ratio: self.stats.as_ref().filter(|st| st.sent > 0).map(|st| st.loss_pct / 100.0),
            jitter: self.stats.as_ref().and_then(|st| st.jitter_ms).and_then(secs),
            warnings: self.warnings.len(),
        }
    }
}

fn ms_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

impl Ctx<'_> {
    fn pass(&mut self, name: StepName, started: Instant, detail: impl Into<String>) {
        self.report.steps.push(Step { name, ok: true, skipped: false, ms: ms_since(started), detail: detail.into() });
    }

    fn fail(&mut self, name: StepName, started: Instant, detail: impl Into<String>) -> Stop {
        self.report.steps.push(Step { name, ok: false, skipped: false, ms: ms_since(started), detail: detail.into() });
        Stop
    }

    /// Adds `more` to the detail of step `name`, once a later step told more about it.
    fn amend(&mut self, name: StepName, more: &str) {
        if let Some(step) = self.report.steps.iter_mut().find(|s| s.name == name) {
            step.detail.push_str(more);
        }
    }

    fn warn(&mut self, w: impl Into<String>) {
        self.report.warnings.push(w.into());
    }

    fn family(&self) -> Family {
        Family::from_flags(self.args.ipv4, self.args.ipv6)
    }

    async fn run_steps(&mut self) -> Result<(), Stop> {
        // resolve
        let t = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let server = match self.spec.resolve_by(self.transport, self.family(), deadline).await {
            Ok(a) => a,
            Err(ResolveError::BadName(e)) => {
                self.bad_input = Some(e);
                return Err(Stop);
            }
            Err(e) => return Err(self.fail(StepName::Resolve, t, e.describe(self.timeout))),
        };
        self.report.address = Some(server);
        self.pass(StepName::Resolve, t, format!("{} is {server}", self.spec.host));

        // connect
        let t = Instant::now();
        let mut a = match self.connect(server).await {
            Ok(s) => s,
            Err(e) => return Err(self.fail(StepName::Connect, t, e)),
        };
        let detail = self.connect_detail(&a);
        self.pass(StepName::Connect, t, detail);

        // binding
        let t = Instant::now();
        let ans = self.ask(&mut a, Request::Binding, Auth::Anonymous, StepName::Binding, t).await?;
        match ans.result {
            Ok(s) => {
                self.report.mapped = s.mapped;
                let m = s.mapped.map(|m| m.to_string()).unwrap_or_else(|| "no XOR-MAPPED-ADDRESS".into());
                self.pass(StepName::Binding, t, format!("server-reflexive address {m}, rtt {:.2} ms", ms(ans.rtt)));
            }
            Err(f) => {
                let why = self.explain(StepName::Binding, &f);
                return Err(self.fail(StepName::Binding, t, why));
            }
        }

        // allocate without credentials: the server should challenge
        let t = Instant::now();
        let alloc = Request::Allocate { lifetime: Some(self.args.lifetime), ipv6: self.args.ipv6 };
        let ans = self.ask(&mut a, alloc.clone(), Auth::Anonymous, StepName::AllocateUnauthenticated, t).await?;
        let mut allocation = None;
        match ans.result {
            Err(Failure::Error { code: 401, .. }) => {
                let realm = a.client.realm().map(str::to_string);
                match (realm, a.client.nonce().is_some(), &self.args.realm) {
                    (Some(r), true, Some(want)) if &r != want => {
                        return Err(self.fail(
                            StepName::AllocateUnauthenticated,
                            t,
                            format!("401 with realm '{r}', but you expect '{want}': check the server's realm setting"),
                        ));
                    }
                    (Some(r), true, _) => self.pass(
                        StepName::AllocateUnauthenticated,
                        t,
                        format!("401 Unauthorized with realm '{r}' and a nonce, as it should"),
                    ),
                    _ => {
                        return Err(self.fail(
                            StepName::AllocateUnauthenticated,
                            t,
                            "401 without REALM and NONCE: the server does not follow RFC 8489 §9.2",
                        ));
                    }
                }
            }
            Ok(s) => {
                self.warn("the server does not require credentials: anyone can allocate relays on it (coturn: set lt-cred-mech or use-auth-secret)");
                self.pass(StepName::AllocateUnauthenticated, t, "allocation granted WITHOUT credentials");
                allocation = Some(s);
            }
            Err(f) => {
                let why = self.explain(StepName::AllocateUnauthenticated, &f);
                return Err(self.fail(StepName::AllocateUnauthenticated, t, why));
            }
        }

        // allocate with credentials
        let t = Instant::now();
        let allocation = match allocation {
            Some(s) => {
                self.pass(StepName::Allocate, t, "already allocated without credentials");
                s
            }
            None => {
                if self.credentials.is_none() {
                    return Err(self.fail(
                        StepName::Allocate,
                        t,
                        "the server requires credentials: pass --user and --password, or --secret",
                    ));
                }
                let ans = self.ask(&mut a, alloc.clone(), Auth::Credentials, StepName::Allocate, t).await?;
                match ans.result {
                    Ok(s) => {
                        self.pass(StepName::Allocate, t, alloc_detail(&s, ans.auth_retries));
                        s
                    }
                    Err(f) => {
                        let why = self.explain(StepName::Allocate, &f);
                        return Err(self.fail(StepName::Allocate, t, why));
                    }
                }
            }
        };
        let Some(relayed_a) = allocation.relayed else {
            return Err(self.fail(StepName::Allocate, t, "success response without XOR-RELAYED-ADDRESS"));
        };
        self.report.relayed = Some(relayed_a);
        self.report.mapped = allocation.mapped.or(self.report.mapped);
        self.report.lifetime_s = allocation.lifetime;
        if allocation.integrity_ok.is_none() && self.credentials.is_some() {
            self.warn("the server's responses carry no MESSAGE-INTEGRITY: a client cannot tell them from forged ones");
        }
        if is_public(server.ip()) && !is_public(relayed_a.ip()) {
            self.warn(format!(
                "the relayed address {relayed_a} is private while the server's address {} is public: peers cannot reach it (coturn: set external-ip; natkit relay: --external-ip)",
                server.ip()
            ));
        }

        // the data peer: a second allocation, or --peer
        let external_peer: Option<SocketAddr> = self.args.peer.as_deref().and_then(|p| p.parse().ok());
        let mut b = None;
        if external_peer.is_none() {
            let t = Instant::now();
            let mut sb = match self.connect(server).await {
                Ok(s) => s,
                Err(e) => return Err(self.fail(StepName::AllocatePeer, t, e)),
            };
            let auth = if self.credentials.is_some() { Auth::Credentials } else { Auth::Anonymous };
            let ans = self.ask(&mut sb, alloc.clone(), auth, StepName::AllocatePeer, t).await?;
            match ans.result {
                Ok(Success { relayed: Some(r), .. }) => {
                    self.pass(StepName::AllocatePeer, t, format!("second allocation {r} is the data peer"));
                    b = Some((sb, r));
                }
                Ok(_) => return Err(self.fail(StepName::AllocatePeer, t, "success without XOR-RELAYED-ADDRESS")),
                Err(f) => {
                    let why = self.explain(StepName::AllocatePeer, &f);
                    return Err(self.fail(StepName::AllocatePeer, t, why));
                }
            }
        }
        let peer = match (&b, external_peer) {
            (Some((_, r)), _) => *r,
            (None, Some(p)) => p,
            (None, None) => return Err(Stop),
        };

        // create-permission, both ways
        let t = Instant::now();
        let ans = self
            .ask(
                &mut a,
                Request::CreatePermission { peers: vec![peer] },
                Auth::Credentials,
                StepName::CreatePermission,
                t,
            )
            .await?;
        if let Err(f) = ans.result {
            let why = self.explain_peer(StepName::CreatePermission, &f, peer);
            return Err(self.fail(StepName::CreatePermission, t, why));
        }
        if let Some((sb, _)) = &mut b {
            let ans = self
                .ask(
                    sb,
                    Request::CreatePermission { peers: vec![relayed_a] },
                    Auth::Credentials,
                    StepName::CreatePermission,
                    t,
                )
                .await?;
            if let Err(f) = ans.result {
                let why = self.explain_peer(StepName::CreatePermission, &f, relayed_a);
                return Err(self.fail(StepName::CreatePermission, t, why));
            }
        }
        self.pass(StepName::CreatePermission, t, format!("permission for {peer} (and back) in {:.2} ms", ms_since(t)));

        // data with Send/Data indications
        let t = Instant::now();
        let payload = b"natkit turn-alloc indication probe";
        // A failure here does not stop the run: ChannelData is tried next, so the report can say
        // which of the two data paths (RFC 8656 §11 and §12) the server relays.
        let indications_ok =
            match self.round_trip(&mut a, b.as_mut().map(|(s, _)| s), peer, relayed_a, payload, None).await {
                Ok(rtt) => {
                    self.pass(
                        StepName::DataIndication,
                        t,
                        format!("Send → relay → Data and back, round trip {:.2} ms", ms(rtt)),
                    );
                    true
                }
                Err(e) => {
                    let _ = self.fail(StepName::DataIndication, t, e);
                    false
                }
            };

        // channel-bind, both ways
        let t = Instant::now();
        let ans = self
            .ask(&mut a, Request::ChannelBind { channel: CHANNEL, peer }, Auth::Credentials, StepName::ChannelBind, t)
            .await?;
        if let Err(f) = ans.result {
            let why = self.explain_peer(StepName::ChannelBind, &f, peer);
            return Err(self.fail(StepName::ChannelBind, t, why));
        }
        if let Some((sb, _)) = &mut b {
            let ans = self
                .ask(
                    sb,
                    Request::ChannelBind { channel: CHANNEL, peer: relayed_a },
                    Auth::Credentials,
                    StepName::ChannelBind,
                    t,
                )
                .await?;
            if let Err(f) = ans.result {
                let why = self.explain_peer(StepName::ChannelBind, &f, relayed_a);
                return Err(self.fail(StepName::ChannelBind, t, why));
            }
        }
        self.pass(StepName::ChannelBind, t, format!("channel {CHANNEL:#06x} bound to {peer}"));

        // data with ChannelData
        let t = Instant::now();
        let payload = b"natkit turn-alloc channel probe";
        match self.round_trip(&mut a, b.as_mut().map(|(s, _)| s), peer, relayed_a, payload, Some(CHANNEL)).await {
            Ok(rtt) => {
                self.pass(StepName::ChannelData, t, format!("ChannelData round trip {:.2} ms", ms(rtt)));
                if !indications_ok {
                    self.amend(
                        StepName::DataIndication,
                        "; ChannelData is relayed (step channel-data): the server relays ChannelData but not Send/Data indications",
                    );
                }
            }
            Err(e) => {
                let which = if indications_ok {
                    "; Send/Data indications were relayed (step data-indication): the server relays indications but not ChannelData"
                } else {
                    "; Send/Data indications were not relayed either (step data-indication): the server relays neither"
                };
                return Err(self.fail(StepName::ChannelData, t, format!("{e}{which}")));
            }
        }

        // quality
        let t = Instant::now();
        let stats = self.quality(&mut a, b.as_mut().map(|(s, _)| s)).await;
        let detail = stats.detail();
        let quality_ok = stats.passed();
        self.report.stats = Some(stats);
        if !quality_ok {
            return Err(self.fail(StepName::Quality, t, detail));
        }
        self.pass(StepName::Quality, t, detail);

        // audit
        let t = Instant::now();
        let detail = self.audit_peers(&mut a, server, relayed_a).await;
        self.pass(StepName::Audit, t, detail);

        // refresh (and, if asked, whether an old nonce is still accepted)
        let t = Instant::now();
        let mut nonce_note = String::new();
        if let Some(wait) = self.args.nonce_wait {
            let stale_before = a.client.stale_nonces;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            let ans = self
                .ask(&mut a, Request::Refresh { lifetime: self.args.lifetime }, Auth::Credentials, StepName::Refresh, t)
                .await?;
            if ans.result.is_ok() {
                if a.client.stale_nonces > stale_before {
                    nonce_note =
                        format!("; the nonce went stale within {wait:.0} s (438) and a fresh one was accepted");
                } else {
                    self.warn(format!(
                        "the nonce was still accepted after {wait:.0} s idle: nonces may never go stale (coturn: --stale-nonce)"
                    ));
                    nonce_note = format!("; the first nonce was still accepted after {wait:.0} s");
                }
            }
        } else {
            nonce_note = "; nonce expiry not checked (use --nonce-wait 620 for coturn's 600 s default)".into();
        }
        let ans = self
            .ask(&mut a, Request::Refresh { lifetime: self.args.lifetime }, Auth::Credentials, StepName::Refresh, t)
            .await?;
        match ans.result {
            Ok(s) => {
                let l = s.lifetime.map(|l| format!("{l} s")).unwrap_or_else(|| "unspecified".into());
                self.pass(StepName::Refresh, t, format!("lifetime now {l}{nonce_note}"));
            }
            Err(f) => {
                let why = self.explain(StepName::Refresh, &f);
                return Err(self.fail(StepName::Refresh, t, why));
            }
        }

        // deallocate
        let t = Instant::now();
        let ans =
            self.ask(&mut a, Request::Refresh { lifetime: 0 }, Auth::Credentials, StepName::Deallocate, t).await?;
        if let Some((sb, _)) = &mut b {
            let _ = sb.request(Request::Refresh { lifetime: 0 }, Auth::Credentials).await;
        }
        match ans.result {
            Ok(_) => self.pass(StepName::Deallocate, t, "refresh with lifetime 0 deleted the allocation"),
            Err(f) => {
                let why = self.explain(StepName::Deallocate, &f);
                return Err(self.fail(StepName::Deallocate, t, why));
            }
        }
        Ok(())
    }

    /// A request whose I/O failure (socket error, ICMP) fails `step`.
    async fn ask(
        &mut self,
        s: &mut TurnSession,
        req: Request,
        auth: Auth,
        step: StepName,
        t: Instant,
    ) -> Result<Answer, Stop> {
        match s.request(req, auth).await {
            Ok(a) => Ok(a),
            Err(e) => {
                let why = self.io_error(&e);
                Err(self.fail(step, t, why))
            }
        }
    }

    fn io_error(&self, e: &std::io::Error) -> String {
        let addr = self.report.address.map(|a| a.to_string()).unwrap_or_default();
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => format!(
                "port unreachable (ICMP): nothing listens on {addr} over {}; check the server's port",
                self.transport.name()
            ),
            std::io::ErrorKind::UnexpectedEof => format!("{addr} closed the {} connection", self.transport.name()),
            _ => format!("{} I/O with {addr} failed: {e}", self.transport.name()),
        }
    }

    async fn connect(&mut self, server: SocketAddr) -> Result<TurnSession, String> {
        let reliability = match self.transport {
            Transport::Udp => Reliability::Unreliable(Retransmit::default()),
            _ => Reliability::Reliable { ti: self.timeout },
        };
        let cfg = ClientConfig {
            credentials: self.credentials.clone(),
            reliability,
            request_timeout: self.timeout,
            pad_channel_data: self.transport != Transport::Udp,
        };
        let (link, local) = match self.transport {
            Transport::Udp => {
                let any: SocketAddr =
                    if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|_| "bind")?;
                let sock =
                    tokio::net::UdpSocket::bind(any).await.map_err(|e| format!("cannot bind a UDP socket: {e}"))?;
                sock.connect(server).await.map_err(|e| format!("cannot reach {server} over UDP: {e}"))?;
                let local = sock.local_addr().map_err(|e| e.to_string())?;
                (Link::Udp(sock), local)
            }
            Transport::Tcp | Transport::Tls => {
                let conn = stream::connect(server, None, &self.spec.host, self.tls.as_ref(), self.timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                let local = conn.local;
                (Link::Stream(conn), local)
            }
        };
        Ok(TurnSession::new(link, TurnClient::new(cfg), local, server))
    }

    fn connect_detail(&mut self, s: &TurnSession) -> String {
        let mut d = format!("{} {} → {}", self.transport.name(), s.local, s.server);
        if let Some(tls) = &self.tls {
            match tls.verdict() {
                Some(CertVerdict::Valid) => d.push_str(", certificate valid"),
                Some(CertVerdict::Invalid(why)) => {
                    d.push_str(&format!(", certificate {why} (accepted: --insecure)"));
                    let name = match &self.spec.host {
                        Host::Name(n) => n.clone(),
                        Host::Ip(ip) => ip.to_string(),
                    };
                    self.warn(format!("the TLS certificate for {name} is {why}: clients that check certificates (browsers) will refuse turns:"));
                }
                None => {}
            }
        }
        d
    }

    /// A sentence for a failed request: what happened and what to check.
    fn explain(&self, step: StepName, f: &Failure) -> String {
        let port = self.report.address.map(|a| a.port()).unwrap_or_else(|| self.spec.port_for(self.transport));
        match f {
            Failure::TimedOut { sends, elapsed } => {
                let mut s = format!(
                    "no response over {} after {sends} tries in {:.1} s",
                    self.transport.name(),
                    elapsed.as_secs_f64()
                );
                if step == StepName::Binding && self.transport == Transport::Udp {
                    s.push_str(&format!(": is port {port}/udp open? (try --transport tcp)"));
                }
                s
            }
            Failure::Error { code: 401, reason } if step != StepName::AllocateUnauthenticated => {
                let realm = self.args.realm.clone();
                match (&self.args.secret, realm) {
                    (Some(_), _) => format!(
                        "401 {reason} after sending REST credentials: the shared secret differs from the server's, or the clocks disagree"
                    ),
                    (None, Some(r)) => {
                        format!("401 {reason} after sending credentials: wrong password, or the realm is not '{r}'")
                    }
                    (None, None) => format!("401 {reason} after sending credentials: wrong user or password"),
                }
            }
            Failure::Error { code: 486, reason } => {
                format!("refused with 486 {reason}: allocation quota reached for this user")
            }
            Failure::Error { code: 508, reason } => {
                format!("refused with 508 {reason}: the server has no relay ports left")
            }
            Failure::Error { code: 437, reason } => {
                format!("437 {reason}: an allocation already exists for this 5-tuple, or none does")
            }
            Failure::Error { code: 440, reason } => {
                format!("440 {reason}: the server cannot relay this address family")
            }
            Failure::Error { code: 442, reason } => format!("442 {reason}: the server does not relay UDP"),
            Failure::Error { code: 403, reason } => format!("403 {reason}: refused by the server's policy"),
            other => other.to_string(),
        }
    }

    fn explain_peer(&self, step: StepName, f: &Failure, peer: SocketAddr) -> String {
        match f {
            Failure::Error { code: 403, reason } => {
                let class = AddressClass::of_canonical(peer.ip());
                let kind = if class.is_public() { "a refused" } else { class.with_article() };
                format!(
                    "403 {reason}: the server's policy refuses peer {peer} ({kind} address){}",
                    if class == AddressClass::Loopback {
                        "; that is the safe default — coturn relays to loopback only with --allow-loopback-peers, natkit relay with --allow-loopback-peers"
                    } else {
                        ""
                    }
                )
            }
            Failure::Error { code: 443, reason } => {
                format!("443 {reason}: peer {peer} is not of the relayed address's family")
            }
            other => self.explain(step, other),
        }
    }

    /// Sends `payload` from A to `peer` and waits for it to come back (B echoes
    /// it, or the external peer does). Returns the round-trip time.
    async fn round_trip(
        &mut self,
        a: &mut TurnSession,
        b: Option<&mut TurnSession>,
        peer: SocketAddr,
        relayed_a: SocketAddr,
        payload: &[u8],
        channel: Option<u16>,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        send_via(a, peer, payload, channel).await.map_err(|e| self.io_error(&e))?;
        if let Some(b) = b {
            let got = b.recv_data(deadline).await.map_err(|e| self.io_error(&e))?;
            match got {
                Some(PeerData { peer: from, data, path, .. }) if data == payload => {
                    if from != relayed_a {
                        return Err(format!(
                            "the peer got the data from {from}, not from our relayed address {relayed_a}"
                        ));
                    }
                    if !path_matches(path, channel) {
                        return Err(format!("the peer got the data as {path:?}, expected {}", path_name(channel)));
                    }
                    send_via(b, relayed_a, &data, channel).await.map_err(|e| self.io_error(&e))?;
                }
                Some(other) => return Err(format!("the peer got unexpected data from {}", other.peer)),
                None => {
                    return Err(format!(
                        "{} from us did not reach the peer allocation within {:.1} s: the server did not relay it toward the peer",
                        sent_name(channel),
                        self.timeout.as_secs_f64()
                    ));
                }
            }
        }
        match a.recv_data(deadline).await.map_err(|e| self.io_error(&e))? {
            Some(PeerData { peer: from, data, path, at })
                if data == payload && from == peer && path_matches(path, channel) =>
            {
                Ok(at.saturating_duration_since(started))
            }
            Some(other) => {
                Err(format!("unexpected data from {} ({} bytes, {:?})", other.peer, other.data.len(), other.path))
            }
            None => Err(format!(
                "no data came back through the relay within {:.1} s (expected as {}){}",
                self.timeout.as_secs_f64(),
                path_name(channel),
                if self.args.peer.is_some() { ": does the --peer echo UDP?" } else { "" }
            )),
        }
    }

    /// `--packets` at `--rate` over the channel; B (or the external peer) echoes.
    async fn quality(&mut self, a: &mut TurnSession, b: Option<&mut TurnSession>) -> Stats {
        let n = self.args.packets;
        let interval = Duration::from_secs_f64(1.0 / self.args.rate as f64);
        let size = self.args.size as usize;
        let t0 = Instant::now();
        let grace = self.timeout.min(Duration::from_secs(3));
        let end = t0 + interval * n + grace;
        let sender_done = std::cell::Cell::new(false);
        let since = |at: Instant, sent: Duration| at.saturating_duration_since(t0 + sent).as_secs_f64() * 1000.0;

        let sender = async {
            let mut rtts: Vec<f64> = Vec::new();
            let mut sent = 0u32;
            for seq in 0..n {
                let due = t0 + interval * seq;
                while let Ok(Some(d)) = a.recv_data(due).await {
                    if let Some((_, at)) = quality::decode_probe(&d.data) {
                        rtts.push(since(d.at, at));
                    }
                }
                let pkt = quality::encode_probe(seq, t0.elapsed(), size);
                if a.send_channel_data(CHANNEL, &pkt).await.is_ok() {
                    sent += 1;
                }
            }
            while rtts.len() < sent as usize {
                match a.recv_data(end).await {
                    Ok(Some(d)) => {
                        if let Some((_, at)) = quality::decode_probe(&d.data) {
                            rtts.push(since(d.at, at));
                        }
                    }
                    _ => break,
                }
            }
            sender_done.set(true);
            (sent, rtts)
        };
        let echoer = async {
            let mut transits = Vec::new();
            if let Some(b) = b {
                // Short waits, so the echoer ends soon after the sender has all it will get.
                while !sender_done.get() && Instant::now() < end {
                    let slice = (Instant::now() + Duration::from_millis(20)).min(end);
                    while let Ok(Some(d)) = b.recv_data(slice).await {
                        if let Some((_, at)) = quality::decode_probe(&d.data) {
                            transits.push(since(d.at, at));
                            let _ = b.send_channel_data(CHANNEL, &d.data).await;
                        }
                    }
                }
            }
            transits
        };
        let ((sent, rtts), transits) = tokio::join!(sender, echoer);
        let jitter_of = if self.args.peer.is_some() { JitterOf::RoundTrip } else { JitterOf::Transit };
        Stats::from_samples(&Samples { sent, rtts, transits }, jitter_of)
    }

    /// Asks for permissions to addresses a relay must refuse, and checks whether
    /// it relays to its own loopback. Warnings for what it accepts.
    async fn audit_peers(&mut self, a: &mut TurnSession, server: SocketAddr, relayed: SocketAddr) -> String {
        let v6 = relayed.is_ipv6();
        let probes: Vec<(IpAddr, &str)> = if v6 {
            vec![
                (IpAddr::V6(Ipv6Addr::LOCALHOST), "loopback"),
                (IpAddr::V6(Ipv6Addr::UNSPECIFIED), "unspecified"),
                ("fd00::1".parse().unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST)), "private (fc00::/7)"),
                ("fe80::1".parse().unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST)), "link-local"),
            ]
        } else {
            vec![
                (IpAddr::V4(Ipv4Addr::LOCALHOST), "loopback"),
                (IpAddr::V4(Ipv4Addr::UNSPECIFIED), "unspecified (0.0.0.0)"),
                (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), "private (10/8)"),
                (IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1)), "private (172.16/12)"),
                (IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)), "private (192.168/16)"),
                (IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), "link-local (cloud metadata)"),
            ]
        };
        let mut refused = Vec::new();
        let mut accepted = Vec::new();
        for (ip, kind) in probes {
            let peer = SocketAddr::new(ip, server.port());
            match a.request(Request::CreatePermission { peers: vec![peer] }, Auth::Credentials).await {
                Ok(Answer { result: Ok(_), .. }) => {
                    accepted.push(ip);
                    let fix = if AddressClass::of_canonical(ip) == AddressClass::Loopback {
                        "coturn: drop --allow-loopback-peers"
                    } else if ip.is_unspecified() {
                        "coturn: denied-peer-ip=0.0.0.0-0.255.255.255"
                    } else {
                        "coturn: add a denied-peer-ip line for the range"
                    };
                    self.warn(format!(
                        "the server accepts a permission to {ip} ({kind}): anyone with credentials can reach that range through it ({fix}; natkit relay refuses it by default)"
                    ));
                }
                Ok(Answer { result: Err(_), .. }) => refused.push(ip.to_string()),
                Err(_) => break,
            }
        }
        // Does it really relay to its own loopback? A STUN request to its own port, through itself.
        let loopback = if v6 { IpAddr::V6(Ipv6Addr::LOCALHOST) } else { IpAddr::V4(Ipv4Addr::LOCALHOST) };
        let mut relays_loopback = false;
        if accepted.contains(&loopback) {
            let target = SocketAddr::new(loopback, server.port());
            let id = new_transaction_id();
            if a.send_indication(target, &binding_request(id)).await.is_ok() {
                let until = Instant::now() + self.timeout.min(Duration::from_secs(2));
                while let Ok(Some(d)) = a.recv_data(until).await {
                    if d.peer == target && BindingResponse::parse(&d.data).is_ok() {
                        relays_loopback = true;
                        break;
                    }
                }
            }
            if relays_loopback {
                self.warn(format!(
                    "the server relays to its own loopback: a STUN request sent through it to {target} was answered — services bound to localhost on the TURN host are reachable"
                ));
            }
        }
        let mut d = if refused.is_empty() {
            "refused nothing".to_string()
        } else {
            format!("refused permissions to {}", refused.join(", "))
        };
        if !accepted.is_empty() {
            d.push_str(&format!(
                "; ACCEPTED {}",
                accepted.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        if relays_loopback {
            d.push_str("; relays to its own loopback");
        }
        d
    }
}

async fn send_via(s: &mut TurnSession, to: SocketAddr, data: &[u8], channel: Option<u16>) -> std::io::Result<()> {
    match channel {
        Some(c) => s.send_channel_data(c, data).await,
        None => s.send_indication(to, data).await,
    }
}

fn path_matches(path: DataPath, channel: Option<u16>) -> bool {
    match (path, channel) {
        (DataPath::Indication, None) => true,
        (DataPath::Channel(c), Some(want)) => c == want,
        _ => false,
    }
}

/// How we send on that path: a Send indication (RFC 8656 §11.2) or ChannelData (§12.4).
fn sent_name(channel: Option<u16>) -> String {
    match channel {
        Some(c) => format!("ChannelData on channel {c:#06x}"),
        None => "a Send indication".into(),
    }
}

fn path_name(channel: Option<u16>) -> &'static str {
    if channel.is_some() { "ChannelData" } else { "a Data indication" }
}

fn alloc_detail(s: &Success, auth_retries: u8) -> String {
    format!(
        "relayed {}, mapped {}, lifetime {} s{}",
        output::cell(&s.relayed),
        output::cell(&s.mapped),
        s.lifetime.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
        if auth_retries > 0 { " (after the 401 challenge)" } else { "" }
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Globally routable, as far as an audit needs to know (judged where packets really go).
fn is_public(ip: IpAddr) -> bool {
    AddressClass::of_canonical(ip).is_public()
}

impl Render for TurnAllocReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut t = output::Grid::new(&["step", "result", "ms", "detail"]);
        for s in &self.steps {
            let result = match (s.ok, s.skipped) {
                (true, _) => "ok",
                (false, true) => "-",
                (false, false) => "FAILED",
            };
            t.row(vec![
                s.name.label(),
                result.into(),
                if s.skipped { "-".into() } else { format!("{:.1}", s.ms) },
                s.detail.clone(),
            ]);
        }
        writeln!(out, "{t}")?;
        let addr = self.address.map(|a| a.to_string()).unwrap_or_else(|| self.server.clone());
        if self.ok {
            output::say(
                out,
                &format!(
                    "{} over {} relays: relayed address {}, server-reflexive {}.",
                    addr,
                    self.transport.name(),
                    output::cell(&self.relayed),
                    output::cell(&self.mapped)
                ),
            )?;
        } else if let Some(f) = self.steps.iter().find(|s| !s.ok && !s.skipped) {
            output::say(out, &format!("FAILED at {}: {}", f.name.label(), f.detail))?;
        }
        for w in &self.warnings {
            output::say(out, &format!("warning: {w}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_labels_are_the_json_names() {
        for name in StepName::ALL {
            assert_eq!(serde_json::to_value(name).expect("json"), name.as_str(), "{name:?}");
        }
    }

    #[test]
    fn a_probe_run_is_one_line_with_the_failing_step_last() {
        let mut report = TurnAllocReport {
            ok: false,
            server: "turn.example:3478".into(),
            address: None,
            transport: Transport::Udp,
            relayed: None,
            mapped: None,
            lifetime_s: None,
            steps: vec![
                Step { name: StepName::Allocate, ok: true, skipped: false, ms: 2.5, detail: String::new() },
                Step { name: StepName::ChannelData, ok: false, skipped: false, ms: 9.0, detail: "no\nanswer".into() },
                Step { name: StepName::Refresh, ok: false, skipped: true, ms: 0.0, detail: "not run".into() },
            ],
            stats: Some(Stats { sent: 4, received: 3, loss_pct: 25.0, rtt_ms: None, jitter_ms: Some(1.0) }),
            warnings: vec!["open".into()],
            tcp_relay: None,
        };
        let o = report.outcome();
        assert_eq!(o.failed_step.as_ref().map(|f| f.name), Some("channel-data"));
        assert_eq!(o.loss_ratio, Some(0.25));
        assert_eq!(o.jitter, Some(Duration::from_millis(1)));
        assert_eq!(
            run_line("T", 7, &o),
            "T  run 7  FAILED  allocate 2.5 ms  rtt -  loss 25.0%  warnings 1  at channel-data: no answer"
        );
        report.ok = true;
        report.steps.truncate(1);
        report.warnings.clear();
        assert_eq!(run_line("T", 8, &report.outcome()), "T  run 8  ok  allocate 2.5 ms  rtt -  loss 25.0%");
    }

    #[test]
    fn steps_serialise_kebab_case() {
        assert_eq!(StepName::AllocateUnauthenticated.label(), "allocate-unauthenticated");
        assert_eq!(StepName::CreatePermission.label(), "create-permission");
    }
}
