//! The core driven with a fake clock and fake relayed sockets: no network,
//! no sleeps. A small client here builds requests with stun-rs the way a
//! TURN client would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags};
use stun_rs::attributes::stun::{MessageIntegrity, MessageIntegritySha256, Nonce, Realm, UserName};
use stun_rs::attributes::turn::{
    ChannelNumber, Data, LifeTime, RequestedAddressFamily, RequestedTrasport, XorPeerAddress,
};
use stun_rs::methods::{ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH, SEND};
use stun_rs::{
    AddressFamily, Algorithm, AlgorithmId, HMACKey, MessageClass, MessageMethod, StunAttribute, StunMessage,
    StunMessageBuilder, TransactionId,
};

use super::auth::AuthFailure;
use super::peer_policy::{PeerPolicyConfig, Refusal};
use super::*;
use crate::stun::message::{decode, encode};
use crate::turn::channel_data::{self, PEER_HEADROOM};
use crate::turn::credentials::rest_credentials;

const REALM: &str = "lab";

/// Relayed sockets that exist only as ids: 127.0.0.1:50000, :50001, ...
#[derive(Default)]
struct FakePorts {
    next: u64,
    open: Arc<Mutex<Vec<RelayId>>>,
    limit: Option<usize>,
}

impl RelayPorts for FakePorts {
    fn open(&mut self, family: Family) -> Result<(RelayId, SocketAddr), RelayOpenError> {
        let mut open = self.open.lock().unwrap();
        if self.limit.is_some_and(|l| open.len() >= l) {
            return Err(RelayOpenError::NoPorts);
        }
        self.next += 1;
        let id = RelayId(self.next);
        open.push(id);
        let ip = match family {
            Family::V4 => "198.51.100.1",
            Family::V6 => "2001:db8::1",
        };
        Ok((id, SocketAddr::new(ip.parse().unwrap(), 50_000 + self.next as u16)))
    }

    fn close(&mut self, relay: RelayId) {
        self.open.lock().unwrap().retain(|r| *r != relay);
    }
}

struct Harness {
    server: Server,
    open: Arc<Mutex<Vec<RelayId>>>,
    t0: Instant,
    now: Instant,
}

fn config() -> ServerConfig {
    ServerConfig {
        realm: REALM.into(),
        users: HashMap::from([("alice".into(), "wonderland".into()), ("bob".into(), "builder".into())]),
        secret: Some("rest-secret".into()),
        nonce_key: [9; 32],
        policy: PeerPolicyConfig { own_addresses: vec!["198.51.100.1:3478".parse().unwrap()], ..Default::default() },
        ..ServerConfig::default()
    }
}

impl Harness {
    fn new(cfg: ServerConfig) -> Harness {
        Harness::with_ports(cfg, FakePorts::default())
    }

    fn with_ports(cfg: ServerConfig, ports: FakePorts) -> Harness {
        let open = ports.open.clone();
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Harness { server: Server::new(cfg, Box::new(ports), t0, wall), open, t0, now: t0 }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        while let Some(t) = self.server.poll_timeout() {
            if t > self.now {
                break;
            }
            self.server.handle_timeout(t);
        }
    }

    fn wall(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000) + (self.now - self.t0)
    }

    /// Sends a packet from `client`; returns where the answer goes and its bytes.
    fn send(&mut self, client: FiveTuple, bytes: &[u8]) -> Option<(Target, Vec<u8>)> {
        self.server.handle_client(client, bytes, self.now).map(|t| (t.target, t.payload.to_vec()))
    }

    fn request(&mut self, client: FiveTuple, bytes: &[u8]) -> StunMessage {
        let (target, out) = self.send(client, bytes).expect("an answer");
        assert!(matches!(target, Target::Client(c) if c.remote == client.remote));
        decode(&out).expect("the answer decodes")
    }

    fn peer_datagram(&mut self, relay: RelayId, from: SocketAddr, data: &[u8]) -> Option<(Target, Vec<u8>)> {
        let mut buf = vec![0u8; PEER_HEADROOM + data.len() + channel_data::PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(data);
        self.server.handle_peer(relay, from, &mut buf, data.len(), self.now).map(|t| (t.target, t.payload.to_vec()))
    }
}

/// A UDP client on another host than [`udp_client`]'s.
fn udp_client_from(ip: &str, port: u16) -> FiveTuple {
    FiveTuple { remote: SocketAddr::new(ip.parse().unwrap(), port), ..udp_client(port) }
}

fn udp_client(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        local: "198.51.100.1:3478".parse().unwrap(),
        remote: SocketAddr::new("203.0.113.10".parse().unwrap(), port),
    }
}

fn error_code(m: &StunMessage) -> Option<u16> {
    m.attributes().iter().find_map(|a| a.as_error_code().ok()).map(|e| e.error_code().error_code())
}

fn nonce_of(m: &StunMessage) -> String {
    m.attributes().iter().find_map(|a| a.as_nonce().ok()).expect("NONCE").as_str().to_string()
}

fn relayed_of(m: &StunMessage) -> SocketAddr {
    *m.attributes().iter().find_map(|a| a.as_xor_relayed_address().ok()).expect("XOR-RELAYED-ADDRESS").socket_address()
}

fn lifetime_of(m: &StunMessage) -> u32 {
    m.attributes().iter().find_map(|a| a.as_life_time().ok()).expect("LIFETIME").as_u32()
}

