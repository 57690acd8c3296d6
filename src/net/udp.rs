//! The UDP driver: any multi-socket sans-IO core over its sockets ([`drive`], the contract in
//! [`crate::net::datagram`]): nat-type's discovery and lifetime search, the birthday method (on
//! the session's shared socket, [`drive_diverted`]), and STUN client transactions over one
//! socket ([`run_transactions`]). One loop, in quinn's and str0m's order: poll_transmit, then
//! poll_timeout, then wait on socket or timer, then handle_*.
//!
//! Many transactions share one socket, so every server sees the same local
//! port: that is what makes "the mapped address varies by destination"
//! meaningful. ICMP errors on an unconnected socket are read from the
//! kernel's error queue (IP_RECVERR), which names the destination that
//! failed, so a dead server ends its own transactions at once and no others.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

pub use crate::net::datagram::{Diverted, MultiSocketCore, Transmit, Unreachable};
use crate::stun::transaction::{ClientTransaction, Outcome};

/// How one transaction driven over UDP ended.
#[derive(Debug, Clone)]
pub enum UdpEnd {
    /// A response arrived from `from` (with CHANGE-REQUEST it may differ from the destination).
    Response {
        outcome: Outcome,
        from: SocketAddr,
    },
    TimedOut {
        sends: u32,
        elapsed: Duration,
    },
    Unreachable {
        kind: Unreachable,
        sends: u32,
        elapsed: Duration,
    },
    SendFailed {
        error: String,
    },
}

/// Datagrams from one source that matched no transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Strays {
    /// Not STUN at all.
    pub garbage: u32,
    /// STUN, but with a transaction id we never sent (or already answered).
    pub wrong_id: u32,
}

impl Strays {
    /// A clause for an error sentence, e.g. "it sent 3 datagrams that are not STUN".
    pub fn describe(&self) -> Option<String> {
        match (self.garbage, self.wrong_id) {
            (0, 0) => None,
            (g, 0) => Some(format!("it sent {g} datagram(s) that are not STUN")),
            (0, w) => Some(format!("it sent {w} STUN message(s) with a transaction id we never used")),
            (g, w) => Some(format!("it sent {g} non-STUN datagram(s) and {w} message(s) with a wrong transaction id")),
        }
    }
}

/// Binds a UDP socket that reports ICMP errors per destination.
pub fn bind(local: SocketAddr) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(local);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if local.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&local.into())?;
    set_recverr(sock.as_raw_fd(), local.is_ipv6(), true)?;
    UdpSocket::from_std(sock.into())
}

/// Stops per-destination ICMP reporting, once a socket moves on from STUN
/// probing to carrying a connection that must not trip over stale errors.
pub fn disable_recverr(sock: &UdpSocket) -> io::Result<()> {
    let v6 = sock.local_addr()?.is_ipv6();
    set_recverr(sock.as_raw_fd(), v6, false)?;
    let _ = drain_error_queue(sock);
    let _ = sock.take_error();
    Ok(())
}

fn set_recverr(fd: std::os::fd::RawFd, v6: bool, on: bool) -> io::Result<()> {
    let one: libc::c_int = on as libc::c_int;
    let (level, name) = if v6 { (libc::SOL_IPV6, libc::IPV6_RECVERR) } else { (libc::SOL_IP, libc::IP_RECVERR) };
    // SAFETY: a valid fd and a pointer to a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The source address the kernel would use toward `dest` (no packet is sent).
pub fn local_ip_towards(dest: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if dest.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(dest).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Reads every queued ICMP error: (original destination, what went wrong).
fn drain_error_queue(sock: &UdpSocket) -> Vec<(SocketAddr, Unreachable)> {
    let mut out = Vec::new();
    let fd = sock.as_raw_fd();
    for _ in 0..256 {
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut data = [0u8; 64];
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr() as *mut libc::c_void, iov_len: data.len() };
        let mut control = [0u8; 512];
        // SAFETY: msghdr is plain data; every pointer in it refers to a live local buffer.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = &mut name as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len() as _;
        // SAFETY: fd is a live socket and msg points at valid buffers.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            break;
        }
        let Some(dest) = sockaddr_to_std(&name) else { continue };
        let mut errno = None;
        // SAFETY: CMSG_* walk the control buffer the kernel filled, bounded by msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let h = &*c;
                let is_err = (h.cmsg_level == libc::SOL_IP && h.cmsg_type == libc::IP_RECVERR)
                    || (h.cmsg_level == libc::SOL_IPV6 && h.cmsg_type == libc::IPV6_RECVERR);
                if is_err {
                    let ee = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::sock_extended_err);
                    errno = Some(ee.ee_errno as i32);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if let Some(e) = errno {
            out.push((dest, Unreachable::from_errno(e)));
        }
    }
    out
}

