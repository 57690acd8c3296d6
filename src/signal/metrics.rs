//! Counters of the signaling server, rendered as Prometheus text
//! (exposition format 0.0.4) for `--metrics ADDR`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::net::conn_limit::ConnRefusal;
use crate::signal::protocol::{ErrorCode, MessageKind};

const CODES: [ErrorCode; 11] = [
    ErrorCode::BadJson,
    ErrorCode::UnknownType,
    ErrorCode::BadMessage,
    ErrorCode::NotJoined,
    ErrorCode::AlreadyJoined,
    ErrorCode::NotInRoom,
    ErrorCode::RoomFull,
    ErrorCode::FrameTooLarge,
    ErrorCode::RateLimited,
    ErrorCode::TooManyConnections,
    ErrorCode::Internal,
];

/// Which front door a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    SocketIo,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_open: [AtomicI64; 2],
    pub connections_total: [AtomicU64; 2],
    pub rooms: AtomicI64,
    pub closed_for_abuse: AtomicU64,
    pub dropped_dead: AtomicU64,
    pub dropped_slow: AtomicU64,
    /// Times accepting paused because file descriptors ran out (EMFILE/ENFILE).
    pub accept_paused: AtomicU64,
    /// Connections refused at accept.
    refused_at_accept: CapRefusals,
    /// socket.io sessions refused at their handshake.
    sessions_refused: CapRefusals,
    /// Requests refused with 403 for their `Origin`.
    pub origin_refused: AtomicU64,
    /// STUN Binding requests answered on the UDP port (`signal::stun_udp`), and datagrams dropped there.
    pub stun_answered: AtomicU64,
    pub stun_dropped: AtomicU64,
    received: [AtomicU64; MessageKind::ALL.len()],
    sent: [AtomicU64; MessageKind::ALL.len()],
    errors: [AtomicU64; CODES.len()],
}

/// Refusals by the cap that refused them (`--max-conns`, `--max-conns-per-ip`): one
/// Prometheus counter family with a `reason` label.
#[derive(Debug, Default)]
struct CapRefusals {
    total: AtomicU64,
    per_ip: AtomicU64,
}

impl CapRefusals {
    fn counter(&self, why: ConnRefusal) -> &AtomicU64 {
        match why {
            ConnRefusal::Total => &self.total,
            ConnRefusal::PerIp => &self.per_ip,
        }
    }

    /// Counts one refusal of `what` (connections, socket.io sessions); the first per cap is
    /// logged, naming the `family` that counts the rest.
    fn count(&self, why: ConnRefusal, what: &str, family: &str) {
        if self.counter(why).fetch_add(1, Relaxed) == 0 {
            let flag = match why {
                ConnRefusal::Total => "--max-conns",
                ConnRefusal::PerIp => "--max-conns-per-ip",
            };
            tracing::warn!(
                "refusing {what} over {flag} (first one now; all are counted in {family}{{reason=\"{}\"}})",
                why.as_str()
            );
        }
    }

    fn render(&self, s: &mut String, family: &str, help: &str) {
        let _ = writeln!(s, "# HELP {family} {help}");
        let _ = writeln!(s, "# TYPE {family} counter");
        for why in [ConnRefusal::Total, ConnRefusal::PerIp] {
            let _ = writeln!(s, "{family}{{reason=\"{}\"}} {}", why.as_str(), self.counter(why).load(Relaxed));
        }
    }
}

const REFUSED_AT_ACCEPT: &str = "natkit_signal_connections_refused_total";
const SESSIONS_REFUSED: &str = "natkit_signal_socketio_sessions_refused_total";

fn kind_index(k: MessageKind) -> usize {
    MessageKind::ALL.iter().position(|x| *x == k).unwrap_or(0)
}

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::WebSocket => 0,
        Transport::SocketIo => 1,
    }
}

impl Metrics {
    pub fn opened(&self, t: Transport) {
        self.connections_open[transport_index(t)].fetch_add(1, Relaxed);
        self.connections_total[transport_index(t)].fetch_add(1, Relaxed);
    }

    pub fn closed(&self, t: Transport) {
        self.connections_open[transport_index(t)].fetch_sub(1, Relaxed);
    }

    /// Counts a connection refused at accept; the first one is logged (the metric counts the rest).
    pub fn refused_at_accept(&self, why: ConnRefusal) {
        self.refused_at_accept.count(why, "connections", REFUSED_AT_ACCEPT);
    }

    /// Counts a socket.io session refused at its handshake; the first one is logged.
    pub fn session_refused(&self, why: ConnRefusal) {
        self.sessions_refused.count(why, "socket.io sessions", SESSIONS_REFUSED);
    }

    pub fn received(&self, k: MessageKind) {
        self.received[kind_index(k)].fetch_add(1, Relaxed);
    }

    pub fn sent(&self, k: MessageKind) {
        self.sent[kind_index(k)].fetch_add(1, Relaxed);
    }

    pub fn error(&self, c: ErrorCode) {
        if let Some(i) = CODES.iter().position(|x| *x == c) {
            self.errors[i].fetch_add(1, Relaxed);
        }
        self.sent(MessageKind::Error);
    }

    pub fn sent_total(&self, k: MessageKind) -> u64 {
        self.sent[kind_index(k)].load(Relaxed)
    }

    pub fn received_total(&self, k: MessageKind) -> u64 {
        self.received[kind_index(k)].load(Relaxed)
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.iter().map(|e| e.load(Relaxed)).sum()
    }