/// A client's view of the long-term credential mechanism.
struct Creds {
    user: String,
    pass: String,
    realm: String,
    sha256: bool,
}

fn creds(user: &str, pass: &str) -> Creds {
    Creds { user: user.into(), pass: pass.into(), realm: REALM.into(), sha256: false }
}

fn build(method: MessageMethod, attrs: Vec<StunAttribute>, auth: Option<(&Creds, &str)>) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(method, MessageClass::Request)
        .with_transaction_id(TransactionId::from(crate::stun::message::new_transaction_id()));
    for a in attrs {
        b = b.with_attribute(a);
    }
    if let Some((c, nonce)) = auth {
        let key = HMACKey::new_long_term(&c.user, &c.realm, &c.pass, Algorithm::from(AlgorithmId::MD5)).unwrap();
        b = b
            .with_attribute(UserName::new(&c.user).unwrap())
            .with_attribute(Realm::new(&c.realm).unwrap())
            .with_attribute(Nonce::new(nonce).unwrap());
        b = if c.sha256 {
            b.with_attribute(MessageIntegritySha256::new(key))
        } else {
            b.with_attribute(MessageIntegrity::new(key))
        };
    }
    encode(&b.build())
}

fn udp_transport() -> StunAttribute {
    RequestedTrasport::new(stun_rs::protocols::UDP).into()
}

/// Allocates for `client` (401 challenge first, like every client); returns (relay id, relayed, nonce).
fn allocate(h: &mut Harness, client: FiveTuple, c: &Creds) -> (RelayId, SocketAddr, String) {
    let challenge = h.request(client, &build(ALLOCATE, vec![udp_transport()], None));
    assert_eq!(error_code(&challenge), Some(401));
    let nonce = nonce_of(&challenge);
    let ok = h.request(client, &build(ALLOCATE, vec![udp_transport()], Some((c, &nonce))));
    assert_eq!(ok.class(), MessageClass::SuccessResponse, "error {:?}", error_code(&ok));
    let relay = *h.open.lock().unwrap().last().unwrap();
    (relay, relayed_of(&ok), nonce)
}

fn peer_attr(p: &str) -> StunAttribute {
    XorPeerAddress::from(p.parse::<SocketAddr>().unwrap()).into()
}

fn permit(h: &mut Harness, client: FiveTuple, c: &Creds, nonce: &str, peer: &str) -> StunMessage {
    h.request(client, &build(CREATE_PERMMISSION, vec![peer_attr(peer)], Some((c, nonce))))
}

fn bind_channel(h: &mut Harness, client: FiveTuple, c: &Creds, nonce: &str, number: u16, peer: &str) -> StunMessage {
    h.request(client, &build(CHANNEL_BIND, vec![ChannelNumber::new(number).into(), peer_attr(peer)], Some((c, nonce))))
}

fn send_indication(peer: &str, data: &[u8]) -> Vec<u8> {
    let msg = StunMessageBuilder::new(SEND, MessageClass::Indication)
        .with_transaction_id(TransactionId::from(crate::stun::message::new_transaction_id()))
        .with_attribute(peer_attr(peer))
        .with_attribute(Data::new(data))
        .build();
    encode(&msg)
}

