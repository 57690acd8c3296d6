//! Binding lifetime discovery, RFC 5780 §4.5, as a sans-IO state machine.
//!
//! A probe socket X sends a Binding request (the NAT creates a mapping), stays
//! idle for T, then the *asker* socket Y sends a Binding request with
//! RESPONSE-PORT set to X's mapped port: the server answers to our public IP
//! at that port, from the address X talked to. If X receives it, the mapping
//! outlived T. The RFC probes one T at a time; here a round probes several
//! idle times at once (one socket each) and the next round narrows in between
//! the longest T that survived and the shortest that did not, until the gap is
//! under a second (or 5 %), or the time bound runs out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::nat::behavior::Timing;
use crate::net::datagram::{MultiSocketCore, Transmit, Unreachable};
use crate::stun::message::{BindingResponse, binding_request, binding_request_to_port, new_transaction_id};
use crate::stun::transaction::{ClientTransaction, Outcome, Reliability, Retransmit};

/// The socket that asks the server to answer elsewhere; probes use 1….
pub const ASKER: usize = 0;

#[derive(Debug, Clone)]
pub struct LifetimeConfig {
    /// An RFC 5780 server (it must honour RESPONSE-PORT).
    pub server: SocketAddr,
    /// The longest idle time worth trying.
    pub max_idle: Duration,
    /// Probes per round (one socket each).
    pub parallel: usize,
    /// The bound on the whole search.
    pub timeout: Duration,
    pub timing: Timing,
}

impl LifetimeConfig {
    pub fn sockets_needed(&self) -> usize {
        1 + self.parallel.max(first_round(self.max_idle, usize::MAX).len())
    }
}

/// Idle times of the first round: 1, 2, 4, … seconds up to `max` (and `max` itself).
fn first_round(max: Duration, limit: usize) -> Vec<Duration> {
    let mut v = Vec::new();
    let mut t = Duration::from_secs(1);
    while t < max && v.len() + 1 < limit {
        v.push(t);
        t *= 2;
    }
    v.push(max);
    v
}

#[derive(Debug)]
enum State {
    /// Opening the mapping.
    Binding(ClientTransaction),
    /// Waiting out the idle time.
    Idle {
        mapped_port: u16,
        until: Instant,
    },
    /// The asker's request is out; the answer should come to the probe socket.
    Asking {
        tx: ClientTransaction,
        first_send: Option<Instant>,
    },
    Alive,
    Dead,
    /// Could not be measured (no answer to the first Binding).
    Failed,
}

#[derive(Debug)]
struct Probe {
    socket: usize,
    idle: Duration,
    state: State,
}

/// The outcome of the search.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LifetimeResult {
    /// The longest idle time a mapping survived (a lower bound of the lifetime).
    pub alive_s: Option<f64>,
    /// The shortest idle time after which a mapping was gone (an upper bound).
    pub dead_s: Option<f64>,
    pub rounds: u32,
    pub probes: u32,
    /// Why the result is partial or missing.
    pub note: Option<String>,
}

impl LifetimeResult {
    /// The figure to report: the midpoint of the bracket, or the bound that exists.
    pub fn lifetime_s(&self) -> Option<f64> {
        match (self.alive_s, self.dead_s) {
            (Some(a), Some(d)) => Some((a + d) / 2.0),
            (Some(a), None) => Some(a),
            (None, Some(_)) => Some(0.0),
            (None, None) => None,
        }
    }
}

pub struct LifetimeSearch {
    cfg: LifetimeConfig,
    deadline: Instant,
    probes: Vec<Probe>,
    alive: Option<Duration>,
    dead: Option<Duration>,
    rtt: Option<Duration>,
    rounds: u32,
    probes_sent: u32,
    note: Option<String>,
    done: bool,
    start: Instant,
}

