//! The signaling server's driver: HTTP(S) with axum and hyper, the `/ws`
//! WebSocket endpoint, the embedded video-chat page at `/`, socket.io 2.x on
//! `/socket.io/`, and `--metrics`. All room logic is in `rooms`/`hub`; all
//! per-frame checks are in `limits::Gate`. This file only moves frames.
//!
//! WebSocket is RFC 6455: the server pings every `ping_interval` and drops a
//! connection it has heard nothing from (not even a pong) for two intervals.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{Request, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::error::UsageError;
use crate::signal::hub::{Backend, Hub};
use crate::signal::ice::IceConfig;
use crate::signal::limits::{Gate, IpLimiter, Limits, Verdict};
use crate::signal::metrics::{Metrics, Transport};
use crate::signal::protocol::{PeerId, Refusal, ServerMessage};
use crate::signal::redis::{Backplane, Presence};
use crate::signal::rooms::Rooms;

/// The video-chat page, embedded: no build step, no CDN.
pub const PAGE_HTML: &str = include_str!("page/index.html");

/// A write to a client that takes longer than this means it is not reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake that takes longer than this is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub redis: Option<String>,
    pub presence: Presence,
}

/// Shared by every connection.
pub struct App {
    pub hub: Arc<Hub>,
    pub limits: Limits,
    pub ice: IceConfig,
    pub ip_limiter: Mutex<IpLimiter>,
    pub ping_interval: Duration,
}

impl App {
    /// Counts a new connection from `remote`'s address, or refuses it.
    pub fn admit(&self, remote: SocketAddr) -> Result<(), Refusal> {
        self.ip_limiter.lock().unwrap_or_else(|p| p.into_inner()).admit(remote.ip())
    }

    pub fn release(&self, remote: SocketAddr) {
        self.ip_limiter.lock().unwrap_or_else(|p| p.into_inner()).release(remote.ip());
    }
}

/// A bound, not yet running server.
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    metrics_listener: Option<TcpListener>,
    router: Router,
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
            ip_limiter: Mutex::new(IpLimiter::new(config.limits.conns_per_ip)),
            ping_interval: config.ping_interval,
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
        Ok(Server { app, listener, acceptor, metrics_listener, router })
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
        let Server { app, listener, acceptor, metrics_listener, router } = self;
        if let Some(ml) = metrics_listener {
            let m = app.hub.metrics.clone();
            let r = Router::new().route(
                "/metrics",
                get(move || {
                    let m = m.clone();
                    async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()) }
                }),
            );
            tokio::spawn(async move {
                if let Err(e) = axum::serve(ml, r).await {
                    tracing::warn!("metrics endpoint stopped: {e}");
                }
            });
        }
        tokio::pin!(shutdown);
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, carry on.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = tcp.set_nodelay(true);
            let svc = tower::ServiceExt::map_request(router.clone(), move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req
            });
            let svc = TowerToHyperService::new(svc);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                let result = match acceptor {
                    None => builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc).await,
                    Some(acc) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acc.accept(tcp)).await {
                        Ok(Ok(tls)) => builder.serve_connection_with_upgrades(TokioIo::new(tls), svc).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    },
                };
                if let Err(e) = result {
                    tracing::debug!(%remote, "HTTP connection ended: {e}");
                }
            });
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
    Router::new().route("/", get(page)).route("/ws", get(ws_upgrade)).with_state(app).layer(sio_layer)
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE_HTML))
}

async fn ws_upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let cap = app.limits.hard_frame_cap();
    ws.max_message_size(cap).max_frame_size(cap).on_upgrade(move |socket| serve_ws(app, socket, remote))
}

fn text(msg: &ServerMessage) -> Message {
    Message::Text(msg.to_json().into())
}

/// One `/ws` connection from upgrade to close.
async fn serve_ws(app: Arc<App>, socket: WebSocket, remote: SocketAddr) {
    let (mut sink, mut stream) = socket.split();
    let metrics = app.hub.metrics.clone();
    if let Err(r) = app.admit(remote) {
        tracing::warn!(%remote, "refused: {}", r.message);
        metrics.error(r.code);
        let _ = tokio::time::timeout(SEND_TIMEOUT, async {
            let _ = sink.send(text(&r.to_message())).await;
            let _ =
                sink.send(Message::Close(Some(CloseFrame { code: 1008, reason: "too many connections".into() }))).await;
        })
        .await;
        return;
    }
    metrics.opened(Transport::WebSocket);
    let peer = PeerId::random();
    tracing::debug!(%remote, %peer, "connected");
    let ice = app.ice.for_client(&peer, SystemTime::now());
    let mut outbox = app.hub.attach(&peer);
    let mut gate = Gate::new(app.limits, Instant::now());
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + app.ping_interval, app.ping_interval);
    let dead_after = app.ping_interval * 2;
    let mut last_heard = Instant::now();

    let why: &str = loop {
        tokio::select! {
            frame = stream.next() => {
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
                    Message::Ping(_) | Message::Pong(_) => continue,
                    Message::Close(_) => break "closed by client",
                };
                let verdict = match verdict {
                    Verdict::Accept(msg) => match app.hub.handle(&peer, msg, &ice).await {
                        Ok(()) => continue,
                        Err(r) => gate.strike(r, now),
                    },
                    refused => refused,
                };
                let (r, close) = match verdict {
                    Verdict::Accept(_) => continue,
                    Verdict::Refuse(r) => (r, false),
                    Verdict::RefuseAndClose(r) => (r, true),
                };
                metrics.error(r.code);
                let sent = send(&mut sink, text(&r.to_message())).await;
                if close {
                    metrics.closed_for_abuse.fetch_add(1, Relaxed);
                    tracing::warn!(%peer, %remote, "closing: too many refused messages ({})", r.message);
                    let bye = CloseFrame { code: 1008, reason: "too many refused messages".into() };
                    let _ = send(&mut sink, Message::Close(Some(bye))).await;
                    break "too many refused messages";
                }
                if sent.is_err() {
                    break "write failed";
                }
            }
            out = outbox.recv() => {
                let Some(msg) = out else { break "not reading its messages" };
                if send(&mut sink, text(&msg)).await.is_err() {
                    break "write failed";
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > dead_after {
                    metrics.dropped_dead.fetch_add(1, Relaxed);
                    break "no answer to pings";
                }
                if send(&mut sink, Message::Ping(Default::default())).await.is_err() {
                    break "write failed";
                }
            }
        }
    };
    tracing::debug!(%peer, %remote, "disconnected: {why}");
    app.hub.disconnect(&peer).await;
    app.release(remote);
    metrics.closed(Transport::WebSocket);
}

async fn send<S>(sink: &mut S, m: Message) -> Result<(), ()>
where
    S: futures::Sink<Message> + Unpin,
{
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(m)).await {
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
