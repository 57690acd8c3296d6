//! The sockets of `natkit relay`: UDP, TCP and TLS listeners, relayed UDP
//! sockets in the `--ports` range, the sweep timer and the metrics endpoint,
//! around the sans-IO core in [`crate::turn::server`].
//!
//! Each UDP worker thread has one SO_REUSEPORT socket per UDP listen
//! address (so the kernel spreads clients over workers by their address) and
//! watches, on its own epoll set, the relayed socket of every allocation it
//! made, so a client's packets never cross threads. A round takes every
//! ready socket, reads it with recvmmsg batches of 32 until it is drained,
//! runs the core on each batch under one short lock, and at the end of the
//! round sends everything the round produced with one sendmmsg per socket:
//! the answers to many relayed sockets' peers leave the listener together.
//! Every UDP socket has UDP GRO on: a read holding a sender's run of
//! equal-size datagrams is split before the core sees it, and each run of
//! equal-size answers to one destination leaves as one UDP GSO message of that
//! sendmmsg ([`crate::net::mmsg`]).
//! The core is never held across a system call that can wait.
//!
//! One exception, on purpose: an Allocate opens its relayed socket
//! ([`RelayPorts::open`]) inside the core, under its lock, because the answer
//! must carry the socket's address (XOR-RELAYED-ADDRESS). Making the bind an
//! effect the driver carries out would need a parked request in the core (a
//! pending allocation, a second entry point for "opened" or "failed", and
//! rules for a retransmission or a closed TCP client in between) to save
//! four non-blocking system calls (socket, bind, fcntl, epoll_ctl) that
//! never wait on the network. [`Ports`] keeps that cost bounded: it skips the
//! ports it holds without asking the kernel, and gives up with 508 after
//! [`MAX_BIND_FAILURES`] ports held by other processes.
//! TCP and TLS connections read frames (STUN or padded ChannelData, RFC 8656
//! §12.5) and write through a per-connection queue. Each one holds a slot of
//! [`ConnLimiter`] (total and per source IP) taken at accept, and is closed
//! when its TLS handshake, its first complete message or, without an
//! allocation, its next message does not come in time ([`ConnLimits`]): a
//! flood of idle connections costs a bounded number of descriptors for a
//! bounded time, and never the UDP service.
//!
//! TCP allocations (RFC 6062) have a relayed TCP listener instead of a UDP
//! socket, opened by [`Ports::open_tcp`]; their peer connections, the
//! ConnectionBind hand-over and the byte copy are in [`crate::net::relay_tcp`].

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::net::conn_limit::{ConnLimiter, ConnPermit, ConnRefusal, accept_with_backoff};
use crate::net::metrics_http::{self, MetricsLimits, Paths};
use crate::net::mmsg::{BATCH, GSO_MAX_SEGMENTS, RecvBatch, SentSegmented, enable_gro, segments, send_segmented};
use crate::net::relay_tcp::{self, CoreAccess, Inbound, TcpCounters, TcpDriver};
use crate::net::stream::take_frame;
use crate::net::stream_queue::{self, QueueTx};
use crate::net::transport::Transport;
use crate::relay::metrics_text::{DriverSnapshot, ROUND_BUCKETS, UdpIoSnapshot};
use crate::relay::userdb_redis::{self, RedisUserDb, RedisUserDbConfig};
use crate::turn::channel_data::{PEER_HEADROOM, PEER_TAILROOM};
use crate::turn::server::{
    Family, FiveTuple, RelayId, RelayOpenError, RelayPorts, Server, ServerConfig, Stats, Target, Transmit,
    userdb::Lookup,
};

/// Where to listen and relay.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// UDP and TCP listeners.
    pub listen: Vec<SocketAddr>,
    /// UDP only (the extra RFC 5780 addresses).
    pub listen_udp_only: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// One relay IP per family at most.
    pub relay_ips: Vec<IpAddr>,
    pub ports: (u16, u16),
    pub workers: usize,
    pub metrics: Option<SocketAddr>,
    /// Connections and header time the `--metrics` endpoint allows.
    pub metrics_limits: MetricsLimits,
    pub limits: ConnLimits,
    /// Longest drain after [`Stop::Drain`] before the remaining allocations are ended.
    pub drain_timeout: Duration,
    /// The shared user database (`--userdb`): the core's lookups are carried out there.
    pub userdb: Option<RedisUserDbConfig>,
}

/// What the operator asked for (the command maps signals to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Take the relay out gently: no new allocations, the existing ones go on
    /// until they end or the drain timeout passes. A second request of either
    /// kind while draining stops at once.
    Drain,
    /// End every allocation and stop now.
    Now,
}

/// What a TCP or TLS connection may hold and for how long.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Concurrent connections in total and per source IP.
    pub max_connections: usize,
    pub max_per_ip: usize,
    /// From accept to a finished TLS handshake.
    pub tls_handshake: Duration,
    /// From accept (TCP) or the finished handshake (TLS) to the first complete message.
    pub first_message: Duration,
    /// Silence allowed between messages while the connection holds no allocation.
    pub idle: Duration,
    /// Bytes queued toward one connection before relayed data to it is dropped
    /// ([`crate::net::stream_queue`]).
    pub stream_queue_bytes: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 10_000,
            max_per_ip: 100,
            tls_handshake: Duration::from_secs(10),
            first_message: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            stream_queue_bytes: stream_queue::DEFAULT_QUEUE_BYTES,
        }
    }
}

/// Why the relay closed a TCP or TLS connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnClose {
    TlsHandshakeTimeout,
    FirstMessageTimeout,
    IdleTimeout,
}

impl ConnClose {
    pub const ALL: [ConnClose; 3] =
        [ConnClose::TlsHandshakeTimeout, ConnClose::FirstMessageTimeout, ConnClose::IdleTimeout];

    pub fn label(self) -> &'static str {
        match self {
            ConnClose::TlsHandshakeTimeout => "tls_handshake_timeout",
            ConnClose::FirstMessageTimeout => "first_message_timeout",
            ConnClose::IdleTimeout => "idle_timeout",
        }
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {transport} {addr}: {source}{holder} (is another server using it? try another --listen)")]
    Listen { transport: &'static str, addr: SocketAddr, source: io::Error, holder: String },
    #[error(
        "cannot listen on UDP {addr}: another process already has this port{holder}; natkit does not share a \
         listening port (the kernel would split the clients between both servers): stop it or choose another --listen"
    )]
    PortHeld { addr: SocketAddr, holder: String },
    #[error("cannot serve metrics on {addr}: {source}{holder} (try another --metrics)")]
    Metrics { addr: SocketAddr, source: io::Error, holder: String },
    #[error("{0}")]
    UserDb(String),
}

impl StartError {
    fn listen(transport: Transport, addr: SocketAddr, source: io::Error) -> StartError {
        let holder = in_use_by(transport, addr, &source);
        StartError::Listen { transport: transport.name(), addr, source, holder }
    }
}

