//! `natkit relay` under the attacks of issue #13 that target its connections
//! and its process (connection floods, idle TLS, draining, a coturn config,
//! a port held by another process), against the real binary on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::relay_server::RelayServer;
use common::{free_port, tools};
use natkit::stun::message::{decode, encode, new_transaction_id};
use stun_rs::attributes::stun::{MessageIntegrity, Nonce, Realm, UserName};
use stun_rs::attributes::turn::{Data, LifeTime, RequestedTrasport, XorPeerAddress};
use stun_rs::methods::{ALLOCATE, CREATE_PERMMISSION, REFRESH, SEND};
use stun_rs::{
    Algorithm, AlgorithmId, HMACKey, MessageClass, MessageMethod, StunAttribute, StunMessage, StunMessageBuilder,
    TransactionId,
};

/// `count` TCP connections from source IP `from`, each sending the first 6
/// bytes of a STUN Binding request and then nothing.
fn half_open(from: [u8; 4], to: SocketAddr, count: usize) -> Vec<TcpStream> {
    let header = [0x00u8, 0x01, 0x00, 0x00, 0x21, 0x12];
    (0..count)
        .filter_map(|_| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.bind(&SocketAddr::from((from, 0)).into()).ok()?;
            s.connect_timeout(&to.into(), Duration::from_secs(5)).ok()?;
            let mut t: TcpStream = s.into();
            let _ = t.write_all(&header);
            Some(t)
        })
        .collect()
}

/// True once the relay has closed `s` (EOF or reset); false if it is still open after `wait`.
fn closed_by_relay(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// One STUN Binding request over a fresh TCP connection from `from`; true when answered.
fn tcp_binding(from: [u8; 4], to: SocketAddr) -> bool {
    let id = natkit::stun::message::new_transaction_id();
    let req = natkit::stun::message::binding_request(id);
    let Ok(sock) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None) else { return false };
    if sock.bind(&SocketAddr::from((from, 0)).into()).is_err()
        || sock.connect_timeout(&to.into(), Duration::from_secs(5)).is_err()
    {
        return false;
    }
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    if s.write_all(&req).is_err() {
        return false;
    }
    let mut head = [0u8; 20];
    s.read_exact(&mut head).is_ok() && head[0..2] == [0x01, 0x01] && head[8..20] == id[..]
}

/// `turnutils_uclient -y` over UDP: two clients of the relay send to each other
/// through it; returns (sent, received).
fn uclient_udp(port: u16) -> (u64, u64, String) {
    let bin = tools::require("turnutils_uclient", "coturn");
    let out = Command::new("timeout")
        .arg("60")
        .arg(bin)
        .args(["-y", "-u", "alice", "-w", "wonderland", "-p", &port.to_string()])
        .args(["-n", "30", "-m", "2", "-l", "120", "-z", "5", "127.0.0.1"])
        .output()
        .expect("running turnutils_uclient");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let num = |key: &str| -> u64 {
        text.rfind(key)
            .map(|i| text[i + key.len()..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>())
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    };
    (num("tot_send_msgs="), num("tot_recv_msgs="), text)
}

/// The test process itself needs more than 1,024 descriptors for the flood.
fn raise_own_limit() {
    assert!(natkit::net::conn_limit::raise_nofile_limit() >= 2_000, "the test needs `ulimit -Hn` of 2000 or more");
}

const USER: &[&str] = &["--user", "alice:wonderland", "--realm", "lab"];

#[test]
fn a_flood_of_half_open_tcp_connections_under_1024_descriptors_leaves_udp_and_new_clients_served() {
    raise_own_limit();
    let mut relay = RelayServer::start_limited(Some(1024), USER);
    let target = relay.addr();

    // 1,100 connections that each send 6 bytes of a STUN header and stop, from
    // ten source addresses (110 each: more than the per-IP cap of 100).
    let mut flood = Vec::new();
    for i in 1..=10u8 {
        flood.extend(half_open([127, 0, 1, i], target, 110));
    }
    assert_eq!(flood.len(), 1_100, "every flood connection was at least accepted by the kernel");

    // UDP is untouched: two clients allocate and relay every message through the relay.
    let (sent, received, text) = uclient_udp(relay.port);
    assert!(sent >= 2 * 30, "UDP clients could not send during the flood:\n{text}");
    assert_eq!(received, sent, "UDP relaying lost messages during the flood:\n{text}");

    // Not spinning: over ~3 s a busy loop would burn ~300 ticks; an idle relay a handful.
    let before = relay.cpu_ticks();
    std::thread::sleep(Duration::from_secs(3));
    let burnt = relay.cpu_ticks() - before;
    assert!(burnt < 50, "the relay used {burnt} CPU ticks in 3 s while the flood sat idle");

    // Every half-open connection is closed: refused at once by a cap, or after the
    // first-message timeout (10 s by default).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut open = 0;
    for s in &mut flood {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        if !closed_by_relay(s, left) {
            open += 1;
        }
    }
    assert_eq!(open, 0, "half-open connections the relay never closed");

    // A new TCP client is served.
    assert!(tcp_binding([127, 0, 0, 2], target), "a legitimate TCP client was not answered after the flood");

    let m = relay.metrics();
    let timed_out = m.value("natkit_relay_connections_closed_total{reason=\"first_message_timeout\"}");
    let per_ip = m.value("natkit_relay_connections_refused_total{reason=\"per_ip\"}");
    let total = m.value("natkit_relay_connections_refused_total{reason=\"total\"}");
    assert!(timed_out > 0 && per_ip > 0 && total > 0, "caps and timeout all counted:\n{m}");
    assert_eq!(timed_out + per_ip + total, 1_100, "every flood connection is counted once:\n{m}");
    assert!(relay.alive());
    let out = relay.stop();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("file descriptors 1024"), "the start-up line reports the descriptor limit:\n{err}");
    assert!(err.contains("caps --max-allocations"), "a warning says the limit caps the allocations:\n{err}");
}

