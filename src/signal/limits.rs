//! Per-connection and per-address limits of the signaling server, as a
//! sans-IO core with `now` passed in: frame size, messages per second
//! (token bucket), and "strikes": a client that keeps getting refused is
//! disconnected instead of being answered forever. The connection caps and
//! timeouts in [`Limits`] are applied at accept by the server's driver
//! (`net::conn_limit`, `signal::conn_io`).

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::net::conn_limit::ConnRefusal;
use crate::signal::protocol::{ClientMessage, ErrorCode, Refusal, parse_client};

/// Limits with their defaults (flags of `natkit signal`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Members per room (`--max-room`).
    pub max_room: usize,
    /// Largest text frame answered normally, in bytes (`--max-frame`).
    pub max_frame: usize,
    /// Sustained messages per second per connection (`--max-rate`).
    pub rate: f64,
    /// Messages a connection may send at once before the rate applies.
    pub burst: f64,
    /// Open TCP connections per client IP address, counted at accept (`--max-conns-per-ip`).
    pub conns_per_ip: usize,
    /// Open TCP connections in total, counted at accept (`--max-conns`).
    pub max_conns: usize,
    /// Time to deliver a request head after accept (TLS handshake included) or
    /// after the previous response (`--header-timeout`).
    pub header_timeout: Duration,
    /// A connection that sends nothing for this long is closed (`--idle-timeout`).
    pub idle_timeout: Duration,
    /// Refusals within `strike_window` after which the connection is closed.
    pub strikes: u32,
    pub strike_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_room: 8,
            max_frame: 64 * 1024,
            rate: 50.0,
            burst: 200.0,
            conns_per_ip: 64,
            max_conns: 10_000,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            strikes: 20,
            strike_window: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The size above which the WebSocket layer itself drops the connection:
    /// frames between `max_frame` and this get an `error` and the connection
    /// carries on; bigger ones are hostile and cost a close.
    pub fn hard_frame_cap(&self) -> usize {
        self.max_frame.saturating_mul(4).max(1 << 20)
    }

    /// Bytes that may wait for a `/ws` client beyond what its socket took
    /// (`ws_out`): 64 of the largest messages (4 MiB at the default
    /// `--max-frame`), an eighth of what 512 waiting frames could hold.
    /// Signaling bursts are a few SDPs and candidates; a reader that takes a
    /// burst of thousands of large messages at full speed stays under it
    /// (`tests/signal_direct.rs`); more than this waiting means the client is
    /// not reading.
    pub fn outbox_bytes(&self) -> usize {
        self.max_frame.saturating_mul(64)
    }

    /// The cap that refused a connection or session, as its flag and value
    /// (`--max-conns-per-ip 64`), for the refusal's message and the log.
    pub fn cap_named(&self, why: ConnRefusal) -> String {
        match why {
            ConnRefusal::Total => format!("--max-conns {}", self.max_conns),
            ConnRefusal::PerIp => format!("--max-conns-per-ip {}", self.conns_per_ip),
        }
    }
}

/// The client a per-address cap counts a connection against: an IPv4
/// address, or the /64 of an IPv6 one (what an ISP routes to one customer:
/// counting each of its 2^64 addresses would let one host take any number of
/// slots; the TURN credentials are per /64 for the same reason). IPv4 in IPv6
/// forms (mapped, 6to4, NAT64, ...) counts as its IPv4 address.
pub fn client_of(ip: IpAddr) -> IpAddr {
    match crate::net::address_class::canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// What to do with one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A valid message for the room registry.
    Accept(ClientMessage),
    /// Answer `error`, keep the connection.
    Refuse(Refusal),
    /// Answer `error`, then close: too many refusals.
    RefuseAndClose(Refusal),
}

/// The gate every frame of one connection passes through.
#[derive(Debug, Clone)]
pub struct Gate {
    limits: Limits,
    tokens: f64,
    last_refill: Instant,
    strikes: u32,
    window_start: Instant,
}

