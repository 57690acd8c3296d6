//! `natkit signal` end to end over real WebSockets on loopback: every rule
//! of the `/ws` protocol (README "natkit signal"), the limits, keepalive,
//! TLS, the page and the metrics.

mod common;

use common::signal::{SignalServer, WAIT, assert_joins_heard_in_order, http_get, join, join_all_at_once, recv, rt};
use natkit::net::tls::TlsOptions;
use natkit::signal::client::{ClientError, ClientOptions, SignalClient};
use natkit::signal::protocol::{ClientMessage, ErrorCode, IceCandidate, PeerId, RoomId, ServerMessage};
use serde_json::json;

async fn expect_error(c: &mut SignalClient, code: ErrorCode) -> String {
    match recv(c).await {
        ServerMessage::Error { code: got, message } => {
            assert_eq!(got, code, "error message: {message}");
            message
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

/// Proves `c` received nothing in between: a peer's message must be next.
async fn expect_next_is_offer_from(c: &mut SignalClient, from: &PeerId, sdp: &str) {
    match recv(c).await {
        ServerMessage::Offer { from: f, sdp: s, .. } => {
            assert_eq!((&f, s.as_str()), (from, sdp));
        }
        other => panic!("expected the probe offer from {from}, got {other:?}"),
    }
}

#[test]
fn join_tells_joiner_its_peers_and_tells_the_others() {
    let server = SignalServer::start(&[]);
    rt().block_on(async {
        let (mut a, ma) = join(&server, "r1").await;
        assert!(ma.peers.is_empty());
        assert_eq!(ma.room, RoomId::from("r1"));
        assert!(ma.id.as_str().len() >= 20, "ids are long and random: {}", ma.id);
        let (_b, mb) = join(&server, "r1").await;
        assert_eq!(mb.peers, vec![ma.id.clone()]);
        assert_ne!(ma.id, mb.id);
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: mb.id.clone(), room: "r1".into() });
    });
}

#[test]
fn offer_answer_candidate_reach_the_target_with_from_and_room_and_other_fields_unchanged() {
    let server = SignalServer::start(&[]);
    rt().block_on(async {
        let (mut a, ma) = join(&server, "r").await;
        let (mut b, mb) = join(&server, "r").await;
        let (mut c, mc) = join(&server, "r").await;
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: mb.id.clone(), room: "r".into() });
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: mc.id.clone(), room: "r".into() });
        assert_eq!(recv(&mut b).await, ServerMessage::Joined { id: mc.id.clone(), room: "r".into() });

        // A raw frame with an extra field: it must arrive unchanged.
        let (mut b_tx, mut b_rx) = b.split();
        b_tx.send_raw(json!({"type":"offer","to":ma.id,"sdp":"v=0 offer","x-note":{"k":[1,2]}}).to_string())
            .await
            .expect("send");
        match recv(&mut a).await {
            ServerMessage::Offer { from, to, room, sdp, extra } => {
                assert_eq!((from, to, room.as_str(), sdp.as_str()), (mb.id.clone(), ma.id.clone(), "r", "v=0 offer"));
                assert_eq!(extra.get("x-note"), Some(&json!({"k":[1,2]})));
            }
            other => panic!("expected offer, got {other:?}"),
        }
        a.send(&ClientMessage::answer(mb.id.clone(), "v=0 answer")).await.expect("send");
        let cand =
            IceCandidate::new("candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", Some("0".into()), Some(0));
        a.send(&ClientMessage::candidate(mb.id.clone(), cand.clone())).await.expect("send");
        let got = tokio::time::timeout(WAIT, b_rx.recv()).await.expect("in time").expect("answer");
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            json!({"type":"answer","from":ma.id,"to":mb.id,"room":"r","sdp":"v=0 answer"})
        );
        let got = tokio::time::timeout(WAIT, b_rx.recv()).await.expect("in time").expect("candidate");
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            json!({"type":"candidate","from":ma.id,"to":mb.id,"room":"r","candidate":{
                "candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host","sdpMid":"0","sdpMLineIndex":0}})
        );
        // c saw none of it: the next thing it gets is a probe.
        a.send(&ClientMessage::offer(mc.id.clone(), "probe")).await.expect("send");
        expect_next_is_offer_from(&mut c, &ma.id, "probe").await;
    });
}