/// A TLS client of `port` that trusts anything (the test's self-signed certificate).
async fn tls_connect(port: u16) -> natkit::net::stream::StreamConn {
    let tls = natkit::net::tls::TlsClient::new(&natkit::net::tls::TlsOptions { insecure: true, ca: None }).unwrap();
    let host = natkit::net::server_spec::Host::Ip("127.0.0.1".parse().unwrap());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    natkit::net::stream::connect(addr, None, &host, Some(&tls), Duration::from_secs(5)).await.expect("TLS handshake")
}

/// True when the relay closes `conn` within `wait` (EOF or error), false if it stays open.
async fn tls_closed_within(conn: &mut natkit::net::stream::StreamConn, wait: Duration) -> bool {
    matches!(tokio::time::timeout(wait, conn.recv_frame()).await, Ok(Err(_)))
}

#[tokio::test]
async fn idle_tls_connections_are_closed_after_the_handshake_and_after_their_last_message() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::coturn::self_signed_cert(dir.path());
    let tls_port = free_port();
    let tls = format!("127.0.0.1:{tls_port}");
    let mut relay = RelayServer::start_limited(
        None,
        &[
            "--tls-listen",
            &tls,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--first-message-timeout",
            "2",
            "--idle-timeout",
            "3",
            "--tls-handshake-timeout",
            "2",
        ],
    );
    // Handshake done, then nothing.
    let mut silent = tls_connect(tls_port).await;
    // One Binding answered, then nothing.
    let mut talked = tls_connect(tls_port).await;
    let id = natkit::stun::message::new_transaction_id();
    talked.send(&natkit::stun::message::binding_request(id)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), talked.recv_frame()).await.unwrap().unwrap();
    assert_eq!(answer[8..20], id[..], "the Binding request is answered over TLS");
    // TCP connected, no ClientHello.
    let mut no_hello = std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap();

    assert!(tls_closed_within(&mut silent, Duration::from_secs(20)).await, "silent TLS connection never closed");
    assert!(tls_closed_within(&mut talked, Duration::from_secs(20)).await, "idle TLS connection never closed");
    assert!(
        tokio::task::spawn_blocking(move || closed_by_relay(&mut no_hello, Duration::from_secs(20))).await.unwrap(),
        "a TCP connection that never starts the TLS handshake was never closed"
    );
    let m = relay.metrics();
    assert_eq!(m.value("natkit_relay_connections_closed_total{reason=\"first_message_timeout\"}"), 1, "{m}");
    assert_eq!(m.value("natkit_relay_connections_closed_total{reason=\"idle_timeout\"}"), 1, "{m}");
    assert_eq!(m.value("natkit_relay_connections_closed_total{reason=\"tls_handshake_timeout\"}"), 1, "{m}");
    assert_eq!(m.value("natkit_relay_connections{transport=\"tls\"}"), 0, "{m}");
    assert!(relay.alive());
    relay.stop();
}

// ---- drain (SIGTERM) ----

