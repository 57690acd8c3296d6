//! NAT behaviour discovery, RFC 5780 §4.3 (mapping), §4.4 (filtering) and
//! §4.6 (hairpinning), as one sans-IO state machine.
//!
//! The RFC describes the tests one after another; most of them do not depend
//! on each other, so this core runs them at once on separate logical sockets
//! (the driver owns the real ones):
//!
//! - socket 0, *primary*: mapping test I to every server; once the primary
//!   server's OTHER-ADDRESS is known, tests II (alternate IP, primary port) and
//!   III (alternate IP and port), concurrently (III is skipped if II already
//!   shows endpoint-independent mapping);
//! - socket 1, *filtering*: filtering tests I, II (CHANGE-REQUEST ip+port) and
//!   III (CHANGE-REQUEST port), all sent at once to the primary server. It never
//!   talks to any other address, so the mapping tests cannot open its filter;
//! - socket 2, *hairpin*: a Binding request to socket 0's mapped address; it
//!   counts as hairpinned when socket 0 receives it;
//! - sockets 3…, *port samples*: one Binding each, in order, for the port pattern.
//!
//! Timeouts (see [`Timing`]): the first contact retransmits from 100 ms and
//! is bounded by the overall timeout (the udp-blocked verdict comes after it).
//! A test whose silence is an answer (filtering II/III, hairpin) waits
//! `clamp(4 × RTT, 250 ms, 1 s)` from its first send or from the latest answer
//! of the run, whichever is later, RTT being the highest one measured so far; tests sent after the RTT is known retransmit every
//! `clamp(2 × RTT, 20 ms, 500 ms)`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::nat::classify::{Filtering, Mapping, NatType, Translation, classify};
use crate::nat::notes::{FilteringTest, Note, SkipReason};
use crate::nat::port_allocation::PortSample;
use crate::net::datagram::{MultiSocketCore, Transmit, Unreachable};
use crate::stun::message::{BindingResponse, ChangeFlags, binding_request_with, is_request, new_transaction_id};
use crate::stun::transaction::{ClientTransaction, Outcome, Reliability, Retransmit};

pub const PRIMARY: usize = 0;
pub const FILTERING: usize = 1;
pub const HAIRPIN: usize = 2;
/// The first port-sample socket; sample `i` uses socket `FIRST_SAMPLE + i`.
pub const FIRST_SAMPLE: usize = 3;

/// How long to wait and how often to retransmit; every figure is documented in README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Initial RTO of the first requests, sent before any RTT is known.
    pub first_rto: Duration,
    /// A test whose silence means "filtered" waits `factor × RTT` …
    pub silence_factor: u32,
    /// … but at least this (scheduling jitter, a retransmission) …
    pub silence_floor: Duration,
    /// … and at most this.
    pub silence_ceiling: Duration,
    /// RTO of tests sent once the RTT is known: `2 × RTT` within these bounds.
    pub rto_floor: Duration,
    pub rto_ceiling: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            first_rto: Duration::from_millis(100),
            silence_factor: 4,
            silence_floor: Duration::from_millis(250),
            silence_ceiling: Duration::from_millis(1000),
            rto_floor: Duration::from_millis(20),
            rto_ceiling: Duration::from_millis(500),
        }
    }
}

impl Timing {
    /// How long a filtered test waits for an answer, given the RTT.
    pub fn silence_wait(&self, rtt: Duration) -> Duration {
        (rtt * self.silence_factor).clamp(self.silence_floor, self.silence_ceiling)
    }

    pub(crate) fn later_rto(&self, rtt: Duration) -> Duration {
        (rtt * 2).clamp(self.rto_floor, self.rto_ceiling)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The primary server first; more servers only add mapping evidence (test I each).
    pub servers: Vec<SocketAddr>,
    /// Fresh sockets for the port-allocation pattern (`--ports N`).
    pub port_samples: usize,
    /// The bound on the whole run; a server that never answers is given up after it.
    pub timeout: Duration,
    pub timing: Timing,
}

impl Config {
    /// How many sockets the driver must open (socket `i` is `locals[i]`).
    pub fn sockets_needed(&self) -> usize {
        FIRST_SAMPLE + self.port_samples
    }
}

/// Which RFC 5780 test an exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TestKind {
    #[serde(rename = "mapping-1")]
    MappingI,
    #[serde(rename = "mapping-2")]
    MappingII,
    #[serde(rename = "mapping-3")]
    MappingIII,
    #[serde(rename = "filtering-1")]
    FilteringI,
    #[serde(rename = "filtering-2")]
    FilteringII,
    #[serde(rename = "filtering-3")]
    FilteringIII,
    #[serde(rename = "hairpin")]
    Hairpin,
    #[serde(rename = "port-sample")]
    PortSample,
}

/// How one exchange ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum ExchangeResult {
    /// A Binding success response.
    Answered {
        from: SocketAddr,
        mapped: Option<SocketAddr>,
        other_address: Option<SocketAddr>,
        /// RFC 3489 CHANGED-ADDRESS (classic servers such as stund send it instead of OTHER-ADDRESS).
        changed_address: Option<SocketAddr>,
        response_origin: Option<SocketAddr>,
        rtt_ms: f64,
        at_ms: f64,
    },
    /// A Binding error response (e.g. 420: the server does not know CHANGE-REQUEST).
    Error { from: SocketAddr, code: u16, reason: String, at_ms: f64 },
    /// Hairpin test: our own request arrived on the primary socket.
    Hairpinned { from: SocketAddr, at_ms: f64 },
    /// Nothing came back in time.
    Timeout { after_ms: f64 },
    /// The kernel reported an ICMP error for this destination.
    Unreachable { error: Unreachable, at_ms: f64 },
    /// Made unnecessary by another test's answer (e.g. mapping-3 after mapping-2 matched mapping-1).
    Skipped { reason: SkipReason },
}

