//! `natkit relay` and UDP segmentation offload (issue #18): a client that
//! sends a run of ChannelData with one GSO send (a `UDP_SEGMENT` cmsg, as
//! quinn does) reaches the relay as one coalesced read (UDP GRO); the relay
//! must split it and relay each datagram the client sent, checked one by one,
//! and may send runs of equal-size answers as one GSO message. All on
//! loopback; counts and bytes are asserted, never times.

mod common;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/turn_udp.rs"]
mod turn_udp;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::relay_server::{RelayServer, scrape};
use netns::Netns;
use turn_udp::{Allocated, Client, channel_data};

/// Datagrams per burst: 20 full ones and a shorter last one.
const FULL: usize = 20;
const SIZE: usize = 1000;
const LAST: usize = 333;

/// Sends `bytes` to `to` in one sendmsg with a `UDP_SEGMENT` cmsg: the kernel
/// cuts it every `segment` bytes (the last datagram may be shorter).
fn send_gso(sock: &UdpSocket, to: SocketAddr, segment: u16, bytes: &[u8]) {
    let SocketAddr::V4(to) = to else { panic!("IPv4 only here") };
    // SAFETY: plain C structs, zero is valid; every pointer below refers to live locals.
    unsafe {
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = to.port().to_be();
        sin.sin_addr = libc::in_addr { s_addr: u32::from(*to.ip()).to_be() };
        let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
        let mut ctrl = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut sin as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, segment);
        let n = libc::sendmsg(sock.as_raw_fd(), &msg, 0);
        assert_eq!(n, bytes.len() as isize, "GSO send: {}", std::io::Error::last_os_error());
    }
}

/// The burst's payloads: distinct bytes in each, so a reordered or mixed-up datagram shows.
fn payloads() -> Vec<Vec<u8>> {
    (0..=FULL).map(|i| (0..if i == FULL { LAST } else { SIZE }).map(|k| (i * 31 + k) as u8).collect()).collect()
}

