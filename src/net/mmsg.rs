//! Batched UDP receive and send (recvmmsg(2) / sendmmsg(2)): one system call
//! for many datagrams, which is where a relay's CPU goes. Buffers are
//! allocated once per thread and reused; nothing here allocates per packet.
//!
//! UDP segmentation offload (Linux udp(7): `UDP_SEGMENT` since 4.18,
//! `UDP_GRO` since 5.0): with [`enable_gro`] one read may hold several
//! datagrams of one sender, all [`RecvBatch::segment_size`] bytes but the
//! last, which [`segments`] splits again; [`send_segmented`] hands runs of
//! equal-size datagrams to one destination to the kernel as one message with
//! a `UDP_SEGMENT` cmsg, so the stack is walked once per run instead of once
//! per datagram. The receiver sees the same datagrams either way.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::RawFd;

/// Datagrams per recvmmsg call.
pub const BATCH: usize = 32;

/// Most datagrams in one GSO send: the kernel's `UDP_MAX_SEGMENTS` (64 from
/// 4.18; 6.x kernels raised it to 128, 64 works on both).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most bytes in one GSO send: the largest UDP payload over IPv4
/// (65,535 - 20 - 8); the kernel refuses a longer one with EMSGSIZE.
pub const GSO_MAX_BYTES: usize = 65_507;

/// Control buffer per message, in u64 words (aligned for a cmsghdr): room for
/// one `UDP_GRO` or `UDP_SEGMENT` cmsg (CMSG_SPACE(4) = 24 bytes on 64-bit).
const CTRL_WORDS: usize = 8;

/// Asks the kernel to coalesce a sender's consecutive equal-size datagrams
/// into one read (`UDP_GRO`). Best effort: a kernel without it (before 5.0)
/// says no and every read stays one datagram.
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid int option value of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The datagrams inside one read of `len` bytes whose `UDP_GRO` segment size
/// is `segment` (None: the read is one datagram): `segment` bytes each, the
/// last one shorter when `len` is not a multiple.
pub fn segments(len: usize, segment: Option<usize>) -> impl Iterator<Item = Range<usize>> {
    let step = match segment {
        Some(s) if s > 0 && s < len => s,
        _ => len.max(1),
    };
    (0..len).step_by(step).map(move |start| start..(start + step).min(len))
}

/// `BATCH` receive slots, each with `headroom` free bytes before the datagram
/// and `tailroom` after it (room for a ChannelData header and padding).
pub struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    headroom: usize,
    max: usize,
    lens: [usize; BATCH],
    addrs: [Option<SocketAddr>; BATCH],
    /// `UDP_GRO` segment size of each message of the last batch (0: one datagram).
    segs: [usize; BATCH],
    ctrl: [[u64; CTRL_WORDS]; BATCH],
}

impl RecvBatch {
    pub fn new(max_datagram: usize, headroom: usize, tailroom: usize) -> Self {
        let slot = headroom + max_datagram + tailroom;
        RecvBatch {
            buf: vec![0u8; slot * BATCH],
            slot,
            headroom,
            max: max_datagram,
            lens: [0; BATCH],
            addrs: [None; BATCH],
            segs: [0; BATCH],
            ctrl: [[0; CTRL_WORDS]; BATCH],
        }
    }

    /// Receives up to [`BATCH`] datagrams without blocking; returns how many.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: plain-data C structs, zero is a valid value for each.
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            let start = i * self.slot + self.headroom;
            iovs[i].iov_base = self.buf[start..start + self.max].as_mut_ptr() as *mut libc::c_void;
            iovs[i].iov_len = self.max;
            hdrs[i].msg_hdr.msg_name = &mut names[i] as *mut _ as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_controllen = std::mem::size_of::<[u64; CTRL_WORDS]>() as _;
        }
        // SAFETY: every pointer in hdrs refers to live buffers of the stated sizes.
        let n = unsafe {
            libc::recvmmsg(fd, hdrs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            // A datagram longer than the slot was cut (MSG_TRUNC): drop it rather than relay half.
            let truncated = hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = if truncated { 0 } else { hdrs[i].msg_len as usize };
            self.addrs[i] = from_sockaddr(&names[i]);
            self.segs[i] = gro_segment(&hdrs[i].msg_hdr).unwrap_or(0);
        }
        Ok(n)
    }

    /// Message `i` of the last batch holds several datagrams of this size
    /// each (the last may be shorter): see [`segments`]. None: one datagram.
    pub fn segment_size(&self, i: usize) -> Option<usize> {
        let s = self.segs[i];
        (s > 0 && s < self.lens[i]).then_some(s)
    }

    /// Datagram `i` of the last batch: its source and its slot (headroom,
    /// payload at `headroom..headroom+len`, tailroom), or None if unusable.
    pub fn slot_mut(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8], usize)> {
        let from = self.addrs[i]?;
        let len = self.lens[i];
        if len == 0 {
            return None;
        }
        let start = i * self.slot;
        Some((from, &mut self.buf[start..start + self.slot], len))
    }

    pub fn headroom(&self) -> usize {
        self.headroom
    }
}

