//! The STUN Binding probes of `natkit stun-probe` (RFC 8489): many servers at once over UDP,
//! TCP and TLS, `--count` rounds each, folded into one [`ProbeResult`] per server and transport.
//!
//! Every UDP probe of one address family shares one socket, so each server sees the same local
//! port and a mapped address that changes with the destination is a real hint of
//! address-dependent (symmetric) mapping. The transactions are the sans-IO
//! [`ClientTransaction`]; the UDP and stream drivers in `net/` move their bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::net::server_spec::ServerSpec;
use crate::net::stream::{self, StreamEnd};
use crate::net::tls::{CertVerdict, TlsClient};
use crate::net::transport::Transport;
use crate::net::udp::{self, UdpEnd};
use crate::stun::message::{BindingResponse, binding_request, new_transaction_id};
use crate::stun::transaction::{ClientTransaction, Outcome, Reliability, Retransmit};

/// One server over one transport, resolved (or why not), before any probe.
pub struct Target {
    pub spec: ServerSpec,
    pub transport: Transport,
    pub addr: Result<SocketAddr, String>,
}

/// How each target is probed.
pub struct Rounds {
    /// Binding transactions per target (`--count`).
    pub count: u32,
    /// Between the starts of two rounds (`--interval`).
    pub interval: Duration,
    /// How long one transaction may take (`--timeout`).
    pub timeout: Duration,
    /// The local address to bind (`--local`).
    pub local: Option<SocketAddr>,
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

impl ProbeResult {
    /// The result of a target before anything was sent (its resolution error, if any).
    pub fn empty(t: &Target) -> ProbeResult {
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
}

/// Probes every target: the UDP ones of each family on one socket, each TCP/TLS one on its own
/// connection, all at once; `done` is called as each stream target ends (a progress bar).
/// Results come back in the order of `targets`.
pub async fn probe_all(
    targets: &[Target],
    rounds: &Rounds,
    tls: Option<&TlsClient>,
    insecure: bool,
    done: &(dyn Fn() + Sync),
) -> Vec<ProbeResult> {
    let udp_fut = probe_udp(targets, rounds);
    let stream_futs =
        targets.iter().enumerate().filter(|(_, t)| t.transport != Transport::Udp).map(|(i, t)| async move {
            let r = probe_stream(t, rounds, tls, insecure).await;
            done();
            (i, r)
        });
    let (udp_results, stream_results) = tokio::join!(udp_fut, futures::future::join_all(stream_futs));
    let mut results: Vec<Option<ProbeResult>> = vec![None; targets.len()];
    for (i, r) in udp_results.into_iter().chain(stream_results) {
        results[i] = Some(r);
    }
    results.into_iter().flatten().collect()
}

/// Folds the answers of one target's rounds into its result.
struct Tally {
    rtts: Vec<f64>,
    first_error: Option<String>,
    requests: u32,
    transmissions: u32,
}

impl Tally {
    fn new() -> Self {
        Tally { rtts: Vec::new(), first_error: None, requests: 0, transmissions: 0 }
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

async fn probe_udp(targets: &[Target], rounds: &Rounds) -> Vec<(usize, ProbeResult)> {
    let Rounds { count, interval, timeout, local } = *rounds;
    let mut out = Vec::new();
    let udp: Vec<(usize, &Target, SocketAddr)> = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.transport == Transport::Udp)
        .filter_map(|(i, t)| t.addr.as_ref().ok().map(|a| (i, t, *a)))
        .collect();
    for (i, t) in targets.iter().enumerate() {
        if t.transport == Transport::Udp && t.addr.is_err() {
            out.push((i, ProbeResult::empty(t)));
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
                    let mut r = ProbeResult::empty(t);
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
        let mut tallies: Vec<Tally> = group.iter().map(|_| Tally::new()).collect();
        let mut results: Vec<ProbeResult> = group.iter().map(|(_, t, _)| ProbeResult::empty(t)).collect();
        for (gi, end) in owner.into_iter().zip(ends) {
            let r = &mut results[gi];
            let acc = &mut tallies[gi];
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
        for ((gi, (i, _, addr)), acc) in group.iter().enumerate().zip(tallies) {
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

async fn probe_stream(t: &Target, rounds: &Rounds, tls: Option<&TlsClient>, insecure: bool) -> ProbeResult {
    let Rounds { count, interval, timeout, local } = *rounds;
    let mut r = ProbeResult::empty(t);
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
    let mut acc = Tally::new();
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