/// " (held by NAME, pid N)" for an address-in-use error, else "".
fn in_use_by(transport: Transport, addr: SocketAddr, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::AddrInUse {
        crate::net::port_holder::describe(transport, addr)
    } else {
        String::new()
    }
}

/// Every socket the relay listens on, bound before anything is announced or
/// served, so a busy port is an error and "listening on" is never a lie.
pub struct Bound {
    udp: Vec<(SocketAddr, Vec<Arc<UdpSocket>>)>,
    tcp: Vec<(SocketAddr, TcpListener, Option<tokio_rustls::TlsAcceptor>)>,
    metrics: Option<TcpListener>,
}

/// Binds every listener of `cfg`: per UDP address one SO_REUSEPORT socket per
/// worker, after checking that no other process holds the port (SO_REUSEPORT
/// would otherwise let our sockets join another server's and the kernel
/// would split the clients between the two).
pub async fn bind(cfg: &DriverConfig) -> Result<Bound, StartError> {
    let workers = cfg.workers.max(1);
    let mut udp = Vec::new();
    for &addr in cfg.listen.iter().chain(&cfg.listen_udp_only) {
        check_port_free(addr)?;
        let mut socks = Vec::new();
        for _ in 0..workers {
            socks.push(Arc::new(bind_udp(addr).map_err(|e| StartError::listen(Transport::Udp, addr, e))?));
        }
        udp.push((addr, socks));
    }
    let mut tcp = Vec::new();
    for &addr in &cfg.listen {
        tcp.push((addr, bind_tcp(addr).map_err(|e| StartError::listen(Transport::Tcp, addr, e))?, None));
    }
    if let Some(tls) = &cfg.tls {
        for &addr in &cfg.tls_listen {
            let l = bind_tcp(addr).map_err(|e| StartError::listen(Transport::Tls, addr, e))?;
            tcp.push((addr, l, Some(tokio_rustls::TlsAcceptor::from(tls.clone()))));
        }
    }
    let metrics = match cfg.metrics {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| {
            let holder = in_use_by(Transport::Tcp, addr, &source);
            StartError::Metrics { addr, source, holder }
        })?),
        None => None,
    };
    Ok(Bound { udp, tcp, metrics })
}

/// Fails when another socket already has `addr`'s UDP port: a socket
/// without SO_REUSEPORT and SO_REUSEADDR binds only to a port nobody holds.
/// It is closed again at once; the window until our SO_REUSEPORT sockets are
/// bound is a few system calls long.
fn check_port_free(addr: SocketAddr) -> Result<(), StartError> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let probe = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(|e| StartError::listen(Transport::Udp, addr, e))?;
    if addr.is_ipv6() {
        probe.set_only_v6(true).map_err(|e| StartError::listen(Transport::Udp, addr, e))?;
    }
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Err(StartError::PortHeld { addr, holder: crate::net::port_holder::describe(Transport::Udp, addr) })
        }
        Err(e) => Err(StartError::listen(Transport::Udp, addr, e)),
    }
}

/// What the driver counts besides the core.
#[derive(Debug, Default)]
pub struct DriverCounters {
    pub tcp_connections: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub send_errors: AtomicU64,
    /// Connections refused at accept: the total cap, the per-IP cap.
    pub refused_total: AtomicU64,
    pub refused_per_ip: AtomicU64,
    /// Connections the relay closed, by [`ConnClose`] index.
    pub closed: [AtomicU64; 3],
    /// Pauses of accept on running out of descriptors (EMFILE/ENFILE).
    pub accept_paused: AtomicU64,
    /// Relayed messages (and their bytes) dropped because a TCP/TLS client's queue was full.
    pub stream_queue_dropped: AtomicU64,
    pub stream_queue_dropped_bytes: AtomicU64,
    /// Connections open now, TCP and TLS.
    pub open_tcp: AtomicU64,
    pub open_tls: AtomicU64,
    pub udp: UdpIoCounters,
}

/// The UDP workers' batching ([`UdpIoSnapshot`]): each worker adds its
/// round's figures once per round, not per datagram.
#[derive(Debug, Default)]
pub struct UdpIoCounters {
    rounds: [AtomicU64; ROUND_BUCKETS.len() + 1],
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    recvmmsg_calls: AtomicU64,
    sendmmsg_calls: AtomicU64,
    gro_reads: AtomicU64,
    gso_sends: AtomicU64,
    gso_refused: AtomicU64,
}

impl UdpIoCounters {
    fn add_round(&self, r: &RoundCount) {
        if r.datagrams_in > 0 {
            let bucket = ROUND_BUCKETS.iter().position(|&le| r.datagrams_in <= le).unwrap_or(ROUND_BUCKETS.len());
            self.rounds[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.datagrams_in.fetch_add(r.datagrams_in, Ordering::Relaxed);
        self.datagrams_out.fetch_add(r.datagrams_out, Ordering::Relaxed);
        self.recvmmsg_calls.fetch_add(r.recvmmsg_calls, Ordering::Relaxed);
        self.sendmmsg_calls.fetch_add(r.sendmmsg_calls, Ordering::Relaxed);
        self.gro_reads.fetch_add(r.gro_reads, Ordering::Relaxed);
        self.gso_sends.fetch_add(r.gso_sends, Ordering::Relaxed);
        self.gso_refused.fetch_add(r.gso_refused, Ordering::Relaxed);
    }

    fn snapshot(&self) -> UdpIoSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UdpIoSnapshot {
            rounds: std::array::from_fn(|i| load(&self.rounds[i])),
            datagrams_in: load(&self.datagrams_in),
            datagrams_out: load(&self.datagrams_out),
            recvmmsg_calls: load(&self.recvmmsg_calls),
            sendmmsg_calls: load(&self.sendmmsg_calls),
            gro_reads: load(&self.gro_reads),
            gso_sends: load(&self.gso_sends),
            gso_refused: load(&self.gso_refused),
        }
    }
}

/// One worker round's figures, kept in the worker and published at its end.
#[derive(Debug, Default)]
struct RoundCount {
    datagrams_in: u64,
    datagrams_out: u64,
    recvmmsg_calls: u64,
    sendmmsg_calls: u64,
    /// Reads that held more than one datagram (UDP GRO).
    gro_reads: u64,
    /// Sends that carried more than one datagram (UDP GSO).
    gso_sends: u64,
    /// GSO sends the kernel refused, sent again one datagram at a time.
    gso_refused: u64,
}

/// A map on the UDP path, hashed with foldhash: the keys are this relay's
/// own relay ids and listen addresses, never chosen by a client.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Relayed sockets, shared by the core (open/close) and the data path (send).
#[derive(Default)]
struct Registry {
    sockets: RwLock<FastMap<RelayId, Arc<UdpSocket>>>,
    /// The UDP workers' epoll registries, for relayed sockets opened outside
    /// a worker (allocations of TCP and TLS clients).
    workers: OnceLock<Vec<mio::Registry>>,
    next_worker: AtomicUsize,
    /// Where relayed TCP listeners hand their peers (set once the driver runs).
    tcp_inbound: OnceLock<mpsc::Sender<Inbound>>,
    tcp_counters: OnceLock<Arc<TcpCounters>>,
    /// The accept task of each relayed TCP listener, aborted when its allocation closes.
    tcp_accept: Mutex<HashMap<RelayId, tokio::task::AbortHandle>>,
}

/// The relayed sockets' side of [`RelayPorts`]. Its `open` runs inside the
/// core, under the core's lock (see the module doc for why that exception to
/// "never hold the core across a system call" stands): so it knows which
/// ports it holds itself and never spends a system call on one of them, and
/// it gives up after [`MAX_BIND_FAILURES`] ports that other processes hold.
struct Ports {
    registry: Arc<Registry>,
    ips: Vec<IpAddr>,
    range: (u16, u16),
    next_id: u64,
    /// Relayed addresses open now, by relay and as a set for the port walk.
    bound: HashMap<RelayId, SocketAddr>,
    taken: HashSet<SocketAddr>,
}

/// Binds that may fail (ports of other processes) before an Allocate gets
/// 508: bounds the time the core's lock is held to a few hundred system calls
/// of a microsecond or so, however full the range is.
const MAX_BIND_FAILURES: u32 = 256;

impl Ports {
    /// The relay address of `family`, or 440 when the relay serves none.
    fn relay_ip(&self, family: Family) -> Result<IpAddr, RelayOpenError> {
        self.ips
            .iter()
            .copied()
            .find(|ip| (family == Family::V4) == ip.is_ipv4())
            .ok_or(RelayOpenError::FamilyNotServed)
    }

