//! One UDP socket for ICE and QUIC (RFC 7983 demultiplexing).
//!
//! The socket that punched the hole must carry the QUIC connection too, or
//! the NAT binding the checks opened is useless. quinn reads through
//! [`MuxSocket`] (its abstract-socket hook); every datagram that looks like
//! STUN (first byte 0–3, magic cookie) is diverted to the ICE driver before
//! quinn sees it, and everything else (QUIC's first byte is 64–127 or ≥ 128)
//! goes to quinn. That split only holds if QUIC's fixed bit is never
//! greased (RFC 9287), so endpoints on this socket are built with
//! [`endpoint_config`] (RFC 9443 §3 says the same).
//!
//! With a TURN allocation ([`RelayLink`]), datagrams from the TURN server are
//! unwrapped first (Data indication or ChannelData, RFC 8656 §10–12) and the
//! peer's datagram inside is split the same way, with the relayed address as
//! where it arrived; QUIC to a peer routed through the relay is wrapped on
//! the way out.
//!
//! A peer that moved ([`MuxSocket::redirect`]): quinn's client never follows a server to a new
//! address (RFC 9000 §9 lets only clients migrate), so when ICE has proved the QUIC server's new
//! address (its NAT forgot and it re-punched; or its relayed address when the path falls back to the
//! relay), the mux sends what quinn addresses to the old one there, and shows what comes from there
//! as from the old one. quinn sees no change; ICE's authenticated checks (RFC 8445 §7.2.5) did the
//! path validation QUIC would have done.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::punch::birthday::is_birthday;
use crate::punch::dual_stack::unmap;
use crate::punch::relay_link::RelayLink;
use crate::stun::message::looks_like_stun;

/// An endpoint config for a socket shared with STUN: no fixed-bit greasing,
/// so every QUIC packet starts with 0x40–0x7F or ≥ 0xC0.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    c.grease_quic_bit(false);
    c
}

/// A STUN datagram diverted from the shared socket.
#[derive(Debug)]
pub struct StunDatagram {
    pub from: SocketAddr,
    /// Our relayed address when it came through the TURN relay; `None`: to the socket itself.
    pub to: Option<SocketAddr>,
    pub bytes: Vec<u8>,
}

/// Where the mux delivers what is not QUIC.
pub struct Diverted {
    /// ICE checks and answers, for the agent.
    pub stun: mpsc::UnboundedReceiver<StunDatagram>,
    /// Birthday-method probes and answers (`birthday::is_birthday`).
    pub birthday: mpsc::UnboundedReceiver<StunDatagram>,
}

pub struct MuxSocket {
    socket: Arc<UdpSocket>,
    stun: mpsc::UnboundedSender<StunDatagram>,
    birthday: mpsc::UnboundedSender<StunDatagram>,
    relay: Option<Arc<RelayLink>>,
    /// Datagrams that were neither STUN nor plausible QUIC.
    pub dropped: AtomicU64,
    redirect: std::sync::Mutex<Redirect>,
    /// Relay fallback: the peer QUIC knows here is followed to wherever its QUIC comes from through
    /// our TURN relay (its new public address, unknown in advance).
    follow_relayed: std::sync::Mutex<Option<SocketAddr>>,
    /// The socket is IPv6 (dual-stack): quinn then names IPv4 peers as IPv4-mapped IPv6.
    v6: bool,
}

/// The peer's address as QUIC knows it, and where the peer is now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redirect(Option<(SocketAddr, SocketAddr)>);

impl Redirect {
    /// Where a datagram quinn addresses to `to` goes.
    pub fn outgoing(&self, to: SocketAddr) -> SocketAddr {
        match self.0 {
            Some((known, now_at)) if to == known => now_at,
            _ => to,
        }
    }

    /// Whom quinn is told a datagram from `from` came from.
    pub fn incoming(&self, from: SocketAddr) -> SocketAddr {
        match self.0 {
            Some((known, now_at)) if from == now_at => known,
            _ => from,
        }
    }
}

impl fmt::Debug for MuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxSocket").field("local", &self.socket.local_addr().ok()).finish()
    }
}

impl MuxSocket {
    /// Wraps `socket`; STUN datagrams are delivered on the returned receiver.
    pub fn new(socket: Arc<UdpSocket>, relay: Option<Arc<RelayLink>>) -> (Arc<Self>, Diverted) {
        let (stun, stun_rx) = mpsc::unbounded_channel();
        let (birthday, birthday_rx) = mpsc::unbounded_channel();
        let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
        let mux = MuxSocket {
            v6,
            socket,
            stun,
            birthday,
            relay,
            dropped: AtomicU64::new(0),
            redirect: std::sync::Mutex::new(Redirect::default()),
            follow_relayed: std::sync::Mutex::new(None),
        };
        (Arc::new(mux), Diverted { stun: stun_rx, birthday: birthday_rx })
    }

    pub fn socket(&self) -> &Arc<UdpSocket> {
        &self.socket
    }