/// What one [`send_many`] did: datagrams the kernel refused, and sendmmsg
/// calls made (for the driver's counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub failed: usize,
    pub calls: usize,
}

/// Sends `msgs` (destination, bytes) on one socket with as few sendmmsg
/// calls as the kernel allows, without blocking.
pub fn send_many<'a>(fd: RawFd, msgs: impl IntoIterator<Item = (SocketAddr, &'a [u8])>) -> Sent {
    let mut failed = 0;
    let mut calls = 0;
    let mut msgs = msgs.into_iter().peekable();
    while msgs.peek().is_some() {
        let chunk = msgs.by_ref().take(BATCH);
        // SAFETY: plain-data C structs, zero is a valid value for each.
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut n = 0;
        for (i, (dest, bytes)) in chunk.enumerate() {
            n = i + 1;
            let namelen = to_sockaddr(dest, &mut names[i]);
            // The kernel only reads through iov_base on send.
            iovs[i].iov_base = bytes.as_ptr() as *mut libc::c_void;
            iovs[i].iov_len = bytes.len();
            hdrs[i].msg_hdr.msg_name = &mut names[i] as *mut _ as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = namelen;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0usize;
        while sent < n {
            // SAFETY: hdrs[sent..n] point at live buffers prepared above.
            let r = unsafe {
                libc::sendmmsg(fd, hdrs[sent..n].as_mut_ptr(), (n - sent) as libc::c_uint, libc::MSG_DONTWAIT)
            };
            calls += 1;
            if r <= 0 {
                // Skip the datagram the kernel refused (full queue, pending ICMP error) and go on.
                failed += 1;
                sent += 1;
            } else {
                sent += r as usize;
            }
        }
    }
    Sent { failed, calls }
}

/// The `UDP_GRO` cmsg of a received message: the size of its segments.
fn gro_segment(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: hdr's control buffer is live and msg_controllen is what the kernel wrote.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                return usize::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// How many of `items` (destination, length) from the first on go out as one
/// GSO send: consecutive datagrams to the same destination, each as long as
/// the first except a shorter last one (the kernel cuts the buffer every
/// first-length bytes), at most `max_segments` of them and [`GSO_MAX_BYTES`]
/// in all. Always at least 1 for a non-empty slice.
pub fn gso_run_len(items: impl IntoIterator<Item = (SocketAddr, usize)>, max_segments: usize) -> usize {
    let mut items = items.into_iter();
    let Some((dest, size)) = items.next() else { return 0 };
    let mut n = 1;
    let mut bytes = size;
    if size == 0 {
        return 1;
    }
    for (d, len) in items {
        if n >= max_segments || d != dest || len > size || len == 0 || bytes + len > GSO_MAX_BYTES {
            break;
        }
        n += 1;
        bytes += len;
        if len < size {
            break;
        }
    }
    n
}

/// What one [`send_segmented`] did, in datagrams and system calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SentSegmented {
    /// Datagrams the kernel refused (full queue, pending ICMP error).
    pub failed: usize,
    /// sendmmsg calls made.
    pub calls: usize,
    /// Messages that carried more than one datagram (GSO sends).
    pub gso_messages: usize,
    /// GSO sends the kernel refused and that went out again one datagram at a time.
    pub gso_refused: usize,
    /// The kernel refused GSO with EIO: the device cannot offload the
    /// checksum, and GSO on this path will never work.
    pub gso_unsupported: bool,
}

/// Sends `items` on one socket, in order, with as few sendmmsg calls as the
/// kernel allows and, when `max_segments` > 1, each run of equal-size
/// datagrams to one destination ([`gso_run_len`]) as one message with a
/// `UDP_SEGMENT` cmsg. A GSO send the kernel refuses (EIO: no checksum
/// offload on the device; EINVAL/EMSGSIZE: a segment larger than the path
/// MTU) is sent again as plain datagrams, so refusing GSO never loses data.
pub fn send_segmented<'a, T>(
    fd: RawFd,
    items: &'a [T],
    get: impl Fn(&'a T) -> (SocketAddr, &'a [u8]),
    mut max_segments: usize,
) -> SentSegmented {
    let mut out = SentSegmented::default();
    let mut next = 0;
    while next < items.len() {
        // SAFETY: plain-data C structs, zero is a valid value for each.
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut ctrl = [[0u64; CTRL_WORDS]; BATCH];
        // 32 KiB of iovecs, left uninitialised: zeroing them cost a visible memset per
        // call in a profile of the relayed punch path; only the entries written below are read.
        let mut iovs = [const { std::mem::MaybeUninit::<libc::iovec>::uninit() }; BATCH * GSO_MAX_SEGMENTS];
        // Which items each message carries.
        let mut spans = [(0usize, 0usize); BATCH];
        let mut n = 0;
        let mut iov_used = 0;
        while n < BATCH && next < items.len() {
            let rest = &items[next..];
            let run = gso_run_len(
                rest.iter().map(|t| {
                    let (d, b) = get(t);
                    (d, b.len())
                }),
                max_segments.clamp(1, GSO_MAX_SEGMENTS),
            );
            let (dest, first) = get(&rest[0]);
            for (k, t) in rest[..run].iter().enumerate() {
                let bytes = get(t).1;
                // The kernel only reads through iov_base on send.
                iovs[iov_used + k]
                    .write(libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() });
            }
            let namelen = to_sockaddr(dest, &mut names[n]);
            let h = &mut hdrs[n].msg_hdr;
            h.msg_name = &mut names[n] as *mut _ as *mut libc::c_void;
            h.msg_namelen = namelen;
            // iovs[iov_used..iov_used + run] were written just above.
            h.msg_iov = iovs[iov_used].as_mut_ptr();
            h.msg_iovlen = run as _;
            if run > 1 {
                // first.len() <= GSO_MAX_BYTES < u16::MAX: the segment size fits the cmsg's u16.
                set_udp_segment(h, &mut ctrl[n], first.len() as u16);
            }
            spans[n] = (next, run);
            iov_used += run;
            next += run;
            n += 1;
        }
        let mut sent = 0usize;
        while sent < n {
            // SAFETY: hdrs[sent..n] point at live buffers prepared above.
            let r = unsafe {
                libc::sendmmsg(fd, hdrs[sent..n].as_mut_ptr(), (n - sent) as libc::c_uint, libc::MSG_DONTWAIT)
            };
            out.calls += 1;
            if r > 0 {
                let r = r as usize;
                out.gso_messages += spans[sent..sent + r].iter().filter(|s| s.1 > 1).count();
                sent += r;
                continue;
            }
            let err = io::Error::last_os_error().raw_os_error();
            let (start, run) = spans[sent];
            if run > 1 && matches!(err, Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)) {
                if err == Some(libc::EIO) {
                    out.gso_unsupported = true;
                    max_segments = 1;
                }
                out.gso_refused += 1;
                let plain = send_many(fd, items[start..start + run].iter().map(&get));
                out.failed += plain.failed;
                out.calls += plain.calls;
            } else {
                // Skip what the kernel refused (full queue, pending ICMP error) and go on.
                out.failed += run;
            }
            sent += 1;
        }
    }
    out
}

