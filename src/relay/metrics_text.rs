//! The relay's counters as Prometheus text (exposition format 0.0.4), served
//! by `--metrics ADDR`. Names are documented in README and are a contract.

use std::fmt::Write;

use crate::turn::server::auth::AuthFailure;
use crate::turn::server::peer_policy::Refusal;
use crate::turn::server::throttle::Offender;
use crate::turn::server::userdb::UserDbStats;
use crate::turn::server::{ErrorCode, Server};

/// Counters the driver keeps (connections, send errors).
#[derive(Debug, Clone, Copy, Default)]
pub struct DriverSnapshot {
    pub tcp_connections: u64,
    pub tls_handshake_failures: u64,
    pub send_errors: u64,
    /// TCP and TLS connections open now.
    pub open_tcp: u64,
    pub open_tls: u64,
    /// Connections refused at accept by the total and the per-IP cap.
    pub refused_total: u64,
    pub refused_per_ip: u64,
    /// Connections the relay closed itself, by reason label.
    pub closed: [(&'static str, u64); 3],
    /// Pauses of accept on running out of file descriptors.
    pub accept_paused: u64,
    /// Relayed messages, and their bytes, dropped for a TCP/TLS client whose queue was full.
    pub stream_queue_dropped: u64,
    pub stream_queue_dropped_bytes: u64,
    /// TCP relaying (RFC 6062).
    pub tcp: crate::net::relay_tcp::TcpSnapshot,
    /// What the UDP workers' system calls carried.
    pub udp: UdpIoSnapshot,
}

/// Upper bounds of the datagrams-per-round histogram's buckets (+Inf after).
pub const ROUND_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// The UDP workers' batching: how many datagrams a wake-up (a round) finds
/// and how many each recvmmsg/sendmmsg call carries. On a quiet relay every
/// datagram costs a wake-up and two system calls; these show how far from
/// that a busy one is (and whether a change to batching did anything).
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpIoSnapshot {
    /// Rounds (wake-ups that found datagrams) by datagrams received, per
    /// bucket of [`ROUND_BUCKETS`] and a last one for more; not cumulative.
    pub rounds: [u64; ROUND_BUCKETS.len() + 1],
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub recvmmsg_calls: u64,
    pub sendmmsg_calls: u64,
    /// Reads that held several datagrams of one sender (UDP GRO).
    pub gro_reads: u64,
    /// Sends that carried several datagrams to one destination (UDP GSO).
    pub gso_sends: u64,
    /// GSO sends the kernel refused; their datagrams went out one by one.
    pub gso_refused: u64,
}

pub(crate) fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP natkit_relay_{name} {help}");
    let _ = writeln!(out, "# TYPE natkit_relay_{name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "natkit_relay_{name} {v}");
        } else {
            let _ = writeln!(out, "natkit_relay_{name}{{{labels}}} {v}");
        }
    }
}