    fn new(registry: Arc<Registry>, ips: Vec<IpAddr>, range: (u16, u16)) -> Ports {
        Ports { registry, ips, range, next_id: 0, bound: HashMap::new(), taken: HashSet::new() }
    }

    /// One socket, bound to a random free port of the range: a walk from a
    /// random start that skips the ports this relay holds without asking the
    /// kernel. Four system calls when the first port tried is free.
    fn bind_in_range(&self, ip: IpAddr) -> Result<(std::net::UdpSocket, SocketAddr), RelayOpenError> {
        let (lo, hi) = self.range;
        let span = (hi - lo) as u32 + 1;
        let start = rand::random::<u32>() % span;
        let domain = if ip.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
            .map_err(|e| RelayOpenError::Io(e.to_string()))?;
        if ip.is_ipv6() {
            let _ = s.set_only_v6(true);
        }
        let mut failures = 0;
        for i in 0..span {
            let addr = SocketAddr::new(ip, lo + ((start + i) % span) as u16);
            if self.taken.contains(&addr) {
                continue;
            }
            match s.bind(&addr.into()) {
                Ok(()) => {
                    s.set_nonblocking(true).map_err(|e| RelayOpenError::Io(e.to_string()))?;
                    // A peer's runs of equal datagrams come in one read; best effort (kernel 5.0+).
                    let _ = enable_gro(s.as_raw_fd());
                    return Ok((s.into(), addr));
                }
                // Held by another process; a failed bind leaves the socket unbound, reusable.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    failures += 1;
                    if failures >= MAX_BIND_FAILURES {
                        break;
                    }
                }
                Err(e) => return Err(RelayOpenError::Io(format!("cannot bind a relayed socket on {addr}: {e}"))),
            }
        }
        Err(RelayOpenError::NoPorts)
    }
}

impl RelayPorts for Ports {
    fn open(&mut self, family: Family) -> Result<(RelayId, SocketAddr), RelayOpenError> {
        let ip = self.relay_ip(family)?;
        let (sock, addr) = self.bind_in_range(ip)?;
        let sock = Arc::new(sock);
        self.next_id += 1;
        let id = RelayId(self.next_id);
        self.bound.insert(id, addr);
        self.taken.insert(addr);
        if let Ok(mut m) = self.registry.sockets.write() {
            m.insert(id, sock.clone());
        }
        // Watched by this thread's worker when a UDP client asked, else by the next worker in turn.
        let fd = sock.as_raw_fd();
        let token = mio::Token(id.0 as usize);
        let watch = |r: &mio::Registry| r.register(&mut mio::unix::SourceFd(&fd), token, mio::Interest::READABLE);
        let watched = WORKER.with(|w| w.borrow().as_ref().map(watch)).or_else(|| {
            let workers = self.registry.workers.get().filter(|w| !w.is_empty())?;
            let i = self.registry.next_worker.fetch_add(1, Ordering::Relaxed) % workers.len();
            Some(watch(&workers[i]))
        });
        if let Some(Err(e)) = watched {
            self.close(id);
            return Err(RelayOpenError::Io(format!("cannot watch the relayed socket: {e}")));
        }
        Ok((id, addr))
    }

    fn open_tcp(&mut self, family: Family) -> Result<(RelayId, SocketAddr), RelayOpenError> {
        let ip = self.relay_ip(family)?;
        let (Some(to), Some(counters), Ok(rt)) =
            (self.registry.tcp_inbound.get(), self.registry.tcp_counters.get(), tokio::runtime::Handle::try_current())
        else {
            return Err(RelayOpenError::Io("TCP relaying is not running".into()));
        };
        let (lo, hi) = self.range;
        let span = (hi - lo) as u32 + 1;
        let start = rand::random::<u32>() % span;
        let mut failures = 0;
        for i in 0..span {
            let addr = SocketAddr::new(ip, lo + ((start + i) % span) as u16);
            if self.taken.contains(&addr) {
                continue;
            }
            match relay_tcp::bind_relayed_listener(addr) {
                Ok(listener) => {
                    self.next_id += 1;
                    let id = RelayId(self.next_id);
                    self.bound.insert(id, addr);
                    self.taken.insert(addr);
                    let task = rt.spawn(relay_tcp::accept_peers(id, listener, to.clone(), counters.clone()));
                    if let Ok(mut m) = self.registry.tcp_accept.lock() {
                        m.insert(id, task.abort_handle());
                    }
                    return Ok((id, addr));
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    failures += 1;
                    if failures >= MAX_BIND_FAILURES {
                        break;
                    }
                }
                Err(e) => {
                    return Err(RelayOpenError::Io(format!("cannot listen on a relayed TCP address {addr}: {e}")));
                }
            }
        }
        Err(RelayOpenError::NoPorts)
    }

    fn close(&mut self, relay: RelayId) {
        if let Some(addr) = self.bound.remove(&relay) {
            self.taken.remove(&addr);
        }
        if let Some(task) = self.registry.tcp_accept.lock().ok().and_then(|mut m| m.remove(&relay)) {
            task.abort();
        }
        // Closing the socket (when the last Arc goes) also takes it out of its worker's epoll set.
        let _ = self.registry.sockets.write().ok().and_then(|mut m| m.remove(&relay));
    }
}

