//! `natkit stun-probe`: STUN Binding (RFC 8489) to many servers at once over
//! UDP, TCP and TLS, and what the answers mean together.
//!
//! Every UDP probe of one address family shares one socket, so each server
//! sees the same local port and a mapped address that changes with the
//! destination is a real hint of address-dependent (symmetric) mapping.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::{StunProbeArgs, TransportChoice};
use crate::error::{Status, UsageError, usage};
use crate::net::address_class::AddressClass;
use crate::net::server_spec::{Family, ServerSpec};
use crate::net::stream::{self, StreamEnd};
use crate::net::tls::{CertVerdict, TlsClient, TlsOptions};
use crate::net::transport::Transport;
use crate::net::udp::{self, UdpEnd};
use crate::output::{self, OutputOptions, Render};
use crate::stun::message::{BindingResponse, binding_request, new_transaction_id};
use crate::stun::transaction::{ClientTransaction, Outcome, Reliability, Retransmit};

/// Used when no SERVER is given; listed in README.
pub const DEFAULT_SERVERS: &[&str] = &[
    "stun.l.google.com:19302",
    "stun1.l.google.com:19302",
    "stun.cloudflare.com:3478",
    "global.stun.twilio.com:3478",
    "stun.nextcloud.com:443",
];

#[derive(Debug, Serialize)]
pub struct StunProbeReport {
    pub results: Vec<ProbeResult>,
    pub summary: Summary,
}

/// One server over one transport.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub server: String,
    pub address: Option<SocketAddr>,
    pub transport: Transport,
    pub local: Option<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    /// Average round-trip time of the answered requests.
    pub rtt_ms: Option<f64>,
    pub rtt_min_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    /// Binding transactions (one per `--count` round); `loss_pct` counts these.
    pub requests: u32,
    /// Datagrams sent for them, retransmissions included (RFC 8489 §6.2.1: a UDP request is
    /// sent again until answered, so "after 3 tries" is 1 request and 3 transmissions).
    pub transmissions: u32,
    pub responses: u32,
    /// null when no request could be sent (the name did not resolve, the socket failed).
    pub loss_pct: Option<f64>,
    /// TCP or TLS connection set-up time, handshake included.
    pub connect_ms: Option<f64>,
    pub other_address: Option<SocketAddr>,
    pub response_origin: Option<SocketAddr>,
    pub software: Option<String>,
    pub fingerprint_ok: Option<bool>,
    /// TLS only: whether the certificate checked out, and if not, why.
    pub certificate: Option<CertificateCheck>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertificateCheck {
    pub valid: bool,
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub probes: usize,
    pub answered: usize,
    pub failed: usize,
    /// A mapped address differs from the local one.
    pub behind_nat: Option<bool>,
    /// Over UDP from one socket, two servers at different IPs saw different mapped addresses.
    pub mapping_varies_by_destination: Option<bool>,
    /// UDP got no answer at all while TCP or TLS did.
    pub udp_blocked: Option<bool>,
    /// A mapped address is in 100.64.0.0/10 (carrier-grade NAT); null when nobody answered.
    pub cgnat: Option<bool>,
    /// A mapped address is private (RFC 1918, fc00::/7): a NAT behind another NAT; null when nobody answered.
    pub nested_nat: Option<bool>,
    /// Distinct public addresses seen.
    pub mapped_addresses: Vec<SocketAddr>,
    /// What the results mean, in sentences.
    pub notes: Vec<String>,
}