pub fn render(core: &Server, driver: &DriverSnapshot) -> String {
    let s = core.stats();
    let mut o = String::with_capacity(4096);
    let by_transport: Vec<(String, u64)> =
        core.allocations_by_transport().iter().map(|(t, n)| (format!("transport=\"{t}\""), *n as u64)).collect();
    let by_transport: Vec<(&str, u64)> = by_transport.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(&mut o, "allocations", "gauge", "Allocations alive now, by the client's transport.", &by_transport);
    metric(
        &mut o,
        "draining",
        "gauge",
        "1 while the relay drains (SIGTERM): no new allocations, existing ones go on.",
        &[("", core.draining() as u64)],
    );
    metric(&mut o, "permissions", "gauge", "Permissions alive now.", &[("", core.permissions() as u64)]);
    metric(&mut o, "channels", "gauge", "Channel bindings alive now.", &[("", core.channels() as u64)]);
    metric(&mut o, "allocations_created_total", "counter", "Allocations created.", &[("", s.allocations_created)]);
    metric(
        &mut o,
        "allocations_ended_total",
        "counter",
        "Allocations ended, by why.",
        &[("reason=\"deleted\"", s.allocations_deleted), ("reason=\"expired\"", s.allocations_expired)],
    );
    metric(&mut o, "requests_total", "counter", "STUN/TURN requests received.", &[("", s.requests)]);
    metric(&mut o, "binding_requests_total", "counter", "STUN Binding requests answered.", &[("", s.binding_requests)]);
    metric(
        &mut o,
        "binding_response_port_total",
        "counter",
        "Binding answers sent to the port a RESPONSE-PORT named (RFC 5780 7.5).",
        &[("", s.binding_response_port)],
    );
    metric(
        &mut o,
        "packets_relayed_total",
        "counter",
        "Data packets relayed, by direction.",
        &[
            ("direction=\"to_peer\"", s.packets_to_peers),
            ("direction=\"from_peer\"", s.packets_from_peers),
            ("direction=\"internal\"", s.packets_internal),
        ],
    );
    metric(
        &mut o,
        "bytes_relayed_total",
        "counter",
        "Payload bytes relayed, by direction.",
        &[
            ("direction=\"to_peer\"", s.bytes_to_peers),
            ("direction=\"from_peer\"", s.bytes_from_peers),
            ("direction=\"internal\"", s.bytes_internal),
        ],
    );
    let refusals: Vec<(String, u64)> =
        Refusal::ALL.iter().map(|r| (format!("reason=\"{}\"", r.label()), s.refusals[r.index()])).collect();
    let refusals: Vec<(&str, u64)> = refusals.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(&mut o, "peer_refusals_total", "counter", "Peers refused by the safety policy (403), by reason.", &refusals);
    let auth: Vec<(String, u64)> =
        AuthFailure::ALL.iter().map(|a| (format!("reason=\"{}\"", a.label()), s.auth_failures[a.index()])).collect();
    let auth: Vec<(&str, u64)> = auth.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(&mut o, "auth_failures_total", "counter", "Failed credentials, by reason.", &auth);
    metric(
        &mut o,
        "auth_rate_limited_total",
        "counter",
        "401 answers withheld by the per-source limit.",
        &[("", s.rate_limited)],
    );
    let throttled: Vec<(String, u64)> =
        Offender::ALL.iter().map(|k| (format!("key=\"{}\"", k.label()), s.auth_throttled[k.index()])).collect();
    let throttled: Vec<(&str, u64)> = throttled.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        &mut o,
        "auth_throttled_total",
        "counter",
        "Requests refused without an integrity check by the password-guessing throttle, by the key that was locked.",
        &throttled,
    );
    metric(
        &mut o,
        "unauth_rate_limited_total",
        "counter",
        "Unauthenticated answers over UDP withheld by the per-source byte budget (amplification limit).",
        &[("", s.unauth_rate_limited)],
    );
    metric(
        &mut o,
        "source_quota_refusals_total",
        "counter",
        "Allocate refused with 486 because the client's address reached --source-quota.",
        &[("", s.source_quota_reached)],
    );
    metric(&mut o, "stale_nonces_total", "counter", "438 Stale Nonce answers.", &[("", s.stale_nonces)]);
    let errors: Vec<(String, u64)> =
        ErrorCode::ALL.iter().map(|e| (format!("code=\"{}\"", e.code()), s.errors_sent[e.index()])).collect();
    let errors: Vec<(&str, u64)> = errors.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(&mut o, "error_responses_total", "counter", "Error responses sent, by code.", &errors);
    metric(
        &mut o,
        "dropped_total",
        "counter",
        "Packets dropped, by reason.",
        &[
            ("reason=\"malformed\"", s.dropped_malformed),
            ("reason=\"bad_fingerprint\"", s.dropped_bad_fingerprint),
            ("reason=\"unexpected\"", s.dropped_unexpected),
            ("reason=\"no_allocation\"", s.dropped_no_allocation),
            ("reason=\"no_permission\"", s.dropped_no_permission),
            ("reason=\"no_channel\"", s.dropped_no_channel),
            ("reason=\"tcp_allocation\"", s.dropped_tcp_allocation),
        ],
    );
    metric(
        &mut o,
        "tcp_connections_total",
        "counter",
        "TCP and TLS connections accepted.",
        &[("", driver.tcp_connections)],
    );
    metric(
        &mut o,
        "tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed.",
        &[("", driver.tls_handshake_failures)],
    );
    metric(&mut o, "send_errors_total", "counter", "Sends the kernel refused.", &[("", driver.send_errors)]);
    metric(
        &mut o,
        "connections",
        "gauge",
        "TCP and TLS connections open now.",
        &[("transport=\"tcp\"", driver.open_tcp), ("transport=\"tls\"", driver.open_tls)],
    );
    metric(
        &mut o,
        "connections_refused_total",
        "counter",
        "TCP and TLS connections refused at accept, by the cap that refused them.",
        &[("reason=\"total\"", driver.refused_total), ("reason=\"per_ip\"", driver.refused_per_ip)],
    );
    let closed: Vec<(String, u64)> = driver.closed.iter().map(|(l, v)| (format!("reason=\"{l}\""), *v)).collect();
    let closed: Vec<(&str, u64)> = closed.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        &mut o,
        "connections_closed_total",
        "counter",
        "TCP and TLS connections closed by a timeout, by which.",
        &closed,
    );
    metric(
        &mut o,
        "accept_paused_total",
        "counter",
        "Pauses of accept because the process ran out of file descriptors (EMFILE/ENFILE).",
        &[("", driver.accept_paused)],
    );
    metric(
        &mut o,
        "stream_queue_dropped_total",
        "counter",
        "Relayed messages dropped because a TCP or TLS client's queue was full (it does not read; --stream-queue-bytes).",
        &[("", driver.stream_queue_dropped)],
    );
    metric(
        &mut o,
        "stream_queue_dropped_bytes_total",
        "counter",
        "Bytes of the relayed messages dropped for a full TCP or TLS client queue.",
        &[("", driver.stream_queue_dropped_bytes)],
    );
    if let Some(u) = core.userdb_stats() {
        userdb(&mut o, u, core.userdb_pending());
    }
    render_udp_io(&mut o, &driver.udp);
    crate::net::relay_tcp::render_metrics(core, &driver.tcp, &mut o);
    o
}

