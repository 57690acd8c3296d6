//! A small async client of the `/ws` signaling protocol (see `protocol`):
//! connect over `ws://` or `wss://`, join a room, send and receive typed
//! messages. `punch` and `call` meet their peer through it.
//!
//! TLS goes through natkit's own rustls client (`net::tls`), so `--insecure`
//! (accept a self-signed certificate, e.g. `natkit signal --tls-self-signed`)
//! and `--ca FILE` mean the same as everywhere else in natkit.

use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::net::tls::{TlsClient, TlsOptions};
use crate::signal::protocol::{ClientMessage, ErrorCode, IceServer, PeerId, RoomId, ServerMessage};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What can go wrong talking to a signaling server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad signaling URL '{url}': {why} (expected ws://HOST:PORT/ws or wss://HOST:PORT/ws)")]
    BadUrl { url: String, why: String },
    #[error(
        "cannot connect to signaling server {url}: {source}; is `natkit signal` running there? (for a self-signed certificate, pass --insecure)"
    )]
    Connect {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("TLS setup for {url}: {why}")]
    Tls { url: String, why: String },
    #[error("signaling connection to {url} failed: {source}")]
    Ws {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("the signaling server {url} closed the connection")]
    Closed { url: String },
    #[error("the signaling server {url} sent something that is not the natkit protocol: {why}")]
    Protocol { url: String, why: String },
    #[error("the signaling server {url} refused: {message} ({code:?})")]
    Server { url: String, code: ErrorCode, message: String },
    #[error("no answer from the signaling server {url} within {after:?} while {what}")]
    Timeout { url: String, after: Duration, what: &'static str },
}

/// Where to connect and how to treat the server's certificate.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub tls: TlsOptions,
}

/// The room membership a `join` produced (the `created` message).
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    /// Our own id in the room.
    pub id: PeerId,
    pub room: RoomId,
    /// Members who were there before us; we are the one expected to call them.
    pub peers: Vec<PeerId>,
    pub ice_servers: Vec<IceServer>,
}

/// A connected signaling client.
pub struct SignalClient {
    sender: SignalSender,
    receiver: SignalReceiver,
}

/// The sending half (see [`SignalClient::split`]).
pub struct SignalSender {
    url: String,
    sink: SplitSink<Ws, Message>,
}

/// The receiving half (see [`SignalClient::split`]). Answers server pings
/// while it is being read, so keep reading it.
pub struct SignalReceiver {
    url: String,
    stream: SplitStream<Ws>,
}

/// `ws://h:p` and `http://h:p` → `ws://h:p/ws`; a path given is kept.
pub fn normalize_url(url: &str) -> Result<String, ClientError> {
    let bad = |why: &str| ClientError::BadUrl { url: url.to_string(), why: why.to_string() };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => return Err(bad(&format!("scheme '{other}' is not ws, wss, http or https"))),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let path = if path.is_empty() || path == "/" { "/ws" } else { path };
    Ok(format!("{scheme}://{authority}{path}"))
}

