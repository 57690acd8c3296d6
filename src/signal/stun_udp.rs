//! A STUN Binding responder (RFC 8489 §6.3.1, Binding only, no authentication) on the UDP port of
//! the signal server's own listening address: a second observation point for `natkit punch`.
//!
//! Why: in the one-server deployment (one VPS, one IP, `natkit relay` on :3478 and `natkit signal`
//! on :8080), a punch peer gets answers from only one STUN address and cannot tell whether its NAT
//! maps per destination, so the birthday method never starts. Punch knows the signal URL; asking
//! the same IP on the signal port shows whether the mapping changes with the destination **port**
//! (port-dependent, "symmetric" NATs such as Linux `masquerade fully-random`). What it cannot show:
//! a NAT whose mapping depends on the destination address only (RFC 4787 address-dependent
//! mapping) keeps one mapping for both, since both have the same IP; that needs a second IP.
//!
//! Hostile input: anything that is not a well-formed Binding request (header, magic cookie,
//! length) is dropped and counted; the first drop is logged. An answer is 32 bytes (IPv4) or 44
//! (IPv6) for a request of at least 20: at most 2.2 times the request, and only to the source
//! address, as any public STUN server does.
//!
//! [`answer`] is the sans-IO core; [`serve`] the driver loop.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::net::UdpSocket;

use crate::signal::metrics::Metrics;

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const HEADER_LEN: usize = 20;
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const XOR_MAPPED_ADDRESS: [u8; 2] = [0x00, 0x20];
/// Largest request read (a Binding request with a few attributes is far smaller).
const MAX_REQUEST: usize = 548;

/// Why a datagram got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not a STUN Binding request (other class/method, no magic cookie, too short).
    NotBindingRequest,
    /// The header's length does not match the datagram (or is not a multiple of 4).
    BadLength,
}

/// The Binding success response to `request` from `from`, written into `out` (at least 44
/// bytes); returns its length.
pub fn answer(request: &[u8], from: SocketAddr, out: &mut [u8; 44]) -> Result<usize, Dropped> {
    if request.len() < HEADER_LEN || request[0..2] != BINDING_REQUEST || request[4..8] != MAGIC_COOKIE {
        return Err(Dropped::NotBindingRequest);
    }
    let len = usize::from(u16::from_be_bytes([request[2], request[3]]));
    if len % 4 != 0 || HEADER_LEN + len != request.len() {
        return Err(Dropped::BadLength);
    }
    let port = from.port() ^ 0x2112;
    let (family, addr): (u8, Vec<u8>) = match from.ip() {
        IpAddr::V4(v4) => (0x01, v4.octets().iter().zip(MAGIC_COOKIE).map(|(a, k)| a ^ k).collect()),
        IpAddr::V6(v6) => {
            // XOR with the magic cookie and then the transaction id (RFC 8489 §14.2).
            let key = MAGIC_COOKIE.iter().chain(&request[8..20]);
            (0x02, v6.octets().iter().zip(key).map(|(a, k)| a ^ k).collect())
        }
    };
    let attr_len = 4 + addr.len();
    let total = HEADER_LEN + 4 + attr_len;
    out[0..2].copy_from_slice(&BINDING_SUCCESS);
    out[2..4].copy_from_slice(&((4 + attr_len) as u16).to_be_bytes());
    out[4..20].copy_from_slice(&request[4..20]);
    out[20..22].copy_from_slice(&XOR_MAPPED_ADDRESS);
    out[22..24].copy_from_slice(&(attr_len as u16).to_be_bytes());
    out[24] = 0;
    out[25] = family;
    out[26..28].copy_from_slice(&port.to_be_bytes());
    out[28..total].copy_from_slice(&addr);
    Ok(total)
}

/// Binds UDP on `listen` (the signal server's own address). A failure is not fatal to the server:
/// punch then simply gets no answer here.
pub async fn bind(listen: SocketAddr) -> Option<UdpSocket> {
    match UdpSocket::bind(listen).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                "no STUN on {listen} (UDP): {e}; punch peers of a one-IP deployment cannot tell a symmetric NAT \
                 (free the UDP port, or pass --no-stun)"
            );
            None
        }
    }
}

/// Answers Binding requests on `socket` until the task is dropped.
pub async fn serve(socket: UdpSocket, metrics: Arc<Metrics>) {
    let mut buf = [0u8; MAX_REQUEST];
    let mut out = [0u8; 44];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors of earlier answers (a client that went away) and the like: go on.
            Err(e) => {
                tracing::debug!("STUN (UDP): {e}");
                continue;
            }
        };
        match answer(&buf[..n], from, &mut out) {
            Ok(len) => {
                metrics.stun_answered.fetch_add(1, Relaxed);
                if let Err(e) = socket.send_to(&out[..len], from).await {
                    tracing::debug!(%from, "STUN answer: {e}");
                }
            }
            Err(why) => {
                if metrics.stun_dropped.fetch_add(1, Relaxed) == 0 {
                    tracing::warn!(
                        %from,
                        ?why,
                        "dropped a datagram on the STUN port (first one now; all are counted in \
                         natkit_signal_stun_dropped_total)"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::{BindingResponse, binding_request, new_transaction_id};

    #[test]
    fn a_binding_request_gets_the_source_address_back_in_both_families() {
        for from in ["203.0.113.11:40000", "[2001:db8::7]:5000"] {
            let from: SocketAddr = from.parse().unwrap();
            let id = new_transaction_id();
            let mut out = [0u8; 44];
            let n = answer(&binding_request(id), from, &mut out).expect("answered");
            assert_eq!(n, if from.is_ipv4() { 32 } else { 44 });
            let r = BindingResponse::parse(&out[..n]).expect("our client parses it");
            assert_eq!(r.reflexive(), Some(from));
            assert_eq!(&out[8..20], &id);
        }
    }

    #[test]
    fn anything_else_is_dropped_never_answered_and_never_panics() {
        let from: SocketAddr = "203.0.113.11:40000".parse().unwrap();
        let mut out = [0u8; 44];
        let req = binding_request(new_transaction_id());
        let mut response = req.clone();
        response[0..2].copy_from_slice(&BINDING_SUCCESS);
        let mut no_cookie = req.clone();
        no_cookie[4] ^= 0xff;
        let mut long = req.clone();
        long[3] = 4;
        for (bytes, why) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], Dropped::NotBindingRequest),
            (&response[..], Dropped::NotBindingRequest),
            (&no_cookie[..], Dropped::NotBindingRequest),
            (&req[..19], Dropped::NotBindingRequest),
            (&long[..], Dropped::BadLength),
        ] {
            assert_eq!(answer(bytes, from, &mut out), Err(why), "{bytes:?}");
        }
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
            let _ = answer(&junk, from, &mut out);
        }
    }
}
