//! The TCP relaying step of `natkit turn-alloc --peer-transport tcp`
//! (RFC 6062 §4): a TCP allocation over a TCP or TLS control connection, a
//! permission and a Connect to a TCP echo peer, ConnectionBind on a second
//! connection, then messages through the relay and back, with their
//! round-trip times and the bytes echoed. The TURN exchanges go through the
//! client core ([`crate::turn::client`]); this module only moves bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::server_spec::Host;
use crate::net::stream::{self, StreamConn};
use crate::net::tls::TlsClient;
use crate::net::turn_session::{Link, TurnSession};
use crate::stun::error_code::ErrorCode;
use crate::stun::transaction::Reliability;
use crate::turn::client::{Auth, ClientConfig, Event, Failure, Request, Success, TurnClient};
use crate::turn::credentials::Credentials;

/// What the step needs.
pub struct TcpAuditConfig<'a> {
    pub server: SocketAddr,
    pub host: &'a Host,
    pub tls: Option<&'a TlsClient>,
    pub credentials: Option<Credentials>,
    /// The TCP echo peer (`--peer`).
    pub peer: SocketAddr,
    pub messages: u32,
    pub size: usize,
    pub timeout: Duration,
}

/// What the step found (JSON `tcp_relay`).
#[derive(Debug, Clone, Serialize)]
pub struct TcpRelayReport {
    pub ok: bool,
    pub peer: SocketAddr,
    /// The relayed TCP address.
    pub relayed: Option<SocketAddr>,
    pub connection_id: Option<u32>,
    pub messages_sent: u32,
    pub messages_echoed: u32,
    pub bytes_echoed: u64,
    /// Round trips client → relay → peer → relay → client.
    pub rtt_ms: Option<TcpRtt>,
    /// What happened, or where it stopped and why.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TcpRtt {
    pub min: f64,
    pub avg: f64,
    pub max: f64,
}

fn client(cfg: &TcpAuditConfig<'_>) -> TurnClient {
    TurnClient::new(ClientConfig {
        credentials: cfg.credentials.clone(),
        reliability: Reliability::Reliable { ti: cfg.timeout },
        request_timeout: cfg.timeout,
        pad_channel_data: true,
    })
}

async fn open(cfg: &TcpAuditConfig<'_>) -> Result<StreamConn, String> {
    stream::connect(cfg.server, None, cfg.host, cfg.tls, cfg.timeout).await.map_err(|e| e.to_string())
}

fn failed(what: &str, f: &Failure) -> String {
    match f {
        Failure::Error { code: ErrorCode::BadRequest, .. } if what == "Allocate (TCP)" => {
            format!("{what}: {f} (RFC 6062 needs a TCP or TLS connection to the server)")
        }
        Failure::Error { code: ErrorCode::UnsupportedTransportProtocol, .. } => {
            format!("{what}: {f}: the server does not relay TCP (coturn: remove no-tcp-relay)")
        }
        Failure::Error { code: ErrorCode::Forbidden, .. } => {
            format!("{what}: {f}: the server's policy refuses this peer")
        }
        Failure::Error { code: ErrorCode::ConnectionTimeoutOrFailure, .. } => {
            format!("{what}: {f}: the relay could not reach the peer over TCP")
        }
        _ => format!("{what}: {f}"),
    }
}

async fn ask(s: &mut TurnSession, req: Request, what: &str) -> Result<Success, String> {
    let a = s.request(req, Auth::Credentials).await.map_err(|e| format!("{what}: connection: {e}"))?;
    a.result.map_err(|f| failed(what, &f))
}

/// ConnectionBind on `conn` through the client core, answering a 401 as usual.
async fn bind(conn: &mut StreamConn, mut c: TurnClient, id: u32, timeout: Duration) -> Result<(), String> {
    let rid = c.request(Request::ConnectionBind { connection_id: id }, Auth::Credentials, Instant::now());
    let deadline = Instant::now() + timeout * 3;
    loop {
        while let Some(b) = c.poll_transmit(Instant::now()) {
            conn.send(&b).await.map_err(|e| format!("ConnectionBind: {e}"))?;
        }
        while let Some(ev) = c.poll_event() {
            if let Event::Response { id: got, result, .. } = ev
                && got == rid
            {
                return result.map(|_| ()).map_err(|f| failed("ConnectionBind", &f));
            }
        }
        let wake = c.poll_timeout().unwrap_or(deadline).min(deadline);
        if Instant::now() >= deadline {
            return Err(format!("ConnectionBind: no answer within {:.1} s", (timeout * 3).as_secs_f64()));
        }
        tokio::select! {
            f = conn.recv_frame() => {
                let f = f.map_err(|e| format!("ConnectionBind: {e}"))?;
                c.handle_input(&f, Instant::now());
            }
            _ = tokio::time::sleep_until(wake.into()) => c.handle_timeout(Instant::now()),
        }
    }
}