fn channel_data(number: u16, data: &[u8]) -> Vec<u8> {
    let mut v = number.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn binding_is_answered_without_credentials() {
    let mut h = Harness::new(config());
    let c = udp_client(4000);
    let m = h.request(c, &crate::stun::message::binding_request(crate::stun::message::new_transaction_id()));
    assert_eq!(m.method(), BINDING);
    assert_eq!(m.class(), MessageClass::SuccessResponse);
    let mapped = m.attributes().iter().find_map(|a| a.as_xor_mapped_address().ok()).unwrap();
    assert_eq!(*mapped.socket_address(), c.remote);
    assert!(m.attributes().iter().any(|a| a.is_fingerprint()), "FINGERPRINT because the request had one");
}

#[test]
fn change_request_without_an_alternate_address_is_420() {
    let mut h = Harness::new(config());
    let req = encode(
        &StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_attribute(ChangeRequest::new(Some(ChangeRequestFlags::ChangeIp.into())))
            .build(),
    );
    assert_eq!(error_code(&h.request(udp_client(1), &req)), Some(420));
}

#[test]
fn rfc5780_answers_change_request_from_the_other_socket() {
    let mut cfg = config();
    let ips = ["198.51.100.1".parse().unwrap(), "198.51.100.2".parse().unwrap()];
    cfg.rfc5780 = Some(Rfc5780 { ips, ports: [3478, 3479] });
    let mut h = Harness::new(cfg);
    let c = udp_client(4000);
    for (ip, port, from) in [
        (false, false, "198.51.100.1:3478"),
        (true, false, "198.51.100.2:3478"),
        (false, true, "198.51.100.1:3479"),
        (true, true, "198.51.100.2:3479"),
    ] {
        let mut b = StunMessageBuilder::new(BINDING, MessageClass::Request);
        let flags = match (ip, port) {
            (true, true) => Some(ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort),
            (true, false) => Some(ChangeRequestFlags::ChangeIp.into()),
            (false, true) => Some(ChangeRequestFlags::ChangePort.into()),
            _ => None,
        };
        if flags.is_some() {
            b = b.with_attribute(ChangeRequest::new(flags));
        }
        let (target, out) = h.send(c, &encode(&b.build())).unwrap();
        let from: SocketAddr = from.parse().unwrap();
        assert_eq!(target, Target::Client(FiveTuple { local: from, ..c }));
        let m = decode(&out).unwrap();
        let origin = m.attributes().iter().find_map(|a| a.as_response_origin().ok()).unwrap();
        assert_eq!(*origin.socket_address(), from);
        let other = m.attributes().iter().find_map(|a| a.as_other_address().ok()).unwrap();
        assert_eq!(*other.socket_address(), "198.51.100.2:3479".parse().unwrap());
    }
}

#[test]
fn rfc5780_response_port_answers_the_clients_ip_at_that_port_from_the_same_socket() {
    use crate::stun::message::{binding_request_to_port, new_transaction_id};
    let mut cfg = config();
    let ips = ["198.51.100.1".parse().unwrap(), "198.51.100.2".parse().unwrap()];
    cfg.rfc5780 = Some(Rfc5780 { ips, ports: [3478, 3479] });
    cfg.unauth = unauth_limit::UnauthLimitConfig { burst_bytes: 1000, bytes_per_sec: 1, max_sources: 10 };
    let mut h = Harness::new(cfg);
    let c = udp_client(4000);
    let (target, out) = h.send(c, &binding_request_to_port(new_transaction_id(), 40123)).expect("an answer");
    let to: SocketAddr = "203.0.113.10:40123".parse().unwrap();
    assert_eq!(target, Target::Client(FiveTuple { remote: to, ..c }), "same socket, the client's IP, the asked port");
    let m = decode(&out).unwrap();
    assert_eq!(m.class(), MessageClass::SuccessResponse);
    let mapped = m.attributes().iter().find_map(|a| a.as_xor_mapped_address().ok()).unwrap();
    assert_eq!(*mapped.socket_address(), c.remote, "the mapping is the asker's, not the port's");
    let origin = m.attributes().iter().find_map(|a| a.as_response_origin().ok()).unwrap();
    assert_eq!(*origin.socket_address(), c.local);
    let other = m.attributes().iter().find_map(|a| a.as_other_address().ok()).unwrap();
    assert_eq!(*other.socket_address(), "198.51.100.2:3479".parse().unwrap());
    assert_eq!(h.server.stats().binding_response_port, 1);

    // Port 0, PADDING beside it and TCP are refused with 400 (as coturn does), to the source.
    let zero = h.request(c, &binding_request_to_port(new_transaction_id(), 0));
    assert_eq!(error_code(&zero), Some(400));
    let padded = encode(
        &StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_attribute(stun_rs::attributes::discovery::ResponsePort::from(40123))
            .with_attribute(stun_rs::attributes::discovery::Padding::new("pad").unwrap())
            .build(),
    );
    assert_eq!(error_code(&h.request(c, &padded)), Some(400));
    let tcp = FiveTuple { transport: Transport::Tcp, ..c };
    assert_eq!(error_code(&h.request(tcp, &binding_request_to_port(new_transaction_id(), 40123))), Some(400));

    // Unsigned answers to another port still spend the source's unauthenticated budget.
    let mut answered = 0;
    for _ in 0..100 {
        if h.send(c, &binding_request_to_port(new_transaction_id(), 40123)).is_some() {
            answered += 1;
        }
    }
    assert!(answered < 20, "{answered} answers from a 1000-byte budget");
    assert!(h.server.stats().unauth_rate_limited > 0);
}

#[test]
fn response_port_without_rfc5780_is_ignored_and_answered_to_the_source() {
    let mut h = Harness::new(config());
    let c = udp_client(4000);
    let req = crate::stun::message::binding_request_to_port(crate::stun::message::new_transaction_id(), 40123);
    let (target, out) = h.send(c, &req).expect("an answer");
    assert_eq!(target, Target::Client(c), "no alternate address: RESPONSE-PORT ignored, as coturn does");
    assert_eq!(decode(&out).unwrap().class(), MessageClass::SuccessResponse);
    assert_eq!(h.server.stats().binding_response_port, 0);
}

#[test]
fn allocate_challenges_then_succeeds_with_sha1_or_sha256_integrity() {
    let mut h = Harness::new(config());
    let (_, relayed, _) = allocate(&mut h, udp_client(4000), &creds("alice", "wonderland"));
    assert_eq!(relayed, "198.51.100.1:50001".parse().unwrap());
    let mut c = creds("bob", "builder");
    c.sha256 = true;
    allocate(&mut h, udp_client(4001), &c);
    assert_eq!(h.server.allocations(), 2);
    assert_eq!(h.server.stats().allocations_created, 2);
}

#[test]
fn wrong_password_unknown_user_and_wrong_realm_get_401() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    let mut wrong_realm = creds("alice", "wonderland");
    wrong_realm.realm = "other".into();
    for c in [creds("alice", "nope"), creds("mallory", "x"), wrong_realm] {
        let m = h.request(client, &build(ALLOCATE, vec![udp_transport()], Some((&c, &nonce))));
        assert_eq!(error_code(&m), Some(401), "{}", c.user);
        assert!(m.attributes().iter().all(|a| !a.is_message_integrity()), "a 401 is never signed");
    }
    assert_eq!(h.server.stats().auth_failures_total(), 3);
    assert_eq!(h.server.allocations(), 0);
}

