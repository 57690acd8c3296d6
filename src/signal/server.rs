//! The signaling server's driver: HTTP(S) with axum and hyper, the `/ws`
//! WebSocket endpoint, the embedded video-chat page at `/`, the ICE test page
//! at `/ice` (with the servers it hands out at `/ice/servers`), socket.io 2.x on
//! `/socket.io/`, and `--metrics`. All room logic is in `rooms`/`hub`; all
//! per-frame checks are in `limits::Gate`. This file only moves frames.
//!
//! WebSocket is RFC 6455: the server pings every `ping_interval` and drops a
//! connection it has heard nothing from (not even a pong) for two intervals.
//!
//! Connections are limited at accept, before a byte is read: a total cap and
//! a per-address cap (`net::conn_limit`), a refused one gets a canned HTTP
//! 503 and a close. An accepted one must deliver its request head (after the
//! TLS handshake, if any) within `header_timeout` (hyper's header-read timer,
//! which also bounds a kept-alive connection waiting for its next request),
//! and is closed when nothing arrives for `idle_timeout` (`conn_io`). Running
//! out of file descriptors pauses accepting with a backoff instead of spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{Request, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::error::UsageError;
use crate::net::conn_limit::{ConnLimiter, accept_with_backoff};
use crate::signal::app::App;
use crate::signal::conn_io::ConnIo;
use crate::signal::hub::{Backend, Hub, OUTBOX_CAPACITY};
use crate::signal::ice::IceConfig;
use crate::signal::limits::{Gate, Limits, Verdict};
use crate::signal::metrics::{Metrics, Transport};
use crate::signal::origin::{OriginPolicy, OriginVerdict};
use crate::signal::protocol::{ErrorCode, PeerId, ServerMessage};
use crate::signal::redis::{Backplane, Presence};
use crate::signal::rooms::Rooms;
use crate::signal::ws_out::{Duplex, SharedWriter, WsOut};

/// The video-chat page, embedded: no build step, no CDN.
pub const PAGE_HTML: &str = include_str!("page/index.html");
/// The Trickle-ICE-style test page, embedded the same way.
pub const ICE_HTML: &str = include_str!("page/ice.html");

/// A write to a client that takes longer than this means it is not reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The WebSocket read buffer per connection (grows for larger frames).
const WS_READ_BUFFER: usize = 4 * 1024;
/// Refused connections allowed to linger at once (to deliver their 503 and
/// read the client's close); more are closed at once.
const MAX_LINGERING_REFUSALS: usize = 64;
/// How long a refused connection may linger.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Made at start with rcgen, for the listen address, `localhost` and these names.
    SelfSigned {
        names: Vec<String>,
    },
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsSource>,
    pub limits: Limits,
    pub ice: IceConfig,
    pub ping_interval: Duration,
    pub metrics: Option<SocketAddr>,
    /// Which web pages may connect (`--allow-origin`).
    pub origins: OriginPolicy,
    pub redis: Option<String>,
    pub presence: Presence,
    /// Answer STUN Binding on the UDP port of `listen` (`signal::stun_udp`; off with --no-stun).
    pub stun: bool,
}

/// A bound, not yet running server.
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    metrics_listener: Option<TcpListener>,
    router: Router,
    stun: Option<tokio::net::UdpSocket>,
}

/// What `run` returns when the server stops.
#[derive(Debug, Clone)]
pub struct Summary {
    pub connections: u64,
    pub relayed: u64,
    pub errors: u64,
}