impl Gate {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Gate { limits, tokens: limits.burst, last_refill: now, strikes: 0, window_start: now }
    }

    /// Checks a text frame and parses it.
    pub fn on_text(&mut self, text: &str, now: Instant) -> Verdict {
        let checked = self.admit(text.len(), now).and_then(|()| parse_client(text));
        match checked {
            Ok(m) => Verdict::Accept(m),
            Err(r) => self.strike(r, now),
        }
    }

    /// Binary frames are not part of the protocol.
    pub fn on_binary(&mut self, len: usize, now: Instant) -> Verdict {
        match self.admit(len, now) {
            Ok(()) => self.strike(Refusal::new(ErrorCode::BadJson, "binary frame: send JSON in text frames"), now),
            Err(r) => self.strike(r, now),
        }
    }

    /// Size and rate checks, before any parsing work is spent on the frame.
    pub fn admit(&mut self, len: usize, now: Instant) -> Result<(), Refusal> {
        let elapsed = now.saturating_duration_since(self.last_refill).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.limits.rate).min(self.limits.burst);
        self.last_refill = now;
        if self.tokens < 1.0 {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!("more than {} messages per second; slow down", self.limits.rate),
            ));
        }
        self.tokens -= 1.0;
        if len > self.limits.max_frame {
            return Err(Refusal::new(
                ErrorCode::FrameTooLarge,
                format!("frame of {len} bytes; the limit is {} bytes", self.limits.max_frame),
            ));
        }
        Ok(())
    }

    /// Counts a refusal; too many within the window closes the connection.
    /// The server's own failures (`internal`: Redis away) are not the
    /// client's fault and cost no strike: a client retrying through an
    /// outage must not be disconnected for it.
    pub fn strike(&mut self, r: Refusal, now: Instant) -> Verdict {
        if r.code == ErrorCode::Internal {
            return Verdict::Refuse(r);
        }
        if now.saturating_duration_since(self.window_start) > self.limits.strike_window {
            self.window_start = now;
            self.strikes = 0;
        }
        self.strikes += 1;
        if self.strikes >= self.limits.strikes { Verdict::RefuseAndClose(r) } else { Verdict::Refuse(r) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_their_64_and_ipv4_in_any_form_its_address() {
        let c = |s: &str| client_of(s.parse().unwrap()).to_string();
        assert_eq!(c("2001:db8:5:6:1:2:3:4"), "2001:db8:5:6::");
        assert_eq!(c("2001:db8:5:6::ffff"), "2001:db8:5:6::");
        assert_eq!(c("203.0.113.7"), "203.0.113.7");
        assert_eq!(c("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(c("::1"), "::");
    }

    #[test]
    fn the_servers_own_failures_cost_no_strike() {
        let now = Instant::now();
        let mut g = Gate::new(Limits { strikes: 3, ..Limits::default() }, now);
        for _ in 0..10 {
            let v = g.strike(Refusal::new(ErrorCode::Internal, "the Redis backplane is not reachable"), now);
            assert!(matches!(v, Verdict::Refuse(_)), "{v:?}");
        }
    }

    fn limits() -> Limits {
        Limits { rate: 10.0, burst: 3.0, max_frame: 100, strikes: 3, ..Limits::default() }
    }

    fn code(v: Verdict) -> ErrorCode {
        match v {
            Verdict::Refuse(r) | Verdict::RefuseAndClose(r) => r.code,
            Verdict::Accept(m) => panic!("accepted {m:?}"),
        }
    }

    const LEAVE: &str = r#"{"type":"leave"}"#;

    #[test]
    fn burst_then_rate_limit_then_refill() {
        let t0 = Instant::now();
        let mut g = Gate::new(limits(), t0);
        for _ in 0..3 {
            assert_eq!(g.on_text(LEAVE, t0), Verdict::Accept(ClientMessage::Leave));
        }
        assert_eq!(code(g.on_text(LEAVE, t0)), ErrorCode::RateLimited);
        // 10/s: one token back after 100 ms.
        assert_eq!(g.on_text(LEAVE, t0 + Duration::from_millis(100)), Verdict::Accept(ClientMessage::Leave));
        assert_eq!(code(g.on_text(LEAVE, t0 + Duration::from_millis(100))), ErrorCode::RateLimited);
    }

    #[test]
    fn oversized_frame_is_refused_but_small_ones_pass() {
        let t0 = Instant::now();
        let mut g = Gate::new(limits(), t0);
        let big = format!(r#"{{"type":"join","room":"{}"}}"#, "x".repeat(100));
        assert_eq!(code(g.on_text(&big, t0)), ErrorCode::FrameTooLarge);
        assert_eq!(g.on_text(LEAVE, t0), Verdict::Accept(ClientMessage::Leave));
    }

    #[test]
    fn repeated_refusals_close_and_window_resets() {
        let t0 = Instant::now();
        let mut g = Gate::new(Limits { rate: 1000.0, burst: 1000.0, ..limits() }, t0);
        assert!(matches!(g.on_text("x", t0), Verdict::Refuse(_)));
        assert!(matches!(g.on_binary(3, t0), Verdict::Refuse(_)));
        assert!(matches!(g.on_text("x", t0), Verdict::RefuseAndClose(_)));
        let later = t0 + Duration::from_secs(11);
        assert!(matches!(g.on_text("x", later), Verdict::Refuse(_)));
    }
}
