//! TURN client core (RFC 8656 §7–§12) as a sans-IO state machine.
//!
//! One `TurnClient` speaks to one server over one transport: it builds and
//! signs requests (long-term credentials, RFC 8489 §9.2), answers a 401
//! challenge by re-sending with credentials and a 438 by re-sending with the
//! fresh nonce, retransmits over UDP through [`ClientTransaction`], and turns
//! Data indications and ChannelData into [`Event::Data`]. The driver feeds it
//! received bytes and `now`, sends what `poll_transmit` yields and sleeps
//! until `poll_timeout`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_rs::attributes::stun::{Fingerprint, MessageIntegrity, Nonce, Realm, UserName};
use stun_rs::attributes::turn::{
    ChannelNumber, Data, LifeTime, RequestedAddressFamily, RequestedTrasport, XorPeerAddress,
};
use stun_rs::methods::{ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, DATA, REFRESH, SEND};
use stun_rs::{
    Algorithm, AlgorithmId, DecoderContextBuilder, HMACKey, MessageClass, MessageDecoderBuilder, MessageMethod,
    StunMessage, StunMessageBuilder, TransactionId,
};

use crate::stun::error_code::ErrorCode;
use crate::stun::message::{decode, encode, new_transaction_id};
use crate::stun::transaction::{ClientTransaction, Outcome, Reliability};
use crate::turn::channel_data;
use crate::turn::credentials::Credentials;
use crate::turn::rfc6062;
use crate::turn::server::Family;
use crate::turn::server::auth::IntegrityKind;

/// A request the client can make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Binding,
    /// RFC 8656 §7.1, for a relayed address of `family`: V6 is asked for with
    /// REQUESTED-ADDRESS-FAMILY; V4 sends none, the RFC's default (§7.2).
    Allocate {
        lifetime: Option<u32>,
        family: Family,
    },
    /// §7.2; lifetime 0 deletes the allocation.
    Refresh {
        lifetime: u32,
    },
    /// §9.1
    CreatePermission {
        peers: Vec<SocketAddr>,
    },
    /// §11.1
    ChannelBind {
        channel: u16,
        peer: SocketAddr,
    },
    /// RFC 6062 §4.1: an allocation relaying TCP (over a TCP or TLS connection only).
    AllocateTcp {
        lifetime: Option<u32>,
    },
    /// RFC 6062 §4.3: a TCP connection from the relayed address to `peer`; the
    /// success carries [`Success::connection_id`].
    Connect {
        peer: SocketAddr,
    },
    /// RFC 6062 §4.4: sent on a new connection, which then carries that peer connection's bytes raw.
    ConnectionBind {
        connection_id: u32,
    },
}

impl Request {
    fn method(&self) -> MessageMethod {
        match self {
            Request::Binding => BINDING,
            Request::Allocate { .. } => ALLOCATE,
            Request::Refresh { .. } => REFRESH,
            Request::CreatePermission { .. } => CREATE_PERMMISSION,
            Request::ChannelBind { .. } => CHANNEL_BIND,
            Request::AllocateTcp { .. } => ALLOCATE,
            Request::Connect { .. } => MessageMethod::try_from(rfc6062::CONNECT).unwrap_or(BINDING),
            Request::ConnectionBind { .. } => MessageMethod::try_from(rfc6062::CONNECTION_BIND).unwrap_or(BINDING),
        }
    }
}