struct Target {
    spec: ServerSpec,
    transport: Transport,
    addr: Result<SocketAddr, String>,
}

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
    let lookups = pairs.iter().map(|(spec, t)| async move {
        match tokio::time::timeout_at(deadline, spec.resolve(*t, family)).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(Lookup::Failed(e)),
            Err(_) => Err(Lookup::TimedOut),
        }
    });
    let resolved = futures::future::join_all(lookups).await;
    let mut targets = Vec::new();
    for ((spec, t), addr) in pairs.into_iter().zip(resolved) {
        let addr = match addr {
            Ok(a) => Ok(a),
            // A name the user typed that does not exist is bad input (exit 2); a DNS server that
            // does not answer is an outage, reported per server like a server that does not answer.
            Err(Lookup::Failed(e)) if !builtin && !is_dns_outage(&e) => return Err(e.into()),
            Err(Lookup::Failed(e)) => Err(e.to_string()),
            Err(Lookup::TimedOut) => {
                Err(format!("no DNS answer within {:.1} s; check your network and DNS server", timeout.as_secs_f64()))
            }
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
    let udp_fut = probe_udp(&targets, local, args.count, interval, timeout);
    let stream_futs = targets.iter().enumerate().filter(|(_, t)| t.transport != Transport::Udp).map(|(i, t)| {
        let tls = tls.as_ref();
        let pb = &pb;
        async move {
            let r = probe_stream(t, local, args.count, interval, timeout, tls, args.insecure).await;
            pb.inc(1);
            (i, r)
        }
    });
    let (udp_results, stream_results) = tokio::join!(udp_fut, futures::future::join_all(stream_futs));
    pb.finish_and_clear();

    let mut results: Vec<Option<ProbeResult>> = vec![None; targets.len()];
    for (i, r) in udp_results.into_iter().chain(stream_results) {
        results[i] = Some(r);
    }
    let results: Vec<ProbeResult> = results.into_iter().flatten().collect();
    let summary = summarize(&results);
    Ok(StunProbeReport { results, summary })
}

/// Why a server name gave no address.
enum Lookup {
    Failed(UsageError),
    TimedOut,
}

/// getaddrinfo's EAI_AGAIN ("Temporary failure in name resolution"): the
/// resolver could not be reached, which says nothing about the name.
fn is_dns_outage(e: &UsageError) -> bool {
    e.0.contains("Temporary failure")
}

/// `--local IP` or `IP:PORT`, checked by binding it once: an address this
/// host does not have, or a port in use, is bad input found before any probe.
pub(crate) fn parse_local(s: &str) -> Result<SocketAddr, UsageError> {
    let addr = if let Ok(a) = s.parse::<SocketAddr>() {
        a
    } else if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        SocketAddr::new(ip, 0)
    } else {
        return Err(UsageError::new(format!(
            "bad --local '{s}': expected IP or IP:PORT (e.g. 0.0.0.0:5000 or [::1]:0)"
        )));
    };
    match std::net::UdpSocket::bind(addr) {
        Ok(_) => Ok(addr),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Err(UsageError::new(format!(
            "--local {}: not an address of this host; give one of its interface addresses (see `ip addr`) or 0.0.0.0",
            addr.ip()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(UsageError::new(format!(
            "--local {addr}: the port is in use; give another port or 0 to let the system pick"
        ))),
        Err(e) => Err(UsageError::new(format!("--local {addr}: cannot bind it: {e}"))),
    }
}

fn empty_result(t: &Target) -> ProbeResult {
    ProbeResult {
        server: t.spec.input.clone(),
        address: t.addr.as_ref().ok().copied(),
        transport: t.transport,
        local: None,
        mapped: None,
        rtt_ms: None,
        rtt_min_ms: None,
        rtt_max_ms: None,
        requests: 0,
        transmissions: 0,
        responses: 0,
        loss_pct: None,
        connect_ms: None,
        other_address: None,
        response_origin: None,
        software: None,
        fingerprint_ok: None,
        certificate: None,
        error: t.addr.as_ref().err().cloned(),
    }
}

/// Folds the answers of one target's rounds into its result.
struct Rounds {
    rtts: Vec<f64>,
    first_error: Option<String>,
    requests: u32,
    transmissions: u32,
}

impl Rounds {
    fn new() -> Self {
        Rounds { rtts: Vec::new(), first_error: None, requests: 0, transmissions: 0 }
    }

    fn answer(&mut self, r: &mut ProbeResult, bytes: &[u8], rtt: Duration) {
        match BindingResponse::parse(bytes) {
            Ok(resp) => {
                if let Some((code, reason)) = &resp.error {
                    self.fail(format!("error response {code} {reason} from {}", addr_of(r)));
                    return;
                }
                let Some(mapped) = resp.reflexive() else {
                    self.fail(format!("response from {} has no (XOR-)MAPPED-ADDRESS", addr_of(r)));
                    return;
                };
                self.rtts.push(rtt.as_secs_f64() * 1000.0);
                r.mapped = Some(mapped);
                r.other_address = resp.other_address.or(r.other_address);
                r.response_origin = resp.response_origin.or(r.response_origin);
                r.software = resp.software.or(r.software.take());
                r.fingerprint_ok = match (r.fingerprint_ok, resp.fingerprint_ok) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (a, b) => b.or(a),
                };
            }
            Err(e) => self.fail(format!("{e} from {}", addr_of(r))),
        }
    }

    fn fail(&mut self, e: String) {
        self.first_error.get_or_insert(e);
    }

    fn finish(self, r: &mut ProbeResult) {
        r.requests = self.requests;
        r.transmissions = self.transmissions;
        r.responses = self.rtts.len() as u32;
        if self.requests > 0 {
            r.loss_pct = Some(100.0 * (self.requests - r.responses) as f64 / self.requests as f64);
        }
        if !self.rtts.is_empty() {
            let n = self.rtts.len() as f64;
            r.rtt_ms = Some(round3(self.rtts.iter().sum::<f64>() / n));
            r.rtt_min_ms = self.rtts.iter().copied().reduce(f64::min).map(round3);
            r.rtt_max_ms = self.rtts.iter().copied().reduce(f64::max).map(round3);
        }
        if r.error.is_none() && r.responses == 0 {
            r.error = self.first_error;
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn addr_of(r: &ProbeResult) -> String {
    r.address.map(|a| a.to_string()).unwrap_or_else(|| r.server.clone())
}

async fn probe_udp(
    targets: &[Target],
    local: Option<SocketAddr>,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> Vec<(usize, ProbeResult)> {
    let mut out = Vec::new();
    let udp: Vec<(usize, &Target, SocketAddr)> = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.transport == Transport::Udp)
        .filter_map(|(i, t)| t.addr.as_ref().ok().map(|a| (i, t, *a)))
        .collect();
    for (i, t) in targets.iter().enumerate() {
        if t.transport == Transport::Udp && t.addr.is_err() {
            out.push((i, empty_result(t)));
        }
    }
    for v6 in [false, true] {
        let group: Vec<&(usize, &Target, SocketAddr)> = udp.iter().filter(|(_, _, a)| a.is_ipv6() == v6).collect();
        if group.is_empty() {
            continue;
        }
        let bind_addr = local.unwrap_or_else(|| if v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("literal"));
        let sock = match udp::bind(bind_addr) {
            Ok(s) => s,
            Err(e) => {
                for (i, t, _) in &group {
                    let mut r = empty_result(t);
                    r.error = Some(format!("cannot bind a UDP socket on {bind_addr}: {e}"));
                    out.push((*i, r));
                }
                continue;
            }
        };
        let bound = sock.local_addr().ok();
        let t0 = Instant::now();
        let mut txs = Vec::new();
        let mut owner = Vec::new();
        for round in 0..count {
            let start = t0 + interval * round;
            for (gi, (_, _, addr)) in group.iter().enumerate() {
                let id = new_transaction_id();
                let tx = ClientTransaction::new(
                    id,
                    binding_request(id),
                    Reliability::Unreliable(Retransmit::default()),
                    start,
                )
                .with_deadline(start + timeout);
                txs.push((*addr, tx));
                owner.push(gi);
            }
        }
        let (ends, strays) = udp::run_transactions(&sock, txs).await;
        let mut rounds: Vec<Rounds> = group.iter().map(|_| Rounds::new()).collect();
        let mut results: Vec<ProbeResult> = group.iter().map(|(_, t, _)| empty_result(t)).collect();
        for (gi, end) in owner.into_iter().zip(ends) {
            let r = &mut results[gi];
            let acc = &mut rounds[gi];
            acc.requests += 1;
            acc.transmissions += match &end {
                UdpEnd::Response {
                    outcome: Outcome::Response { sends, .. } | Outcome::TimedOut { sends, .. }, ..
                }
                | UdpEnd::TimedOut { sends, .. }
                | UdpEnd::Unreachable { sends, .. } => *sends,
                UdpEnd::SendFailed { .. } => 0,
            };
            match end {
                UdpEnd::Response { outcome: Outcome::Response { bytes, rtt, .. }, .. } => acc.answer(r, &bytes, rtt),
                UdpEnd::Response { .. } => {}
                UdpEnd::TimedOut { sends, elapsed } => {
                    let stray = r.address.and_then(|a| strays.get(&a)).and_then(|s| s.describe());
                    acc.fail(match stray {
                        Some(what) => format!(
                            "no valid response from {} over UDP after {sends} tries in {:.1} s: {what}",
                            addr_of(r),
                            elapsed.as_secs_f64()
                        ),
                        None => format!(
                            "no response from {} over UDP after {sends} tries in {:.1} s: UDP may be blocked on the way; try --transport tcp",
                            addr_of(r),
                            elapsed.as_secs_f64()
                        ),
                    })
                }
                UdpEnd::Unreachable { kind, .. } => {
                    acc.fail(format!("{kind} at {} over UDP: no STUN server listens there", addr_of(r)))
                }
                UdpEnd::SendFailed { error } => acc.fail(error),
            }
        }
        for ((gi, (i, _, addr)), acc) in group.iter().enumerate().zip(rounds) {
            let r = &mut results[gi];
            r.local = bound.map(|b| {
                if b.ip().is_unspecified() {
                    SocketAddr::new(udp::local_ip_towards(*addr).unwrap_or(b.ip()), b.port())
                } else {
                    b
                }
            });
            acc.finish(r);
            out.push((*i, r.clone()));
        }
    }
    out
}

async fn probe_stream(
    t: &Target,
    local: Option<SocketAddr>,
    count: u32,
    interval: Duration,
    timeout: Duration,
    tls: Option<&TlsClient>,
    insecure: bool,
) -> ProbeResult {
    let mut r = empty_result(t);
    let Ok(addr) = t.addr.clone() else { return r };
    let tls = if t.transport == Transport::Tls { tls } else { None };
    let started = Instant::now();
    let conn = stream::connect(addr, local, &t.spec.host, tls, timeout).await;
    if let Some(client) = tls {
        r.certificate = client.verdict().map(|v| match v {
            CertVerdict::Valid => CertificateCheck { valid: true, problem: None },
            CertVerdict::Invalid(why) => CertificateCheck {
                valid: false,
                problem: Some(if insecure { format!("{why}, accepted because of --insecure") } else { why }),
            },
        });
    }
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    r.connect_ms = Some(round3(started.elapsed().as_secs_f64() * 1000.0));
    r.local = Some(conn.local);
    let mut acc = Rounds::new();
    for round in 0..count {
        if round > 0 {
            tokio::time::sleep(interval).await;
        }
        acc.requests += 1;
        // Over TCP/TLS a request is sent once: the stream retransmits, not STUN.
        acc.transmissions += 1;
        let id = new_transaction_id();
        let now = Instant::now();
        let tx = ClientTransaction::new(id, binding_request(id), Reliability::Reliable { ti: timeout }, now);
        match stream::run_transaction(&mut conn, tx).await {
            StreamEnd::Response(Outcome::Response { bytes, rtt, .. }) => acc.answer(&mut r, &bytes, rtt),
            StreamEnd::Response(_) => {}
            StreamEnd::TimedOut { elapsed } => acc.fail(format!(
                "no response from {addr} over {} within {:.1} s",
                t.transport.name(),
                elapsed.as_secs_f64()
            )),
            StreamEnd::Broken(why) => {
                acc.fail(why);
                break;
            }
        }
    }
    acc.finish(&mut r);
    r
}

/// What the results mean together.
pub fn summarize(results: &[ProbeResult]) -> Summary {
    let answered: Vec<&ProbeResult> = results.iter().filter(|r| r.mapped.is_some()).collect();
    let failed = results.iter().filter(|r| r.mapped.is_none() || r.error.is_some()).count();
    let behind_nat = if answered.is_empty() {
        None
    } else {
        Some(answered.iter().any(|r| r.local.is_some_and(|l| Some(l) != r.mapped)))
    };

    // Same local socket, different server IPs: compare what each saw.
    let mut varies = None;
    for v6 in [false, true] {
        let udp: Vec<&&ProbeResult> = answered
            .iter()
            .filter(|r| r.transport == Transport::Udp && r.address.is_some_and(|a| a.is_ipv6() == v6))
            .collect();
        let mut dest_ips: Vec<IpAddr> = udp.iter().filter_map(|r| r.address.map(|a| a.ip())).collect();
        dest_ips.sort();
        dest_ips.dedup();
        if dest_ips.len() >= 2 {
            let first = udp[0].mapped;
            let v = udp.iter().any(|r| r.mapped != first);
            varies = Some(varies.unwrap_or(false) || v);
        }
    }

    let udp_probed = results.iter().any(|r| r.transport == Transport::Udp && r.address.is_some());
    let stream_ok = answered.iter().any(|r| r.transport != Transport::Udp);
    let udp_ok = answered.iter().any(|r| r.transport == Transport::Udp);
    let udp_blocked =
        (udp_probed && results.iter().any(|r| r.transport != Transport::Udp)).then_some(!udp_ok && stream_ok);

    let mut mapped_addresses: Vec<SocketAddr> = answered.iter().filter_map(|r| r.mapped).collect();
    mapped_addresses.sort();
    mapped_addresses.dedup();
    let class = |a: &SocketAddr| AddressClass::of_canonical(a.ip());
    let known = !mapped_addresses.is_empty();
    let cgnat = known.then(|| mapped_addresses.iter().any(|a| class(a) == AddressClass::Cgnat));
    let nested_nat =
        known.then(|| behind_nat == Some(true) && mapped_addresses.iter().any(|a| class(a) == AddressClass::Private));

    let mut notes = Vec::new();
    match behind_nat {
        None => notes.push("No server answered: nothing can be said about the path.".to_string()),
        Some(false) => notes.push("Not behind a NAT: servers see your local address and port.".to_string()),
        Some(true) => {
            notes.push("Behind a NAT: servers see a different address or port than your socket's.".to_string())
        }
    }
    match varies {
        Some(true) => notes.push(
            "The mapped address varies by destination: address-dependent (symmetric) mapping; direct connections will often need a relay (run `natkit nat-type`).".into(),
        ),
        Some(false) => notes.push("The mapped address is the same for every destination: endpoint-independent mapping, good for hole punching.".into()),
        None => {}
    }
    if udp_blocked == Some(true) {
        notes.push(
            "UDP got no answer while TCP/TLS did: UDP looks blocked; WebRTC will need TURN over TCP or TLS.".into(),
        );
    }
    if cgnat == Some(true) {
        notes.push("The mapped address is in 100.64.0.0/10: your ISP runs carrier-grade NAT, so the servers see your ISP's NAT, not your router.".into());
    }
    if nested_nat == Some(true) {
        notes.push(
            "The mapped address is private: these servers sit behind the same NAT, or your NAT is behind another one."
                .into(),
        );
    }
    if failed > 0 {
        notes.push(format!("{failed} of {} probes failed; each one's error is given with it.", results.len()));
    }

    Summary {
        probes: results.len(),
        answered: answered.len(),
        failed,
        behind_nat,
        mapping_varies_by_destination: varies,
        udp_blocked,
        cgnat,
        nested_nat,
        mapped_addresses,
        notes,
    }
}

impl Render for StunProbeReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let wide = output::layout() == output::Layout::Wide;
        let mut t = if wide {
            output::Grid::new(&[
                "server",
                "transport",
                "mapped",
                "rtt",
                "local",
                "other / origin",
                "software",
                "status",
            ])
        } else {
            output::Grid::new(&["server", "transport", "mapped", "rtt", "status"])
        };
        // An error that several probes share (DNS down, no route) is said once under the table.
        let mut shared_errors: Vec<(&str, usize)> = Vec::new();
        for e in self.results.iter().filter_map(|r| r.error.as_deref()) {
            match shared_errors.iter_mut().find(|(s, _)| *s == e) {
                Some((_, n)) => *n += 1,
                None => shared_errors.push((e, 1)),
            }
        }
        shared_errors.retain(|(_, n)| *n > 1);
        for r in &self.results {
            let rtt = match (r.rtt_ms, r.requests) {
                (Some(avg), _) if !wide && r.loss_pct.unwrap_or(0.0) > 0.0 => {
                    format!("{} ({:.0}% loss)", output::ms(avg), r.loss_pct.unwrap_or(0.0))
                }
                (Some(avg), _) if !wide => output::ms(avg),
                (Some(avg), n) if n > 1 => format!(
                    "{} (min {} max {}, {:.0}% loss)",
                    output::ms(avg),
                    output::ms(r.rtt_min_ms.unwrap_or(avg)),
                    output::ms(r.rtt_max_ms.unwrap_or(avg)),
                    r.loss_pct.unwrap_or(0.0)
                ),
                (Some(avg), _) => output::ms(avg),
                (None, _) => "-".into(),
            };
            let other = match (r.other_address, r.response_origin) {
                (None, None) => "-".to_string(),
                (o, g) => format!("{} / {}", output::cell(&o), output::cell(&g)),
            };
            let mut status = match &r.error {
                None => "ok".to_string(),
                Some(e) => match shared_errors.iter().position(|(s, _)| s == e) {
                    Some(k) => format!("failed [{}]", k + 1),
                    None => e.clone(),
                },
            };
            if r.fingerprint_ok == Some(false) {
                status.push_str(" (bad FINGERPRINT)");
            }
            if let Some(CertificateCheck { valid: false, problem: Some(p) }) = &r.certificate {
                status.push_str(&format!("; certificate {p}"));
            }
            let server = match r.address {
                Some(a) if !r.server.contains(&a.to_string()) => format!("{}\n{a}", r.server),
                _ => r.server.clone(),
            };
            if wide {
                t.row(vec![
                    server,
                    r.transport.to_string(),
                    output::cell(&r.mapped),
                    rtt,
                    output::cell(&r.local),
                    other,
                    r.software.clone().unwrap_or_else(|| "-".into()),
                    status,
                ]);
            } else {
                t.row(vec![server, r.transport.to_string(), output::cell(&r.mapped), rtt, status]);
            }
        }
        writeln!(out, "{t}")?;
        for (k, (e, n)) in shared_errors.iter().enumerate() {
            writeln!(out, "[{}] {n} probes: {e}", k + 1)?;
        }
        for n in &self.summary.notes {
            writeln!(out, "{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(transport: Transport, server: &str, local: &str, mapped: Option<&str>) -> ProbeResult {
        let t = Target {
            spec: ServerSpec::parse(server).expect("spec"),
            transport,
            addr: Ok(server.parse().expect("addr")),
        };
        let mut r = empty_result(&t);
        r.local = Some(local.parse().expect("local"));
        r.mapped = mapped.map(|m| m.parse().expect("mapped"));
        if r.mapped.is_none() {
            r.error = Some("no response".into());
        }
        r
    }

    #[test]
    fn same_mapping_everywhere_is_endpoint_independent() {
        let rs = vec![
            result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", Some("203.0.113.9:5000")),
            result(Transport::Udp, "198.51.100.2:3478", "10.0.0.2:5000", Some("203.0.113.9:5000")),
        ];
        let s = summarize(&rs);
        assert_eq!(s.behind_nat, Some(true));
        assert_eq!(s.mapping_varies_by_destination, Some(false));
        assert_eq!(s.failed, 0);
    }

    #[test]
    fn mapping_that_changes_with_destination_is_flagged() {
        let rs = vec![
            result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", Some("203.0.113.9:40001")),
            result(Transport::Udp, "198.51.100.2:3478", "10.0.0.2:5000", Some("203.0.113.9:40002")),
        ];
        assert_eq!(summarize(&rs).mapping_varies_by_destination, Some(true));
    }

    #[test]
    fn udp_silent_while_tcp_answers_means_udp_blocked() {
        let rs = vec![
            result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", None),
            result(Transport::Tcp, "198.51.100.1:3478", "10.0.0.2:41000", Some("203.0.113.9:41000")),
        ];
        let s = summarize(&rs);
        assert_eq!(s.udp_blocked, Some(true));
        assert_eq!(s.failed, 1);
    }

    #[test]
    fn cgnat_and_nested_nat_are_detected() {
        let rs = vec![result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", Some("100.64.3.4:6000"))];
        assert_eq!(summarize(&rs).cgnat, Some(true));
        let rs = vec![result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", Some("192.168.1.4:6000"))];
        assert_eq!(summarize(&rs).nested_nat, Some(true));
    }

    #[test]
    fn nothing_answered_is_unknown_not_false() {
        let rs = vec![result(Transport::Udp, "198.51.100.1:3478", "10.0.0.2:5000", None)];
        let s = summarize(&rs);
        assert_eq!((s.cgnat, s.nested_nat, s.behind_nat), (None, None, None));
    }

    #[test]
    fn loopback_is_not_behind_nat() {
        let rs = vec![result(Transport::Udp, "127.0.0.1:3478", "127.0.0.1:5000", Some("127.0.0.1:5000"))];
        assert_eq!(summarize(&rs).behind_nat, Some(false));
    }
}
