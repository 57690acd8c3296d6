//! Property tests of the server core (proptest, bounded case counts so CI
//! stays at a few seconds; `scripts/fuzz-relay` runs cargo-fuzz for longer):
//! random and mutated STUN, TURN and ChannelData packets from clients and
//! random datagrams from peers never panic, and the invariants hold:
//! - an answer to input that carries no valid credentials is small (at most
//!   [`UNAUTH_ANSWER_MAX`] bytes), and everything one source gets back over
//!   UDP without credentials stays within its byte budget (the amplification
//!   bound of `unauth_limit.rs`);
//! - what goes to a peer is never larger than what the client sent;
//! - a peer datagram reaches the client with at most a Data indication's
//!   overhead;
//! - after any of it, a fresh client from another address still allocates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use proptest::prelude::*;
use stun_rs::attributes::stun::{MessageIntegrity, Nonce, Realm, UserName};
use stun_rs::attributes::turn::{ChannelNumber, Data, RequestedTrasport, XorPeerAddress};
use stun_rs::methods::{ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH, SEND};
use stun_rs::{Algorithm, AlgorithmId, HMACKey, MessageClass, MessageMethod, StunAttribute, StunMessageBuilder};

use super::unauth_limit::UnauthLimitConfig;
use super::*;
use crate::stun::message::{decode, encode};
use crate::turn::channel_data::{PEER_HEADROOM, PEER_TAILROOM};

/// The largest unauthenticated answer: an IPv6 RFC 5780 Binding success with
/// SOFTWARE and FINGERPRINT is 116 bytes; a 401 with REALM, NONCE and
/// FINGERPRINT 100.
const UNAUTH_ANSWER_MAX: usize = 160;
const BUDGET: u32 = 2048;

struct Ports(u64);

impl RelayPorts for Ports {
    fn open(&mut self, family: Family) -> Result<(RelayId, SocketAddr), RelayOpenError> {
        self.0 += 1;
        let ip = if family == Family::V4 { "198.51.100.1" } else { "2001:db8::1" };
        Ok((RelayId(self.0), SocketAddr::new(ip.parse().expect("ip"), 50_000 + self.0 as u16)))
    }
    fn close(&mut self, _: RelayId) {}
}

fn server(now: Instant) -> Server {
    let cfg = ServerConfig {
        realm: "lab".into(),
        users: HashMap::from([("alice".into(), "wonderland".into())]),
        nonce_key: [5; 32],
        rfc5780: Some(Rfc5780 {
            ips: ["198.51.100.1".parse().expect("ip"), "198.51.100.2".parse().expect("ip")],
            ports: [3478, 3479],
        }),
        unauth: UnauthLimitConfig { burst_bytes: BUDGET, bytes_per_sec: 1, max_sources: 1000 },
        ..ServerConfig::default()
    };
    Server::new(cfg, Box::new(Ports(0)), now, UNIX_EPOCH + Duration::from_secs(1_700_000_000))
}

fn client(ip: &str, port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        local: "198.51.100.1:3478".parse().expect("addr"),
        remote: SocketAddr::new(ip.parse().expect("ip"), port),
    }
}

fn build(method: MessageMethod, attrs: Vec<StunAttribute>, nonce: Option<&str>) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(method, MessageClass::Request);
    for a in attrs {
        b = b.with_attribute(a);
    }
    if let Some(n) = nonce {
        let key = HMACKey::new_long_term("alice", "lab", "wonderland", Algorithm::from(AlgorithmId::MD5)).expect("key");
        b = b
            .with_attribute(UserName::new("alice").expect("user"))
            .with_attribute(Realm::new("lab").expect("realm"))
            .with_attribute(Nonce::new(n).expect("nonce"))
            .with_attribute(MessageIntegrity::new(key));
    }
    encode(&b.build())
}

fn udp() -> StunAttribute {
    RequestedTrasport::new(stun_rs::protocols::UDP).into()
}

/// Allocates for `c`; the nonce and the relay.
fn allocate(s: &mut Server, c: FiveTuple, now: Instant) -> (String, RelayId) {
    let answer = s.handle_client(c, &build(ALLOCATE, vec![udp()], None), now).expect("a challenge").payload.to_vec();
    let m = decode(&answer).expect("decodes");
    let nonce = m.attributes().iter().find_map(|a| a.as_nonce().ok()).expect("nonce").as_str().to_string();
    let req = build(ALLOCATE, vec![udp()], Some(&nonce));
    let answer = s.handle_client(c, &req, now).expect("an answer").payload.to_vec();
    let m = decode(&answer).expect("decodes");
    assert_eq!(m.class(), MessageClass::SuccessResponse, "{m:?}");
    let relay = s.allocs.relay_of_client(&c).expect("allocated");
    (nonce, relay)
}

