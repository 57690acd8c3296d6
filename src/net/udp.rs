//! UDP drivers: STUN client transactions over one socket ([`run_transactions`]), and any
//! multi-socket sans-IO core over several ([`drive`], the contract in [`crate::net::datagram`]).
//!
//! Many transactions share one socket, so every server sees the same local
//! port: that is what makes "the mapped address varies by destination"
//! meaningful. ICMP errors on an unconnected socket are read from the
//! kernel's error queue (IP_RECVERR), which names the destination that
//! failed, so a dead server ends its own transactions at once and no others.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::UdpSocket;

pub use crate::net::datagram::{MultiSocketCore, Transmit, Unreachable};
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
/// Responses are matched by transaction id.
pub async fn run_transactions(
    sock: &UdpSocket,
    txs: Vec<(SocketAddr, ClientTransaction)>,
) -> (Vec<UdpEnd>, HashMap<SocketAddr, Strays>) {
    let mut strays: HashMap<SocketAddr, Strays> = HashMap::new();
    let mut live: Vec<(SocketAddr, ClientTransaction)> = txs;
    let mut ends: Vec<Option<UdpEnd>> = vec![None; live.len()];
    let mut by_id: HashMap<[u8; 12], usize> = live.iter().enumerate().map(|(i, (_, t))| (*t.id(), i)).collect();
    let mut buf = vec![0u8; 65536];

    let fail_dest = |live: &mut Vec<(SocketAddr, ClientTransaction)>,
                     ends: &mut Vec<Option<UdpEnd>>,
                     dest: SocketAddr,
                     kind: Unreachable,
                     now: Instant| {
        for (i, (d, tx)) in live.iter_mut().enumerate() {
            // Only transactions that have sent count: a later --count round is unaffected by an earlier ICMP.
            if *d == dest && ends[i].is_none() && tx.sends() > 0 {
                let elapsed = now.saturating_duration_since(tx.start_at());
                let sends = tx.sends();
                tx.abort(now);
                ends[i] = Some(UdpEnd::Unreachable { kind, sends, elapsed });
            }
        }
    };

    loop {
        let now = Instant::now();
        for i in 0..live.len() {
            if ends[i].is_some() {
                continue;
            }
            let dest = live[i].0;
            while let Some(bytes) = live[i].1.poll_transmit(now) {
                if let Err(e) = sock.send_to(bytes, dest).await {
                    if is_icmp_error(&e) {
                        // A pending error from an earlier packet surfaced on send; attribute it properly.
                        for (d, k) in drain_error_queue(sock) {
                            fail_dest(&mut live, &mut ends, d, k, now);
                        }
                    } else {
                        live[i].1.abort(now);
                        ends[i] = Some(UdpEnd::SendFailed { error: format!("sending to {dest}: {e}") });
                    }
                    break;
                }
            }
        }
        for (i, (_, tx)) in live.iter_mut().enumerate() {
            if ends[i].is_none() {
                tx.handle_timeout(now);
                if let Some(Outcome::TimedOut { sends, elapsed }) = tx.outcome() {
                    ends[i] = Some(UdpEnd::TimedOut { sends: *sends, elapsed: *elapsed });
                }
            }
        }
        let Some(wake) =
            live.iter().zip(&ends).filter(|(_, e)| e.is_none()).filter_map(|((_, t), _)| t.poll_timeout()).min()
        else {
            break;
        };
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let now = Instant::now();
                match r {
                    Ok((n, from)) => {
                        let Some(id) = crate::stun::message::transaction_id(&buf[..n]) else {
                            tracing::debug!(%from, len = n, "dropping a non-STUN datagram");
                            strays.entry(from).or_default().garbage += 1;
                            continue;
                        };
                        if let Some(&i) = by_id.get(&id) {
                            if live[i].1.handle_response(&buf[..n], now) {
                                by_id.remove(&id);
                                if let Some(outcome) = live[i].1.take_outcome() {
                                    ends[i] = Some(UdpEnd::Response { outcome, from });
                                }
                            }
                        } else {
                            tracing::debug!(%from, "response with an unknown transaction id (late or spoofed)");
                            strays.entry(from).or_default().wrong_id += 1;
                        }
                    }
                    Err(e) if is_icmp_error(&e) => {
                        for (d, k) in drain_error_queue(sock) {
                            fail_dest(&mut live, &mut ends, d, k, now);
                        }
                    }
                    Err(e) => tracing::debug!("recv error: {e}"),
                }
            }
            _ = sock.ready(Interest::ERROR) => {
                let now = Instant::now();
                for (d, k) in take_errors(sock) {
                    fail_dest(&mut live, &mut ends, d, k, now);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    let ends = ends
        .into_iter()
        .map(|e| e.unwrap_or(UdpEnd::SendFailed { error: "transaction ended without an outcome".into() }))
        .collect();
    (ends, strays)
}

/// Drives `core` over `sockets` until it is done: sends what it asks, wakes it
/// at its timeouts, feeds it datagrams and ICMP errors per socket.
pub async fn drive(sockets: &[UdpSocket], core: &mut impl MultiSocketCore) {
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        // Everything already received is handed over before any timeout runs: on a busy host the
        // timer and an answer can be due together, and the answer must win.
        for (i, sock) in sockets.iter().enumerate() {
            loop {
                match sock.try_recv_from(&mut buf) {
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
        while let Some(Transmit { socket: i, destination: dest, payload: bytes }) = core.poll_transmit(now) {
            let Some(sock) = sockets.get(i) else {
                core.handle_unreachable(i, dest, Unreachable::Other(libc::EBADF), now);
                continue;
            };
            if let Err(e) = sock.send_to(&bytes, dest).await {
                if is_icmp_error(&e) {
                    for (d, k) in drain_error_queue(sock) {
                        core.handle_unreachable(i, d, k, now);
                    }
                } else {
                    tracing::debug!(%dest, "send failed: {e}");
                    core.handle_unreachable(i, dest, Unreachable::Other(e.raw_os_error().unwrap_or(libc::EIO)), now);
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
        // Waits for the first socket with a datagram, in socket order, or with a queued ICMP error.
        let mut errors: Vec<_> = sockets.iter().map(|s| Box::pin(s.ready(Interest::ERROR))).collect();
        let recv = futures::future::poll_fn(|cx| {
            for (i, s) in sockets.iter().enumerate() {
                let mut rb = tokio::io::ReadBuf::new(&mut buf);
                if let std::task::Poll::Ready(r) = s.poll_recv_from(cx, &mut rb) {
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
        });
        tokio::select! {
            biased;
            (i, r) = recv => {
                let now = Instant::now();
                match r {
                    Some(Ok((from, n))) => core.handle_input(i, from, &buf[..n], now),
                    Some(Err(e)) if is_icmp_error(&e) => {
                        for (d, k) in drain_error_queue(&sockets[i]) {
                            core.handle_unreachable(i, d, k, now);
                        }
                    }
                    Some(Err(e)) => tracing::debug!("recv error on socket {i}: {e}"),
                    None => {
                        for (d, k) in take_errors(&sockets[i]) {
                            core.handle_unreachable(i, d, k, now);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}
