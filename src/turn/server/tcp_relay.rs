//! TCP allocations (RFC 6062): the core's side of relaying TCP between a
//! client and its peers. It decides, the driver does the I/O:
//!
//! - §5.1 an Allocate with REQUESTED-TRANSPORT=TCP over a TCP or TLS control
//!   connection gets a relayed TCP address (the driver listens there);
//! - §5.2 Connect: the peer goes through the same policy as CreatePermission
//!   (403 with the same reasons), except that only a TCP allocation's relayed
//!   address counts as inside the relay (a Connect is a real TCP connection:
//!   to a UDP allocation's address it would reach the host's own TCP port),
//!   and needs a permission; the core names the
//!   new connection with a CONNECTION-ID and asks the driver to connect
//!   ([`TcpEffect::Connect`]); the answer (success with CONNECTION-ID, or 447)
//!   goes out when the driver reports back ([`Server::tcp_connect_result`]);
//!   446 while a connection to that peer exists or is being made;
//! - §5.3 a peer that connects to the relayed address is announced to the
//!   client in a ConnectionAttempt indication if it has a permission, and
//!   closed at once otherwise ([`Server::tcp_peer_arrived`]);
//! - §5.4 ConnectionBind on a new connection from the client binds it to a
//!   connection id ([`TcpEffect::Bind`]); from then on the driver copies raw
//!   bytes between it and the peer connection; an unknown id is 400;
//! - §5.3/§5.4 a connection id that is not bound within 30 s (a flag) is
//!   closed ([`TcpEffect::Close`]) and counted.
//!
//! Limits: the connections of one allocation (waiting and bound) are capped
//! (`max_per_allocation`, 508 beyond it); the allocation quotas, per-source
//! quota and drain of UDP allocations apply unchanged; the driver holds a
//! connection-limiter slot for every peer connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use stun_rs::attributes::turn::XorPeerAddress;
use stun_rs::{MessageClass, MessageMethod, StunMessageBuilder, TransactionId};

use super::auth::{IntegrityKind, UserKey};
use super::nonce::NonceCheck;
use super::requests::{Authed, Incoming, OnAllocation, PeerPath};
use super::{ErrorCode, FiveTuple, RelayId, Server, Target, Transmit};
use crate::net::transport::Transport;
use crate::turn::rfc6062;

/// A peer connection of a TCP allocation (RFC 6062 §6.2 CONNECTION-ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u32);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{:08x}", self.0)
    }
}

/// RFC 6062 §5.3, §5.4: a connection id waits this long for its ConnectionBind.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// The TCP relaying limits (each a `natkit relay` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRelayConfig {
    /// Peer connections (being made, waiting for ConnectionBind, or bound) per allocation.
    pub max_per_allocation: usize,
    /// How long a connection id waits for its ConnectionBind.
    pub bind_timeout: Duration,
}

impl Default for TcpRelayConfig {
    fn default() -> Self {
        TcpRelayConfig { max_per_allocation: 32, bind_timeout: BIND_TIMEOUT }
    }
}

/// What the core asks the driver to do with TCP connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpEffect {
    /// Open a TCP connection from the relayed address `local` to `peer` and
    /// report how it went with [`Server::tcp_connect_result`].
    Connect { id: ConnectionId, local: SocketAddr, peer: SocketAddr },
    /// The client's connection `data` (which just got its ConnectionBind
    /// answer) now carries the bytes of `id`'s peer connection, raw.
    Bind { id: ConnectionId, data: FiveTuple },
    /// Close `id`'s peer connection, and its data connection if bound.
    Close { id: ConnectionId, why: CloseReason },
}

/// Why the core closed a connection; also the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// No ConnectionBind in time.
    BindTimeout,
    /// The allocation ended.
    AllocationEnded,
}

/// Why an inbound peer connection was refused (closed at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundRefusal {
    /// No TCP allocation at that relayed address.
    NoAllocation,
    /// The allocation has no permission for the peer's IP.
    NoPermission,
    /// The allocation holds `max_per_allocation` connections.
    Quota,
}

/// Counters of TCP relaying (served as Prometheus metrics).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TcpStats {
    pub allocations_created: u64,
    pub connects: u64,
    /// Connect answered 447: the peer could not be reached.
    pub connect_failed: u64,
    /// Connect refused for the per-allocation cap (508).
    pub quota_refused: u64,
    /// Connect refused 446: a connection to that peer exists.
    pub already_exists: u64,
    /// Connect refused 403 because the peer had no permission.
    pub no_permission: u64,
    pub inbound_accepted: u64,
    /// Inbound peer connections closed at once: no permission (or no allocation, or the cap).
    pub inbound_refused: u64,
    pub binds: u64,
    /// ConnectionBind with an id that is unknown, already bound, or another user's.
    pub bind_unknown: u64,
    pub bind_timeouts: u64,
}

