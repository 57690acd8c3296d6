//! `natkit signal` attacked the way a public signaling server is (issue 14),
//! against the real binary: spoofed server-owned fields on every transport,
//! slowloris before the upgrade, foreign origins, TURN credentials on demand.

mod common;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/raw_clients.rs"]
mod raw_clients;

use common::signal::{LogOnPanic, SignalServer, metric, metrics_of, rt};
use raw_clients::{Eio, Pairs, RawSio, RawWs};
use serde_json::{Value, json};

/// One member of the room, on one of the three transports.
enum Member {
    Ws(RawWs),
    Sio(RawSio),
}

const KINDS: [&str; 3] = ["offer", "answer", "candidate"];
const CANDIDATE: &str = "candidate:1 1 udp 2122260223 127.0.0.1 9 typ host";

impl Member {
    async fn join(&mut self, room: &str) -> String {
        match self {
            Member::Ws(w) => w.join(room).await,
            Member::Sio(s) => s.join(room).await,
        }
    }

    /// Sends `kind` to `to` with a forged copy of every field the server sets.
    async fn send_forged(&mut self, kind: &str, to: &str, forged_from: &str) {
        match self {
            Member::Ws(w) => {
                // Written by hand: the forged keys come after the real ones, as in the reported attack.
                let body = if kind == "candidate" {
                    format!(r#""candidate":{{"candidate":"{CANDIDATE}","sdpMid":"0","sdpMLineIndex":0}}"#)
                } else {
                    format!(r#""sdp":"v=0 {kind}""#)
                };
                w.send(format!(
                    r#"{{"type":"{kind}","to":"{to}",{body},"x-note":{{"k":1}},"from":"{forged_from}","room":"r2"}}"#
                ))
                .await;
            }
            Member::Sio(s) => {
                let mut data = json!({"type":"leave","from":forged_from,"to":to,"room":"r2","x-note":{"k":1}});
                if kind == "candidate" {
                    data["candidate"] = json!({"sdpMid":"0","sdpMLineIndex":0,"sdp":CANDIDATE});
                } else {
                    data["sdp"] = json!(format!("v=0 {kind}"));
                }
                s.emit_raw(kind, &data.to_string()).await;
            }
        }
    }

    /// The next relayed `kind`: its members and raw text.
    async fn recv(&mut self, kind: &str) -> (Pairs, String) {
        match self {
            Member::Ws(w) => w.recv_type(kind).await,
            Member::Sio(s) => s.recv_event(kind).await,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Member::Ws(_) => "/ws",
            Member::Sio(_) => "socket.io",
        }
    }
}

#[test]
fn forged_from_room_and_type_never_reach_the_addressee_on_any_transport() {
    let server = SignalServer::start(&[]);
    let _log = LogOnPanic(&server);
    rt().block_on(async {
        let host = format!("127.0.0.1:{}", server.port);
        let mut members = [
            Member::Ws(RawWs::connect(&server.ws_url(), None).await.expect("/ws connect")),
            Member::Ws(RawWs::connect(&server.ws_url(), None).await.expect("/ws connect")),
            Member::Sio(RawSio::connect(&host, Eio::V4, None).await.expect("socket.io 4 connect")),
            Member::Sio(RawSio::connect(&host, Eio::V3, None).await.expect("socket.io 2 connect")),
        ];
        let mut ids = Vec::new();
        for m in members.iter_mut() {
            ids.push(m.join("r1").await);
        }
        // Every sender to every addressee on another (or the same) transport, each relayed type,
        // forging `from` as the addressee's other neighbour.
        for s in 0..members.len() {
            for r in 0..members.len() {
                if s == r {
                    continue;
                }
                let victim = (0..members.len()).find(|&i| i != s && i != r).expect("a third member");
                for kind in KINDS {
                    members[s].send_forged(kind, &ids[r], &ids[victim]).await;
                    let how = format!("{kind} {} -> {}", members[s].name(), members[r].name());
                    let (got, frame) = members[r].recv(kind).await;
                    got.assert_no_duplicates(&frame);
                    assert_eq!(got.once("from", &frame), &json!(ids[s]), "{how}: from is the sender's id: {frame}");
                    assert_eq!(got.once("to", &frame), &json!(ids[r]), "{how}: {frame}");
                    assert_eq!(got.once("room", &frame), &json!("r1"), "{how}: room is the sender's room: {frame}");
                    assert_eq!(got.once("x-note", &frame), &json!({"k":1}), "{how}: other fields stay: {frame}");
                    match &members[r] {
                        // On /ws the type is the frame's tag.
                        Member::Ws(_) => assert_eq!(got.once("type", &frame), &json!(kind), "{how}: {frame}"),
                        // On socket.io the event name is the type; the data has none.
                        Member::Sio(_) => assert_eq!(got.count("type"), 0, "{how}: a forged type is dropped: {frame}"),
                    }
                    if kind == "candidate" {
                        let c = got.once("candidate", &frame);
                        let c = c.as_object().unwrap_or_else(|| panic!("{how}: candidate is an object: {frame}"));
                        assert_eq!(c.get("candidate"), Some(&Value::from(CANDIDATE)), "{how}: {frame}");
                    } else {
                        assert_eq!(got.once("sdp", &frame), &json!(format!("v=0 {kind}")), "{how}: {frame}");
                    }
                }
            }
        }
    });
}

/// Raises this test process's soft descriptor limit to `want` (the attack needs more
/// than 1,024 sockets), raising the hard limit too when allowed; fails if it cannot.
fn raise_own_nofile(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0, "getrlimit");
        let raised = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max.max(want) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            let soft = libc::rlimit { rlim_cur: want.min(lim.rlim_max), rlim_max: lim.rlim_max };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &soft), 0, "setrlimit");
        }
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0, "getrlimit");
    }
    assert!(
        lim.rlim_cur >= want,
        "this test needs {want} file descriptors but the hard limit is {}; raise it (ulimit -Hn, LimitNOFILE=)",
        lim.rlim_max
    );
}