type ConnKey = (SocketAddr, SocketAddr);

struct Shared {
    core: Mutex<Server>,
    /// Listener sockets for sending, by their bound address.
    udp: FastMap<SocketAddr, Arc<UdpSocket>>,
    registry: Arc<Registry>,
    conns: Mutex<HashMap<ConnKey, QueueTx>>,
    counters: DriverCounters,
    limiter: ConnLimiter,
    limits: ConnLimits,
    /// Set once a refusal of each kind ([`ConnRefusal`]) has been logged: one line per kind, then counts.
    refusal_logged: [AtomicBool; 2],
    /// Set once a full client queue has been logged: one line, then counts.
    queue_full_logged: AtomicBool,
    /// Where the core's user database lookups go (`--userdb`).
    userdb: Option<mpsc::UnboundedSender<Lookup>>,
    /// TCP allocations' peer connections (RFC 6062).
    tcp: TcpDriver,
    /// Datagrams per UDP GSO send: [`GSO_MAX_SEGMENTS`], or 1 once the kernel
    /// said EIO (a device without checksum offload: GSO will never work there).
    gso_segments: AtomicUsize,
}

impl CoreAccess for Shared {
    fn core(&self) -> std::sync::MutexGuard<'_, Server> {
        self.lock()
    }

    fn send(&self, t: &Transmit<'_>) {
        self.deliver(t.target, t.payload);
    }

    fn tcp(&self) -> &TcpDriver {
        &self.tcp
    }
}

/// Largest datagram handled; bigger ones are truncated by the kernel and dropped by the core.
const MAX_DATAGRAM: usize = 65_535;

impl Shared {
    /// The socket a transmit leaves from: a listener or a relayed socket.
    fn socket_for(&self, target: &Target) -> Option<Arc<UdpSocket>> {
        match target {
            Target::Peer { relay, .. } => self.registry.sockets.read().ok()?.get(relay).cloned(),
            Target::Client(ft) => self.udp.get(&ft.local).cloned(),
        }
    }