#[test]
fn failed_credentials_are_answered_a_few_times_then_silently_dropped() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    let bad = creds("alice", "guess");
    let mut answered = 0;
    for _ in 0..50 {
        if h.send(client, &build(ALLOCATE, vec![udp_transport()], Some((&bad, &nonce)))).is_some() {
            answered += 1;
        }
    }
    assert_eq!(answered, 10, "the default burst");
    // After the burst the source (and the username) is locked: refused before any check.
    assert_eq!(h.server.stats().auth_throttled[throttle::Offender::Source.index()], 40);
    assert_eq!(h.server.stats().auth_failures_total(), 10);
    // The right password from the locked source is not even checked.
    let good = creds("alice", "wonderland");
    assert!(h.send(client, &build(ALLOCATE, vec![udp_transport()], Some((&good, &nonce)))).is_none());
    h.advance(Duration::from_secs(1));
    assert!(h.send(client, &build(ALLOCATE, vec![udp_transport()], Some((&bad, &nonce)))).is_some(), "unlocked");
    // Another user from another source is not affected.
    allocate(&mut h, udp_client_from("203.0.113.11", 5000), &creds("bob", "builder"));
    // Nor is alice from another source once her username's short lock has passed.
    h.advance(Duration::from_secs(1));
    allocate(&mut h, udp_client_from("203.0.113.12", 5001), &good);
}

#[test]
fn many_silent_failures_are_answered_401_at_most_at_the_limiter_rate() {
    // Unknown users are not checked against a key, yet still count against the source.
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    for _ in 0..50 {
        let _ = h.send(client, &build(ALLOCATE, vec![udp_transport()], Some((&creds("nobody", "x"), &nonce))));
    }
    assert_eq!(h.server.stats().auth_failures_total(), 10);
    assert_eq!(h.server.stats().auth_throttled[throttle::Offender::Source.index()], 40);
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    h.advance(Duration::from_secs(601));
    let m = h.request(client, &build(ALLOCATE, vec![udp_transport()], Some((&c, &nonce))));
    assert_eq!(error_code(&m), Some(438));
    let fresh = nonce_of(&m);
    assert_ne!(fresh, nonce);
    let m = h.request(client, &build(ALLOCATE, vec![udp_transport()], Some((&c, &fresh))));
    assert_eq!(m.class(), MessageClass::SuccessResponse);
    // A nonce given to another client address is not valid here either.
    let other = h.request(udp_client(4001), &build(ALLOCATE, vec![udp_transport()], Some((&c, &fresh))));
    assert_eq!(error_code(&other), Some(438));
}

#[test]
fn rest_credentials_work_until_the_username_expires() {
    let mut h = Harness::new(config());
    let rc = rest_credentials("rest-secret", Some("carol"), h.wall(), Duration::from_secs(60));
    allocate(&mut h, udp_client(4000), &creds(&rc.username, &rc.password));
    h.advance(Duration::from_secs(61));
    let client = udp_client(4001);
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    let m =
        h.request(client, &build(ALLOCATE, vec![udp_transport()], Some((&creds(&rc.username, &rc.password), &nonce))));
    assert_eq!(error_code(&m), Some(401));
    assert_eq!(h.server.stats().auth_failures[AuthFailure::ExpiredRestUsername.index()], 1);
}

#[test]
fn allocation_expires_after_its_lifetime_and_refresh_extends_it() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let (relay, _, nonce) = allocate(&mut h, client, &c);
    h.advance(Duration::from_secs(500));
    let m = h.request(client, &build(REFRESH, vec![LifeTime::new(900).into()], Some((&c, &nonce))));
    assert_eq!(lifetime_of(&m), 900);
    h.advance(Duration::from_secs(899));
    assert_eq!(h.server.allocations(), 1);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.server.allocations(), 0);
    assert!(!h.open.lock().unwrap().contains(&relay), "the relayed socket was closed");
    assert_eq!(h.server.stats().allocations_expired, 1);
}

#[test]
fn lifetime_is_capped_and_refresh_zero_deallocates() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    let m =
        h.request(client, &build(ALLOCATE, vec![udp_transport(), LifeTime::new(99_999).into()], Some((&c, &nonce))));
    assert_eq!(lifetime_of(&m), 3600);
    let m = h.request(client, &build(REFRESH, vec![LifeTime::new(0).into()], Some((&c, &nonce))));
    assert_eq!(m.class(), MessageClass::SuccessResponse);
    assert_eq!(lifetime_of(&m), 0);
    assert_eq!(h.server.allocations(), 0);
    assert!(h.open.lock().unwrap().is_empty());
    let m = h.request(client, &build(REFRESH, vec![LifeTime::new(0).into()], Some((&c, &nonce))));
    assert_eq!(error_code(&m), Some(437), "nothing left to refresh");
}

#[test]
fn a_second_allocate_is_437_a_retransmission_gets_the_same_answer_another_user_441() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    let req = build(ALLOCATE, vec![udp_transport()], Some((&c, &nonce)));
    let first = h.request(client, &req);
    let again = h.request(client, &req);
    assert_eq!(relayed_of(&first), relayed_of(&again));
    assert_eq!(h.server.allocations(), 1);
    let m = h.request(client, &build(ALLOCATE, vec![udp_transport()], Some((&c, &nonce))));
    assert_eq!(error_code(&m), Some(437));
    let m = h.request(client, &build(REFRESH, vec![], Some((&creds("bob", "builder"), &nonce))));
    assert_eq!(error_code(&m), Some(441));
}