/// The shared user database (`--userdb`); absent without one.
fn userdb(o: &mut String, u: &UserDbStats, pending: usize) {
    metric(o, "userdb_lookups_total", "counter", "Lookups sent to the user database.", &[("", u.lookups)]);
    metric(
        o,
        "userdb_cache_hits_total",
        "counter",
        "Credential checks answered from the user cache.",
        &[("", u.cache_hits)],
    );
    metric(
        o,
        "userdb_cache_misses_total",
        "counter",
        "Credential checks the user cache could not answer.",
        &[("", u.cache_misses)],
    );
    metric(
        o,
        "userdb_errors_total",
        "counter",
        "Lookups that failed: the user database was down, slow or refused.",
        &[("", u.errors)],
    );
    metric(
        o,
        "userdb_unavailable_total",
        "counter",
        "Requests answered 500 because the user database could not be asked.",
        &[("", u.unavailable_answers)],
    );
    metric(
        o,
        "userdb_pending_dropped_total",
        "counter",
        "Requests dropped while waiting for a lookup (too many waiting, in total or from one address, or too long).",
        &[("", u.pending_dropped)],
    );
    metric(
        o,
        "userdb_pending_dropped_per_ip_total",
        "counter",
        "Of those, dropped because their source address had --userdb-max-pending-per-ip requests waiting already.",
        &[("", u.pending_dropped_per_source)],
    );
    metric(o, "userdb_pending", "gauge", "Requests waiting for a user database lookup now.", &[("", pending as u64)]);
}

/// The UDP batching metrics alone (for the driver's tests).
#[cfg(test)]
pub(crate) fn render_udp_io_for_test(u: &UdpIoSnapshot) -> String {
    let mut o = String::new();
    render_udp_io(&mut o, u);
    o
}

fn render_udp_io(o: &mut String, u: &UdpIoSnapshot) {
    let name = "natkit_relay_udp_round_datagrams";
    let _ = writeln!(o, "# HELP {name} Datagrams received per UDP worker round (one wake-up), as a histogram.");
    let _ = writeln!(o, "# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, le) in ROUND_BUCKETS.iter().enumerate() {
        cumulative += u.rounds[i];
        let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += u.rounds[ROUND_BUCKETS.len()];
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(o, "{name}_sum {}", u.datagrams_in);
    let _ = writeln!(o, "{name}_count {cumulative}");
    metric(
        o,
        "udp_datagrams_total",
        "counter",
        "UDP datagrams through the workers' batched calls, by direction (in: recvmmsg, out: sendmmsg).",
        &[("direction=\"in\"", u.datagrams_in), ("direction=\"out\"", u.datagrams_out)],
    );
    metric(
        o,
        "udp_syscalls_total",
        "counter",
        "recvmmsg and sendmmsg calls of the UDP workers.",
        &[("call=\"recvmmsg\"", u.recvmmsg_calls), ("call=\"sendmmsg\"", u.sendmmsg_calls)],
    );
    metric(
        o,
        "udp_offload_total",
        "counter",
        "UDP messages that carried several datagrams, by operation (gro_read: a read split after UDP GRO, gso_send: a UDP GSO send).",
        &[("op=\"gro_read\"", u.gro_reads), ("op=\"gso_send\"", u.gso_sends)],
    );
    metric(
        o,
        "udp_gso_refused_total",
        "counter",
        "UDP GSO sends the kernel refused (EIO: no checksum offload; EINVAL/EMSGSIZE: a segment over the path MTU), sent again one datagram at a time.",
        &[("", u.gso_refused)],
    );
}
