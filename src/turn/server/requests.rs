//! TURN requests (RFC 8656 §7 Allocate and Refresh, §9 CreatePermission,
//! §11.2 ChannelBind) and the long-term credential check they all go
//! through (RFC 8489 §9.2.4), with the password-guessing throttle and the
//! 401 limiter in front of it. Answers are encoded into the core's scratch
//! buffer by [`super::encode`].

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use stun_rs::attributes::stun::{AlternateServer, Fingerprint, Nonce, Realm, XorMappedAddress};
use stun_rs::attributes::turn::{LifeTime, XorRelayedAddress};
use stun_rs::methods::{ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH};
use stun_rs::{AddressFamily, StunAttribute, StunMessage};

use super::allocation::{Allocation, granted_lifetime};
use super::auth::{self, AuthFailure, IntegrityKind, UserKey};
use super::channels::BindError;
use super::nonce::NonceCheck;
use super::peer_policy::{Refusal, Verdict};
use super::userdb::Checked;
use super::{ErrorCode, Family, FiveTuple, RelayId, RelayOpenError, Server};
use crate::net::transport::Transport;
use crate::turn::rfc6062;

/// The outcome of authenticating a request.
pub(super) enum Authed {
    Ok(UserKey, IntegrityKind),
    /// Answer with this (already encoded into scratch) or drop (None).
    Reply(Option<usize>),
}

/// One decoded request and what every handler needs of it.
#[derive(Clone, Copy)]
pub(super) struct Incoming<'a> {
    pub from: FiveTuple,
    pub packet: &'a [u8],
    pub msg: &'a StunMessage,
    pub now: Instant,
    pub method: u16,
    pub txid: [u8; 12],
}

/// A request authenticated as the owner of the client's allocation (see [`Server::on_allocation`]).
pub(super) struct OnAllocation {
    pub relay: RelayId,
    pub user: UserKey,
    pub kind: IntegrityKind,
}

impl OnAllocation {
    /// How answers to this request are signed.
    pub fn signed(&self) -> Option<(&UserKey, IntegrityKind)> {
        Some((&self.user, self.kind))
    }
}

/// The 403 reason for ChannelBind on an RFC 6062 TCP allocation: what to use instead.
const TCP_CHANNEL_REFUSED: &str =
    "ChannelBind cannot be used on a TCP allocation (RFC 6062): use Connect and ConnectionBind";

/// Why a peer in CreatePermission or ChannelBind was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerRefused {
    /// 443: the peer's family is not the relayed address's.
    FamilyMismatch,
    /// 403, with the policy's reason in the phrase.
    Policy(Refusal),
}

impl PeerRefused {
    pub(super) fn code(self) -> ErrorCode {
        match self {
            PeerRefused::FamilyMismatch => ErrorCode::PeerAddressFamilyMismatch,
            PeerRefused::Policy(_) => ErrorCode::Forbidden,
        }
    }

    pub(super) fn reason(self) -> &'static str {
        match self {
            PeerRefused::FamilyMismatch => ErrorCode::PeerAddressFamilyMismatch.reason(),
            PeerRefused::Policy(why) => why.reason(),
        }
    }
}

/// How the relay reaches the peer a request names; it decides which relayed
/// addresses of this relay count as "inside the relay" (policy step 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerPath {
    /// Datagrams (CreatePermission, ChannelBind, Send): to any live
    /// allocation's relayed address they are delivered inside the process.
    Datagrams,
    /// A TCP connection from the relayed address (RFC 6062 Connect): it goes
    /// through the kernel to that IP and port, where only a TCP allocation's
    /// relayed address is a listener of this relay. A UDP allocation's
    /// address is, over TCP, whatever the host runs on that port, so it is
    /// judged as the host address it is (loopback, the relay host, ...).
    TcpConnect,
}