#[test]
fn allocate_checks_transport_and_family() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    let m = h.request(client, &build(ALLOCATE, vec![], Some((&c, &nonce))));
    assert_eq!(error_code(&m), Some(400), "REQUESTED-TRANSPORT is required");
    // stun-rs only names UDP; decode a REQUESTED-TRANSPORT of 6 (TCP) from raw bytes.
    let mut raw = vec![0x00, 0x03, 0, 8, 0x21, 0x12, 0xA4, 0x42];
    raw.extend_from_slice(&[1; 12]);
    raw.extend_from_slice(&[0x00, 0x19, 0, 4, 6, 0, 0, 0]);
    let tcp = decode(&raw).unwrap().attributes()[0].clone();
    let m = h.request(client, &build(ALLOCATE, vec![tcp], Some((&c, &nonce))));
    assert_eq!(error_code(&m), Some(400), "RFC 6062 §5.1: TCP relaying over a UDP control connection is 400");
    raw[24] = 99;
    let other = decode(&raw).unwrap().attributes()[0].clone();
    let m = h.request(client, &build(ALLOCATE, vec![other], Some((&c, &nonce))));
    assert_eq!(error_code(&m), Some(442));
    let v6 = RequestedAddressFamily::new(AddressFamily::IPv6).into();
    let m = h.request(client, &build(ALLOCATE, vec![udp_transport(), v6], Some((&c, &nonce))));
    assert!(relayed_of(&m).is_ipv6());
    assert!(m.attributes().iter().any(|a| a.is_message_integrity()), "success is signed");
}

#[test]
fn quotas_per_user_and_in_total() {
    let mut cfg = config();
    cfg.user_quota = 2;
    cfg.max_allocations = 3;
    let mut h = Harness::new(cfg);
    let alice = creds("alice", "wonderland");
    allocate(&mut h, udp_client(1), &alice);
    allocate(&mut h, udp_client(2), &alice);
    let client = udp_client(3);
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    let m = h.request(client, &build(ALLOCATE, vec![udp_transport()], Some((&alice, &nonce))));
    assert_eq!(error_code(&m), Some(486));
    allocate(&mut h, udp_client(4), &creds("bob", "builder"));
    let client = udp_client(5);
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    let m = h.request(client, &build(ALLOCATE, vec![udp_transport()], Some((&creds("bob", "builder"), &nonce))));
    assert_eq!(error_code(&m), Some(508), "the relay is full");
}

#[test]
fn quota_per_source_address_holds_across_usernames() {
    let mut cfg = config();
    cfg.source_quota = 2;
    let mut h = Harness::new(cfg);
    let rest = |name: &str| {
        let c = rest_credentials("rest-secret", Some(name), h_wall(), Duration::from_secs(600));
        creds(&c.username, &c.password)
    };
    allocate(&mut h, udp_client(1), &rest("a"));
    allocate(&mut h, udp_client(2), &rest("b"));
    let client = udp_client(3);
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    let m = h.request(client, &build(ALLOCATE, vec![udp_transport()], Some((&rest("c"), &nonce))));
    assert_eq!(error_code(&m), Some(486), "a third username from the same address");
    assert_eq!(h.server.stats().source_quota_reached, 1);
    allocate(&mut h, udp_client_from("203.0.113.11", 3), &rest("c"));
    // An allocation that ends frees its place.
    let mut cfg = config();
    cfg.source_quota = 1;
    let mut h = Harness::new(cfg);
    let alice = creds("alice", "wonderland");
    let (_, _, nonce) = allocate(&mut h, udp_client(1), &alice);
    let m = h.request(udp_client(1), &build(REFRESH, vec![LifeTime::new(0).into()], Some((&alice, &nonce))));
    assert_eq!(m.class(), MessageClass::SuccessResponse);
    allocate(&mut h, udp_client(2), &alice);
}

/// The harness's wall clock at its start (REST usernames are minted against it).
fn h_wall() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

#[test]
fn no_free_relay_port_is_508() {
    let mut h = Harness::with_ports(config(), FakePorts { limit: Some(0), ..Default::default() });
    let client = udp_client(1);
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    let m = h.request(client, &build(ALLOCATE, vec![udp_transport()], Some((&creds("alice", "wonderland"), &nonce))));
    assert_eq!(error_code(&m), Some(508));
}