/// Every datagram `sock` receives until `want` have come or 5 s pass.
fn receive(sock: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut buf = [0u8; 65_536];
    while got.len() < want && Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

fn relay() -> RelayServer {
    RelayServer::start(&["--user", "alice:wonderland", "--realm", "lab", "--allow-loopback-peers"])
}

const GRO_READS: &str = "natkit_relay_udp_offload_total{op=\"gro_read\"}";
const GSO_SENDS: &str = "natkit_relay_udp_offload_total{op=\"gso_send\"}";

#[test]
fn a_gso_burst_from_a_client_reaches_the_peer_datagram_by_datagram_each_one_checked() {
    let relay = relay();
    let a = Allocated::new("127.0.0.1", relay.addr(), "alice", "wonderland", false);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(a.bind_channel(0x4000, peer.local_addr().unwrap()), None);
    // 21 ChannelData messages of 1,004 bytes (the last 337) in one send; the
    // sixth names a channel that is not bound and must be dropped on its own.
    let sent = payloads();
    let mut wire = Vec::new();
    for (i, p) in sent.iter().enumerate() {
        wire.extend(channel_data(if i == 5 { 0x4001 } else { 0x4000 }, p));
    }
    send_gso(&a.client.sock, relay.addr(), (4 + SIZE) as u16, &wire);

    let want: Vec<Vec<u8>> = sent.iter().enumerate().filter(|(i, _)| *i != 5).map(|(_, p)| p.clone()).collect();
    let got = receive(&peer, want.len());
    assert_eq!(got.len(), want.len(), "datagrams at the peer");
    assert!(got == want, "the peer got other bytes or another order than the client sent");
    assert_eq!(receive(&peer, 1).len(), 0, "nothing more (the unbound channel's datagram stayed dropped)");
    let m = relay.metrics();
    assert!(m.value(GRO_READS) >= 1, "the burst was not read as one coalesced message:\n{m}");
    assert_eq!(m.value("natkit_relay_packets_relayed_total{direction=\"to_peer\"}"), FULL as u64, "{m}");
    assert_eq!(m.value("natkit_relay_dropped_total{reason=\"no_channel\"}"), 1, "{m}");
    assert!(m.value("natkit_relay_udp_datagrams_total{direction=\"in\"}") >= (FULL + 1) as u64, "{m}");
}

#[test]
fn a_gso_burst_from_a_peer_reaches_the_client_as_the_same_datagrams_sent_with_gso() {
    let relay = relay();
    let a = Allocated::new("127.0.0.1", relay.addr(), "alice", "wonderland", false);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(a.bind_channel(0x4000, peer.local_addr().unwrap()), None);
    let sent = payloads();
    send_gso(&peer, a.relayed, SIZE as u16, &sent.concat());

    let want: Vec<Vec<u8>> = sent.iter().map(|p| channel_data(0x4000, p)).collect();
    let got = receive(&a.client.sock, want.len());
    assert_eq!(got.len(), want.len(), "ChannelData messages at the client");
    assert!(got == want, "the client got other bytes or another order than the peer sent");
    let m = relay.metrics();
    assert!(m.value(GRO_READS) >= 1, "the peer's burst was not read as one coalesced message:\n{m}");
    assert!(m.value(GSO_SENDS) >= 1, "the answers did not leave as a GSO send:\n{m}");
    assert_eq!(m.value("natkit_relay_packets_relayed_total{direction=\"from_peer\"}"), (FULL + 1) as u64, "{m}");
    assert_eq!(m.value("natkit_relay_udp_gso_refused_total"), 0, "{m}");
}

#[test]
fn a_gso_burst_between_two_allocations_of_the_relay_arrives_whole_and_in_order() {
    // The relayed punch path: both clients hold allocations of this relay.
    let relay = relay();
    let a = Allocated::new("127.0.0.1", relay.addr(), "alice", "wonderland", false);
    let b = Allocated::new("127.0.0.2", relay.addr(), "alice", "wonderland", false);
    assert_eq!(a.bind_channel(0x4000, b.relayed), None);
    assert_eq!(b.bind_channel(0x4001, a.relayed), None);
    let sent = payloads();
    let wire: Vec<u8> = sent.iter().flat_map(|p| channel_data(0x4000, p)).collect();
    send_gso(&a.client.sock, relay.addr(), (4 + SIZE) as u16, &wire);

    let want: Vec<Vec<u8>> = sent.iter().map(|p| channel_data(0x4001, p)).collect();
    let got = receive(&b.client.sock, want.len());
    assert_eq!(got.len(), want.len(), "ChannelData messages at b");
    assert!(got == want, "b got other bytes or another order than a sent");
    let m = relay.metrics();
    assert!(m.value(GRO_READS) >= 1, "{m}");
    assert!(m.value(GSO_SENDS) >= 1, "{m}");
    assert_eq!(m.value("natkit_relay_packets_relayed_total{direction=\"internal\"}"), (FULL + 1) as u64, "{m}");
}

#[test]
fn a_gso_send_the_kernel_refuses_goes_out_again_datagram_by_datagram() {
    // Loopback with an MTU of 1,280 in a namespace: the peer's 1,240-byte datagrams
    // fit, but their Data indications (1,276 bytes) do not, and the kernel refuses a
    // GSO send whose segments exceed the MTU. The relay must send them one by one
    // (the kernel fragments each) and count the refusal.
    let ns = Netns::new(&["203.0.113.1/24", "203.0.113.5/32"]);
    let out = std::process::Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "mtu", "1280"]).output();
    assert!(out.is_ok_and(|o| o.status.success()), "ip link set lo mtu 1280 in {}", ns.name);
    let mut relay = ns.spawn_relay(&[
        "--listen",
        "203.0.113.1:3478",
        "--user",
        "alice:wonderland",
        "--realm",
        "lab",
        "--allow-relay-host-peers",
        "--metrics",
        "203.0.113.1:9641",
    ]);
    let (got, want, metrics) = ns.run(|| {
        let server: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        // Bounded wait until the relay answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::bind("203.0.113.5", server)
            .transact_tries(&turn_udp::request(stun_rs::methods::BINDING, vec![], None), 1)
            .is_none()
        {
            assert!(Instant::now() < deadline, "the relay in the namespace never answered");
        }
        let a = Allocated::new("203.0.113.5", server, "alice", "wonderland", false);
        let peer = UdpSocket::bind("203.0.113.5:0").unwrap();
        // A permission and no channel: the answers are Data indications.
        assert_eq!(a.permit(peer.local_addr().unwrap()), None);
        let sent: Vec<Vec<u8>> = (0..21).map(|i| (0..1240).map(|k| (i * 13 + k) as u8).collect()).collect();
        send_gso(&peer, a.relayed, 1240, &sent.concat());
        let got = receive(&a.client.sock, sent.len());
        (got, sent, scrape("203.0.113.1:9641"))
    });
    let _ = relay.stop();
    assert_eq!(got.len(), want.len(), "Data indications at the client");
    for (i, (d, p)) in got.iter().zip(&want).enumerate() {
        assert!(d.len() > p.len() && d.ends_with(p), "Data indication {i} does not carry datagram {i}");
    }
    assert!(metrics.value("natkit_relay_udp_gso_refused_total") >= 1, "no refused GSO send counted:\n{metrics}");
    assert_eq!(metrics.value("natkit_relay_send_errors_total"), 0, "{metrics}");
}
