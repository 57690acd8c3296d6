//! `natkit signal` attacked the way a public signaling server is (issue 14),
//! against the real binary: spoofed server-owned fields on every transport,
//! slowloris before the upgrade, foreign origins, TURN credentials on demand.

mod common;
#[path = "common/raw_clients.rs"]
mod raw_clients;

use common::signal::{SignalServer, rt};
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
    rt().block_on(async {
        let host = format!("127.0.0.1:{}", server.port);
        let mut members = vec![
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