/// A TURN client over UDP with long-term credentials alice/wonderland in realm `lab`.
struct Turn {
    sock: std::net::UdpSocket,
    server: SocketAddr,
    nonce: String,
}

fn error_code(m: &StunMessage) -> Option<u16> {
    m.attributes().iter().find_map(|a| a.as_error_code().ok()).map(|e| e.error_code().error_code())
}

impl Turn {
    fn new(server: SocketAddr) -> Turn {
        Turn::from_ip(server, [127, 0, 0, 1])
    }

    /// A client whose socket is bound to `ip` (any 127.0.0.0/8 address works on loopback).
    fn from_ip(server: SocketAddr, ip: [u8; 4]) -> Turn {
        let sock = std::net::UdpSocket::bind(SocketAddr::from((ip, 0))).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut t = Turn { sock, server, nonce: String::new() };
        let m = t.transact(ALLOCATE, vec![RequestedTrasport::new(stun_rs::protocols::UDP).into()], false);
        assert_eq!(error_code(&m), Some(401), "the first Allocate is challenged");
        t.nonce = m.attributes().iter().find_map(|a| a.as_nonce().ok()).expect("NONCE").as_str().to_string();
        t
    }

    fn request(&self, method: MessageMethod, attrs: Vec<StunAttribute>, signed: bool) -> (Vec<u8>, [u8; 12]) {
        let id = new_transaction_id();
        let mut b = StunMessageBuilder::new(method, MessageClass::Request).with_transaction_id(TransactionId::from(id));
        for a in attrs {
            b = b.with_attribute(a);
        }
        if signed {
            let key = HMACKey::new_long_term("alice", "lab", "wonderland", Algorithm::from(AlgorithmId::MD5)).unwrap();
            b = b
                .with_attribute(UserName::new("alice").unwrap())
                .with_attribute(Realm::new("lab").unwrap())
                .with_attribute(Nonce::new(&self.nonce).unwrap())
                .with_attribute(MessageIntegrity::new(key));
        }
        (encode(&b.build()), id)
    }

    fn transact(&self, method: MessageMethod, attrs: Vec<StunAttribute>, signed: bool) -> StunMessage {
        let (req, id) = self.request(method, attrs, signed);
        let mut buf = [0u8; 2048];
        for _ in 0..6 {
            self.sock.send_to(&req, self.server).unwrap();
            while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                if n >= 20 && buf[8..20] == id {
                    return decode(&buf[..n]).expect("the relay's answer decodes");
                }
            }
        }
        panic!("no answer from the relay");
    }

    /// Allocates; returns the relayed address.
    fn allocate(&self) -> Result<SocketAddr, StunMessage> {
        let m = self.transact(ALLOCATE, vec![RequestedTrasport::new(stun_rs::protocols::UDP).into()], true);
        match m.attributes().iter().find_map(|a| a.as_xor_relayed_address().ok()) {
            Some(r) => Ok(*r.socket_address()),
            None => Err(m),
        }
    }

    fn permit(&self, peer: SocketAddr) {
        let m = self.transact(CREATE_PERMMISSION, vec![XorPeerAddress::from(peer).into()], true);
        assert_eq!(m.class(), MessageClass::SuccessResponse, "CreatePermission {peer}: {m:?}");
    }

    fn refresh(&self, lifetime: u32) -> StunMessage {
        self.transact(REFRESH, vec![LifeTime::new(lifetime).into()], true)
    }

    /// Sends `data` to `peer` in a Send indication and waits for a Data indication carrying it (true if it came).
    fn relay_to(&self, other: &Turn, peer: SocketAddr, data: &[u8]) -> bool {
        let (ind, _) = {
            let id = new_transaction_id();
            let b = StunMessageBuilder::new(SEND, MessageClass::Indication)
                .with_transaction_id(TransactionId::from(id))
                .with_attribute(XorPeerAddress::from(peer))
                .with_attribute(Data::new(data));
            (encode(&b.build()), id)
        };
        let mut buf = [0u8; 2048];
        for _ in 0..6 {
            self.sock.send_to(&ind, self.server).unwrap();
            while let Ok((n, _)) = other.sock.recv_from(&mut buf) {
                if let Ok(m) = decode(&buf[..n])
                    && m.attributes().iter().any(|a| a.as_data().is_ok_and(|d| d.as_bytes() == data))
                {
                    return true;
                }
            }
        }
        false
    }
}