/// Polls the metrics (at most 5 s) until `sample` reads `want`; returns the last text.
async fn metric_reaches(addr: &str, sample: &str, want: u64) -> String {
    let mut text = metrics_of(addr);
    for _ in 0..50 {
        if metric(&text, sample) == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        text = metrics_of(addr);
    }
    text
}

/// Reads until the peer closes (EOF or reset); false if it is still open after `wait`.
async fn closes_within(s: &mut tokio::net::TcpStream, wait: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(wait, async {
        let mut buf = [0u8; 1024];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await
    .is_ok()
}

#[test]
fn half_sent_requests_from_many_addresses_neither_starve_a_join_nor_outlive_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    const ATTACKERS: usize = 11;
    const PER_ATTACKER: usize = 100;
    const PER_IP_CAP: usize = 64;
    common::tools::require("prlimit", "util-linux");
    raise_own_nofile(8192);
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    // The server at the descriptor limit a default systemd unit or shell gives (it cannot raise it).
    let server = SignalServer::start_in(
        &["prlimit", "--nofile=1024:1024", "--"],
        "127.0.0.1",
        &["--metrics", &metrics_addr, "--header-timeout", "20"],
    );
    assert!(
        server.log_shows("file-descriptor limit 1024", std::time::Duration::from_secs(5)),
        "the server reports its descriptor limit:\n{}",
        server.log_text()
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().expect("addr");
    rt().block_on(async {
        // 1,100 connections, each with an unfinished request head, from 11 addresses.
        let mut slow = Vec::new();
        for i in 0..ATTACKERS * PER_ATTACKER {
            let src = std::net::IpAddr::from([127, 0, 1, 1 + (i / PER_ATTACKER) as u8]);
            let mut s = raw_clients::connect_from(src, addr).await.expect("TCP connect (the kernel completes it)");
            // A refused one may already be closed: the write failing is fine.
            let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n").await;
            slow.push(s);
        }

        // Meanwhile two legitimate clients from other addresses meet and relay an offer.
        let ws = server.ws_url();
        let mut a = RawWs::connect_from([127, 0, 0, 2].into(), &ws, None)
            .await
            .unwrap_or_else(|e| panic!("a legitimate client connects during the flood: {e}\n{}", server.log_text()));
        let mut b = RawWs::connect_from([127, 0, 0, 3].into(), &ws, None).await.expect("second legitimate client");
        let id_a = a.join("legit").await;
        let id_b = b.join("legit").await;
        a.send(json!({"type":"offer","to":id_b,"sdp":"v=0 legit"}).to_string()).await;
        let (offer, frame) = b.recv_type("offer").await;
        assert_eq!(offer.once("from", &frame), &json!(id_a));

        // Each attacking address holds exactly its cap; the rest were refused at accept.
        let m = metrics_of(&metrics_addr);
        assert_eq!(metric(&m, "natkit_signal_tcp_connections"), (ATTACKERS * PER_IP_CAP + 2) as u64, "{m}");
        assert_eq!(
            metric(&m, "natkit_signal_connections_refused_total{reason=\"per_ip\"}"),
            (ATTACKERS * (PER_ATTACKER - PER_IP_CAP)) as u64,
            "{m}"
        );

        // Every slow connection is closed by the server: at once when refused, after the header timeout otherwise.
        let wait = std::time::Duration::from_secs(60);
        let closed = futures::future::join_all(slow.iter_mut().map(|s| closes_within(s, wait))).await;
        let still_open = closed.iter().filter(|c| !**c).count();
        assert_eq!(still_open, 0, "{still_open} half-sent requests still open\n{}", server.log_text());
        // (A slot is freed just after its socket closes: poll briefly.)
        let m = metric_reaches(&metrics_addr, "natkit_signal_tcp_connections", 2).await;
        assert_eq!(metric(&m, "natkit_signal_tcp_connections"), 2, "only the legitimate clients remain: {m}");

        // And they still talk.
        b.send(json!({"type":"answer","to":id_a,"sdp":"v=0 answer"}).to_string()).await;
        let (answer, frame) = a.recv_type("answer").await;
        assert_eq!(answer.once("from", &frame), &json!(id_b));
    });
}

/// The status line of a plain HTTP GET with an Origin header.
fn get_with_origin(addr: &str, path: &str, origin: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect for GET");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n").expect("GET");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).lines().next().unwrap_or_default().to_string()
}

