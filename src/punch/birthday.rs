//! The birthday method: a direct path between an easy NAT and a hard one, when ICE's exchange
//! of candidates cannot find one (a port-restricted cone facing a symmetric NAT).
//!
//! The hard side's NAT gives every destination a fresh random port, so the port it shows the
//! easy side is unknown; the easy side's NAT drops anything from a port it has not sent to.
//! So the hard side (the *opener*) sends from many sockets toward the easy side's stable
//! address, opening that many mappings on its NAT, while the easy side (the *prober*) sends to
//! random ports of the hard side's public IP. Each probe that hits one of the open mappings
//! arrives, and opens the easy side's filter for the answer: with 256 mappings among ~64,000
//! ports, 1,000 probes find one about 98% of the time (the birthday paradox). See
//! "Birthday paradox" in Ford, Srisuresh, Kegel, *Peer-to-Peer Communication Across NATs* and
//! Tailscale's "How NAT traversal works".
//!
//! Why natkit's own and not the ICE agent's: an ICE check list pairs known candidates; here
//! the remote ports are guesses and the local side is hundreds of sockets, which str0m's agent
//! (`is`) has no way to express. Messages are STUN Binding requests and responses signed with
//! the ICE short-term credentials exchanged through the room (RFC 8489 §9.1), with a
//! transaction id that starts with `NKBD` so the socket's demultiplexer can tell them from
//! the agent's checks. Bounded: a probe count, a rate, a deadline, and only toward the
//! address the peer gave through the room.
//!
//! Sans-IO: datagrams in with `now` and the index of the socket they came to; datagrams out
//! with the socket to send from.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use stun_rs::attributes::stun::{Fingerprint, MessageIntegrity, UserName, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{DecoderContextBuilder, HMACKey, MessageClass, MessageDecoderBuilder, StunMessageBuilder, TransactionId};

use crate::net::datagram::{MultiSocketCore, Transmit, Unreachable};
use crate::stun::message::{encode, transaction_id};

/// The first bytes of every birthday transaction id.
const TAG: &[u8; 4] = b"NKBD";

/// Which end of the method we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// Our mapping is stable and the peer's varies: probe random ports of its public IP.
    Prober { peer_ip: IpAddr },
    /// Our mapping varies and the peer's is stable: open `sockets` mappings toward it.
    Opener { peer: SocketAddr, sockets: usize },
}

/// The bounds of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Probes the prober sends at most.
    pub probes: u32,
    /// Time between two probes.
    pub interval: Duration,
    /// How often the opener sends again from every socket (keeps mappings, beats loss).
    pub reopen: Duration,
    /// The whole attempt gives up after this long.
    pub duration: Duration,
}

impl Default for Limits {
    /// 2,048 probes at 500 per second: past 99.9% with 256 mappings on a random-port NAT, and
    /// a rate a home router's connection table takes in its stride.
    fn default() -> Self {
        Limits {
            probes: 2048,
            interval: Duration::from_millis(2),
            reopen: Duration::from_millis(500),
            duration: Duration::from_secs(8),
        }
    }
}

/// ICE short-term credentials of both ends (RFC 8445 §7.2.2): requests we send carry
/// `remote_ufrag:local_ufrag` signed with the peer's password; we answer with ours.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    pub remote_pwd: String,
}

/// How the attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A path: from our socket `socket` to the peer's `remote`.
    Found {
        socket: usize,
        remote: SocketAddr,
        probes: u32,
    },
    GaveUp {
        probes: u32,
    },
}

/// Whether a datagram belongs to the birthday method (by its transaction id).
pub fn is_birthday(bytes: &[u8]) -> bool {
    transaction_id(bytes).is_some_and(|id| id.starts_with(TAG))
}

/// Lowest port a NAT hands out when it picks at random (Linux masquerade: 1024–65535).
const LOWEST_PORT: u16 = 1024;

pub struct Birthday {
    side: Side,
    creds: Credentials,
    limits: Limits,
    rng: rand::rngs::StdRng,
    deadline: Instant,
    next_send: Instant,
    probes: u32,
    /// Ports already probed, so no probe is wasted on a repeat.
    probed: Vec<bool>,
    out: VecDeque<Transmit>,
    outcome: Option<Outcome>,
}

