//! `natkit signal`'s socket.io door (`/socket.io/`, socketioxide) attacked the
//! way a public server is, against the real binary, with raw clients: an
//! oversized WebSocket message, a CONNECT and an event in one polling payload
//! (racing socketioxide's connect), and polling sessions that outlive their
//! TCP connection (the per-address cap counts TCP connections at accept).

mod common;
#[path = "common/raw_clients.rs"]
mod raw_clients;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::signal::{LogOnPanic, SignalServer, metric, metric_settles, metrics_of, rt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One line of /proc/PID/status, in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// A kept-alive HTTP/1.1 connection, requests written and answers read raw.
struct Http {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(server: SocketAddr) -> Http {
        Http { s: TcpStream::connect(server).await.expect("connect"), buf: Vec::new() }
    }

    async fn connect_from(source: IpAddr, server: SocketAddr) -> Http {
        Http { s: raw_clients::connect_from(source, server).await.expect("connect from"), buf: Vec::new() }
    }

    /// One request; the status line and the body (by Content-Length).
    async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (String, String) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain;charset=UTF-8\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.s.write_all(&req).await.expect("writing a request");
        tokio::time::timeout(Duration::from_secs(10), self.response()).await.expect("an answer in time")
    }

    async fn response(&mut self) -> (String, String) {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while self.buf.len() < head_end + len {
            self.fill().await;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + len]).to_string();
        self.buf.drain(..head_end + len);
        (head.lines().next().unwrap_or("").to_string(), body)
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.s.read(&mut chunk).await.expect("reading an answer");
        assert!(n > 0, "the server closed the connection: {}", String::from_utf8_lossy(&self.buf));
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// A new Engine.IO v4 polling session: (status line, session id if one was opened, body).
    async fn open_session(&mut self) -> (String, Option<String>, String) {
        let (status, body) = self.request("GET", "/socket.io/?EIO=4&transport=polling", b"").await;
        let sid = body.split("\"sid\":\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_string);
        (status, sid, body)
    }
}

/// A client WebSocket frame (FIN, masked with a zero key: the payload as is).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// What the server sent after the oversized message, until it closed or `wait` passed.
enum Outcome {
    Closed,
    /// The server read the whole message and answered this text.
    Answered(String),
    StillOpen,
}

async fn outcome(s: &mut TcpStream, wait: Duration) -> Outcome {
    let mut got = Vec::new();
    let r = tokio::time::timeout(wait, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
            let text = String::from_utf8_lossy(&got).to_string();
            if text.contains("signal_error") {
                return Some(text);
            }
        }
    })
    .await;
    match r {
        Ok(None) => Outcome::Closed,
        Ok(Some(t)) => Outcome::Answered(t),
        Err(_) => Outcome::StillOpen,
    }
}