#[test]
fn sigterm_drains_live_allocations_keep_relaying_a_new_one_gets_508_and_the_relay_ends_with_them() {
    let mut relay = RelayServer::start(&[USER, &["--json", "--drain-timeout", "120"]].concat());
    let (a, b) = (Turn::new(relay.addr()), Turn::new(relay.addr()));
    let (ra, rb) = (a.allocate().expect("A allocates"), b.allocate().expect("B allocates"));
    a.permit(rb);
    b.permit(ra);
    assert!(a.relay_to(&b, rb, b"before the drain"));
    assert_eq!(relay.metrics().value("natkit_relay_draining"), 0);

    relay.signal(libc::SIGTERM);
    assert!(relay.metric_becomes("natkit_relay_draining", 1), "the relay never said it drains");
    // New allocations are refused; the live ones relay both ways and refresh.
    let c = Turn::new(relay.addr());
    let refused = c.allocate().expect_err("no new allocation while draining");
    assert_eq!(error_code(&refused), Some(508));
    assert!(a.relay_to(&b, rb, b"during the drain, A to B"));
    assert!(b.relay_to(&a, ra, b"during the drain, B to A"));
    assert_eq!(a.refresh(600).class(), MessageClass::SuccessResponse, "refresh during the drain");
    let m = relay.metrics();
    assert_eq!(m.value("natkit_relay_allocations{transport=\"udp\"}"), 2, "{m}");
    assert_eq!(m.value("natkit_relay_error_responses_total{code=\"508\"}"), 1, "{m}");
    assert!(relay.alive(), "the relay waits for its allocations");

    // The last allocation ends: the relay stops by itself, with its summary.
    assert_eq!(a.refresh(0).class(), MessageClass::SuccessResponse);
    assert_eq!(b.refresh(0).class(), MessageClass::SuccessResponse);
    let out = relay.exits_by_itself(Duration::from_secs(10)).expect("the relay stops once drained");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert_eq!(v["allocations_created"], 2, "{v}");
    assert_eq!(v["allocations_ended"], 2, "{v}");
}