    /// Sends one transmit (the stream and odd paths; the UDP fast path batches).
    fn deliver(&self, target: Target, payload: &[u8]) {
        match target {
            Target::Client(ft) if ft.transport != Transport::Udp => {
                let tx = self.conns.lock().ok().and_then(|m| m.get(&(ft.local, ft.remote)).cloned());
                // A full queue means a client that does not read: drop rather than stall the relay.
                if let Some(tx) = tx
                    && !tx.try_push(payload)
                {
                    self.queue_full(ft, payload.len());
                }
            }
            _ => {
                let dest = match target {
                    Target::Peer { peer, .. } => peer,
                    Target::Client(ft) => ft.remote,
                };
                if let Some(s) = self.socket_for(&target)
                    && s.send_to(payload, dest).is_err()
                {
                    self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Hands the core's user database lookups to the Redis task (the core bounds how many are in flight).
    fn forward_lookups(&self, core: &mut Server) {
        if let Some(tx) = &self.userdb {
            while let Some(l) = core.poll_userdb_lookup() {
                let _ = tx.send(l);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Server> {
        // A panic inside the core would poison the lock; the state is still usable, keep serving.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the relay until `requests` says so (or is closed); returns the core's final counters.
pub async fn run(
    core_cfg: ServerConfig,
    cfg: DriverConfig,
    bound: Bound,
    mut requests: mpsc::Receiver<Stop>,
) -> Result<(Stats, u64), StartError> {
    let registry = Arc::new(Registry::default());
    let ports = Ports::new(registry.clone(), cfg.relay_ips.clone(), cfg.ports);
    let core = Server::new(core_cfg, Box::new(ports), Instant::now(), SystemTime::now());

    let Bound { udp: udp_sockets, tcp, metrics } = bound;
    let workers = cfg.workers.max(1);

    let udp: FastMap<SocketAddr, Arc<UdpSocket>> =
        udp_sockets.iter().map(|(a, socks)| (*a, socks[0].clone())).collect();
    let userdb = match &cfg.userdb {
        Some(c) => Some(Arc::new(RedisUserDb::new(c).map_err(StartError::UserDb)?)),
        None => None,
    };
    let (userdb_tx, userdb_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        udp,
        registry: registry.clone(),
        conns: Mutex::new(HashMap::new()),
        counters: DriverCounters::default(),
        limiter: ConnLimiter::new(cfg.limits.max_connections, cfg.limits.max_per_ip),
        limits: cfg.limits,
        refusal_logged: Default::default(),
        queue_full_logged: AtomicBool::new(false),
        userdb: userdb.is_some().then_some(userdb_tx),
        tcp: TcpDriver::new(cfg.limits.max_connections, cfg.limits.max_per_ip),
        gso_segments: AtomicUsize::new(GSO_MAX_SEGMENTS),
    });
    let (inbound_tx, inbound_rx) = mpsc::channel::<Inbound>(1024);
    let _ = registry.tcp_inbound.set(inbound_tx);
    let _ = registry.tcp_counters.set(shared.tcp.counters.clone());

    // Worker i serves socket i of every UDP listen address.
    let mut per_worker: Vec<Vec<(SocketAddr, Arc<UdpSocket>)>> = vec![Vec::new(); workers];
    for (addr, socks) in udp_sockets {
        for (i, s) in socks.into_iter().enumerate() {
            per_worker[i].push((addr, s));
        }
    }
    let first = cfg.listen.first().or(cfg.listen_udp_only.first()).copied();
    let stop = Arc::new(AtomicBool::new(false));
    let (threads, wakers) = start_workers(&shared, per_worker, &stop).map_err(|source| {
        StartError::listen(Transport::Udp, first.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))), source)
    })?;
    let mut tasks = JoinSet::new();
    for (addr, listener, tls) in tcp {
        tasks.spawn(accept_loop(shared.clone(), addr, listener, tls));
    }
    tasks.spawn(sweeper(shared.clone()));
    if let Some(db) = userdb {
        let s = shared.clone();
        let answer = move |l: Lookup, a| {
            let out = {
                let mut core = s.lock();
                let out = core.handle_userdb_answer(&l, a, Instant::now());
                s.forward_lookups(&mut core);
                out
            };
            for (target, payload) in out {
                s.deliver(target, &payload);
            }
        };
        tasks.spawn(userdb_redis::serve(db, userdb_rx, Arc::new(answer)));
    }
    tasks.spawn(relay_tcp::inbound(shared.clone(), inbound_rx));
    if let Some(l) = metrics {
        tasks.spawn(serve_metrics(shared.clone(), l, cfg.metrics_limits));
    }

    if let Some(Stop::Drain) = requests.recv().await {
        drain(&shared, &mut requests, cfg.drain_timeout).await;
    }
    // Stop accepting and reading first, then end every allocation.
    stop.store(true, Ordering::Relaxed);
    for w in &wakers {
        let _ = w.wake();
    }
    tasks.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    let (stats, tcp_connections) = {
        let mut core = shared.lock();
        core.close_all();
        (core.stats().clone(), shared.counters.tcp_connections.load(Ordering::Relaxed))
    };
    if let Ok(mut m) = registry.sockets.write() {
        m.clear();
    }
    Ok((stats, tcp_connections))
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    // Bursts of relayed media: room in the kernel queues matters more than anything in user space.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    // Clients that send with GSO (quinn does) arrive as one read per run: best effort (kernel 5.0+).
    let _ = enable_gro(s.as_raw_fd());
    Ok(s.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Token of a worker's waker (shutdown); listeners count down from below it,
/// relayed sockets use their [`RelayId`].
const WAKE_TOKEN: mio::Token = mio::Token(usize::MAX);
const LISTENER_TOKEN_BASE: usize = usize::MAX - 1;

/// One UDP worker thread: its SO_REUSEPORT listener sockets and every
/// relayed socket opened by the clients it serves, on one epoll set. Each
/// round takes every ready socket, receives with recvmmsg until the socket
/// is drained, runs the core on each batch under one short lock, and sends
/// everything the round produced at the end, one sendmmsg per socket.
struct UdpWorker {
    shared: Arc<Shared>,
    poll: mio::Poll,
    listeners: Vec<(SocketAddr, Arc<UdpSocket>)>,
    client_in: RecvBatch,
    peer_in: RecvBatch,
    /// One datagram of a peer's coalesced (GRO) read, copied out with the
    /// headroom and tailroom [`Server::handle_peer`] frames it in.
    peer_segment: Vec<u8>,
    /// The sockets that were ready this round (kept to reuse its memory).
    ready: Vec<(Source, Arc<UdpSocket>)>,
    outbox: Outbox,
    round: RoundCount,
}

/// A round's answers, copied out of the core, waiting for the flush.
struct Outbox {
    /// (target, range in `out`), in the order the core made them.
    pending: Vec<(Target, usize, usize)>,
    /// `pending`'s runs by socket at a flush (kept to reuse its memory).
    runs: Vec<std::ops::Range<usize>>,
    out: Vec<u8>,
    used: usize,
}

impl Outbox {
    /// Whether `answers` answers of the largest size still fit.
    fn has_room(&self, answers: usize) -> bool {
        self.used + MAX_OUT * answers <= self.out.len()
    }

    /// Copies an answer of the core out (the core's buffers are reused by its next call).
    fn push(&mut self, t: Transmit<'_>) {
        let end = self.used + t.payload.len();
        if let Some(dst) = self.out.get_mut(self.used..end) {
            dst.copy_from_slice(t.payload);
            self.pending.push((t.target, self.used, t.payload.len()));
            self.used = end;
        }
    }
}

/// Largest answer the core makes: a Data indication around a full datagram.
const MAX_OUT: usize = MAX_DATAGRAM + 64;
/// Room for answers of two full batches; a round flushes early when the next
/// batch might not fit.
const OUT_BYTES: usize = 2 * MAX_OUT * BATCH;

thread_local! {
    /// The epoll registry of the worker running on this thread, if any: a
    /// relayed socket opened while serving a client is watched by the worker
    /// that serves that client, so its packets never cross threads.
    static WORKER: RefCell<Option<mio::Registry>> = const { RefCell::new(None) };
}

/// Where a batch of datagrams came in.
#[derive(Clone, Copy)]
enum Source {
    Listener(SocketAddr),
    Relay(RelayId),
}

impl UdpWorker {
    fn run(mut self, stop: &AtomicBool) {
        let mut events = mio::Events::with_capacity(256);
        // No coalescing delay between rounds: measured, a 50 us wait after a busy
        // round cost more wake-ups than it saved and overflowed relayed sockets'
        // queues at high rates.
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("UDP worker cannot poll: {e}");
                    return;
                }
                continue;
            }
            // The ready relayed sockets are looked up under one read of the
            // registry per round (not one per socket). The guard is gone before
            // the core runs: an Allocate in this round takes the write side.
            let mut ready = std::mem::take(&mut self.ready);
            {
                let sockets = self.shared.registry.sockets.read().unwrap_or_else(|p| p.into_inner());
                for ev in events.iter() {
                    match ev.token() {
                        WAKE_TOKEN => {}
                        mio::Token(t) if t > LISTENER_TOKEN_BASE - self.listeners.len() && t <= LISTENER_TOKEN_BASE => {
                            let (addr, sock) = &self.listeners[LISTENER_TOKEN_BASE - t];
                            ready.push((Source::Listener(*addr), sock.clone()));
                        }
                        mio::Token(t) => {
                            let relay = RelayId(t as u64);
                            // Absent: closed since the event was queued.
                            if let Some(sock) = sockets.get(&relay) {
                                ready.push((Source::Relay(relay), sock.clone()));
                            }
                        }
                    }
                }
            }
            // One clock read per round: a round lasts microseconds, and every
            // lifetime the core checks is whole seconds.
            let now = Instant::now();
            for (source, sock) in ready.drain(..) {
                self.drain(sock.as_raw_fd(), source, now);
            }
            self.ready = ready;
            flush(&mut self.outbox, &self.shared, &mut self.round);
            self.shared.counters.udp.add_round(&std::mem::take(&mut self.round));
        }
    }

    /// Reads `fd` until it is drained (edge-triggered readiness), running
    /// the core on each batch. A read that holds several datagrams (UDP
    /// GRO) is split first: the core sees each datagram the sender sent,
    /// with the same checks and counters as if they had come one by one.
    fn drain(&mut self, fd: RawFd, source: Source, now: Instant) {
        let mut errors = 0;
        loop {
            if !self.outbox.has_room(BATCH) {
                flush(&mut self.outbox, &self.shared, &mut self.round);
            }
            let batch = match source {
                Source::Listener(_) => &mut self.client_in,
                Source::Relay(_) => &mut self.peer_in,
            };
            self.round.recvmmsg_calls += 1;
            let n = match batch.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors from earlier sends surface here on Linux, one per call: read
                // on (data may wait behind them), but give up on an error that persists.
                Err(e) => {
                    tracing::trace!("recv: {e}");
                    errors += 1;
                    if errors > BATCH {
                        return;
                    }
                    continue;
                }
            };
            let headroom = batch.headroom();
            let mut core = self.shared.lock();
            for i in 0..n {
                let segment = batch.segment_size(i);
                let Some((from, slot, len)) = batch.slot_mut(i) else { continue };
                if segment.is_some() {
                    self.round.gro_reads += 1;
                }
                for r in segments(len, segment) {
                    self.round.datagrams_in += 1;
                    if !self.outbox.has_room(1) {
                        // A coalesced batch can make more answers than a plain one:
                        // send what is there (without the core held) and go on.
                        drop(core);
                        flush(&mut self.outbox, &self.shared, &mut self.round);
                        core = self.shared.lock();
                    }
                    let t = match source {
                        Source::Listener(local) => {
                            let ft = FiveTuple { transport: Transport::Udp, local, remote: from };
                            core.handle_client(ft, &slot[headroom + r.start..headroom + r.end], now)
                        }
                        Source::Relay(relay) if segment.is_none() => core.handle_peer(relay, from, slot, len, now),
                        Source::Relay(relay) => {
                            // Framing in place would overwrite the next datagram of the read: copy this one out.
                            let seg = &mut self.peer_segment[..PEER_HEADROOM + r.len() + PEER_TAILROOM];
                            seg[PEER_HEADROOM..PEER_HEADROOM + r.len()]
                                .copy_from_slice(&slot[headroom + r.start..headroom + r.end]);
                            core.handle_peer(relay, from, seg, r.len(), now)
                        }
                    };
                    if let Some(t) = t {
                        self.outbox.push(t);
                    }
                }
            }
            self.shared.forward_lookups(&mut core);
            drop(core);
            if n < BATCH {
                // A short batch: the socket is empty, the edge is consumed.
                return;
            }
        }
    }
}

/// Sends what the round produced: answers grouped by the socket they leave
/// from (order kept within a socket), one sendmmsg per socket, in which each
/// run of equal-size datagrams to one destination is one GSO message. The
/// relayed sockets are looked up under one read of the registry for the
/// whole flush; nothing here takes the core or the registry's write side.
fn flush(outbox: &mut Outbox, shared: &Shared, round: &mut RoundCount) {
    if outbox.pending.is_empty() {
        return;
    }
    runs_by_socket(&mut outbox.pending, &mut outbox.runs);
    let out = &outbox.out;
    let sockets = shared.registry.sockets.read().unwrap_or_else(|p| p.into_inner());
    for run in outbox.runs.drain(..) {
        let run = &outbox.pending[run];
        let target = run[0].0;
        let sock = match target {
            Target::Client(ft) if ft.transport != Transport::Udp => {
                for (t, st, l) in run {
                    shared.deliver(*t, &out[*st..*st + *l]);
                }
                continue;
            }
            Target::Client(ft) => shared.udp.get(&ft.local),
            Target::Peer { relay, .. } => sockets.get(&relay),
        };
        if let Some(s) = sock {
            let max_segments = shared.gso_segments.load(Ordering::Relaxed);
            let sent: SentSegmented =
                send_segmented(s.as_raw_fd(), run, |(t, st, l)| (dest_of(t), &out[*st..*st + *l]), max_segments);
            round.sendmmsg_calls += sent.calls as u64;
            round.datagrams_out += (run.len() - sent.failed) as u64;
            round.gso_sends += sent.gso_messages as u64;
            round.gso_refused += sent.gso_refused as u64;
            if sent.failed > 0 {
                shared.counters.send_errors.fetch_add(sent.failed as u64, Ordering::Relaxed);
            }
            if sent.gso_unsupported && shared.gso_segments.swap(1, Ordering::Relaxed) > 1 {
                tracing::warn!(
                    "UDP GSO refused by the kernel (EIO: a network device without checksum offload); sending one \
                     datagram per message from now on; refusals are counted in natkit_relay_udp_gso_refused_total"
                );
            }
        }
    }
    drop(sockets);
    outbox.pending.clear();
    outbox.used = 0;
}

/// Orders a round's answers by the socket they leave from and puts the
/// index range of each socket's run in `runs`: one sendmmsg each. The sort
/// is unstable (no allocation) but ties are broken by the answer's offset
/// in the round's buffer, which grows in the order the answers were made,
/// so each destination still sees its datagrams in order.
fn runs_by_socket(pending: &mut [(Target, usize, usize)], runs: &mut Vec<std::ops::Range<usize>>) {
    runs.clear();
    pending.sort_unstable_by_key(|(t, start, _)| (socket_key(t), *start));
    let mut i = 0;
    while i < pending.len() {
        let key = socket_key(&pending[i].0);
        let mut j = i + 1;
        while j < pending.len() && socket_key(&pending[j].0) == key {
            j += 1;
        }
        runs.push(i..j);
        i = j;
    }
}

fn dest_of(t: &Target) -> SocketAddr {
    match t {
        Target::Peer { peer, .. } => *peer,
        Target::Client(ft) => ft.remote,
    }
}

/// Which socket a transmit leaves from, as a sortable key: a relayed socket,
/// a UDP listener, or (never batched) a stream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SocketKey {
    Relay(RelayId),
    Listener(SocketAddr),
    Stream(SocketAddr, SocketAddr),
}

fn socket_key(t: &Target) -> SocketKey {
    match t {
        Target::Peer { relay, .. } => SocketKey::Relay(*relay),
        Target::Client(ft) if ft.transport == Transport::Udp => SocketKey::Listener(ft.local),
        Target::Client(ft) => SocketKey::Stream(ft.local, ft.remote),
    }
}

/// Starts one UDP worker thread per listener socket set; returns the
/// threads and the wakers that stop them.
fn start_workers(
    shared: &Arc<Shared>,
    per_worker: Vec<Vec<(SocketAddr, Arc<UdpSocket>)>>,
    stop: &Arc<AtomicBool>,
) -> io::Result<(Vec<std::thread::JoinHandle<()>>, Vec<mio::Waker>)> {
    let mut threads = Vec::new();
    let mut wakers = Vec::new();
    let mut registries = Vec::new();
    for (i, listeners) in per_worker.into_iter().enumerate() {
        let poll = mio::Poll::new()?;
        wakers.push(mio::Waker::new(poll.registry(), WAKE_TOKEN)?);
        for (k, (_, sock)) in listeners.iter().enumerate() {
            let fd = sock.as_raw_fd();
            poll.registry().register(
                &mut mio::unix::SourceFd(&fd),
                mio::Token(LISTENER_TOKEN_BASE - k),
                mio::Interest::READABLE,
            )?;
        }
        let registry = poll.registry().try_clone()?;
        registries.push(poll.registry().try_clone()?);
        let worker = UdpWorker {
            shared: shared.clone(),
            poll,
            listeners,
            client_in: RecvBatch::new(MAX_DATAGRAM, 0, 0),
            peer_in: RecvBatch::new(MAX_DATAGRAM, PEER_HEADROOM, PEER_TAILROOM),
            peer_segment: vec![0u8; PEER_HEADROOM + MAX_DATAGRAM + PEER_TAILROOM],
            ready: Vec::with_capacity(256),
            outbox: Outbox {
                pending: Vec::with_capacity(4 * BATCH),
                runs: Vec::with_capacity(4 * BATCH),
                out: vec![0u8; OUT_BYTES],
                used: 0,
            },
            round: RoundCount::default(),
        };
        let stop = stop.clone();
        threads.push(std::thread::Builder::new().name(format!("relay-udp-{i}")).spawn(move || {
            WORKER.with(|w| *w.borrow_mut() = Some(registry));
            worker.run(&stop);
        })?);
    }
    let _ = shared.registry.workers.set(registries);
    Ok((threads, wakers))
}

async fn accept_loop(
    shared: Arc<Shared>,
    local: SocketAddr,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let transport = if tls.is_some() { Transport::Tls } else { Transport::Tcp };
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            (stream, remote) = accept_with_backoff(&listener, &shared.counters.accept_paused) => {
                // The slot is taken before a byte is read; a refused connection is closed at once.
                let permit = match shared.limiter.try_acquire(remote.ip()) {
                    Ok(p) => p,
                    Err(why) => {
                        shared.refused(why, remote);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                shared.counters.tcp_connections.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    let ft = FiveTuple { transport, local, remote };
                    let _open = OpenGauge::new(&shared, transport);
                    match tls {
                        None => serve_stream(shared.clone(), ft, stream, permit).await,
                        Some(acceptor) => match tokio::time::timeout(shared.limits.tls_handshake, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => serve_stream(shared.clone(), ft, s, permit).await,
                            Ok(Err(e)) => {
                                shared.counters.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(%remote, "TLS handshake failed: {e}");
                            }
                            Err(_) => {
                                shared.closed(ConnClose::TlsHandshakeTimeout);
                                tracing::debug!(%remote, "no TLS handshake within {:?}: closed", shared.limits.tls_handshake);
                            }
                        },
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Counts a connection in `natkit_relay_connections{transport}` while it lives.
struct OpenGauge<'a>(&'a AtomicU64);

impl<'a> OpenGauge<'a> {
    fn new(shared: &'a Shared, transport: Transport) -> Self {
        let g = if transport == Transport::Tls { &shared.counters.open_tls } else { &shared.counters.open_tcp };
        g.fetch_add(1, Ordering::Relaxed);
        OpenGauge(g)
    }
}

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One TCP or TLS client: frames in, core, frames out through a queue.
/// Reads go into a buffer kept across reads, so a read cut short by a
/// deadline loses nothing; the deadline moves only when a whole frame has
/// arrived, so a client that trickles bytes gains no time.
async fn serve_stream<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    shared: Arc<Shared>,
    ft: FiveTuple,
    stream: S,
    _permit: ConnPermit,
) {
    use tokio::io::AsyncReadExt;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = stream_queue::queue(shared.limits.stream_queue_bytes);
    if let Ok(mut m) = shared.conns.lock() {
        m.insert((ft.local, ft.remote), tx.clone());
    }
    // Returns the write half, so a connection bound by ConnectionBind (RFC
    // 6062) can be put back together and spliced with its peer connection.
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
        wr
    });
    // Set when ConnectionBind made this a data connection.
    let mut bound = None;
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut seen_message = false;
    let mut deadline = tokio::time::Instant::now() + shared.limits.first_message;
    'conn: loop {
        loop {
            let frame = match take_frame(&mut pending) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(client = %ft.remote, "closing the connection: {e}");
                    break 'conn;
                }
            };
            seen_message = true;
            deadline = tokio::time::Instant::now() + shared.limits.idle;
            let (t, effects) = {
                let mut core = shared.lock();
                let t = core.handle_client(ft, &frame, Instant::now()).map(|t| (t.target, t.payload.to_vec()));
                shared.forward_lookups(&mut core);
                (t, std::iter::from_fn(|| core.poll_tcp_effect()).collect::<Vec<_>>())
            };
            if let Some((target, payload)) = t {
                match target {
                    Target::Client(c) if c == ft => {
                        if tx.send(payload).await.is_err() {
                            break 'conn;
                        }
                    }
                    _ => shared.deliver(target, &payload),
                }
            }
            if !effects.is_empty()
                && let Some(id) = relay_tcp::apply(&shared, effects, Some(ft))
            {
                bound = Some(id);
                break 'conn;
            }
        }
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => pending.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => {
                tracing::debug!(client = %ft.remote, "closing the connection: {e}");
                break;
            }
            Err(_) if !seen_message => {
                shared.closed(ConnClose::FirstMessageTimeout);
                tracing::debug!(client = %ft.remote, "no complete message within {:?}: closed", shared.limits.first_message);
                break;
            }
            // An allocation keeps its connection however quiet it is (its lifetime governs).
            Err(_) if shared.lock().has_allocation(&ft) => deadline = tokio::time::Instant::now() + shared.limits.idle,
            Err(_) => {
                shared.closed(ConnClose::IdleTimeout);
                tracing::debug!(client = %ft.remote, "silent for {:?} without an allocation: closed", shared.limits.idle);
                break;
            }
        }
    }
    shared.lock().client_closed(ft);
    if let Ok(mut m) = shared.conns.lock() {
        m.remove(&(ft.local, ft.remote));
    }
    drop(tx);
    let Ok(mut wr) = writer.await else { return };
    match bound {
        // The ConnectionBind answer is written; from here on raw bytes.
        Some(id) => relay_tcp::splice(&shared, id, rd.unsplit(wr), pending).await,
        None => {
            let _ = wr.shutdown().await;
        }
    }
}

