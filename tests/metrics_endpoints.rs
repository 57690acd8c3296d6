//! The `--metrics` endpoints of `natkit relay` and `natkit turn-alloc --every`
//! under hostile clients: a request cut in pieces is answered once it is
//! whole (not after the first read), an idle connection is closed without an
//! answer, and a crowd of idle connections from one address does not keep a
//! real scraper out.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use common::relay::Relay;
use common::relay_server::RelayServer;

/// Waits until `addr` accepts TCP (bounded).
fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Everything the server sends until it closes (bounded by a read timeout).
fn read_all(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A request written in three pieces with pauses: nothing may come back
/// before the head is complete, then one whole 200 with the metrics.
fn request_in_pieces_is_answered_whole(addr: &str, metric: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metr").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("{addr} answered a third of a request head: {other:?}"),
    }
    s.write_all(b"ics HTTP/1.1\r\nHost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"Accept: text/plain\r\n\r\n").unwrap();
    let text = read_all(&mut s);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{addr}: {text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(body.len(), len, "the whole body");
    assert!(body.contains(metric), "{addr}: no {metric} in\n{body}");
}

/// A connection that never sends a request is closed, with no answer, after the header timeout.
fn idle_connection_is_closed_without_an_answer(addr: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    closed_unanswered(&mut s, &format!("{addr}, a connection that sent nothing past its header timeout"));
}

/// The server closes `s` (within a bounded wait) without sending a byte.
fn closed_unanswered(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("{what}: answered {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => panic!("{what}: neither answered nor closed: {e}"),
    }
}

/// 500 idle connections from 127.0.0.2, then a real scrape from 127.0.0.1.
fn crowd_of_idle_connections_does_not_stop_a_scrape(addr: &str, metric: &str) {
    let target: SocketAddr = addr.parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..500 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        // Refused ones are closed by the server at once; the connect itself still succeeds (backlog).
        if s.connect_timeout(&target.into(), Duration::from_secs(2)).is_ok() {
            idle.push(s);
        }
    }
    assert!(idle.len() >= 100, "only {} idle connections opened", idle.len());
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let text = read_all(&mut s);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{addr} with 500 idle connections open: {text:?}");
    assert!(text.contains(metric));
    drop(idle);
}

#[test]
fn relay_metrics_read_the_whole_head_close_idle_clients_and_cap_connections() {
    let relay = RelayServer::start(&["--user", "a:b", "--metrics-header-timeout", "1"]);
    let maddr = relay.metrics_addr.clone();
    request_in_pieces_is_answered_whole(&maddr, "natkit_relay_allocations");
    idle_connection_is_closed_without_an_answer(&maddr);
    crowd_of_idle_connections_does_not_stop_a_scrape(&maddr, "natkit_relay_allocations");
    drop(relay);
}

/// `turn-alloc --every --metrics`, killed on drop.
struct Probe(Child);

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Probe {
    /// `turn-alloc --every 60` against `relay` with its metrics on a free port and `extra` flags;
    /// returns once the metrics endpoint listens.
    fn start(relay: &Relay, extra: &[&str]) -> (Probe, String) {
        let maddr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_natkit"))
            .args(["turn-alloc", &relay.addr(), "-u", "alice", "-p", "pw", "--realm", "lab", "--packets", "5"])
            .args(["--every", "60", "--metrics", &maddr])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting turn-alloc --every");
        let probe = Probe(child);
        wait_listening(&maddr);
        (probe, maddr)
    }
}

#[test]
fn probe_metrics_read_the_whole_head_close_idle_clients_and_cap_connections() {
    let relay = Relay::start(&["--realm", "lab", "--user", "alice:pw"]);
    let (_probe, maddr) = Probe::start(&relay, &[]);
    request_in_pieces_is_answered_whole(&maddr, "probe_");
    // Another path is 404, as before.
    let mut s = TcpStream::connect(&maddr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(read_all(&mut s).starts_with("HTTP/1.1 404"));
    idle_connection_is_closed_without_an_answer(&maddr);
    crowd_of_idle_connections_does_not_stop_a_scrape(&maddr, "probe_");
}

/// The probe's limits are flags: with `--metrics-max-connections 8` one
/// address holds one connection, so a second from it is closed unanswered
/// while the first idles; once the first is gone, a scrape is answered.
#[test]
fn probe_metrics_limits_are_flags() {
    let relay = Relay::start(&["--realm", "lab", "--user", "alice:pw"]);
    let (_probe, maddr) = Probe::start(&relay, &["--metrics-max-connections", "8", "--metrics-header-timeout", "30"]);
    let first = TcpStream::connect(&maddr).unwrap();
    let mut second = TcpStream::connect(&maddr).unwrap();
    let _ = second.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    closed_unanswered(&mut second, "a second connection from one address under --metrics-max-connections 8");
    drop(first);
    // The slot is given back when the server sees the close; ask until it has.
    let mut answered = String::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(&maddr).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        answered = read_all(&mut s);
        if answered.starts_with("HTTP/1.1 200 OK") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered.contains("probe_"), "no scrape answered after the idle connection closed: {answered:?}");
    assert!(
        !Command::new(env!("CARGO_BIN_EXE_natkit"))
            .args(["turn-alloc", "127.0.0.1:3478", "-u", "a", "-p", "b", "--metrics-max-connections", "8"])
            .output()
            .unwrap()
            .status
            .success(),
        "--metrics-max-connections without --metrics must be refused"
    );
}
