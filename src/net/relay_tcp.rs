//! The sockets of TCP allocations (RFC 6062) around the core's decisions in
//! [`crate::turn::server::tcp_relay`]: the relayed TCP listener of each
//! allocation (inbound peers, §5.3), outbound connections to peers made from
//! the relayed address (§5.2), and, once a data connection is bound
//! (§5.4), the byte copy between it and its peer connection.
//!
//! The core decides (ids, permissions, timers, errors) and returns
//! [`TcpEffect`]s; this module carries them out. Every peer connection holds a
//! slot of its own [`ConnLimiter`] (total and per peer IP, the relay's
//! connection caps) from connect or accept until it closes; a data
//! connection keeps the slot it took at the relay's listener. The copy uses
//! bounded buffers ([`COPY_BUFFER`] each way) and counts bytes as they pass.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc};

use crate::net::conn_limit::{ConnLimiter, ConnPermit, accept_with_backoff};
use crate::turn::server::tcp_relay::{ConnectionId, TcpEffect};
use crate::turn::server::{FiveTuple, RelayId, Server, Transmit};

/// Buffer of each direction of a spliced connection pair.
pub const COPY_BUFFER: usize = 16 * 1024;
/// How long a connection to a peer may take before Connect is answered 447.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer that connected to a relayed TCP address.
pub struct Inbound {
    pub relay: RelayId,
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

/// Counters of TCP relaying the driver keeps (the core counts decisions).
#[derive(Debug, Default)]
pub struct TcpCounters {
    pub bytes_to_peers: AtomicU64,
    pub bytes_from_peers: AtomicU64,
    /// Peer connections open now (waiting for a bind, or spliced).
    pub peer_connections: AtomicU64,
    /// Peer connections refused by the connection caps.
    pub refused_by_limit: AtomicU64,
    /// Pauses of a relayed listener's accept on EMFILE/ENFILE.
    pub accept_paused: AtomicU64,
}

/// A snapshot of [`TcpCounters`] for the metrics page.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpSnapshot {
    pub bytes_to_peers: u64,
    pub bytes_from_peers: u64,
    pub peer_connections: u64,
    pub refused_by_limit: u64,
    pub accept_paused: u64,
}

enum Slot {
    /// Connected, waiting for the client's data connection.
    Waiting(TcpStream, ConnPermit),
    /// Spliced: notified to stop.
    Spliced(Arc<Notify>),
}

/// The driver's state of TCP relaying, shared by every task.
pub struct TcpDriver {
    slots: Mutex<HashMap<ConnectionId, Slot>>,
    limiter: ConnLimiter,
    pub counters: Arc<TcpCounters>,
}

/// What a task needs to reach the core and the control connections.
pub trait CoreAccess: Send + Sync + 'static {
    fn core(&self) -> std::sync::MutexGuard<'_, Server>;
    /// Sends a transmit the core made (to a control connection).
    fn send(&self, t: &Transmit<'_>);
    fn tcp(&self) -> &TcpDriver;
}