/// Draining: no new allocation is granted while the existing ones relay and
/// refresh as before, until the last one ends, `timeout` passes, or another
/// stop request comes.
async fn drain(shared: &Shared, stop: &mut mpsc::Receiver<Stop>, timeout: Duration) {
    let left = {
        let mut core = shared.lock();
        core.start_draining();
        core.allocations()
    };
    tracing::warn!(
        allocations = left,
        "draining: new allocations are refused, the {left} existing ones go on until they end or --drain-timeout ({} s) passes; signal again to stop now",
        timeout.as_secs()
    );
    let deadline = tokio::time::Instant::now() + timeout;
    // How often the allocation count is looked at: the drain ends within this of the last allocation.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let left = shared.lock().allocations();
        if left == 0 {
            tracing::info!("drained: no allocation left");
            return;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(allocations = left, "drain timeout: ending the remaining allocations");
                return;
            }
            Some(_) = stop.recv() => {
                tracing::warn!(allocations = left, "stop requested while draining: ending the remaining allocations now");
                return;
            }
        }
    }
}

async fn sweeper(shared: Arc<Shared>) {
    loop {
        let wake = shared.lock().poll_timeout();
        match wake {
            Some(t) => tokio::time::sleep_until(t.into()).await,
            None => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
        }
        let effects = {
            let mut core = shared.lock();
            core.handle_timeout(Instant::now());
            std::iter::from_fn(|| core.poll_tcp_effect()).collect::<Vec<_>>()
        };
        relay_tcp::apply(&shared, effects, None);
    }
}

