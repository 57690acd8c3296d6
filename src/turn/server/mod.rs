//! The TURN server core (RFC 8656 on RFC 8489), the STUN Binding responder
//! and the RFC 5780 behaviour-discovery responder, as one sans-IO state
//! machine.
//!
//! The driver owns every socket. It feeds the core what arrived — from a
//! client on a listener ([`Server::handle_client`]) or from a peer on a
//! relayed socket ([`Server::handle_peer`]) — with `now`, and sends the
//! [`Transmit`] it gets back: to a client through a listener, or to a peer
//! through a relayed socket named by a [`RelayId`]. It opens and closes
//! relayed sockets when the core asks through [`RelayPorts`], and calls
//! [`Server::handle_timeout`] at [`Server::poll_timeout`].
//!
//! The data path (ChannelData and Send/Data indications) reads and writes
//! the wire format by hand in place and never allocates; requests go through
//! stun-rs.

pub mod allocation;
pub mod auth;
pub mod channels;
pub mod classic;
pub mod coturn_conf;
pub mod fingerprint;
pub mod metrics;
pub mod nonce;
pub mod peer_policy;
pub mod permissions;
pub mod stats;
pub mod throttle;
pub mod unauth_limit;
pub mod wire;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use stun_rs::attributes::discovery::{ChangeRequestFlags, OtherAddress, ResponseOrigin};
use stun_rs::attributes::stun::{
    AlternateServer, ErrorCode as ErrorCodeAttr, Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, Realm,
    Software, UnknownAttributes, XorMappedAddress,
};
use stun_rs::attributes::turn::{LifeTime, XorRelayedAddress};
use stun_rs::methods::{ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH};
use stun_rs::{
    AddressFamily, Algorithm, AlgorithmId, HMACKey, MessageClass, MessageEncoderBuilder, MessageMethod, StunAttribute,
    StunMessage, StunMessageBuilder, TransactionId,
};

use crate::net::transport::Transport;
use crate::stun::message::{HEADER_LEN, looks_like_stun};
use allocation::{Allocation, Allocations, MAX_LIFETIME, granted_lifetime};
use auth::{AuthFailure, Authenticator, FailureLimiter, IntegrityKind, UserKey};
use channels::BindError;
use fingerprint::FingerprintCheck;
use nonce::{NonceCheck, Nonces};
use peer_policy::{PeerPolicy, PeerPolicyConfig, Refusal, Verdict};
pub use stats::Stats;
use throttle::{AuthThrottle, ThrottleConfig};
use unauth_limit::{UnauthLimit, UnauthLimitConfig};
use wire::Class;

/// A relayed socket, named by the driver that opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u64);

impl fmt::Display for RelayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "relay#{}", self.0)
    }
}

/// Client transport, the listener's address and the client's address: the
/// RFC 8656 §2.2 5-tuple that names an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub transport: Transport,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Where a [`Transmit`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// To a client, sent from the listener at `local` (for a CHANGE-REQUEST
    /// that is another socket than the one the request came to).
    Client(FiveTuple),
    /// To a peer, sent from the relayed socket `relay`.
    Peer { relay: RelayId, peer: SocketAddr },
}

/// Bytes to send, borrowed from the input packet or the core's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit<'a> {
    pub target: Target,
    pub payload: &'a [u8],
}

/// The address family of a relayed address (REQUESTED-ADDRESS-FAMILY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// Why the driver could not open a relayed socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayOpenError {
    #[error("no relay address of this family is configured")]
    FamilyNotServed,
    #[error("every port in the relay range is in use")]
    NoPorts,
    #[error("{0}")]
    Io(String),
}

/// The driver's side of relayed sockets: the core asks, the driver binds.
pub trait RelayPorts: Send {
    fn open(&mut self, family: Family) -> Result<(RelayId, SocketAddr), RelayOpenError>;
    fn close(&mut self, relay: RelayId);
}