impl TcpDriver {
    pub fn new(max_connections: usize, max_per_ip: usize) -> TcpDriver {
        TcpDriver {
            slots: Mutex::new(HashMap::new()),
            limiter: ConnLimiter::new(max_connections, max_per_ip),
            counters: Arc::new(TcpCounters::default()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> TcpSnapshot {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpSnapshot {
            bytes_to_peers: load(&c.bytes_to_peers),
            bytes_from_peers: load(&c.bytes_from_peers),
            peer_connections: load(&c.peer_connections),
            refused_by_limit: load(&c.refused_by_limit),
            accept_paused: load(&c.accept_paused),
        }
    }

    fn close(&self, id: ConnectionId) {
        match self.slots().remove(&id) {
            Some(Slot::Spliced(stop)) => stop.notify_one(),
            Some(Slot::Waiting(..)) => {
                self.counters.peer_connections.fetch_sub(1, Ordering::Relaxed);
            }
            None => {}
        }
    }
}

/// Carries out the core's effects. A [`TcpEffect::Bind`] for `me` (the
/// connection whose ConnectionBind was just answered) is returned: that
/// connection's own task splices itself ([`splice`]).
pub fn apply<A: CoreAccess>(access: &Arc<A>, effects: Vec<TcpEffect>, me: Option<FiveTuple>) -> Option<ConnectionId> {
    let mut mine = None;
    for e in effects {
        match e {
            TcpEffect::Connect { id, local, peer } => {
                let access = access.clone();
                tokio::spawn(async move { connect(access, id, local, peer).await });
            }
            TcpEffect::Close { id, why } => {
                tracing::debug!(%id, ?why, "closing a TCP peer connection");
                access.tcp().close(id);
            }
            TcpEffect::Bind { id, data } if Some(data) == me => mine = Some(id),
            TcpEffect::Bind { id, .. } => {
                // Cannot happen (binds are answered on their own connection); be safe.
                access.tcp().close(id);
                access.core().tcp_connection_closed(id);
            }
        }
    }
    mine
}

fn take_effects(core: &mut Server) -> Vec<TcpEffect> {
    std::iter::from_fn(|| core.poll_tcp_effect()).collect()
}

/// Connects to `peer` from the relayed address `local` (SO_REUSEPORT, shared
/// with the relayed listener) and tells the core how it went.
async fn connect<A: CoreAccess>(access: Arc<A>, id: ConnectionId, local: SocketAddr, peer: SocketAddr) {
    let permit = access.tcp().limiter.try_acquire(peer.ip());
    let stream = match permit {
        Err(why) => {
            access.tcp().counters.refused_by_limit.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "TCP peer connection refused by the connection cap ({})", why.as_str());
            None
        }
        Ok(permit) => match tokio::time::timeout(CONNECT_TIMEOUT, open_from(local, peer)).await {
            Ok(Ok(s)) => Some((s, permit)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, %local, "cannot connect to the TCP peer: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "no TCP connection to the peer within {CONNECT_TIMEOUT:?}");
                None
            }
        },
    };
    let (kept, effects) = {
        let mut core = access.core();
        let answered = match core.tcp_connect_result(id, stream.is_some(), Instant::now()) {
            Some(t) => {
                access.send(&t);
                true
            }
            None => false,
        };
        (answered, take_effects(&mut core))
    };
    if kept && let Some((s, permit)) = stream {
        let _ = s.set_nodelay(true);
        access.tcp().counters.peer_connections.fetch_add(1, Ordering::Relaxed);
        access.tcp().slots().insert(id, Slot::Waiting(s, permit));
    }
    apply(&access, effects, None);
}

async fn open_from(local: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let s = if local.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(local)?;
    s.connect(peer).await
}

/// Binds a relayed TCP listener on `addr` (SO_REUSEPORT so that outbound
/// connections to peers can leave from the same address, RFC 6062 §5.2),
/// only on a port no other socket holds (`AddrInUse` otherwise).
///
/// Why the check: SO_REUSEPORT lets any socket of the same user join a port
/// whose holder also set it, so without it this listener could join another
/// process's listener (a second relay on the host, e.g. one starting while
/// this one drains, with an overlapping `--ports`), and the kernel would split
/// inbound peers between the two processes: a peer meant for this allocation
/// announced to another relay's client. A probe without SO_REUSEADDR and
/// SO_REUSEPORT binds only to a port nobody holds; it is closed at once, so
/// two relays could still meet on one port only if both probed it in the same
/// few system calls. (Another process of the same user can always do worse
/// than this, e.g. ptrace: that is not a boundary a socket option can hold.)
pub fn bind_relayed_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = || -> io::Result<socket2::Socket> {
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        Ok(s)
    };
    socket()?.bind(&addr.into())?;
    let s = socket()?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

/// Accepts peers on one relayed TCP address and hands them to [`inbound`];
/// aborted when the allocation closes.
pub async fn accept_peers(
    relay: RelayId,
    listener: std::net::TcpListener,
    to: mpsc::Sender<Inbound>,
    counters: Arc<TcpCounters>,
) {
    let Ok(listener) = TcpListener::from_std(listener) else { return };
    loop {
        let (stream, peer) = accept_with_backoff(&listener, &counters.accept_paused).await;
        if to.send(Inbound { relay, stream, peer }).await.is_err() {
            return;
        }
    }
}

/// Peers that connected to relayed addresses: a ConnectionAttempt to the
/// client when the core allows it, closed at once otherwise.
pub async fn inbound<A: CoreAccess>(access: Arc<A>, mut from: mpsc::Receiver<Inbound>) {
    while let Some(Inbound { relay, stream, peer }) = from.recv().await {
        let permit = match access.tcp().limiter.try_acquire(peer.ip()) {
            Ok(p) => p,
            Err(_) => {
                access.tcp().counters.refused_by_limit.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let id = {
            let mut core = access.core();
            match core.tcp_peer_arrived(relay, peer, Instant::now()) {
                Ok((id, t)) => {
                    access.send(&t);
                    Some(id)
                }
                Err(_) => None,
            }
        };
        match id {
            Some(id) => {
                let _ = stream.set_nodelay(true);
                access.tcp().counters.peer_connections.fetch_add(1, Ordering::Relaxed);
                access.tcp().slots().insert(id, Slot::Waiting(stream, permit));
            }
            // Refused (no permission): closed without reading or writing a byte.
            None => drop(stream),
        }
    }
}

/// Copies bytes between the client's bound data connection and `id`'s peer
/// connection until either side closes or the core closes `id`. `early`
/// holds bytes the client sent after its ConnectionBind in the same read.
pub async fn splice<A: CoreAccess, S: AsyncRead + AsyncWrite + Unpin>(
    access: &Arc<A>,
    id: ConnectionId,
    mut data: S,
    early: Vec<u8>,
) {
    let stop = Arc::new(Notify::new());
    let taken = {
        let mut slots = access.tcp().slots();
        match slots.remove(&id) {
            Some(Slot::Waiting(peer, permit)) => {
                slots.insert(id, Slot::Spliced(stop.clone()));
                Some((peer, permit))
            }
            other => {
                if let Some(o) = other {
                    slots.insert(id, o);
                }
                None
            }
        }
    };
    let Some((mut peer, _permit)) = taken else {
        tracing::debug!(%id, "bound, but the peer connection is gone");
        access.core().tcp_connection_closed(id);
        let _ = data.shutdown().await;
        return;
    };
    let counters = access.tcp().counters.clone();
    let copied = async {
        if !early.is_empty() {
            peer.write_all(&early).await?;
            counters.bytes_to_peers.fetch_add(early.len() as u64, Ordering::Relaxed);
        }
        let mut a = Counted { inner: &mut data, read: &counters.bytes_to_peers };
        let mut b = Counted { inner: &mut peer, read: &counters.bytes_from_peers };
        tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUFFER, COPY_BUFFER).await
    };
    tokio::select! {
        r = copied => tracing::debug!(%id, "TCP relaying ended: {r:?}"),
        _ = stop.notified() => tracing::debug!(%id, "TCP relaying stopped by the relay"),
    }
    if access.tcp().slots().remove(&id).is_some() {
        // Ended here (not by a Close effect): tell the core.
        access.core().tcp_connection_closed(id);
    }
    counters.peer_connections.fetch_sub(1, Ordering::Relaxed);
}

/// A stream that counts the bytes read from it.
struct Counted<'a, S> {
    inner: &'a mut S,
    read: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// The TCP relaying metrics, appended to the relay's page.
pub fn render_metrics(core: &Server, t: &TcpSnapshot, out: &mut String) {
    use crate::relay::metrics_text::metric;
    let s = core.tcp_stats();
    metric(
        out,
        "tcp_allocations",
        "gauge",
        "Allocations relaying TCP (RFC 6062) alive now.",
        &[("", core.tcp_allocations() as u64)],
    );
    metric(
        out,
        "tcp_peer_connections",
        "gauge",
        "TCP peer connections open now (waiting for ConnectionBind or relaying).",
        &[("", t.peer_connections)],
    );
    metric(
        out,
        "tcp_peer_connections_total",
        "counter",
        "TCP peer connections by outcome: connected by Connect, Connect failed (447), accepted from a peer, refused (no permission or cap), bound, not bound in time.",
        &[
            ("outcome=\"connect\"", s.connects),
            ("outcome=\"connect_failed\"", s.connect_failed),
            ("outcome=\"inbound\"", s.inbound_accepted),
            ("outcome=\"inbound_refused\"", s.inbound_refused),
            ("outcome=\"bound\"", s.binds),
            ("outcome=\"bind_timeout\"", s.bind_timeouts),
        ],
    );
    metric(
        out,
        "tcp_refused_total",
        "counter",
        "Connect and ConnectionBind refusals: no permission (403), connection exists (446), per-allocation cap (508), unknown CONNECTION-ID (400), connection caps.",
        &[
            ("reason=\"no_permission\"", s.no_permission),
            ("reason=\"already_exists\"", s.already_exists),
            ("reason=\"allocation_cap\"", s.quota_refused),
            ("reason=\"unknown_connection_id\"", s.bind_unknown),
            ("reason=\"connection_cap\"", t.refused_by_limit),
        ],
    );
    metric(
        out,
        "tcp_bytes_relayed_total",
        "counter",
        "Bytes relayed over TCP peer connections, by direction.",
        &[("direction=\"to_peer\"", t.bytes_to_peers), ("direction=\"from_peer\"", t.bytes_from_peers)],
    );
    metric(
        out,
        "tcp_accept_paused_total",
        "counter",
        "Pauses of a relayed TCP listener's accept on running out of file descriptors.",
        &[("", t.accept_paused)],
    );
}