    pub fn connections_total(&self) -> u64 {
        self.connections_total.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.render_with_open(None)
    }

    /// Prometheus text, with the TCP connections holding a slot now when known.
    pub fn render_with_open(&self, open_tcp: impl Into<Option<usize>>) -> String {
        let mut s = String::new();
        if let Some(open) = open_tcp.into() {
            let _ = writeln!(
                s,
                "# HELP natkit_signal_tcp_connections TCP connections holding a slot (HTTP, WebSocket, socket.io)."
            );
            let _ = writeln!(s, "# TYPE natkit_signal_tcp_connections gauge");
            let _ = writeln!(s, "natkit_signal_tcp_connections {open}");
        }
        self.refused_at_accept.render(&mut s, REFUSED_AT_ACCEPT, "Connections refused at accept, by cap.");
        self.sessions_refused.render(
            &mut s,
            SESSIONS_REFUSED,
            "socket.io sessions refused at their handshake, by cap.",
        );
        let _ =
            writeln!(s, "# HELP natkit_signal_accept_paused_total Pauses of accept because file descriptors ran out.");
        let _ = writeln!(s, "# TYPE natkit_signal_accept_paused_total counter");
        let _ = writeln!(s, "natkit_signal_accept_paused_total {}", self.accept_paused.load(Relaxed));
        let _ = writeln!(s, "# HELP natkit_signal_origin_refused_total Requests refused with 403 for their Origin.");
        let _ = writeln!(s, "# TYPE natkit_signal_origin_refused_total counter");
        let _ = writeln!(s, "natkit_signal_origin_refused_total {}", self.origin_refused.load(Relaxed));
        let _ = writeln!(s, "# HELP natkit_signal_stun_answered_total STUN Binding requests answered on the UDP port.");
        let _ = writeln!(s, "# TYPE natkit_signal_stun_answered_total counter");
        let _ = writeln!(s, "natkit_signal_stun_answered_total {}", self.stun_answered.load(Relaxed));
        let _ = writeln!(
            s,
            "# HELP natkit_signal_stun_dropped_total Datagrams on the UDP port that were not a Binding request."
        );
        let _ = writeln!(s, "# TYPE natkit_signal_stun_dropped_total counter");
        let _ = writeln!(s, "natkit_signal_stun_dropped_total {}", self.stun_dropped.load(Relaxed));
        let transports = [("websocket", 0), ("socketio", 1)];
        let _ = writeln!(s, "# HELP natkit_signal_connections Open client connections.");
        let _ = writeln!(s, "# TYPE natkit_signal_connections gauge");
        for (name, i) in transports {
            let _ = writeln!(
                s,
                "natkit_signal_connections{{transport=\"{name}\"}} {}",
                self.connections_open[i].load(Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP natkit_signal_connections_total Client connections accepted.");
        let _ = writeln!(s, "# TYPE natkit_signal_connections_total counter");
        for (name, i) in transports {
            let _ = writeln!(
                s,
                "natkit_signal_connections_total{{transport=\"{name}\"}} {}",
                self.connections_total[i].load(Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP natkit_signal_rooms Rooms with at least one member on this node.");
        let _ = writeln!(s, "# TYPE natkit_signal_rooms gauge");
        let _ = writeln!(s, "natkit_signal_rooms {}", self.rooms.load(Relaxed));
        for (name, help, arr) in [
            ("natkit_signal_messages_received_total", "Messages received from clients, by type.", &self.received),
            ("natkit_signal_messages_sent_total", "Messages sent to clients, by type.", &self.sent),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            for (k, v) in MessageKind::ALL.iter().zip(arr.iter()) {
                let _ = writeln!(s, "{name}{{type=\"{}\"}} {}", k.as_str(), v.load(Relaxed));
            }
        }
        let _ = writeln!(s, "# HELP natkit_signal_errors_total Messages refused, by error code.");
        let _ = writeln!(s, "# TYPE natkit_signal_errors_total counter");
        for (c, v) in CODES.iter().zip(self.errors.iter()) {
            let _ = writeln!(s, "natkit_signal_errors_total{{code=\"{}\"}} {}", c.as_str(), v.load(Relaxed));
        }
        let _ = writeln!(s, "# HELP natkit_signal_connections_dropped_total Connections the server closed, by reason.");
        let _ = writeln!(s, "# TYPE natkit_signal_connections_dropped_total counter");
        for (reason, v) in
            [("abuse", &self.closed_for_abuse), ("dead", &self.dropped_dead), ("slow_consumer", &self.dropped_slow)]
        {
            let _ = writeln!(s, "natkit_signal_connections_dropped_total{{reason=\"{reason}\"}} {}", v.load(Relaxed));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        m.opened(Transport::WebSocket);
        m.received(MessageKind::Offer);
        m.error(ErrorCode::NotInRoom);
        let text = m.render();
        assert!(text.contains("natkit_signal_connections{transport=\"websocket\"} 1\n"));
        assert!(text.contains("natkit_signal_messages_received_total{type=\"offer\"} 1\n"));
        assert!(text.contains("natkit_signal_errors_total{code=\"not_in_room\"} 1\n"));
        assert!(text.contains("natkit_signal_messages_sent_total{type=\"error\"} 1\n"));
        assert_eq!(m.errors_total(), 1);
    }
}