#[derive(Debug)]
enum State {
    /// The driver is connecting; the Connect request is answered when it reports.
    Connecting {
        txid: [u8; 12],
        user: UserKey,
        kind: IntegrityKind,
        fingerprint: bool,
    },
    AwaitingBind {
        deadline: Instant,
    },
    Bound,
}

#[derive(Debug)]
struct Conn {
    relay: RelayId,
    peer: SocketAddr,
    state: State,
}

/// TCP allocations and their peer connections.
#[derive(Debug, Default)]
pub(super) struct TcpRelay {
    cfg: TcpRelayConfig,
    allocations: HashSet<RelayId>,
    conns: HashMap<ConnectionId, Conn>,
    effects: VecDeque<TcpEffect>,
    stats: TcpStats,
}

impl TcpRelay {
    pub(super) fn new(cfg: TcpRelayConfig) -> TcpRelay {
        TcpRelay { cfg, ..Default::default() }
    }

    pub(super) fn is_tcp(&self, relay: RelayId) -> bool {
        self.allocations.contains(&relay)
    }

    pub(super) fn allocated(&mut self, relay: RelayId) {
        self.allocations.insert(relay);
        self.stats.allocations_created += 1;
    }

    fn count_of(&self, relay: RelayId) -> usize {
        self.conns.values().filter(|c| c.relay == relay).count()
    }

    /// A fresh random id (not guessable from another client's), never 0.
    fn new_id(&self) -> ConnectionId {
        loop {
            let id = ConnectionId(rand::random::<u32>());
            if id.0 != 0 && !self.conns.contains_key(&id) {
                return id;
            }
        }
    }

    fn close(&mut self, id: ConnectionId, why: CloseReason) {
        if self.conns.remove(&id).is_some() {
            self.effects.push_back(TcpEffect::Close { id, why });
        }
    }
}

impl Server {
    /// What the driver must do next about TCP connections, if anything.
    pub fn poll_tcp_effect(&mut self) -> Option<TcpEffect> {
        self.tcp.effects.pop_front()
    }

    pub fn tcp_stats(&self) -> &TcpStats {
        &self.tcp.stats
    }

    /// TCP allocations alive now.
    pub fn tcp_allocations(&self) -> usize {
        self.tcp.allocations.len()
    }

    /// Peer connections the core knows now (being made, waiting for a bind, or bound).
    pub fn tcp_connections(&self) -> usize {
        self.tcp.conns.len()
    }

    /// Whether `relay` relays TCP.
    pub fn is_tcp_allocation(&self, relay: RelayId) -> bool {
        self.tcp.is_tcp(relay)
    }

    /// Closes what outlived its allocation, and ids that waited too long for a bind.
    pub(super) fn tcp_sweep(&mut self, now: Instant) {
        let allocs = &self.allocs;
        self.tcp.allocations.retain(|r| allocs.get(*r).is_some());
        let mut closing = Vec::new();
        for (id, c) in &self.tcp.conns {
            if !self.tcp.allocations.contains(&c.relay) {
                closing.push((*id, CloseReason::AllocationEnded));
            } else if let State::AwaitingBind { deadline } = c.state
                && deadline <= now
            {
                closing.push((*id, CloseReason::BindTimeout));
            }
        }
        for (id, why) in closing {
            if why == CloseReason::BindTimeout {
                self.tcp.stats.bind_timeouts += 1;
                tracing::info!(%id, "no ConnectionBind within {:?}: peer connection closed", self.tcp.cfg.bind_timeout);
            }
            self.tcp.close(id, why);
        }
    }

    /// The driver's peer or data connection of `id` ended: the other one goes too.
    pub fn tcp_connection_closed(&mut self, id: ConnectionId) {
        self.tcp.conns.remove(&id);
    }