/// One STUN exchange: what was sent, where, and what came back when.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub test: TestKind,
    /// The logical socket (0 primary, 1 filtering, 2 hairpin, 3… port samples).
    pub socket: usize,
    pub destination: SocketAddr,
    pub change_request: ChangeFlags,
    /// Milliseconds from the start to the first send.
    pub sent_at_ms: Option<f64>,
    pub sends: u32,
    pub result: Option<ExchangeResult>,
}

struct Test {
    ex: Exchange,
    tx: ClientTransaction,
    /// Silence is an answer here: give up after the silence wait.
    silence_means_no: bool,
    first_send: Option<Instant>,
}

/// The state machine. Feed it with [`handle_input`](Self::handle_input),
/// [`handle_unreachable`](Self::handle_unreachable) and
/// [`handle_timeout`](Self::handle_timeout); send what
/// [`poll_transmit`](Self::poll_transmit) returns.
pub struct Discovery {
    cfg: Config,
    start: Instant,
    deadline: Instant,
    locals: Vec<SocketAddr>,
    tests: Vec<Test>,
    /// Lowest RTT (reported; sizes retransmissions).
    rtt: Option<Duration>,
    /// Highest RTT (sizes the silence waits, so a slow answer is not taken for silence).
    rtt_max: Option<Duration>,
    last_answer: Option<Instant>,
    phase_two_started: bool,
    hairpin_started: bool,
}

impl Discovery {
    /// `locals[i]`: the local address of socket `i` as the server would see it
    /// without a NAT (a concrete IP, not 0.0.0.0); `cfg.servers` must not be empty.
    pub fn new(cfg: Config, locals: Vec<SocketAddr>, now: Instant) -> Self {
        let deadline = now + cfg.timeout;
        let mut d = Discovery {
            cfg,
            start: now,
            deadline,
            locals,
            tests: Vec::new(),
            rtt: None,
            rtt_max: None,
            last_answer: None,
            phase_two_started: false,
            hairpin_started: false,
        };
        let first = Retransmit { rto: d.cfg.timing.first_rto, rc: 12, rm: 16 };
        let servers = d.cfg.servers.clone();
        for s in &servers {
            d.add(TestKind::MappingI, PRIMARY, *s, ChangeFlags::default(), first, false, now);
        }
        if let Some(&primary) = servers.first() {
            d.add(TestKind::FilteringI, FILTERING, primary, ChangeFlags::default(), first, false, now);
            let both = ChangeFlags { change_ip: true, change_port: true };
            d.add(TestKind::FilteringII, FILTERING, primary, both, first, true, now);
            let port = ChangeFlags { change_ip: false, change_port: true };
            d.add(TestKind::FilteringIII, FILTERING, primary, port, first, true, now);
            for i in 0..d.cfg.port_samples {
                d.add(TestKind::PortSample, FIRST_SAMPLE + i, primary, ChangeFlags::default(), first, false, now);
            }
        }
        d
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        test: TestKind,
        socket: usize,
        destination: SocketAddr,
        change_request: ChangeFlags,
        retransmit: Retransmit,
        silence_means_no: bool,
        now: Instant,
    ) {
        let id = new_transaction_id();
        let tx = ClientTransaction::new(
            id,
            binding_request_with(id, change_request),
            Reliability::Unreliable(retransmit),
            now,
        )
        .with_deadline(self.deadline);
        let ex = Exchange { test, socket, destination, change_request, sent_at_ms: None, sends: 0, result: None };
        self.tests.push(Test { ex, tx, silence_means_no, first_send: None });
    }

