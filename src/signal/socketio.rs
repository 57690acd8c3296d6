//! socket.io 2.x compatibility on `/socket.io/` (socketioxide; its `v4`
//! feature speaks Engine.IO v3 as socket.io 2.x clients do), so the client
//! of the classic WebRTC tutorials works unchanged. It shares rooms with
//! `/ws`: every socket is a hub member like a WebSocket client.
//!
//! Events (the tutorial's): client `createAndJoinRoom` {room} → `created`
//! {id, room, peers:[{id}]} and `joined` {id, room} to the others;
//! `offer`/`answer` {from, to, room, sdp}; `candidate` {from, to, room,
//! candidate:{sdpMid, sdpMLineIndex, sdp}}; `exit` {from, room}. Unlike the
//! tutorials' server, a disconnect sends `exit` to that room only, with the
//! room filled in. Refusals arrive as `signal_error` {code, message}
//! (`error` is reserved by socket.io clients).
//!
//! Bounds a hostile client meets here as on `/ws`:
//! - a session is counted per address and in total ([`session_slot`]): a
//!   polling session lives on between its HTTP requests, so the caps taken at
//!   accept (per TCP connection) would not hold it; one that does not CONNECT
//!   to the namespace within the header timeout is closed;
//! - a WebSocket message over the hard frame cap ends the connection before it
//!   is buffered (Engine.IO's own `max_payload` covers only polling bodies);
//! - a connection is registered with the hub in the connect middleware (its
//!   event handlers must exist before CONNECT is sent) but handed to its writer
//!   only once socketioxide has connected it; a connect that fails after the
//!   middleware (the client closed the session meanwhile, which it can time:
//!   `40` and an event in one payload) is unregistered by that writer task.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use socketioxide::extract::{Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{SocketIo, TransportType};

use crate::net::conn_limit::ConnPermit;
use crate::signal::app::App;
use crate::signal::hub::Outgoing;
use crate::signal::limits::{Gate, Verdict};
use crate::signal::metrics::Transport;
use crate::signal::protocol::{
    ClientMessage, ErrorCode, Extra, IceCandidate, IceServer, PeerId, Refusal, RoomId, ServerMessage, drop_server_keys,
};

/// One socket.io connection's state.
struct Conn {
    peer: PeerId,
    gate: Mutex<Gate>,
    ice: Vec<IceServer>,
    /// Unregistered from the hub: by the disconnect handler, or by the writer
    /// task when the socket it was to get was dropped unconnected. Once.
    gone: std::sync::atomic::AtomicBool,
}

impl Conn {
    /// Leaves the room, drops the outbox and closes the gauge, the first time only.
    async fn unregister(&self, app: &App) {
        if self.gone.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        app.hub.disconnect(&self.peer).await;
        app.hub.metrics.closed(Transport::SocketIo);
    }
}

/// A socket.io session's slot (see [`session_slot`]): it rides in the
/// handshake request's extensions, which Engine.IO keeps with the session, so
/// it is freed when the session is dropped.
#[derive(Clone)]
struct SessionSlot {
    _permit: Arc<ConnPermit>,
}

/// Where socket.io is served (socketioxide's default `req_path`, which
/// Engine.IO matches with or without a trailing slash).
const SOCKETIO_PATH: &str = "/socket.io";

/// The connection's socket, handed from the connect handler to the writer task.
type Handover = Arc<Mutex<Option<tokio::sync::oneshot::Sender<SocketRef>>>>;

/// The tower layer to put on the router, and the io handle.
pub fn layer(app: Arc<App>) -> (SocketIoLayer, SocketIo) {
    let cap = app.limits.hard_frame_cap();
    let (layer, io) = SocketIo::builder()
        .req_path(SOCKETIO_PATH)
        .ping_interval(app.ping_interval)
        .ping_timeout(app.ping_interval)
        .max_payload(cap as u64)
        // Without these the WebSocket transport reads messages up to 64 MiB whatever
        // max_payload says (it bounds polling bodies only).
        .ws_max_message_size(cap)
        .ws_max_frame_size(cap)
        // A session that has not joined the namespace is closed this soon (default 45 s), and
        // with it the session slot its handshake took: saying what it wants is what the
        // header timeout bounds on every connection.
        .connect_timeout(app.limits.header_timeout)
        .transports([TransportType::Polling, TransportType::Websocket])
        .build_layer();
    // The event handlers are registered in a connect *middleware*: socketioxide
    // awaits it before it sends the CONNECT packet, whereas the connect handler
    // runs later on a task of its own, so an event a client emits right on
    // `connect` (as the tutorial's does) could arrive before the handlers
    // existed and be dropped.
    let setup = move |s: SocketRef| {
        on_connect(app.clone(), s);
        async { Ok::<(), std::convert::Infallible>(()) }
    };
    // Runs once socketioxide has connected the socket (never when the connect fails): hands it to the writer.
    let connected = |s: SocketRef| async move {
        if let Some(tx) = s.extensions.get::<Handover>().and_then(|h| lock(&h).take()) {
            let _ = tx.send(s);
        }
    };
    io.ns("/", connected.with(setup));
    (layer, io)
}