impl LifetimeSearch {
    pub fn new(cfg: LifetimeConfig, now: Instant) -> Self {
        let deadline = now + cfg.timeout;
        let mut s = LifetimeSearch {
            deadline,
            probes: Vec::new(),
            alive: None,
            dead: None,
            rtt: None,
            rounds: 0,
            probes_sent: 0,
            note: None,
            done: false,
            start: now,
            cfg,
        };
        let round = first_round(s.cfg.max_idle, usize::MAX);
        s.start_round(round, now);
        s
    }

    fn start_round(&mut self, idles: Vec<Duration>, now: Instant) {
        self.rounds += 1;
        self.probes.clear();
        for (i, idle) in idles.into_iter().enumerate() {
            // A probe that cannot finish before the bound is not worth its socket.
            if now + idle > self.deadline {
                continue;
            }
            let id = new_transaction_id();
            let r = Retransmit { rto: self.cfg.timing.first_rto, rc: 12, rm: 16 };
            let tx = ClientTransaction::new(id, binding_request(id), Reliability::Unreliable(r), now)
                .with_deadline(now + Duration::from_secs(3));
            self.probes.push(Probe { socket: 1 + i, idle, state: State::Binding(tx) });
            self.probes_sent += 1;
        }
        if self.probes.is_empty() {
            self.done = true;
            if self.note.is_none() {
                self.note =
                    Some(format!("the search stopped at the time bound ({:.0} s)", self.cfg.timeout.as_secs_f64()));
            }
        }
    }