impl Server {
    /// Binds the listeners and prepares TLS; errors here are the user's to fix.
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let backend = match &config.redis {
            None => Backend::Memory(Mutex::new(Rooms::new(config.limits.max_room))),
            Some(url) => {
                Backend::Redis(Arc::new(Backplane::connect(url, config.limits.max_room, config.presence).await?))
            }
        };
        let hub = Arc::new(Hub::new(backend, metrics));
        if let Backend::Redis(b) = hub.backend() {
            b.start(Arc::downgrade(&hub)).await?;
            tracing::info!(node = b.node_id(), "sharing rooms through Redis");
        }
        let app = Arc::new(App {
            hub,
            limits: config.limits,
            ice: config.ice.clone(),
            ping_interval: config.ping_interval,
            origins: config.origins.clone(),
            tls: config.tls.is_some(),
            sessions: ConnLimiter::new(config.limits.max_conns, config.limits.conns_per_ip),
        });
        let acceptor = match &config.tls {
            None => None,
            Some(src) => Some(TlsAcceptor::from(Arc::new(tls_config(src, config.listen)?))),
        };
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            UsageError::new(format!(
                "cannot listen on {} (TCP): {e}; pick another --listen address or stop what uses it",
                config.listen
            ))
        })?;
        let metrics_listener = match config.metrics {
            None => None,
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                UsageError::new(format!("cannot serve --metrics on {addr} (TCP): {e}; pick another address"))
            })?),
        };
        let router = router(app.clone());
        // The TCP listener's own address (its port when --listen asked for port 0).
        let stun = match (config.stun, listener.local_addr()) {
            (true, Ok(addr)) => crate::signal::stun_udp::bind(addr).await,
            _ => None,
        };
        Ok(Server { app, listener, acceptor, metrics_listener, router, stun })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn is_tls(&self) -> bool {
        self.acceptor.is_some()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Summary> {
        let Server { app, listener, acceptor, metrics_listener, router, stun } = self;
        let stun = stun.map(|s| tokio::spawn(crate::signal::stun_udp::serve(s, app.hub.metrics.clone())));
        let limits = app.limits;
        let conns = ConnLimiter::new(limits.max_conns, limits.conns_per_ip);
        if let Some(ml) = metrics_listener {
            let (m, conns) = (app.hub.metrics.clone(), conns.clone());
            let r = Router::new().route(
                "/metrics",
                get(move || {
                    let text = m.render_with_open(conns.open());
                    async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
                }),
            );
            tokio::spawn(async move {
                if let Err(e) = axum::serve(ml, r).await {
                    tracing::warn!("metrics endpoint stopped: {e}");
                }
            });
        }
        let lingering = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
        let metrics = app.hub.metrics.clone();
        tokio::pin!(shutdown);
        loop {
            let (tcp, remote) = tokio::select! {
                c = accept_with_backoff(&listener, &metrics.accept_paused) => c,
                _ = &mut shutdown => break,
            };
            // Counted before any byte is read: a slow or idle client holds a slot from here on.
            let permit = match conns.try_acquire(crate::signal::limits::client_of(remote.ip())) {
                Ok(p) => p,
                Err(why) => {
                    metrics.refused_at_accept(why);
                    let limit = limits.cap_named(why);
                    tracing::debug!(%remote, "refused at accept: {limit} reached");
                    refuse(tcp, remote, &limit, &lingering);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let io = ConnIo::new(tcp, permit, limits.idle_timeout);
            let svc = tower::ServiceExt::map_request(router.clone(), move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req
            });
            let svc = TowerToHyperService::new(svc);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut http = hyper::server::conn::http1::Builder::new();
                // The timer starts when the connection is accepted (and again after each response).
                http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
                let result = match acceptor {
                    None => http.serve_connection(TokioIo::new(io), svc).with_upgrades().await,
                    Some(acc) => match tokio::time::timeout(limits.header_timeout, acc.accept(io)).await {
                        Ok(Ok(tls)) => http.serve_connection(TokioIo::new(tls), svc).with_upgrades().await,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake not done within the header timeout");
                            return;
                        }
                    },
                };
                if let Err(e) = result {
                    tracing::debug!(%remote, "HTTP connection ended: {e}");
                }
            });
        }
        if let Some(t) = stun {
            t.abort();
        }
        if let Backend::Redis(b) = app.hub.backend() {
            b.retire().await;
        }
        let m = &app.hub.metrics;
        Ok(Summary {
            connections: m.connections_total(),
            relayed: [
                crate::signal::protocol::MessageKind::Offer,
                crate::signal::protocol::MessageKind::Answer,
                crate::signal::protocol::MessageKind::Candidate,
            ]
            .iter()
            .map(|k| m.sent_total(*k))
            .sum(),
            errors: m.errors_total(),
        })
    }
}