/// Whether a `/ws` and a socket.io WebSocket from `origin` are refused with 403.
async fn refused(server: &SignalServer, origin: Option<&str>) -> (bool, bool) {
    let forbidden = |e: &dyn std::fmt::Display| {
        let e = e.to_string();
        assert!(e.contains("403"), "refused, but not with 403: {e}");
        true
    };
    let ws = match RawWs::connect(&server.ws_url(), origin).await {
        Ok(mut w) => {
            w.join("o").await;
            false
        }
        Err(e) => forbidden(&e),
    };
    let host = format!("127.0.0.1:{}", server.port);
    let sio = match RawSio::connect(&host, Eio::V4, origin).await {
        Ok(mut s) => {
            s.join("o").await;
            false
        }
        Err(e) => forbidden(&e),
    };
    (ws, sio)
}

#[test]
fn other_sites_pages_are_refused_with_403_and_counted_unless_allowed() {
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    let server = SignalServer::start(&["--metrics", &metrics_addr]);
    let _log = LogOnPanic(&server);
    let own = format!("http://127.0.0.1:{}", server.port);
    rt().block_on(async {
        // Non-browser clients send no Origin; the page's own origin is its Host.
        assert_eq!(refused(&server, None).await, (false, false), "no Origin is accepted");
        assert_eq!(refused(&server, Some(&own)).await, (false, false), "the page's own origin is accepted");
        assert_eq!(refused(&server, Some("https://evil.example")).await, (true, true), "another site is refused");
        assert_eq!(refused(&server, Some("null")).await, (true, true), "an opaque origin is refused");
        let other_port = format!("http://127.0.0.1:{}", server.port + 1);
        assert_eq!(refused(&server, Some(&other_port)).await, (true, true), "another port is another origin");
    });
    // socket.io's long-polling too.
    let addr = format!("127.0.0.1:{}", server.port);
    let status = get_with_origin(&addr, "/socket.io/?EIO=4&transport=polling", "https://evil.example");
    assert!(status.contains("403"), "polling from another site: {status}");
    let status = get_with_origin(&addr, "/socket.io/?EIO=4&transport=polling", &own);
    assert!(status.contains("200"), "polling from the page's own origin: {status}");
    let m = metrics_of(&metrics_addr);
    assert_eq!(metric(&m, "natkit_signal_origin_refused_total"), 7, "{m}");

    // --allow-origin names the sites that may use it; `*` lets every site.
    let server =
        SignalServer::start(&["--allow-origin", "https://app.example", "--allow-origin", "https://b.example:8443"]);
    let _log = LogOnPanic(&server);
    rt().block_on(async {
        assert_eq!(refused(&server, Some("https://app.example")).await, (false, false));
        assert_eq!(refused(&server, Some("https://APP.example:443")).await, (false, false), "default port, any case");
        assert_eq!(refused(&server, Some("https://b.example:8443")).await, (false, false));
        assert_eq!(refused(&server, Some("http://app.example")).await, (true, true), "the scheme is part of it");
        assert_eq!(refused(&server, Some("https://evil.example")).await, (true, true));
    });
    let server = SignalServer::start(&["--allow-origin", "*"]);
    rt().block_on(async {
        assert_eq!(refused(&server, Some("https://evil.example")).await, (false, false));
    });
}

