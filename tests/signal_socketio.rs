//! The WebRTC tutorials' own socket.io 2.x client (npm `socket.io-client@2`,
//! run with node) against `natkit signal`, meeting a `/ws` client in one room.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::browser::Killed;
use common::signal::SignalServer;
use common::tools;
use natkit::signal::client::{ClientOptions, SignalClient};
use natkit::signal::protocol::{ClientMessage, PeerId, RoomId, ServerMessage};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

fn node_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/socket.io-client/package.json").is_file(),
        "socket.io-client@2 is not installed in {}: run `scripts/setup.sh` (it runs `npm ci` there)",
        dir.display()
    );
    dir
}

/// The node client's events, one JSON object per line.
fn next_event(rx: &mpsc::Receiver<Value>, want: &str) -> Value {
    let v = rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("the socket.io client did not report `{want}` in time"));
    assert_eq!(v["event"], want, "socket.io client reported {v}");
    v["data"].clone()
}

#[test]
fn tutorial_socketio2_client_meets_a_ws_client_in_one_room() {
    let node = tools::require("node", "nodejs");
    let dir = node_dir();
    let server = SignalServer::start(&[]);
    let child = Command::new(node)
        .arg(dir.join("tutorial_client.js"))
        .arg(format!("http://127.0.0.1:{}", server.port))
        .arg("42")
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting node");
    let mut child = Killed(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });

    // The tutorial's created: {id, room, peers: [{id}]} — empty for the first.
    let created = next_event(&rx, "created");
    assert_eq!(created["room"], "42");
    assert_eq!(created["peers"], json!([]));
    let sio_id = PeerId(created["id"].as_str().expect("id").to_string());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (mut ws, m) =
            SignalClient::connect_and_join(&server.ws_url(), &ClientOptions::default(), &RoomId::from("42"), WAIT)
                .await
                .expect("ws join");
        assert_eq!(m.peers, vec![sio_id.clone()], "the /ws client sees the socket.io member");
        let joined = next_event(&rx, "joined");
        assert_eq!(joined, json!({"id": m.id, "room": "42"}));

        // socket.io offer → /ws, with from and room set by the server.
        match tokio::time::timeout(WAIT, ws.recv()).await.expect("offer in time").expect("offer") {
            ServerMessage::Offer { from, to, room, sdp, .. } => {
                assert_eq!(
                    (from, to, room.as_str(), sdp.as_str()),
                    (sio_id.clone(), m.id.clone(), "42", "v=0 sio-offer")
                );
            }
            other => panic!("expected offer, got {other:?}"),
        }
        ws.send(&ClientMessage::answer(sio_id.clone(), "v=0 ws-answer")).await.expect("send answer");
        let answer = next_event(&rx, "answer");
        assert_eq!(
            (&answer["from"], &answer["to"], &answer["room"], &answer["sdp"]),
            (&json!(m.id), &json!(sio_id), &json!("42"), &json!("v=0 ws-answer"))
        );

        // The tutorial's candidate {sdpMid, sdpMLineIndex, sdp} arrives as a WebRTC candidate.
        match tokio::time::timeout(WAIT, ws.recv()).await.expect("candidate in time").expect("candidate") {
            ServerMessage::Candidate { from, room, candidate, .. } => {
                assert_eq!(from, sio_id);
                assert_eq!(room.as_str(), "42");
                assert_eq!(candidate.candidate, "candidate:1 1 udp 2122260223 127.0.0.1 9 typ host");
                assert_eq!((candidate.sdp_mid.as_deref(), candidate.sdp_m_line_index), (Some("0"), Some(0)));
            }
            other => panic!("expected candidate, got {other:?}"),
        }

        // /ws leave → the socket.io client gets exit {from, room} with the room filled in.
        ws.leave().await.expect("leave");
        assert_eq!(next_event(&rx, "exit"), json!({"from": m.id, "room": "42"}));

        // Join again; the socket.io client hangs up → exit to the /ws client.
        ws.join(&RoomId::from("42"), WAIT).await.expect("rejoin");
        next_event(&rx, "joined");
        next_event(&rx, "closed");
        match tokio::time::timeout(WAIT, ws.recv()).await.expect("exit in time").expect("exit") {
            ServerMessage::Exit { from, room } => assert_eq!((from, room.as_str()), (sio_id.clone(), "42")),
            other => panic!("expected exit, got {other:?}"),
        }
    });
    let status = child.0.wait().expect("node exit");
    assert!(status.success(), "the socket.io client script failed: {status}");
}