#[test]
fn send_and_data_indications_relay_through_a_permission_that_expires_after_300_s() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let (relay, _, nonce) = allocate(&mut h, client, &c);
    let peer = "203.0.113.50:7000";
    assert!(h.send(client, &send_indication(peer, b"early")).is_none(), "no permission yet");
    assert_eq!(permit(&mut h, client, &c, &nonce, peer).class(), MessageClass::SuccessResponse);
    let (target, out) = h.send(client, &send_indication(peer, b"hello")).unwrap();
    assert_eq!(target, Target::Peer { relay, peer: peer.parse().unwrap() });
    assert_eq!(out, b"hello");
    // The peer answers: a Data indication to the client.
    let (target, out) = h.peer_datagram(relay, peer.parse().unwrap(), b"world").unwrap();
    assert_eq!(target, Target::Client(client));
    let m = decode(&out).unwrap();
    assert_eq!(m.method(), stun_rs::methods::DATA);
    assert_eq!(m.attributes().iter().find_map(|a| a.as_data().ok()).unwrap().as_bytes(), b"world");
    // Another port of the same IP is covered; another IP is not.
    assert!(h.peer_datagram(relay, "203.0.113.50:9".parse().unwrap(), b"x").is_some());
    assert!(h.peer_datagram(relay, "203.0.113.51:7000".parse().unwrap(), b"x").is_none());
    h.advance(Duration::from_secs(300));
    assert!(h.send(client, &send_indication(peer, b"late")).is_none());
    assert!(h.peer_datagram(relay, peer.parse().unwrap(), b"late").is_none());
    assert_eq!(h.server.stats().packets_to_peers, 1);
    assert_eq!(h.server.stats().dropped_no_permission, 4);
}

#[test]
fn channel_data_flows_both_ways_and_the_binding_lasts_600_s() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let (relay, _, nonce) = allocate(&mut h, client, &c);
    let peer: SocketAddr = "203.0.113.50:7000".parse().unwrap();
    assert_eq!(
        bind_channel(&mut h, client, &c, &nonce, 0x4001, "203.0.113.50:7000").class(),
        MessageClass::SuccessResponse
    );
    let (target, out) = h.send(client, &channel_data(0x4001, b"voice")).unwrap();
    assert_eq!(target, Target::Peer { relay, peer });
    assert_eq!(out, b"voice");
    let (_, out) = h.peer_datagram(relay, peer, b"reply").unwrap();
    assert_eq!(out, channel_data(0x4001, b"reply"), "UDP: no padding");
    assert!(h.send(client, &channel_data(0x4002, b"x")).is_none(), "unbound channel");
    // The allocation (600 s) and the permission the binding made (300 s) are refreshed, to see the channel itself run out.
    h.request(client, &build(REFRESH, vec![LifeTime::new(3600).into()], Some((&c, &nonce))));
    h.advance(Duration::from_secs(299));
    permit(&mut h, client, &c, &nonce, "203.0.113.50:1");
    h.advance(Duration::from_secs(299));
    assert!(h.send(client, &channel_data(0x4001, b"still")).is_some());
    permit(&mut h, client, &c, &nonce, "203.0.113.50:1");
    h.advance(Duration::from_secs(2));
    assert!(h.send(client, &channel_data(0x4001, b"gone")).is_none(), "600 s after the bind");
    let (_, out) = h.peer_datagram(relay, peer, b"di").unwrap();
    assert_eq!(decode(&out).unwrap().method(), stun_rs::methods::DATA, "back to Data indications");
}

#[test]
fn channel_data_over_tcp_is_padded_to_four_bytes() {
    let mut h = Harness::new(config());
    let client = FiveTuple { transport: Transport::Tcp, ..udp_client(4000) };
    let c = creds("alice", "wonderland");
    let (relay, _, nonce) = allocate(&mut h, client, &c);
    bind_channel(&mut h, client, &c, &nonce, 0x4abc, "203.0.113.50:7000");
    let (_, out) = h.peer_datagram(relay, "203.0.113.50:7000".parse().unwrap(), b"abcde").unwrap();
    assert_eq!(out, [0x4a, 0xbc, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]);
    // A TCP client's padded ChannelData is accepted.
    let mut padded = channel_data(0x4abc, b"abcde");
    padded.extend_from_slice(&[0, 0, 0]);
    let (_, out) = h.send(client, &padded).unwrap();
    assert_eq!(out, b"abcde");
}

#[test]
fn channel_bind_rules_are_enforced() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let (_, _, nonce) = allocate(&mut h, client, &c);
    bind_channel(&mut h, client, &c, &nonce, 0x4001, "203.0.113.50:7000");
    assert_eq!(error_code(&bind_channel(&mut h, client, &c, &nonce, 0x4001, "203.0.113.51:7000")), Some(400));
    assert_eq!(error_code(&bind_channel(&mut h, client, &c, &nonce, 0x4002, "203.0.113.50:7000")), Some(400));
    assert_eq!(error_code(&bind_channel(&mut h, client, &c, &nonce, 0x3000, "203.0.113.52:7000")), Some(400));
    assert_eq!(error_code(&bind_channel(&mut h, client, &c, &nonce, 0x4003, "[2001:db8::5]:7000")), Some(443));
    let m = h.request(client, &build(CHANNEL_BIND, vec![ChannelNumber::new(0x4004).into()], Some((&c, &nonce))));
    assert_eq!(error_code(&m), Some(400), "XOR-PEER-ADDRESS missing");
}

#[test]
fn permission_quota_is_508() {
    let mut cfg = config();
    cfg.max_permissions = 2;
    let mut h = Harness::new(cfg);
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let (_, _, nonce) = allocate(&mut h, client, &c);
    permit(&mut h, client, &c, &nonce, "203.0.113.1:1");
    permit(&mut h, client, &c, &nonce, "203.0.113.2:1");
    assert_eq!(permit(&mut h, client, &c, &nonce, "203.0.113.2:9").class(), MessageClass::SuccessResponse, "same IP");
    assert_eq!(error_code(&permit(&mut h, client, &c, &nonce, "203.0.113.3:1")), Some(508));
    h.advance(Duration::from_secs(300));
    assert_eq!(permit(&mut h, client, &c, &nonce, "203.0.113.3:1").class(), MessageClass::SuccessResponse);
}