/// Takes a session slot for each socket.io handshake (a request to
/// `/socket.io/` without a session id): per address (`--max-conns-per-ip`)
/// and in total (`--max-conns`), as connections are counted at accept. One
/// over gets 503 with the `too_many_connections` error object, counted in
/// `natkit_signal_socketio_sessions_refused_total`.
pub async fn session_slot(
    State(app): State<Arc<App>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Engine.IO's own reading: its path (`/socket.io` itself or below it) and no `sid=` in the query.
    let path = req.uri().path().strip_prefix(SOCKETIO_PATH);
    let handshake = path.is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        && !req.uri().query().unwrap_or("").split('&').any(|kv| kv.starts_with("sid="));
    if !handshake {
        return next.run(req).await;
    }
    let Some(remote) = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0) else {
        return next.run(req).await;
    };
    match app.sessions.try_acquire(crate::signal::limits::client_of(remote.ip())) {
        Ok(permit) => {
            req.extensions_mut().insert(SessionSlot { _permit: Arc::new(permit) });
            next.run(req).await
        }
        Err(why) => {
            app.hub.metrics.session_refused(why);
            let limit = app.limits.cap_named(why);
            tracing::debug!(%remote, "socket.io session refused: {limit} reached");
            let body = ServerMessage::error(
                ErrorCode::TooManyConnections,
                format!("{limit} socket.io sessions reached for this server; try again later"),
            )
            .to_json();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "application/json"), (header::RETRY_AFTER, "5")],
                body,
            )
                .into_response()
        }
    }
}

fn on_connect(app: Arc<App>, s: SocketRef) {
    // Connection caps are taken at accept (`server::run`), before any HTTP.
    let remote = s.req_parts().extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    app.hub.metrics.opened(Transport::SocketIo);
    let peer = PeerId::random();
    tracing::debug!(?remote, %peer, "socket.io client connected");
    let conn = Arc::new(Conn {
        // Without the address (never, behind our own accept) every such client shares one name.
        ice: app.ice.for_client(
            remote.map(|r| r.ip()).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            SystemTime::now(),
        ),
        gate: Mutex::new(Gate::new(app.limits, Instant::now())),
        peer: peer.clone(),
        gone: std::sync::atomic::AtomicBool::new(false),
    });
    let mut outbox = app.hub.attach(&peer);
    // The socket itself only once connected (see the module doc): holding it here would keep
    // a socket whose connect failed alive, and this connection registered, forever.
    let (handover, connected) = tokio::sync::oneshot::channel();
    s.extensions.insert::<Handover>(Arc::new(Mutex::new(Some(handover))));
    let (app1, conn1) = (app.clone(), conn.clone());
    tokio::spawn(async move {
        let Ok(writer) = connected.await else {
            // socketioxide dropped the socket before the connect handler handed it over: its connect
            // failed (then its disconnect handler never runs), or it closed first (then it ran).
            tracing::debug!(peer = %conn1.peer, "socket.io socket dropped before it was connected");
            conn1.unregister(&app1).await;
            return;
        };
        while let Some(out) = outbox.recv().await {
            match out {
                Outgoing::Message(msg) => {
                    let (event, data) = to_event(&msg);
                    if writer.emit(event, &data).is_err() {
                        break;
                    }
                }
                // Refused after the fact (a cross-node relay Redis refused): a strike like any other.
                Outgoing::Refused(r) => {
                    let verdict = lock(&conn1.gate).strike(r, Instant::now());
                    answer(&app1, &writer, verdict);
                }
            }
        }
        // The hub dropped the outbox: disconnected, or not reading.
        let _ = writer.disconnect();
    });

    for event in ["createAndJoinRoom", "join", "offer", "answer", "candidate", "exit", "leave"] {
        let (app, conn) = (app.clone(), conn.clone());
        s.on(event, move |s: SocketRef, Data(data): Data<Value>| {
            let (app, conn) = (app.clone(), conn.clone());
            async move { on_event(&app, &conn, &s, event, data).await }
        });
    }
    let (app2, conn2) = (app.clone(), conn.clone());
    s.on_disconnect(move |_s: SocketRef| {
        let (app, conn) = (app2.clone(), conn2.clone());
        async move {
            conn.unregister(&app).await;
        }
    });
}