fn router(app: Arc<App>) -> Router {
    let (sio_layer, io) = crate::signal::socketio::layer(app.clone());
    let _ = io;
    Router::new()
        .route("/", get(page))
        .route("/ice", get(ice_page))
        .route("/ice/servers", get(ice_servers))
        .route("/ws", get(ws_upgrade))
        .with_state(app.clone())
        .layer(sio_layer)
        // A socket.io handshake takes a session slot (the session outlives its TCP connections).
        .layer(axum::middleware::from_fn_with_state(app.clone(), crate::signal::socketio::session_slot))
        // Outermost: covers /ws and every socket.io request (polling and WebSocket).
        .layer(axum::middleware::from_fn_with_state(app, check_origin))
}

/// Refuses requests from web pages the policy does not allow (403, counted).
async fn check_origin(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A header that is not visible ASCII is no origin a browser sends: checked as "" (refused).
    let origin = req.headers().get(header::ORIGIN).map(|v| v.to_str().unwrap_or(""));
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    match app.origins.check(origin, host, app.tls) {
        OriginVerdict::Allow => next.run(req).await,
        OriginVerdict::Refuse(why) => {
            if app.hub.metrics.origin_refused.fetch_add(1, Relaxed) == 0 {
                tracing::warn!(
                    "refused a request: {why} (first one now; all are counted in natkit_signal_origin_refused_total)"
                );
            } else {
                tracing::debug!("refused a request: {why}");
            }
            (axum::http::StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], why)
                .into_response()
        }
    }
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE_HTML))
}

async fn ice_page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(ICE_HTML))
}

/// The STUN/TURN servers a client from this address gets in `created`, for the `/ice` page
/// (the same per-address credentials: asking here mints nothing `/ws` would not).
///
/// The Origin check in front lets through requests without `Origin`, and a same-origin `fetch`
/// GET sends none; so does a `<script src>` from another site. That one is refused by its
/// `Sec-Fetch-Site` (browsers send it on every request), and `nosniff` keeps a browser from
/// running the JSON as a script anyway.
async fn ice_servers(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    let site = headers.get("sec-fetch-site").map(|v| v.to_str().unwrap_or(""));
    if let Some(site) = site
        && !matches!(site, "same-origin" | "none")
    {
        if app.hub.metrics.origin_refused.fetch_add(1, Relaxed) == 0 {
            tracing::warn!(
                "refused /ice/servers to a {site} request (first one now; all are counted in natkit_signal_origin_refused_total)"
            );
        }
        return (axum::http::StatusCode::FORBIDDEN, "the ICE servers are for this server's own pages\n")
            .into_response();
    }
    let body = serde_json::json!({ "ice_servers": app.ice.for_client(remote.ip(), SystemTime::now()) });
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// The RFC 6455 §4.2 opening handshake, checked as axum's `WebSocketUpgrade`
/// does (same refusals); done here so the upgraded socket stays ours: its write
/// side is shared with the tasks that deliver to it (`ws_out`).
async fn ws_upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
) -> Response {
    use axum::http::{Method, StatusCode};
    let (mut parts, _body) = req.into_parts();
    let has =
        |name: header::HeaderName, token: &str| {
            parts.headers.get_all(name).iter().any(|v| {
                v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
            })
        };
    let refused = if parts.method != Method::GET {
        Some((StatusCode::METHOD_NOT_ALLOWED, "Request method must be `GET`"))
    } else if !has(header::CONNECTION, "upgrade") {
        Some((StatusCode::BAD_REQUEST, "Connection header did not include 'upgrade'"))
    } else if parts.headers.get(header::UPGRADE).is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"websocket")) {
        Some((StatusCode::BAD_REQUEST, "`Upgrade` header did not include 'websocket'"))
    } else if parts.headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        Some((StatusCode::BAD_REQUEST, "`Sec-WebSocket-Version` header did not include '13'"))
    } else {
        None
    };
    if let Some(r) = refused {
        return r.into_response();
    }
    let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
        return (StatusCode::BAD_REQUEST, "`Sec-WebSocket-Key` header missing").into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        )
            .into_response();
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve_ws(app, upgraded, remote).await,
            Err(e) => tracing::debug!(%remote, "WebSocket upgrade failed: {e}"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::CONNECTION, "upgrade"), (header::UPGRADE, "websocket")],
        [(header::SEC_WEBSOCKET_ACCEPT, accept)],
    )
        .into_response()
}

