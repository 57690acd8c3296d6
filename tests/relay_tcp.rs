//! RFC 6062 TCP allocations in `natkit relay`, against coturn's own client
//! (`turnutils_uclient -T`, also run against coturn to show the test is
//! right), and with a small hand-written TCP client for the refusals and the
//! attacks: a loopback peer refused with the policy's 403 reason, an unknown
//! CONNECTION-ID refused, a connection that is never bound closed at the
//! timeout and counted, many Connects stopped by the per-allocation cap, and
//! a peer without a permission that gets nothing. All on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::coturn::{Coturn, CoturnConfig};
use common::relay::Relay;
use common::relay_server::RelayServer;
use common::{free_port, tools};
use natkit::stun::message::{decode, encode, new_transaction_id};
use natkit::turn::rfc6062;
use natkit::turn::server::auth::IntegrityKind;
use stun_rs::attributes::stun::{Nonce, Realm, UserName};
use stun_rs::attributes::turn::{Data, RequestedTrasport, XorPeerAddress};
use stun_rs::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMMISSION, SEND};
use stun_rs::{MessageClass, MessageMethod, StunAttribute, StunMessage, StunMessageBuilder, TransactionId};

const USER: &[&str] = &["--user", "alice:wonderland", "--realm", "lab", "--ports", "46000-47999"];