/// Whether a request is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Sent without credentials, and a 401 is returned to the caller as is.
    Anonymous,
    /// Signed when realm and nonce are known; a 401 or 438 is answered by re-sending.
    Credentials,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// What a success response carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Success {
    pub relayed: Option<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    pub lifetime: Option<u32>,
    pub software: Option<String>,
    /// None: the response had no MESSAGE-INTEGRITY (or we had no key to check it).
    pub integrity_ok: Option<bool>,
    /// CONNECTION-ID of a Connect success (RFC 6062 §6.2).
    pub connection_id: Option<u32>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An error response (RFC 8489 §14.8, RFC 8656 §18).
    Error {
        code: ErrorCode,
        /// The server's reason phrase (it may say more than the code's name).
        reason: String,
    },
    TimedOut {
        sends: u32,
        elapsed: Duration,
    },
    /// The response could not be decoded, or the request could not be built.
    Malformed(String),
    /// The response's MESSAGE-INTEGRITY did not verify with our key.
    IntegrityFailed,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error { code, reason } => write!(f, "{code} {reason}"),
            Failure::TimedOut { sends, elapsed } => {
                write!(f, "no response after {sends} tries in {:.1} s", elapsed.as_secs_f64())
            }
            Failure::Malformed(m) => write!(f, "malformed response: {m}"),
            Failure::IntegrityFailed => f.write_str("the response's MESSAGE-INTEGRITY does not verify with our key"),
        }
    }
}

/// How data from a peer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    Indication,
    Channel(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Response {
        id: RequestId,
        result: Result<Success, Failure>,
        /// Round trip of the final exchange (Karn: from the latest send).
        rtt: Duration,
        /// 401/438 rounds answered by re-sending before this result.
        auth_retries: u8,
    },
    Data {
        peer: SocketAddr,
        data: Vec<u8>,
        path: DataPath,
    },
}

struct Pending {
    id: RequestId,
    request: Request,
    auth: Auth,
    tx: ClientTransaction,
    auth_retries: u8,
    signed: bool,
}

/// Settings fixed for the life of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub credentials: Option<Credentials>,
    pub reliability: Reliability,
    /// Each request gives up after this long, retransmissions included.
    pub request_timeout: Duration,
    /// Pad ChannelData to four bytes (TCP/TLS, RFC 8656 §12.5).
    pub pad_channel_data: bool,
}

pub struct TurnClient {
    cfg: ClientConfig,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<HMACKey>,
    pending: Vec<Pending>,
    outbox: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    next_id: u64,
    channels: HashMap<u16, SocketAddr>,
    /// 438 Stale Nonce answers seen.
    pub stale_nonces: u32,
    /// Datagrams dropped because they were neither a known response, an indication nor ChannelData.
    pub dropped: u32,
}

const MAX_AUTH_RETRIES: u8 = 2;

impl TurnClient {
    pub fn new(cfg: ClientConfig) -> Self {
        TurnClient {
            cfg,
            realm: None,
            nonce: None,
            key: None,
            pending: Vec::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 1,
            channels: HashMap::new(),
            stale_nonces: 0,
            dropped: 0,
        }
    }

    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// Replaces the nonce (e.g. to test whether an old one is still accepted).
    pub fn set_nonce(&mut self, nonce: String) {
        self.nonce = Some(nonce);
    }

    /// Takes the realm (and so the key) another client learned: a data connection of
    /// RFC 6062 signs its first ConnectionBind with the control connection's realm and
    /// nonce, since coturn closes a data connection whose first request is challenged.
    pub fn set_realm(&mut self, realm: String) {
        self.realm = Some(realm);
        self.refresh_key();
    }