/// Reads the ICMP errors queued on `sock` once tokio has seen its error readiness (EPOLLERR), and
/// clears that readiness, so the next wait blocks until a new error arrives. An error queued
/// without a datagram does not make a socket readable: without this, it would only be noticed at
/// the next send (a retransmission), one RTO late.
fn take_errors(sock: &UdpSocket) -> Vec<(SocketAddr, Unreachable)> {
    let mut found = Vec::new();
    let _ = sock.try_io(Interest::ERROR, || {
        found.extend(drain_error_queue(sock));
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
    found
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

fn is_icmp_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH))
}

/// Drives every transaction to its end over one socket and returns how each
/// ended, in the order given, and what arrived that matched none of them.
/// Responses are matched by transaction id. Runs on [`drive`], like every multi-socket core.
pub async fn run_transactions(
    sock: &UdpSocket,
    txs: Vec<(SocketAddr, ClientTransaction)>,
) -> (Vec<UdpEnd>, HashMap<SocketAddr, Strays>) {
    let mut set = TransactionSet::new(txs);
    drive(std::slice::from_ref(sock), &mut set).await;
    set.finish()
}

/// STUN client transactions sharing one socket, as a [`MultiSocketCore`] (socket 0): each
/// [`ClientTransaction`] keeps its own retransmissions; this matches answers by transaction id,
/// ends a destination's transactions on an ICMP error for it, and counts what matched nothing.
struct TransactionSet {
    live: Vec<(SocketAddr, ClientTransaction)>,
    ends: Vec<Option<UdpEnd>>,
    by_id: HashMap<[u8; 12], usize>,
    strays: HashMap<SocketAddr, Strays>,
    /// The transaction whose datagram was handed out last (the driver sends each one at once, so
    /// a failed send is that transaction's).
    last_polled: Option<usize>,
}

impl TransactionSet {
    fn new(live: Vec<(SocketAddr, ClientTransaction)>) -> Self {
        let ends = vec![None; live.len()];
        let by_id = live.iter().enumerate().map(|(i, (_, t))| (*t.id(), i)).collect();
        TransactionSet { live, ends, by_id, strays: HashMap::new(), last_polled: None }
    }

    /// How each transaction ended, in the order given, and the strays.
    fn finish(self) -> (Vec<UdpEnd>, HashMap<SocketAddr, Strays>) {
        let ends = self
            .ends
            .into_iter()
            .map(|e| e.unwrap_or(UdpEnd::SendFailed { error: "transaction ended without an outcome".into() }))
            .collect();
        (ends, self.strays)
    }

    /// The transactions still running, with their index.
    fn running(&mut self) -> impl Iterator<Item = (usize, &mut (SocketAddr, ClientTransaction))> {
        self.live.iter_mut().enumerate().filter(|(i, _)| self.ends[*i].is_none())
    }
}