fn number_after(text: &str, key: &str) -> Option<u64> {
    let i = text.rfind(key)? + key.len();
    let digits: String = text[i..].trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// `turnutils_uclient -T` (TCP relaying, client to client: each of the `-m`
/// clients makes two TCP allocations and connects one to the other's
/// relayed address); returns (sent, received, lost, output).
fn uclient_tcp(port: u16, clients: u32, messages: u32) -> (u64, u64, u64, String) {
    let bin = tools::require("turnutils_uclient", "coturn");
    let out = Command::new("timeout")
        .arg("60")
        .arg(bin)
        .args(["-T", "-u", "alice", "-w", "wonderland", "-p", &port.to_string()])
        .args(["-m", &clients.to_string(), "-n", &messages.to_string(), "-l", "170", "-z", "5"])
        .arg("127.0.0.1")
        .output()
        .expect("running turnutils_uclient");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let parse = |k| number_after(&output, k).unwrap_or_else(|| panic!("no '{k}' in uclient output:\n{output}"));
    (parse("tot_send_msgs="), parse("tot_recv_msgs="), parse("Total lost packets"), output)
}

#[test]
fn uclient_tcp_relaying_through_natkit_relay_echoes_every_message() {
    let relay = RelayServer::start(&[USER, &["--allow-loopback-peers"]].concat());
    let (sent, received, lost, output) = uclient_tcp(relay.port, 2, 30);
    assert!(sent >= 2 * 30, "only {sent} messages sent\n{output}");
    assert_eq!(received, sent, "not every message came back\n{output}");
    assert_eq!(lost, 0, "{output}");
    let m = relay.metrics();
    // Each pair of allocations: one Connect, one inbound peer (the other allocation's relayed
    // address), both ends bound by a data connection.
    let connects = m.value("natkit_relay_tcp_peer_connections_total{outcome=\"connect\"}");
    assert!(connects >= 1, "{m}");
    assert_eq!(m.value("natkit_relay_tcp_peer_connections_total{outcome=\"inbound\"}"), connects, "{m}");
    assert_eq!(m.value("natkit_relay_tcp_peer_connections_total{outcome=\"bound\"}"), 2 * connects, "{m}");
    let to_peer = m.value("natkit_relay_tcp_bytes_relayed_total{direction=\"to_peer\"}");
    assert!(to_peer >= sent * 170, "bytes to peers counted: {to_peer} for {sent} messages of 170 bytes");
}

#[test]
fn uclient_tcp_relaying_through_coturn_echoes_every_message() {
    // The same test against coturn's own server: the test itself is right.
    let coturn = Coturn::start(CoturnConfig {
        args: ["--user=alice:wonderland", "--realm=lab", "--lt-cred-mech", "--allow-loopback-peers"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let (sent, received, lost, output) = uclient_tcp(coturn.port, 2, 30);
    assert!(sent >= 2 * 30, "only {sent} messages sent\n{output}");
    assert_eq!(received, sent, "{output}");
    assert_eq!(lost, 0, "{output}");
}

/// A hand-written TURN client over one TCP connection, enough for the refusals.
struct Ctl {
    s: TcpStream,
    nonce: String,
}

/// A request, signed by hand when `nonce` is given (stun-rs encodes neither
/// REQUESTED-TRANSPORT=TCP nor CONNECTION-ID).
fn request(method: u16, attrs: Vec<StunAttribute>, tcp: bool, conn: Option<u32>, nonce: Option<&str>) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(MessageMethod::try_from(method).unwrap(), MessageClass::Request)
        .with_transaction_id(TransactionId::from(new_transaction_id()));
    for a in attrs {
        b = b.with_attribute(a);
    }
    if let Some(n) = nonce {
        b = b
            .with_attribute(UserName::new("alice").unwrap())
            .with_attribute(Realm::new("lab").unwrap())
            .with_attribute(Nonce::new(n).unwrap());
    }
    let mut m = encode(&b.build());
    if tcp {
        assert!(rfc6062::set_requested_transport_tcp(&mut m));
    }
    if let Some(id) = conn {
        rfc6062::append_connection_id(&mut m, id);
    }
    let key = natkit::turn::credentials::long_term_key("alice", "lab", "wonderland");
    rfc6062::finish(&mut m, nonce.map(|_| (&key[..], IntegrityKind::Sha1)), true);
    m
}

fn read_msg(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 20];
    s.read_exact(&mut head)?;
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut m = head.to_vec();
    m.resize(20 + len, 0);
    s.read_exact(&mut m[20..])?;
    Ok(m)
}

fn code(m: &StunMessage) -> Option<u16> {
    m.attributes().iter().find_map(|a| a.as_error_code().ok()).map(|e| e.error_code().error_code())
}

fn reason(m: &StunMessage) -> String {
    m.attributes()
        .iter()
        .find_map(|a| a.as_error_code().ok())
        .map(|e| e.error_code().reason().to_string())
        .unwrap_or_default()
}

fn peer_attr(p: SocketAddr) -> StunAttribute {
    XorPeerAddress::from(p).into()
}

impl Ctl {
    fn connect(relay: &str) -> Ctl {
        let s = TcpStream::connect(relay).expect("connecting to the relay");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Ctl { s, nonce: String::new() }
    }

    fn ask(&mut self, bytes: &[u8]) -> (Vec<u8>, StunMessage) {
        self.s.write_all(bytes).unwrap();
        let raw = read_msg(&mut self.s).expect("an answer within 10 s");
        let m = decode(&raw).expect("the answer decodes");
        (raw, m)
    }

    /// A TCP allocation (401 first); returns the relayed address.
    fn allocate_tcp(&mut self) -> SocketAddr {
        let ok = self.ask_allocate_tcp();
        assert_eq!(ok.class(), MessageClass::SuccessResponse, "TCP Allocate refused: {:?} {}", code(&ok), reason(&ok));
        *ok.attributes().iter().find_map(|a| a.as_xor_relayed_address().ok()).unwrap().socket_address()
    }

    /// A TCP Allocate (after the 401 challenge) and whatever it is answered.
    fn ask_allocate_tcp(&mut self) -> StunMessage {
        let t: StunAttribute = RequestedTrasport::new(stun_rs::protocols::UDP).into();
        let (_, challenge) = self.ask(&request(ALLOCATE.as_u16(), vec![t.clone()], true, None, None));
        assert_eq!(code(&challenge), Some(401));
        self.nonce = challenge.attributes().iter().find_map(|a| a.as_nonce().ok()).unwrap().as_str().to_string();
        self.ask(&request(ALLOCATE.as_u16(), vec![t], true, None, Some(&self.nonce.clone()))).1
    }

    /// A UDP allocation over this TCP control connection, None if refused or closed.
    fn try_allocate_udp(&mut self) -> Option<SocketAddr> {
        let t: StunAttribute = RequestedTrasport::new(stun_rs::protocols::UDP).into();
        self.s.write_all(&request(ALLOCATE.as_u16(), vec![t.clone()], false, None, None)).ok()?;
        let challenge = decode(&read_msg(&mut self.s).ok()?).ok()?;
        self.nonce = challenge.attributes().iter().find_map(|a| a.as_nonce().ok())?.as_str().to_string();
        self.s.write_all(&request(ALLOCATE.as_u16(), vec![t], false, None, Some(&self.nonce.clone()))).ok()?;
        let ok = decode(&read_msg(&mut self.s).ok()?).ok()?;
        ok.attributes().iter().find_map(|a| a.as_xor_relayed_address().ok()).map(|a| *a.socket_address())
    }

    /// A UDP allocation over this TCP control connection (401 first); returns the relayed address.
    fn allocate_udp(&mut self) -> SocketAddr {
        let t: StunAttribute = RequestedTrasport::new(stun_rs::protocols::UDP).into();
        let (_, challenge) = self.ask(&request(ALLOCATE.as_u16(), vec![t.clone()], false, None, None));
        assert_eq!(code(&challenge), Some(401));
        self.nonce = challenge.attributes().iter().find_map(|a| a.as_nonce().ok()).unwrap().as_str().to_string();
        let (_, ok) = self.ask(&request(ALLOCATE.as_u16(), vec![t], false, None, Some(&self.nonce.clone())));
        assert_eq!(ok.class(), MessageClass::SuccessResponse, "UDP Allocate refused: {:?} {}", code(&ok), reason(&ok));
        *ok.attributes().iter().find_map(|a| a.as_xor_relayed_address().ok()).unwrap().socket_address()
    }

    fn permit(&mut self, peer: SocketAddr) {
        let (_, m) = self.ask(&request(
            CREATE_PERMMISSION.as_u16(),
            vec![peer_attr(peer)],
            false,
            None,
            Some(&self.nonce.clone()),
        ));
        assert_eq!(m.class(), MessageClass::SuccessResponse, "{:?}", code(&m));
    }

    fn connect_to(&mut self, peer: SocketAddr) -> (Vec<u8>, StunMessage) {
        self.ask(&request(rfc6062::CONNECT, vec![peer_attr(peer)], false, None, Some(&self.nonce.clone())))
    }
}

/// A TCP echo peer on loopback: echoes every connection; counts the connections that ended.
struct EchoPeer {
    addr: SocketAddr,
    ended: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl EchoPeer {
    fn start() -> EchoPeer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let e = ended.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let e = e.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    e.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        EchoPeer { addr, ended }
    }
}

#[test]
fn connect_to_a_loopback_peer_is_refused_with_the_policys_reason() {
    let relay = Relay::start(USER);
    let mut c = Ctl::connect(&relay.addr());
    c.allocate_tcp();
    let (_, m) = c.connect_to("127.0.0.1:9".parse().unwrap());
    assert_eq!(code(&m), Some(403));
    assert!(reason(&m).to_lowercase().contains("loopback"), "the 403 says why: {}", reason(&m));
    // Without a permission a permitted kind of peer is refused too, and says what to do.
    let (_, m) = c.connect_to("203.0.113.9:80".parse().unwrap());
    assert_eq!(code(&m), Some(403));
    assert!(reason(&m).contains("CreatePermission"), "{}", reason(&m));
}

#[test]
fn connection_bind_with_an_unknown_id_is_400() {
    let relay = Relay::start(USER);
    let mut data = Ctl::connect(&relay.addr());
    let (_, challenge) = data.ask(&request(rfc6062::CONNECTION_BIND, vec![], false, Some(0x1234_5678), None));
    assert_eq!(code(&challenge), Some(401));
    let nonce = challenge.attributes().iter().find_map(|a| a.as_nonce().ok()).unwrap().as_str().to_string();
    let (_, m) = data.ask(&request(rfc6062::CONNECTION_BIND, vec![], false, Some(0x1234_5678), Some(&nonce)));
    assert_eq!(code(&m), Some(400), "{}", reason(&m));
}

#[test]
fn a_connection_that_is_never_bound_is_closed_at_the_timeout_and_counted() {
    let relay = RelayServer::start(&[USER, &["--allow-loopback-peers", "--tcp-bind-timeout", "2"]].concat());
    let peer = EchoPeer::start();
    let mut c = Ctl::connect(&relay.addr().to_string());
    c.allocate_tcp();
    c.permit(peer.addr);
    let (raw, m) = c.connect_to(peer.addr);
    assert_eq!(m.class(), MessageClass::SuccessResponse, "{:?} {}", code(&m), reason(&m));
    assert!(rfc6062::connection_id(&raw).is_some(), "the answer names the connection");
    // Nobody binds it: the relay closes the peer connection (the echo peer sees EOF) and counts it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while peer.ended.load(std::sync::atomic::Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(peer.ended.load(std::sync::atomic::Ordering::SeqCst), 1, "the peer connection was closed");
    let n = relay.wait_metric(
        "natkit_relay_tcp_peer_connections_total{outcome=\"bind_timeout\"}",
        1,
        Duration::from_secs(5),
    );
    assert_eq!(n, 1);
    assert_eq!(relay.metrics().value("natkit_relay_tcp_peer_connections"), 0);
}

/// The attack: another process of the same user (a second relay on the host, one starting while this
/// one drains, or anything else) listens with SO_REUSEPORT on the one port the relay may use. Were the
/// relay to bind its relayed listener there too, the kernel would split the peers' connections between
/// the two processes: a peer meant for this allocation could be announced to another relay's client,
/// and this allocation's client would miss it. The port is busy, so the relay has no port to give.
#[test]
fn a_relayed_tcp_port_another_process_listens_on_is_never_shared() {
    let squatter = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    squatter.set_reuse_address(true).expect("SO_REUSEADDR");
    squatter.set_reuse_port(true).expect("SO_REUSEPORT");
    squatter.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    squatter.listen(8).expect("listen");
    let port = squatter.local_addr().expect("addr").as_socket().expect("inet").port();
    let range = format!("{port}-{port}");
    let relay = RelayServer::start(&["--user", "alice:wonderland", "--realm", "lab", "--ports", &range]);
    let mut c = Ctl::connect(&relay.addr().to_string());
    let m = c.ask_allocate_tcp();
    assert_eq!(
        code(&m),
        Some(508),
        "the relay took a port another process listens on: {:?} {}",
        m.attributes().iter().find_map(|a| a.as_xor_relayed_address().ok()).map(|a| *a.socket_address()),
        reason(&m)
    );
    drop(squatter);
    // Once the port is free the same request is served on it.
    let mut c = Ctl::connect(&relay.addr().to_string());
    assert_eq!(c.allocate_tcp().port(), port);
}

#[test]
fn many_connects_from_one_allocation_hit_the_cap() {
    let relay = Relay::start(&[USER, &["--allow-loopback-peers", "--max-tcp-connections", "3"]].concat());
    let peers: Vec<EchoPeer> = (0..4).map(|_| EchoPeer::start()).collect();
    let mut c = Ctl::connect(&relay.addr());
    c.allocate_tcp();
    c.permit(peers[0].addr);
    let mut codes = Vec::new();
    for p in &peers {
        let (_, m) = c.connect_to(p.addr);
        codes.push(code(&m));
    }
    assert_eq!(codes, vec![None, None, None, Some(508)], "three connections, the fourth refused");
}

#[test]
fn a_peer_without_a_permission_gets_nothing_and_the_client_hears_nothing() {
    let relay = RelayServer::start(&[USER, &["--allow-loopback-peers"]].concat());
    let mut c = Ctl::connect(&relay.addr().to_string());
    let relayed = c.allocate_tcp();
    let mut intruder = TcpStream::connect(relayed).expect("the relayed address listens");
    intruder.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = intruder.write_all(b"hello?");
    let mut buf = [0u8; 64];
    let got = intruder.read(&mut buf).unwrap_or(0);
    assert_eq!(got, 0, "closed without a byte");
    c.s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(read_msg(&mut c.s).is_err(), "no ConnectionAttempt for a peer without a permission");
    assert_eq!(relay.metrics().value("natkit_relay_tcp_peer_connections_total{outcome=\"inbound_refused\"}"), 1);
    // With a permission the same peer is announced.
    c.permit(relayed);
    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _second = TcpStream::connect(relayed).unwrap();
    let attempt = decode(&read_msg(&mut c.s).expect("a ConnectionAttempt")).unwrap();
    assert_eq!(attempt.method().as_u16(), rfc6062::CONNECTION_ATTEMPT);
}

/// `natkit turn-alloc --peer-transport tcp` against a server on loopback; returns its JSON.
fn turn_alloc_tcp(server: &str, peer: SocketAddr) -> serde_json::Value {
    let out = common::natkit(&[
        "turn-alloc",
        server,
        "--transport",
        "tcp",
        "-u",
        "alice",
        "-p",
        "wonderland",
        "--peer",
        &peer.to_string(),
        "--peer-transport",
        "tcp",
        "--packets",
        "20",
        "--rate",
        "200",
        "--json",
    ]);
    common::json_of(&out)
}

fn assert_tcp_step_echoed(j: &serde_json::Value, what: &str) {
    let t = &j["tcp_relay"];
    assert_eq!(t["ok"], true, "{what}: {j:#}");
    assert_eq!(t["messages_sent"], 20, "{what}: {t:#}");
    assert_eq!(t["messages_echoed"], 20, "{what}: {t:#}");
    assert_eq!(t["bytes_echoed"], 20 * 172, "{what}: {t:#}");
    assert!(t["connection_id"].is_u64(), "{what}: {t:#}");
    assert!(t["rtt_ms"]["avg"].is_f64(), "{what}: {t:#}");
    let step = j["steps"].as_array().unwrap().iter().find(|s| s["name"] == "tcp-relay").expect("a tcp-relay step");
    assert_eq!(step["ok"], true, "{what}: {step:#}");
    assert_eq!(j["ok"], true, "{what}: every step passed: {j:#}");
}

#[test]
fn turn_alloc_peer_transport_tcp_relays_to_a_tcp_echo_peer_through_natkit_relay() {
    let relay = Relay::start(&[USER, &["--allow-loopback-peers"]].concat());
    let peer = EchoPeer::start();
    assert_tcp_step_echoed(&turn_alloc_tcp(&relay.addr(), peer.addr), "natkit relay");
}

#[test]
fn turn_alloc_peer_transport_tcp_relays_to_a_tcp_echo_peer_through_coturn() {
    let coturn = Coturn::start(CoturnConfig {
        args: ["--user=alice:wonderland", "--realm=lab", "--lt-cred-mech", "--allow-loopback-peers"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let peer = EchoPeer::start();
    assert_tcp_step_echoed(&turn_alloc_tcp(&coturn.addr(), peer.addr), "coturn");
}

#[test]
fn turn_alloc_peer_transport_tcp_over_udp_is_bad_input() {
    let out = common::natkit(&["turn-alloc", "127.0.0.1:9", "--peer", "127.0.0.1:7", "--peer-transport", "tcp"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--transport tcp"));
}

#[test]
fn turn_alloc_peer_transport_tcp_works_over_a_tls_control_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::coturn::self_signed_cert(dir.path());
    let tls = format!("127.0.0.1:{}", free_port());
    let relay = Relay::start(
        &[
            USER,
            &[
                "--allow-loopback-peers",
                "--tls-listen",
                &tls,
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let peer = EchoPeer::start();
    let out = common::natkit(&[
        "turn-alloc",
        &tls,
        "--transport",
        "tls",
        "--insecure",
        "-u",
        "alice",
        "-p",
        "wonderland",
        "--peer",
        &peer.addr.to_string(),
        "--peer-transport",
        "tcp",
        "--packets",
        "20",
        "--json",
    ]);
    let j = common::json_of(&out);
    assert_eq!(j["transport"], "tls", "{j:#}");
    assert_tcp_step_echoed(&j, "natkit relay over TLS");
    drop(relay);
}

/// ChannelBind and a Send indication on a TCP allocation, over its control
/// connection, toward a UDP peer on loopback that holds a permission: the
/// ChannelBind answer's code, and whether the peer got any datagram (Send,
/// then ChannelData on the channel asked for).
fn channel_bind_and_send_on_a_tcp_allocation(server: &str) -> (Option<u16>, String, usize) {
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = Ctl::connect(server);
    c.allocate_tcp();
    c.permit(peer_addr);
    let channel: StunAttribute = stun_rs::attributes::turn::ChannelNumber::new(0x4000).into();
    let (_, m) = c.ask(&request(
        CHANNEL_BIND.as_u16(),
        vec![channel, peer_attr(peer_addr)],
        false,
        None,
        Some(&c.nonce.clone()),
    ));
    let send = StunMessageBuilder::new(SEND, MessageClass::Indication)
        .with_transaction_id(TransactionId::from(new_transaction_id()))
        .with_attribute(peer_attr(peer_addr))
        .with_attribute(Data::new(b"over a TCP allocation"))
        .build();
    c.s.write_all(&encode(&send)).unwrap();
    // ChannelData over a stream is padded to 4 bytes (RFC 8656 §12.5).
    c.s.write_all(&[0x40, 0x00, 0x00, 0x04, b'd', b'a', b't', b'a']).unwrap();
    // What reached the peer: everything that arrives within 1 s (bounded; the
    // same wait on both servers).
    peer.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut got = 0;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if peer.recv_from(&mut buf).is_ok() {
            got += 1;
        }
    }
    (code(&m), reason(&m), got)
}

#[test]
fn channel_bind_and_send_on_a_tcp_allocation_are_refused_as_coturn_refuses_them() {
    // coturn first: what a TCP allocation's ChannelBind gets there is the answer natkit must give.
    let coturn = Coturn::start(CoturnConfig {
        args: ["--user=alice:wonderland", "--realm=lab", "--lt-cred-mech", "--allow-loopback-peers"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let (coturn_code, coturn_reason, coturn_got) = channel_bind_and_send_on_a_tcp_allocation(&coturn.addr());
    assert_eq!(coturn_code, Some(403), "coturn refuses ChannelBind on a TCP allocation ({coturn_reason})");
    assert_eq!(coturn_got, 0, "coturn relays neither Send nor ChannelData of a TCP allocation");

    let relay = RelayServer::start(&[USER, &["--allow-loopback-peers"]].concat());
    let (code, why, got) = channel_bind_and_send_on_a_tcp_allocation(&relay.addr().to_string());
    assert_eq!(code, coturn_code, "natkit answers ChannelBind on a TCP allocation as coturn does: {why}");
    assert!(why.contains("TCP"), "the 403 says why: {why}");
    assert_eq!(got, 0, "nothing of a TCP allocation's Send or ChannelData reaches the peer");
}

/// A loopback port `p` where a TCP service listens (UDP free) with `p + 1` free for both
/// UDP and TCP: the relay's two-port range of the next test.
fn tcp_service_below_a_free_port() -> (TcpListener, u16) {
    for _ in 0..50 {
        let service = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = service.local_addr().unwrap().port();
        let free = p < 65_535
            && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 1)).is_ok();
        if free {
            return (service, p);
        }
    }
    panic!("no loopback port with a free neighbour");
}

/// The attack: a TCP service of the relay host (here on loopback, which no flag opens) listens on a
/// port of the relayed range. The attacker takes a UDP allocation until its relayed address is that
/// port (random ports: two tries on average here, a few thousand Allocates on a full range), then
/// Connects a TCP allocation to it. The policy took "another live allocation's relayed address" as
/// traffic delivered inside the relay, but a Connect is a real TCP connection from the relay host to
/// that IP and port, and a UDP allocation does not listen on TCP: it reached the host's service,
/// past the loopback (and relay-host) refusal. Before the fix: Connect answered with a CONNECTION-ID
/// and the service accepted a connection from the relay. Now 403 for the loopback reason, and
/// nothing reaches the service; a TCP allocation's relayed address still can be connected to.
#[test]
fn connect_to_a_udp_allocations_relayed_address_does_not_reach_the_hosts_tcp_port_behind_it() {
    let (service, p) = tcp_service_below_a_free_port();
    service.set_nonblocking(true).unwrap();
    let range = format!("{p}-{}", p + 1);
    let relay = RelayServer::start(&["--user", "alice:wonderland", "--realm", "lab", "--ports", &range]);
    // A UDP allocation on port p (the relay picks at random between p and p + 1).
    let mut udp = None;
    for _ in 0..20 {
        let mut c = Ctl::connect(&relay.addr().to_string());
        if c.allocate_udp().port() == p {
            udp = Some(c);
            break;
        }
        drop(c);
        std::thread::sleep(Duration::from_millis(100));
    }
    let _udp = udp.expect("a UDP allocation on the service's port");
    let target = SocketAddr::from(([127, 0, 0, 1], p));
    // A TCP allocation (on p + 1: the relay skips the service's TCP port), permitted toward the target.
    let mut c = Ctl::connect(&relay.addr().to_string());
    assert_eq!(c.allocate_tcp().port(), p + 1);
    c.permit(target);
    let (_, m) = c.connect_to(target);
    std::thread::sleep(Duration::from_millis(300));
    let reached = service.accept().map(|(_, from)| from.to_string());
    assert!(reached.is_err(), "the relay connected to the host's TCP service: {reached:?}");
    assert_eq!(code(&m), Some(403), "Connect to a UDP allocation's address over TCP: {}", reason(&m));
    assert!(reason(&m).contains("loopback"), "judged as the host address it is: {}", reason(&m));
    // Another TCP allocation's relayed address (the relay's own listener) is still a peer: once the
    // service and the UDP allocation are gone, it takes port p.
    drop(service);
    drop(_udp);
    std::thread::sleep(Duration::from_millis(300));
    let mut other = Ctl::connect(&relay.addr().to_string());
    let other_relayed = other.allocate_tcp();
    assert_eq!(other_relayed, target);
    other.permit(SocketAddr::from(([127, 0, 0, 1], p + 1)));
    c.permit(other_relayed);
    let (_, m) = c.connect_to(other_relayed);
    assert_eq!(m.class(), MessageClass::SuccessResponse, "{:?} {}", code(&m), reason(&m));
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The attack: a client with a UDP allocation over a TCP control connection lets its peer (its own
/// host, or another allocation of the same relay) send large datagrams and never reads. The relay
/// queued every Data indication for the connection, up to 1,024 of them whatever their size: about
/// 64 MB of memory per connection from a 60 KB datagram each, and a source address may hold a
/// hundred such connections. Before the fix the relay's resident memory grew by ~60 MB here (2,000
/// datagrams of 60,000 bytes). Now the queue is bounded in bytes (`--stream-queue-bytes`, 256 KiB):
/// what does not fit is dropped and counted, and the memory stays put.
#[test]
fn a_tcp_client_that_never_reads_holds_at_most_its_queue_bound_of_relayed_data() {
    let relay = RelayServer::start(&[USER, &["--allow-loopback-peers"]].concat());
    let mut c = Ctl::connect(&relay.addr().to_string());
    let relayed = c.allocate_udp();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.permit(peer.local_addr().unwrap());
    let before = rss_kib(relay.pid);
    let datagram = vec![0x5a_u8; 60_000];
    for i in 0..2_000 {
        let _ = peer.send_to(&datagram, relayed);
        if i % 4 == 3 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let received = relay.wait_metric(
        "natkit_relay_packets_relayed_total{direction=\"from_peer\"}",
        1_000,
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_kib(relay.pid).saturating_sub(before);
    assert!(
        grown < 24 * 1024,
        "the relay's memory grew by {grown} KiB for a client that never reads ({received} datagrams from the peer)"
    );
    let dropped = relay.metrics().value("natkit_relay_stream_queue_dropped_total");
    assert!(dropped > 0, "what did not fit was dropped and counted: {dropped}");
    assert!(relay.metrics().get("natkit_relay_stream_queue_dropped_bytes_total").is_some_and(|b| b > 0));
}

/// A TCP connection to `to` from the loopback address `from`.
fn tcp_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((from, 0)).into()).expect("bind a loopback source");
    s.connect(&to.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// A UDP Allocate from a fresh socket on `from` (after its 401): the error code, None on success.
fn udp_allocate_from(from: [u8; 4], relay: SocketAddr) -> Option<u16> {
    let sock = std::net::UdpSocket::bind(SocketAddr::from((from, 0))).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t: StunAttribute = RequestedTrasport::new(stun_rs::protocols::UDP).into();
    let ask = |bytes: &[u8]| {
        sock.send_to(bytes, relay).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = sock.recv_from(&mut buf).expect("an answer over UDP");
        decode(&buf[..n]).expect("the answer decodes")
    };
    let challenge = ask(&request(ALLOCATE.as_u16(), vec![t.clone()], false, None, None));
    let nonce = challenge.attributes().iter().find_map(|a| a.as_nonce().ok()).unwrap().as_str().to_string();
    code(&ask(&request(ALLOCATE.as_u16(), vec![t], false, None, Some(&nonce))))
}

/// The attack: under a descriptor limit (512 here, by prlimit) the relay splits its descriptors
/// between connections and allocations, but the peer connections of TCP allocations (RFC 6062) had a
/// cap of their own as large as the connections' and no share of the budget. One user with 8 TCP
/// allocations, a few hundred inbound peer connections and 140 more control connections holding a
/// UDP allocation each (all within every cap) took the process's last descriptor: before the fix, a
/// UDP client then got 508 ("cannot open a relayed socket: Too many open files") with the
/// allocation cap far from reached. Now connections, peer connections and allocations each have a
/// share of the budget (what does not fit is refused by its cap), and the UDP client is served.
#[test]
fn peer_connections_of_tcp_allocations_cannot_take_the_descriptors_udp_allocations_need() {
    assert!(natkit::net::conn_limit::raise_nofile_limit() >= 2_000, "the test needs `ulimit -Hn` of 2000 or more");
    let relay = RelayServer::start_limited(
        Some(512),
        &[USER, &["--allow-loopback-peers", "--user-quota", "0", "--tcp-bind-timeout", "300"]].concat(),
    );
    let server = relay.addr();
    // Whatever the caps let the attacker have: a connection or allocation refused is skipped.
    let ctl_from = |ip: [u8; 4]| Ctl { s: tcp_from(ip, server), nonce: String::new() };
    let mut held = Vec::new();
    let mut peers = Vec::new();
    // 8 TCP allocations, each open to peers on 127.0.5.1-3, and 32 peers knocking on each.
    for _ in 0..8 {
        let mut c = ctl_from([127, 0, 7, 1]);
        let relayed = c.allocate_tcp();
        for p in 1..=3 {
            c.permit(SocketAddr::from(([127, 0, 5, p], 9)));
        }
        for k in 0..32u8 {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            s.bind(&SocketAddr::from(([127, 0, 5, 1 + k % 3], 0)).into()).expect("bind");
            let _ = s.set_nonblocking(true);
            let _ = s.connect(&relayed.into());
            peers.push(s);
        }
        held.push(c);
    }
    // 140 control connections with a UDP allocation each (two descriptors each), from three addresses.
    for i in 0..140u8 {
        let mut c = ctl_from([127, 0, 6, 1 + i % 3]);
        if c.try_allocate_udp().is_none() {
            break;
        }
        held.push(c);
    }
    std::thread::sleep(Duration::from_secs(2));
    let m = relay.metrics();
    let allocations: u64 =
        ["udp", "tcp", "tls"].iter().map(|t| m.value(&format!("natkit_relay_allocations{{transport=\"{t}\"}}"))).sum();
    // A UDP client elsewhere, with the allocation cap not reached: it must be served.
    let refused = udp_allocate_from([127, 0, 8, 1], server);
    assert_eq!(
        refused,
        None,
        "a UDP Allocate refused with {allocations} allocations, {} peer connections and {} connections open",
        m.value("natkit_relay_tcp_peer_connections"),
        m.value("natkit_relay_connections{transport=\"tcp\"}")
    );
    drop(peers);
}