/// The STUN/TURN error codes this server answers with (RFC 8489 §14.8, RFC 8656 §19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    TryAlternate,
    BadRequest,
    Unauthenticated,
    Forbidden,
    UnknownAttribute,
    AllocationMismatch,
    StaleNonce,
    AddressFamilyNotSupported,
    WrongCredentials,
    UnsupportedTransportProtocol,
    PeerAddressFamilyMismatch,
    AllocationQuotaReached,
    InsufficientCapacity,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::TryAlternate,
        ErrorCode::BadRequest,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::UnknownAttribute,
        ErrorCode::AllocationMismatch,
        ErrorCode::StaleNonce,
        ErrorCode::AddressFamilyNotSupported,
        ErrorCode::WrongCredentials,
        ErrorCode::UnsupportedTransportProtocol,
        ErrorCode::PeerAddressFamilyMismatch,
        ErrorCode::AllocationQuotaReached,
        ErrorCode::InsufficientCapacity,
    ];

    pub fn code(self) -> u16 {
        match self {
            ErrorCode::TryAlternate => 300,
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::UnknownAttribute => 420,
            ErrorCode::AllocationMismatch => 437,
            ErrorCode::StaleNonce => 438,
            ErrorCode::AddressFamilyNotSupported => 440,
            ErrorCode::WrongCredentials => 441,
            ErrorCode::UnsupportedTransportProtocol => 442,
            ErrorCode::PeerAddressFamilyMismatch => 443,
            ErrorCode::AllocationQuotaReached => 486,
            ErrorCode::InsufficientCapacity => 508,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            ErrorCode::TryAlternate => "Try Alternate",
            ErrorCode::BadRequest => "Bad Request",
            ErrorCode::Unauthenticated => "Unauthenticated",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::UnknownAttribute => "Unknown Attribute",
            ErrorCode::AllocationMismatch => "Allocation Mismatch",
            ErrorCode::StaleNonce => "Stale Nonce",
            ErrorCode::AddressFamilyNotSupported => "Address Family not Supported",
            ErrorCode::WrongCredentials => "Wrong Credentials",
            ErrorCode::UnsupportedTransportProtocol => "Unsupported Transport Protocol",
            ErrorCode::PeerAddressFamilyMismatch => "Peer Address Family Mismatch",
            ErrorCode::AllocationQuotaReached => "Allocation Quota Reached",
            ErrorCode::InsufficientCapacity => "Insufficient Capacity",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The RFC 5780 responder: two IPs and two ports; a request that arrives on
/// (ip i, port j) names (ip 1-i, port 1-j) in OTHER-ADDRESS, and CHANGE-REQUEST
/// flips i and/or j for the socket the answer leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc5780 {
    pub ips: [IpAddr; 2],
    pub ports: [u16; 2],
}

impl Rfc5780 {
    fn position(&self, local: SocketAddr) -> Option<(usize, usize)> {
        let i = self.ips.iter().position(|ip| *ip == local.ip())?;
        let j = self.ports.iter().position(|p| *p == local.port())?;
        Some((i, j))
    }

    /// Every address the responder must listen on.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut v = Vec::new();
        for ip in self.ips {
            for port in self.ports {
                let a = SocketAddr::new(ip, port);
                if !v.contains(&a) {
                    v.push(a);
                }
            }
        }
        v
    }
}

/// Everything the core is told at start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub realm: String,
    pub users: HashMap<String, String>,
    pub secret: Option<String>,
    pub policy: PeerPolicyConfig,
    pub max_allocations: usize,
    pub user_quota: u32,
    /// Allocations per client IP address (0: no limit), so per-client REST credentials
    /// cannot be multiplied by one host.
    pub source_quota: u32,
    pub max_permissions: usize,
    pub max_channels: usize,
    pub max_lifetime: Duration,
    pub nonce_lifetime: Duration,
    pub nonce_key: [u8; 32],
    pub rfc5780: Option<Rfc5780>,
    /// Advertised in XOR-RELAYED-ADDRESS instead of the bound IP (1:1 NAT in front).
    pub external_ip: Option<IpAddr>,
    pub software: String,
    /// 401 answers to failed credentials per source IP: burst, then per second.
    pub auth_fail_burst: u32,
    pub auth_fail_per_sec: f64,
    /// While draining, new Allocates are sent here (300 Try Alternate, RFC 8489 §10) instead of 508.
    pub alternate_server: Option<SocketAddr>,
    /// Password-guessing throttle per source IP and per username.
    pub throttle: ThrottleConfig,
    /// Bytes of unauthenticated answers per source IP over UDP (amplification).
    pub unauth: UnauthLimitConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            realm: "natkit".into(),
            users: HashMap::new(),
            secret: None,
            policy: PeerPolicyConfig::default(),
            max_allocations: 10_000,
            user_quota: 1_000,
            source_quota: 100,
            max_permissions: 128,
            max_channels: 128,
            max_lifetime: MAX_LIFETIME,
            nonce_lifetime: Duration::from_secs(600),
            nonce_key: rand::random(),
            rfc5780: None,
            external_ip: None,
            software: format!("natkit {}", env!("CARGO_PKG_VERSION")),
            auth_fail_burst: 10,
            auth_fail_per_sec: 2.0,
            alternate_server: None,
            throttle: ThrottleConfig::default(),
            unauth: UnauthLimitConfig::default(),
        }
    }
}

/// How often the core sweeps expired allocations, permissions and channels.
/// Lifetimes are whole seconds, and every use checks expiry itself.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Scratch space for encoded answers and Data indications.
const SCRATCH: usize = 65_536 + 64;

/// The outcome of authenticating a request.
enum Authed {
    Ok(UserKey, IntegrityKind),
    /// Answer with this (already encoded into scratch) or drop (None).
    Reply(Option<usize>),
}

pub struct Server {
    cfg: ServerConfig,
    auth: Authenticator,
    nonces: Nonces,
    limiter: FailureLimiter,
    throttle: AuthThrottle,
    unauth: UnauthLimit,
    policy: PeerPolicy,
    allocs: Allocations,
    ports: Box<dyn RelayPorts>,
    epoch: Instant,
    wall_at_epoch: SystemTime,
    next_sweep: Instant,
    scratch: Vec<u8>,
    /// Set while answering a request: the answer leaves from another socket (CHANGE-REQUEST).
    reply_target: Option<Target>,
    /// Set while answering a request that carried FINGERPRINT: the answer does too.
    reply_fingerprint: bool,
    /// Draining (the operator is taking this relay out): no new allocation is
    /// granted; existing ones keep relaying and refreshing until they end.
    draining: bool,
    /// Set by `encode` when the answer carries MESSAGE-INTEGRITY (the client proved its key).
    reply_signed: bool,
    stats: Stats,
}

