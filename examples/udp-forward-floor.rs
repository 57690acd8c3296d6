//! The floor under `scripts/bench-relay`: the least a UDP relay must do per
//! relayed message on this kernel, with no TURN logic, so the bench can say
//! how much of natkit's (and coturn's) CPU per message is the kernel's and
//! how much is theirs.
//!
//! `serve` is a forwarder shaped like natkit relay's UDP worker (one thread,
//! one epoll set, recvmmsg batches of 32 until a socket is drained, one
//! sendmmsg per socket at the end of a round; natkit's own `mmsg` wrappers):
//! a client's first datagram at the listener opens a "relayed" socket for it
//! (what an Allocate does), and from then on each datagram of that client
//! loses its 4-byte ChannelData-sized header and leaves from that socket to
//! the peer, and each datagram from the peer gets the header back and leaves
//! from the listener to the client. Per message: one hash lookup, the
//! system calls, nothing else.
//!
//! `load` is a load client shaped like `turnutils_uclient -m M -n N -l L -z Z`
//! (one thread, a 1 ms timer, each client starts 1 to 6 s in at random and then
//! sends one message every Z ms, all clients in one burst as uclient's do) so the floor sees the same traffic pattern
//! as the relays it is compared with; it prints `sent=S received=R`.
//!
//! `serve --io-uring` is the same forwarder on io_uring instead (Linux 6.0+):
//! one multishot recvmsg per socket drawing from one shared ring of provided
//! buffers, one send per datagram straight from the buffer it arrived in, and
//! one `io_uring_enter` per round that submits the round's sends across all
//! sockets and waits for the next datagrams (no epoll, no per-socket calls).
//!
//!   udp-forward-floor serve [--io-uring] LISTEN PEER
//!   udp-forward-floor load SERVER CLIENTS MESSAGES LENGTH INTERVAL_MS
//!
//! Loopback or lab addresses only; not part of CI.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use natkit::net::mmsg::{RecvBatch, send_many};

/// Same header size as ChannelData (RFC 8656 §12.4), so the byte counts on
/// both sides of the forwarder match the relays'.
const HEADER: usize = 4;
const LISTENER: mio::Token = mio::Token(usize::MAX);
const MAX_DATAGRAM: usize = 65_535;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize| -> SocketAddr {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| usage("an address IP:PORT"))
    };
    let num = |i: usize| -> u64 { args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| usage("a number")) };
    match args.first().map(String::as_str) {
        Some("serve") if args.get(1).map(String::as_str) == Some("--io-uring") => {
            if let Err(e) = uring::serve(parse(2), parse(3)) {
                eprintln!("udp-forward-floor (io_uring): {e}");
                std::process::exit(1);
            }
        }
        Some("serve") => {
            if let Err(e) = serve(parse(1), parse(2)) {
                eprintln!("udp-forward-floor: {e}");
                std::process::exit(1);
            }
        }
        Some("load") => match load(parse(1), num(2) as usize, num(3), num(4) as usize, num(5)) {
            Ok((sent, received)) => println!("sent={sent} received={received}"),
            Err(e) => {
                eprintln!("udp-forward-floor: {e}");
                std::process::exit(1);
            }
        },
        _ => usage("serve or load"),
    }
}

fn usage(what: &str) -> ! {
    eprintln!(
        "udp-forward-floor: expected {what}\n  udp-forward-floor serve [--io-uring] LISTEN PEER\n  \
         udp-forward-floor load SERVER CLIENTS MESSAGES LENGTH INTERVAL_MS"
    );
    std::process::exit(2);
}

/// One client's "allocation": its relayed socket and its address.
struct Relayed {
    sock: UdpSocket,
    client: SocketAddr,
}