/// Before the fix socketioxide's WebSocket transport used tungstenite's
/// defaults (messages up to 64 MiB, frames up to 16 MiB) whatever the
/// server's caps, so one 15 MiB frame was read whole, parsed into a JSON tree
/// (`[0,0,…]`: 16 bytes of `Value` per two bytes of text) and only then
/// refused as `frame_too_large`, with the connection kept: the server's peak
/// resident set went from 13 MB to about 600 MB for one message, and 64
/// connections per address can each send one. Now a message over the hard
/// cap (max(4 × --max-frame, 1 MiB), as on `/ws`) ends the connection
/// before it is buffered.
#[test]
fn a_socketio_websocket_message_over_the_hard_cap_closes_the_connection_unread() {
    const MIB: usize = 1 << 20;
    let server = SignalServer::start(&[]);
    let _log = LogOnPanic(&server);
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().expect("addr");
    rt().block_on(async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("upgrade request");
        s.write_all(&client_frame(1, b"40")).await.expect("CONNECT");
        // The 101, the open packet and the CONNECT answer.
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut chunk = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("40{") {
                let n = s.read(&mut chunk).await.expect("reading the handshake");
                assert!(n > 0, "closed during the handshake: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("the socket.io CONNECT in time");
        let before = status_kib(server.pid(), "VmHWM");

        // 15 MiB of `[0,0,0,…]` in one frame, under tungstenite's default frame cap.
        let mut body = b"42[\"offer\",[".to_vec();
        body.extend(std::iter::repeat_n(*b"0,", 15 * MIB / 2).flatten());
        body.extend_from_slice(b"0]]");
        // The server may close while this is still being written: that is the point.
        let _ = s.write_all(&client_frame(1, &body)).await;
        let outcome = outcome(&mut s, Duration::from_secs(20)).await;
        let after = status_kib(server.pid(), "VmHWM");
        eprintln!("signal: a 15 MiB socket.io message: server peak RSS {before} KiB -> {after} KiB");
        match outcome {
            Outcome::Closed => {}
            Outcome::Answered(t) => panic!(
                "the server read the 15 MiB message and answered (peak RSS {before} -> {after} KiB): {}",
                &t[t.len().saturating_sub(200)..]
            ),
            Outcome::StillOpen => panic!("the connection is still open 20 s after a 15 MiB message"),
        }
        assert!(after < before + 64 * 1024, "the server's peak RSS grew from {before} to {after} KiB for one message");

        // And the door still works.
        let mut c = raw_clients::RawSio::connect(&addr.to_string(), raw_clients::Eio::V4, None)
            .await
            .expect("a socket.io client after the attack");
        c.join("after").await;
    });
}

/// Before the fix, a session whose first polling payload held the CONNECT
/// (`40`) and an event (`\x1e42[…]`) left a socket behind forever:
/// socketioxide connects on a task of its own, the event found no socket yet
/// and closed the Engine.IO session, the connect then failed after natkit's
/// connect middleware had registered the connection, and nothing ever
/// unregistered it (its outbox, writer task and gauge stayed: 200 of 200
/// sessions here, long after every one had closed; a flood of them grows the
/// server without bound). Now a connection whose connect fails is cleaned up
/// by its own writer task.
#[test]
fn a_connect_and_an_event_in_one_polling_payload_leave_nothing_behind() {
    const SESSIONS: usize = 200;
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    let server =
        SignalServer::start(&["--metrics", &metrics_addr, "--ping-interval", "1", "--max-conns-per-ip", "1000"]);
    let _log = LogOnPanic(&server);
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().expect("addr");
    let gauge = "natkit_signal_connections{transport=\"socketio\"}";
    rt().block_on(async {
        let mut http = Http::connect(addr).await;
        for i in 0..SESSIONS {
            let (status, sid, body) = http.open_session().await;
            let sid = sid.unwrap_or_else(|| panic!("session {i}: {status} {body}"));
            let payload = format!("40\u{1e}42[\"createAndJoinRoom\",{{\"room\":\"race{i}\"}}]");
            let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
            let (status, _) = http.request("POST", &path, payload.as_bytes()).await;
            assert!(status.contains("200"), "POST {i}: {status}");
        }
        drop(http);
        // Nobody polls: every session is gone within two ping intervals; so must every socket be.
        let left = metric_settles(&metrics_addr, gauge, 0, Duration::from_secs(20)).await;
        assert_eq!(left, 0, "{left} of {SESSIONS} socket.io connections still registered 20 s after they closed");
        let opened = metric(&metrics_of(&metrics_addr), "natkit_signal_connections_total{transport=\"socketio\"}");
        eprintln!("signal: {SESSIONS} racing sessions, {opened} reached the connect middleware, 0 left");
    });
}

/// Before the fix, the per-address cap counted TCP connections at accept,
/// and a socket.io polling session is no TCP connection: one kept-alive
/// connection opened session after session (about 1,000 a second, each
/// alive for two ping intervals after its last poll, each able to join a
/// room), past `--max-conns-per-ip` and `--max-conns` (here the 5th of 4
/// was opened). Now each session holds a slot of its own per address and in
/// total, counted the same way, until the session ends.
#[test]
fn polling_sessions_count_toward_the_per_address_cap_after_their_tcp_connection_is_gone() {
    const CAP: usize = 4;
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    let cap = CAP.to_string();
    // Sessions that never CONNECT end at the header timeout, sessions nobody polls after two ping intervals.
    let server = SignalServer::start(&[
        "--metrics",
        &metrics_addr,
        "--ping-interval",
        "1",
        "--header-timeout",
        "2",
        "--max-conns-per-ip",
        &cap,
    ]);
    let _log = LogOnPanic(&server);
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().expect("addr");
    rt().block_on(async {
        let mut http = Http::connect(addr).await;
        for i in 0..CAP {
            let (status, sid, body) = http.open_session().await;
            assert!(sid.is_some(), "session {i} of {CAP}: {status} {body}");
        }
        let (status, sid, body) = http.open_session().await;
        assert!(sid.is_none() && status.contains("503"), "session {} of {CAP}: {status} {body}", CAP + 1);
        assert!(body.contains("too_many_connections"), "{body}");
        // Engine.IO also answers at the path without its trailing slash: the same session, the same cap.
        let (status, _) = http.request("GET", "/socket.io?EIO=4&transport=polling", b"").await;
        assert!(status.contains("503"), "a handshake at /socket.io (no slash) past the cap: {status}");
        // The TCP connection is not what holds them.
        drop(http);
        let mut again = Http::connect(addr).await;
        let (status, sid, _) = again.open_session().await;
        assert!(sid.is_none() && status.contains("503"), "a new TCP connection, same sessions: {status}");
        // Another address is not affected.
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        let mut theirs = Http::connect_from(other, addr).await;
        let (status, sid, _) = theirs.open_session().await;
        assert!(sid.is_some(), "another address: {status}");
        let m = metrics_of(&metrics_addr);
        assert!(metric(&m, "natkit_signal_socketio_sessions_refused_total{reason=\"per_ip\"}") >= 2, "{m}");
        // These sessions end (never polled, never connected to the namespace) and give their slots back.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, sid, _) = again.open_session().await;
            if sid.is_some() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "slots never freed: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}
