//! The TURN side of punch's one socket (RFC 8656): the allocation made before the candidates
//! are described, then, for the rest of the session, the way datagrams reach peers through the
//! relay. The mux hands it what the TURN server sends and asks it to carry QUIC to routed
//! peers; the ICE driver hands it checks sent from the relayed candidate and its timers.
//!
//! The protocol state is the sans-IO [`Gatherer`] (shared with `call`); this is the thin
//! driver around it, behind a mutex because quinn's socket hooks and the ICE task both use it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use is::Candidate;
use tokio::net::UdpSocket;

use crate::ice::servers::{GatherEvent, Gatherer, Relayed};
use crate::turn::credentials::Credentials;

pub struct RelayLink {
    socket: Arc<UdpSocket>,
    server: SocketAddr,
    relayed: SocketAddr,
    gatherer: Mutex<Gatherer>,
    /// Peers whose QUIC traffic goes through the relay: the nominated pair's local candidate
    /// is the relayed one, or QUIC from them arrived through it.
    routes: Mutex<HashSet<SocketAddr>>,
}

impl std::fmt::Debug for RelayLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayLink").field("server", &self.server).field("relayed", &self.relayed).finish()
    }
}

impl RelayLink {
    /// Allocates on `server` from `socket` (before anything else reads it) and returns the link
    /// and the relayed candidate, or why the allocation failed.
    pub async fn allocate(
        socket: Arc<UdpSocket>,
        server: SocketAddr,
        credentials: Credentials,
        base: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<(Arc<RelayLink>, Candidate)> {
        let deadline = Instant::now() + timeout;
        let mut g = Gatherer::new(base, &[], Some((server, credentials)), Instant::now());
        let mut buf = vec![0u8; 2048];
        loop {
            let now = Instant::now();
            while let Some((to, bytes)) = g.poll_transmit(now) {
                if let Err(e) = socket.send_to(&bytes, to).await {
                    tracing::debug!("send to TURN server {to} failed: {e}");
                }
            }
            if let Some(ev) = g.poll_event() {
                match ev {
                    GatherEvent::Candidate(c) => {
                        let relayed = c.addr();
                        tracing::info!(%server, %relayed, "TURN allocation made");
                        let link = RelayLink {
                            socket,
                            server,
                            relayed,
                            gatherer: Mutex::new(g),
                            routes: Mutex::new(HashSet::new()),
                        };
                        return Ok((Arc::new(link), c));
                    }
                    GatherEvent::Failed(why) => anyhow::bail!("{why}"),
                }
            }
            if now >= deadline {
                anyhow::bail!("TURN {server}: no allocation within {:.1} s", timeout.as_secs_f64());
            }
            let wake = g.poll_timeout().unwrap_or(deadline).min(deadline);
            tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    // Late STUN answers or a peer's early check: not for the allocation.
                    Ok((n, from)) if from == server => {
                        let _ = g.handle_input(from, &buf[..n], Instant::now());
                    }
                    Ok(_) => {}
                    // An ICMP error queued on the socket; the transaction retransmits.
                    Err(e) => tracing::debug!("while allocating: {e}"),
                },
                _ = tokio::time::sleep_until(wake.into()) => g.handle_timeout(Instant::now()),
            }
        }
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn relayed(&self) -> SocketAddr {
        self.relayed
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
        tracing::info!(%peer, relayed = %self.relayed, "traffic to the peer goes through the TURN relay");
        let mut g = self.lock();
        g.bind_channel(peer, Instant::now());
        self.flush(&mut g);
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
            if let GatherEvent::Failed(why) = ev {
                tracing::warn!("{why}");
            }
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