/// Valid messages of every kind an allocated client sends, to mutate.
fn seeds(nonce: &str) -> Vec<Vec<u8>> {
    let peer: SocketAddr = "203.0.113.50:7000".parse().expect("peer");
    let send = StunMessageBuilder::new(SEND, MessageClass::Indication)
        .with_attribute(XorPeerAddress::from(peer))
        .with_attribute(Data::new(b"payload"))
        .build();
    vec![
        build(ALLOCATE, vec![udp()], Some(nonce)),
        build(ALLOCATE, vec![udp()], None),
        build(REFRESH, vec![], Some(nonce)),
        build(CREATE_PERMMISSION, vec![XorPeerAddress::from(peer).into()], Some(nonce)),
        build(CHANNEL_BIND, vec![ChannelNumber::new(0x4001).into(), XorPeerAddress::from(peer).into()], Some(nonce)),
        build(BINDING, vec![], None),
        crate::stun::message::binding_request([1; 12]),
        encode(&send),
        vec![0x40, 0x01, 0x00, 0x04, b'd', b'a', b't', b'a'],
        // RFC 3489 Binding with CHANGE-REQUEST.
        [&[0u8, 1, 0, 8][..], &[0xAB; 16], &[0, 3, 0, 4, 0, 0, 0, 6]].concat(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Truncate(usize),
    Insert { at: usize, bytes: Vec<u8> },
    SetLength(u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        any::<u16>().prop_map(Mutation::SetLength),
    ]
}

fn apply(mut m: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for x in muts {
        match x {
            Mutation::Flip { at, mask } if !m.is_empty() => {
                let i = at % m.len();
                m[i] ^= mask;
            }
            Mutation::Truncate(n) if !m.is_empty() => m.truncate(n % m.len()),
            Mutation::Insert { at, bytes } => {
                let i = at % (m.len() + 1);
                m.splice(i..i, bytes.iter().copied());
            }
            Mutation::SetLength(len) if m.len() >= 4 => m[2..4].copy_from_slice(&len.to_be_bytes()),
            _ => {}
        }
    }
    m
}

/// Random bytes, some dressed as STUN (cookie, even length) or as ChannelData.
fn packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        (proptest::collection::vec(any::<u8>(), 20..300), any::<u16>()).prop_map(|(mut m, t)| {
            m[0..2].copy_from_slice(&(t & 0x3FFF).to_be_bytes());
            let len = ((m.len() - 20) & !3) as u16;
            m[2..4].copy_from_slice(&len.to_be_bytes());
            m[4..8].copy_from_slice(&crate::stun::message::MAGIC_COOKIE.to_be_bytes());
            m
        }),
        (0x4000u16..0x8000, proptest::collection::vec(any::<u8>(), 0..300), any::<u16>()).prop_map(|(n, data, len)| {
            let mut m = n.to_be_bytes().to_vec();
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(&data);
            m
        }),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_packets_from_a_stranger_get_small_answers_within_the_byte_budget(
        random in proptest::collection::vec(packet(), 0..40),
        mutated in proptest::collection::vec((0usize..10, proptest::collection::vec(mutation(), 0..3)), 0..40),
    ) {
        let t0 = Instant::now();
        let mut s = server(t0);
        let stranger = client("203.0.113.66", 4000);
        // Seeds signed with a nonce the stranger was never given: unauthenticated all the same.
        let seeds = seeds("0000000000000000ffffffffffffffff");
        let mut packets = random;
        packets.extend(mutated.iter().map(|(k, muts)| apply(seeds[*k].clone(), muts)));
        let mut out = 0usize;
        for (i, p) in packets.iter().enumerate() {
            let now = t0 + Duration::from_millis(i as u64);
            if let Some(t) = s.handle_client(stranger, p, now) {
                prop_assert!(t.payload.len() <= UNAUTH_ANSWER_MAX, "{} bytes for {} in", t.payload.len(), p.len());
                out += t.payload.len();
            }
        }
        // One byte per second of refill over at most 40 ms: the budget is the bound.
        prop_assert!(out <= BUDGET as usize, "{out} bytes out");
        let (_, _) = allocate(&mut s, client("203.0.113.77", 5000), t0 + Duration::from_secs(1));
    }

    #[test]
    fn mutated_requests_and_data_from_an_allocated_client_never_panic_or_grow(
        picks in proptest::collection::vec((0usize..10, proptest::collection::vec(mutation(), 0..4)), 1..40),
        peer_data in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1500), 0..8),
    ) {
        let t0 = Instant::now();
        let mut s = server(t0);
        let c = client("203.0.113.10", 4000);
        let (nonce, relay) = allocate(&mut s, c, t0);
        let seeds = seeds(&nonce);
        // Permission and channel to the peer, so Send and ChannelData can flow.
        let _ = s.handle_client(c, &seeds[3], t0);
        let _ = s.handle_client(c, &seeds[4], t0);
        for (i, (k, muts)) in picks.iter().enumerate() {
            let now = t0 + Duration::from_millis(i as u64);
            let p = apply(seeds[*k].clone(), muts);
            if let Some(t) = s.handle_client(c, &p, now)
                && let Target::Peer { .. } = t.target
            {
                prop_assert!(t.payload.len() <= p.len(), "{} bytes to a peer from {}", t.payload.len(), p.len());
            }
        }
        let peer: SocketAddr = "203.0.113.50:7000".parse().expect("peer");
        for d in &peer_data {
            let mut buf = vec![0u8; PEER_HEADROOM + d.len() + PEER_TAILROOM];
            buf[PEER_HEADROOM..PEER_HEADROOM + d.len()].copy_from_slice(d);
            if let Some(t) = s.handle_peer(relay, peer, &mut buf, d.len(), t0) {
                // A Data indication: header, XOR-PEER-ADDRESS (v4: 12), DATA (4 + padded).
                prop_assert!(t.payload.len() <= d.len() + 20 + 12 + 4 + 3, "{} from {}", t.payload.len(), d.len());
            }
        }
        let _ = allocate(&mut s, client("203.0.113.11", 4001), t0 + Duration::from_secs(61));
    }
}