    /// RFC 6062 §5.2: Connect on a TCP allocation.
    pub(super) fn connect(&mut self, req: &Incoming, on: OnAllocation) -> Option<usize> {
        let Incoming { from, msg, now, method, txid, .. } = *req;
        let OnAllocation { relay, user, kind } = on;
        let signed = Some((&user, kind));
        if !self.tcp.is_tcp(relay) {
            return self.error_with_reason(
                method,
                txid,
                ErrorCode::BadRequest,
                "Connect needs a TCP allocation",
                signed,
                vec![],
            );
        }
        let Some(peer) =
            msg.attributes().iter().find_map(|a| a.as_xor_peer_address().ok()).map(|p| *p.socket_address())
        else {
            return self.error(method, txid, ErrorCode::BadRequest, signed, vec![]);
        };
        if let Err(refused) = self.check_peers(from, relay, &[peer], "Connect", PeerPath::TcpConnect) {
            return self.error_with_reason(method, txid, refused.code(), refused.reason(), signed, vec![]);
        }
        let a = self.allocs.get(relay)?;
        let local = a.bound;
        if !a.permissions.allows(peer.ip(), now) {
            self.tcp.stats.no_permission += 1;
            let reason = "Forbidden: no permission for this peer (send CreatePermission first)";
            return self.error_with_reason(method, txid, ErrorCode::Forbidden, reason, signed, vec![]);
        }
        if self.tcp.conns.values().any(|c| c.relay == relay && c.peer == peer) {
            self.tcp.stats.already_exists += 1;
            return self.error(method, txid, ErrorCode::ConnectionAlreadyExists, signed, vec![]);
        }
        if self.tcp.count_of(relay) >= self.tcp.cfg.max_per_allocation {
            self.tcp.stats.quota_refused += 1;
            tracing::info!(client = %from.remote, max = self.tcp.cfg.max_per_allocation, "TCP connection cap of an allocation reached (508)");
            let reason = "Insufficient Capacity: TCP connection limit of this allocation reached";
            return self.error_with_reason(method, txid, ErrorCode::InsufficientCapacity, reason, signed, vec![]);
        }
        let id = self.tcp.new_id();
        let fingerprint = self.reply_fingerprint;
        self.reply_fingerprint = false;
        self.tcp.conns.insert(id, Conn { relay, peer, state: State::Connecting { txid, user, kind, fingerprint } });
        self.tcp.effects.push_back(TcpEffect::Connect { id, local, peer });
        self.tcp.stats.connects += 1;
        // Answered when the driver reports the connection (tcp_connect_result).
        None
    }

