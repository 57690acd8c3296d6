//! Fuzzes everything `natkit relay` decodes from the network: STUN requests
//! and indications, ChannelData (UDP and TCP framing), peer datagrams, and
//! the decoding glue in natkit::stun::message. The server starts with a live
//! allocation, a permission and a channel for the fuzzed client, so the data
//! path is reachable. Input is a sequence of `[kind, len_hi, len_lo, bytes…]`.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use natkit::net::transport::Transport;
use natkit::turn::server::{
    Family, FiveTuple, RelayId, RelayOpenError, RelayPorts, Server, ServerConfig, wire::PEER_HEADROOM,
};
use stun_rs::attributes::stun::{MessageIntegrity, Nonce, Realm, UserName};
use stun_rs::attributes::turn::{ChannelNumber, RequestedTrasport, XorPeerAddress};
use stun_rs::methods::{ALLOCATE, CHANNEL_BIND};
use stun_rs::{Algorithm, AlgorithmId, HMACKey, MessageClass, MessageMethod, StunAttribute, StunMessageBuilder};

struct Ports(u64);
impl RelayPorts for Ports {
    fn open(&mut self, _: Family) -> Result<(RelayId, SocketAddr), RelayOpenError> {
        self.0 += 1;
        Ok((RelayId(self.0), SocketAddr::from(([198, 51, 100, 1], 50_000 + self.0 as u16))))
    }
    fn close(&mut self, _: RelayId) {}
}

fn client(t: Transport) -> FiveTuple {
    FiveTuple {
        transport: t,
        local: SocketAddr::from(([198, 51, 100, 1], 3478)),
        remote: SocketAddr::from(([203, 0, 113, 9], 4000)),
    }
}

fn request(method: MessageMethod, attrs: Vec<StunAttribute>, nonce: Option<&str>) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(method, MessageClass::Request);
    for a in attrs {
        b = b.with_attribute(a);
    }
    if let Some(n) = nonce {
        let key = HMACKey::new_long_term("u", "r", "p", Algorithm::from(AlgorithmId::MD5)).unwrap();
        b = b
            .with_attribute(UserName::new("u").unwrap())
            .with_attribute(Realm::new("r").unwrap())
            .with_attribute(Nonce::new(n).unwrap())
            .with_attribute(MessageIntegrity::new(key));
    }
    natkit::stun::message::encode(&b.build())
}

fn nonce_of(bytes: &[u8]) -> String {
    let m = natkit::stun::message::decode(bytes).unwrap();
    m.attributes().iter().find_map(|a| a.as_nonce().ok()).unwrap().as_str().to_string()
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let cfg = ServerConfig {
        realm: "r".into(),
        users: [("u".to_string(), "p".to_string())].into(),
        nonce_key: [1; 32],
        ..ServerConfig::default()
    };
    let mut s = Server::new(cfg, Box::new(Ports(0)), t0, SystemTime::now());
    let udp: StunAttribute = RequestedTrasport::new(stun_rs::protocols::UDP).into();
    for t in [Transport::Udp, Transport::Tcp] {
        let c = FiveTuple { remote: SocketAddr::from(([203, 0, 113, 9], if t == Transport::Udp { 4000 } else { 4001 })), ..client(t) };
        let challenge = s.handle_client(c, &request(ALLOCATE, vec![udp.clone()], None), t0).unwrap().payload.to_vec();
        let nonce = nonce_of(&challenge);
        s.handle_client(c, &request(ALLOCATE, vec![udp.clone()], Some(&nonce)), t0);
        let peer: StunAttribute = XorPeerAddress::from(SocketAddr::from(([203, 0, 113, 50], 7000))).into();
        s.handle_client(c, &request(CHANNEL_BIND, vec![ChannelNumber::new(0x4001).into(), peer], Some(&nonce)), t0);
    }
    let _ = natkit::stun::message::BindingResponse::parse(data);
    let mut now = t0;
    let mut rest = data;
    let mut buf = vec![0u8; PEER_HEADROOM + 65_536 + 4];
    while rest.len() >= 3 {
        let kind = rest[0];
        let len = (u16::from_be_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let chunk = &rest[3..3 + len];
        rest = &rest[3 + len..];
        match kind % 5 {
            0 => drop(s.handle_client(client(Transport::Udp), chunk, now)),
            1 => drop(s.handle_client(FiveTuple { remote: SocketAddr::from(([203, 0, 113, 9], 4001)), ..client(Transport::Tcp) }, chunk, now)),
            2 | 3 => {
                buf[PEER_HEADROOM..PEER_HEADROOM + chunk.len()].copy_from_slice(chunk);
                let relay = RelayId(if kind % 5 == 2 { 1 } else { 2 });
                let _ = s.handle_peer(relay, SocketAddr::from(([203, 0, 113, 50], 7000)), &mut buf, chunk.len(), now);
            }
            _ => {
                now += Duration::from_secs(u64::from(kind));
                s.handle_timeout(now);
            }
        }
    }
});