impl Birthday {
    /// `seed` makes the probe order reproducible in tests; pass a random one otherwise.
    pub fn new(side: Side, creds: Credentials, limits: Limits, seed: u64, now: Instant) -> Self {
        Birthday {
            side,
            creds,
            limits,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            deadline: now + limits.duration,
            next_send: now,
            probes: 0,
            probed: vec![false; usize::from(u16::MAX) + 1],
            out: VecDeque::new(),
            outcome: None,
        }
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    pub fn probes(&self) -> u32 {
        self.probes
    }

    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.handle_timeout(now);
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            return None;
        }
        Some(self.next_send.min(self.deadline))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if now >= self.deadline {
            self.outcome = Some(Outcome::GaveUp { probes: self.probes });
            return;
        }
        match self.side.clone() {
            Side::Prober { peer_ip } => {
                // Catch up on probes a late wake-up skipped, but never burst past the bound.
                while now >= self.next_send && self.probes < self.limits.probes {
                    let Some(port) = self.fresh_port() else { break };
                    let bytes = self.request();
                    self.out.push_back(Transmit {
                        socket: 0,
                        destination: SocketAddr::new(peer_ip, port),
                        payload: bytes,
                    });
                    self.probes += 1;
                    self.next_send += self.limits.interval;
                }
                if self.probes >= self.limits.probes {
                    // Probing is over; answers to the last probes may still come until the deadline.
                    self.next_send = self.deadline;
                }
            }
            Side::Opener { peer, sockets } => {
                if now >= self.next_send {
                    for socket in 0..sockets {
                        let bytes = self.request();
                        self.out.push_back(Transmit { socket, destination: peer, payload: bytes });
                    }
                    self.next_send = now + self.limits.reopen;
                }
            }
        }
    }

    /// A datagram that came to our socket `socket` from `from`. Unsigned, wrongly signed or
    /// foreign datagrams are ignored (returns false).
    pub fn handle_input(&mut self, socket: usize, from: SocketAddr, bytes: &[u8], now: Instant) -> bool {
        if !is_birthday(bytes) || !self.is_peer(from) {
            return false;
        }
        let ctx_key = |pwd: &str| HMACKey::new_short_term(pwd).ok();
        let Ok((msg, _)) = MessageDecoderBuilder::default().build().decode(bytes) else { return false };
        let (key, expect_user) = match msg.class() {
            // A request from the peer is signed with our password, user `local:remote`.
            MessageClass::Request => (
                ctx_key(&self.creds.local_pwd),
                Some(format!("{}:{}", self.creds.local_ufrag, self.creds.remote_ufrag)),
            ),
            // An answer to our request is signed with the peer's password.
            MessageClass::SuccessResponse => (ctx_key(&self.creds.remote_pwd), None),
            _ => return false,
        };
        let Some(key) = key else { return false };
        let ctx = DecoderContextBuilder::default().with_key(key).with_validation().build();
        if MessageDecoderBuilder::default().with_context(ctx).build().decode(bytes).is_err() {
            return false;
        }
        if let Some(user) = expect_user {
            let got = msg.attributes().iter().find_map(|a| a.as_user_name().ok().map(|u| u.as_str().to_string()));
            if got.as_deref() != Some(user.as_str()) {
                return false;
            }
            // Answer on the socket it came to: that is the path being proved.
            let Some(id) = transaction_id(bytes) else { return false };
            self.out.push_back(Transmit { socket, destination: from, payload: self.response(id, from) });
        }
        // Either way the path works both ways now: a request arrived through the peer's
        // mapping and our filter, and our answer leaves through the hole the probe opened (or
        // an answer to our own request came back).
        if self.outcome.is_none() && now < self.deadline {
            tracing::info!(socket, remote = %from, probes = self.probes, "birthday method found a path");
            self.outcome = Some(Outcome::Found { socket, remote: from, probes: self.probes });
        }
        true
    }

    fn is_peer(&self, from: SocketAddr) -> bool {
        match &self.side {
            Side::Prober { peer_ip } => from.ip() == *peer_ip,
            Side::Opener { peer, .. } => from.ip() == peer.ip(),
        }
    }

    fn fresh_port(&mut self) -> Option<u16> {
        // A dense table fills up only after ~64,000 probes; the bound stops long before.
        for _ in 0..64 {
            let port: u16 = self.rng.random_range(LOWEST_PORT..=u16::MAX);
            if !std::mem::replace(&mut self.probed[usize::from(port)], true) {
                return Some(port);
            }
        }
        None
    }

    fn request(&mut self) -> Vec<u8> {
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(TAG);
        self.rng.fill(&mut id[4..]);
        let user = format!("{}:{}", self.creds.remote_ufrag, self.creds.local_ufrag);
        let mut b =
            StunMessageBuilder::new(BINDING, MessageClass::Request).with_transaction_id(TransactionId::from(id));
        if let Ok(u) = UserName::new(user) {
            b = b.with_attribute(u);
        }
        if let Ok(key) = HMACKey::new_short_term(&self.creds.remote_pwd) {
            b = b.with_attribute(MessageIntegrity::new(key));
        }
        encode(&b.with_attribute(Fingerprint::default()).build())
    }

    fn response(&self, id: [u8; 12], to: SocketAddr) -> Vec<u8> {
        let mut b = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(TransactionId::from(id))
            .with_attribute(XorMappedAddress::from(to));
        if let Ok(key) = HMACKey::new_short_term(&self.creds.local_pwd) {
            b = b.with_attribute(MessageIntegrity::new(key));
        }
        encode(&b.with_attribute(Fingerprint::default()).build())
    }
}

