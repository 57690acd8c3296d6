//! A tiny hand-rolled TURN client over UDP for attack tests: it binds any
//! local address (127.0.0.x, or one inside a namespace when created on a
//! thread that entered it), builds requests with stun-rs, and can send
//! thousands of pre-built requests without waiting for answers.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use natkit::stun::message::{decode, encode, new_transaction_id};
use stun_rs::attributes::stun::{Fingerprint, MessageIntegrity, Nonce, Realm, UserName};
use stun_rs::attributes::turn::RequestedTrasport;
use stun_rs::methods::ALLOCATE;
use stun_rs::{
    Algorithm, AlgorithmId, HMACKey, MessageClass, MessageMethod, StunAttribute, StunMessage, StunMessageBuilder,
    TransactionId,
};

pub const REALM: &str = "lab";

pub struct Client {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl Client {
    /// A client bound to `local_ip` (any port) talking to `server`.
    pub fn bind(local_ip: &str, server: SocketAddr) -> Client {
        let sock = UdpSocket::bind((local_ip, 0)).unwrap_or_else(|e| panic!("bind {local_ip}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(500))).expect("read timeout");
        Client { sock, server }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    /// Sends `req` up to `tries` times, 500 ms apart; the answer with the same transaction id.
    pub fn transact_tries(&self, req: &[u8], tries: usize) -> Option<StunMessage> {
        let id = &req[8..20];
        let mut buf = [0u8; 2048];
        for _ in 0..tries {
            self.sock.send_to(req, self.server).expect("send");
            while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                if n >= 20 && &buf[8..20] == id {
                    return Some(decode(&buf[..n]).expect("the relay's answer decodes"));
                }
            }
        }
        None
    }

    pub fn transact(&self, req: &[u8]) -> Option<StunMessage> {
        self.transact_tries(req, 4)
    }

    /// A NONCE from a 401 challenge to an Allocate without credentials.
    pub fn nonce(&self) -> String {
        let m = self.transact(&request(ALLOCATE, vec![udp()], None)).expect("a 401 challenge");
        assert_eq!(code(&m), Some(401), "{m:?}");
        nonce_of(&m)
    }

    /// Every datagram that arrives until the socket stays quiet for `quiet`.
    pub fn drain(&self, quiet: Duration) -> Vec<Vec<u8>> {
        self.sock.set_read_timeout(Some(quiet)).expect("read timeout");
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        self.sock.set_read_timeout(Some(Duration::from_millis(500))).expect("read timeout");
        out
    }
}

pub fn udp() -> StunAttribute {
    RequestedTrasport::new(stun_rs::protocols::UDP).into()
}

pub fn code(m: &StunMessage) -> Option<u16> {
    m.attributes().iter().find_map(|a| a.as_error_code().ok()).map(|e| e.error_code().error_code())
}

pub fn nonce_of(m: &StunMessage) -> String {
    m.attributes().iter().find_map(|a| a.as_nonce().ok()).expect("NONCE").as_str().to_string()
}

/// A request with a fresh transaction id; with `auth` = (user, password, nonce) it carries
/// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY.
pub fn request(method: MessageMethod, attrs: Vec<StunAttribute>, auth: Option<(&str, &str, &str)>) -> Vec<u8> {
    build(method, attrs, auth, false)
}

/// Like [`request`], with FINGERPRINT last.
pub fn request_with_fingerprint(
    method: MessageMethod,
    attrs: Vec<StunAttribute>,
    auth: Option<(&str, &str, &str)>,
) -> Vec<u8> {
    build(method, attrs, auth, true)
}

fn build(method: MessageMethod, attrs: Vec<StunAttribute>, auth: Option<(&str, &str, &str)>, fp: bool) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(method, MessageClass::Request)
        .with_transaction_id(TransactionId::from(new_transaction_id()));
    for a in attrs {
        b = b.with_attribute(a);
    }
    if let Some((user, pass, nonce)) = auth {
        let key = HMACKey::new_long_term(user, REALM, pass, Algorithm::from(AlgorithmId::MD5)).expect("key");
        b = b
            .with_attribute(UserName::new(user).expect("username"))
            .with_attribute(Realm::new(REALM).expect("realm"))
            .with_attribute(Nonce::new(nonce).expect("nonce"))
            .with_attribute(MessageIntegrity::new(key));
    }
    if fp {
        b = b.with_attribute(Fingerprint::default());
    }
    encode(&b.build())
}

/// Allocate with a fresh nonce; the final answer.
pub fn allocate(c: &Client, user: &str, pass: &str) -> StunMessage {
    let nonce = c.nonce();
    c.transact(&request(ALLOCATE, vec![udp()], Some((user, pass, &nonce)))).expect("an answer to Allocate")
}

/// Whether any of `datagrams` is a success response (class bits 10) to one of our requests.
pub fn any_success(datagrams: &[Vec<u8>]) -> bool {
    datagrams.iter().any(|d| d.len() >= 20 && d[0] & 0x01 == 0x01 && d[1] & 0x10 == 0)
}

/// A Send indication carrying `data` to `peer`.
pub fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let b = StunMessageBuilder::new(stun_rs::methods::SEND, MessageClass::Indication)
        .with_transaction_id(TransactionId::from(new_transaction_id()))
        .with_attribute(stun_rs::attributes::turn::XorPeerAddress::from(peer))
        .with_attribute(stun_rs::attributes::turn::Data::new(data));
    encode(&b.build())
}

/// A ChannelData message (RFC 8656 §12.4), unpadded (UDP).
pub fn channel_data(number: u16, data: &[u8]) -> Vec<u8> {
    let mut m = number.to_be_bytes().to_vec();
    m.extend_from_slice(&(data.len() as u16).to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// XOR-RELAYED-ADDRESS of an Allocate success.
pub fn relayed_of(m: &StunMessage) -> SocketAddr {
    *m.attributes().iter().find_map(|a| a.as_xor_relayed_address().ok()).expect("XOR-RELAYED-ADDRESS").socket_address()
}

/// A client that allocated, with the nonce and credentials it keeps using.
pub struct Allocated {
    pub client: Client,
    pub relayed: SocketAddr,
    pub nonce: String,
    pub user: String,
    pub pass: String,
}

impl Allocated {
    /// Allocates from `local_ip` (with REQUESTED-ADDRESS-FAMILY IPv6 when `v6`).
    pub fn new(local_ip: &str, server: SocketAddr, user: &str, pass: &str, v6: bool) -> Allocated {
        let client = Client::bind(local_ip, server);
        let nonce = client.nonce();
        let mut attrs = vec![udp()];
        if v6 {
            attrs.push(stun_rs::attributes::turn::RequestedAddressFamily::new(stun_rs::AddressFamily::IPv6).into());
        }
        let m = client.transact(&request(ALLOCATE, attrs, Some((user, pass, &nonce)))).expect("an answer to Allocate");
        assert_eq!(m.class(), MessageClass::SuccessResponse, "Allocate from {local_ip}: {m:?}");
        let relayed = relayed_of(&m);
        Allocated { client, relayed, nonce, user: user.into(), pass: pass.into() }
    }

    /// A signed request on this allocation; the answer's error code (None for a success).
    pub fn signed(&self, method: MessageMethod, attrs: Vec<StunAttribute>) -> Option<u16> {
        let req = request(method, attrs, Some((&self.user, &self.pass, &self.nonce)));
        let m = self.client.transact(&req).expect("an answer");
        code(&m)
    }

    pub fn permit(&self, peer: SocketAddr) -> Option<u16> {
        self.signed(
            stun_rs::methods::CREATE_PERMMISSION,
            vec![stun_rs::attributes::turn::XorPeerAddress::from(peer).into()],
        )
    }

    pub fn bind_channel(&self, number: u16, peer: SocketAddr) -> Option<u16> {
        self.signed(
            stun_rs::methods::CHANNEL_BIND,
            vec![
                stun_rs::attributes::turn::ChannelNumber::new(number).into(),
                stun_rs::attributes::turn::XorPeerAddress::from(peer).into(),
            ],
        )
    }

    /// Refresh with LIFETIME 0: the allocation ends.
    pub fn delete(&self) -> Option<u16> {
        self.signed(stun_rs::methods::REFRESH, vec![stun_rs::attributes::turn::LifeTime::new(0).into()])
    }

    pub fn send_raw(&self, bytes: &[u8]) {
        self.client.sock.send_to(bytes, self.client.server).expect("send");
    }
}