    /// The driver's connection to the peer of `id` is up (`connected`) or
    /// failed: answers the Connect on the control connection, with
    /// CONNECTION-ID or 447. None when the allocation ended meanwhile (the
    /// driver then gets [`TcpEffect::Close`] for a connection it made).
    pub fn tcp_connect_result(&mut self, id: ConnectionId, connected: bool, now: Instant) -> Option<Transmit<'_>> {
        let c = self.tcp.conns.get_mut(&id)?;
        let relay = c.relay;
        let State::Connecting { txid, user, kind, fingerprint } =
            std::mem::replace(&mut c.state, State::AwaitingBind { deadline: now + self.tcp.cfg.bind_timeout })
        else {
            return None;
        };
        let Some(client) = self.allocs.get(relay).map(|a| a.client) else {
            self.tcp.close(id, CloseReason::AllocationEnded);
            return None;
        };
        let n = if connected {
            tracing::debug!(%id, peer = %c.peer, "connected to the peer");
            let mut msg = crate::stun::message::encode(
                &StunMessageBuilder::new(
                    MessageMethod::try_from(rfc6062::CONNECT).ok()?,
                    MessageClass::SuccessResponse,
                )
                .with_transaction_id(TransactionId::from(txid))
                .build(),
            );
            rfc6062::append_connection_id(&mut msg, id.0);
            rfc6062::finish(&mut msg, Some((&user.key, kind)), fingerprint);
            self.scratch.get_mut(..msg.len())?.copy_from_slice(&msg);
            msg.len()
        } else {
            self.tcp.conns.remove(&id);
            self.tcp.stats.connect_failed += 1;
            self.reply_fingerprint = fingerprint;
            self.error(rfc6062::CONNECT, txid, ErrorCode::ConnectionTimeoutOrFailure, Some((&user, kind)), vec![])?
        };
        Some(Transmit { target: Target::Client(client), payload: &self.scratch[..n] })
    }

    /// RFC 6062 §5.3: a peer connected to the relayed address of `relay`.
    /// With a permission for its IP it gets a connection id, announced to
    /// the client in a ConnectionAttempt indication; without, the driver
    /// closes it at once and it never sees a byte.
    pub fn tcp_peer_arrived(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<(ConnectionId, Transmit<'_>), InboundRefusal> {
        let refusal = match self.allocs.get(relay) {
            None => Some(InboundRefusal::NoAllocation),
            Some(_) if !self.tcp.is_tcp(relay) => Some(InboundRefusal::NoAllocation),
            Some(a) if !a.permissions.allows(peer.ip(), now) => Some(InboundRefusal::NoPermission),
            Some(_) if self.tcp.count_of(relay) >= self.tcp.cfg.max_per_allocation => Some(InboundRefusal::Quota),
            Some(_) => None,
        };
        if let Some(why) = refusal {
            self.tcp.stats.inbound_refused += 1;
            tracing::debug!(%peer, ?why, "inbound TCP peer connection refused");
            return Err(why);
        }
        let client = self.allocs.get(relay).map(|a| a.client).ok_or(InboundRefusal::NoAllocation)?;
        let id = self.tcp.new_id();
        self.tcp
            .conns
            .insert(id, Conn { relay, peer, state: State::AwaitingBind { deadline: now + self.tcp.cfg.bind_timeout } });
        self.tcp.stats.inbound_accepted += 1;
        let method = MessageMethod::try_from(rfc6062::CONNECTION_ATTEMPT).map_err(|_| InboundRefusal::NoAllocation)?;
        let mut msg = crate::stun::message::encode(
            &StunMessageBuilder::new(method, MessageClass::Indication)
                .with_transaction_id(TransactionId::from(crate::stun::message::new_transaction_id()))
                .with_attribute(XorPeerAddress::from(peer))
                .build(),
        );
        rfc6062::append_connection_id(&mut msg, id.0);
        let n = msg.len();
        self.scratch[..n].copy_from_slice(&msg);
        Ok((id, Transmit { target: Target::Client(client), payload: &self.scratch[..n] }))
    }

    /// RFC 6062 §5.4: ConnectionBind on a new connection from the client.
    pub(super) fn connection_bind(&mut self, req: &Incoming) -> Option<usize> {
        let Incoming { from, packet, msg, now, method, txid } = *req;
        if from.transport == Transport::Udp || self.allocs.relay_of_client(&from).is_some() {
            let reason = "Bad Request: ConnectionBind goes on a new TCP connection without an allocation";
            return self.error_with_reason(method, txid, ErrorCode::BadRequest, reason, None, vec![]);
        }
        let id = rfc6062::connection_id(packet).map(ConnectionId);
        // The nonce was most likely issued on the control connection (coturn's
        // client reuses it, and coturn accepts it): a nonce valid for the
        // control connection of the allocation that owns the id is accepted
        // as if issued here. The integrity check is unchanged.
        let control =
            id.and_then(|id| self.tcp.conns.get(&id)).and_then(|c| self.allocs.get(c.relay)).map(|a| a.client.remote);
        let nonce = msg.attributes().iter().find_map(|a| a.as_nonce().ok()).map(|n| n.as_str().to_string());
        let auth_from = match (control, nonce) {
            (Some(control), Some(nonce))
                if self.nonces.check(&nonce, from.remote, now) != NonceCheck::Valid
                    && self.nonces.check(&nonce, control, now) == NonceCheck::Valid =>
            {
                FiveTuple { remote: control, ..from }
            }
            _ => from,
        };
        let (user, kind) = match self.authenticate(auth_from, packet, msg, now) {
            Authed::Ok(u, k) => (u, k),
            Authed::Reply(r) => return r,
        };
        let signed = Some((&user, kind));
        let found = id.and_then(|id| {
            let c = self.tcp.conns.get(&id)?;
            let owner = &self.allocs.get(c.relay)?.user.username;
            (matches!(c.state, State::AwaitingBind { .. }) && *owner == user.username).then_some(id)
        });
        let Some(id) = found else {
            self.tcp.stats.bind_unknown += 1;
            tracing::info!(client = %from.remote, ?id, "ConnectionBind with an unknown connection id (400)");
            let reason = "Bad Request: unknown CONNECTION-ID";
            return self.error_with_reason(method, txid, ErrorCode::BadRequest, reason, signed, vec![]);
        };
        if let Some(c) = self.tcp.conns.get_mut(&id) {
            c.state = State::Bound;
        }
        self.tcp.stats.binds += 1;
        self.tcp.effects.push_back(TcpEffect::Bind { id, data: from });
        self.success(MessageMethod::try_from(method).ok()?, txid, vec![], signed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::UNIX_EPOCH;

    use stun_rs::attributes::stun::{Nonce, Realm, UserName};
    use stun_rs::attributes::turn::RequestedTrasport;
    use stun_rs::methods::{ALLOCATE, CREATE_PERMMISSION};
    use stun_rs::{StunAttribute, StunMessage};

    use super::*;
    use crate::stun::message::decode;
    use crate::turn::server::peer_policy::PeerPolicyConfig;
    use crate::turn::server::{Family, RelayOpenError, RelayPorts, ServerConfig};

    /// Relayed sockets as ids only; remembers which were opened as TCP.
    #[derive(Default)]
    struct Ports {
        next: u64,
        tcp: Arc<Mutex<Vec<RelayId>>>,
    }

    impl RelayPorts for Ports {
        fn open(&mut self, _: Family) -> Result<(RelayId, SocketAddr), RelayOpenError> {
            self.next += 1;
            Ok((RelayId(self.next), SocketAddr::new("198.51.100.1".parse().unwrap(), 50_000 + self.next as u16)))
        }
        fn open_tcp(&mut self, f: Family) -> Result<(RelayId, SocketAddr), RelayOpenError> {
            let r = self.open(f)?;
            self.tcp.lock().unwrap().push(r.0);
            Ok(r)
        }
        fn close(&mut self, _: RelayId) {}
    }

    struct H {
        s: Server,
        now: Instant,
        nonce: String,
    }

    const PEER: &str = "203.0.113.50:7000";

    fn tcp_client(port: u16) -> FiveTuple {
        FiveTuple {
            transport: Transport::Tcp,
            local: "198.51.100.1:3478".parse().unwrap(),
            remote: SocketAddr::new("203.0.113.10".parse().unwrap(), port),
        }
    }

    fn h(max: usize) -> H {
        let cfg = ServerConfig {
            realm: "lab".into(),
            users: HashMap::from([("alice".into(), "wonderland".into()), ("bob".into(), "builder".into())]),
            nonce_key: [9; 32],
            policy: PeerPolicyConfig {
                own_addresses: vec!["198.51.100.1:3478".parse().unwrap()],
                ..Default::default()
            },
            tcp: TcpRelayConfig { max_per_allocation: max, bind_timeout: Duration::from_secs(30) },
            ..ServerConfig::default()
        };
        let now = Instant::now();
        let s = Server::new(cfg, Box::new(Ports::default()), now, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        H { s, now, nonce: String::new() }
    }

    /// A request signed by hand (stun-rs can encode neither REQUESTED-TRANSPORT=TCP nor CONNECTION-ID).
    fn build(method: u16, attrs: Vec<StunAttribute>, user: &str, nonce: &str, conn: Option<u32>) -> Vec<u8> {
        let pass = if user == "alice" { "wonderland" } else { "builder" };
        let mut b = StunMessageBuilder::new(MessageMethod::try_from(method).unwrap(), MessageClass::Request)
            .with_transaction_id(TransactionId::from(crate::stun::message::new_transaction_id()));
        for a in attrs {
            b = b.with_attribute(a);
        }
        if !nonce.is_empty() {
            b = b
                .with_attribute(UserName::new(user).unwrap())
                .with_attribute(Realm::new("lab").unwrap())
                .with_attribute(Nonce::new(nonce).unwrap());
        }
        let mut m = crate::stun::message::encode(&b.build());
        if TCP.with(|t| t.get()) {
            rfc6062::set_requested_transport_tcp(&mut m);
        }
        if let Some(id) = conn {
            rfc6062::append_connection_id(&mut m, id);
        }
        let key = crate::turn::credentials::long_term_key(user, "lab", pass);
        let signed = (!nonce.is_empty()).then_some((&key[..], IntegrityKind::Sha1));
        rfc6062::finish(&mut m, signed, true);
        m
    }

    thread_local! {
        /// Whether `build` turns REQUESTED-TRANSPORT into TCP.
        static TCP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    impl H {
        fn send(&mut self, from: FiveTuple, bytes: &[u8]) -> Option<(Target, Vec<u8>)> {
            self.s.handle_client(from, bytes, self.now).map(|t| (t.target, t.payload.to_vec()))
        }

        fn answer(&mut self, from: FiveTuple, bytes: &[u8]) -> StunMessage {
            decode(&self.send(from, bytes).expect("an answer").1).expect("decodes")
        }

        fn allocate(&mut self, from: FiveTuple, protocol: u8) -> StunMessage {
            TCP.with(|t| t.set(protocol == rfc6062::PROTOCOL_TCP));
            let t: StunAttribute = RequestedTrasport::new(stun_rs::protocols::UDP).into();
            let challenge = self.answer(from, &build(ALLOCATE.as_u16(), vec![t.clone()], "alice", "", None));
            self.nonce = challenge.attributes().iter().find_map(|a| a.as_nonce().ok()).unwrap().as_str().to_string();
            let nonce = self.nonce.clone();
            let m = self.answer(from, &build(ALLOCATE.as_u16(), vec![t], "alice", &nonce, None));
            TCP.with(|t| t.set(false));
            m
        }

        fn permit(&mut self, from: FiveTuple, peer: &str) {
            let p: StunAttribute = XorPeerAddress::from(peer.parse::<SocketAddr>().unwrap()).into();
            let nonce = self.nonce.clone();
            let m = self.answer(from, &build(CREATE_PERMMISSION.as_u16(), vec![p], "alice", &nonce, None));
            assert_eq!(m.class(), MessageClass::SuccessResponse);
        }

        fn connect(&mut self, from: FiveTuple, peer: &str) -> Option<StunMessage> {
            let p: StunAttribute = XorPeerAddress::from(peer.parse::<SocketAddr>().unwrap()).into();
            let nonce = self.nonce.clone();
            self.send(from, &build(rfc6062::CONNECT, vec![p], "alice", &nonce, None))
                .map(|(_, b)| decode(&b).expect("decodes"))
        }

        /// A TCP allocation on `c` with a permission for [`PEER`] and one Connect toward it, whose
        /// peer connection the driver is now opening: its id.
        fn connecting(&mut self, c: FiveTuple) -> ConnectionId {
            self.allocate(c, rfc6062::PROTOCOL_TCP);
            self.permit(c, PEER);
            assert!(self.connect(c, PEER).is_none(), "no answer before the peer connection is up");
            let [TcpEffect::Connect { id, .. }] = self.effects()[..] else { panic!("one Connect effect") };
            id
        }

        /// ConnectionBind from `data` with a nonce of its own (401 first, as a careful client does).
        fn bind(&mut self, data: FiveTuple, user: &str, id: u32) -> StunMessage {
            let challenge = self.answer(data, &build(rfc6062::CONNECTION_BIND, vec![], user, "", Some(id)));
            assert_eq!(code(&challenge), Some(401));
            let nonce = challenge.attributes().iter().find_map(|a| a.as_nonce().ok()).unwrap().as_str().to_string();
            self.answer(data, &build(rfc6062::CONNECTION_BIND, vec![], user, &nonce, Some(id)))
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            self.s.handle_timeout(self.now);
        }

        fn effects(&mut self) -> Vec<TcpEffect> {
            std::iter::from_fn(|| self.s.poll_tcp_effect()).collect()
        }
    }

    fn code(m: &StunMessage) -> Option<u16> {
        m.attributes().iter().find_map(|a| a.as_error_code().ok()).map(|e| e.error_code().error_code())
    }

    fn reason(m: &StunMessage) -> String {
        m.attributes().iter().find_map(|a| a.as_error_code().ok()).map(|e| e.error_code().reason().to_string()).unwrap()
    }

    #[test]
    fn tcp_allocation_over_udp_is_refused_and_over_tcp_granted() {
        let mut h = h(4);
        let udp = FiveTuple { transport: Transport::Udp, ..tcp_client(1000) };
        let m = h.allocate(udp, rfc6062::PROTOCOL_TCP);
        assert_eq!(code(&m), Some(400), "RFC 6062 §5.1: TCP relaying needs a TCP or TLS control connection");
        let m = h.allocate(tcp_client(1000), rfc6062::PROTOCOL_TCP);
        assert_eq!(m.class(), MessageClass::SuccessResponse);
        assert_eq!(h.s.tcp_allocations(), 1);
        let m = h.allocate(tcp_client(1001), 17);
        assert_eq!(m.class(), MessageClass::SuccessResponse, "a UDP allocation over TCP still works");
        assert_eq!(h.s.tcp_allocations(), 1);
    }

    #[test]
    fn channel_bind_on_a_tcp_allocation_is_403_as_coturn_answers_and_binds_nothing() {
        let mut h = h(4);
        let c = tcp_client(1000);
        h.allocate(c, rfc6062::PROTOCOL_TCP);
        h.permit(c, PEER);
        let ch: StunAttribute = stun_rs::attributes::turn::ChannelNumber::new(0x4000).into();
        let p: StunAttribute = XorPeerAddress::from(PEER.parse::<SocketAddr>().unwrap()).into();
        let nonce = h.nonce.clone();
        let m = h.answer(
            c,
            &build(stun_rs::methods::CHANNEL_BIND.as_u16(), vec![ch.clone(), p.clone()], "alice", &nonce, None),
        );
        assert_eq!(code(&m), Some(403));
        assert!(reason(&m).contains("Connect"), "the 403 says what to use instead: {}", reason(&m));
        // The same request on a UDP allocation over TCP still binds.
        let u = tcp_client(1001);
        h.allocate(u, 17);
        h.permit(u, PEER);
        let nonce = h.nonce.clone();
        let m = h.answer(u, &build(stun_rs::methods::CHANNEL_BIND.as_u16(), vec![ch, p], "alice", &nonce, None));
        assert_eq!(m.class(), MessageClass::SuccessResponse, "{:?}", code(&m));
    }

    #[test]
    fn a_send_indication_on_a_tcp_allocation_is_dropped_and_counted_even_toward_another_allocation() {
        let mut h = h(4);
        let c = tcp_client(1000);
        // The relayed addresses (see `Ports`): the TCP allocation's is 50001, the UDP one's 50002.
        // Each client permits right after its Allocate: the nonce is per client.
        h.allocate(c, rfc6062::PROTOCOL_TCP);
        h.permit(c, "198.51.100.1:50002");
        let u = tcp_client(1001);
        h.allocate(u, 17);
        h.permit(u, "198.51.100.1:50001");
        let send = |peer: &str| {
            crate::stun::message::encode(
                &StunMessageBuilder::new(stun_rs::methods::SEND, MessageClass::Indication)
                    .with_transaction_id(TransactionId::from(crate::stun::message::new_transaction_id()))
                    .with_attribute(XorPeerAddress::from(peer.parse::<SocketAddr>().unwrap()))
                    .with_attribute(stun_rs::attributes::turn::Data::new(b"hello"))
                    .build(),
            )
        };
        let before = h.s.stats().dropped_total();
        assert!(h.send(c, &send("198.51.100.1:50002")).is_none(), "nothing reaches the other allocation");
        assert_eq!(h.s.stats().dropped_tcp_allocation, 1);
        assert_eq!(h.s.stats().dropped_total(), before + 1);
        // The UDP allocation's own Send to the TCP one's address is not this drop.
        h.send(u, &send("198.51.100.1:50001"));
        assert_eq!(h.s.stats().dropped_tcp_allocation, 1);
    }

    #[test]
    fn connect_needs_a_permission_and_passes_the_peer_policy() {
        let mut h = h(4);
        let c = tcp_client(1000);
        h.allocate(c, rfc6062::PROTOCOL_TCP);
        let m = h.connect(c, PEER).expect("answered at once");
        assert_eq!(code(&m), Some(403));
        assert!(reason(&m).contains("CreatePermission"), "{}", reason(&m));
        let m = h.connect(c, "127.0.0.1:7000").expect("answered at once");
        assert_eq!(code(&m), Some(403));
        assert!(reason(&m).to_lowercase().contains("loopback"), "{}", reason(&m));
        assert!(h.effects().is_empty(), "nothing was connected");
    }

    #[test]
    fn connect_is_answered_with_a_connection_id_once_the_driver_connected() {
        let mut h = h(4);
        let c = tcp_client(1000);
        h.allocate(c, rfc6062::PROTOCOL_TCP);
        h.permit(c, PEER);
        assert!(h.connect(c, PEER).is_none(), "no answer before the peer connection is up");
        let [TcpEffect::Connect { id, local, peer }] = h.effects()[..] else { panic!("one Connect effect") };
        assert_eq!(peer, PEER.parse().unwrap());
        assert_eq!(local.ip().to_string(), "198.51.100.1");
        // A second Connect to the same peer while the first is under way: 446.
        assert_eq!(code(&h.connect(c, PEER).unwrap()), Some(446));
        let now = h.now;
        let t = h.s.tcp_connect_result(id, true, now).expect("the Connect answer");
        assert_eq!(t.target, Target::Client(c));
        let bytes = t.payload.to_vec();
        assert_eq!(rfc6062::connection_id(&bytes), Some(id.0));
        assert_eq!(decode(&bytes).unwrap().class(), MessageClass::SuccessResponse);
        let key = crate::turn::credentials::long_term_key("alice", "lab", "wonderland");
        assert!(crate::turn::server::auth::verify_integrity(&bytes, &key).is_some(), "signed with the user's key");

        // ConnectionBind on a new connection binds it.
        let data = tcp_client(1002);
        let nonce = h.nonce.clone();
        let m = h.answer(data, &build(rfc6062::CONNECTION_BIND, vec![], "alice", &nonce, Some(id.0)));
        assert_eq!(m.class(), MessageClass::SuccessResponse, "{:?}", code(&m));
        assert_eq!(h.effects(), vec![TcpEffect::Bind { id, data }]);
        // Bound: the timeout no longer applies.
        h.advance(Duration::from_secs(60));
        assert!(h.effects().is_empty());
        assert_eq!(h.s.tcp_connections(), 1);
    }

    #[test]
    fn a_failed_connect_is_447() {
        let mut h = h(4);
        let c = tcp_client(1000);
        let id = h.connecting(c);
        let now = h.now;
        let bytes = h.s.tcp_connect_result(id, false, now).unwrap().payload.to_vec();
        assert_eq!(code(&decode(&bytes).unwrap()), Some(447));
        assert_eq!(h.s.tcp_connections(), 0);
        assert_eq!(h.s.tcp_stats().connect_failed, 1);
    }

    #[test]
    fn connection_bind_with_an_unknown_id_or_another_users_id_is_400() {
        let mut h = h(4);
        let c = tcp_client(1000);
        let id = h.connecting(c);
        let now = h.now;
        h.s.tcp_connect_result(id, true, now);
        let nonce = h.nonce.clone();
        assert_eq!(code(&h.bind(tcp_client(1003), "alice", id.0 ^ 1)), Some(400));
        assert_eq!(code(&h.bind(tcp_client(1004), "bob", id.0)), Some(400), "bob cannot take alice's connection");
        // On the control connection (it holds the allocation): 400 too.
        let m = h.answer(c, &build(rfc6062::CONNECTION_BIND, vec![], "alice", &nonce, Some(id.0)));
        assert_eq!(code(&m), Some(400));
        assert!(h.effects().is_empty());
        assert_eq!(h.s.tcp_stats().bind_unknown, 2);
    }

    #[test]
    fn an_unbound_connection_is_closed_at_the_bind_timeout_and_counted() {
        let mut h = h(4);
        let c = tcp_client(1000);
        let id = h.connecting(c);
        let now = h.now;
        h.s.tcp_connect_result(id, true, now);
        h.advance(Duration::from_secs(29));
        assert!(h.effects().is_empty());
        h.advance(Duration::from_secs(2));
        assert_eq!(h.effects(), vec![TcpEffect::Close { id, why: CloseReason::BindTimeout }]);
        assert_eq!(h.s.tcp_stats().bind_timeouts, 1);
        assert_eq!(code(&h.bind(tcp_client(1002), "alice", id.0)), Some(400), "a timed-out id is gone");
    }

    #[test]
    fn many_connects_hit_the_per_allocation_cap() {
        let mut h = h(3);
        let c = tcp_client(1000);
        h.allocate(c, rfc6062::PROTOCOL_TCP);
        h.permit(c, PEER);
        for port in 0..3 {
            assert!(h.connect(c, &format!("203.0.113.50:{}", 8000 + port)).is_none());
        }
        let m = h.connect(c, "203.0.113.50:9000").expect("refused at once");
        assert_eq!(code(&m), Some(508));
        assert_eq!(h.effects().len(), 3);
        assert_eq!(h.s.tcp_stats().quota_refused, 1);
    }

    #[test]
    fn an_inbound_peer_needs_a_permission_and_gets_a_connection_attempt() {
        let mut h = h(4);
        let c = tcp_client(1000);
        h.allocate(c, rfc6062::PROTOCOL_TCP);
        let now = h.now;
        let relay = RelayId(1);
        assert_eq!(h.s.tcp_peer_arrived(relay, PEER.parse().unwrap(), now).err(), Some(InboundRefusal::NoPermission));
        h.permit(c, PEER);
        let (id, t) = h.s.tcp_peer_arrived(relay, PEER.parse().unwrap(), now).expect("permitted");
        assert_eq!(t.target, Target::Client(c));
        let bytes = t.payload.to_vec();
        assert_eq!(rfc6062::connection_id(&bytes), Some(id.0));
        let m = decode(&bytes).unwrap();
        assert_eq!(m.class(), MessageClass::Indication);
        assert_eq!(m.method().as_u16(), rfc6062::CONNECTION_ATTEMPT);
        assert_eq!(h.s.tcp_stats().inbound_refused, 1);
        assert_eq!(
            h.s.tcp_peer_arrived(RelayId(99), PEER.parse().unwrap(), now).err(),
            Some(InboundRefusal::NoAllocation)
        );
    }

    #[test]
    fn connect_on_a_udp_allocation_is_400_and_ending_the_allocation_closes_its_connections() {
        let mut h = h(4);
        let u = tcp_client(2000);
        h.allocate(u, 17);
        h.permit(u, PEER);
        assert_eq!(code(&h.connect(u, PEER).unwrap()), Some(400));
        let c = tcp_client(1000);
        let id = h.connecting(c);
        h.s.client_closed(c);
        h.advance(Duration::from_secs(2));
        assert_eq!(h.effects(), vec![TcpEffect::Close { id, why: CloseReason::AllocationEnded }]);
        let now = h.now;
        assert!(h.s.tcp_connect_result(id, true, now).is_none());
        assert_eq!(h.s.tcp_allocations(), 0);
    }

    #[test]
    fn draining_refuses_new_tcp_allocations() {
        let mut h = h(4);
        h.s.start_draining();
        assert_eq!(code(&h.allocate(tcp_client(1000), rfc6062::PROTOCOL_TCP)), Some(508));
        assert_eq!(h.s.tcp_allocations(), 0);
    }
}