fn serve(listen: SocketAddr, peer: SocketAddr) -> std::io::Result<()> {
    let listener = bind(listen)?;
    let mut poll = mio::Poll::new()?;
    let lfd = listener.as_raw_fd();
    poll.registry().register(&mut mio::unix::SourceFd(&lfd), LISTENER, mio::Interest::READABLE)?;
    eprintln!("udp-forward-floor: forwarding {listen} <-> {peer}");
    let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
    let mut relayed: Vec<Relayed> = Vec::new();
    let mut from_clients = RecvBatch::new(MAX_DATAGRAM, 0, 0);
    let mut from_peer = RecvBatch::new(MAX_DATAGRAM, HEADER, 0);
    // A round's output: (socket: None = listener, Some(i) = relayed i; destination; bytes).
    let mut pending: Vec<(Option<usize>, SocketAddr, usize, usize)> = Vec::new();
    let mut out = vec![0u8; 4 * 32 * 2048];
    let mut used = 0;
    let mut events = mio::Events::with_capacity(256);
    loop {
        match poll.poll(&mut events, None) {
            // A tracer attaching (strace -p) interrupts the wait: not an error.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r?,
        }
        for ev in events.iter() {
            let source = if ev.token() == LISTENER { None } else { Some(ev.token().0) };
            loop {
                let (fd, batch) = match source {
                    None => (lfd, &mut from_clients),
                    Some(i) => (relayed[i].sock.as_raw_fd(), &mut from_peer),
                };
                let n = match batch.recv(fd) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => continue,
                };
                for k in 0..n {
                    let Some((from, slot, len)) = batch.slot_mut(k) else { continue };
                    // Room for the datagram: flush first when the buffer is full.
                    if used + len + HEADER > out.len() {
                        flush(&listener, &relayed, &mut pending, &out);
                        used = 0;
                    }
                    match source {
                        None => {
                            if len < HEADER {
                                continue;
                            }
                            let i = match by_client.get(&from) {
                                Some(&i) => i,
                                None => {
                                    let sock = bind(SocketAddr::new(listen.ip(), 0))?;
                                    let i = relayed.len();
                                    let fd = sock.as_raw_fd();
                                    poll.registry().register(
                                        &mut mio::unix::SourceFd(&fd),
                                        mio::Token(i),
                                        mio::Interest::READABLE,
                                    )?;
                                    relayed.push(Relayed { sock, client: from });
                                    by_client.insert(from, i);
                                    i
                                }
                            };
                            let body = &slot[HEADER..len];
                            out[used..used + body.len()].copy_from_slice(body);
                            pending.push((Some(i), peer, used, body.len()));
                            used += body.len();
                        }
                        Some(i) => {
                            slot[..HEADER].copy_from_slice(&[0x40, 0, (len >> 8) as u8, len as u8]);
                            out[used..used + HEADER + len].copy_from_slice(&slot[..HEADER + len]);
                            pending.push((None, relayed[i].client, used, HEADER + len));
                            used += HEADER + len;
                        }
                    }
                }
                if n < 32 {
                    break;
                }
            }
        }
        flush(&listener, &relayed, &mut pending, &out);
        used = 0;
    }
}

/// A non-blocking socket with natkit relay's 4 MiB kernel buffers.
fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// One sendmmsg per socket for the round (order kept per socket).
fn flush(
    listener: &UdpSocket,
    relayed: &[Relayed],
    pending: &mut Vec<(Option<usize>, SocketAddr, usize, usize)>,
    out: &[u8],
) {
    pending.sort_by_key(|p| p.0);
    let mut i = 0;
    while i < pending.len() {
        let sock = pending[i].0;
        let mut j = i + 1;
        while j < pending.len() && pending[j].0 == sock {
            j += 1;
        }
        let fd = match sock {
            None => listener.as_raw_fd(),
            Some(k) => relayed[k].sock.as_raw_fd(),
        };
        send_many(fd, pending[i..j].iter().map(|&(_, to, st, l)| (to, &out[st..st + l])));
        i = j;
    }
    pending.clear();
}

fn load(
    server: SocketAddr,
    clients: usize,
    messages: u64,
    length: usize,
    interval_ms: u64,
) -> std::io::Result<(u64, u64)> {
    let mut poll = mio::Poll::new()?;
    let mut socks = Vec::new();
    for i in 0..clients {
        let s = UdpSocket::bind(SocketAddr::new(server.ip(), 0))?;
        s.connect(server)?;
        s.set_nonblocking(true)?;
        let fd = s.as_raw_fd();
        poll.registry().register(&mut mio::unix::SourceFd(&fd), mio::Token(i), mio::Interest::READABLE)?;
        socks.push(s);
    }
    let mut msg = vec![7u8; HEADER + length];
    msg[..HEADER].copy_from_slice(&[0x40, 0, (length >> 8) as u8, length as u8]);
    let interval = Duration::from_millis(interval_ms.max(1));
    let start = Instant::now();
    // Each client starts 1 to 6 s in, at random, as uclient's clients do
    // (`to_send_timems = now + 1000 + random() % 5000`), so the rate ramps up
    // and down the same way; and on the same grid of Z ms, because uclient's
    // clients, seen with strace, all send in one burst every Z ms.
    let mut next: Vec<Instant> = (0..clients)
        .map(|_| {
            let ms = 1000 + rand::random::<u64>() % 5000;
            start + Duration::from_millis(ms - ms % interval_ms.max(1))
        })
        .collect();
    let mut written = vec![0u64; clients];
    let (mut sent, mut received, mut tried) = (0u64, 0u64, 0u64);
    let total = messages * clients as u64;
    let mut tick = start;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut events = mio::Events::with_capacity(256);
    let mut last_send = start;
    loop {
        let now = Instant::now();
        if now >= tick {
            tick += Duration::from_millis(1);
            for i in 0..clients {
                if written[i] < messages && now >= next[i] {
                    if socks[i].send(&msg).is_ok() {
                        sent += 1;
                    }
                    written[i] += 1;
                    tried += 1;
                    next[i] += interval;
                    last_send = now;
                }
            }
        }
        // Done when every echo is back, or 2 s after the last send (stragglers are lost).
        if received >= total || (tried >= total && now > last_send + Duration::from_secs(2)) {
            return Ok((sent, received));
        }
        poll.poll(&mut events, Some(tick.saturating_duration_since(Instant::now())))?;
        for ev in events.iter() {
            let s = &socks[ev.token().0];
            while let Ok(n) = s.recv(&mut buf) {
                if n == HEADER + length {
                    received += 1;
                }
            }
        }
    }
}