/// Members hear of joiners in the order the server let them in, even when
/// the joins arrive at once on different connections: the `joined` a member
/// gets before X's are exactly the peers X was told of in `created`. (A CI run
/// once saw `joined c` overtake `joined b`: each join's deliveries were written
/// after the room lock was released, so two joins handled on two threads could
/// cross on their way to the same member.)
#[test]
fn concurrent_joins_reach_every_member_in_the_order_they_were_let_in() {
    const JOINERS: usize = 15;
    let server = SignalServer::start(&["--max-room", "16"]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        for round in 0..20 {
            let room = format!("order-{round}");
            let (mut first, m_first) = join(&server, &room).await;
            let urls = vec![server.ws_url(); JOINERS];
            let (told, _joiners) = join_all_at_once(&urls, &room).await;
            assert_joins_heard_in_order(&mut first, &told, vec![m_first.id.clone()], &format!("round {round}")).await;
        }
    });
}

#[test]
fn rooms_are_isolated_and_a_target_outside_the_room_is_an_error() {
    let server = SignalServer::start(&[]);
    rt().block_on(async {
        let (mut a, ma) = join(&server, "one").await;
        let (mut b, mb) = join(&server, "two").await;
        let (_c, mc) = join(&server, "two").await;
        assert_eq!(recv(&mut b).await, ServerMessage::Joined { id: mc.id.clone(), room: "two".into() });
        // a (room one) cannot reach b (room two), nor an id that does not exist.
        a.send(&ClientMessage::offer(mb.id.clone(), "x")).await.expect("send");
        expect_error(&mut a, ErrorCode::NotInRoom).await;
        a.send(&ClientMessage::offer(PeerId::from("nobody"), "x")).await.expect("send");
        expect_error(&mut a, ErrorCode::NotInRoom).await;
        // b got nothing from room one: a joiner of room two is the next thing it sees.
        let (_d, md) = join(&server, "two").await;
        assert_eq!(recv(&mut b).await, ServerMessage::Joined { id: md.id.clone(), room: "two".into() });
        // And a still works after the errors.
        let (_e, me) = join(&server, "one").await;
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: me.id, room: "one".into() });
        let _ = ma;
    });
}