    /// How far the search is, for a progress bar: elapsed and the bound.
    pub fn progress(&self, now: Instant) -> (Duration, Duration) {
        (now.saturating_duration_since(self.start), self.cfg.timeout)
    }

    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let server = self.cfg.server;
        for p in &mut self.probes {
            match &mut p.state {
                State::Binding(tx) => {
                    if let Some(b) = tx.poll_transmit(now) {
                        return Some(Transmit { socket: p.socket, destination: server, payload: b.to_vec() });
                    }
                }
                State::Asking { tx, first_send } => {
                    if let Some(b) = tx.poll_transmit(now) {
                        first_send.get_or_insert(now);
                        return Some(Transmit { socket: ASKER, destination: server, payload: b.to_vec() });
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn silence(&self) -> Duration {
        self.cfg.timing.silence_wait(self.rtt.unwrap_or(self.cfg.timing.silence_ceiling))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let silence = self.silence();
        let t = self
            .probes
            .iter()
            .filter_map(|p| match &p.state {
                State::Binding(tx) => tx.poll_timeout(),
                State::Idle { until, .. } => Some(*until),
                State::Asking { tx, first_send } => {
                    [tx.poll_timeout(), first_send.map(|f| f + silence)].into_iter().flatten().min()
                }
                _ => None,
            })
            .min();
        Some(t.map_or(self.deadline, |t| t.min(self.deadline)))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        let silence = self.silence();
        let later = Retransmit { rto: self.cfg.timing.later_rto(self.rtt.unwrap_or_default()), rc: 12, rm: 16 };
        for p in &mut self.probes {
            match &mut p.state {
                State::Binding(tx) => {
                    tx.handle_timeout(now);
                    if tx.is_done() {
                        p.state = State::Failed;
                    }
                }
                State::Idle { mapped_port, until } if now >= *until => {
                    let id = new_transaction_id();
                    let tx = ClientTransaction::new(
                        id,
                        binding_request_to_port(id, *mapped_port),
                        Reliability::Unreliable(later),
                        now,
                    );
                    p.state = State::Asking { tx, first_send: None };
                }
                State::Asking { first_send: Some(f), .. } if now >= *f + silence => p.state = State::Dead,
                _ => {}
            }
        }
        // Mappings do not come back to life: dead after T means dead after anything longer,
        // so the longer probes of this round need not be waited out.
        if let Some(shortest_dead) = self.probes.iter().filter(|p| matches!(p.state, State::Dead)).map(|p| p.idle).min()
        {
            for p in self.probes.iter_mut().filter(|p| p.idle > shortest_dead) {
                if !matches!(p.state, State::Alive | State::Failed) {
                    p.state = State::Dead;
                }
            }
        }
        if now >= self.deadline {
            self.note.get_or_insert_with(|| "the search stopped at the time bound".into());
            self.done = true;
            return;
        }
        self.settle(now);
    }

    pub fn handle_input(&mut self, socket: usize, bytes: &[u8], now: Instant) {
        for i in 0..self.probes.len() {
            let p = &mut self.probes[i];
            let own_socket = socket == p.socket;
            match &mut p.state {
                State::Binding(tx) => {
                    if !own_socket || !tx.handle_response(bytes, now) {
                        continue;
                    }
                    if let Some(Outcome::Response { rtt, .. }) = tx.take_outcome() {
                        self.rtt = Some(self.rtt.map_or(rtt, |r| r.min(rtt)));
                    }
                    match BindingResponse::parse(bytes).ok().and_then(|r| r.reflexive()) {
                        Some(m) => p.state = State::Idle { mapped_port: m.port(), until: now + p.idle },
                        None => p.state = State::Failed,
                    }
                }
                State::Asking { tx, .. } => {
                    if !tx.handle_response(bytes, now) {
                        continue;
                    }
                    let err = BindingResponse::parse(bytes).ok().and_then(|r| r.error);
                    if let Some((code, reason)) = err {
                        self.note =
                            Some(format!("the server refused RESPONSE-PORT ({code} {reason}): lifetime unknown"));
                        self.done = true;
                    } else if own_socket {
                        p.state = State::Alive;
                    } else {
                        // The answer came to the asker: RESPONSE-PORT was ignored.
                        self.note = Some("the server ignored RESPONSE-PORT (RFC 5780 §7.5): lifetime unknown".into());
                        self.done = true;
                    }
                }
                _ => {}
            }
        }
        self.settle(now);
    }

    /// When every probe of the round has ended: narrow the bracket and start the next round.
    fn settle(&mut self, now: Instant) {
        if self.done {
            return;
        }
        let finished = self.probes.iter().all(|p| matches!(p.state, State::Alive | State::Dead | State::Failed));
        if !finished {
            return;
        }
        for p in &self.probes {
            match p.state {
                State::Alive => self.alive = Some(self.alive.map_or(p.idle, |a| a.max(p.idle))),
                State::Dead => self.dead = Some(self.dead.map_or(p.idle, |d| d.min(p.idle))),
                _ => {}
            }
        }
        if self.probes.iter().all(|p| matches!(p.state, State::Failed)) {
            self.note = Some("the server did not answer the probe sockets: lifetime unknown".into());
            self.done = true;
            return;
        }
        let lo = self.alive.unwrap_or(Duration::ZERO);
        let Some(hi) = self.dead else {
            // Every idle time survived, up to the longest tried.
            self.note = Some(format!("mappings outlived the longest idle time tried ({:.0} s)", lo.as_secs_f64()));
            self.done = true;
            return;
        };
        let gap = hi.saturating_sub(lo);
        if gap <= Duration::from_secs(1).max(hi / 20) {
            self.done = true;
            return;
        }
        let k = self.cfg.parallel.max(1) as u32;
        let idles: Vec<Duration> = (1..=k).map(|i| lo + gap * i / (k + 1)).collect();
        self.start_round(idles, now);
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn result(&self) -> LifetimeResult {
        LifetimeResult {
            alive_s: self.alive.map(|d| d.as_secs_f64()),
            dead_s: self.dead.map(|d| d.as_secs_f64()),
            rounds: self.rounds,
            probes: self.probes_sent,
            note: self.note.clone(),
        }
    }
}

/// The search as the multi-socket UDP driver sees it.
impl MultiSocketCore for LifetimeSearch {
    fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        LifetimeSearch::poll_transmit(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        LifetimeSearch::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        LifetimeSearch::handle_timeout(self, now)
    }
    fn handle_input(&mut self, socket: usize, _from: SocketAddr, bytes: &[u8], now: Instant) {
        LifetimeSearch::handle_input(self, socket, bytes, now)
    }
    fn handle_unreachable(&mut self, _socket: usize, _destination: SocketAddr, _why: Unreachable, _now: Instant) {
        // A probe whose answer never comes is counted dead by its silence wait.
    }
    fn is_done(&self) -> bool {
        LifetimeSearch::is_done(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::{encode, response_port, transaction_id};
    use std::collections::HashMap;
    use stun_rs::attributes::stun::XorMappedAddress;
    use stun_rs::methods::BINDING;
    use stun_rs::{MessageClass, StunMessageBuilder, TransactionId};

    /// A port-preserving NAT whose mappings die `lifetime` after their last outbound packet,
    /// and a server that honours RESPONSE-PORT; delivery is instant.
    fn run(lifetime: Duration, max_idle: Duration, timeout: Duration) -> (LifetimeResult, Duration) {
        let server: SocketAddr = "203.0.113.1:3478".parse().expect("addr");
        let cfg = LifetimeConfig { server, max_idle, parallel: 4, timeout, timing: Timing::default() };
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = LifetimeSearch::new(cfg, now);
        // public port (= 50000 + socket) → last outbound time
        let mut last_out: HashMap<u16, Instant> = HashMap::new();
        let mut inbox: Vec<(usize, Vec<u8>)> = Vec::new();
        for _ in 0..100_000 {
            while let Some(Transmit { socket, payload: bytes, .. }) = s.poll_transmit(now) {
                let port = 50000 + socket as u16;
                last_out.insert(port, now);
                let id = transaction_id(&bytes).expect("id");
                let (to_port, mapped) = match response_port(&bytes) {
                    Some(p) => (p, port),
                    None => (port, port),
                };
                let msg = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
                    .with_transaction_id(TransactionId::from(id))
                    .with_attribute(XorMappedAddress::from(SocketAddr::new(
                        "203.0.113.11".parse().expect("ip"),
                        mapped,
                    )))
                    .build();
                let alive = last_out.get(&to_port).is_some_and(|t| now.saturating_duration_since(*t) < lifetime);
                if alive {
                    inbox.push(((to_port - 50000) as usize, encode(&msg)));
                }
            }
            for (socket, bytes) in std::mem::take(&mut inbox) {
                s.handle_input(socket, &bytes, now);
            }
            if s.is_done() {
                return (s.result(), now - t0);
            }
            if let Some(t) = s.poll_timeout() {
                now = now.max(t);
            }
            s.handle_timeout(now);
        }
        panic!("search did not finish");
    }

    #[test]
    fn narrows_in_on_the_lifetime_within_a_second() {
        let (r, took) = run(Duration::from_millis(30_000), Duration::from_secs(120), Duration::from_secs(300));
        let (a, d) = (r.alive_s.expect("alive"), r.dead_s.expect("dead"));
        assert!(a < 30.0 && d >= 30.0, "{r:?}");
        assert!(d - a <= 1.5, "{r:?}");
        assert!(r.rounds >= 2, "{r:?}");
        assert!(took < Duration::from_secs(120), "rounds run in parallel: {took:?}");
        let l = r.lifetime_s().expect("lifetime");
        assert!((29.0..=31.0).contains(&l), "{l}");
    }

    #[test]
    fn mappings_that_outlive_the_maximum_say_so() {
        let (r, _) = run(Duration::from_secs(3600), Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(r.alive_s, Some(10.0));
        assert_eq!(r.dead_s, None);
        assert!(r.note.expect("note").contains("outlived"));
    }

    #[test]
    fn the_time_bound_stops_the_search() {
        let (r, took) = run(Duration::from_secs(30), Duration::from_secs(120), Duration::from_secs(20));
        assert!(took <= Duration::from_secs(20), "{took:?}");
        assert_eq!(r.dead_s, None, "no idle time past 20 s was tried: {r:?}");
        assert!(r.alive_s.is_some_and(|a| a >= 16.0), "{r:?}");
    }
}