impl Server {
    /// `now` and `wall` are the same moment on the monotonic and the wall clock;
    /// the core derives wall time from `now` afterwards (REST username expiry).
    pub fn new(cfg: ServerConfig, ports: Box<dyn RelayPorts>, now: Instant, wall: SystemTime) -> Server {
        let auth = Authenticator::new(cfg.realm.clone(), cfg.users.clone(), cfg.secret.clone());
        let nonces = Nonces::new(cfg.nonce_key, cfg.nonce_lifetime, now);
        let limiter = FailureLimiter::new(cfg.auth_fail_burst, cfg.auth_fail_per_sec);
        let policy = PeerPolicy::new(cfg.policy.clone());
        let throttle = AuthThrottle::new(cfg.throttle);
        let unauth = UnauthLimit::new(cfg.unauth);
        Server {
            cfg,
            auth,
            nonces,
            limiter,
            throttle,
            unauth,
            policy,
            allocs: Allocations::default(),
            ports,
            epoch: now,
            wall_at_epoch: wall,
            next_sweep: now + SWEEP_EVERY,
            scratch: vec![0u8; SCRATCH],
            reply_target: None,
            reply_fingerprint: false,
            draining: false,
            reply_signed: false,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn allocations(&self) -> usize {
        self.allocs.len()
    }

    /// Allocations alive now by the client's transport: UDP, TCP, TLS.
    pub fn allocations_by_transport(&self) -> [(Transport, usize); 3] {
        let mut n = [(Transport::Udp, 0), (Transport::Tcp, 0), (Transport::Tls, 0)];
        for a in self.allocs.iter() {
            if let Some(slot) = n.iter_mut().find(|(t, _)| *t == a.client.transport) {
                slot.1 += 1;
            }
        }
        n
    }

    /// Stops granting new allocations (508, or 300 to `alternate_server`);
    /// everything else goes on. There is no way back: a draining relay is on
    /// its way out.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    pub fn permissions(&self) -> usize {
        self.allocs.iter().map(|a| a.permissions.len()).sum()
    }

    pub fn channels(&self) -> usize {
        self.allocs.iter().map(|a| a.channels.len()).sum()
    }

    fn wall(&self, now: Instant) -> SystemTime {
        self.wall_at_epoch + now.saturating_duration_since(self.epoch)
    }

    /// When the driver must call [`Server::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_sweep)
    }