#[test]
fn bad_input_gets_an_error_and_the_connection_carries_on() {
    let server = SignalServer::start(&[]);
    rt().block_on(async {
        let c = SignalClient::connect(&server.ws_url(), &ClientOptions::default()).await.expect("connect");
        let (mut tx, mut rx) = c.split();
        let cases = [
            ("{not json", ErrorCode::BadJson),
            ("[1,2,3]", ErrorCode::BadJson),
            (r#"{"type":"dance"}"#, ErrorCode::UnknownType),
            (r#"{"room":"r"}"#, ErrorCode::BadMessage),
            (r#"{"type":"offer","sdp":"x"}"#, ErrorCode::BadMessage),
            (r#"{"type":"offer","to":"p","sdp":"x"}"#, ErrorCode::NotJoined),
            (r#"{"type":"leave"}"#, ErrorCode::NotJoined),
            (r#"{"type":"join","room":""}"#, ErrorCode::BadMessage),
        ];
        for (text, code) in cases {
            tx.send_raw(text.to_string()).await.expect("send");
            match tokio::time::timeout(WAIT, rx.recv()).await.expect("in time").expect("reply") {
                ServerMessage::Error { code: got, .. } => assert_eq!(got, code, "for {text}"),
                other => panic!("for {text}: expected error, got {other:?}"),
            }
        }
        tx.send(&ClientMessage::Join { room: "ok".into() }).await.expect("send");
        assert!(matches!(
            tokio::time::timeout(WAIT, rx.recv()).await.expect("in time").expect("reply"),
            ServerMessage::Created { .. }
        ));
        tx.send(&ClientMessage::Join { room: "other".into() }).await.expect("send");
        match tokio::time::timeout(WAIT, rx.recv()).await.expect("in time").expect("reply") {
            ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::AlreadyJoined),
            other => panic!("expected already_joined, got {other:?}"),
        }
    });
}

#[test]
fn a_frame_over_the_size_limit_gets_an_error_and_the_connection_carries_on() {
    let server = SignalServer::start(&["--max-frame", "1024"]);
    rt().block_on(async {
        let (mut a, ma) = join(&server, "big").await;
        let (mut b, mb) = join(&server, "big").await;
        recv(&mut a).await; // joined
        let sdp = "a".repeat(4000);
        b.send(&ClientMessage::offer(ma.id.clone(), sdp)).await.expect("send");
        expect_error(&mut b, ErrorCode::FrameTooLarge).await;
        b.send(&ClientMessage::offer(ma.id.clone(), "small")).await.expect("send");
        expect_next_is_offer_from(&mut a, &mb.id, "small").await;
    });
}

#[test]
fn leave_and_disconnect_send_exit_to_that_room_only() {
    let server = SignalServer::start(&[]);
    rt().block_on(async {
        let (mut a, ma) = join(&server, "r1").await;
        let (mut b, mb) = join(&server, "r1").await;
        let (c, mc) = join(&server, "r1").await;
        let (mut x, mx) = join(&server, "r2").await;
        let (y, my) = join(&server, "r2").await;
        for _ in 0..2 {
            recv(&mut a).await;
        }
        recv(&mut b).await;
        recv(&mut x).await;
        // leave: exit to r1's others.
        c.close().await;
        assert_eq!(recv(&mut a).await, ServerMessage::Exit { from: mc.id.clone(), room: "r1".into() });
        assert_eq!(recv(&mut b).await, ServerMessage::Exit { from: mc.id.clone(), room: "r1".into() });
        b.send(&ClientMessage::Leave).await.expect("send");
        assert_eq!(recv(&mut a).await, ServerMessage::Exit { from: mb.id.clone(), room: "r1".into() });
        // x in r2 heard none of that: the next message it gets is y's probe.
        let mut y = y;
        y.send(&ClientMessage::offer(mx.id.clone(), "probe")).await.expect("send");
        expect_next_is_offer_from(&mut x, &my.id, "probe").await;
        // After leave, b can join another room.
        let m = b.join(&"r2".into(), WAIT).await.expect("join after leave");
        assert_eq!(m.peers, vec![mx.id.clone(), my.id.clone()]);
        let _ = ma;
    });
}

#[test]
fn a_client_that_stops_answering_pings_is_dropped_and_its_room_told() {
    let server = SignalServer::start(&["--ping-interval", "1"]);
    rt().block_on(async {
        let (mut a, _ma) = join(&server, "k").await;
        let (silent, ms) = join(&server, "k").await;
        recv(&mut a).await; // joined
        // Keep the socket open but never read it again: pings go unanswered.
        let (_tx, _rx_never_polled) = silent.split();
        assert_eq!(recv(&mut a).await, ServerMessage::Exit { from: ms.id.clone(), room: "k".into() });
        // a itself, which keeps reading, stays connected.
        let (_c, mc) = join(&server, "k").await;
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: mc.id, room: "k".into() });
    });
}

#[test]
fn room_size_rate_and_connections_per_ip_are_limited_without_crashing() {
    let server = SignalServer::start(&["--max-room", "2", "--max-rate", "2", "--max-conns-per-ip", "3"]);
    rt().block_on(async {
        let (_a, _) = join(&server, "small").await;
        let (_b, _) = join(&server, "small").await;
        let opts = ClientOptions::default();
        let mut c = SignalClient::connect(&server.ws_url(), &opts).await.expect("connect");
        match c.join(&"small".into(), WAIT).await {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::RoomFull),
            other => panic!("expected room_full, got {other:?}"),
        }
        // A fourth connection from 127.0.0.1 is refused at accept, before any HTTP: a 503.
        match SignalClient::connect(&server.ws_url(), &opts).await {
            Err(e) => assert!(e.to_string().contains("503"), "expected HTTP 503, got: {e}"),
            Ok(_) => panic!("a fourth connection from 127.0.0.1 must be refused with --max-conns-per-ip 3"),
        }
        // Rate: burst of 4x2 = 8, then rate_limited.
        let mut limited = false;
        for _ in 0..12 {
            c.send(&ClientMessage::Leave).await.expect("send");
        }
        for _ in 0..12 {
            if let ServerMessage::Error { code: ErrorCode::RateLimited, .. } = recv(&mut c).await {
                limited = true;
            }
        }
        assert!(limited, "12 messages at once with --max-rate 2 must hit the rate limit");
        // The server is alive and serving (from another address: 127.0.0.1 is at its cap).
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
        let mut tcp = sock.connect(format!("127.0.0.1:{}", server.port).parse().expect("addr")).await.expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.expect("GET");
        let mut page = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut page)).await.expect("page in time").expect("read page");
        let status = String::from_utf8_lossy(&page).lines().next().unwrap_or_default().to_string();
        assert!(status.contains("200"), "{status}");
    });
}