impl MultiSocketCore for TransactionSet {
    fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let (i, t) = self.running().find_map(|(i, (dest, tx))| {
            tx.poll_transmit(now).map(|bytes| (i, Transmit { socket: 0, destination: *dest, payload: bytes.to_vec() }))
        })?;
        self.last_polled = Some(i);
        Some(t)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.live.iter().zip(&self.ends).filter(|(_, e)| e.is_none()).filter_map(|((_, t), _)| t.poll_timeout()).min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        for (i, (_, tx)) in self.running() {
            tx.handle_timeout(now);
            if let Some(Outcome::TimedOut { sends, elapsed }) = tx.outcome() {
                timed_out.push((i, UdpEnd::TimedOut { sends: *sends, elapsed: *elapsed }));
            }
        }
        for (i, end) in timed_out {
            self.ends[i] = Some(end);
        }
    }

    fn handle_input(&mut self, _socket: usize, from: SocketAddr, bytes: &[u8], now: Instant) {
        let Some(id) = crate::stun::message::transaction_id(bytes) else {
            tracing::debug!(%from, len = bytes.len(), "dropping a non-STUN datagram");
            self.strays.entry(from).or_default().garbage += 1;
            return;
        };
        let Some(&i) = self.by_id.get(&id) else {
            tracing::debug!(%from, "response with an unknown transaction id (late or spoofed)");
            self.strays.entry(from).or_default().wrong_id += 1;
            return;
        };
        if self.live[i].1.handle_response(bytes, now) {
            self.by_id.remove(&id);
            if let Some(outcome) = self.live[i].1.take_outcome() {
                self.ends[i] = Some(UdpEnd::Response { outcome, from });
            }
        }
    }

    fn handle_unreachable(&mut self, _socket: usize, destination: SocketAddr, kind: Unreachable, now: Instant) {
        let mut failed = Vec::new();
        for (i, (d, tx)) in self.running() {
            // Only transactions that have sent count: a later --count round is unaffected by an earlier ICMP.
            if *d == destination && tx.sends() > 0 {
                let elapsed = now.saturating_duration_since(tx.start_at());
                let sends = tx.sends();
                tx.abort(now);
                failed.push((i, UdpEnd::Unreachable { kind, sends, elapsed }));
            }
        }
        for (i, end) in failed {
            self.ends[i] = Some(end);
        }
    }

    fn handle_send_failed(&mut self, _socket: usize, destination: SocketAddr, error: &io::Error, now: Instant) {
        let Some(i) = self.last_polled.filter(|i| self.ends[*i].is_none() && self.live[*i].0 == destination) else {
            return;
        };
        self.live[i].1.abort(now);
        self.ends[i] = Some(UdpEnd::SendFailed { error: format!("sending to {destination}: {error}") });
    }

    fn is_done(&self) -> bool {
        self.poll_timeout().is_none()
    }
}

/// Drives `core` over `sockets` until it is done: sends what it asks, wakes it
/// at its timeouts, feeds it datagrams and ICMP errors per socket.
pub async fn drive<S: Borrow<UdpSocket>>(sockets: &[S], core: &mut impl MultiSocketCore) {
    drive_from(sockets, None::<&mut mpsc::UnboundedReceiver<Never>>, core).await
}

/// [`drive`] on sockets another reader owns (punch's mux reads the session's one socket): what
/// arrives comes from `inbox`, as socket 0's, and nothing is read from the sockets themselves.
/// Ends when the core is done or the inbox closes.
pub async fn drive_diverted<S: Borrow<UdpSocket>, D: Diverted>(
    sockets: &[S],
    inbox: &mut mpsc::UnboundedReceiver<D>,
    core: &mut impl MultiSocketCore,
) {
    drive_from(sockets, Some(inbox), core).await
}

/// No datagram: [`drive`] reads its sockets itself.
enum Never {}

impl Diverted for Never {
    fn source(&self) -> SocketAddr {
        match *self {}
    }
    fn payload(&self) -> &[u8] {
        match *self {}
    }
}

