//! Raw clients of `natkit signal` for attack tests: a `/ws` client and a
//! minimal Engine.IO/socket.io client over WebSocket (EIO 3 = socket.io 2.x,
//! EIO 4 = socket.io 3.x/4.x). Both send exactly the text a test gives them
//! and hand back exactly the text the server wrote, so a test can see what a
//! typed client would hide (a key written twice, an extra field).
#![allow(dead_code)]

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a raw client waits for one frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(15);

/// A JSON object's members in the order written, duplicates kept
/// (`serde_json::Value` would silently keep only the last of a key).
#[derive(Debug, Clone)]
pub struct Pairs(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Pairs {
    pub fn parse(text: &str) -> Pairs {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON object ({e}): {text}"))
    }

    /// How often `key` is written.
    pub fn count(&self, key: &str) -> usize {
        self.0.iter().filter(|(k, _)| k == key).count()
    }

    /// The value of a key written exactly once; panics (showing `frame`) otherwise.
    pub fn once(&self, key: &str, frame: &str) -> &Value {
        let n = self.count(key);
        assert_eq!(n, 1, "\"{key}\" occurs {n} times in the delivered frame {frame}");
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v).expect("counted")
    }

    /// Panics when any key is written twice.
    pub fn assert_no_duplicates(&self, frame: &str) {
        for (k, _) in &self.0 {
            assert_eq!(self.count(k), 1, "\"{k}\" occurs more than once in the delivered frame {frame}");
        }
    }
}

/// A TCP connection to `server` from the local address `source`.
pub async fn connect_from(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.bind(SocketAddr::new(source, 0))?;
    sock.connect(server).await
}

fn request(url: &str, origin: Option<&str>) -> tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().expect("a ws:// URL");
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", HeaderValue::from_str(o).expect("an Origin header value"));
    }
    req
}

/// A `/ws` client that sends and reads frame text as-is.
pub struct RawWs {
    ws: Ws,
}