/// The TURN username and credential a `/ws` client from `source` is handed.
async fn turn_credentials_for(server: &SignalServer, source: std::net::IpAddr, room: &str) -> (String, String) {
    let mut w = RawWs::connect_from(source, &server.ws_url(), None).await.expect("/ws connect");
    w.send(json!({"type":"join","room":room}).to_string()).await;
    let (created, text) = w.recv_type("created").await;
    let turn = created.once("ice_servers", &text)[0].clone();
    let field = |k: &str| turn[k].as_str().unwrap_or_else(|| panic!("no {k} in {text}")).to_string();
    (field("username"), field("credential"))
}

#[test]
fn one_address_gets_a_bounded_number_of_turn_credentials_however_often_it_connects() {
    const SECRET: &str = "s3cret";
    const TTL: u64 = 600;
    let ttl = TTL.to_string();
    let turn = ["--turn", "turn:127.0.0.1:3478?transport=udp", "--turn-secret", SECRET, "--turn-ttl", &ttl];
    let server = SignalServer::start(&turn);
    let _log = LogOnPanic(&server);
    // 127.0.0.1: the raw socket.io client connects from there too.
    let attacker = std::net::IpAddr::from([127, 0, 0, 1]);
    let other = std::net::IpAddr::from([127, 0, 0, 8]);
    rt().block_on(async {
        let mut usernames = std::collections::BTreeSet::new();
        for i in 0..40 {
            let (user, credential) = turn_credentials_for(&server, attacker, &format!("c{i}")).await;
            // Each one is a valid REST credential with at least half its lifetime left.
            assert_eq!(credential, natkit::turn::credentials::rest_password(SECRET, &user), "{user}");
            let expiry: u64 = user.split(':').next().and_then(|e| e.parse().ok()).expect("expiry:name");
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
            assert!(expiry >= now + TTL / 2 && expiry <= now + TTL, "{user}: expiry {expiry}, now {now}");
            usernames.insert(user);
        }
        // socket.io connections from the same address get the same ones.
        let host = format!("127.0.0.1:{}", server.port);
        let mut sio = RawSio::connect(&host, Eio::V4, None).await.expect("socket.io connect");
        sio.emit_raw("createAndJoinRoom", r#"{"room":"sio"}"#).await;
        let (created, text) = sio.recv_event("created").await;
        usernames.insert(created.once("ice_servers", &text)[0]["username"].as_str().expect("username").to_string());

        // Bounded: one TTL window's name (two when the test straddles a window edge), not one per connection.
        assert!(
            usernames.len() <= 2,
            "41 connections from one address got {} usernames: {usernames:?}",
            usernames.len()
        );
        // It is per address, not one name for everybody.
        let (theirs, _) = turn_credentials_for(&server, other, "o").await;
        assert!(!usernames.contains(&theirs), "another address shares {theirs}");
    });
}

/// The resident set of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A `/ws` client that costs the test almost nothing: the upgrade request and a
/// `join` frame written raw (masked with a zero key: the payload as is), then
/// the socket kept, never read.
async fn idle_ws_member(server: std::net::SocketAddr, room: usize) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server).await.expect("connect");
    let join = format!(r#"{{"type":"join","room":"idle{room}"}}"#);
    assert!(join.len() < 126);
    let mut req = format!(
        "GET /ws HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&[0x81, 0x80 | join.len() as u8, 0, 0, 0, 0]);
    req.extend_from_slice(join.as_bytes());
    s.write_all(&req).await.expect("upgrade request");
    // Wait for the 101 so the connection is really up before it is counted.
    let mut head = [0u8; 12];
    tokio::time::timeout(std::time::Duration::from_secs(60), s.read_exact(&mut head))
        .await
        .expect("101 in time")
        .expect("read 101");
    assert_eq!(&head, b"HTTP/1.1 101", "upgrade answered");
    s
}

#[test]
fn ten_thousand_idle_ws_members_cost_at_most_32_kib_each() {
    use futures::StreamExt;
    const WARM: usize = 200;
    const N: usize = 10_000;
    raise_own_nofile(12_000);
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    // Pings and timeouts far off: the members stay idle for the whole measurement.
    let server = SignalServer::start(&[
        "--metrics",
        &metrics_addr,
        "--max-conns",
        "15000",
        "--max-conns-per-ip",
        "15000",
        "--max-room",
        "2",
        "--ping-interval",
        "600",
        "--idle-timeout",
        "1200",
    ]);
    let _log = LogOnPanic(&server);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().expect("addr");
    let members = |range: std::ops::Range<usize>| {
        futures::stream::iter(range).map(move |i| idle_ws_member(addr, i / 2)).buffer_unordered(64).collect::<Vec<_>>()
    };
    rt().block_on(async {
        // Warm up allocator and runtime so the delta is per connection.
        let _warm = members(0..WARM).await;
        let m = metric_reaches(&metrics_addr, "natkit_signal_connections{transport=\"websocket\"}", WARM as u64).await;
        assert_eq!(metric(&m, "natkit_signal_connections{transport=\"websocket\"}"), WARM as u64, "{m}");
        let before = rss_kib(server.pid());
        let _idle = members(WARM..WARM + N).await;
        let total = (WARM + N) as u64;
        let m = metric_reaches(&metrics_addr, "natkit_signal_connections{transport=\"websocket\"}", total).await;
        assert_eq!(metric(&m, "natkit_signal_connections{transport=\"websocket\"}"), total, "{m}");
        // Every member joined (rooms of two).
        let m = metric_reaches(&metrics_addr, "natkit_signal_messages_received_total{type=\"join\"}", total).await;
        assert_eq!(metric(&m, "natkit_signal_messages_received_total{type=\"join\"}"), total, "{m}");
        let after = rss_kib(server.pid());
        let per_conn = (after.saturating_sub(before)) as f64 / N as f64;
        eprintln!("signal: {N} idle /ws members: RSS {before} KiB -> {after} KiB, {per_conn:.1} KiB each");
        assert!(per_conn <= 32.0, "{per_conn:.1} KiB per idle /ws connection (RSS {before} -> {after} KiB)");
    });
}

#[test]
fn running_out_of_descriptors_pauses_accepting_with_a_backoff_and_the_server_recovers() {
    use tokio::io::AsyncWriteExt;
    common::tools::require("prlimit", "util-linux");
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    // Caps above what 100 descriptors hold: here only the accept backoff stands between the flood and a spin.
    let server = SignalServer::start_in(
        &["prlimit", "--nofile=100:100", "--"],
        "127.0.0.1",
        &["--metrics", &metrics_addr, "--max-conns", "1000", "--max-conns-per-ip", "1000", "--header-timeout", "3"],
    );
    let _log = LogOnPanic(&server);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().expect("addr");
    rt().block_on(async {
        let mut slow = Vec::new();
        for _ in 0..200 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("TCP connect (the kernel completes it)");
            let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
            slow.push(s);
        }
        // Accepted in turns as descriptors free up; each closed at the header timeout.
        let wait = std::time::Duration::from_secs(120);
        let closed = futures::future::join_all(slow.iter_mut().map(|s| closes_within(s, wait))).await;
        assert!(closed.iter().all(|c| *c), "every half-sent request is closed in the end");
        assert!(
            server.log_shows("pausing new connections", std::time::Duration::from_secs(5)),
            "the exhaustion is logged"
        );
        let m = metrics_of(&metrics_addr);
        let paused = metric(&m, "natkit_signal_accept_paused_total");
        // Seconds of exhaustion at a growing pause (10 ms .. 1 s) are tens of pauses; a spin would be millions.
        assert!((1..200).contains(&paused), "accept paused {paused} times: {m}");
        // And it serves again.
        let ws = server.ws_url();
        let mut a = RawWs::connect(&ws, None).await.expect("connect after the flood");
        let mut b = RawWs::connect(&ws, None).await.expect("connect after the flood");
        let id_a = a.join("after").await;
        let id_b = b.join("after").await;
        a.send(json!({"type":"offer","to":id_b,"sdp":"v=0"}).to_string()).await;
        let (offer, frame) = b.recv_type("offer").await;
        assert_eq!(offer.once("from", &frame), &json!(id_a));
    });
}