impl SignalClient {
    /// Connects to `url` (`ws://`, `wss://`; `http(s)://` accepted; path `/ws` by default).
    pub async fn connect(url: &str, opts: &ClientOptions) -> Result<Self, ClientError> {
        let url = normalize_url(url)?;
        let request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::BadUrl { url: url.clone(), why: e.to_string() })?;
        let connector = if url.starts_with("wss://") {
            let tls = TlsClient::new(&opts.tls).map_err(|e| ClientError::Tls { url: url.clone(), why: e.0 })?;
            Some(Connector::Rustls(tls.config))
        } else {
            None
        };
        let (ws, _response) = tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector)
            .await
            .map_err(|e| ClientError::Connect { url: url.clone(), source: Box::new(e) })?;
        let (sink, stream) = ws.split();
        Ok(SignalClient { sender: SignalSender { url: url.clone(), sink }, receiver: SignalReceiver { url, stream } })
    }

    /// Connects and joins `room` in one step, all of it (TCP, TLS, the HTTP
    /// upgrade and `created`) within `timeout`: a listener that accepts and
    /// never answers the handshake (a TURN port typed for the signal URL)
    /// must not hold the caller for longer than it asked.
    pub async fn connect_and_join(
        url: &str,
        opts: &ClientOptions,
        room: &RoomId,
        timeout: Duration,
    ) -> Result<(Self, Membership), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut c =
            tokio::time::timeout_at(deadline, Self::connect(url, opts)).await.map_err(|_| ClientError::Timeout {
                url: normalize_url(url).unwrap_or_else(|_| url.to_string()),
                after: timeout,
                what: "opening the WebSocket (TCP connect, TLS and HTTP upgrade); is this the signal server's port?",
            })??;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = c.join(room, left).await.map_err(|e| match e {
            ClientError::Timeout { url, what, .. } => ClientError::Timeout { url, after: timeout, what },
            e => e,
        })?;
        Ok((c, m))
    }

    /// The URL connected to (normalised).
    pub fn url(&self) -> &str {
        &self.sender.url
    }

    /// Sends `join` and waits (up to `timeout`) for `created`. An `error`
    /// reply (room full, bad name, ...) becomes [`ClientError::Server`].
    pub async fn join(&mut self, room: &RoomId, timeout: Duration) -> Result<Membership, ClientError> {
        self.send(&ClientMessage::Join { room: room.clone() }).await?;
        let url = self.sender.url.clone();
        let wait = async {
            loop {
                match self.recv().await? {
                    ServerMessage::Created { id, room, peers, ice_servers } => {
                        return Ok(Membership { id, room, peers, ice_servers });
                    }
                    ServerMessage::Error { code, message } => {
                        return Err(ClientError::Server { url: url.clone(), code, message });
                    }
                    // Nothing else can arrive before `created`; ignore to be lenient.
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| ClientError::Timeout {
            url: self.sender.url.clone(),
            after: timeout,
            what: "waiting for `created` after `join`",
        })?
    }

    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        self.sender.send(msg).await
    }

    /// Sends a text frame as-is (for tests of malformed input).
    pub async fn send_raw(&mut self, text: String) -> Result<(), ClientError> {
        self.sender.send_raw(text).await
    }

    /// The next message from the server; [`ClientError::Closed`] when it hangs up.
    pub async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        self.receiver.recv().await
    }

    /// Sends `leave` (the others get `exit`); the connection stays open.
    pub async fn leave(&mut self) -> Result<(), ClientError> {
        self.send(&ClientMessage::Leave).await
    }

    /// Two halves, to send from one task and receive in another.
    pub fn split(self) -> (SignalSender, SignalReceiver) {
        (self.sender, self.receiver)
    }

    /// Closes the WebSocket politely (the server then tells the room).
    pub async fn close(mut self) {
        let _ = self.sender.sink.close().await;
    }
}

impl SignalSender {
    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        let text = serde_json::to_string(msg)
            .map_err(|e| ClientError::Protocol { url: self.url.clone(), why: format!("encoding: {e}") })?;
        self.send_raw(text).await
    }

    /// Sends a text frame as-is (tests use this to send malformed input).
    pub async fn send_raw(&mut self, text: String) -> Result<(), ClientError> {
        self.sink
            .send(Message::text(text))
            .await
            .map_err(|e| ClientError::Ws { url: self.url.clone(), source: Box::new(e) })
    }

    pub async fn close(mut self) {
        let _ = self.sink.close().await;
    }
}

impl SignalReceiver {
    pub async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        loop {
            let frame = match self.stream.next().await {
                None => return Err(ClientError::Closed { url: self.url.clone() }),
                Some(Err(e)) => return Err(ClientError::Ws { url: self.url.clone(), source: Box::new(e) }),
                Some(Ok(f)) => f,
            };
            match frame {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str()).map_err(|e| ClientError::Protocol {
                        url: self.url.clone(),
                        why: format!("{e} in {}", t.as_str().chars().take(200).collect::<String>()),
                    });
                }
                Message::Close(_) => return Err(ClientError::Closed { url: self.url.clone() }),
                // tungstenite answers pings itself; binary frames are not part of the protocol.
                Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_ws_path_and_scheme() {
        assert_eq!(normalize_url("ws://127.0.0.1:8080").unwrap(), "ws://127.0.0.1:8080/ws");
        assert_eq!(normalize_url("https://h:1/").unwrap(), "wss://h:1/ws");
        assert_eq!(normalize_url("wss://h:1/custom").unwrap(), "wss://h:1/custom");
        assert!(matches!(normalize_url("h:1"), Err(ClientError::BadUrl { .. })));
        assert!(matches!(normalize_url("ftp://h"), Err(ClientError::BadUrl { .. })));
        assert!(matches!(normalize_url("ws:///ws"), Err(ClientError::BadUrl { .. })));
    }
}