#[test]
fn while_draining_alternate_server_gets_a_300_and_a_second_signal_stops_at_once() {
    let mut relay = RelayServer::start(&[USER, &["--alternate-server", "203.0.113.9:3478"]].concat());
    let a = Turn::new(relay.addr());
    a.allocate().expect("A allocates");
    relay.signal(libc::SIGTERM);
    assert!(relay.metric_becomes("natkit_relay_draining", 1), "the relay never said it drains");
    let m = Turn::new(relay.addr()).allocate().expect_err("no new allocation while draining");
    assert_eq!(error_code(&m), Some(300));
    let alt = m.attributes().iter().find_map(|a| a.as_alternate_server().ok()).map(|a| *a.socket_address());
    assert_eq!(alt, Some("203.0.113.9:3478".parse().unwrap()), "ALTERNATE-SERVER names the other relay");
    // The allocation would hold the drain for --drain-timeout (600 s): a second signal ends it now.
    relay.signal(libc::SIGTERM);
    let out = relay.exits_by_itself(Duration::from_secs(10)).expect("a second SIGTERM stops the relay");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

// ---- coturn turnserver.conf fidelity ----

/// Allocates once from each of `n` clients (each on its own source address, so
/// only the per-user quota is in play); returns the error codes of the refusals.
fn allocate_from_many(server: SocketAddr, n: u8) -> Vec<Option<u16>> {
    (1..=n).filter_map(|i| Turn::from_ip(server, [127, 0, 3, i]).allocate().err()).map(|m| error_code(&m)).collect()
}

fn conf_file(dir: &tempfile::TempDir, extra: &str) -> String {
    let path = dir.path().join("turnserver.conf");
    std::fs::write(&path, format!("lt-cred-mech\nuser=alice:wonderland\nrealm=lab\n{extra}")).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_coturn_conf_without_user_quota_is_warned_about_and_user_quota_0_means_unlimited() {
    let dir = tempfile::tempdir().unwrap();
    // coturn's meaning of a file without user-quota is "unlimited"; natkit keeps its
    // default of 100 but says so at start, with how to keep coturn's.
    let mut relay = RelayServer::start(&["--config", &conf_file(&dir, "")]);
    let refused = allocate_from_many(relay.addr(), 101);
    assert_eq!(refused, vec![Some(486)], "the 101st allocation of one user is over natkit's default quota");
    let err = String::from_utf8_lossy(&relay.stop().stderr).to_string();
    let line =
        err.lines().find(|l| l.contains("user-quota")).unwrap_or_else(|| panic!("no user-quota warning:\n{err}"));
    for needle in ["unlimited", "100", "user-quota=0"] {
        assert!(line.contains(needle), "the warning names coturn's meaning, natkit's and the fix ({needle}):\n{line}");
    }
    assert_eq!(err.lines().filter(|l| l.contains("user-quota")).count(), 1, "said once:\n{err}");

    let mut relay = RelayServer::start(&["--config", &conf_file(&dir, "user-quota=0\n")]);
    assert_eq!(allocate_from_many(relay.addr(), 120), vec![], "user-quota=0 is unlimited, as in coturn");
    let err = String::from_utf8_lossy(&relay.stop().stderr).to_string();
    assert!(!err.contains("user-quota"), "nothing to say when the file sets it:\n{err}");
}

// ---- a port held by another process (#17 item 8) ----

/// Runs `natkit relay ARGS` expecting it to exit at start (bounded: killed after 10 s);
/// returns its exit code (None when it had to be killed) and stderr.
fn relay_exits_at_start(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_natkit"))
        .arg("relay")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting natkit relay");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = matches!(child.try_wait(), Ok(None));
    if killed {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("relay output");
    let code = if killed { None } else { out.status.code() };
    (code, String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn a_udp_port_held_by_coturn_is_an_error_that_names_the_port_and_the_holder() {
    let coturn = common::coturn::Coturn::start(common::coturn::CoturnConfig::default());
    let listen = format!("127.0.0.1:{}", coturn.port);
    let (code, err) = relay_exits_at_start(&["--listen", &listen, "--user", "alice:wonderland"]);
    assert_eq!(code, Some(2), "natkit relay must not share coturn's port:\n{err}");
    assert!(err.contains(&listen) && err.contains("UDP"), "the error names the transport and port:\n{err}");
    assert!(err.contains("turnserver"), "the error names the process that holds the port:\n{err}");
    assert!(!err.contains("listening on"), "nothing is announced before every bind succeeded:\n{err}");
}

#[test]
fn a_reuseport_udp_socket_of_another_process_is_not_shared_and_a_busy_metrics_port_fails_before_listening() {
    // Another process's socket with SO_REUSEPORT: the kernel would let natkit's
    // SO_REUSEPORT sockets join it and split the traffic between the two.
    let port = free_port();
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    held.set_reuse_port(true).unwrap();
    held.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let (code, err) = relay_exits_at_start(&["--listen", &listen]);
    assert_eq!(code, Some(2), "natkit relay must not share a port:\n{err}");
    assert!(err.contains(&listen), "{err}");
    assert!(err.contains(&format!("pid {}", std::process::id())), "the holder (this test) is named:\n{err}");
    drop(held);

    // Every UDP and TCP bind succeeds, the metrics port does not: still no "listening on".
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let maddr = metrics_port.local_addr().unwrap().to_string();
    let (code, err) = relay_exits_at_start(&["--listen", &format!("127.0.0.1:{}", free_port()), "--metrics", &maddr]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&maddr), "{err}");
    assert!(!err.contains("listening on"), "nothing is announced before every bind succeeded:\n{err}");
}

/// The attack: one user's allocations fill a small `--ports` range (coturn configurations often
/// give a hundred ports or so); then every Allocate of anyone else is a 508, and each one logged a
/// warning ("cannot open a relayed socket: no free port"): a second identity (any TURN REST name)
/// wrote one log line per request, at whatever rate it sends. Before the fix: 200 Allocates, 200
/// warnings. Now the warning is written once a minute at most, with the count it stands for; the
/// 508s are still counted in natkit_relay_error_responses_total{code="508"}.
#[test]
fn allocates_refused_for_lack_of_ports_do_not_write_a_warning_each() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let range = format!("{port}-{port}");
    let mut relay = RelayServer::start(&[USER, &["--ports", &range]].concat());
    let first = Turn::from_ip(relay.addr(), [127, 0, 4, 1]);
    assert_eq!(first.allocate().expect("the one port").port(), port);
    let other = Turn::from_ip(relay.addr(), [127, 0, 4, 2]);
    for _ in 0..200 {
        let refused = other.allocate().expect_err("no port left");
        assert_eq!(error_code(&refused), Some(508));
    }
    assert_eq!(relay.metrics().value("natkit_relay_error_responses_total{code=\"508\"}"), 200);
    let out = relay.stop();
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings = err.lines().filter(|l| l.contains("cannot open a relayed socket")).count();
    assert!(warnings <= 2, "{warnings} warnings for 200 refused Allocates:\n{}", &err[..err.len().min(2000)]);
}