/// Opens a socket.io polling session over a raw connection kept alive; returns it and the session id.
async fn polling_session(addr: std::net::SocketAddr) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect for polling");
    s.write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.expect("GET");
    // The open packet `0{"sid":"…",…}` ends the first response; read until its sid is complete.
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let sid = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let n = s.read(&mut buf).await.expect("reading the polling open packet");
            assert!(n > 0, "the server closed before the open packet: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(rest) = text.split("\"sid\":\"").nth(1)
                && let Some(end) = rest.find('"')
            {
                return rest[..end].to_string();
            }
        }
    })
    .await
    .expect("the polling open packet in time");
    (s, sid)
}

#[test]
fn connections_that_stall_after_their_headers_are_closed_at_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const STALLED_BODIES: usize = 20;
    const IDLE_KEEPALIVES: usize = 20;
    // The header timeout is far off: only the idle timeout can close these.
    let server = SignalServer::start(&[
        "--idle-timeout",
        "3",
        "--ping-interval",
        "1",
        "--header-timeout",
        "120",
        "--max-conns-per-ip",
        "100",
    ]);
    let _log = LogOnPanic(&server);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().expect("addr");
    rt().block_on(async {
        let ws = server.ws_url();
        let mut a = RawWs::connect(&ws, None).await.expect("legitimate client a");
        let mut b = RawWs::connect(&ws, None).await.expect("legitimate client b");
        let id_a = a.join("idle").await;
        let id_b = b.join("idle").await;

        let mut stalled = Vec::new();
        // A socket.io POST that promises 1,000 bytes of body and sends 2: the headers are complete.
        for _ in 0..STALLED_BODIES {
            let (mut s, sid) = polling_session(addr).await;
            let head = format!(
                "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 1000\r\n\r\n40"
            );
            s.write_all(head.as_bytes()).await.expect("the stalled POST");
            stalled.push(s);
        }
        // A keep-alive connection that got its page and then says nothing.
        for _ in 0..IDLE_KEEPALIVES {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect for GET /");
            s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.expect("GET /");
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("the page in time")
                .expect("reading the page");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "GET / answered");
            stalled.push(s);
        }

        // Every one is closed by the server, bounded well below the 120 s header timeout. The two
        // legitimate members meanwhile keep reading (and so answer the 1 s pings).
        let wait = std::time::Duration::from_secs(30);
        let (closed, a_closed, b_closed) = tokio::join!(
            futures::future::join_all(stalled.iter_mut().map(|s| closes_within(s, wait))),
            a.closed_within(std::time::Duration::from_secs(8)),
            b.closed_within(std::time::Duration::from_secs(8)),
        );
        let still_open = closed.iter().filter(|c| !**c).count();
        assert_eq!(still_open, 0, "{still_open} of {} stalled connections still open after {wait:?}", closed.len());
        assert!(!a_closed && !b_closed, "members that answer pings outlive the 3 s idle timeout");

        // And they still talk.
        a.send(json!({"type":"offer","to":id_b,"sdp":"v=0 after"}).to_string()).await;
        let (offer, frame) = b.recv_type("offer").await;
        assert_eq!(offer.once("from", &frame), &json!(id_a));
    });
}

