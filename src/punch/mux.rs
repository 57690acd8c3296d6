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
//! Reads and writes go through quinn-udp's `UdpSocketState`, as quinn's own socket does: a QUIC
//! batch leaves in one GSO `sendmsg`, reads take up to 32 datagrams per `recvmmsg` and GRO hands
//! over runs of same-sized datagrams from one address in one buffer, with ECN both ways. Every
//! segment of such a buffer is demultiplexed on its own (`punch::batch`): a STUN check that the
//! kernel coalesced among QUIC packets still reaches the agent. Through the relay, a batch is
//! framed as ChannelData in one buffer and sent to the TURN server with GSO too.
//!
//! A peer that moved ([`MuxSocket::redirect`]): quinn's client never follows a server to a new
//! address (RFC 9000 §9 lets only clients migrate), so when ICE has proved the QUIC server's new
//! address (its NAT forgot and it re-punched; or its relayed address when the path falls back to the
//! relay), the mux sends what quinn addresses to the old one there, and shows what comes from there
//! as from the old one. quinn sees no change; ICE's authenticated checks (RFC 8445 §7.2.5) did the
//! path validation QUIC would have done.
//!
//! A path that comes back ([`MuxSocket::resend_last`]): while a path is dead, quinn's sender
//! backs off its probe timeout (RFC 9002 §6.2.1: doubled after every unanswered probe, so 3.8 s
//! apart after 5 s of silence), and its congestion window is full of packets nobody acknowledges,
//! so nothing else leaves either. When ICE repairs the path (or the relay takes over), quinn would
//! stay silent until that timer fires. The mux keeps a copy of the last datagram quinn sent on its
//! own (probes are sent one per transmit; bulk data leaves in GSO batches, which are not copied)
//! and sends it again on the repaired path at once: the peer acknowledges it (a duplicate packet
//! is discarded by QUIC, RFC 9000 §12.3, so nothing can go wrong if it did arrive), and that
//! acknowledgement resets quinn's backoff and declares the packets lost in the gap lost, so their
//! data is retransmitted now.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::punch::batch::{self, Kind, Packer};
use crate::punch::birthday::is_birthday;
use crate::punch::dual_stack::unmap;
use crate::punch::quic;
use crate::punch::relay_link::RelayLink;
use crate::turn::channel_data;

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
    /// quinn-udp's view of the socket: GSO sends, GRO and recvmmsg reads, ECN both ways. None
    /// where it could not be set up: then one datagram per system call, as plain sockets do.
    state: Option<UdpSocketState>,
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
    /// Where a GSO batch for the relay is framed as ChannelData (reused: no allocation per batch).
    framed: std::sync::Mutex<Vec<u8>>,
    /// A send error other than a full buffer was logged (once: UDP errors are not fatal).
    send_error_logged: AtomicBool,
    /// QUIC datagrams for the relay that were larger than it carries ([`relay_carries`]), dropped.
    pub too_big_for_relay: AtomicU64,
    /// The last datagram quinn sent on its own ([`MuxSocket::resend_last`]).
    last_single: std::sync::Mutex<LastDatagram>,
}