/// The one UDP driver loop: hand over what arrived, send what the core asks, run its timeout,
/// then wait for a datagram, an ICMP error or the core's next timeout.
async fn drive_from<S: Borrow<UdpSocket>, D: Diverted>(
    sockets: &[S],
    mut inbox: Option<&mut mpsc::UnboundedReceiver<D>>,
    core: &mut impl MultiSocketCore,
) {
    let mut buf = vec![0u8; 65536];
    // A shared socket's errors belong to its reader.
    let own_sockets = inbox.is_none();
    loop {
        let now = Instant::now();
        // Everything already received is handed over before any timeout runs: on a busy host the
        // timer and an answer can be due together, and the answer must win.
        match inbox.as_deref_mut() {
            Some(inbox) => loop {
                match inbox.try_recv() {
                    Ok(d) => core.handle_input(0, d.source(), d.payload(), now),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            },
            None => {
                for (i, sock) in sockets.iter().enumerate() {
                    receive_pending(i, sock.borrow(), &mut buf, core, now);
                }
            }
        }
        while let Some(Transmit { socket: i, destination: dest, payload: bytes }) = core.poll_transmit(now) {
            let Some(sock) = sockets.get(i).map(Borrow::borrow) else {
                core.handle_unreachable(i, dest, Unreachable::Other(libc::EBADF), now);
                continue;
            };
            if let Err(e) = sock.send_to(&bytes, dest).await {
                if own_sockets && is_icmp_error(&e) {
                    for (d, k) in drain_error_queue(sock) {
                        core.handle_unreachable(i, d, k, now);
                    }
                } else {
                    tracing::debug!(%dest, "send failed: {e}");
                    core.handle_send_failed(i, dest, &e, now);
                }
            }
        }
        core.handle_timeout(now);
        if core.is_done() {
            return;
        }
        let Some(wake) = core.poll_timeout() else {
            // Not done but nothing to wait for: a core bug; stop rather than spin.
            tracing::debug!("core neither done nor waiting; stopping");
            return;
        };
        let sleep = tokio::time::sleep_until(wake.into());
        match inbox.as_deref_mut() {
            Some(inbox) => tokio::select! {
                biased;
                d = inbox.recv() => match d {
                    Some(d) => core.handle_input(0, d.source(), d.payload(), Instant::now()),
                    None => return,
                },
                _ = sleep => {}
            },
            None => tokio::select! {
                biased;
                (i, r) = recv_any(sockets, &mut buf) => {
                    let now = Instant::now();
                    let sock = sockets[i].borrow();
                    match r {
                        Some(Ok((from, n))) => core.handle_input(i, from, &buf[..n], now),
                        Some(Err(e)) if is_icmp_error(&e) => {
                            for (d, k) in drain_error_queue(sock) {
                                core.handle_unreachable(i, d, k, now);
                            }
                        }
                        Some(Err(e)) => tracing::debug!("recv error on socket {i}: {e}"),
                        None => {
                            for (d, k) in take_errors(sock) {
                                core.handle_unreachable(i, d, k, now);
                            }
                        }
                    }
                }
                _ = sleep => {}
            },
        }
    }
}

/// Hands every datagram (and ICMP error) already queued on socket `i` to the core.
fn receive_pending(i: usize, sock: &UdpSocket, buf: &mut [u8], core: &mut impl MultiSocketCore, now: Instant) {
    loop {
        match sock.try_recv_from(buf) {
            Ok((n, from)) => core.handle_input(i, from, &buf[..n], now),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if is_icmp_error(&e) => {
                for (d, k) in drain_error_queue(sock) {
                    core.handle_unreachable(i, d, k, now);
                }
            }
            Err(e) => {
                tracing::debug!("recv error on socket {i}: {e}");
                break;
            }
        }
    }
}

/// Waits for the first socket with a datagram, in socket order, or with a queued ICMP error
/// (`None`): (which socket, what it received and how long it is).
async fn recv_any<S: Borrow<UdpSocket>>(
    sockets: &[S],
    buf: &mut [u8],
) -> (usize, Option<io::Result<(SocketAddr, usize)>>) {
    let mut errors: Vec<_> = sockets.iter().map(|s| Box::pin(s.borrow().ready(Interest::ERROR))).collect();
    futures::future::poll_fn(|cx| {
        for (i, s) in sockets.iter().enumerate() {
            let mut rb = tokio::io::ReadBuf::new(buf);
            if let std::task::Poll::Ready(r) = s.borrow().poll_recv_from(cx, &mut rb) {
                let n = rb.filled().len();
                return std::task::Poll::Ready((i, Some(r.map(|from| (from, n)))));
            }
        }
        for (i, e) in errors.iter_mut().enumerate() {
            if e.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready((i, None));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    //! The transaction set as a core, on a fake clock: what the driver would feed it.

    use super::*;
    use crate::stun::message::{binding_request, new_transaction_id};
    use crate::stun::transaction::{Reliability, Retransmit};

    fn set(dests: &[&str], t0: Instant) -> TransactionSet {
        let txs = dests
            .iter()
            .map(|d| {
                let id = new_transaction_id();
                let tx =
                    ClientTransaction::new(id, binding_request(id), Reliability::Unreliable(Retransmit::default()), t0);
                (d.parse().unwrap(), tx)
            })
            .collect();
        TransactionSet::new(txs)
    }

    #[test]
    fn answers_match_by_id_icmp_ends_only_its_destination_and_strays_are_counted() {
        let t0 = Instant::now();
        let mut s = set(&["198.51.100.1:3478", "198.51.100.2:3478", "198.51.100.2:3478"], t0);
        let sent: Vec<Transmit> = std::iter::from_fn(|| s.poll_transmit(t0)).collect();
        assert_eq!(sent.len(), 3);
        assert!(sent.iter().all(|t| t.socket == 0));
        let server1: SocketAddr = "198.51.100.1:3478".parse().unwrap();
        s.handle_input(0, server1, b"not stun at all", t0);
        s.handle_input(0, server1, &binding_request(new_transaction_id()), t0);
        // An answer (any message with the id will do for the core) from another address still counts.
        let answer = sent[0].payload.clone();
        s.handle_input(0, "198.51.100.9:3479".parse().unwrap(), &answer, t0 + Duration::from_millis(20));
        s.handle_unreachable(0, "198.51.100.2:3478".parse().unwrap(), Unreachable::Port, t0);
        assert!(s.is_done());
        let (ends, strays) = s.finish();
        assert!(matches!(ends[0], UdpEnd::Response { from, .. } if from.port() == 3479));
        assert!(matches!(ends[1], UdpEnd::Unreachable { kind: Unreachable::Port, sends: 1, .. }));
        assert!(matches!(ends[2], UdpEnd::Unreachable { kind: Unreachable::Port, sends: 1, .. }));
        assert_eq!(strays[&server1], Strays { garbage: 1, wrong_id: 1 });
    }

    #[test]
    fn a_failed_send_ends_the_transaction_that_sent_and_silence_times_out() {
        let t0 = Instant::now();
        let mut s = set(&["198.51.100.1:3478", "198.51.100.1:3478"], t0);
        let first = s.poll_transmit(t0).expect("a first request");
        let refused = io::Error::from_raw_os_error(libc::EPERM);
        s.handle_send_failed(0, first.destination, &refused, t0);
        assert!(s.poll_transmit(t0).is_some(), "the other transaction still sends");
        let mut wakes = 0;
        while let Some(now) = s.poll_timeout() {
            while s.poll_transmit(now).is_some() {}
            s.handle_timeout(now);
            wakes += 1;
            assert!(wakes < 20, "the set keeps waking");
        }
        let (ends, _) = s.finish();
        assert!(
            matches!(&ends[0], UdpEnd::SendFailed { error } if error.contains("198.51.100.1:3478")),
            "{:?}",
            ends[0]
        );
        assert!(matches!(ends[1], UdpEnd::TimedOut { sends: 7, .. }), "{:?}", ends[1]);
    }
}