#[test]
fn forbidden_peers_get_403_and_are_counted_by_reason() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let (_, _, nonce) = allocate(&mut h, client, &c);
    for (peer, why) in [
        ("127.0.0.1:22", Refusal::Loopback),
        ("[::ffff:127.0.0.1]:22", Refusal::Loopback),
        ("10.0.0.5:80", Refusal::Private),
        ("169.254.169.254:80", Refusal::LinkLocal),
        ("198.51.100.1:3478", Refusal::OwnAddress),
    ] {
        if peer.starts_with("[") {
            // An IPv4 allocation cannot take an IPv6 peer (443); the canonicalisation is tested on IPv6 below.
            continue;
        }
        assert_eq!(error_code(&permit(&mut h, client, &c, &nonce, peer)), Some(403), "{peer}");
        assert_eq!(error_code(&bind_channel(&mut h, client, &c, &nonce, 0x4001, peer)), Some(403), "{peer}");
        assert!(h.send(client, &send_indication(peer, b"x")).is_none());
        assert_eq!(h.server.stats().refusals[why.index()], 3, "{peer}");
    }
    // On an IPv6 allocation, an IPv4-mapped loopback is still loopback.
    let v6client = udp_client(4001);
    let nonce6 = nonce_of(&h.request(v6client, &build(ALLOCATE, vec![udp_transport()], None)));
    let v6 = RequestedAddressFamily::new(AddressFamily::IPv6).into();
    h.request(v6client, &build(ALLOCATE, vec![udp_transport(), v6], Some((&c, &nonce6))));
    for peer in ["[::ffff:127.0.0.1]:22", "[64:ff9b::a9fe:a9fe]:80", "[2002:0a00:0001::]:80", "[::1]:22"] {
        assert_eq!(error_code(&permit(&mut h, v6client, &c, &nonce6, peer)), Some(403), "{peer}");
    }
}

#[test]
fn flags_allow_loopback_and_private_peers() {
    let mut cfg = config();
    cfg.policy.allow_loopback = true;
    cfg.policy.allow_private = true;
    let mut h = Harness::new(cfg);
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let (_, _, nonce) = allocate(&mut h, client, &c);
    for peer in ["127.0.0.1:5000", "10.0.0.5:80", "192.168.1.1:1"] {
        assert_eq!(permit(&mut h, client, &c, &nonce, peer).class(), MessageClass::SuccessResponse, "{peer}");
    }
    assert_eq!(error_code(&permit(&mut h, client, &c, &nonce, "198.51.100.1:3478")), Some(403), "own port");
    assert_eq!(error_code(&permit(&mut h, client, &c, &nonce, "224.0.0.1:5")), Some(403));
}

#[test]
fn two_allocations_on_this_relay_talk_internally() {
    let mut h = Harness::new(config());
    let (a, b) = (udp_client(4000), udp_client(4001));
    let (ca, cb) = (creds("alice", "wonderland"), creds("bob", "builder"));
    let (relay_a, relayed_a, na) = allocate(&mut h, a, &ca);
    let (_, relayed_b, nb) = allocate(&mut h, b, &cb);
    // The relayed addresses are this relay's own (198.51.100.1), yet allowed: the traffic stays inside.
    assert_eq!(permit(&mut h, a, &ca, &na, &relayed_b.to_string()).class(), MessageClass::SuccessResponse);
    assert!(h.send(a, &send_indication(&relayed_b.to_string(), b"hi")).is_none(), "B has no permission for A yet");
    permit(&mut h, b, &cb, &nb, &relayed_a.to_string());
    let (target, out) = h.send(a, &send_indication(&relayed_b.to_string(), b"hi")).unwrap();
    assert_eq!(target, Target::Client(b));
    let m = decode(&out).unwrap();
    let from = m.attributes().iter().find_map(|x| x.as_xor_peer_address().ok()).unwrap();
    assert_eq!(*from.socket_address(), relayed_a);
    // With channels on both sides it is ChannelData end to end.
    bind_channel(&mut h, a, &ca, &na, 0x4001, &relayed_b.to_string());
    bind_channel(&mut h, b, &cb, &nb, 0x4002, &relayed_a.to_string());
    let (target, out) = h.send(a, &channel_data(0x4001, b"ping")).unwrap();
    assert_eq!(target, Target::Client(b));
    assert_eq!(out, channel_data(0x4002, b"ping"));
    let (target, out) = h.send(b, &channel_data(0x4002, b"pong")).unwrap();
    assert_eq!(target, Target::Client(a));
    assert_eq!(out, channel_data(0x4001, b"pong"));
    assert_eq!(h.server.stats().packets_internal, 3);
    assert_eq!(h.server.stats().packets_to_peers, 0);
    let _ = relay_a;
}

#[test]
fn tcp_client_going_away_ends_its_allocation() {
    let mut h = Harness::new(config());
    let client = FiveTuple { transport: Transport::Tcp, ..udp_client(4000) };
    allocate(&mut h, client, &creds("alice", "wonderland"));
    h.server.client_closed(client);
    assert_eq!(h.server.allocations(), 0);
    assert!(h.open.lock().unwrap().is_empty());
}