fn text(msg: &ServerMessage) -> Message {
    Message::text(msg.to_json())
}

/// A connection over a cap: a canned 503 (the `/ws` error object as body),
/// then a close. Up to [`MAX_LINGERING_REFUSALS`] linger briefly so the
/// client reads the answer instead of a reset; beyond that they close at once.
fn refuse(tcp: TcpStream, remote: SocketAddr, limit: &str, lingering: &Arc<Semaphore>) {
    let body = ServerMessage::error(
        ErrorCode::TooManyConnections,
        format!("{limit} reached for this server; try again later"),
    )
    .to_json();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's send buffer is empty: this does not block.
    let _ = tcp.try_write(response.as_bytes());
    let Ok(slot) = lingering.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        let _slot = slot;
        let mut tcp = tcp;
        let _ = tcp.shutdown().await;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            let mut buf = [0u8; 512];
            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
        tracing::trace!(%remote, "refused connection closed");
    });
}

/// One `/ws` connection from upgrade to close.
async fn serve_ws(app: Arc<App>, upgraded: hyper::upgrade::Upgraded, remote: SocketAddr) {
    let cap = app.limits.hard_frame_cap();
    // tungstenite's default read buffer is 128 KiB, allocated and filled per
    // connection: 10,000 idle members cost 1.4 GiB. Signaling messages are a
    // few KiB; the buffer grows for a larger frame (up to `cap`) and a write
    // goes out at once instead of waiting in a second buffer.
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap));
    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
    // The write side is shared: deliveries to this peer are written by the delivering task.
    let out = WsOut::new(write, OUTBOX_CAPACITY, app.limits.outbox_bytes());
    let io = Duplex { read, write: SharedWriter(out.clone()) };
    let mut socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let metrics = app.hub.metrics.clone();
    metrics.opened(Transport::WebSocket);
    let peer = PeerId::random();
    tracing::debug!(%remote, %peer, "connected");
    let ice = app.ice.for_client(remote.ip(), SystemTime::now());
    app.hub.attach_direct(&peer, out.clone());
    let mut gate = Gate::new(app.limits, Instant::now());
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + app.ping_interval, app.ping_interval);
    let dead_after = app.ping_interval * 2;
    let mut last_heard = Instant::now();

    // One wait for deliveries that did not fit, kept across loop turns (and
    // renewed only when it fires): a fresh one per turn would join and leave
    // the Notify's waiter list, under its lock, for every frame read.
    let wanted = out.wanted();
    tokio::pin!(wanted);

    let why: &str = loop {
        tokio::select! {
            frame = socket.next() => {
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => {
                        tracing::debug!(%peer, "read failed: {e}");
                        break "read error or oversized frame";
                    }
                    None => break "closed",
                };
                let now = Instant::now();
                last_heard = now;
                let verdict = match frame {
                    Message::Text(t) => gate.on_text(t.as_str(), now),
                    Message::Binary(b) => gate.on_binary(b.len(), now),
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    Message::Close(_) => break "closed by client",
                };
                let verdict = match verdict {
                    Verdict::Accept(msg) => match app.hub.handle(&peer, msg, &ice).await {
                        Ok(()) => continue,
                        Err(r) => gate.strike(r, now),
                    },
                    refused => refused,
                };
                if let Err(why) = answer(&mut socket, &metrics, &peer, remote, verdict).await {
                    break why;
                }
            }
            () = &mut wanted => {
                wanted.set(out.wanted());
                // Deliveries the socket did not take at once (or the hub found this client not reading).
                if drain(&out).await.is_err() {
                    break "not reading its messages";
                }
                // Refusals decided after the fact (a cross-node relay Redis refused): strikes like any other.
                let now = Instant::now();
                let mut ended = None;
                for r in out.take_refusals() {
                    if let Err(why) = answer(&mut socket, &metrics, &peer, remote, gate.strike(r, now)).await {
                        ended = Some(why);
                        break;
                    }
                }
                if let Some(why) = ended {
                    break why;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > dead_after {
                    metrics.dropped_dead.fetch_add(1, Relaxed);
                    break "no answer to pings";
                }
                if send(&mut socket, Message::Ping(Default::default())).await.is_err() {
                    break "write failed";
                }
            }
        }
    };
    tracing::debug!(%peer, %remote, "disconnected: {why}");
    out.close();
    app.hub.disconnect(&peer).await;
    metrics.closed(Transport::WebSocket);
}