    /// Starts a request; its result arrives as [`Event::Response`] with this id.
    pub fn request(&mut self, request: Request, auth: Auth, now: Instant) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.start(id, request, auth, 0, now);
        id
    }

    fn start(&mut self, id: RequestId, request: Request, auth: Auth, auth_retries: u8, now: Instant) {
        let tid = new_transaction_id();
        let sign = auth == Auth::Credentials && self.key.is_some();
        match self.encode_request(tid, &request, sign) {
            Ok(bytes) => {
                let tx = ClientTransaction::new(tid, bytes, self.cfg.reliability, now)
                    .with_deadline(now + self.cfg.request_timeout);
                self.pending.push(Pending { id, request, auth, tx, auth_retries, signed: sign });
            }
            Err(e) => self.events.push_back(Event::Response {
                id,
                result: Err(Failure::Malformed(e)),
                rtt: Duration::ZERO,
                auth_retries,
            }),
        }
    }

    fn encode_request(&self, tid: [u8; 12], request: &Request, sign: bool) -> Result<Vec<u8>, String> {
        let mut b = StunMessageBuilder::new(request.method(), MessageClass::Request)
            .with_transaction_id(TransactionId::from(tid));
        match request {
            Request::Binding => {}
            Request::Allocate { lifetime, family } => {
                b = b.with_attribute(RequestedTrasport::new(stun_rs::protocols::UDP));
                if let Some(l) = lifetime {
                    b = b.with_attribute(LifeTime::new(*l));
                }
                if *family == Family::V6 {
                    b = b.with_attribute(RequestedAddressFamily::new(stun_rs::AddressFamily::IPv6));
                }
            }
            Request::Refresh { lifetime } => b = b.with_attribute(LifeTime::new(*lifetime)),
            Request::CreatePermission { peers } => {
                for p in peers {
                    b = b.with_attribute(XorPeerAddress::from(*p));
                }
            }
            Request::ChannelBind { channel, peer } => {
                b = b.with_attribute(ChannelNumber::new(*channel)).with_attribute(XorPeerAddress::from(*peer));
            }
            Request::AllocateTcp { lifetime } => {
                b = b.with_attribute(tcp_transport()?);
                if let Some(l) = lifetime {
                    b = b.with_attribute(LifeTime::new(*l));
                }
            }
            Request::Connect { peer } => b = b.with_attribute(XorPeerAddress::from(*peer)),
            Request::ConnectionBind { connection_id } => {
                // stun-rs cannot encode CONNECTION-ID: appended and signed by hand (rfc6062).
                if sign && let (Some(c), Some(realm), Some(nonce)) = (&self.cfg.credentials, &self.realm, &self.nonce) {
                    b = b
                        .with_attribute(UserName::new(&c.username).map_err(|e| format!("username: {e:?}"))?)
                        .with_attribute(Realm::new(realm).map_err(|e| format!("realm: {e:?}"))?)
                        .with_attribute(Nonce::new(nonce).map_err(|e| format!("nonce: {e:?}"))?);
                }
                let mut m = encode(&b.build());
                rfc6062::append_connection_id(&mut m, *connection_id);
                let key = self.key.as_ref().filter(|_| sign && self.nonce.is_some());
                rfc6062::finish(&mut m, key.map(|k| (k.as_bytes(), IntegrityKind::Sha1)), true);
                return Ok(m);
            }
        }
        if sign
            && let (Some(c), Some(realm), Some(nonce), Some(key)) =
                (&self.cfg.credentials, &self.realm, &self.nonce, &self.key)
        {
            b = b
                .with_attribute(UserName::new(&c.username).map_err(|e| format!("username: {e:?}"))?)
                .with_attribute(Realm::new(realm).map_err(|e| format!("realm: {e:?}"))?)
                .with_attribute(Nonce::new(nonce).map_err(|e| format!("nonce: {e:?}"))?)
                .with_attribute(MessageIntegrity::new(key.clone()));
        }
        Ok(encode(&b.with_attribute(Fingerprint::default()).build()))
    }

    /// Sends application data to `peer` in a Send indication (RFC 8656 §10).
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let msg = StunMessageBuilder::new(SEND, MessageClass::Indication)
            .with_attribute(XorPeerAddress::from(peer))
            .with_attribute(Data::new(data))
            .build();
        self.outbox.push_back(encode(&msg));
    }

    /// Sends application data over a bound channel (RFC 8656 §12).
    pub fn send_channel_data(&mut self, channel: u16, data: &[u8]) {
        self.outbox.push_back(channel_data::encode(channel, data, self.cfg.pad_channel_data));
    }

    /// The next bytes to send to the server.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(b) = self.outbox.pop_front() {
            return Some(b);
        }
        self.pending.iter_mut().find_map(|p| p.tx.poll_transmit(now).map(|b| b.to_vec()))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.iter().filter_map(|p| p.tx.poll_timeout()).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.pending.len() {
            self.pending[i].tx.handle_timeout(now);
            if let Some(Outcome::TimedOut { sends, elapsed }) = self.pending[i].tx.outcome().cloned() {
                let p = self.pending.swap_remove(i);
                self.events.push_back(Event::Response {
                    id: p.id,
                    result: Err(Failure::TimedOut { sends, elapsed }),
                    rtt: Duration::ZERO,
                    auth_retries: p.auth_retries,
                });
            } else {
                i += 1;
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Offers bytes received from the server.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if let Some((channel, data)) = channel_data::parse(bytes) {
            match self.channels.get(&channel) {
                Some(peer) => self.events.push_back(Event::Data {
                    peer: *peer,
                    data: data.to_vec(),
                    path: DataPath::Channel(channel),
                }),
                None => self.dropped += 1,
            }
            return;
        }
        let Some(tid) = crate::stun::message::transaction_id(bytes) else {
            self.dropped += 1;
            return;
        };
        let Ok(msg) = decode(bytes) else {
            self.dropped += 1;
            return;
        };
        if msg.class() == MessageClass::Indication {
            self.handle_indication(&msg);
            return;
        }
        let Some(idx) = self.pending.iter().position(|p| *p.tx.id() == tid) else {
            self.dropped += 1;
            return;
        };
        if !self.pending[idx].tx.handle_response(bytes, now) {
            return;
        }
        let p = self.pending.swap_remove(idx);
        let rtt = match p.tx.outcome() {
            Some(Outcome::Response { rtt, .. }) => *rtt,
            _ => Duration::ZERO,
        };
        self.finish(p, &msg, bytes, rtt, now);
    }

    fn handle_indication(&mut self, msg: &StunMessage) {
        if msg.method() != DATA {
            self.dropped += 1;
            return;
        }
        let mut peer = None;
        let mut data = None;
        for a in msg.attributes() {
            if let Ok(p) = a.as_xor_peer_address() {
                peer = Some(*p.socket_address());
            } else if let Ok(d) = a.as_data() {
                data = Some(d.as_bytes().to_vec());
            }
        }
        match (peer, data) {
            (Some(peer), Some(data)) => self.events.push_back(Event::Data { peer, data, path: DataPath::Indication }),
            _ => self.dropped += 1,
        }
    }

    fn finish(&mut self, p: Pending, msg: &StunMessage, bytes: &[u8], rtt: Duration, now: Instant) {
        let mut code = None;
        let mut realm = None;
        let mut nonce = None;
        let mut ok = Success::default();
        let mut has_integrity = false;
        for a in msg.attributes() {
            if let Ok(e) = a.as_error_code() {
                code = Some((ErrorCode::from_code(e.error_code().error_code()), e.error_code().reason().to_string()));
            } else if let Ok(r) = a.as_realm() {
                realm = Some(r.as_str().to_string());
            } else if let Ok(n) = a.as_nonce() {
                nonce = Some(n.as_str().to_string());
            } else if let Ok(r) = a.as_xor_relayed_address() {
                ok.relayed = Some(*r.socket_address());
            } else if let Ok(m) = a.as_xor_mapped_address() {
                ok.mapped = Some(*m.socket_address());
            } else if let Ok(l) = a.as_life_time() {
                ok.lifetime = Some(l.as_u32());
            } else if let Ok(s) = a.as_software() {
                ok.software = Some(s.as_str().to_string());
            } else if a.is_message_integrity() {
                has_integrity = true;
            }
        }
        ok.connection_id = rfc6062::connection_id(bytes);
        if let Some(r) = realm {
            self.realm = Some(r);
        }
        if let Some(n) = nonce {
            self.nonce = Some(n);
        }
        self.refresh_key();

        let result = match (msg.class(), code) {
            (MessageClass::SuccessResponse, _) => {
                if let Request::ChannelBind { channel, peer } = &p.request {
                    self.channels.insert(*channel, *peer);
                }
                ok.integrity_ok = match (&self.key, has_integrity && p.signed) {
                    (Some(key), true) => Some(verify_integrity(bytes, key)),
                    _ => None,
                };
                if ok.integrity_ok == Some(false) { Err(Failure::IntegrityFailed) } else { Ok(ok) }
            }
            (MessageClass::ErrorResponse, Some((ErrorCode::Unauthenticated, _)))
                if p.auth == Auth::Credentials
                    && self.key.is_some()
                    && !p.signed
                    && p.auth_retries < MAX_AUTH_RETRIES =>
            {
                // The challenge we expected: send again, signed.
                self.start(p.id, p.request, p.auth, p.auth_retries + 1, now);
                return;
            }
            (MessageClass::ErrorResponse, Some((ErrorCode::StaleNonce, _)))
                if p.auth == Auth::Credentials && self.key.is_some() && p.auth_retries < MAX_AUTH_RETRIES =>
            {
                self.stale_nonces += 1;
                self.start(p.id, p.request, p.auth, p.auth_retries + 1, now);
                return;
            }
            (MessageClass::ErrorResponse, Some((code, reason))) => Err(Failure::Error { code, reason }),
            (MessageClass::ErrorResponse, None) => Err(Failure::Malformed("error response without ERROR-CODE".into())),
            (class, _) => Err(Failure::Malformed(format!("unexpected {}", crate::stun::message::class_name(class)))),
        };
        self.events.push_back(Event::Response { id: p.id, result, rtt, auth_retries: p.auth_retries });
    }

    fn refresh_key(&mut self) {
        if let (Some(c), Some(realm)) = (&self.cfg.credentials, &self.realm) {
            self.key = HMACKey::new_long_term(&c.username, realm, &c.password, Algorithm::from(AlgorithmId::MD5)).ok();
        }
    }
}