/// A STUN Binding request (RFC 8489 §5) with a fixed transaction id, header only.
fn binding_request(txid: [u8; 12]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&txid);
    m
}

#[test]
fn the_stun_port_drops_and_counts_a_flood_of_garbage_and_still_answers_bindings() {
    const GARBAGE: u64 = 2_000;
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    let server = SignalServer::start(&["--metrics", &metrics_addr]);
    let _log = LogOnPanic(&server);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.connect(("127.0.0.1", server.port)).expect("connect udp");
    udp.set_read_timeout(Some(std::time::Duration::from_millis(300))).expect("timeout");
    // Random bytes, truncated headers, a Binding *response* and an Allocate: none is answered.
    let mut allocate = binding_request([7; 12]);
    allocate[1] = 0x03;
    let mut response = binding_request([8; 12]);
    response[0] = 0x01;
    for i in 0..GARBAGE {
        let junk: Vec<u8> = match i % 4 {
            0 => (0..(i % 600) as usize).map(|k| (k as u8).wrapping_mul(31).wrapping_add(i as u8)).collect(),
            1 => binding_request([9; 12])[..(i % 20) as usize].to_vec(),
            2 => response.clone(),
            _ => allocate.clone(),
        };
        let _ = udp.send(&junk);
        // Paced so the kernel's socket buffer does not drop any: every datagram reaches the server.
        if i % 50 == 49 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    let mut buf = [0u8; 1500];
    assert!(udp.recv(&mut buf).is_err(), "nothing of the flood is answered");
    // The server is still there for a real request, and says who we are.
    udp.send(&binding_request([1; 12])).expect("binding");
    udp.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    let n = udp.recv(&mut buf).expect("a Binding success response after the flood");
    assert_eq!(&buf[..2], &[0x01, 0x01], "a Binding success response");
    assert_eq!(&buf[8..20], &[1; 12], "the transaction id echoed");
    assert!(n >= 20 + 12, "with an XOR-MAPPED-ADDRESS");
    rt().block_on(async {
        let m = metric_reaches(&metrics_addr, "natkit_signal_stun_dropped_total", GARBAGE).await;
        // Each counted once; a loaded machine's kernel may still lose a few before the server reads them.
        let dropped = metric(&m, "natkit_signal_stun_dropped_total");
        assert!((GARBAGE * 9 / 10..=GARBAGE).contains(&dropped), "{dropped} of {GARBAGE} counted: {m}");
        assert_eq!(metric(&m, "natkit_signal_stun_answered_total"), 1, "{m}");
    });
}

/// The first line of the server's answer to `GET /` on a connection from `source`, the connection kept.
async fn page_status_from(source: std::net::IpAddr, server: std::net::SocketAddr) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s =
        raw_clients::connect_from(source, server).await.unwrap_or_else(|e| panic!("connect from {source}: {e}"));
    s.write_all(b"GET / HTTP/1.1\r\nHost: natkit\r\n\r\n").await.expect("GET /");
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("reading the answer");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    (text.lines().next().unwrap_or("").to_string(), s)
}