/// The io_uring forwarder (`serve --io-uring`): the same forwarding as
/// [`serve`], with the kernel doing the receiving into provided buffers.
mod uring {
    use std::collections::HashMap;
    use std::io;
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU16, Ordering};

    use io_uring::{IoUring, cqueue, opcode, types};

    use super::{HEADER, bind};

    /// Provided buffers (one shared group for every socket) and their size: a
    /// datagram larger than a buffer is cut by the kernel and dropped here.
    const BUFFERS: u16 = 4096;
    const BUF_LEN: usize = 2048;
    const GROUP: u16 = 0;
    /// user_data: the top bit marks a send (low bits: the buffer id it sends
    /// from); otherwise a multishot receive (low bits: the socket index).
    const SEND: u64 = 1 << 63;

    /// The ring of provided buffers (`IORING_REGISTER_PBUF_RING`): the kernel
    /// takes a buffer per datagram; it comes back here when its send completed.
    struct BufRing {
        ring: *mut types::BufRingEntry,
        ring_len: usize,
        bufs: Box<[u8]>,
        tail: u16,
    }

    impl BufRing {
        fn new(uring: &IoUring) -> io::Result<Self> {
            let ring_len = BUFFERS as usize * std::mem::size_of::<types::BufRingEntry>();
            // SAFETY: an anonymous private mapping, page-aligned as the kernel requires.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    ring_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let mut br =
                BufRing { ring: ptr.cast(), ring_len, bufs: vec![0u8; BUFFERS as usize * BUF_LEN].into(), tail: 0 };
            // SAFETY: the mapping lives as long as the BufRing, which outlives every request using it.
            unsafe { uring.submitter().register_buf_ring_with_flags(ptr as u64, BUFFERS, GROUP, 0)? };
            for bid in 0..BUFFERS {
                br.push(bid);
            }
            br.publish();
            Ok(br)
        }

        /// Hands buffer `bid` back to the kernel (visible at the next [`publish`](Self::publish)).
        fn push(&mut self, bid: u16) {
            let addr = self.bufs[bid as usize * BUF_LEN..].as_mut_ptr() as u64;
            // SAFETY: the index is masked into the ring's BUFFERS entries.
            let e = unsafe { &mut *self.ring.add((self.tail & (BUFFERS - 1)) as usize) };
            e.set_addr(addr);
            e.set_len(BUF_LEN as u32);
            e.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
        }

        fn publish(&self) {
            // SAFETY: the tail shares the first entry's reserved field; the kernel reads it with acquire.
            unsafe { AtomicU16::from_ptr(types::BufRingEntry::tail(self.ring).cast_mut()) }
                .store(self.tail, Ordering::Release);
        }

        fn buf(&mut self, bid: u16) -> &mut [u8] {
            &mut self.bufs[bid as usize * BUF_LEN..(bid as usize + 1) * BUF_LEN]
        }
    }

    impl Drop for BufRing {
        fn drop(&mut self) {
            // SAFETY: the mapping made in new(), unmapped once.
            unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
        }
    }

    /// One client's relayed socket and its address (boxed: a send in flight points at it).
    struct Relayed {
        sock: UdpSocket,
        client: socket2::SockAddr,
    }

    pub fn serve(listen: SocketAddr, peer: SocketAddr) -> io::Result<()> {
        let listener = bind(listen)?;
        // Single issuer + deferred task work: receives run only inside our own
        // io_uring_enter, so a round is one system call and nothing interrupts it.
        let mut uring: IoUring =
            IoUring::builder().setup_single_issuer().setup_defer_taskrun().setup_cqsize(16_384).build(4096)?;
        let mut bufs = BufRing::new(&uring)?;
        // The multishot recvmsg template: room for an IPv6 source address, no control data.
        // SAFETY: plain C struct, zero is valid.
        let mut tmpl: libc::msghdr = unsafe { std::mem::zeroed() };
        tmpl.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let tmpl = Box::new(tmpl);
        let peer_addr = Box::new(socket2::SockAddr::from(peer));
        eprintln!("udp-forward-floor: forwarding {listen} <-> {peer} (io_uring)");
        let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
        let mut relayed: Vec<Box<Relayed>> = Vec::new();
        let lfd = listener.as_raw_fd();
        let recv = |fd: i32, idx: u64| opcode::RecvMsgMulti::new(types::Fd(fd), &*tmpl, GROUP).build().user_data(idx);
        // Socket index 0 is the listener, i + 1 is relayed i.
        let mut rearm: Vec<u64> = vec![0];
        let (submitter, mut sq, mut cq) = uring.split();
        loop {
            // Arm (or re-arm) the multishot receives that ended.
            for &idx in &rearm {
                let fd = if idx == 0 { lfd } else { relayed[idx as usize - 1].sock.as_raw_fd() };
                push(&submitter, &mut sq, &recv(fd, idx))?;
            }
            rearm.clear();
            sq.sync();
            match submitter.submit_and_wait(1) {
                Ok(_) => {}
                // EINTR: a tracer attached; EBUSY: completions to reap first.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            cq.sync();
            let mut returned = false;
            for cqe in &mut cq {
                let ud = cqe.user_data();
                if ud & SEND != 0 {
                    bufs.push((ud & !SEND) as u16);
                    returned = true;
                    continue;
                }
                if !cqueue::more(cqe.flags()) {
                    rearm.push(ud);
                }
                let Some(bid) = cqueue::buffer_select(cqe.flags()) else { continue };
                let n = cqe.result().max(0) as usize;
                let buf = bufs.buf(bid);
                let base = buf.as_mut_ptr();
                let Ok(msg) = types::RecvMsgOut::parse(&buf[..n], &tmpl) else {
                    bufs.push(bid);
                    returned = true;
                    continue;
                };
                let from = sockaddr(msg.name_data());
                let (off, len) = (msg.payload_data().as_ptr() as usize - base as usize, msg.payload_data().len());
                let truncated = msg.is_payload_truncated() || msg.is_name_data_truncated();
                let (Some(from), false) = (from, truncated) else {
                    bufs.push(bid);
                    returned = true;
                    continue;
                };
                let send = if ud == 0 {
                    if len < HEADER {
                        bufs.push(bid);
                        returned = true;
                        continue;
                    }
                    let i = match by_client.get(&from) {
                        Some(&i) => i,
                        None => {
                            let sock = bind(SocketAddr::new(listen.ip(), 0))?;
                            relayed.push(Box::new(Relayed { sock, client: socket2::SockAddr::from(from) }));
                            by_client.insert(from, relayed.len() - 1);
                            rearm.push(relayed.len() as u64);
                            relayed.len() - 1
                        }
                    };
                    // SAFETY: off + HEADER..off + len lies inside the buffer.
                    let data = unsafe { base.add(off + HEADER) };
                    opcode::Send::new(types::Fd(relayed[i].sock.as_raw_fd()), data, (len - HEADER) as u32)
                        .dest_addr(peer_addr.as_ptr().cast())
                        .dest_addr_len(peer_addr.len())
                } else {
                    // The header goes into the 4 bytes before the payload (the end of the
                    // source-address area, already read): no copy.
                    let r = &relayed[ud as usize - 1];
                    buf[off - HEADER..off].copy_from_slice(&[0x40, 0, (len >> 8) as u8, len as u8]);
                    // SAFETY: off - HEADER..off + len lies inside the buffer.
                    let data = unsafe { base.add(off - HEADER) };
                    opcode::Send::new(types::Fd(lfd), data, (len + HEADER) as u32)
                        .dest_addr(r.client.as_ptr().cast())
                        .dest_addr_len(r.client.len())
                };
                push(&submitter, &mut sq, &send.build().user_data(SEND | bid as u64))?;
            }
            if returned {
                bufs.publish();
            }
        }
    }

    /// Queues one entry, submitting what is queued first when the queue is full.
    fn push(
        submitter: &io_uring::Submitter<'_>,
        sq: &mut io_uring::SubmissionQueue<'_>,
        e: &io_uring::squeue::Entry,
    ) -> io::Result<()> {
        // SAFETY: every buffer and address an entry points at outlives its completion
        // (buffers return to the ring only at the send's completion; addresses are boxed).
        while unsafe { sq.push(e) }.is_err() {
            sq.sync();
            submitter.submit()?;
            sq.sync();
        }
        Ok(())
    }

    /// The source address as recvmsg wrote it (sockaddr_in or sockaddr_in6).
    fn sockaddr(name: &[u8]) -> Option<SocketAddr> {
        let family = i32::from(u16::from_ne_bytes(name.get(..2)?.try_into().ok()?));
        let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
        match family {
            libc::AF_INET => {
                let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
                Some(SocketAddr::new(ip.into(), port))
            }
            libc::AF_INET6 => {
                let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
                Some(SocketAddr::new(ip.into(), port))
            }
            _ => None,
        }
    }
}
