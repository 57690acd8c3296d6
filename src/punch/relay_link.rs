//! The TURN side of punch's one socket (RFC 8656): the allocation, asked for before the
//! candidates are described and finished while the checks already run (its candidate is
//! trickled), then the way datagrams reach peers through the relay. The mux hands it what the TURN server sends and asks it to carry QUIC to routed
//! peers; the ICE driver hands it checks sent from the relayed candidate and its timers.
//!
//! The protocol state is the sans-IO [`Gatherer`] (shared with `call`); this is the thin
//! driver around it, behind a mutex because quinn's socket hooks and the ICE task both use it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use is::Candidate;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::ice::server_candidates::{GatherEvent, Gatherer, Relayed};
use crate::turn::credentials::Credentials;

pub struct RelayLink {
    socket: Arc<UdpSocket>,
    server: SocketAddr,
    /// Our relayed address, once the allocation succeeded.
    relayed: OnceLock<SocketAddr>,
    gatherer: Mutex<Gatherer>,
    /// Peers whose QUIC traffic goes through the relay: the nominated pair's local candidate
    /// is the relayed one, or QUIC from them arrived through it.
    routes: Mutex<HashSet<SocketAddr>>,
    events: mpsc::UnboundedSender<LinkEvent>,
}

impl std::fmt::Debug for RelayLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayLink").field("server", &self.server).field("relayed", &self.relayed.get()).finish()
    }
}

/// What the allocation became, for the session to act on.
#[derive(Debug)]
pub enum LinkEvent {
    /// The relayed candidate: trickle it to the peer, add it to the checks in the relay phase.
    Ready(Candidate),
    /// No allocation; the session goes on without a relay (or fails, with `--relay-only`).
    Failed(String),
}

impl RelayLink {
    /// Sends the Allocate request from `socket` and returns at once: the answer arrives through
    /// the mux once it reads the socket, and the outcome on the returned channel.
    pub fn start(
        socket: Arc<UdpSocket>,
        server: SocketAddr,
        credentials: Credentials,
        base: SocketAddr,
    ) -> (Arc<RelayLink>, mpsc::UnboundedReceiver<LinkEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let g = Gatherer::new(base, &[], Some((server, credentials)), Instant::now());
        let link = RelayLink {
            socket,
            server,
            relayed: OnceLock::new(),
            gatherer: Mutex::new(g),
            routes: Mutex::new(HashSet::new()),
            events,
        };
        link.flush(&mut link.lock());
        (Arc::new(link), rx)
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed.get().copied()
    }

    fn lock(&self) -> MutexGuard<'_, Gatherer> {
        // The gatherer holds no invariant a panicking holder could break halfway.
        self.gatherer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn routes(&self) -> MutexGuard<'_, HashSet<SocketAddr>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether QUIC for `peer` goes through the relay.
    pub fn is_routed(&self, peer: SocketAddr) -> bool {
        self.routes().contains(&peer)
    }

    /// From now on QUIC for `peer` goes through the relay, over a channel once it is bound.
    pub fn route(&self, peer: SocketAddr) {
        if !self.routes().insert(peer) {
            return;
        }
        tracing::info!(%peer, relayed = ?self.relayed(), "traffic to the peer goes through the TURN relay");
        let mut g = self.lock();
        g.bind_channel(peer, Instant::now());
        self.flush(&mut g);
    }

    /// The channel bound to `peer`: QUIC batches to it are framed by the mux and sent with GSO
    /// in one system call (`punch::batch`); None while the binding is on its way (then [`Self::send`]).
    pub fn bound_channel(&self, peer: SocketAddr) -> Option<u16> {
        self.lock().bound_channel(peer)
    }

    /// The bound channels, for the mux to unwrap a batch of ChannelData under one lock.
    pub fn bound_channels(&self, out: &mut [(u16, SocketAddr)]) -> usize {
        self.lock().bound_channels(out)
    }

    /// Sends `data` to `peer` through the relay.
    pub fn send(&self, peer: SocketAddr, data: &[u8]) {
        let mut g = self.lock();
        g.send_relayed(peer, data, Instant::now());
        self.flush(&mut g);
    }

    /// A datagram from the TURN server; what a peer sent through the relay comes back.
    pub fn input(&self, bytes: &[u8]) -> Option<Relayed> {
        let mut g = self.lock();
        let r = g.handle_input(self.server, bytes, Instant::now());
        self.drain_events(&mut g);
        self.flush(&mut g);
        r
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lock().poll_timeout()
    }

    /// Refreshes the allocation, permissions and channels when due.
    pub fn handle_timeout(&self, now: Instant) {
        let mut g = self.lock();
        g.handle_timeout(now);
        self.drain_events(&mut g);
        self.flush(&mut g);
    }

    fn drain_events(&self, g: &mut Gatherer) {
        while let Some(ev) = g.poll_event() {
            let ev = match ev {
                GatherEvent::Candidate(c) => {
                    tracing::info!(server = %self.server, relayed = %c.addr(), "TURN allocation made");
                    let _ = self.relayed.set(c.addr());
                    LinkEvent::Ready(c)
                }
                GatherEvent::Failed(why) => LinkEvent::Failed(why),
            };
            let _ = self.events.send(ev);
        }
    }

    /// Sends what the gatherer queued. Never waits: a full socket buffer drops the datagram,
    /// as the network could, and the protocol above retransmits.
    fn flush(&self, g: &mut Gatherer) {
        while let Some((to, bytes)) = g.poll_transmit(Instant::now()) {
            if let Err(e) = self.socket.try_send_to(&bytes, to) {
                tracing::debug!("send to TURN server {to} failed: {e}");
            }
        }
    }
}