#[test]
fn repeated_refusals_close_the_connection() {
    let server = SignalServer::start(&[]);
    rt().block_on(async {
        let c = SignalClient::connect(&server.ws_url(), &ClientOptions::default()).await.expect("connect");
        let (mut tx, mut rx) = c.split();
        for _ in 0..25 {
            if tx.send_raw("garbage".into()).await.is_err() {
                break;
            }
        }
        let mut closed = false;
        for _ in 0..30 {
            match tokio::time::timeout(WAIT, rx.recv()).await.expect("in time") {
                Ok(ServerMessage::Error { .. }) => {}
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        assert!(closed, "20 refusals within 10 s must close the connection");
        // Others are unaffected.
        join(&server, "fine").await;
    });
}

#[test]
fn wss_with_a_self_signed_certificate_needs_insecure() {
    let server = SignalServer::start(&["--tls-self-signed"]);
    let url = format!("wss://127.0.0.1:{}/ws", server.port);
    rt().block_on(async {
        let strict = SignalClient::connect(&url, &ClientOptions::default()).await;
        assert!(
            matches!(strict, Err(ClientError::Connect { .. })),
            "a self-signed certificate must be refused by default"
        );
        let opts = ClientOptions { tls: TlsOptions { insecure: true, ca: None } };
        let (mut a, ma) = SignalClient::connect_and_join(&url, &opts, &"tls".into(), WAIT)
            .await
            .expect("join over wss with --insecure");
        let (_b, mb) = SignalClient::connect_and_join(&url, &opts, &"tls".into(), WAIT).await.expect("join");
        assert_eq!(mb.peers, vec![ma.id]);
        assert!(matches!(recv(&mut a).await, ServerMessage::Joined { .. }));
    });
}

#[test]
fn turn_secret_gives_rest_credentials_per_client_address() {
    let server = SignalServer::start(&[
        "--stun",
        "stun:127.0.0.1:3478",
        "--turn",
        "turn:127.0.0.1:3478?transport=udp",
        "--turn-secret",
        "s3cret",
    ]);
    rt().block_on(async {
        let (_a, ma) = join(&server, "t").await;
        let (_b, mb) = join(&server, "t").await;
        assert_eq!(ma.ice_servers[0].urls, vec!["stun:127.0.0.1:3478".to_string()]);
        let (ta, tb) = (&ma.ice_servers[1], &mb.ice_servers[1]);
        assert_eq!(ta.urls, vec!["turn:127.0.0.1:3478?transport=udp".to_string()]);
        let user = ta.username.clone().expect("username");
        assert!(user.split_once(':').is_some_and(|(e, n)| e.parse::<u64>().is_ok() && n.len() == 22), "{user}");
        assert_eq!(ta.credential.as_deref(), Some(natkit::turn::credentials::rest_password("s3cret", &user).as_str()));
        // Both come from 127.0.0.1: one address, one credential (see tests/signal_attacks.rs).
        assert_eq!(ta, tb);
    });
}

/// The secret can come from a file (a systemd credential), kept out of the process list.
#[test]
fn turn_secret_file_gives_the_same_credentials_as_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("turn-secret");
    std::fs::write(&path, "s3cret\n").expect("writing the secret");
    let path = path.to_str().expect("utf-8 path");
    let server = SignalServer::start(&["--turn", "turn:127.0.0.1:3478", "--turn-secret-file", path]);
    rt().block_on(async {
        let (_a, ma) = join(&server, "t").await;
        let t = &ma.ice_servers[0];
        let user = t.username.clone().expect("username");
        assert_eq!(t.credential.as_deref(), Some(natkit::turn::credentials::rest_password("s3cret", &user).as_str()));
    });
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", server.pid())).expect("cmdline");
    assert!(!cmdline.contains("s3cret"), "the secret is not in the process list");
    // An empty or missing file, or both ways at once, is bad input.
    std::fs::write(dir.path().join("empty"), " \n").expect("empty file");
    for extra in [
        vec!["--turn-secret-file", dir.path().join("empty").to_str().expect("path")],
        vec!["--turn-secret-file", "/nonexistent/secret"],
        vec!["--turn-secret-file", path, "--turn-secret", "x"],
    ] {
        let out = common::natkit(&[&["signal", "--listen", "127.0.0.1:0", "--turn", "turn:h"][..], &extra].concat());
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn bad_flags_exit_with_usage_errors() {
    let out = common::natkit(&["signal", "--turn", "stun:x"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--turn"));
    let out = common::natkit(&["signal", "--turn-secret", "s"]);
    assert_eq!(out.status.code(), Some(2));
    let dead = format!("redis://127.0.0.1:{}/", common::free_port());
    let out = common::natkit(&["signal", "--listen", "127.0.0.1:0", "--redis", &dead]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis-server"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = common::natkit(&["signal", "--cert", "/nonexistent.pem", "--key", "/nonexistent.key"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_page_is_served_with_its_elements_and_metrics_count_messages() {
    let mport = common::free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let server = SignalServer::start(&["--metrics", &maddr]);
    let (status, body) = http_get(&format!("127.0.0.1:{}", server.port), "/");
    assert!(status.contains("200"), "{status}");
    for id in ["id=\"room\"", "id=\"connect\"", "id=\"logout\"", "id=\"localVideo\"", "id=\"remoteDiv\""] {
        assert!(body.contains(id), "page lacks {id}");
    }
    assert!(!body.contains("<script src=\"http"), "no CDN scripts");
    rt().block_on(async {
        let (mut a, ma) = join(&server, "m").await;
        let (mut b, _mb) = join(&server, "m").await;
        recv(&mut a).await;
        b.send(&ClientMessage::offer(ma.id.clone(), "x")).await.expect("send");
        recv(&mut a).await;
        b.send_raw("nope".into()).await.expect("send");
        expect_error(&mut b, ErrorCode::BadJson).await;
    });
    let (status, text) = http_get(&maddr, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(text.contains("natkit_signal_messages_received_total{type=\"join\"} 2"), "{text}");
    assert!(text.contains("natkit_signal_messages_sent_total{type=\"offer\"} 1"), "{text}");
    assert!(text.contains("natkit_signal_errors_total{code=\"bad_json\"} 1"), "{text}");
    assert!(text.contains("natkit_signal_connections{transport=\"websocket\"}"), "{text}");
}