/// `--metrics`: the whole request head is read before the answer, within
/// bounded time and size, with a cap on connections ([`metrics_http`]).
async fn serve_metrics(shared: Arc<Shared>, listener: TcpListener, limits: MetricsLimits) {
    metrics_http::serve(listener, limits, Paths::Any, "relay", move || {
        let core = shared.lock();
        crate::relay::metrics_text::render(&core, &shared.counters_snapshot())
    })
    .await
}

impl Shared {
    fn counters_snapshot(&self) -> DriverSnapshot {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DriverSnapshot {
            tcp_connections: load(&c.tcp_connections),
            tls_handshake_failures: load(&c.tls_handshake_failures),
            send_errors: load(&c.send_errors),
            open_tcp: load(&c.open_tcp),
            open_tls: load(&c.open_tls),
            refused_total: load(&c.refused_total),
            refused_per_ip: load(&c.refused_per_ip),
            closed: ConnClose::ALL.map(|r| (r.label(), load(&c.closed[r as usize]))),
            accept_paused: load(&c.accept_paused),
            stream_queue_dropped: load(&c.stream_queue_dropped),
            stream_queue_dropped_bytes: load(&c.stream_queue_dropped_bytes),
            udp: c.udp.snapshot(),
            tcp: self.tcp.snapshot(),
        }
    }