    fn ms_since_start(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.start).as_secs_f64() * 1000.0
    }

    /// The next datagram due now, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let start = self.start;
        for t in self.tests.iter_mut().filter(|t| t.ex.result.is_none()) {
            if let Some(bytes) = t.tx.poll_transmit(now) {
                let bytes = bytes.to_vec();
                if t.first_send.is_none() {
                    t.first_send = Some(now);
                    t.ex.sent_at_ms = Some(now.saturating_duration_since(start).as_secs_f64() * 1000.0);
                }
                t.ex.sends = t.tx.sends();
                return Some(Transmit { socket: t.ex.socket, destination: t.ex.destination, payload: bytes });
            }
        }
        None
    }

    /// When a test whose silence is its answer gives up: the silence wait after its first send
    /// or after the latest answer of the run, whichever is later (a slow server or a busy host
    /// delays every answer, and then the wait moves with them). None until an RTT is known.
    fn give_up_at(&self, t: &Test) -> Option<Instant> {
        if !t.silence_means_no {
            return None;
        }
        let w = self.cfg.timing.silence_wait(self.rtt_max?);
        let from = t.first_send?.max(self.last_answer.unwrap_or(self.start));
        Some(from + w)
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tests
            .iter()
            .filter(|t| t.ex.result.is_none())
            .flat_map(|t| [t.tx.poll_timeout(), self.give_up_at(t)])
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let give_up: Vec<Option<Instant>> = self.tests.iter().map(|t| self.give_up_at(t)).collect();
        for (t, give_up) in self.tests.iter_mut().zip(give_up).filter(|(t, _)| t.ex.result.is_none()) {
            t.tx.handle_timeout(now);
            let silent_long_enough = give_up.is_some_and(|g| now >= g);
            if t.tx.is_done() || silent_long_enough {
                t.tx.abort(now);
                let after = t.first_send.map(|f| now.saturating_duration_since(f)).unwrap_or_default();
                t.ex.sends = t.tx.sends();
                t.ex.result = Some(ExchangeResult::Timeout { after_ms: after.as_secs_f64() * 1000.0 });
            }
        }
        self.advance(now);
    }

    /// A datagram arrived on logical socket `socket` from `from`.
    pub fn handle_input(&mut self, socket: usize, from: SocketAddr, bytes: &[u8], now: Instant) {
        let at_ms = self.ms_since_start(now);
        // Our hairpin request arriving on the primary socket: the NAT looped it back.
        if socket == PRIMARY && is_request(bytes) {
            let id = crate::stun::message::transaction_id(bytes);
            if let Some(t) = self
                .tests
                .iter_mut()
                .find(|t| t.ex.test == TestKind::Hairpin && t.ex.result.is_none() && Some(*t.tx.id()) == id)
            {
                t.tx.abort(now);
                t.ex.sends = t.tx.sends();
                t.ex.result = Some(ExchangeResult::Hairpinned { from, at_ms });
            }
            self.advance(now);
            return;
        }
        let Some(t) = self
            .tests
            .iter_mut()
            .filter(|t| t.ex.socket == socket && t.ex.result.is_none())
            .find_map(|t| t.tx.handle_response(bytes, now).then_some(t))
        else {
            tracing::debug!(socket, %from, "datagram that matches no test (late, duplicate or stray)");
            return;
        };
        t.ex.sends = t.tx.sends();
        let rtt = match t.tx.take_outcome() {
            Some(Outcome::Response { rtt, .. }) => rtt,
            _ => Duration::ZERO,
        };
        t.ex.result = Some(match BindingResponse::parse(bytes) {
            Ok(r) => match r.error {
                Some((code, reason)) => ExchangeResult::Error { from, code, reason, at_ms },
                None => ExchangeResult::Answered {
                    from,
                    mapped: r.reflexive(),
                    other_address: r.other_address,
                    changed_address: crate::nat::rfc3489::changed_address(bytes),
                    response_origin: r.response_origin,
                    rtt_ms: rtt.as_secs_f64() * 1000.0,
                    at_ms,
                },
            },
            Err(e) => ExchangeResult::Error { from, code: 0, reason: format!("unusable response: {e}"), at_ms },
        });
        if matches!(t.ex.result, Some(ExchangeResult::Answered { .. })) {
            self.rtt = Some(self.rtt.map_or(rtt, |r| r.min(rtt)));
            self.rtt_max = Some(self.rtt_max.map_or(rtt, |r| r.max(rtt)));
            self.last_answer = Some(now);
        }
        self.advance(now);
    }

    /// The kernel reported an ICMP error for datagrams from `socket` to `destination`.
    pub fn handle_unreachable(&mut self, socket: usize, destination: SocketAddr, error: Unreachable, now: Instant) {
        let at_ms = self.ms_since_start(now);
        for t in self.tests.iter_mut().filter(|t| t.ex.result.is_none()) {
            if t.ex.socket == socket && t.ex.destination == destination && t.tx.sends() > 0 {
                t.tx.abort(now);
                t.ex.sends = t.tx.sends();
                t.ex.result = Some(ExchangeResult::Unreachable { error, at_ms });
            }
        }
        self.advance(now);
    }

    fn result_of(&self, kind: TestKind, dest: Option<SocketAddr>) -> Option<&ExchangeResult> {
        self.tests
            .iter()
            .find(|t| t.ex.test == kind && dest.is_none_or(|d| t.ex.destination == d))
            .and_then(|t| t.ex.result.as_ref())
    }

    fn skip(&mut self, kind: TestKind, reason: SkipReason, now: Instant) {
        for t in self.tests.iter_mut().filter(|t| t.ex.test == kind && t.ex.result.is_none()) {
            t.tx.abort(now);
            t.ex.sends = t.tx.sends();
            t.ex.result = Some(ExchangeResult::Skipped { reason });
        }
    }

    /// Starts the tests that depend on answers, and skips the ones answers made moot.
    fn advance(&mut self, now: Instant) {
        let Some(&primary) = self.cfg.servers.first() else { return };
        let first = self.result_of(TestKind::MappingI, Some(primary)).cloned();
        if let Some(ExchangeResult::Answered { mapped, other_address, changed_address, .. }) = first {
            // A classic server's CHANGED-ADDRESS names the same alternate IP and port.
            let other_address = other_address.or(changed_address);
            let rto = self.cfg.timing.later_rto(self.rtt.unwrap_or(self.cfg.timing.first_rto));
            let later = Retransmit { rto, rc: 12, rm: 16 };
            match other_address {
                Some(other) if !self.phase_two_started => {
                    self.phase_two_started = true;
                    let alt_ip = SocketAddr::new(other.ip(), primary.port());
                    self.add(TestKind::MappingII, PRIMARY, alt_ip, ChangeFlags::default(), later, false, now);
                    self.add(TestKind::MappingIII, PRIMARY, other, ChangeFlags::default(), later, false, now);
                }
                None => {
                    self.skip(TestKind::FilteringII, SkipReason::NoOtherAddress, now);
                    self.skip(TestKind::FilteringIII, SkipReason::NoOtherAddress, now);
                }
                _ => {}
            }
            if let (Some(m), false) = (mapped, self.hairpin_started) {
                self.hairpin_started = true;
                self.add(TestKind::Hairpin, HAIRPIN, m, ChangeFlags::default(), later, true, now);
            }
        } else if first.is_some() {
            // No usable first answer: nothing learned from the rest would mean anything.
            for k in [TestKind::FilteringI, TestKind::FilteringII, TestKind::FilteringIII, TestKind::PortSample] {
                self.skip(k, SkipReason::PrimaryUnanswered, now);
            }
        }
        let m1 = mapped_of(self.result_of(TestKind::MappingI, Some(primary)));
        let m2 = mapped_of(self.result_of(TestKind::MappingII, None));
        if m1.is_some() && m1 == m2 {
            self.skip(TestKind::MappingIII, SkipReason::MappingIIMatched, now);
        }
        if self.result_of(TestKind::FilteringII, None).is_some_and(|r| matches!(r, ExchangeResult::Answered { .. })) {
            self.skip(TestKind::FilteringIII, SkipReason::FilteringIIAnswered, now);
        }
    }

    /// Every test has ended.
    pub fn is_done(&self) -> bool {
        self.tests.iter().all(|t| t.ex.result.is_some())
    }

    /// What was learned (complete once [`is_done`](Self::is_done)).
    pub fn findings(&self) -> Findings {
        let servers = &self.cfg.servers;
        let primary = servers.first().copied();
        let local = self.locals.get(PRIMARY).copied();
        let mut notes = Vec::new();
        let first = primary.and_then(|p| self.result_of(TestKind::MappingI, Some(p)));
        // Another server's answer proves UDP works even if the primary stayed silent.
        let other_answer = self
            .tests
            .iter()
            .filter(|t| t.ex.test == TestKind::MappingI && Some(t.ex.destination) != primary)
            .find_map(|t| mapped_of(t.ex.result.as_ref()));
        let public = mapped_of(first).or(other_answer);
        let (other_address, rfc3489) = match first {
            Some(ExchangeResult::Answered { other_address: Some(o), .. }) => (Some(*o), false),
            Some(ExchangeResult::Answered { changed_address: Some(c), .. }) => {
                notes.push(Note::ClassicServer { primary, changed: *c });
                (Some(*c), true)
            }
            _ => (None, false),
        };
        let reach = match first {
            Some(ExchangeResult::Answered { .. }) => Reach::Answered,
            Some(ExchangeResult::Unreachable { error, .. }) => Reach::Unreachable(*error),
            Some(ExchangeResult::Error { code, reason, .. }) => Reach::Refused(*code, reason.clone()),
            _ if other_answer.is_some() => {
                notes.push(Note::PrimarySilentOthersAnswered { primary });
                Reach::Answered
            }
            _ => Reach::Silent,
        };
        let translation = match (public, local) {
            (Some(p), Some(l)) => Some(if p == l { Translation::None } else { Translation::Nat }),
            _ => None,
        };

        // Mapping: RFC 5780 §4.3 with OTHER-ADDRESS, else compare servers.
        let mapping = if other_address.is_some() {
            let m2 = mapped_of(self.result_of(TestKind::MappingII, None));
            let m3 = mapped_of(self.result_of(TestKind::MappingIII, None));
            match (public, m2, m3) {
                (Some(a), Some(b), _) if a == b => Some(Mapping::EndpointIndependent),
                (Some(_), Some(b), Some(c)) if b == c => Some(Mapping::AddressDependent),
                (Some(_), Some(_), Some(_)) => Some(Mapping::AddressAndPortDependent),
                (Some(_), None, _) => {
                    notes.push(Note::MappingIIUnanswered);
                    None
                }
                (Some(_), Some(_), None) => {
                    notes.push(Note::MappingIIIUnanswered);
                    Some(Mapping::AddressDependent)
                }
                _ => None,
            }
        } else {
            self.mapping_across_servers(public, &mut notes)
        };

        let filtering = if other_address.is_some() { self.filtering(primary, &mut notes) } else { None };
        if public.is_some() && other_address.is_none() {
            notes.push(Note::NoFilteringWithoutRfc5780 { primary });
        }

        let hairpinning = match self.result_of(TestKind::Hairpin, None) {
            Some(ExchangeResult::Hairpinned { .. }) => Some(true),
            Some(ExchangeResult::Timeout { .. } | ExchangeResult::Unreachable { .. }) => Some(false),
            _ => None,
        };
        let port_preservation = match (public, local) {
            (Some(p), Some(l)) => Some(p.port() == l.port()),
            _ => None,
        };
        let port_samples: Vec<PortSample> = self
            .tests
            .iter()
            .filter(|t| t.ex.test == TestKind::PortSample)
            .filter_map(|t| {
                let mapped = mapped_of(t.ex.result.as_ref())?;
                let local = self.locals.get(t.ex.socket)?;
                Some(PortSample { local: local.port(), mapped: mapped.port() })
            })
            .collect();

        let nat_type = match &reach {
            Reach::Silent => Some(NatType::UdpBlocked),
            Reach::Answered => classify(translation, mapping, filtering),
            Reach::Unreachable(error) => {
                notes.push(Note::PrimaryUnreachable { primary, error: *error });
                None
            }
            Reach::Refused(code, reason) => {
                notes.push(Note::BindingRefused { code: *code, reason: reason.clone() });
                None
            }
        };
        if reach == Reach::Silent {
            notes.push(Note::UdpSilent { primary, waited: self.cfg.timeout });
        }
        Findings {
            nat_type,
            mapping,
            filtering,
            hairpinning,
            port_preservation,
            port_samples,
            local,
            public,
            other_address,
            rfc3489,
            rtt: self.rtt,
            notes,
            exchanges: self.tests.iter().map(|t| t.ex.clone()).collect(),
        }
    }

    /// Without RFC 5780: mapped addresses of mapping-1 to each server, compared.
    fn mapping_across_servers(&self, public: Option<SocketAddr>, notes: &mut Vec<Note>) -> Option<Mapping> {
        let seen: Vec<(SocketAddr, SocketAddr)> = self
            .tests
            .iter()
            .filter(|t| t.ex.test == TestKind::MappingI)
            .filter_map(|t| Some((t.ex.destination, mapped_of(t.ex.result.as_ref())?)))
            .collect();
        public?;
        if seen.len() < 2 {
            notes.push(Note::OneServerOnly);
            return None;
        }
        if seen.iter().all(|(_, m)| *m == seen[0].1) {
            return Some(Mapping::EndpointIndependent);
        }
        // Same server IP, different port, different mapping: the port matters too.
        let port_matters = seen
            .iter()
            .any(|(d1, m1)| seen.iter().any(|(d2, m2)| d1.ip() == d2.ip() && d1.port() != d2.port() && m1 != m2));
        if port_matters {
            return Some(Mapping::AddressAndPortDependent);
        }
        notes.push(Note::MappingVariesByAddress);
        Some(Mapping::AddressDependent)
    }

    /// RFC 5780 §4.4 from the filtering socket's three tests.
    fn filtering(&self, primary: Option<SocketAddr>, notes: &mut Vec<Note>) -> Option<Filtering> {
        let primary = primary?;
        let one = self.result_of(TestKind::FilteringI, None);
        if !matches!(one, Some(ExchangeResult::Answered { .. })) {
            notes.push(Note::FilteringIUnanswered);
            return None;
        }
        let two = self.result_of(TestKind::FilteringII, None);
        let three = self.result_of(TestKind::FilteringIII, None);
        match two {
            Some(ExchangeResult::Answered { from, .. }) => {
                if from.ip() != primary.ip() && from.port() != primary.port() {
                    return Some(Filtering::EndpointIndependent);
                }
                notes.push(Note::ChangeRequestIgnored { test: FilteringTest::II, from: *from });
                return None;
            }
            Some(ExchangeResult::Timeout { .. }) => {}
            Some(other) => {
                let outcome = format!("{other:?}");
                notes.push(Note::FilteringEndedUnexpectedly { test: FilteringTest::II, outcome });
                return None;
            }
            None => return None,
        }
        match three {
            Some(ExchangeResult::Answered { from, .. }) => {
                if from.ip() == primary.ip() && from.port() != primary.port() {
                    Some(Filtering::AddressDependent)
                } else {
                    notes.push(Note::ChangeRequestIgnored { test: FilteringTest::III, from: *from });
                    None
                }
            }
            Some(ExchangeResult::Timeout { .. }) => Some(Filtering::AddressAndPortDependent),
            Some(other) => {
                let outcome = format!("{other:?}");
                notes.push(Note::FilteringEndedUnexpectedly { test: FilteringTest::III, outcome });
                None
            }
            None => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reach {
    Answered,
    Silent,
    Unreachable(Unreachable),
    Refused(u16, String),
}

fn mapped_of(r: Option<&ExchangeResult>) -> Option<SocketAddr> {
    match r {
        Some(ExchangeResult::Answered { mapped, .. }) => *mapped,
        _ => None,
    }
}

/// Everything the tests established.
#[derive(Debug, Clone)]
pub struct Findings {
    pub nat_type: Option<NatType>,
    pub mapping: Option<Mapping>,
    pub filtering: Option<Filtering>,
    pub hairpinning: Option<bool>,
    pub port_preservation: Option<bool>,
    pub port_samples: Vec<PortSample>,
    pub local: Option<SocketAddr>,
    pub public: Option<SocketAddr>,
    /// The primary server's alternate address (OTHER-ADDRESS, or CHANGED-ADDRESS when `rfc3489`).
    pub other_address: Option<SocketAddr>,
    /// The alternate address came from an RFC 3489 CHANGED-ADDRESS (a classic server).
    pub rfc3489: bool,
    pub rtt: Option<Duration>,
    /// Why something is unknown (sentences: [`Note`]'s `Display`).
    pub notes: Vec<Note>,
    pub exchanges: Vec<Exchange>,
}

/// The core as the multi-socket UDP driver sees it.
impl MultiSocketCore for Discovery {
    fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        Discovery::poll_transmit(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Discovery::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Discovery::handle_timeout(self, now)
    }
    fn handle_input(&mut self, socket: usize, from: SocketAddr, bytes: &[u8], now: Instant) {
        Discovery::handle_input(self, socket, from, bytes, now)
    }
    fn handle_unreachable(&mut self, socket: usize, destination: SocketAddr, why: Unreachable, now: Instant) {
        Discovery::handle_unreachable(self, socket, destination, why, now)
    }
    fn is_done(&self) -> bool {
        Discovery::is_done(self)
    }
}

#[cfg(test)]
mod tests {
    //! The core against a simulated network: a NAT of each kind and an RFC 5780
    //! server, delivering with a fixed delay on a fake clock. No sockets, no sleeps.

    use super::*;
    use crate::nat::port_allocation::{PortPattern, pattern};
    use crate::stun::message::{change_flags, encode, transaction_id};
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::net::{IpAddr, Ipv4Addr};
    use stun_rs::attributes::discovery::{OtherAddress, ResponseOrigin};
    use stun_rs::attributes::stun::XorMappedAddress;
    use stun_rs::methods::BINDING;
    use stun_rs::{MessageClass, StunMessageBuilder, TransactionId};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Open,
        Firewall,
        FullCone,
        Restricted,
        PortRestricted,
        Symmetric,
        Blocked,
    }

    fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }
    fn sa(ip: IpAddr, port: u16) -> SocketAddr {
        SocketAddr::new(ip, port)
    }

    const S_PORT: u16 = 3478;
    const ALT_PORT: u16 = 3479;

    struct Net {
        kind: Kind,
        hairpin: bool,
        rfc5780: bool,
        one_way: Duration,
        local_ip: IpAddr,
        public_ip: IpAddr,
        server_ips: [IpAddr; 2],
        /// (socket, destination) → public port (EIM keys on destination None).
        mappings: HashMap<(usize, Option<SocketAddr>), u16>,
        /// (socket, remote) pairs the client has sent to.
        sent_to: HashSet<(usize, SocketAddr)>,
        next_random: u16,
        /// Pending deliveries to the client: at → (socket, from, bytes) or an ICMP error.
        queue: BTreeMap<(Instant, u64), Delivery>,
        seq: u64,
    }

    enum Delivery {
        Datagram(usize, SocketAddr, Vec<u8>),
        Unreachable(usize, SocketAddr),
    }

    impl Net {
        fn new(kind: Kind) -> Net {
            let behind = !matches!(kind, Kind::Open | Kind::Firewall);
            Net {
                kind,
                hairpin: false,
                rfc5780: true,
                one_way: Duration::from_millis(10),
                local_ip: if behind { ip(10, 1, 0, 2) } else { ip(203, 0, 113, 101) },
                public_ip: if behind { ip(203, 0, 113, 11) } else { ip(203, 0, 113, 101) },
                server_ips: [ip(203, 0, 113, 1), ip(203, 0, 113, 2)],
                mappings: HashMap::new(),
                sent_to: HashSet::new(),
                next_random: 20000,
                queue: BTreeMap::new(),
                seq: 0,
            }
        }

        fn local_port(socket: usize) -> u16 {
            40000 + socket as u16 * 7
        }

        fn locals(&self, n: usize) -> Vec<SocketAddr> {
            (0..n).map(|i| sa(self.local_ip, Self::local_port(i))).collect()
        }

        fn nat(&self) -> bool {
            !matches!(self.kind, Kind::Open | Kind::Firewall)
        }

        fn map(&mut self, socket: usize, dest: SocketAddr) -> u16 {
            if !self.nat() {
                return Self::local_port(socket);
            }
            if self.kind == Kind::Symmetric {
                let next = &mut self.next_random;
                return *self.mappings.entry((socket, Some(dest))).or_insert_with(|| {
                    *next = next.wrapping_mul(31).wrapping_add(7919) | 1024;
                    *next
                });
            }
            *self.mappings.entry((socket, None)).or_insert(Self::local_port(socket))
        }

        fn schedule(&mut self, at: Instant, d: Delivery) {
            self.seq += 1;
            self.queue.insert((at, self.seq), d);
        }

        /// The client sends; the NAT maps and the server (or the NAT itself) reacts.
        fn send(&mut self, t: Transmit, now: Instant) {
            if self.kind == Kind::Blocked {
                return;
            }
            let dest = t.destination;
            if dest.ip() == self.public_ip {
                // Hairpin: to our own public address.
                let port = self.map(t.socket, dest);
                let target =
                    self.mappings.iter().find(|(k, p)| **p == dest.port() && k.0 != t.socket).map(|(k, _)| k.0);
                let target = if self.nat() { target } else { (0..8).find(|s| Self::local_port(*s) == dest.port()) };
                match (self.hairpin || !self.nat(), target) {
                    (true, Some(s)) => {
                        let from = sa(self.public_ip, port);
                        self.schedule(now + self.one_way, Delivery::Datagram(s, from, t.payload));
                    }
                    _ => self.schedule(now + self.one_way, Delivery::Unreachable(t.socket, dest)),
                }
                return;
            }
            self.sent_to.insert((t.socket, dest));
            let mapped = sa(self.public_ip, self.map(t.socket, dest));
            if !self.server_ips.contains(&dest.ip()) || !(dest.port() == S_PORT || dest.port() == ALT_PORT) {
                return;
            }
            let flags = change_flags(&t.payload).expect("our own request decodes");
            let (mut src_ip, mut src_port) = (dest.ip(), dest.port());
            if self.rfc5780 {
                if flags.change_ip {
                    src_ip = if src_ip == self.server_ips[0] { self.server_ips[1] } else { self.server_ips[0] };
                }
                if flags.change_port {
                    src_port = if src_port == S_PORT { ALT_PORT } else { S_PORT };
                }
            }
            let from = sa(src_ip, src_port);
            let id = transaction_id(&t.payload).expect("id");
            let mut b = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
                .with_transaction_id(TransactionId::from(id))
                .with_attribute(XorMappedAddress::from(mapped))
                .with_attribute(ResponseOrigin::from(from));
            if self.rfc5780 {
                b = b.with_attribute(OtherAddress::from(sa(self.server_ips[1], ALT_PORT)));
            }
            let bytes = encode(&b.build());
            // Inbound through the filter.
            let allowed = match self.kind {
                Kind::Open | Kind::FullCone => true,
                Kind::Restricted => self.sent_to.iter().any(|(s, d)| *s == t.socket && d.ip() == from.ip()),
                Kind::Firewall | Kind::PortRestricted | Kind::Symmetric => self.sent_to.contains(&(t.socket, from)),
                Kind::Blocked => false,
            };
            if allowed {
                self.schedule(now + self.one_way * 2, Delivery::Datagram(t.socket, from, bytes));
            }
        }
    }

    fn config(servers: Vec<SocketAddr>, port_samples: usize) -> Config {
        Config { servers, port_samples, timeout: Duration::from_secs(2), timing: Timing::default() }
    }

    /// Runs discovery to the end; returns the findings and the fake time it took.
    fn run(net: &mut Net, cfg: Config) -> (Findings, Duration) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut d = Discovery::new(cfg.clone(), net.locals(cfg.sockets_needed()), now);
        for _ in 0..10_000 {
            while let Some(t) = d.poll_transmit(now) {
                net.send(t, now);
            }
            if d.is_done() {
                return (d.findings(), now - t0);
            }
            let next_net = net.queue.keys().next().map(|k| k.0);
            let next = [d.poll_timeout(), next_net].into_iter().flatten().min().expect("something pending");
            now = now.max(next);
            while let Some(entry) = net.queue.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                match entry.remove() {
                    Delivery::Datagram(s, from, bytes) => d.handle_input(s, from, &bytes, now),
                    Delivery::Unreachable(s, dest) => d.handle_unreachable(s, dest, Unreachable::Port, now),
                }
            }
            d.handle_timeout(now);
        }
        panic!("discovery did not finish");
    }

    fn server() -> SocketAddr {
        sa(ip(203, 0, 113, 1), S_PORT)
    }

    fn classify_lab(kind: Kind) -> (Findings, Duration) {
        run(&mut Net::new(kind), config(vec![server()], 0))
    }

    #[test]
    fn open_internet_is_endpoint_independent_everything_without_translation() {
        let (f, took) = classify_lab(Kind::Open);
        assert_eq!(f.nat_type, Some(NatType::OpenInternet));
        assert_eq!(f.mapping, Some(Mapping::EndpointIndependent));
        assert_eq!(f.filtering, Some(Filtering::EndpointIndependent));
        assert_eq!(f.public, f.local);
        assert_eq!(f.hairpinning, Some(true));
        assert_eq!(f.port_preservation, Some(true));
        assert!(took < Duration::from_millis(200), "no silence to wait for: {took:?}");
    }

    #[test]
    fn firewall_without_nat_is_a_symmetric_udp_firewall() {
        let (f, _) = classify_lab(Kind::Firewall);
        assert_eq!(f.nat_type, Some(NatType::SymmetricUdpFirewall));
        assert_eq!(f.filtering, Some(Filtering::AddressAndPortDependent));
    }

    #[test]
    fn full_cone_has_endpoint_independent_filtering() {
        let (f, _) = classify_lab(Kind::FullCone);
        assert_eq!(f.nat_type, Some(NatType::FullCone));
        assert_eq!(f.mapping, Some(Mapping::EndpointIndependent));
        assert_eq!(f.filtering, Some(Filtering::EndpointIndependent));
        assert_eq!(f.port_preservation, Some(true));
        assert_eq!(f.hairpinning, Some(false));
        let m3 = f.exchanges.iter().find(|e| e.test == TestKind::MappingIII).expect("mapping-3 recorded");
        assert!(matches!(m3.result, Some(ExchangeResult::Skipped { .. })), "{m3:?}");
    }

    #[test]
    fn filtering_is_address_dependent_behind_restricted_cone() {
        let (f, _) = classify_lab(Kind::Restricted);
        assert_eq!(f.nat_type, Some(NatType::RestrictedCone));
        assert_eq!(f.filtering, Some(Filtering::AddressDependent));
    }

    #[test]
    fn port_restricted_cone_filters_by_address_and_port_after_a_short_silence() {
        let (f, took) = classify_lab(Kind::PortRestricted);
        assert_eq!(f.nat_type, Some(NatType::PortRestrictedCone));
        assert_eq!(f.mapping, Some(Mapping::EndpointIndependent));
        assert_eq!(f.filtering, Some(Filtering::AddressAndPortDependent));
        // RTT 20 ms → silence wait clamp(80 ms, 250 ms, 1 s) = 250 ms from the latest answer
        // (mapping-2, sent at 20 ms once OTHER-ADDRESS was known, answered at 40 ms).
        assert_eq!(f.rtt, Some(Duration::from_millis(20)));
        assert_eq!(took, Duration::from_millis(290));
        let ex = |k| f.exchanges.iter().find(|e| e.test == k).expect("recorded");
        assert!(matches!(ex(TestKind::FilteringII).result, Some(ExchangeResult::Timeout { .. })));
        assert_eq!(ex(TestKind::FilteringII).change_request, ChangeFlags { change_ip: true, change_port: true });
    }

    #[test]
    fn symmetric_nat_has_address_and_port_dependent_mapping() {
        let (f, _) = run(&mut Net::new(Kind::Symmetric), config(vec![server()], 4));
        assert_eq!(f.nat_type, Some(NatType::Symmetric));
        assert_eq!(f.mapping, Some(Mapping::AddressAndPortDependent));
        assert_eq!(f.filtering, Some(Filtering::AddressAndPortDependent));
        assert_eq!(f.port_preservation, Some(false));
        assert_eq!(f.port_samples.len(), 4);
        assert_eq!(pattern(&f.port_samples), Some(PortPattern::Random));
    }

    #[test]
    fn udp_blocked_is_decided_after_the_overall_timeout() {
        let (f, took) = classify_lab(Kind::Blocked);
        assert_eq!(f.nat_type, Some(NatType::UdpBlocked));
        assert_eq!(f.mapping, None);
        assert_eq!(f.hairpinning, None);
        assert_eq!(took, Duration::from_secs(2));
        assert!(f.notes.iter().any(|n| matches!(n, Note::UdpSilent { .. })), "{:?}", f.notes);
    }

    #[test]
    fn hairpinning_nat_loops_our_own_request_back() {
        let mut net = Net::new(Kind::FullCone);
        net.hairpin = true;
        let (f, _) = run(&mut net, config(vec![server()], 0));
        assert_eq!(f.hairpinning, Some(true));
        let h = f.exchanges.iter().find(|e| e.test == TestKind::Hairpin).expect("hairpin recorded");
        assert_eq!(Some(h.destination), f.public);
        assert!(matches!(h.result, Some(ExchangeResult::Hairpinned { .. })));
    }

    #[test]
    fn port_samples_of_a_preserving_nat_are_preserving() {
        let (f, _) = run(&mut Net::new(Kind::PortRestricted), config(vec![server()], 3));
        assert_eq!(pattern(&f.port_samples), Some(PortPattern::Preserving));
    }

    #[test]
    fn silence_wait_follows_rtt_within_floor_and_ceiling() {
        let t = Timing::default();
        assert_eq!(t.silence_wait(Duration::from_millis(1)), Duration::from_millis(250));
        assert_eq!(t.silence_wait(Duration::from_millis(100)), Duration::from_millis(400));
        assert_eq!(t.silence_wait(Duration::from_secs(2)), Duration::from_secs(1));
    }

    #[test]
    fn slow_path_waits_longer_for_filtered_tests() {
        let mut net = Net::new(Kind::PortRestricted);
        net.one_way = Duration::from_millis(50);
        let (f, took) = run(&mut net, config(vec![server()], 0));
        assert_eq!(f.nat_type, Some(NatType::PortRestrictedCone));
        assert_eq!(took, Duration::from_millis(600), "4 × 100 ms RTT after mapping-2's answer at 200 ms");
    }

    #[test]
    fn one_server_without_rfc5780_says_what_is_missing() {
        let mut net = Net::new(Kind::PortRestricted);
        net.rfc5780 = false;
        let (f, _) = run(&mut net, config(vec![server()], 0));
        assert_eq!(f.nat_type, None);
        assert_eq!(f.mapping, None);
        assert_eq!(f.filtering, None);
        assert!(f.public.is_some());
        assert!(f.notes.iter().any(|n| matches!(n, Note::NoFilteringWithoutRfc5780 { .. })), "{:?}", f.notes);
        assert!(f.notes.contains(&Note::OneServerOnly), "{:?}", f.notes);
    }

    #[test]
    fn two_plain_servers_reveal_symmetric_mapping() {
        let servers = vec![server(), sa(ip(203, 0, 113, 2), S_PORT)];
        let mut net = Net::new(Kind::Symmetric);
        net.rfc5780 = false;
        let (f, _) = run(&mut net, config(servers.clone(), 0));
        assert_eq!(f.mapping, Some(Mapping::AddressDependent));
        assert_eq!(f.nat_type, Some(NatType::Symmetric));
        assert_eq!(f.filtering, None);

        let mut net = Net::new(Kind::PortRestricted);
        net.rfc5780 = false;
        let (f, _) = run(&mut net, config(servers, 0));
        assert_eq!(f.mapping, Some(Mapping::EndpointIndependent));
        assert_eq!(f.nat_type, None, "which cone needs the filtering tests");
    }

    #[test]
    fn a_silent_primary_with_another_server_answering_is_not_udp_blocked() {
        let mut net = Net::new(Kind::Symmetric);
        net.rfc5780 = false;
        // The primary is an address no server answers on; the other two are plain STUN servers.
        let dead = sa(ip(203, 0, 113, 9), S_PORT);
        let servers = vec![dead, server(), sa(ip(203, 0, 113, 2), S_PORT)];
        let (f, _) = run(&mut net, config(servers, 0));
        assert_ne!(f.nat_type, Some(NatType::UdpBlocked));
        assert_eq!(f.mapping, Some(Mapping::AddressDependent));
        assert!(f.notes.iter().any(|n| matches!(n, Note::PrimarySilentOthersAnswered { .. })), "{:?}", f.notes);
    }

    #[test]
    fn an_icmp_error_from_the_server_is_not_udp_blocked() {
        let t0 = Instant::now();
        let mut d = Discovery::new(config(vec![server()], 0), Net::new(Kind::Open).locals(3), t0);
        while d.poll_transmit(t0).is_some() {}
        d.handle_unreachable(PRIMARY, server(), Unreachable::Port, t0);
        d.handle_unreachable(FILTERING, server(), Unreachable::Port, t0);
        assert!(d.is_done());
        let f = d.findings();
        assert_eq!(f.nat_type, None);
        assert!(f.notes.iter().any(|n| matches!(n, Note::PrimaryUnreachable { .. })), "{:?}", f.notes);
    }
}