/// The birthday method on the one UDP driver (`net::udp::drive`; the prober on
/// `drive_diverted`, its socket being the session's).
impl MultiSocketCore for Birthday {
    fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        Birthday::poll_transmit(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Birthday::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Birthday::handle_timeout(self, now)
    }
    fn handle_input(&mut self, socket: usize, from: SocketAddr, bytes: &[u8], now: Instant) {
        Birthday::handle_input(self, socket, from, bytes, now);
    }
    fn handle_unreachable(&mut self, socket: usize, destination: SocketAddr, why: Unreachable, _now: Instant) {
        // A probe toward a port nobody maps: one of thousands, and the rest go on.
        tracing::trace!(socket, %destination, %why, "birthday probe unreachable");
    }
    fn is_done(&self) -> bool {
        self.outcome.is_some()
    }
}

#[cfg(test)]
mod tests {
    //! Both ends against a simulated pair of NATs on a fake clock: the hard side maps each
    //! (socket, destination) to a random public port; the easy side filters on address and port.

    use std::collections::{HashMap, HashSet};

    use super::*;

    const EASY_PUB: &str = "203.0.113.10:40000";
    const HARD_IP: &str = "203.0.113.20";

    fn creds(a: bool) -> Credentials {
        let (l, r) = (("ea", "easy-password-0123456789"), ("ha", "hard-password-0123456789"));
        let (l, r) = if a { (l, r) } else { (r, l) };
        Credentials { local_ufrag: l.0.into(), local_pwd: l.1.into(), remote_ufrag: r.0.into(), remote_pwd: r.1.into() }
    }

