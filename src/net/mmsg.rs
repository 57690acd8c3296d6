//! Batched UDP receive and send (recvmmsg(2) / sendmmsg(2)): one system call
//! for many datagrams, which is where a relay's CPU goes. Buffers are
//! allocated once per thread and reused; nothing here allocates per packet.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

/// Datagrams per recvmmsg call.
pub const BATCH: usize = 32;

/// `BATCH` receive slots, each with `headroom` free bytes before the datagram
/// and `tailroom` after it (room for a ChannelData header and padding).
pub struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    headroom: usize,
    max: usize,
    lens: [usize; BATCH],
    addrs: [Option<SocketAddr>; BATCH],
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
        }
        Ok(n)
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
}