/// Before the fix `--max-conns-per-ip` counted every IPv6 address on its own,
/// and an IPv6 customer is routed a /64 (2^64 addresses, often a /56): one
/// host took any number of connections, up to `--max-conns` for everyone,
/// by binding a fresh source address for each (here 9 of 9 from one /64 got
/// the page with a cap of 8). Now an IPv6 client is counted per /64, as its
/// TURN credentials are; IPv4 per address as before.
#[test]
fn ipv6_clients_are_counted_per_64_not_per_address() {
    common::tools::require("ip", "iproute2");
    const CAP: usize = 8;
    // The server's address, the client's CAP + 1 addresses in one /64, and one in another /64.
    let mut addrs: Vec<String> = vec!["2001:db8:5::1/128".into(), "2001:db8:6::1/128".into()];
    addrs.extend((1..=CAP + 1).map(|i| format!("2001:db8:5::1:{i:x}/128")));
    let ns = netns::Netns::new(&addrs.iter().map(String::as_str).collect::<Vec<_>>());
    let cap = CAP.to_string();
    let server =
        SignalServer::start_in(&["ip", "netns", "exec", &ns.name], "[2001:db8:5::1]", &["--max-conns-per-ip", &cap]);
    let _log = LogOnPanic(&server);
    let addr: std::net::SocketAddr = format!("[2001:db8:5::1]:{}", server.port).parse().expect("addr");
    let (ours, theirs) = ns.run(move || {
        rt().block_on(async move {
            let mut kept = Vec::new();
            let mut ours = Vec::new();
            for i in 1..=CAP + 1 {
                let source: std::net::IpAddr = format!("2001:db8:5::1:{i:x}").parse().expect("ip");
                let (status, s) = page_status_from(source, addr).await;
                ours.push(status);
                kept.push(s);
            }
            let (theirs, _s) = page_status_from("2001:db8:6::1".parse().expect("ip"), addr).await;
            (ours, theirs)
        })
    });
    for (i, status) in ours.iter().enumerate().take(CAP) {
        assert!(status.contains("200"), "connection {} of {CAP} from one /64: {status}", i + 1);
    }
    assert!(
        ours[CAP].contains("503"),
        "connection {} from one /64 (a new address of it) with a cap of {CAP}: {}",
        CAP + 1,
        ours[CAP]
    );
    assert!(theirs.contains("200"), "another /64: {theirs}");
}