/// REQUESTED-TRANSPORT = TCP (6) as a stun-rs attribute: stun-rs names only
/// UDP, but decodes any value, so the attribute is taken from a decoded message.
fn tcp_transport() -> Result<stun_rs::StunAttribute, String> {
    let mut raw = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
    raw.extend_from_slice(&[0; 12]);
    raw.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, rfc6062::PROTOCOL_TCP, 0, 0, 0]);
    let msg = decode(&raw).map_err(|e| format!("REQUESTED-TRANSPORT: {e}"))?;
    msg.attributes().first().cloned().ok_or_else(|| "REQUESTED-TRANSPORT: not decoded".into())
}

/// Checks MESSAGE-INTEGRITY of a received message with our long-term key.
fn verify_integrity(bytes: &[u8], key: &HMACKey) -> bool {
    let ctx = DecoderContextBuilder::default().with_key(key.clone()).with_validation().build();
    MessageDecoderBuilder::default().with_context(ctx).build().decode(bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::transaction::Retransmit;
    use stun_rs::attributes::stun::{ErrorCode as ErrorCodeAttr, XorMappedAddress};
    use stun_rs::attributes::turn::XorRelayedAddress;

    const USER: &str = "alice";
    const PASS: &str = "secret";
    const REALM: &str = "natkit.test";

    fn client(reliability: Reliability) -> TurnClient {
        TurnClient::new(ClientConfig {
            credentials: Some(Credentials { username: USER.into(), password: PASS.into() }),
            reliability,
            request_timeout: Duration::from_secs(5),
            pad_channel_data: false,
        })
    }

    fn key() -> HMACKey {
        HMACKey::new_long_term(USER, REALM, PASS, Algorithm::from(AlgorithmId::MD5)).expect("key")
    }

    /// A server-side answer to `req` with the given class and attributes.
    fn answer(req: &[u8], class: MessageClass, attrs: Vec<stun_rs::StunAttribute>, sign: bool) -> Vec<u8> {
        let m = decode(req).expect("request decodes");
        let mut b = StunMessageBuilder::new(m.method(), class).with_transaction_id(*m.transaction_id());
        for a in attrs {
            b = b.with_attribute(a);
        }
        if sign {
            b = b.with_attribute(MessageIntegrity::new(key()));
        }
        encode(&b.build())
    }

    fn challenge(req: &[u8], code: u16, nonce: &str) -> Vec<u8> {
        let reason = if code == 401 { "Unauthorized" } else { "Stale Nonce" };
        answer(
            req,
            MessageClass::ErrorResponse,
            vec![
                ErrorCodeAttr::new(stun_rs::ErrorCode::new(code, reason).expect("code")).into(),
                Realm::new(REALM).expect("realm").into(),
                Nonce::new(nonce).expect("nonce").into(),
            ],
            false,
        )
    }

    fn has_attr(bytes: &[u8], f: impl Fn(&stun_rs::StunAttribute) -> bool) -> bool {
        decode(bytes).expect("decodes").attributes().iter().any(f)
    }

    #[test]
    fn allocate_answers_401_with_credentials_then_succeeds() {
        let t0 = Instant::now();
        let mut c = client(Reliability::reliable_default());
        let id = c.request(Request::Allocate { lifetime: Some(600), family: Family::V4 }, Auth::Credentials, t0);
        let first = c.poll_transmit(t0).expect("first request");
        assert!(!has_attr(&first, |a| a.is_message_integrity()));
        c.handle_input(&challenge(&first, 401, "nonce-1"), t0);
        assert_eq!(c.poll_event(), None, "the 401 is handled inside");
        let second = c.poll_transmit(t0).expect("signed request");
        assert!(has_attr(&second, |a| a.is_message_integrity()));
        assert!(has_attr(&second, |a| a.as_nonce().map(|n| n.as_str() == "nonce-1").unwrap_or(false)));
        let relayed: SocketAddr = "203.0.113.5:50000".parse().expect("addr");
        let mapped: SocketAddr = "198.51.100.7:40000".parse().expect("addr");
        let ok = answer(
            &second,
            MessageClass::SuccessResponse,
            vec![
                XorRelayedAddress::from(relayed).into(),
                XorMappedAddress::from(mapped).into(),
                LifeTime::new(600).into(),
            ],
            true,
        );
        c.handle_input(&ok, t0 + Duration::from_millis(3));
        match c.poll_event() {
            Some(Event::Response { id: got, result: Ok(s), auth_retries, .. }) => {
                assert_eq!(got, id);
                assert_eq!(s.relayed, Some(relayed));
                assert_eq!(s.mapped, Some(mapped));
                assert_eq!(s.lifetime, Some(600));
                assert_eq!(s.integrity_ok, Some(true));
                assert_eq!(auth_retries, 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn anonymous_request_returns_the_401_to_the_caller() {
        let t0 = Instant::now();
        let mut c = client(Reliability::reliable_default());
        c.request(Request::Allocate { lifetime: None, family: Family::V4 }, Auth::Anonymous, t0);
        let req = c.poll_transmit(t0).expect("request");
        c.handle_input(&challenge(&req, 401, "n"), t0);
        match c.poll_event() {
            Some(Event::Response { result: Err(Failure::Error { code: ErrorCode::Unauthenticated, .. }), .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(c.realm(), Some(REALM));
        assert_eq!(c.nonce(), Some("n"));
    }

    #[test]
    fn error_codes_are_typed_and_an_unknown_one_is_kept() {
        let t0 = Instant::now();
        let mut c = client(Reliability::reliable_default());
        for (code, want) in [(437, ErrorCode::AllocationMismatch), (499, ErrorCode::Other(499))] {
            c.request(Request::Refresh { lifetime: 600 }, Auth::Anonymous, t0);
            let req = c.poll_transmit(t0).expect("request");
            let e = ErrorCodeAttr::new(stun_rs::ErrorCode::new(code, "Said the server").expect("code"));
            c.handle_input(&answer(&req, MessageClass::ErrorResponse, vec![e.into()], false), t0);
            match c.poll_event() {
                Some(Event::Response { result: Err(f @ Failure::Error { code, .. }), .. }) => {
                    assert_eq!(code, want);
                    assert_eq!(f.to_string(), format!("{} Said the server", want.code()), "shown as a number");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn stale_nonce_is_retried_with_the_new_nonce() {
        let t0 = Instant::now();
        let mut c = client(Reliability::reliable_default());
        c.request(Request::Refresh { lifetime: 600 }, Auth::Anonymous, t0);
        let req = c.poll_transmit(t0).expect("request");
        c.handle_input(&challenge(&req, 401, "old"), t0);
        c.poll_event();
        c.request(Request::Refresh { lifetime: 600 }, Auth::Credentials, t0);
        let signed = c.poll_transmit(t0).expect("signed");
        c.handle_input(&challenge(&signed, 438, "fresh"), t0);
        let again = c.poll_transmit(t0).expect("resent");
        assert!(has_attr(&again, |a| a.as_nonce().map(|n| n.as_str() == "fresh").unwrap_or(false)));
        assert_eq!(c.stale_nonces, 1);
    }

    #[test]
    fn wrong_password_gives_401_after_one_signed_try() {
        let t0 = Instant::now();
        let mut c = client(Reliability::reliable_default());
        c.request(Request::Allocate { lifetime: None, family: Family::V4 }, Auth::Credentials, t0);
        let first = c.poll_transmit(t0).expect("first");
        c.handle_input(&challenge(&first, 401, "n1"), t0);
        let second = c.poll_transmit(t0).expect("second");
        c.handle_input(&challenge(&second, 401, "n2"), t0);
        match c.poll_event() {
            Some(Event::Response {
                result: Err(Failure::Error { code: ErrorCode::Unauthenticated, .. }),
                auth_retries: 1,
                ..
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(c.poll_transmit(t0).is_none(), "no endless retry loop");
    }

    #[test]
    fn udp_requests_retransmit_and_time_out() {
        let t0 = Instant::now();
        let r = Retransmit { rto: Duration::from_millis(100), rc: 3, rm: 2 };
        let mut c = client(Reliability::Unreliable(r));
        c.request(Request::Binding, Auth::Anonymous, t0);
        let mut now = t0;
        let mut sends = 0;
        loop {
            while c.poll_transmit(now).is_some() {
                sends += 1;
            }
            c.handle_timeout(now);
            if let Some(ev) = c.poll_event() {
                assert!(matches!(ev, Event::Response { result: Err(Failure::TimedOut { sends: 3, .. }), .. }));
                break;
            }
            now = c.poll_timeout().expect("timeout");
        }
        assert_eq!(sends, 3);
        assert_eq!(now - t0, Duration::from_millis(500));
    }

    #[test]
    fn data_indications_and_bound_channels_become_data_events() {
        let t0 = Instant::now();
        let mut c = client(Reliability::reliable_default());
        let peer: SocketAddr = "203.0.113.9:4000".parse().expect("addr");
        let ind = encode(
            &StunMessageBuilder::new(DATA, MessageClass::Indication)
                .with_attribute(XorPeerAddress::from(peer))
                .with_attribute(Data::new(b"hello"))
                .build(),
        );
        c.handle_input(&ind, t0);
        assert_eq!(c.poll_event(), Some(Event::Data { peer, data: b"hello".to_vec(), path: DataPath::Indication }));

        // ChannelData on an unbound channel is dropped; after ChannelBind succeeds it is delivered.
        c.handle_input(&channel_data::encode(0x4001, b"x", false), t0);
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.dropped, 1);
        c.request(Request::ChannelBind { channel: 0x4001, peer }, Auth::Anonymous, t0);
        let req = c.poll_transmit(t0).expect("bind");
        c.handle_input(&answer(&req, MessageClass::SuccessResponse, vec![], false), t0);
        assert!(matches!(c.poll_event(), Some(Event::Response { result: Ok(_), .. })));
        c.handle_input(&channel_data::encode(0x4001, b"x", false), t0);
        assert_eq!(c.poll_event(), Some(Event::Data { peer, data: b"x".to_vec(), path: DataPath::Channel(0x4001) }));
    }

    #[test]
    fn garbage_is_dropped_and_counted() {
        let t0 = Instant::now();
        let mut c = client(Reliability::reliable_default());
        for junk in [&b""[..], b"\x00\x01", b"not stun at all, not at all", &[0x40, 0x01, 0xFF, 0xFF]] {
            c.handle_input(junk, t0);
        }
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.dropped, 4);
    }
}