impl TcpRelayReport {
    /// A step that stopped at `detail`, before anything was learned.
    pub fn failed(peer: SocketAddr, detail: String) -> Self {
        TcpRelayReport {
            ok: false,
            peer,
            relayed: None,
            connection_id: None,
            messages_sent: 0,
            messages_echoed: 0,
            bytes_echoed: 0,
            rtt_ms: None,
            detail,
        }
    }
}

/// Runs the step; never fails as a whole (the report says where it stopped).
pub async fn run(cfg: &TcpAuditConfig<'_>) -> TcpRelayReport {
    let mut r = TcpRelayReport::failed(cfg.peer, String::new());
    if let Err(why) = steps(cfg, &mut r).await {
        r.detail = why;
    }
    r
}

async fn steps(cfg: &TcpAuditConfig<'_>, r: &mut TcpRelayReport) -> Result<(), String> {
    let ctl = open(cfg).await.map_err(|e| format!("control connection: {e}"))?;
    let local = ctl.local;
    let mut ctl = TurnSession::new(Link::Stream(ctl), client(cfg), local, cfg.server);
    let ok = ask(&mut ctl, Request::AllocateTcp { lifetime: Some(600) }, "Allocate (TCP)").await?;
    r.relayed = ok.relayed;
    ask(&mut ctl, Request::CreatePermission { peers: vec![cfg.peer] }, "CreatePermission").await?;
    let ok = ask(&mut ctl, Request::Connect { peer: cfg.peer }, "Connect").await?;
    let id = ok.connection_id.ok_or("Connect: the success has no CONNECTION-ID")?;
    r.connection_id = Some(id);
    let mut data = open(cfg).await.map_err(|e| format!("data connection: {e}"))?;
    let mut dc = client(cfg);
    if let (Some(realm), Some(nonce)) = (ctl.client.realm(), ctl.client.nonce()) {
        dc.set_realm(realm.to_string());
        dc.set_nonce(nonce.to_string());
    }
    bind(&mut data, dc, id, cfg.timeout).await?;
    let mut raw = data.into_inner();
    let mut rtts = Vec::new();
    let mut back = vec![0u8; cfg.size];
    for i in 0..cfg.messages {
        let mut msg = vec![0u8; cfg.size];
        for (k, b) in msg.iter_mut().enumerate() {
            *b = (i as usize).wrapping_mul(31).wrapping_add(k) as u8;
        }
        let t = Instant::now();
        raw.write_all(&msg).await.map_err(|e| format!("sending through the relay: {e}"))?;
        r.messages_sent += 1;
        match tokio::time::timeout(cfg.timeout, raw.read_exact(&mut back)).await {
            Ok(Ok(_)) if back == msg => {
                rtts.push(t.elapsed().as_secs_f64() * 1000.0);
                r.messages_echoed += 1;
                r.bytes_echoed += cfg.size as u64;
            }
            Ok(Ok(_)) => return Err(format!("message {i} came back changed: does --peer echo TCP?")),
            Ok(Err(e)) => return Err(format!("reading the echo of message {i}: {e}")),
            Err(_) => {
                return Err(format!(
                    "message {i} did not come back within {:.1} s: does --peer echo TCP?",
                    cfg.timeout.as_secs_f64()
                ));
            }
        }
    }
    if !rtts.is_empty() {
        let min = rtts.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rtts.iter().copied().fold(0.0, f64::max);
        r.rtt_ms = Some(TcpRtt { min, avg: rtts.iter().sum::<f64>() / rtts.len() as f64, max });
    }
    let _ = raw.shutdown().await;
    // Deallocate (the relay closes the peer connection with it).
    let _ = ctl.request(Request::Refresh { lifetime: 0 }, Auth::Credentials).await;
    r.ok = r.messages_echoed == cfg.messages;
    r.detail = format!(
        "TCP allocation {}, connection {id:#010x} to {}: {}/{} messages of {} bytes echoed",
        r.relayed.map(|a| a.to_string()).unwrap_or_default(),
        cfg.peer,
        r.messages_echoed,
        cfg.messages,
        cfg.size
    );
    Ok(())
}
