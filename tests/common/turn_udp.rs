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
