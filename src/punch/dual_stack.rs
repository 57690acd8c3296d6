//! The punch socket for both address families (RFC 8421 §3: an agent gathers on every family it
//! has).
//!
//! One dual-stack socket (`[::]:port` with `IPV6_V6ONLY` off), not one socket per family: the
//! mux, the ICE driver, the TURN link and the QUIC endpoint all sit on one socket, and quinn's
//! abstract socket is one object per endpoint. A second socket would need a second mux, a second
//! QUIC endpoint and a way to move a connection between them; one socket carries IPv4 and IPv6
//! pairs alike, checked by the same ICE agent, and QUIC runs over whichever pair is nominated.
//! Both families also share one port, so a peer sees the same port on our v4 and v6 candidates.
//!
//! The price: IPv4 peers arrive as IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, RFC 4291
//! §2.5.5.2). Every reader of the socket turns them back with [`unmap`], so candidates, the ICE
//! agent, TURN and the report only ever see plain IPv4. Sending to an IPv4 address needs nothing:
//! Linux takes an `AF_INET` destination on a dual-stack socket. Where the kernel has no IPv6 at
//! all, [`bind`] falls back to an IPv4-only socket and punch works as before.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;

/// Binds the punch socket: dual-stack on an ephemeral port, or IPv4 only when IPv6 is off.
pub fn bind() -> io::Result<UdpSocket> {
    match bind_dual() {
        Ok(s) => Ok(s),
        Err(e) => {
            tracing::info!("no IPv6 socket ({e}): IPv4 candidates only");
            crate::net::udp::bind(SocketAddr::from(([0, 0, 0, 0], 0)))
        }
    }
}

fn bind_dual() -> io::Result<UdpSocket> {
    let sock = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    sock.set_only_v6(false)?;
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
    UdpSocket::from_std(sock.into())
}

/// The address a datagram really came from: IPv4-mapped IPv6 back to IPv4, anything else as is.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The servers of the same family as `towards` (a STUN server answers about the family it is
/// asked over: asking a v6 server about a v4 path would report a "new" mapping that is not).
pub fn same_family(servers: &[SocketAddr], towards: SocketAddr) -> Vec<SocketAddr> {
    servers.iter().copied().filter(|s| s.is_ipv6() == towards.is_ipv6()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_v4_is_unmapped_and_real_v6_kept() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(unmap(a("[::ffff:203.0.113.5]:4000")), a("203.0.113.5:4000"));
        assert_eq!(unmap(a("[2001:db8::2]:4000")), a("[2001:db8::2]:4000"));
        assert_eq!(unmap(a("10.0.0.2:1")), a("10.0.0.2:1"));
        let servers = [a("203.0.113.1:3478"), a("[2001:db8::10]:3478")];
        assert_eq!(same_family(&servers, a("[2001:db8::2]:1")), vec![a("[2001:db8::10]:3478")]);
        assert_eq!(same_family(&servers, a("10.0.0.2:1")), vec![a("203.0.113.1:3478")]);
    }

    #[tokio::test]
    async fn one_socket_talks_to_both_families() {
        let s = bind().expect("bind");
        let port = s.local_addr().expect("addr").port();
        let v4 = UdpSocket::bind("127.0.0.1:0").await.expect("v4");
        s.send_to(b"x", v4.local_addr().expect("addr")).await.expect("send to v4");
        let mut buf = [0u8; 4];
        let (_, from) = v4.recv_from(&mut buf).await.expect("recv v4");
        v4.send_to(b"y", from).await.expect("answer");
        let (_, back) = s.recv_from(&mut buf).await.expect("recv");
        assert_eq!(unmap(back), v4.local_addr().expect("addr"));
        assert_eq!(from.port(), port);
    }
}