impl RawWs {
    /// Connects to `url` (`ws://HOST:PORT/ws`), sending `Origin: origin` when given.
    pub async fn connect(url: &str, origin: Option<&str>) -> Result<RawWs, tungstenite::Error> {
        let (ws, _) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(request(url, origin)))
            .await
            .map_err(|_| tungstenite::Error::Io(std::io::Error::other("WebSocket handshake timed out")))??;
        Ok(RawWs { ws })
    }

    /// Like [`RawWs::connect`], from the local address `source` (any 127.0.0.0/8
    /// address works on loopback: a test can play many clients).
    pub async fn connect_from(source: IpAddr, url: &str, origin: Option<&str>) -> Result<RawWs, tungstenite::Error> {
        let req = request(url, origin);
        let host = req.uri().host().expect("a host in the URL").to_string();
        let port = req.uri().port_u16().expect("a port in the URL");
        let server = SocketAddr::new(host.parse().expect("an IP address in the URL"), port);
        let handshake = async {
            let tcp = connect_from(source, server).await?;
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)).await
        };
        let (ws, _) = tokio::time::timeout(FRAME_WAIT, handshake)
            .await
            .map_err(|_| tungstenite::Error::Io(std::io::Error::other("WebSocket handshake timed out")))??;
        Ok(RawWs { ws })
    }

    pub async fn send(&mut self, text: impl Into<String>) {
        self.ws.send(Message::Text(text.into().into())).await.expect("sending a /ws frame");
    }

    /// The next text frame (pings are answered by tungstenite on the way).
    pub async fn recv_text(&mut self) -> String {
        loop {
            let frame = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .expect("a /ws frame in time")
                .expect("the server closed the /ws connection")
                .expect("reading a /ws frame");
            match frame {
                Message::Text(t) => return t.to_string(),
                Message::Close(c) => panic!("the server closed the /ws connection: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame of `type` `kind`, every frame on the way checked for duplicate keys.
    pub async fn recv_type(&mut self, kind: &str) -> (Pairs, String) {
        loop {
            let text = self.recv_text().await;
            let pairs = Pairs::parse(&text);
            if pairs.count("type") == 1 && pairs.once("type", &text) == kind {
                return (pairs, text);
            }
            pairs.assert_no_duplicates(&text);
        }
    }

    /// Joins `room`; returns our id from `created`.
    pub async fn join(&mut self, room: &str) -> String {
        self.send(json!({"type":"join","room":room}).to_string()).await;
        let (created, text) = self.recv_type("created").await;
        created.assert_no_duplicates(&text);
        created.once("id", &text).as_str().expect("id is a string").to_string()
    }

    /// Reads until the server ends the connection; true when it did within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, async {
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await
        .is_ok()
    }
}

/// Which Engine.IO protocol a socket.io client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eio {
    /// socket.io 2.x.
    V3,
    /// socket.io 3.x and 4.x.
    V4,
}

/// A socket.io client over the WebSocket transport, frames raw.
pub struct RawSio {
    ws: Ws,
    eio: Eio,
}

impl RawSio {
    /// Opens `/socket.io/` on `host` (`IP:PORT`) and connects the default namespace.
    pub async fn connect(host: &str, eio: Eio, origin: Option<&str>) -> Result<RawSio, tungstenite::Error> {
        let v = match eio {
            Eio::V3 => 3,
            Eio::V4 => 4,
        };
        let url = format!("ws://{host}/socket.io/?EIO={v}&transport=websocket");
        let (ws, _) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(request(&url, origin)))
            .await
            .map_err(|_| tungstenite::Error::Io(std::io::Error::other("WebSocket handshake timed out")))??;
        let mut s = RawSio { ws, eio };
        let open = s.next_packet().await;
        assert!(open.starts_with('0'), "expected the Engine.IO open packet, got {open}");
        if eio == Eio::V4 {
            // socket.io v5 protocol: the client asks to join the namespace.
            s.send_raw("40").await;
        }
        // Both answer with a CONNECT packet for "/" ("40" or "40{sid}").
        let connect = s.next_packet().await;
        assert!(connect.starts_with("40"), "expected the socket.io CONNECT packet, got {connect}");
        Ok(s)
    }

    async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::Text(text.to_string().into())).await.expect("sending an Engine.IO packet");
    }

    /// The next Engine.IO packet that is not a ping/pong (pings answered).
    async fn next_packet(&mut self) -> String {
        loop {
            let frame = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .expect("an Engine.IO packet in time")
                .expect("the server closed the socket.io connection")
                .expect("reading an Engine.IO packet");
            let text = match frame {
                Message::Text(t) => t.to_string(),
                Message::Close(c) => panic!("the server closed the socket.io connection: {c:?}"),
                _ => continue,
            };
            match text.as_str() {
                // EIO 4: the server pings, the client answers.
                "2" => self.send_raw("3").await,
                "3" => {}
                _ => return text,
            }
        }
    }

    /// Sends the raw event text `42[event, data]` with `data` as written by the test.
    pub async fn emit_raw(&mut self, event: &str, data_json: &str) {
        let name = serde_json::to_string(event).expect("event name");
        self.send_raw(&format!("42[{name},{data_json}]")).await;
    }

    /// The next event called `event` as (its object's members, the raw packet);
    /// every event on the way is checked for duplicate keys.
    pub async fn recv_event(&mut self, event: &str) -> (Pairs, String) {
        loop {
            // EIO 3 clients ping every pingInterval (15 s by default) and the server waits
            // interval + timeout for it: a test shorter than that sends none (two pings in
            // a row before the server's heartbeat task reads the first close the session).
            let text = self.next_packet().await;
            let Some(body) = text.strip_prefix("42") else { continue };
            let (name, pairs): (String, Pairs) =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("not a socket.io event ({e}): {text}"));
            if name == event {
                return (pairs, text);
            }
            pairs.assert_no_duplicates(&text);
        }
    }

    /// Joins `room` with the tutorial's `createAndJoinRoom`; returns our id.
    pub async fn join(&mut self, room: &str) -> String {
        self.emit_raw("createAndJoinRoom", &json!({"room": room}).to_string()).await;
        let (created, text) = self.recv_event("created").await;
        created.assert_no_duplicates(&text);
        created.once("id", &text).as_str().expect("id is a string").to_string()
    }
}