    /// From now on the peer QUIC knows at `known` is at `now_at` (see the module doc); `now_at ==
    /// known` undoes it.
    pub fn redirect(&self, known: SocketAddr, now_at: SocketAddr) {
        if let Ok(mut r) = self.redirect.lock() {
            *r = Redirect((known != now_at).then_some((known, now_at)));
        }
    }

    /// From now on the peer QUIC knows at `known` is whoever sends QUIC to us through our relay.
    pub fn follow_relayed(&self, known: SocketAddr) {
        if let Ok(mut f) = self.follow_relayed.lock() {
            *f = Some(known);
        }
    }

    /// Where the peer QUIC knows is now sent to (None: nowhere else).
    pub fn redirected_to(&self) -> Option<SocketAddr> {
        self.redirection().0.map(|(_, now_at)| now_at)
    }

    /// The address quinn knows a peer by: quinn maps IPv4 peers to IPv4-mapped IPv6 on an IPv6
    /// socket (its `ensure_ipv6`), so what comes from them must be shown to it the same way.
    fn for_quinn(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.v6 => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            a => a,
        }
    }

    fn redirection(&self) -> Redirect {
        self.redirect.lock().map(|r| *r).unwrap_or_default()
    }

    /// A pending ICMP error (from an old check to a dead candidate) surfaces on
    /// the next send; quinn would take it as fatal, so it is absorbed here and
    /// the datagram sent again (QUIC recovers from the odd loss anyway).
    fn send_one(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        match self.socket.try_send_to(bytes, to) {
            Err(e) if is_transient(&e) => match self.socket.try_send_to(bytes, to) {
                Err(e) if is_transient(&e) => Ok(()),
                r => r.map(|_| ()),
            },
            r => r.map(|_| ()),
        }
    }
}

type Writable = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Waits for the socket to be writable. quinn polls this from more than one
/// task (endpoint and connection drivers); `UdpSocket::poll_send_ready` keeps
/// only the last waker and would leave a blocked sender asleep, so each
/// poller awaits its own `writable()` future, which wakes every waiter.
struct Poller {
    socket: Arc<UdpSocket>,
    pending: Option<Writable>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller").finish_non_exhaustive()
    }
}

impl UdpPoller for Poller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        if self.pending.is_none() {
            let socket = self.socket.clone();
            self.pending = Some(Box::pin(async move { socket.writable().await }));
        }
        let Some(fut) = self.pending.as_mut() else { return Poll::Pending };
        let r = fut.as_mut().poll(cx);
        if r.is_ready() {
            self.pending = None;
        }
        r
    }
}

