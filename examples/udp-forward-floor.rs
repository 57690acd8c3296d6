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
//!   udp-forward-floor serve LISTEN PEER
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
        "udp-forward-floor: expected {what}\n  udp-forward-floor serve LISTEN PEER\n  \
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
        poll.poll(&mut events, None)?;
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
