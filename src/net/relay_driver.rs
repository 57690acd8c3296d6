//! The sockets of `natkit relay`: UDP, TCP and TLS listeners, relayed UDP
//! sockets in the `--ports` range, the sweep timer and the metrics endpoint,
//! around the sans-IO core in [`crate::turn::server`].
//!
//! Each UDP listen address gets one SO_REUSEPORT socket per worker thread
//! (its own single-threaded runtime), so the kernel spreads clients over
//! cores and no packet crosses threads. A worker takes up to 32 datagrams
//! with one recvmmsg, runs the core on all of them under one short lock,
//! copies the answers out, unlocks and sends them with sendmmsg: the core is
//! never held across a system call. Every relayed socket has a reader task,
//! on the thread whose client opened it, that does the same for peer
//! datagrams. TCP and TLS connections read
//! frames (STUN or padded ChannelData, RFC 8656 §12.5) and write through a
//! per-connection queue.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Instant, SystemTime};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::net::mmsg::{BATCH, RecvBatch, send_many};

use crate::net::stream::read_frame;
use crate::net::transport::Transport;
use crate::turn::server::metrics::DriverSnapshot;
use crate::turn::server::wire::{PEER_HEADROOM, PEER_TAILROOM};
use crate::turn::server::{
    Family, FiveTuple, RelayId, RelayOpenError, RelayPorts, Server, ServerConfig, Stats, Target,
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
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {transport} {addr}: {source} (is another server using it? try another --listen)")]
    Listen { transport: &'static str, addr: SocketAddr, source: io::Error },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics { addr: SocketAddr, source: io::Error },
}

/// What the driver counts besides the core.
#[derive(Debug, Default)]
pub struct DriverCounters {
    pub tcp_connections: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub send_errors: AtomicU64,
}

/// Relayed sockets, shared by the core (open/close) and the data path (send).
/// A relayed socket and the task reading it.
type RelaySocket = (Arc<UdpSocket>, Option<AbortHandle>);

#[derive(Default)]
struct Registry {
    sockets: RwLock<HashMap<RelayId, RelaySocket>>,
    shared: OnceLock<Weak<Shared>>,
}

struct Ports {
    registry: Arc<Registry>,
    ips: Vec<IpAddr>,
    range: (u16, u16),
    next_id: u64,
}

impl Ports {
    fn bind_in_range(&self, ip: IpAddr) -> Result<std::net::UdpSocket, RelayOpenError> {
        let (lo, hi) = self.range;
        let span = (hi - lo) as u32 + 1;
        let start = rand::random::<u32>() % span;
        for i in 0..span {
            let port = lo + ((start + i) % span) as u16;
            let domain = if ip.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
            let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
                .map_err(|e| RelayOpenError::Io(e.to_string()))?;
            if ip.is_ipv6() {
                let _ = s.set_only_v6(true);
            }
            if s.bind(&SocketAddr::new(ip, port).into()).is_ok() {
                s.set_nonblocking(true).map_err(|e| RelayOpenError::Io(e.to_string()))?;
                return Ok(s.into());
            }
        }
        Err(RelayOpenError::NoPorts)
    }
}

impl RelayPorts for Ports {
    fn open(&mut self, family: Family) -> Result<(RelayId, SocketAddr), RelayOpenError> {
        let ip = self
            .ips
            .iter()
            .copied()
            .find(|ip| (family == Family::V4) == ip.is_ipv4())
            .ok_or(RelayOpenError::FamilyNotServed)?;
        let sock = Arc::new(self.bind_in_range(ip)?);
        let addr = sock.local_addr().map_err(|e| RelayOpenError::Io(e.to_string()))?;
        self.next_id += 1;
        let id = RelayId(self.next_id);
        let abort = self
            .registry
            .shared
            .get()
            .and_then(Weak::upgrade)
            .map(|shared| tokio::spawn(relay_reader(shared, id, sock.clone())).abort_handle());
        if let Ok(mut m) = self.registry.sockets.write() {
            m.insert(id, (sock, abort));
        }
        Ok((id, addr))
    }

    fn close(&mut self, relay: RelayId) {
        let removed = self.registry.sockets.write().ok().and_then(|mut m| m.remove(&relay));
        if let Some((_, Some(abort))) = removed {
            abort.abort();
        }
    }
}

type ConnKey = (SocketAddr, SocketAddr);

struct Shared {
    core: Mutex<Server>,
    /// Listener sockets for sending, by their bound address.
    udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    registry: Arc<Registry>,
    conns: Mutex<HashMap<ConnKey, mpsc::Sender<Vec<u8>>>>,
    counters: DriverCounters,
}

/// Largest datagram handled; bigger ones are truncated by the kernel and dropped by the core.
const MAX_DATAGRAM: usize = 65_535;

impl Shared {
    /// The socket a transmit leaves from: a listener or a relayed socket.
    fn socket_for(&self, target: &Target) -> Option<Arc<UdpSocket>> {
        match target {
            Target::Peer { relay, .. } => self.registry.sockets.read().ok()?.get(relay).map(|(s, _)| s.clone()),
            Target::Client(ft) => self.udp.get(&ft.local).cloned(),
        }
    }

    /// Sends one transmit (the stream and odd paths; the UDP fast path batches).
    fn deliver(&self, target: Target, payload: &[u8]) {
        match target {
            Target::Client(ft) if ft.transport != Transport::Udp => {
                let tx = self.conns.lock().ok().and_then(|m| m.get(&(ft.local, ft.remote)).cloned());
                if let Some(tx) = tx {
                    // A full queue means a client that does not read: drop rather than stall the relay.
                    let _ = tx.try_send(payload.to_vec());
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Server> {
        // A panic inside the core would poison the lock; the state is still usable, keep serving.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the relay until `shutdown` resolves; returns the core's final counters.
pub async fn run(
    core_cfg: ServerConfig,
    cfg: DriverConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(Stats, u64), StartError> {
    let registry = Arc::new(Registry::default());
    let ports = Ports { registry: registry.clone(), ips: cfg.relay_ips.clone(), range: cfg.ports, next_id: 0 };
    let core = Server::new(core_cfg, Box::new(ports), Instant::now(), SystemTime::now());

    // Bind everything first, so a busy port is an error before anything runs.
    let workers = cfg.workers.max(1);
    let mut udp_sockets: Vec<(SocketAddr, Vec<Arc<UdpSocket>>)> = Vec::new();
    for &addr in cfg.listen.iter().chain(&cfg.listen_udp_only) {
        let mut socks = Vec::new();
        for _ in 0..workers {
            socks.push(Arc::new(bind_udp(addr).map_err(|source| StartError::Listen {
                transport: "UDP",
                addr,
                source,
            })?));
        }
        udp_sockets.push((addr, socks));
    }
    let mut tcp = Vec::new();
    for &addr in &cfg.listen {
        tcp.push((addr, bind_tcp(addr).map_err(|source| StartError::Listen { transport: "TCP", addr, source })?, None));
    }
    if let Some(tls) = &cfg.tls {
        for &addr in &cfg.tls_listen {
            let l = bind_tcp(addr).map_err(|source| StartError::Listen { transport: "TLS", addr, source })?;
            tcp.push((addr, l, Some(tokio_rustls::TlsAcceptor::from(tls.clone()))));
        }
    }
    let metrics = match cfg.metrics {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Metrics { addr, source })?),
        None => None,
    };

    let udp: HashMap<SocketAddr, Arc<UdpSocket>> =
        udp_sockets.iter().map(|(a, socks)| (*a, socks[0].clone())).collect();
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        udp,
        registry: registry.clone(),
        conns: Mutex::new(HashMap::new()),
        counters: DriverCounters::default(),
    });
    let _ = registry.shared.set(Arc::downgrade(&shared));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut threads = Vec::new();
    for (addr, socks) in udp_sockets {
        for (i, s) in socks.into_iter().enumerate() {
            let shared = shared.clone();
            let mut stop = stop_rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("relay-udp-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(%addr, "cannot start a worker runtime: {e}");
                            return;
                        }
                    };
                    rt.block_on(async move {
                        tokio::select! {
                            _ = udp_worker(shared, addr, s) => {}
                            _ = stop.wait_for(|v| *v) => {}
                        }
                    });
                })
                .map_err(|source| StartError::Listen { transport: "UDP", addr, source })?;
            threads.push(t);
        }
    }
    let mut tasks = JoinSet::new();
    for (addr, listener, tls) in tcp {
        tasks.spawn(accept_loop(shared.clone(), addr, listener, tls));
    }
    tasks.spawn(sweeper(shared.clone()));
    if let Some(l) = metrics {
        tasks.spawn(serve_metrics(shared.clone(), l));
    }

    shutdown.await;
    // Stop accepting and reading first, then end every allocation.
    let _ = stop_tx.send(true);
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
        for (_, (_, abort)) in m.drain() {
            if let Some(a) = abort {
                a.abort();
            }
        }
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

/// Per-thread buffers of the UDP fast path. A task never holds them across
/// an await, so tasks sharing a thread take turns.
struct ThreadIo {
    client_in: RecvBatch,
    peer_in: RecvBatch,
    /// Answers copied out of the core: (target, range in `out`).
    pending: Vec<(Target, usize, usize)>,
    out: Vec<u8>,
}

/// Largest answer the core makes: a Data indication around a full datagram.
const MAX_OUT: usize = MAX_DATAGRAM + 64;

thread_local! {
    static IO: RefCell<ThreadIo> = RefCell::new(ThreadIo {
        client_in: RecvBatch::new(MAX_DATAGRAM, 0, 0),
        peer_in: RecvBatch::new(MAX_DATAGRAM, PEER_HEADROOM, PEER_TAILROOM),
        pending: Vec::with_capacity(BATCH),
        out: vec![0u8; MAX_OUT * BATCH],
    });
}

/// Where a batch of datagrams came in.
#[derive(Clone, Copy)]
enum Source {
    Listener(SocketAddr),
    Relay(RelayId),
}

/// One readiness event: receive a batch, run the core on it, send the
/// answers. Returns whether the socket is drained (fewer than a batch read).
fn pump(shared: &Shared, fd: RawFd, source: Source) -> bool {
    IO.with(|io| {
        let Ok(mut io) = io.try_borrow_mut() else { return false };
        let io = &mut *io;
        let batch = match source {
            Source::Listener(_) => &mut io.client_in,
            Source::Relay(_) => &mut io.peer_in,
        };
        let n = match batch.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            // ICMP errors from earlier sends surface here on Linux; they are not fatal.
            Err(e) => {
                tracing::trace!("recv: {e}");
                return false;
            }
        };
        io.pending.clear();
        let mut used = 0usize;
        {
            let now = Instant::now();
            let mut core = shared.lock();
            for i in 0..n {
                let Some((from, slot, len)) = batch.slot_mut(i) else { continue };
                let t = match source {
                    Source::Listener(local) => {
                        let ft = FiveTuple { transport: Transport::Udp, local, remote: from };
                        core.handle_client(ft, &slot[..len], now)
                    }
                    Source::Relay(relay) => core.handle_peer(relay, from, slot, len, now),
                };
                if let Some(t) = t {
                    let end = used + t.payload.len();
                    if let Some(dst) = io.out.get_mut(used..end) {
                        dst.copy_from_slice(t.payload);
                        io.pending.push((t.target, used, t.payload.len()));
                        used = end;
                    }
                }
            }
        }
        flush(shared, &io.pending, &io.out);
        n < BATCH
    })
}

/// Sends what a batch produced, one sendmmsg per run of answers that leave
/// from the same UDP socket.
fn flush(shared: &Shared, pending: &[(Target, usize, usize)], out: &[u8]) {
    let dest_of = |t: &Target| match t {
        Target::Peer { peer, .. } => *peer,
        Target::Client(ft) => ft.remote,
    };
    let mut i = 0;
    while i < pending.len() {
        let (target, start, len) = pending[i];
        if matches!(target, Target::Client(ft) if ft.transport != Transport::Udp) {
            shared.deliver(target, &out[start..start + len]);
            i += 1;
            continue;
        }
        let sock = shared.socket_for(&target);
        // The run of answers after this one that leave from the same socket.
        let mut j = i + 1;
        while j < pending.len() && same_socket(&pending[j].0, &target) {
            j += 1;
        }
        if let Some(s) = sock {
            let msgs = pending[i..j].iter().map(|(t, st, l)| (dest_of(t), &out[*st..*st + *l]));
            let failed = send_many(s.as_raw_fd(), msgs);
            if failed > 0 {
                shared.counters.send_errors.fetch_add(failed as u64, Ordering::Relaxed);
            }
        }
        i = j;
    }
}

fn same_socket(a: &Target, b: &Target) -> bool {
    match (a, b) {
        (Target::Peer { relay: x, .. }, Target::Peer { relay: y, .. }) => x == y,
        (Target::Client(x), Target::Client(y)) => {
            x.transport == Transport::Udp && y.transport == Transport::Udp && x.local == y.local
        }
        _ => false,
    }
}

/// Waits for readiness and pumps until the socket is drained, forever.
async fn pump_forever(shared: Arc<Shared>, sock: Arc<UdpSocket>, source: Source) {
    // SAFETY: the Arc keeps the socket (and so its fd) open for as long as the AsyncFd lives.
    let fd = match unsafe { AsyncFd::register(sock.clone()) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("cannot watch a UDP socket: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable().await else { return };
        if pump(&shared, sock.as_raw_fd(), source) {
            // Drained: wait for the next edge (tokio keeps any that arrived meanwhile).
            guard.clear_ready();
        }
    }
}

async fn udp_worker(shared: Arc<Shared>, local: SocketAddr, sock: Arc<UdpSocket>) {
    pump_forever(shared, sock, Source::Listener(local)).await
}

async fn relay_reader(shared: Arc<Shared>, relay: RelayId, sock: Arc<UdpSocket>) {
    pump_forever(shared, sock, Source::Relay(relay)).await
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
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(%local, "accept: {e}");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                shared.counters.tcp_connections.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    let ft = FiveTuple { transport, local, remote };
                    match tls {
                        None => serve_stream(shared, ft, stream).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                                Ok(Ok(s)) => serve_stream(shared, ft, s).await,
                                _ => {
                                    shared.counters.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(%remote, "TLS handshake failed");
                                }
                            }
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One TCP or TLS client: frames in, core, frames out through a queue.
async fn serve_stream<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    shared: Arc<Shared>,
    ft: FiveTuple,
    stream: S,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    if let Ok(mut m) = shared.conns.lock() {
        m.insert((ft.local, ft.remote), tx.clone());
    }
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    loop {
        let frame = match read_frame(&mut rd).await {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    tracing::debug!(client = %ft.remote, "closing the connection: {e}");
                }
                break;
            }
        };
        let t = {
            let mut core = shared.lock();
            core.handle_client(ft, &frame, Instant::now()).map(|t| (t.target, t.payload.to_vec()))
        };
        if let Some((target, payload)) = t {
            match target {
                Target::Client(c) if c == ft => {
                    if tx.send(payload).await.is_err() {
                        break;
                    }
                }
                _ => shared.deliver(target, &payload),
            }
        }
    }
    shared.lock().client_closed(ft);
    if let Ok(mut m) = shared.conns.lock() {
        m.remove(&(ft.local, ft.remote));
    }
    drop(tx);
    let _ = writer.await;
}

async fn sweeper(shared: Arc<Shared>) {
    loop {
        let wake = shared.lock().poll_timeout();
        match wake {
            Some(t) => tokio::time::sleep_until(t.into()).await,
            None => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
        }
        shared.lock().handle_timeout(Instant::now());
    }
}

async fn serve_metrics(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            // Read (and ignore) the request head; any GET gets the metrics.
            let mut head = [0u8; 2048];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                use tokio::io::AsyncReadExt;
                let _ = stream.read(&mut head).await;
            })
            .await;
            let body = {
                let core = shared.lock();
                crate::turn::server::metrics::render(&core, &shared.counters_snapshot())
            };
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

impl Shared {
    fn counters_snapshot(&self) -> DriverSnapshot {
        DriverSnapshot {
            tcp_connections: self.counters.tcp_connections.load(Ordering::Relaxed),
            tls_handshake_failures: self.counters.tls_handshake_failures.load(Ordering::Relaxed),
            send_errors: self.counters.send_errors.load(Ordering::Relaxed),
        }
    }
}