/// A copy of one QUIC datagram as quinn handed it over (its destination before any redirect).
#[derive(Debug, Default)]
struct LastDatagram {
    destination: Option<SocketAddr>,
    ecn: Option<quinn::udp::EcnCodepoint>,
    bytes: Vec<u8>,
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
        let state = match UdpSocketState::new((&*socket).into()) {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::warn!("no GSO/GRO on the punch socket ({e}): one datagram per system call");
                None
            }
        };
        let mux = MuxSocket {
            v6,
            state,
            framed: std::sync::Mutex::new(Vec::new()),
            send_error_logged: AtomicBool::new(false),
            too_big_for_relay: AtomicU64::new(0),
            socket,
            stun,
            birthday,
            relay,
            dropped: AtomicU64::new(0),
            redirect: std::sync::Mutex::new(Redirect::default()),
            follow_relayed: std::sync::Mutex::new(None),
            last_single: std::sync::Mutex::new(LastDatagram::default()),
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

    /// Sends the last datagram quinn sent on its own once more, to wherever its destination
    /// leads now (a redirect, the relay): the nudge that ends quinn's silence after a repaired
    /// path (see the module doc). Returns whether there was one.
    pub fn resend_last(&self) -> bool {
        let (destination, ecn, bytes) = {
            let last = self.last_single.lock().unwrap_or_else(|e| e.into_inner());
            let Some(destination) = last.destination else { return false };
            (destination, last.ecn, last.bytes.clone())
        };
        let transmit = Transmit { destination, ecn, contents: &bytes, segment_size: None, src_ip: None };
        match self.try_send(&transmit) {
            Ok(()) => true,
            // A full socket buffer: quinn's own packets are leaving, which is what the nudge is for.
            Err(e) => {
                tracing::debug!("resending the last QUIC datagram to {destination}: {e}");
                false
            }
        }
    }

    /// Keeps a copy of a transmit of one datagram (see [`MuxSocket::resend_last`]). A GSO batch is
    /// bulk data flowing, never the probe a stalled sender is waiting on, and is not copied.
    fn keep_if_single(&self, t: &Transmit) {
        if t.segment_size.is_some_and(|seg| t.contents.len() > seg) {
            return;
        }
        let mut last = self.last_single.lock().unwrap_or_else(|e| e.into_inner());
        last.destination = Some(t.destination);
        last.ecn = t.ecn;
        last.bytes.clear();
        last.bytes.extend_from_slice(t.contents);
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

    /// Sends one transmit (a GSO batch when `segment_size` is set). A pending ICMP error (from an
    /// old check to a dead candidate) surfaces on the next send and eats it; quinn would take it as
    /// fatal, so it is absorbed here and the batch sent again. Other errors are logged once and the
    /// batch is lost, as the network could lose it (quinn's own socket does the same); only a full
    /// buffer is returned, so quinn waits for the socket to drain.
    fn send_transmit(&self, t: &Transmit) -> io::Result<()> {
        for _ in 0..2 {
            let r = match &self.state {
                Some(state) => self.socket.try_io(Interest::WRITABLE, || state.try_send((&*self.socket).into(), t)),
                None => self.send_plain(t),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) if is_transient(&e) => continue,
                // An MTU probe larger than the interface: quinn's path MTU discovery learns from the loss.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return Ok(()),
                Err(e) => {
                    if !self.send_error_logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!("sending to {} failed: {e} (logged once; QUIC retransmits)", t.destination);
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Without quinn-udp: each datagram of the batch on its own.
    fn send_plain(&self, t: &Transmit) -> io::Result<()> {
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        for chunk in t.contents.chunks(seg) {
            self.socket.try_send_to(chunk, t.destination)?;
        }
        Ok(())
    }

    /// QUIC for a peer behind our TURN relay: over its channel, the whole batch framed as
    /// ChannelData and sent to the server with GSO; before the channel is bound, one Send
    /// indication per datagram (the first few packets only).
    ///
    /// Datagrams larger than the relay carries (a path that moved onto the relay with quinn's MTU
    /// still at the direct path's) are dropped here, as a network with a smaller MTU would: quinn's
    /// black-hole detection then falls back to 1200 bytes (`quic::transport`). Sent, they would
    /// not fit a 1500-byte frame once wrapped; and a GSO send with segments above the route's MTU
    /// fails with EINVAL, on which quinn-udp turns GSO off for the socket for good.
    fn send_relayed(&self, relay: &RelayLink, to: SocketAddr, t: &Transmit) -> io::Result<()> {
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        if !relay_carries(seg) {
            if self.too_big_for_relay.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::info!(
                    "QUIC datagrams of {seg} bytes for {to} do not fit through the relay (at most {}): \
                     dropped until QUIC's black-hole detection lowers its MTU (logged once)",
                    quic::RELAYED_MAX_UDP_PAYLOAD
                );
            }
            return Ok(());
        }
        let Some(channel) = relay.bound_channel(to) else {
            for chunk in t.contents.chunks(seg) {
                relay.send(to, chunk);
            }
            return Ok(());
        };
        let mut framed = self.framed.lock().unwrap_or_else(|e| e.into_inner());
        let stride = batch::frame_channel_data(&mut framed, channel, t.contents, seg);
        let out = Transmit {
            destination: self.for_quinn(relay.server()),
            // The relay does not carry our ECN marks to the peer.
            ecn: None,
            contents: &framed,
            segment_size: (t.contents.len() > seg).then_some(stride),
            src_ip: None,
        };
        self.send_transmit(&out)
    }

    /// One read: up to `bufs.len()` datagrams (GRO batches) with quinn-udp, else one.
    fn poll_read(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.socket.poll_recv_ready(cx))?;
            let r = match &self.state {
                Some(state) => {
                    self.socket.try_io(Interest::READABLE, || state.recv((&*self.socket).into(), bufs, meta))
                }
                None => self.read_plain(bufs, meta),
            };
            match r {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // ICMP errors from an earlier send: not quinn's concern, the checks time out on their own.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn read_plain(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        let (Some(first), Some(m)) = (bufs.first_mut(), meta.first_mut()) else { return Ok(0) };
        let (len, addr) = self.socket.try_recv_from(first)?;
        *m = RecvMeta { addr, len, stride: len, ecn: None, dst_ip: None };
        Ok(1)
    }

    /// Sorts one received buffer (one datagram, or a GRO batch from one address): STUN to the ICE
    /// side, QUIC packed to the front of `buf` for quinn. Returns quinn's meta for what is left.
    fn demux(&self, buf: &mut [u8], m: RecvMeta) -> Option<RecvMeta> {
        // A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d (see punch::dual_stack).
        let from = unmap(m.addr);
        if let Some(relay) = self.relay.as_ref().filter(|r| r.server() == from) {
            return self.demux_relayed(relay, buf, m);
        }
        let mut packed = Packer::default();
        for (a, b) in batch::segments(m.len, m.stride) {
            match batch::classify(&buf[a..b]) {
                Kind::Stun => self.divert(from, None, &buf[a..b]),
                Kind::Quic if packed.push_within(buf, a, b) => {}
                _ => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if packed.is_empty() {
            return None;
        }
        let addr = self.for_quinn(self.redirection().incoming(from));
        Some(RecvMeta { addr, len: packed.len(), stride: packed.stride(), ecn: m.ecn, dst_ip: None })
    }

    /// A buffer from our TURN server: ChannelData from peers (unwrapped in place, one lock for the
    /// channel table per buffer), and the server's own STUN (answers, Data indications) for the link.
    fn demux_relayed(&self, relay: &RelayLink, buf: &mut [u8], m: RecvMeta) -> Option<RecvMeta> {
        let mut channels = [(0u16, SocketAddr::from(([0, 0, 0, 0], 0))); 4];
        let bound = relay.bound_channels(&mut channels);
        let channels = &channels[..bound];
        let mut packed = Packer::default();
        let mut peer: Option<SocketAddr> = None;
        for (a, b) in batch::segments(m.len, m.stride) {
            let on_channel = channel_data::parse(&buf[a..b]).and_then(|(number, data)| {
                let p = channels.iter().find(|(n, _)| *n == number)?.1;
                Some((p, a + channel_data::HEADER, a + channel_data::HEADER + data.len()))
            });
            let kept = match on_channel {
                Some((p, from, to)) => match batch::classify(&buf[from..to]) {
                    Kind::Quic if peer.is_none_or(|q| q == p) => {
                        peer = Some(p);
                        packed.push_within(buf, from, to)
                    }
                    Kind::Stun => {
                        let relayed = relay.relayed();
                        let _ = self.stun.send(StunDatagram { from: p, to: relayed, bytes: buf[from..to].to_vec() });
                        true
                    }
                    _ => false,
                },
                // The server's own messages, a Data indication, or a channel bound since the table was read.
                None => match relay.input(&buf[a..b]) {
                    None => true,
                    Some(inner) => match batch::classify(&inner.data) {
                        Kind::Stun => {
                            let _ = self.stun.send(StunDatagram {
                                from: inner.peer,
                                to: Some(inner.relayed),
                                bytes: inner.data,
                            });
                            true
                        }
                        Kind::Quic if peer.is_none_or(|q| q == inner.peer) => {
                            peer = Some(inner.peer);
                            packed.push_bytes(buf, &inner.data)
                        }
                        _ => false,
                    },
                },
            };
            if !kept {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let peer = peer.filter(|_| !packed.is_empty())?;
        // QUIC through the relay: answers go back the same way.
        relay.route(peer);
        if let Some(known) = self.follow_relayed.lock().ok().and_then(|f| *f)
            && self.redirection().outgoing(known) != peer
        {
            self.redirect(known, peer);
        }
        let addr = self.for_quinn(self.redirection().incoming(peer));
        Some(RecvMeta { addr, len: packed.len(), stride: packed.stride(), ecn: None, dst_ip: None })
    }

    fn divert(&self, from: SocketAddr, to: Option<SocketAddr>, bytes: &[u8]) {
        let d = StunDatagram { from, to, bytes: bytes.to_vec() };
        let _ = if is_birthday(bytes) { self.birthday.send(d) } else { self.stun.send(d) };
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
        self.keep_if_single(transmit);
        // quinn on a dual-stack socket names IPv4 peers as ::ffff:a.b.c.d; the mux, ICE and TURN
        // speak plain IPv4 (see punch::dual_stack).
        let to = self.redirection().outgoing(unmap(transmit.destination));
        if let Some(relay) = self.relay.as_ref().filter(|r| r.is_routed(to)) {
            return self.send_relayed(relay, to, transmit);
        }
        let out = Transmit {
            destination: self.for_quinn(to),
            ecn: transmit.ecn,
            contents: transmit.contents,
            segment_size: transmit.segment_size,
            // We never tell quinn which address a datagram came to, so it never picks a source.
            src_ip: None,
        };
        self.send_transmit(&out)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = ready!(self.poll_read(cx, bufs, meta))?;
            // What is left for quinn moves down to the first free slot.
            let mut out = 0;
            for i in 0..n.min(bufs.len()).min(meta.len()) {
                let Some(kept) = self.demux(&mut bufs[i][..meta[i].len], meta[i]) else { continue };
                if out != i {
                    let (front, back) = bufs.split_at_mut(i);
                    front[out][..kept.len].copy_from_slice(&back[0][..kept.len]);
                }
                meta[out] = kept;
                out += 1;
            }
            if out > 0 {
                return Poll::Ready(Ok(out));
            }
        }
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.as_ref().map_or(1, |s| s.max_gso_segments())
    }

    fn max_receive_segments(&self) -> usize {
        self.state.as_ref().map_or(1, |s| s.gro_segments())
    }

    fn may_fragment(&self) -> bool {
        self.state.as_ref().is_none_or(|s| s.may_fragment())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Whether a QUIC datagram of `len` bytes still fits a 1500-byte frame once wrapped for the relay.
pub fn relay_carries(len: usize) -> bool {
    len <= usize::from(quic::RELAYED_MAX_UDP_PAYLOAD)
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

    /// The nudge after a repaired path: the last datagram quinn sent on its own (a probe) goes out
    /// again, to where the peer is now; a GSO batch sent after it (bulk data) is not what is kept.
    #[tokio::test]
    async fn the_last_single_datagram_goes_out_again_to_where_the_peer_is_now() {
        async fn recv(s: &UdpSocket) -> Vec<u8> {
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.recv(&mut buf))
                .await
                .expect("a datagram within 5 s")
                .expect("recv");
            buf.truncate(n);
            buf
        }
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let (mux, _d) = MuxSocket::new(sock, None);
        let old = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let new = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let (old_addr, new_addr) = (old.local_addr().expect("addr"), new.local_addr().expect("addr"));
        assert!(!mux.resend_last(), "nothing was sent yet");
        let probe: Vec<u8> = (0..1200u32).map(|i| 0x40 | (i % 64) as u8).collect();
        let single = Transmit { destination: old_addr, ecn: None, contents: &probe, segment_size: None, src_ip: None };
        mux.socket().writable().await.expect("writable");
        mux.try_send(&single).expect("send");
        assert_eq!(recv(&old).await, probe);
        let bulk = vec![0xC1u8; 2400];
        let batch =
            Transmit { destination: old_addr, ecn: None, contents: &bulk, segment_size: Some(1200), src_ip: None };
        mux.socket().writable().await.expect("writable");
        mux.try_send(&batch).expect("send");
        assert_eq!(recv(&old).await, bulk[..1200]);
        assert_eq!(recv(&old).await, bulk[1200..]);
        // The peer re-punched from a new address and ICE proved it: the probe follows it there.
        mux.redirect(old_addr, new_addr);
        mux.socket().writable().await.expect("writable");
        assert!(mux.resend_last());
        assert_eq!(recv(&new).await, probe);
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

#[cfg(test)]
mod mtu_tests {
    //! The direct path's MTU (up to 1452) and a path that moves onto the relay mid-transfer.

    use super::*;
    use std::time::Duration;

    /// quinn's own socket, dropping what the relay would not carry (`relay_carries`, as
    /// `MuxSocket::send_relayed` does) once `clamped` is set: a path that moved onto the relay.
    #[derive(Debug)]
    struct Clamp {
        inner: Arc<dyn AsyncUdpSocket>,
        clamped: AtomicBool,
        dropped: AtomicU64,
    }

    impl AsyncUdpSocket for Clamp {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            self.inner.clone().create_io_poller()
        }

        fn try_send(&self, t: &Transmit) -> io::Result<()> {
            let seg = t.segment_size.unwrap_or(t.contents.len());
            if self.clamped.load(Ordering::Relaxed) && !relay_carries(seg) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            self.inner.try_send(t)
        }

        fn poll_recv(
            &self,
            cx: &mut Context,
            bufs: &mut [IoSliceMut<'_>],
            meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            self.inner.poll_recv(cx, bufs, meta)
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            self.inner.local_addr()
        }

        fn max_transmit_segments(&self) -> usize {
            self.inner.max_transmit_segments()
        }

        fn max_receive_segments(&self) -> usize {
            self.inner.max_receive_segments()
        }

        fn may_fragment(&self) -> bool {
            self.inner.may_fragment()
        }
    }

    fn socket() -> Arc<dyn AsyncUdpSocket> {
        let std = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, std).expect("wrap")
    }

    /// quinn climbs above the relay's 1404 bytes on a direct path; when the path then stops
    /// carrying such packets (it moved onto the relay), its black-hole detection falls back and
    /// the file still arrives whole, with nothing larger than 1404 sent after the fallback.
    #[tokio::test]
    async fn a_path_that_moves_onto_the_relay_mid_transfer_falls_back_below_the_relay_mtu() {
        let a = quic::Identity::generate().expect("a");
        let b = quic::Identity::generate().expect("b");
        let runtime = Arc::new(quinn::TokioRuntime);
        let server_cfg = quic::server_config(&b, &a.fingerprint).expect("cfg");
        let server =
            quinn::Endpoint::new_with_abstract_socket(endpoint_config(), Some(server_cfg), socket(), runtime.clone())
                .expect("server");
        let to = server.local_addr().expect("addr");
        let clamp = Arc::new(Clamp { inner: socket(), clamped: AtomicBool::new(false), dropped: AtomicU64::new(0) });
        let client =
            quinn::Endpoint::new_with_abstract_socket(endpoint_config(), None, clamp.clone(), runtime).expect("client");
        let srv = tokio::spawn(async move {
            let conn = server.accept().await.expect("incoming").await.expect("handshake");
            let mut r = conn.accept_uni().await.expect("stream");
            let got = r.read_to_end(1 << 30).await.expect("read");
            conn.close(0u32.into(), b"");
            got
        });
        let run = async {
            let conn = client
                .connect_with(quic::client_config(&a, &b.fingerprint).expect("cfg"), to, quic::SERVER_NAME)
                .expect("connect")
                .await
                .expect("handshake");
            let mut s = conn.open_uni().await.expect("open");
            let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
            let mut sent = 0usize;
            // Direct: 1 MiB at a time until path MTU discovery has climbed above the relay's limit.
            while conn.stats().path.current_mtu <= quic::RELAYED_MAX_UDP_PAYLOAD {
                assert!(sent < 256 << 20, "MTU discovery never went above 1404: {:?}", conn.stats().path);
                s.write_all(&chunk).await.expect("write");
                sent += chunk.len();
            }
            assert_eq!(conn.stats().path.current_mtu, quic::DIRECT_MAX_UDP_PAYLOAD);
            // The path moves onto the relay: nothing above 1404 gets through any more.
            clamp.clamped.store(true, Ordering::Relaxed);
            for _ in 0..16 {
                s.write_all(&chunk).await.expect("write after the move");
                sent += chunk.len();
            }
            s.finish().expect("finish");
            s.stopped().await.expect("stopped");
            (conn.stats().path, sent)
        };
        let (path, sent) = tokio::time::timeout(Duration::from_secs(60), run).await.expect("transfer within 60 s");
        let got = tokio::time::timeout(Duration::from_secs(10), srv).await.expect("server within 10 s").expect("task");
        assert_eq!(got.len(), sent);
        assert!(got.iter().enumerate().all(|(i, b)| *b == ((i % (1 << 20)) as u32 % 251) as u8), "data changed");
        assert!(clamp.dropped.load(Ordering::Relaxed) > 0, "nothing was too big after the move: {path:?}");
        assert_eq!(path.black_holes_detected, 1, "{path:?}");
        assert!(relay_carries(usize::from(path.current_mtu)), "{path:?}");
    }
}