#[test]
fn requests_without_an_allocation_are_437() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let nonce = nonce_of(&h.request(client, &build(ALLOCATE, vec![udp_transport()], None)));
    assert_eq!(error_code(&permit(&mut h, client, &c, &nonce, "203.0.113.1:1")), Some(437));
    assert!(h.send(client, &channel_data(0x4001, b"x")).is_none());
    assert!(h.send(client, &send_indication("203.0.113.1:1", b"x")).is_none());
}

/// A tiny deterministic generator, so the hostile-input test is reproducible.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn malformed_truncated_and_hostile_input_never_panics() {
    let mut h = Harness::new(config());
    let client = udp_client(4000);
    let c = creds("alice", "wonderland");
    let (relay, _, nonce) = allocate(&mut h, client, &c);
    bind_channel(&mut h, client, &c, &nonce, 0x4001, "203.0.113.50:7000");
    let valid = vec![
        build(ALLOCATE, vec![udp_transport()], Some((&c, &nonce))),
        build(
            CHANNEL_BIND,
            vec![ChannelNumber::new(0x4001).into(), peer_attr("203.0.113.50:7000")],
            Some((&c, &nonce)),
        ),
        build(CREATE_PERMMISSION, vec![peer_attr("203.0.113.50:7000")], Some((&c, &nonce))),
        send_indication("203.0.113.50:7000", b"payload"),
        channel_data(0x4001, b"payload"),
        crate::stun::message::binding_request([1; 12]),
    ];
    // Every truncation and every single-byte corruption of valid messages.
    for msg in &valid {
        for cut in 0..msg.len() {
            let _ = h.send(client, &msg[..cut]);
        }
        for i in 0..msg.len() {
            let mut m = msg.clone();
            m[i] ^= 0xFF;
            let _ = h.send(client, &m);
        }
    }
    // Lying lengths: the header says more (or less) than there is.
    for msg in &valid {
        for len in [0u16, 4, 0xFFFC, (msg.len() as u16).wrapping_add(4)] {
            let mut m = msg.clone();
            if m.len() >= 4 {
                m[2..4].copy_from_slice(&len.to_be_bytes());
            }
            let _ = h.send(client, &m);
        }
    }
    // A request with thousands of attributes.
    let mut huge = vec![0x00, 0x03, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    huge.extend_from_slice(&[7; 12]);
    for _ in 0..(65_000 / 8) {
        huge.extend_from_slice(&[0x80, 0x22, 0, 4, b'a', b'b', b'c', b'd']);
    }
    let body = (huge.len() - 20) as u16;
    huge[2..4].copy_from_slice(&body.to_be_bytes());
    let _ = h.send(client, &huge);
    // Random bytes, some dressed up with a STUN header.
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for round in 0..20_000 {
        let len = (rng.next() % 200) as usize;
        let mut m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if round % 2 == 0 && m.len() >= 20 {
            m[0] &= 0x3F;
            let body = ((m.len() - 20) & !3) as u16;
            m[2..4].copy_from_slice(&body.to_be_bytes());
            m[4..8].copy_from_slice(&crate::stun::message::MAGIC_COOKIE.to_be_bytes());
        }
        let _ = h.send(client, &m);
        let _ = h.peer_datagram(relay, "203.0.113.50:7000".parse().unwrap(), &m);
    }
    // Still serving.
    assert!(h.server.stats().dropped_total() > 0);
    let (_, out) = h.send(client, &channel_data(0x4001, b"alive")).unwrap();
    assert_eq!(out, b"alive");
    // The corrupted integrity checks locked the source; past the longest lock it logs in again.
    h.advance(Duration::from_secs(61));
    allocate(&mut h, udp_client(4100), &c);
}

#[test]
fn draining_refuses_new_allocations_with_508_or_300_and_keeps_the_existing_ones() {
    for alternate in [None, Some("203.0.113.9:3478".parse::<SocketAddr>().unwrap())] {
        let mut h = Harness::new(ServerConfig { alternate_server: alternate, ..config() });
        let c = creds("alice", "wonderland");
        let old = udp_client(4000);
        let (_, _, nonce) = allocate(&mut h, old, &c);
        h.server.start_draining();
        let m = h.request(old, &build(REFRESH, vec![LifeTime::new(900).into()], Some((&c, &nonce))));
        assert_eq!(lifetime_of(&m), 900, "refreshes go on while draining");
        assert_eq!(permit(&mut h, old, &c, &nonce, "203.0.113.20:9").class(), MessageClass::SuccessResponse);
        let new = udp_client(4001);
        let nonce = nonce_of(&h.request(new, &build(ALLOCATE, vec![udp_transport()], None)));
        let m = h.request(new, &build(ALLOCATE, vec![udp_transport()], Some((&c, &nonce))));
        let alt = m.attributes().iter().find_map(|a| a.as_alternate_server().ok()).map(|a| *a.socket_address());
        match alternate {
            None => assert_eq!((error_code(&m), alt), (Some(508), None)),
            Some(a) => assert_eq!((error_code(&m), alt), (Some(300), Some(a))),
        }
        assert_eq!(h.server.allocations(), 1);
        assert_eq!(h.server.allocations_by_transport()[0], (Transport::Udp, 1));
    }
}