/// Puts a `UDP_SEGMENT` cmsg (segment size `size`) into `ctrl` and points `h` at it.
fn set_udp_segment(h: &mut libc::msghdr, ctrl: &mut [u64; CTRL_WORDS], size: u16) {
    h.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: CMSG_SPACE of a u16 (24 bytes) fits the 64-byte, 8-aligned buffer h now points at.
    unsafe {
        h.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, size);
    }
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

fn to_sockaddr(addr: SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sin = unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_goes_out_and_comes_back_in_one_call_each() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        let payloads: Vec<[u8; 10]> = (0..5u8).map(|i| [i; 10]).collect();
        assert_eq!(send_many(a.as_raw_fd(), payloads.iter().map(|p| (to, &p[..]))), Sent { failed: 0, calls: 1 });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut inb = RecvBatch::new(2048, 4, 3);
        let n = inb.recv(b.as_raw_fd()).unwrap();
        assert_eq!(n, 5);
        for i in 0..n {
            let (from, slot, len) = inb.slot_mut(i).unwrap();
            assert_eq!(from, a.local_addr().unwrap());
            assert_eq!(&slot[4..4 + len], &[i as u8; 10]);
        }
        assert_eq!(inb.recv(b.as_raw_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_coalesced_read_splits_into_equal_segments_and_a_shorter_last_one() {
        let split = |len, seg| segments(len, seg).collect::<Vec<_>>();
        assert_eq!(split(3000, Some(1200)), vec![0..1200, 1200..2400, 2400..3000]);
        assert_eq!(split(2400, Some(1200)), vec![0..1200, 1200..2400]);
        assert_eq!(split(1200, None), vec![0..1200], "no cmsg: one datagram");
        assert_eq!(split(1000, Some(1200)), vec![0..1000], "a segment size beyond the read: one datagram");
        assert_eq!(split(5, Some(0)), vec![0..5], "a zero segment size is ignored, not a loop");
        assert!(split(0, None).is_empty());
    }

    #[test]
    fn gso_runs_take_equal_sizes_to_one_destination_and_stop_after_a_shorter_one() {
        let (a, b) = (sa("198.51.100.1:1"), sa("198.51.100.2:1"));
        let run = |items: &[(SocketAddr, usize)], max| gso_run_len(items.iter().copied(), max);
        assert_eq!(run(&[(a, 1200), (a, 1200), (a, 1200)], 64), 3);
        assert_eq!(run(&[(a, 1200), (a, 1200), (a, 700), (a, 1200)], 64), 3, "the shorter one ends the run");
        assert_eq!(run(&[(a, 1200), (a, 1300)], 64), 1, "a longer one cannot follow");
        assert_eq!(run(&[(a, 1200), (b, 1200), (a, 1200)], 64), 1, "another destination breaks the run");
        assert_eq!(run(&[(a, 1000); 100], 64), 64, "at most the kernel's segment count");
        assert_eq!(run(&[(a, 1200); 100], 1), 1, "GSO off: one datagram per message");
        // 65,507 bytes at most: 54 x 1,200 = 64,800 fits, a 55th does not.
        assert_eq!(run(&[(a, 1200); 60], 64), 54);
        assert_eq!(run(&[(a, 0), (a, 0)], 64), 1, "empty datagrams are never coalesced");
        assert_eq!(run(&[], 64), 0);
    }

    fn pattern(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|k| (i * 7 + k) as u8).collect()
    }

    #[test]
    fn a_gso_send_arrives_as_the_same_datagrams_and_a_gro_read_holds_them_all() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let gro = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_gro(gro.as_raw_fd()).unwrap();
        // To each receiver in turn, in one call: 10 x 1,000 bytes and a shorter 11th (300 bytes).
        let mut items: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        for (to, sizes) in [(plain.local_addr().unwrap(), [1000; 10]), (gro.local_addr().unwrap(), [1000; 10])] {
            for (i, len) in sizes.into_iter().chain([300]).enumerate() {
                items.push((to, pattern(i, len)));
            }
        }
        let sent = send_segmented(a.as_raw_fd(), &items, |(d, b)| (*d, &b[..]), GSO_MAX_SEGMENTS);
        assert_eq!(sent, SentSegmented { failed: 0, calls: 1, gso_messages: 2, ..Default::default() });
        std::thread::sleep(std::time::Duration::from_millis(50));

        // Without UDP_GRO the kernel cuts the send into its datagrams.
        let mut inb = RecvBatch::new(65_535, 0, 0);
        assert_eq!(inb.recv(plain.as_raw_fd()).unwrap(), 11);
        for (i, (_, want)) in items.iter().enumerate().take(11) {
            assert_eq!(inb.segment_size(i), None);
            let (_, slot, len) = inb.slot_mut(i).unwrap();
            assert_eq!(&slot[..len], &want[..], "datagram {i}");
        }
        // With UDP_GRO one read holds all eleven; split, they are the same bytes.
        assert_eq!(inb.recv(gro.as_raw_fd()).unwrap(), 1);
        assert_eq!(inb.segment_size(0), Some(1000));
        let (from, slot, len) = inb.slot_mut(0).unwrap();
        assert_eq!(from, a.local_addr().unwrap());
        let got: Vec<&[u8]> = segments(len, Some(1000)).map(|r| &slot[r]).collect();
        let want: Vec<&[u8]> = items[11..].iter().map(|(_, b)| &b[..]).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn with_gso_off_every_datagram_is_its_own_message() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        let items: Vec<Vec<u8>> = (0..5).map(|i| pattern(i, 800)).collect();
        let sent = send_segmented(a.as_raw_fd(), &items, |p| (to, &p[..]), 1);
        assert_eq!(sent, SentSegmented { failed: 0, calls: 1, ..Default::default() });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut inb = RecvBatch::new(2048, 0, 0);
        assert_eq!(inb.recv(b.as_raw_fd()).unwrap(), 5);
    }
}