    /// Ends allocations whose lifetime ran out and forgets expired permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        for relay in self.allocs.expired(now) {
            if let Some(a) = self.allocs.remove(relay) {
                tracing::info!(client = %a.client.remote, relayed = %a.relayed, user = %a.user.username, "allocation expired");
                self.ports.close(relay);
                self.stats.allocations_expired += 1;
            }
        }
        for a in self.allocs.iter_mut() {
            a.permissions.expire(now);
            a.channels.expire(now);
        }
        self.allocs.sweep_freed(now);
        self.limiter.sweep(now);
        self.throttle.sweep(now);
        self.unauth.sweep(now);
    }

    /// A TCP or TLS client went away: its allocation goes with it (RFC 8656 §7).
    pub fn client_closed(&mut self, client: FiveTuple) {
        if let Some(relay) = self.allocs.relay_of_client(&client)
            && self.allocs.remove(relay).is_some()
        {
            self.ports.close(relay);
            self.stats.allocations_deleted += 1;
        }
    }

    /// Whether `client` holds an allocation (the driver keeps such a TCP/TLS connection open while it is silent).
    pub fn has_allocation(&self, client: &FiveTuple) -> bool {
        self.allocs.relay_of_client(client).is_some()
    }

    /// Ends every allocation (shutdown).
    pub fn close_all(&mut self) {
        let relays: Vec<RelayId> = self.allocs.iter().map(|a| a.relay).collect();
        for r in relays {
            self.allocs.remove(r);
            self.ports.close(r);
        }
    }

    /// A packet from a client on a listener: a STUN message or ChannelData.
    pub fn handle_client<'a>(&'a mut self, from: FiveTuple, packet: &'a [u8], now: Instant) -> Option<Transmit<'a>> {
        match packet.first().map(|b| b >> 6) {
            Some(1) => self.client_channel_data(from, packet, now),
            Some(0) if looks_like_stun(packet) => self.client_stun(from, packet, now),
            Some(0) if classic::is_classic_binding(packet) => self.classic_binding(from, packet, now),
            _ => {
                self.stats.dropped_malformed += 1;
                None
            }
        }
    }

    /// A datagram from a peer on relayed socket `relay`. It sits at
    /// `buf[PEER_HEADROOM..PEER_HEADROOM + len]`, and `buf` has
    /// [`wire::PEER_TAILROOM`] more bytes after it, so the ChannelData header
    /// and padding are written in place.
    pub fn handle_peer<'a>(
        &'a mut self,
        relay: RelayId,
        from: SocketAddr,
        buf: &'a mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<Transmit<'a>> {
        let Some(a) = self.allocs.get(relay) else {
            self.stats.dropped_no_allocation += 1;
            return None;
        };
        if !a.permissions.allows(from.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        let client = a.client;
        self.stats.packets_from_peers += 1;
        self.stats.bytes_from_peers += len as u64;
        if let Some(number) = a.channels.number_of(from, now) {
            let n = wire::channel_data_in_place(buf, number, len, client.transport.is_reliable())?;
            return Some(Transmit { target: Target::Client(client), payload: &buf[..n] });
        }
        let data = buf.get(wire::PEER_HEADROOM..wire::PEER_HEADROOM + len)?;
        let n = wire::data_indication(&mut self.scratch, from, data, rand::random())?;
        Some(Transmit { target: Target::Client(client), payload: &self.scratch[..n] })
    }

    fn client_channel_data<'a>(&'a mut self, from: FiveTuple, packet: &'a [u8], now: Instant) -> Option<Transmit<'a>> {
        let Some((number, data)) = wire::channel_data(packet) else {
            self.stats.dropped_malformed += 1;
            return None;
        };
        let Some(relay) = self.allocs.relay_of_client(&from) else {
            self.stats.dropped_no_allocation += 1;
            return None;
        };
        let a = self.allocs.get(relay)?;
        let Some(peer) = a.channels.peer_of(number, now) else {
            self.stats.dropped_no_channel += 1;
            return None;
        };
        if !a.permissions.allows(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        self.relay_to_peer(relay, peer, data, now)
    }

    /// Relays `data` from allocation `relay` to `peer`: out of a relayed
    /// socket, or straight to the client of the allocation that owns `peer`.
    fn relay_to_peer<'a>(
        &'a mut self,
        relay: RelayId,
        peer: SocketAddr,
        data: &'a [u8],
        now: Instant,
    ) -> Option<Transmit<'a>> {
        if let Some(target) = self.allocs.relay_at(peer) {
            return self.deliver_internal(relay, target, data, now);
        }
        // Checked on every packet (one lookup): a channel or permission made to
        // another allocation's relayed address outlives that allocation, and the
        // port may now belong to another process on this host.
        if self.allocs.recently_freed(peer) {
            self.stats.refusals[Refusal::OwnAddress.index()] += 1;
            return None;
        }
        self.stats.packets_to_peers += 1;
        self.stats.bytes_to_peers += data.len() as u64;
        Some(Transmit { target: Target::Peer { relay, peer }, payload: data })
    }

    /// Two allocations of this relay talking: what the peer allocation's
    /// client would get had the packet gone out and come back in.
    fn deliver_internal<'a>(
        &'a mut self,
        from: RelayId,
        to: RelayId,
        data: &[u8],
        now: Instant,
    ) -> Option<Transmit<'a>> {
        let source = self.allocs.get(from)?.relayed;
        let b = self.allocs.get(to)?;
        if !b.permissions.allows(source.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        let client = b.client;
        self.stats.packets_internal += 1;
        self.stats.bytes_internal += data.len() as u64;
        let n = match b.channels.number_of(source, now) {
            Some(number) => {
                let end = wire::CHANNEL_HEADER + data.len();
                self.scratch.get_mut(wire::CHANNEL_HEADER..end)?.copy_from_slice(data);
                wire::channel_data_in_place(&mut self.scratch, number, data.len(), client.transport.is_reliable())?
            }
            None => wire::data_indication(&mut self.scratch, source, data, rand::random())?,
        };
        Some(Transmit { target: Target::Client(client), payload: &self.scratch[..n] })
    }

    fn client_stun<'a>(&'a mut self, from: FiveTuple, packet: &'a [u8], now: Instant) -> Option<Transmit<'a>> {
        if fingerprint::check(packet) == FingerprintCheck::Invalid {
            // RFC 8489 §14.7: discarded, never answered.
            self.stats.dropped_bad_fingerprint += 1;
            tracing::debug!(client = %from.remote, "message with a wrong FINGERPRINT dropped");
            return None;
        }
        let (method, class) = wire::method_and_class(packet);
        match class {
            Class::Indication if method == 0x006 => self.send_indication(from, packet, now),
            Class::Request => {
                self.stats.requests += 1;
                self.reply_target = None;
                self.reply_signed = false;
                let n = self.request(from, packet, method, now)?;
                let target = self.reply_target.take().unwrap_or(Target::Client(from));
                // An unsigned answer over UDP may go to a forged source: budgeted per IP.
                if !std::mem::take(&mut self.reply_signed)
                    && from.transport == Transport::Udp
                    && !self.unauth.allow(from.remote.ip(), n, now)
                {
                    self.stats.unauth_rate_limited += 1;
                    return None;
                }
                Some(Transmit { target, payload: &self.scratch[..n] })
            }
            _ => {
                self.stats.dropped_unexpected += 1;
                None
            }
        }
    }

    /// An RFC 3489 Binding request (no magic cookie): answered in the classic format.
    fn classic_binding<'a>(&'a mut self, from: FiveTuple, packet: &'a [u8], now: Instant) -> Option<Transmit<'a>> {
        self.stats.requests += 1;
        self.stats.binding_requests += 1;
        self.stats.classic_binding_requests += 1;
        let rfc5780 = if from.transport == Transport::Udp { self.cfg.rfc5780 } else { None };
        let (n, origin) = match classic::answer(packet, from.remote, from.local, rfc5780, &mut self.scratch) {
            Ok(v) => v,
            Err(why) => {
                self.stats.dropped_unexpected += 1;
                tracing::debug!(client = %from.remote, ?why, "RFC 3489 Binding request not answered");
                return None;
            }
        };
        if from.transport == Transport::Udp && !self.unauth.allow(from.remote.ip(), n, now) {
            self.stats.unauth_rate_limited += 1;
            return None;
        }
        Some(Transmit { target: Target::Client(FiveTuple { local: origin, ..from }), payload: &self.scratch[..n] })
    }

    fn send_indication<'a>(&'a mut self, from: FiveTuple, packet: &'a [u8], now: Instant) -> Option<Transmit<'a>> {
        let Some(relay) = self.allocs.relay_of_client(&from) else {
            self.stats.dropped_no_allocation += 1;
            return None;
        };
        let Some((peer, data)) = wire::send_indication(packet) else {
            self.stats.dropped_malformed += 1;
            return None;
        };
        let allocs = &self.allocs;
        match self.policy.check(peer, |a| allocs.relay_at(a).is_some()) {
            Verdict::Refuse(why) => {
                self.refused(from, peer, why, "Send indication");
                return None;
            }
            Verdict::Allow | Verdict::Internal => {}
        }
        let a = self.allocs.get(relay)?;
        if !a.permissions.allows(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        self.relay_to_peer(relay, peer, data, now)
    }

    fn refused(&mut self, from: FiveTuple, peer: SocketAddr, why: Refusal, what: &str) {
        self.stats.refusals[why.index()] += 1;
        tracing::info!(client = %from.remote, %peer, reason = %why, "{what} to a forbidden peer refused (403)");
    }

    /// Answers a request into scratch; returns the length, or None to stay silent.
    fn request(&mut self, from: FiveTuple, packet: &[u8], method: u16, now: Instant) -> Option<usize> {
        let txid = wire::transaction_id(packet);
        let msg = match crate::stun::message::decode(packet) {
            Ok(m) => m,
            Err(e) => {
                self.stats.dropped_malformed += 1;
                tracing::debug!(client = %from.remote, "malformed request: {e}");
                return self.error(method, txid, ErrorCode::BadRequest, None, vec![]);
            }
        };
        let fingerprint = msg.get::<Fingerprint>().is_some();
        self.reply_fingerprint = fingerprint;
        match msg.method() {
            m if m == BINDING => self.binding(from, &msg),
            m if m == ALLOCATE => self.allocate(from, packet, &msg, now),
            m if m == REFRESH => self.refresh(from, packet, &msg, now),
            m if m == CREATE_PERMMISSION => self.create_permission(from, packet, &msg, now),
            m if m == CHANNEL_BIND => self.channel_bind(from, packet, &msg, now),
            _ => self.error(method, txid, ErrorCode::BadRequest, None, vec![]),
        }
    }

    fn binding(&mut self, from: FiveTuple, msg: &StunMessage) -> Option<usize> {
        self.stats.binding_requests += 1;
        let change = msg.attributes().iter().find_map(|a| a.as_change_request().ok()).map(|c| {
            (c.flags().contains(ChangeRequestFlags::ChangeIp), c.flags().contains(ChangeRequestFlags::ChangePort))
        });
        let mut attrs: Vec<StunAttribute> = vec![XorMappedAddress::from(from.remote).into()];
        match (self.cfg.rfc5780, from.transport) {
            (Some(r), Transport::Udp) => {
                if let Some((i, j)) = r.position(from.local) {
                    let (ci, cp) = change.unwrap_or((false, false));
                    let (si, sj) = (if ci { 1 - i } else { i }, if cp { 1 - j } else { j });
                    let origin = SocketAddr::new(r.ips[si], r.ports[sj]);
                    attrs.push(OtherAddress::from(SocketAddr::new(r.ips[1 - i], r.ports[1 - j])).into());
                    attrs.push(ResponseOrigin::from(origin).into());
                    self.reply_target = Some(Target::Client(FiveTuple { local: origin, ..from }));
                } else {
                    attrs.push(ResponseOrigin::from(from.local).into());
                }
            }
            (Some(_), _) | (None, _) => {
                if matches!(change, Some((ci, cp)) if ci || cp) {
                    // RFC 5780 §6.1: a server that cannot change address answers 420.
                    let mut unknown = UnknownAttributes::default();
                    unknown.add(0x0003);
                    return self.error(
                        1,
                        *msg.transaction_id().as_bytes(),
                        ErrorCode::UnknownAttribute,
                        None,
                        vec![unknown.into()],
                    );
                }
                if !from.local.ip().is_unspecified() {
                    attrs.push(ResponseOrigin::from(from.local).into());
                }
            }
        }
        self.success(BINDING, *msg.transaction_id().as_bytes(), attrs, None)
    }

    /// RFC 8489 §9.2.4 in order: integrity present? username, realm, nonce
    /// present? realm ours? nonce fresh? user known? integrity right?
    fn authenticate(&mut self, from: FiveTuple, packet: &[u8], msg: &StunMessage, now: Instant) -> Authed {
        let method = msg.method().as_u16();
        let txid = *msg.transaction_id().as_bytes();
        if !auth::has_integrity(packet) {
            self.stats.auth_challenges += 1;
            return Authed::Reply(self.challenge(from, method, txid, ErrorCode::Unauthenticated, now));
        }
        let username = msg.attributes().iter().find_map(|a| a.as_user_name().ok()).map(|u| u.as_str().to_string());
        let realm = msg.attributes().iter().find_map(|a| a.as_realm().ok()).map(|r| r.as_str().to_string());
        let nonce = msg.attributes().iter().find_map(|a| a.as_nonce().ok()).map(|n| n.as_str().to_string());
        let (Some(username), Some(realm), Some(nonce)) = (username, realm, nonce) else {
            return Authed::Reply(self.error(method, txid, ErrorCode::BadRequest, None, vec![]));
        };
        match self.nonces.check(&nonce, from.remote, now) {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                self.stats.stale_nonces += 1;
                return Authed::Reply(self.challenge(from, method, txid, ErrorCode::StaleNonce, now));
            }
        }
        // A locked source or username is refused before its integrity is
        // checked, so a guess sent during the lock cannot succeed. Silence,
        // not 401: a UDP client retransmits and rides through a short lock.
        if let Err(who) = self.throttle.gate(from.remote.ip(), &username, now) {
            self.stats.auth_throttled[who.index()] += 1;
            return Authed::Reply(None);
        }
        let result = if realm != self.auth.realm() {
            Err(AuthFailure::WrongRealm)
        } else {
            self.auth.key_for(&username, self.wall(now)).and_then(|k| match auth::verify_integrity(packet, &k.key) {
                Some(kind) => Ok((k, kind)),
                None => Err(AuthFailure::BadIntegrity),
            })
        };
        match result {
            Ok((k, kind)) => {
                self.throttle.record_success(&k.username);
                Authed::Ok(k, kind)
            }
            Err(why) => {
                self.stats.auth_failures[why.index()] += 1;
                let user = (why == AuthFailure::BadIntegrity).then_some(username.as_str());
                let locked = self.throttle.record_failure(from.remote.ip(), user, now);
                if locked.source_first {
                    tracing::warn!(client = %from.remote.ip(), "too many failed logins from this address: its requests are refused unchecked for a growing backoff");
                }
                if locked.user_first {
                    tracing::warn!(user = %username, "too many failed logins for this username: its requests are refused unchecked for a growing backoff");
                }
                tracing::info!(client = %from.remote, user = %username, reason = why.label(), "authentication failed (401)");
                if !self.limiter.allow(from.remote.ip(), now) {
                    self.stats.rate_limited += 1;
                    return Authed::Reply(None);
                }
                Authed::Reply(self.challenge(from, method, txid, ErrorCode::Unauthenticated, now))
            }
        }
    }

    /// 401 or 438 with REALM and a fresh NONCE (never signed).
    fn challenge(
        &mut self,
        from: FiveTuple,
        method: u16,
        txid: [u8; 12],
        code: ErrorCode,
        now: Instant,
    ) -> Option<usize> {
        let nonce = self.nonces.issue(from.remote, now);
        let mut attrs: Vec<StunAttribute> = Vec::new();
        if let Ok(r) = Realm::new(self.auth.realm()) {
            attrs.push(r.into());
        }
        if let Ok(n) = Nonce::new(nonce) {
            attrs.push(n.into());
        }
        self.error(method, txid, code, None, attrs)
    }

    /// Authenticates a request on an existing allocation: 437 without one, 441 for another user.
    fn authed_allocation(
        &mut self,
        from: FiveTuple,
        packet: &[u8],
        msg: &StunMessage,
        now: Instant,
    ) -> Result<(RelayId, UserKey, IntegrityKind), Option<usize>> {
        let method = msg.method().as_u16();
        let txid = *msg.transaction_id().as_bytes();
        let (user, kind) = match self.authenticate(from, packet, msg, now) {
            Authed::Ok(u, k) => (u, k),
            Authed::Reply(r) => return Err(r),
        };
        let Some(relay) = self.allocs.relay_of_client(&from) else {
            return Err(self.error(method, txid, ErrorCode::AllocationMismatch, Some((&user, kind)), vec![]));
        };
        if self.allocs.get(relay).is_some_and(|a| a.user.username != user.username) {
            return Err(self.error(method, txid, ErrorCode::WrongCredentials, Some((&user, kind)), vec![]));
        }
        Ok((relay, user, kind))
    }

    fn allocate(&mut self, from: FiveTuple, packet: &[u8], msg: &StunMessage, now: Instant) -> Option<usize> {
        let method = ALLOCATE.as_u16();
        let txid = *msg.transaction_id().as_bytes();
        let (user, kind) = match self.authenticate(from, packet, msg, now) {
            Authed::Ok(u, k) => (u, k),
            Authed::Reply(r) => return r,
        };
        let signed = Some((&user, kind));
        if let Some(a) = self.allocs.by_client_mut(&from) {
            if a.transaction == txid && a.user.username == user.username {
                // A retransmission of the Allocate that made it: the same answer (RFC 8656 §7.2).
                let (relayed, left) = (a.relayed, a.expires.saturating_duration_since(now).as_secs() as u32);
                let attrs = vec![
                    XorRelayedAddress::from(relayed).into(),
                    LifeTime::new(left).into(),
                    XorMappedAddress::from(from.remote).into(),
                ];
                return self.success(ALLOCATE, txid, attrs, signed);
            }
            let code = if a.user.username != user.username {
                ErrorCode::WrongCredentials
            } else {
                ErrorCode::AllocationMismatch
            };
            return self.error(method, txid, code, signed, vec![]);
        }
        let Some(transport) = msg.attributes().iter().find_map(|a| a.as_requested_trasport().ok()) else {
            return self.error(method, txid, ErrorCode::BadRequest, signed, vec![]);
        };
        if transport.protocol() != stun_rs::protocols::UDP {
            return self.error(method, txid, ErrorCode::UnsupportedTransportProtocol, signed, vec![]);
        }
        let family = match msg.attributes().iter().find_map(|a| a.as_requested_address_family().ok()) {
            Some(f) if f.family() == AddressFamily::IPv6 => Family::V6,
            _ => Family::V4,
        };
        if self.draining {
            tracing::info!(client = %from.remote, "draining: new allocation refused");
            return match self.cfg.alternate_server {
                Some(alt) => {
                    self.error(method, txid, ErrorCode::TryAlternate, signed, vec![AlternateServer::from(alt).into()])
                }
                None => self.error(method, txid, ErrorCode::InsufficientCapacity, signed, vec![]),
            };
        }
        if self.allocs.user_count(&user.username) >= self.cfg.user_quota {
            tracing::info!(user = %user.username, "allocation quota reached (486)");
            return self.error(method, txid, ErrorCode::AllocationQuotaReached, signed, vec![]);
        }
        if self.cfg.source_quota > 0 && self.allocs.source_count(from.remote.ip()) >= self.cfg.source_quota {
            self.stats.source_quota_reached += 1;
            tracing::debug!(client = %from.remote.ip(), user = %user.username, "allocation quota per source address reached (486)");
            return self.error(method, txid, ErrorCode::AllocationQuotaReached, signed, vec![]);
        }
        if self.allocs.len() >= self.cfg.max_allocations {
            tracing::warn!(max = self.cfg.max_allocations, "relay full: --max-allocations reached (508)");
            return self.error(method, txid, ErrorCode::InsufficientCapacity, signed, vec![]);
        }
        let requested = msg.attributes().iter().find_map(|a| a.as_life_time().ok()).map(|l| l.as_u32());
        let lifetime = granted_lifetime(requested.filter(|s| *s > 0), self.cfg.max_lifetime);
        let (relay, bound) = match self.ports.open(family) {
            Ok(r) => r,
            Err(RelayOpenError::FamilyNotServed) => {
                return self.error(method, txid, ErrorCode::AddressFamilyNotSupported, signed, vec![]);
            }
            Err(e) => {
                tracing::warn!("cannot open a relayed socket: {e} (508)");
                return self.error(method, txid, ErrorCode::InsufficientCapacity, signed, vec![]);
            }
        };
        let relayed = match self.cfg.external_ip {
            Some(ip) if ip.is_ipv4() == bound.is_ipv4() => SocketAddr::new(ip, bound.port()),
            _ => bound,
        };
        tracing::info!(client = %from.remote, transport = %from.transport, %relayed, user = %user.username, lifetime_s = lifetime.as_secs(), "allocation created");
        let attrs = vec![
            XorRelayedAddress::from(relayed).into(),
            LifeTime::new(lifetime.as_secs() as u32).into(),
            XorMappedAddress::from(from.remote).into(),
        ];
        let reply = self.success(ALLOCATE, txid, attrs, signed);
        self.allocs.insert(Allocation {
            client: from,
            relay,
            relayed,
            bound,
            user,
            integrity: kind,
            expires: now + lifetime,
            permissions: Default::default(),
            channels: Default::default(),
            transaction: txid,
        });
        self.stats.allocations_created += 1;
        reply
    }

    fn refresh(&mut self, from: FiveTuple, packet: &[u8], msg: &StunMessage, now: Instant) -> Option<usize> {
        let txid = *msg.transaction_id().as_bytes();
        let (relay, user, kind) = match self.authed_allocation(from, packet, msg, now) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let requested = msg.attributes().iter().find_map(|a| a.as_life_time().ok()).map(|l| l.as_u32());
        let lifetime = granted_lifetime(requested, self.cfg.max_lifetime);
        if lifetime.is_zero() {
            if let Some(a) = self.allocs.remove(relay) {
                tracing::info!(client = %from.remote, relayed = %a.relayed, "allocation deleted by the client");
                self.ports.close(relay);
                self.stats.allocations_deleted += 1;
            }
        } else if let Some(a) = self.allocs.get_mut(relay) {
            a.expires = now + lifetime;
        }
        self.stats.refreshes += 1;
        self.success(REFRESH, txid, vec![LifeTime::new(lifetime.as_secs() as u32).into()], Some((&user, kind)))
    }

    /// Checks family and policy for each peer; 443 or 403 on the first bad one.
    fn check_peers(
        &mut self,
        from: FiveTuple,
        relay: RelayId,
        peers: &[SocketAddr],
        what: &str,
    ) -> Result<(), ErrorCode> {
        let relayed = self.allocs.get(relay).map(|a| a.relayed);
        for &peer in peers {
            if relayed.is_some_and(|r| r.is_ipv4() != peer.is_ipv4()) {
                return Err(ErrorCode::PeerAddressFamilyMismatch);
            }
            let allocs = &self.allocs;
            let verdict = match self.policy.check(peer, |a| allocs.relay_at(a).is_some()) {
                Verdict::Allow if allocs.recently_freed(peer) => Verdict::Refuse(Refusal::OwnAddress),
                v => v,
            };
            if let Verdict::Refuse(why) = verdict {
                self.refused(from, peer, why, what);
                return Err(ErrorCode::Forbidden);
            }
        }
        Ok(())
    }

    fn create_permission(&mut self, from: FiveTuple, packet: &[u8], msg: &StunMessage, now: Instant) -> Option<usize> {
        let method = CREATE_PERMMISSION.as_u16();
        let txid = *msg.transaction_id().as_bytes();
        let (relay, user, kind) = match self.authed_allocation(from, packet, msg, now) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let signed = Some((&user, kind));
        let peers: Vec<SocketAddr> =
            msg.attributes().iter().filter_map(|a| a.as_xor_peer_address().ok()).map(|p| *p.socket_address()).collect();
        if peers.is_empty() {
            return self.error(method, txid, ErrorCode::BadRequest, signed, vec![]);
        }
        if let Err(code) = self.check_peers(from, relay, &peers, "CreatePermission") {
            return self.error(method, txid, code, signed, vec![]);
        }
        let max = self.cfg.max_permissions;
        let ips: Vec<IpAddr> = peers.iter().map(|p| p.ip()).collect();
        let a = self.allocs.get_mut(relay)?;
        if !a.permissions.room_for(&ips, now, max) {
            return self.error(method, txid, ErrorCode::InsufficientCapacity, signed, vec![]);
        }
        for ip in ips {
            let _ = a.permissions.install(ip, now, max);
        }
        self.stats.permissions_created += 1;
        self.success(CREATE_PERMMISSION, txid, vec![], signed)
    }

    fn channel_bind(&mut self, from: FiveTuple, packet: &[u8], msg: &StunMessage, now: Instant) -> Option<usize> {
        let method = CHANNEL_BIND.as_u16();
        let txid = *msg.transaction_id().as_bytes();
        let (relay, user, kind) = match self.authed_allocation(from, packet, msg, now) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let signed = Some((&user, kind));
        let number = msg.attributes().iter().find_map(|a| a.as_channel_number().ok()).map(|c| c.number());
        let peer = msg.attributes().iter().find_map(|a| a.as_xor_peer_address().ok()).map(|p| *p.socket_address());
        let (Some(number), Some(peer)) = (number, peer) else {
            return self.error(method, txid, ErrorCode::BadRequest, signed, vec![]);
        };
        if let Err(code) = self.check_peers(from, relay, &[peer], "ChannelBind") {
            return self.error(method, txid, code, signed, vec![]);
        }
        let (max_p, max_c) = (self.cfg.max_permissions, self.cfg.max_channels);
        let a = self.allocs.get_mut(relay)?;
        if !a.permissions.room_for(&[peer.ip()], now, max_p) {
            return self.error(method, txid, ErrorCode::InsufficientCapacity, signed, vec![]);
        }
        match a.channels.bind(number, peer, now, max_c) {
            Ok(()) => {}
            Err(BindError::Full) => return self.error(method, txid, ErrorCode::InsufficientCapacity, signed, vec![]),
            Err(why) => {
                tracing::debug!(client = %from.remote, ?why, "ChannelBind refused (400)");
                return self.error(method, txid, ErrorCode::BadRequest, signed, vec![]);
            }
        }
        let _ = a.permissions.install(peer.ip(), now, max_p);
        self.stats.channels_bound += 1;
        self.success(CHANNEL_BIND, txid, vec![], signed)
    }

    fn success(
        &mut self,
        method: MessageMethod,
        txid: [u8; 12],
        attrs: Vec<StunAttribute>,
        signed: Option<(&UserKey, IntegrityKind)>,
    ) -> Option<usize> {
        let builder = StunMessageBuilder::new(method, MessageClass::SuccessResponse);
        self.encode(builder, txid, attrs, signed, true)
    }

    fn error(
        &mut self,
        method: u16,
        txid: [u8; 12],
        code: ErrorCode,
        signed: Option<(&UserKey, IntegrityKind)>,
        mut attrs: Vec<StunAttribute>,
    ) -> Option<usize> {
        self.stats.errors_sent[code.index()] += 1;
        let e = stun_rs::ErrorCode::new(code.code(), code.reason()).ok()?;
        attrs.insert(0, ErrorCodeAttr::from(e).into());
        let method = MessageMethod::try_from(method).ok()?;
        let builder = StunMessageBuilder::new(method, MessageClass::ErrorResponse);
        // No SOFTWARE in errors: a 401 challenge is what an amplification attack
        // gets back, so it carries only what the client needs (RFC 8489 §14.14: MAY).
        self.encode(builder, txid, attrs, signed, false)
    }

    fn encode(
        &mut self,
        mut b: StunMessageBuilder,
        txid: [u8; 12],
        attrs: Vec<StunAttribute>,
        signed: Option<(&UserKey, IntegrityKind)>,
        software: bool,
    ) -> Option<usize> {
        b = b.with_transaction_id(TransactionId::from(txid));
        for a in attrs {
            b = b.with_attribute(a);
        }
        if software && let Ok(s) = Software::new(&self.cfg.software) {
            b = b.with_attribute(s);
        }
        self.reply_signed = signed.is_some();
        if let Some((user, kind)) = signed {
            match HMACKey::new_long_term(
                &user.username,
                self.auth.realm(),
                &user.password,
                Algorithm::from(AlgorithmId::MD5),
            ) {
                Ok(key) => {
                    b = match kind {
                        IntegrityKind::Sha1 => b.with_attribute(MessageIntegrity::new(key)),
                        IntegrityKind::Sha256 => b.with_attribute(MessageIntegritySha256::new(key)),
                    }
                }
                Err(e) => tracing::debug!("cannot sign the answer for {}: {e:?}", user.username),
            }
        }
        if std::mem::take(&mut self.reply_fingerprint) {
            b = b.with_attribute(Fingerprint::default());
        }
        let encoder = MessageEncoderBuilder::default().build();
        match encoder.encode(&mut self.scratch, &b.build()) {
            Ok(n) if n >= HEADER_LEN => Some(n),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("encoding an answer failed: {e:?}");
                None
            }
        }
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