impl AsyncUdpSocket for MuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller { socket: self.socket.clone(), pending: None })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // quinn on a dual-stack socket names IPv4 peers as ::ffff:a.b.c.d; the mux, ICE and TURN
        // speak plain IPv4 (see punch::dual_stack).
        let to = self.redirection().outgoing(unmap(transmit.destination));
        if let Some(relay) = self.relay.as_ref().filter(|r| r.is_routed(to)) {
            let seg = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
            for chunk in transmit.contents.chunks(seg) {
                relay.send(to, chunk);
            }
            return Ok(());
        }
        match transmit.segment_size {
            // We announce one segment per transmit, so quinn never batches; be safe anyway.
            Some(seg) if seg < transmit.contents.len() => {
                for chunk in transmit.contents.chunks(seg) {
                    self.send_one(chunk, to)?;
                }
                Ok(())
            }
            _ => self.send_one(transmit.contents, to),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.first_mut() else { return Poll::Ready(Ok(0)) };
        loop {
            let mut rb = ReadBuf::new(first);
            let from = match self.socket.poll_recv_from(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                // ICMP errors from an earlier send: not quinn's concern, the checks time out on their own.
                Poll::Ready(Err(e)) if is_transient(&e) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d (see punch::dual_stack).
                Poll::Ready(Ok(from)) => unmap(from),
            };
            let filled = rb.filled();
            let len = filled.len();
            if let Some(relay) = self.relay.as_ref().filter(|r| r.server() == from) {
                let Some(inner) = relay.input(filled) else { continue };
                if looks_like_stun(&inner.data) {
                    let _ =
                        self.stun.send(StunDatagram { from: inner.peer, to: Some(inner.relayed), bytes: inner.data });
                    continue;
                }
                let n = inner.data.len();
                if n == 0 || inner.data[0] < 0x40 || n > first.len() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // QUIC through the relay: answers go back the same way.
                relay.route(inner.peer);
                if let Some(known) = self.follow_relayed.lock().ok().and_then(|f| *f)
                    && self.redirection().outgoing(known) != inner.peer
                {
                    self.redirect(known, inner.peer);
                }
                first[..n].copy_from_slice(&inner.data);
                let addr = self.for_quinn(self.redirection().incoming(inner.peer));
                meta[0] = RecvMeta { addr, len: n, stride: n, ecn: None, dst_ip: None };
                return Poll::Ready(Ok(1));
            }
            if looks_like_stun(filled) {
                let d = StunDatagram { from, to: None, bytes: filled.to_vec() };
                let _ = if is_birthday(filled) { self.birthday.send(d) } else { self.stun.send(d) };
                continue;
            }
            if len == 0 || filled[0] < 0x40 {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let addr = self.for_quinn(self.redirection().incoming(from));
            meta[0] = RecvMeta { addr, len, stride: len, ecn: None, dst_ip: None };
            return Poll::Ready(Ok(1));
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::punch::quic;

    async fn endpoint(
        server: Option<quinn::ServerConfig>,
    ) -> (quinn::Endpoint, Arc<UdpSocket>, mpsc::UnboundedReceiver<StunDatagram>) {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let (mux, Diverted { stun: rx, .. }) = MuxSocket::new(sock.clone(), None);
        let ep =
            quinn::Endpoint::new_with_abstract_socket(endpoint_config(), server, mux, Arc::new(quinn::TokioRuntime))
                .expect("endpoint");
        (ep, sock, rx)
    }

    #[test]
    fn a_redirect_maps_the_old_peer_address_both_ways_and_nothing_else() {
        let (old, new, other): (SocketAddr, SocketAddr, SocketAddr) = (
            "203.0.113.12:40000".parse().unwrap(),
            "203.0.113.12:20417".parse().unwrap(),
            "10.0.0.9:1".parse().unwrap(),
        );
        let none = Redirect::default();
        assert_eq!((none.outgoing(old), none.incoming(new)), (old, new));
        let r = Redirect(Some((old, new)));
        assert_eq!(r.outgoing(old), new);
        assert_eq!(r.incoming(new), old);
        assert_eq!((r.outgoing(other), r.incoming(other), r.incoming(old)), (other, other, old));
    }

    /// quinn names an IPv4 peer ::ffff:a.b.c.d on a dual-stack socket; the mux must show it what
    /// comes back under that name, or the handshake never completes.
    #[tokio::test]
    async fn quic_over_ipv4_on_dual_stack_sockets() {
        let a = quic::Identity::generate().expect("a");
        let b = quic::Identity::generate().expect("b");
        let ep = |server: Option<quinn::ServerConfig>| {
            let sock = Arc::new(crate::punch::dual_stack::bind().expect("bind"));
            let port = sock.local_addr().expect("addr").port();
            let (mux, _d) = MuxSocket::new(sock, None);
            let e = quinn::Endpoint::new_with_abstract_socket(
                endpoint_config(),
                server,
                mux,
                Arc::new(quinn::TokioRuntime),
            )
            .expect("endpoint");
            (e, port, _d)
        };
        let (server, port, _ds) = ep(Some(quic::server_config(&b, &a.fingerprint).expect("cfg")));
        let (client, _, _dc) = ep(None);
        let srv =
            tokio::spawn(async move { server.accept().await.expect("incoming").await.map(|c| c.remote_address()) });
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let conn = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client
                .connect_with(quic::client_config(&a, &b.fingerprint).expect("cfg"), to, quic::SERVER_NAME)
                .expect("connect"),
        )
        .await
        .expect("handshake within 10 s")
        .expect("handshake");
        assert_eq!(crate::punch::dual_stack::unmap(conn.remote_address()), to);
        let seen = srv.await.expect("server task").expect("server handshake");
        assert!(crate::punch::dual_stack::unmap(seen).ip().is_loopback());
    }

    #[tokio::test]
    async fn quic_and_stun_share_one_socket() {
        let a = quic::Identity::generate().expect("a");
        let b = quic::Identity::generate().expect("b");
        let (server, server_sock, mut server_stun) =
            endpoint(Some(quic::server_config(&b, &a.fingerprint).expect("cfg"))).await;
        let (client, _client_sock, _) = endpoint(None).await;
        let to = server_sock.local_addr().expect("addr");
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let srv = tokio::spawn(async move {
            let conn = server.accept().await.expect("incoming").await.expect("handshake");
            let (_s, mut r) = conn.accept_bi().await.expect("stream");
            let got = r.read_to_end(10_000_000).await.expect("read");
            conn.close(0u32.into(), b"");
            got
        });
        // A STUN datagram to the same socket goes to the ICE side, not to quinn.
        let probe = crate::stun::message::binding_request(crate::stun::message::new_transaction_id());
        UdpSocket::bind("127.0.0.1:0").await.expect("bind").send_to(&probe, to).await.expect("send");
        let conn = client
            .connect_with(quic::client_config(&a, &b.fingerprint).expect("cfg"), to, quic::SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");
        let (mut s, _r) = conn.open_bi().await.expect("open");
        s.write_all(&data).await.expect("write");
        s.finish().expect("finish");
        let got = srv.await.expect("server task");
        assert_eq!(got.len(), expect.len());
        assert!(got == expect);
        assert_eq!(server_stun.recv().await.map(|d| d.bytes), Some(probe));
    }
}