async fn on_event(app: &App, conn: &Conn, s: &SocketRef, event: &str, data: Value) {
    let now = Instant::now();
    let size = serde_json::to_string(&data).map(|t| t.len()).unwrap_or(0);
    let admitted = lock(&conn.gate).admit(size, now).and_then(|()| from_event(event, data));
    let verdict = match admitted {
        Ok(msg) => match app.hub.handle(&conn.peer, msg, &conn.ice).await {
            Ok(()) => return,
            Err(r) => lock(&conn.gate).strike(r, now),
        },
        Err(r) => lock(&conn.gate).strike(r, now),
    };
    answer(app, s, verdict);
}

/// Answers a refused event with `signal_error`; disconnects once the gate
/// counts too many refusals.
fn answer(app: &App, s: &SocketRef, verdict: Verdict) {
    match verdict {
        Verdict::Accept(_) => {}
        Verdict::Refuse(r) => {
            app.hub.metrics.error(r.code);
            emit_error(s, &r);
        }
        Verdict::RefuseAndClose(r) => {
            app.hub.metrics.error(r.code);
            app.hub.metrics.closed_for_abuse.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            emit_error(s, &r);
            let _ = s.clone().disconnect();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn emit_error(s: &SocketRef, r: &Refusal) {
    let _ = s.emit("signal_error", &json!({"code": r.code, "message": r.message}));
}

fn bad(event: &str, why: &str) -> Refusal {
    Refusal::new(ErrorCode::BadMessage, format!("bad \"{event}\": {why}"))
}

/// A tutorial event → the `/ws` message it means.
pub fn from_event(event: &str, data: Value) -> Result<ClientMessage, Refusal> {
    match event {
        "exit" | "leave" => return Ok(ClientMessage::Leave),
        "createAndJoinRoom" | "join" => {
            let room = match data {
                Value::Object(mut o) => o.remove("room").unwrap_or(Value::Null),
                other => other,
            };
            let room: RoomId =
                serde_json::from_value(room).map_err(|_| bad(event, "expected {room: \"name\"} or a room name"))?;
            return Ok(ClientMessage::Join { room });
        }
        _ => {}
    }
    let Value::Object(mut o) = data else { return Err(bad(event, "expected an object")) };
    let to: PeerId = o
        .remove("to")
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| bad(event, "missing \"to\" (the id of a member of your room)"))?;
    // `from`, `room`, `type` and the rest are the server's to fill in; a
    // client's copy is dropped (the event name is the type).
    let mut extra: Extra = o.clone();
    drop_server_keys(&mut extra);
    match event {
        "offer" | "answer" => {
            let sdp = match o.remove("sdp") {
                Some(Value::String(s)) => s,
                _ => return Err(bad(event, "missing \"sdp\" string")),
            };
            Ok(if event == "offer" {
                ClientMessage::Offer { to, sdp, extra }
            } else {
                ClientMessage::Answer { to, sdp, extra }
            })
        }
        "candidate" => {
            let Some(Value::Object(mut c)) = o.remove("candidate") else {
                return Err(bad(event, "missing \"candidate\" object"));
            };
            // The tutorial calls the candidate line `sdp`; WebRTC calls it `candidate`.
            let line = match (c.remove("sdp"), c.remove("candidate")) {
                (Some(Value::String(s)), _) | (_, Some(Value::String(s))) => s,
                _ => return Err(bad(event, "candidate needs \"sdp\" (or \"candidate\") string")),
            };
            let sdp_mid = c.remove("sdpMid").and_then(|v| v.as_str().map(str::to_string));
            let sdp_m_line_index =
                c.remove("sdpMLineIndex").and_then(|v| v.as_u64()).and_then(|v| u16::try_from(v).ok());
            let candidate = IceCandidate { candidate: line, sdp_mid, sdp_m_line_index, extra: c };
            Ok(ClientMessage::Candidate { to, candidate, extra })
        }
        other => Err(Refusal::new(ErrorCode::UnknownType, format!("unknown event \"{other}\""))),
    }
}

/// A `/ws` message → the tutorial's event name and payload.
pub fn to_event(msg: &ServerMessage) -> (&'static str, Value) {
    match msg {
        ServerMessage::Created { id, room, peers, ice_servers } => (
            "created",
            json!({"id": id, "room": room, "peers": peers.iter().map(|p| json!({"id": p})).collect::<Vec<_>>(),
                   "ice_servers": ice_servers}),
        ),
        ServerMessage::Joined { id, room } => ("joined", json!({"id": id, "room": room})),
        ServerMessage::Offer { from, to, room, sdp, extra } => {
            ("offer", relayed(extra, from, to, room, "sdp", json!(sdp)))
        }
        ServerMessage::Answer { from, to, room, sdp, extra } => {
            ("answer", relayed(extra, from, to, room, "sdp", json!(sdp)))
        }
        ServerMessage::Candidate { from, to, room, candidate, extra } => {
            let mut c: Map<String, Value> = candidate.extra.clone();
            c.insert("sdp".into(), json!(candidate.candidate));
            c.insert("candidate".into(), json!(candidate.candidate));
            if let Some(mid) = &candidate.sdp_mid {
                c.insert("sdpMid".into(), json!(mid));
            }
            if let Some(i) = candidate.sdp_m_line_index {
                c.insert("sdpMLineIndex".into(), json!(i));
            }
            ("candidate", relayed(extra, from, to, room, "candidate", Value::Object(c)))
        }
        ServerMessage::Exit { from, room } => ("exit", json!({"from": from, "room": room})),
        ServerMessage::Error { code, message } => ("signal_error", json!({"code": code, "message": message})),
    }
}

fn relayed(extra: &Extra, from: &PeerId, to: &PeerId, room: &RoomId, key: &str, value: Value) -> Value {
    let mut o = extra.clone();
    o.insert("from".into(), json!(from));
    o.insert("to".into(), json!(to));
    o.insert("room".into(), json!(room));
    o.insert(key.into(), value);
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tutorial_candidate_becomes_webrtc_candidate_and_back() {
        let m = from_event(
            "candidate",
            json!({"from":"spoofed","to":"b","room":"other","candidate":{"sdpMid":"0","sdpMLineIndex":0,"sdp":"candidate:1 1 udp 1 10.0.0.1 9 typ host"}}),
        )
        .unwrap();
        assert_eq!(
            m,
            ClientMessage::candidate(
                "b".into(),
                IceCandidate::new("candidate:1 1 udp 1 10.0.0.1 9 typ host", Some("0".into()), Some(0))
            )
        );
        let (event, data) = to_event(&m.relayed("a".into(), "r".into()).unwrap());
        assert_eq!(event, "candidate");
        assert_eq!(
            data,
            json!({"from":"a","to":"b","room":"r","candidate":{"sdpMid":"0","sdpMLineIndex":0,
                   "sdp":"candidate:1 1 udp 1 10.0.0.1 9 typ host","candidate":"candidate:1 1 udp 1 10.0.0.1 9 typ host"}})
        );
    }

    #[test]
    fn create_and_join_room_accepts_object_or_name() {
        assert_eq!(
            from_event("createAndJoinRoom", json!({"room":"5"})).unwrap(),
            ClientMessage::Join { room: "5".into() }
        );
        assert_eq!(from_event("createAndJoinRoom", json!(5)).unwrap(), ClientMessage::Join { room: "5".into() });
        assert!(from_event("createAndJoinRoom", json!({"x":1})).is_err());
    }

    #[test]
    fn created_lists_peers_as_objects() {
        let (event, data) = to_event(&ServerMessage::Created {
            id: "c".into(),
            room: "r".into(),
            peers: vec!["a".into()],
            ice_servers: vec![],
        });
        assert_eq!(event, "created");
        assert_eq!(data, json!({"id":"c","room":"r","peers":[{"id":"a"}],"ice_servers":[]}));
    }

    #[test]
    fn offer_needs_to_and_sdp() {
        assert!(from_event("offer", json!({"sdp":"x"})).is_err());
        assert!(from_event("offer", json!({"to":"b"})).is_err());
        assert_eq!(from_event("offer", json!({"to":"b","sdp":"x"})).unwrap(), ClientMessage::offer("b".into(), "x"));
    }
}