impl Server {
    /// Answers a request into scratch; returns the length, or None to stay silent.
    pub(super) fn request(&mut self, from: FiveTuple, packet: &[u8], method: u16, now: Instant) -> Option<usize> {
        // The caller checked the header (`looks_like_stun`), so this is never None.
        let txid = crate::stun::message::transaction_id(packet)?;
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
        let req = Incoming { from, packet, msg: &msg, now, method, txid };
        match msg.method() {
            m if m == BINDING => self.binding(from, &msg),
            m if m == ALLOCATE => self.allocate(&req),
            m if m == REFRESH => self.on_allocation(&req, Self::refresh),
            m if m == CREATE_PERMMISSION => self.on_allocation(&req, Self::create_permission),
            m if m == CHANNEL_BIND => self.on_allocation(&req, Self::channel_bind),
            m if m.as_u16() == rfc6062::CONNECT => self.on_allocation(&req, Self::connect),
            m if m.as_u16() == rfc6062::CONNECTION_BIND => self.connection_bind(&req),
            _ => self.error(method, txid, ErrorCode::BadRequest, None, vec![]),
        }
    }

    /// RFC 8489 §9.2.4 in order: integrity present? username, realm, nonce
    /// present? realm ours? nonce fresh? user known? integrity right?
    pub(super) fn authenticate(&mut self, from: FiveTuple, packet: &[u8], msg: &StunMessage, now: Instant) -> Authed {
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
            match self.check_credentials(from, packet, &username, now) {
                Checked::Done(r) => r,
                // Waits for the user database; run again when it answers.
                Checked::Parked => return Authed::Reply(None),
                Checked::Unavailable => {
                    return Authed::Reply(self.error(method, txid, ErrorCode::ServerError, None, vec![]));
                }
            }
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
    pub(super) fn challenge(
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

    /// Authenticates a request on an existing allocation, then hands it to `handle`: 437
    /// without one, 441 for another user (RFC 8656 §6.2 for every request after Allocate).
    fn on_allocation(
        &mut self,
        req: &Incoming,
        handle: fn(&mut Self, &Incoming, OnAllocation) -> Option<usize>,
    ) -> Option<usize> {
        let Incoming { from, packet, msg, now, method, txid } = *req;
        let (user, kind) = match self.authenticate(from, packet, msg, now) {
            Authed::Ok(u, k) => (u, k),
            Authed::Reply(r) => return r,
        };
        let Some(relay) = self.allocs.relay_of_client(&from) else {
            return self.error(method, txid, ErrorCode::AllocationMismatch, Some((&user, kind)), vec![]);
        };
        if self.allocs.get(relay).is_some_and(|a| a.user.username != user.username) {
            return self.error(method, txid, ErrorCode::WrongCredentials, Some((&user, kind)), vec![]);
        }
        handle(self, req, OnAllocation { relay, user, kind })
    }

    fn allocate(&mut self, req: &Incoming) -> Option<usize> {
        let Incoming { from, packet, msg, now, method, txid } = *req;
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
        // RFC 6062 §5.1: TCP relaying only for a TCP or TLS control connection (400 otherwise).
        let relay_tcp = match transport.protocol().as_u8() {
            p if p == stun_rs::protocols::UDP.as_u8() => false,
            rfc6062::PROTOCOL_TCP if from.transport != Transport::Udp => true,
            rfc6062::PROTOCOL_TCP => {
                let reason = "Bad Request: TCP relaying needs a TCP or TLS connection to the server";
                return self.error_with_reason(method, txid, ErrorCode::BadRequest, reason, signed, vec![]);
            }
            _ => return self.error(method, txid, ErrorCode::UnsupportedTransportProtocol, signed, vec![]),
        };
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
            if let Some(n) = self.full_warning.due(now) {
                tracing::warn!(
                    max = self.cfg.max_allocations,
                    refused = n,
                    "relay full: --max-allocations reached (508; one line a minute at most, refused = Allocates since the last)"
                );
            }
            return self.error(method, txid, ErrorCode::InsufficientCapacity, signed, vec![]);
        }
        let requested = msg.attributes().iter().find_map(|a| a.as_life_time().ok()).map(|l| l.as_u32());
        let lifetime = granted_lifetime(requested.filter(|s| *s > 0), self.cfg.max_lifetime);
        let opened = if relay_tcp { self.ports.open_tcp(family) } else { self.ports.open(family) };
        let (relay, bound) = match opened {
            Ok(r) => r,
            Err(RelayOpenError::FamilyNotServed) => {
                return self.error(method, txid, ErrorCode::AddressFamilyNotSupported, signed, vec![]);
            }
            Err(e) => {
                if let Some(n) = self.no_socket_warning.due(now) {
                    tracing::warn!(
                        refused = n,
                        "cannot open a relayed socket: {e} (508; one line a minute at most, refused = Allocates since the last)"
                    );
                }
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
        if relay_tcp {
            self.tcp.allocated(relay);
        }
        reply
    }

    fn refresh(&mut self, req: &Incoming, on: OnAllocation) -> Option<usize> {
        let Incoming { from, msg, now, txid, .. } = *req;
        let relay = on.relay;
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
        self.success(REFRESH, txid, vec![LifeTime::new(lifetime.as_secs() as u32).into()], on.signed())
    }

    /// Checks family and policy for each peer; 443 or 403 on the first bad one.
    pub(super) fn check_peers(
        &mut self,
        from: FiveTuple,
        relay: RelayId,
        peers: &[SocketAddr],
        what: &str,
        path: PeerPath,
    ) -> Result<(), PeerRefused> {
        let relayed = self.allocs.get(relay).map(|a| a.relayed);
        for &peer in peers {
            if relayed.is_some_and(|r| r.is_ipv4() != peer.is_ipv4()) {
                return Err(PeerRefused::FamilyMismatch);
            }
            let (allocs, tcp) = (&self.allocs, &self.tcp);
            let inside = |a| allocs.relay_at(a).is_some_and(|r| path == PeerPath::Datagrams || tcp.is_tcp(r));
            let verdict = match self.policy.check(peer, inside) {
                Verdict::Allow if allocs.recently_freed(peer) => Verdict::Refuse(Refusal::OwnAddress),
                v => v,
            };
            if let Verdict::Refuse(why) = verdict {
                self.refused(from, peer, why, what);
                return Err(PeerRefused::Policy(why));
            }
        }
        Ok(())
    }

    fn create_permission(&mut self, req: &Incoming, on: OnAllocation) -> Option<usize> {
        let Incoming { from, msg, now, method, txid, .. } = *req;
        let (relay, signed) = (on.relay, on.signed());
        let peers: Vec<SocketAddr> =
            msg.attributes().iter().filter_map(|a| a.as_xor_peer_address().ok()).map(|p| *p.socket_address()).collect();
        if peers.is_empty() {
            return self.error(method, txid, ErrorCode::BadRequest, signed, vec![]);
        }
        if let Err(refused) = self.check_peers(from, relay, &peers, "CreatePermission", PeerPath::Datagrams) {
            return self.error_with_reason(method, txid, refused.code(), refused.reason(), signed, vec![]);
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

    fn channel_bind(&mut self, req: &Incoming, on: OnAllocation) -> Option<usize> {
        let Incoming { from, msg, now, method, txid, .. } = *req;
        let (relay, signed) = (on.relay, on.signed());
        // RFC 6062: a TCP allocation carries data only on the data connections
        // ConnectionBind makes; a channel on it would relay nothing. coturn
        // answers 403 here (checked in tests/relay_tcp.rs), and so does natkit.
        if self.tcp.is_tcp(relay) {
            return self.error_with_reason(method, txid, ErrorCode::Forbidden, TCP_CHANNEL_REFUSED, signed, vec![]);
        }
        let number = msg.attributes().iter().find_map(|a| a.as_channel_number().ok()).map(|c| c.number());
        let peer = msg.attributes().iter().find_map(|a| a.as_xor_peer_address().ok()).map(|p| *p.socket_address());
        let (Some(number), Some(peer)) = (number, peer) else {
            return self.error(method, txid, ErrorCode::BadRequest, signed, vec![]);
        };
        if let Err(refused) = self.check_peers(from, relay, &[peer], "ChannelBind", PeerPath::Datagrams) {
            return self.error_with_reason(method, txid, refused.code(), refused.reason(), signed, vec![]);
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
}