    /// Runs both ends until one finds a path or both give up; returns both outcomes.
    fn run(sockets: usize, limits: Limits, seed: u64) -> (Outcome, Outcome) {
        let t0 = Instant::now();
        let easy_pub: SocketAddr = EASY_PUB.parse().unwrap();
        let hard_ip: IpAddr = HARD_IP.parse().unwrap();
        let mut easy = Birthday::new(Side::Prober { peer_ip: hard_ip }, creds(true), limits, seed, t0);
        let mut hard = Birthday::new(Side::Opener { peer: easy_pub, sockets }, creds(false), limits, seed + 1, t0);
        let mut nat_rng = rand::rngs::StdRng::seed_from_u64(seed + 2);
        // Hard NAT: (socket, destination) -> public port, and back.
        let mut mapping: HashMap<(usize, SocketAddr), u16> = HashMap::new();
        let mut inbound: HashMap<(u16, SocketAddr), usize> = HashMap::new();
        // Easy NAT: remote endpoints it has sent to (address-and-port-dependent filtering).
        let mut easy_sent_to: HashSet<SocketAddr> = HashSet::new();
        let mut now = t0;
        loop {
            while let Some(t) = hard.poll_transmit(now) {
                let key = (t.socket, t.destination);
                let port = *mapping.entry(key).or_insert_with(|| nat_rng.random_range(1024..=u16::MAX));
                inbound.insert((port, t.destination), t.socket);
                let from = SocketAddr::new(hard_ip, port);
                if easy_sent_to.contains(&from) {
                    easy.handle_input(0, from, &t.payload, now);
                }
            }
            while let Some(t) = easy.poll_transmit(now) {
                easy_sent_to.insert(t.destination);
                if let Some(&socket) = inbound.get(&(t.destination.port(), easy_pub)) {
                    hard.handle_input(socket, easy_pub, &t.payload, now);
                }
            }
            match (easy.outcome().cloned(), hard.outcome().cloned()) {
                (Some(e @ Outcome::Found { .. }), Some(h @ Outcome::Found { .. })) => return (e, h),
                (Some(e @ Outcome::GaveUp { .. }), Some(h @ Outcome::GaveUp { .. })) => return (e, h),
                _ => {}
            }
            let next = [easy.poll_timeout(), hard.poll_timeout()].into_iter().flatten().min();
            match next {
                Some(t) => now = t.max(now),
                None => return (easy.outcome().cloned().unwrap(), hard.outcome().cloned().unwrap()),
            }
        }
    }

    #[test]
    fn finds_a_path_through_a_random_port_nat_and_both_ends_agree() {
        let mut found = 0;
        for seed in 0..20 {
            let (easy, hard) = run(256, Limits::default(), seed * 7);
            if let (
                Outcome::Found { socket: 0, remote: easy_saw, .. },
                Outcome::Found { socket, remote: hard_saw, .. },
            ) = (&easy, &hard)
            {
                assert_eq!(*hard_saw, EASY_PUB.parse().unwrap());
                assert_eq!(easy_saw.ip(), HARD_IP.parse::<IpAddr>().unwrap());
                assert!(*socket < 256);
                found += 1;
            }
        }
        // 2,048 probes against 256 of ~64,500 ports: a miss has odds under 1 in 3,000.
        assert!(found >= 19, "found a path in only {found} of 20 runs");
    }

    #[test]
    fn gives_up_within_its_bounds() {
        let limits = Limits { probes: 100, duration: Duration::from_secs(2), ..Limits::default() };
        // One mapping: 100 probes almost never hit it.
        let (easy, _hard) = run(1, limits, 3);
        match easy {
            Outcome::GaveUp { probes } => assert_eq!(probes, 100),
            Outcome::Found { probes, .. } => assert!(probes <= 100),
        }
    }

    #[test]
    fn ignores_unsigned_and_foreign_datagrams() {
        let t0 = Instant::now();
        let easy_pub: SocketAddr = EASY_PUB.parse().unwrap();
        let mut hard =
            Birthday::new(Side::Opener { peer: easy_pub, sockets: 2 }, creds(false), Limits::default(), 1, t0);
        // An ICE check (no NKBD tag) is not ours.
        let plain = crate::stun::message::binding_request(crate::stun::message::new_transaction_id());
        assert!(!hard.handle_input(0, easy_pub, &plain, t0));
        // A tagged request signed with the wrong password.
        let mut forger = Birthday::new(
            Side::Prober { peer_ip: HARD_IP.parse().unwrap() },
            Credentials { remote_pwd: "not-the-password-000000".into(), ..creds(true) },
            Limits::default(),
            2,
            t0,
        );
        let forged = forger.poll_transmit(t0).expect("a probe").payload;
        assert!(!hard.handle_input(0, easy_pub, &forged, t0));
        // The right signature from an address that is not the peer's.
        let mut prober =
            Birthday::new(Side::Prober { peer_ip: HARD_IP.parse().unwrap() }, creds(true), Limits::default(), 3, t0);
        let good = prober.poll_transmit(t0).expect("a probe").payload;
        assert!(!hard.handle_input(0, "198.51.100.7:40000".parse().unwrap(), &good, t0));
        assert!(hard.outcome().is_none());
        assert!(hard.handle_input(1, easy_pub, &good, t0));
        assert!(matches!(hard.outcome(), Some(Outcome::Found { socket: 1, .. })));
    }
}