/// Answers a refused message with an `error` frame, and closes the
/// connection (policy violation) once the gate counts too many refusals.
/// `Err(why)` when the connection is to end.
async fn answer<S>(
    socket: &mut S,
    metrics: &Metrics,
    peer: &PeerId,
    remote: SocketAddr,
    verdict: Verdict,
) -> Result<(), &'static str>
where
    S: futures::Sink<Message> + Unpin,
{
    let (r, close) = match verdict {
        Verdict::Accept(_) => return Ok(()),
        Verdict::Refuse(r) => (r, false),
        Verdict::RefuseAndClose(r) => (r, true),
    };
    metrics.error(r.code);
    let sent = send(socket, text(&r.to_message())).await;
    if close {
        metrics.closed_for_abuse.fetch_add(1, Relaxed);
        tracing::warn!(%peer, %remote, "closing: too many refused messages ({})", r.message);
        let bye = CloseFrame { code: CloseCode::Policy, reason: "too many refused messages".into() };
        let _ = send(socket, Message::Close(Some(bye))).await;
        return Err("too many refused messages");
    }
    sent.map_err(|()| "write failed")
}

/// Sends one frame; a client that does not take it within [`SEND_TIMEOUT`]
/// counts as gone. The timer is armed only when the write does not complete
/// at once (a full socket buffer): the usual send touches no timer.
async fn send<S>(sink: &mut S, m: Message) -> Result<(), ()>
where
    S: futures::Sink<Message> + Unpin,
{
    let mut write = std::pin::pin!(sink.send(m));
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = write.as_mut().poll(cx) {
            return std::task::Poll::Ready(r.map_err(|_| ()));
        }
        let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(SEND_TIMEOUT)));
        t.as_mut().poll(cx).map(|()| Err(()))
    })
    .await
}

/// Writes out what deliveries left pending, with the same [`SEND_TIMEOUT`] as [`send`].
async fn drain(out: &WsOut) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, std::future::poll_fn(|cx| out.poll_drain(cx))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// The rustls server config: a certificate made now, or one from files.
fn tls_config(src: &TlsSource, listen: SocketAddr) -> anyhow::Result<rustls::ServerConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (certs, key) = match src {
        TlsSource::SelfSigned { names } => {
            let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
            if !listen.ip().is_unspecified() {
                sans.push(listen.ip().to_string());
            }
            sans.extend(names.iter().cloned());
            sans.dedup();
            let ck = rcgen::generate_simple_self_signed(sans).context("making a self-signed certificate")?;
            let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
            (vec![ck.cert.der().clone()], key)
        }
        TlsSource::Files { cert, key } => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| UsageError::new(format!("cannot read --cert {}: {e}", cert.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| UsageError::new(format!("bad PEM in --cert {}: {e}", cert.display())))?;
            if certs.is_empty() {
                return Err(
                    UsageError::new(format!("no certificate in --cert {} (expected PEM)", cert.display())).into()
                );
            }
            let k = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| UsageError::new(format!("cannot read a private key from --key {}: {e}", key.display())))?;
            (certs, k)
        }
    };
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| UsageError::new(format!("the certificate and key do not make a TLS server: {e}")))?;
    // WebSocket upgrades need HTTP/1.1.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