    /// A connection refused at accept: counted, and logged once per kind of cap.
    fn refused(&self, why: ConnRefusal, remote: SocketAddr) {
        let (counter, logged) = match why {
            ConnRefusal::Total => (&self.counters.refused_total, &self.refusal_logged[0]),
            ConnRefusal::PerIp => (&self.counters.refused_per_ip, &self.refusal_logged[1]),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !logged.swap(true, Ordering::Relaxed) {
            let (cap, flag) = match why {
                ConnRefusal::Total => (self.limits.max_connections, "--max-connections"),
                ConnRefusal::PerIp => (self.limits.max_per_ip, "--max-connections-per-ip"),
            };
            tracing::warn!(%remote, "TCP/TLS connection refused: {cap} connections ({flag}) reached; further refusals are counted in natkit_relay_connections_refused_total{{reason=\"{}\"}}", why.as_str());
        }
    }

    /// Relayed data dropped for a client that does not read: counted, logged once.
    fn queue_full(&self, ft: FiveTuple, bytes: usize) {
        self.counters.stream_queue_dropped.fetch_add(1, Ordering::Relaxed);
        self.counters.stream_queue_dropped_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if !self.queue_full_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                client = %ft.remote,
                "relayed data dropped: a {} client's queue holds {} bytes (--stream-queue-bytes) and it does not read; further drops are counted in natkit_relay_stream_queue_dropped_total",
                ft.transport,
                self.limits.stream_queue_bytes
            );
        }
    }

    fn closed(&self, why: ConnClose) {
        self.counters.closed[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(local: &str, remote: &str, transport: Transport) -> Target {
        Target::Client(FiveTuple { transport, local: local.parse().unwrap(), remote: remote.parse().unwrap() })
    }

    fn peer(relay: u64, addr: &str) -> Target {
        Target::Peer { relay: RelayId(relay), peer: addr.parse().unwrap() }
    }

    /// Two consecutive loopback ports nobody holds, for a relay range of two.
    fn two_free_ports() -> u16 {
        loop {
            let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let p = a.local_addr().unwrap().port();
            drop(a);
            if p < 65535
                && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok()
            {
                return p;
            }
        }
    }

    #[test]
    fn relayed_ports_are_not_reused_while_open_and_a_full_range_is_no_ports() {
        let lo = two_free_ports();
        let mut ports = Ports::new(Arc::new(Registry::default()), vec!["127.0.0.1".parse().unwrap()], (lo, lo + 1));
        let (a, addr_a) = ports.open(Family::V4).unwrap();
        let (_, addr_b) = ports.open(Family::V4).unwrap();
        assert_ne!(addr_a, addr_b);
        assert_eq!(ports.open(Family::V4), Err(RelayOpenError::NoPorts), "both ports are ours: no system call, 508");
        assert_eq!(ports.open(Family::V6), Err(RelayOpenError::FamilyNotServed));
        ports.close(a);
        assert_eq!(ports.open(Family::V4).unwrap().1, addr_a, "a closed port is free again");
    }

    #[test]
    fn rounds_land_in_the_bucket_of_their_datagram_count_and_empty_rounds_only_add_calls() {
        let c = UdpIoCounters::default();
        for n in [1, 2, 3, 32, 33, 500, 0] {
            c.add_round(&RoundCount {
                datagrams_in: n,
                datagrams_out: n,
                recvmmsg_calls: 1,
                sendmmsg_calls: 1,
                ..Default::default()
            });
        }
        let s = c.snapshot();
        // Buckets 1, 2, 4, 8, 16, 32, 64, 128, more: 3 goes to 4, 33 to 64, 500 past 128.
        assert_eq!(s.rounds, [1, 1, 1, 0, 0, 1, 1, 0, 1]);
        assert_eq!((s.datagrams_in, s.datagrams_out), (571, 571));
        assert_eq!((s.recvmmsg_calls, s.sendmmsg_calls), (7, 7), "a round that found nothing still made its calls");
        let text = crate::relay::metrics_text::render_udp_io_for_test(&s);
        assert!(text.contains("natkit_relay_udp_round_datagrams_bucket{le=\"4\"} 3\n"), "cumulative: {text}");
        assert!(text.contains("natkit_relay_udp_round_datagrams_bucket{le=\"+Inf\"} 6\n"));
        assert!(text.contains("natkit_relay_udp_round_datagrams_count 6\n"));
        assert!(text.contains("natkit_relay_udp_round_datagrams_sum 571\n"));
    }

    #[test]
    fn a_round_goes_out_in_one_run_per_socket_in_order_per_destination() {
        let l = "127.0.0.1:3478";
        let mut pending = vec![
            (peer(2, "203.0.113.9:5000"), 0, 10),
            (client(l, "198.51.100.1:1000", Transport::Udp), 10, 10),
            (peer(1, "203.0.113.9:5000"), 20, 10),
            (client(l, "198.51.100.2:1000", Transport::Udp), 30, 10),
            (peer(2, "203.0.113.9:5000"), 40, 10),
            (client(l, "198.51.100.3:1000", Transport::Tcp), 50, 10),
            (client(l, "198.51.100.1:1000", Transport::Udp), 60, 10),
        ];
        let mut runs = Vec::new();
        runs_by_socket(&mut pending, &mut runs);
        let starts: Vec<Vec<usize>> = runs.iter().map(|r| pending[r.clone()].iter().map(|p| p.1).collect()).collect();
        // Relay 1, relay 2 (its two datagrams in order), the UDP listener (three
        // datagrams, client 1's two in order), the TCP connection.
        assert_eq!(starts, vec![vec![20], vec![0, 40], vec![10, 30, 60], vec![50]]);
        runs_by_socket(&mut [], &mut runs);
        assert!(runs.is_empty());
    }
}
