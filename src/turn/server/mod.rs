//! The TURN server core (RFC 8656 on RFC 8489), the STUN Binding responder
//! and the RFC 5780 behaviour-discovery responder, as one sans-IO state
//! machine: this file holds the core type, its public entry points and the
//! dispatch of what arrives; each concern has its own file, the way
//! quinn-proto splits `connection/`:
//!
//! - [`data_path`]: ChannelData, Send/Data indications, peer datagrams (RFC 8656 §11, §12);
//! - [`requests`]: Allocate, Refresh, CreatePermission, ChannelBind and the
//!   credential check (RFC 8656 §7, §9, §11.2; RFC 8489 §9.2.4);
//! - [`binding`]: the Binding, RFC 5780 and RFC 3489 responder;
//! - [`encode`]: answers and error codes (RFC 8489 §14.8);
//! - [`tcp_relay`]: TCP allocations, Connect, ConnectionBind (RFC 6062);
//! - [`config`]: what the core is told at start;
//! - [`userdb`]: users from a shared database, cached, looked up as an effect.
//!
//! The driver owns every socket. It feeds the core what arrived — from a
//! client on a listener ([`Server::handle_client`]) or from a peer on a
//! relayed socket ([`Server::handle_peer`]) — with `now`, and sends the
//! [`Transmit`] it gets back: to a client through a listener, or to a peer
//! through a relayed socket named by a [`RelayId`]. It opens and closes
//! relayed sockets when the core asks through [`RelayPorts`], and calls
//! [`Server::handle_timeout`] at [`Server::poll_timeout`].
//!
//! The data path reads and writes the wire format by hand in place and never
//! allocates; requests go through stun-rs.

pub mod allocation;
pub mod auth;
mod binding;
pub mod channels;
pub mod classic;
mod config;
mod data_path;
mod encode;
pub mod fingerprint;
pub mod nonce;
pub mod peer_policy;
pub mod permissions;
mod requests;
pub mod stats;
pub mod tcp_relay;
pub mod throttle;
pub mod unauth_limit;
pub mod userdb;
pub mod warn_limit;
pub mod wire;

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::net::transport::Transport;
use crate::stun::message::looks_like_stun;
use allocation::Allocations;
use auth::{Authenticator, FailureLimiter};
pub use config::{Rfc5780, ServerConfig};
pub use encode::ErrorCode;
use fingerprint::FingerprintCheck;
use nonce::Nonces;
use peer_policy::{PeerPolicy, Refusal};
pub use stats::Stats;
use throttle::AuthThrottle;
use unauth_limit::UnauthLimit;
use userdb::UserDb;
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
    /// A relayed TCP address (RFC 6062 §5.1): the driver listens there for
    /// peers and connects to peers from there. Drivers without TCP relaying refuse.
    fn open_tcp(&mut self, _family: Family) -> Result<(RelayId, SocketAddr), RelayOpenError> {
        Err(RelayOpenError::Io("TCP relaying is not available here".into()))
    }
    fn close(&mut self, relay: RelayId);
}

/// How often the core sweeps expired allocations, permissions and channels.
/// Lifetimes are whole seconds, and every use checks expiry itself.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Scratch space for encoded answers and Data indications.
const SCRATCH: usize = 65_536 + 64;

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
    /// Users from a shared database (`--userdb`), when configured.
    userdb: Option<UserDb>,
    /// TCP allocations and their peer connections (RFC 6062).
    tcp: tcp_relay::TcpRelay,
    /// Allocates refused for a full relay, and for no relayed socket: warned about once a minute.
    full_warning: warn_limit::WarnLimit,
    no_socket_warning: warn_limit::WarnLimit,
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
        let userdb = cfg.userdb.map(UserDb::new);
        let tcp = tcp_relay::TcpRelay::new(cfg.tcp);
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
            userdb,
            tcp,
            full_warning: Default::default(),
            no_socket_warning: Default::default(),
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
        self.sweep_userdb(now);
        self.tcp_sweep(now);
    }

    /// A TCP or TLS client went away: its allocation goes with it (RFC 8656 §7).
    pub fn client_closed(&mut self, client: FiveTuple) {
        self.forget_parked(client);
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

    pub(super) fn refused(&mut self, from: FiveTuple, peer: SocketAddr, why: Refusal, what: &str) {
        self.stats.refusals[why.index()] += 1;
        tracing::info!(client = %from.remote, %peer, reason = %why, "{what} to a forbidden peer refused (403)");
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
