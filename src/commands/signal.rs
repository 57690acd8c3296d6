//! `natkit signal`: parse flags into a server config, serve until Ctrl-C or
//! SIGTERM, then report what was served.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::cli::SignalArgs;
use crate::error::Status;
use crate::output::{self, OutputOptions, Render};
use crate::signal::ice::IceConfig;
use crate::signal::limits::Limits;
use crate::signal::redis::Presence;
use crate::signal::server::{Server, ServerConfig, TlsSource};

/// What `natkit signal` prints when it stops (JSON field names are a contract).
#[derive(Debug, Serialize)]
pub struct SignalReport {
    /// The address served on.
    pub listen: SocketAddr,
    /// The page's URL.
    pub page_url: String,
    /// The `/ws` endpoint's URL.
    pub ws_url: String,
    /// `memory` (one node) or `redis`.
    pub rooms_backend: &'static str,
    /// Client connections accepted (WebSocket and socket.io).
    pub connections: u64,
    /// Offers, answers and candidates delivered.
    pub relayed: u64,
    /// Messages refused with an error.
    pub errors: u64,
}

impl Render for SignalReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut t = output::table(&["page", "ws", "rooms", "connections", "relayed", "errors"]);
        t.add_row(vec![
            self.page_url.clone(),
            self.ws_url.clone(),
            self.rooms_backend.to_string(),
            self.connections.to_string(),
            self.relayed.to_string(),
            self.errors.to_string(),
        ]);
        writeln!(out, "{t}")
    }
}

pub fn config_from(args: &SignalArgs) -> anyhow::Result<ServerConfig> {
    let tls = match (&args.cert, &args.key, args.tls_self_signed) {
        (Some(cert), Some(key), _) => Some(TlsSource::Files { cert: cert.clone(), key: key.clone() }),
        (_, _, true) => Some(TlsSource::SelfSigned { names: vec![] }),
        _ => None,
    };
    let ice = IceConfig::new(&args.stun, &args.turn, args.turn_secret.clone(), Duration::from_secs(args.turn_ttl))?;
    let rate = args.max_rate as f64;
    let limits = Limits {
        max_room: args.max_room as usize,
        max_frame: args.max_frame as usize,
        rate,
        burst: rate * 4.0,
        conns_per_ip: args.max_conns_per_ip as usize,
        ..Limits::default()
    };
    Ok(ServerConfig {
        listen: args.listen,
        tls,
        limits,
        ice,
        ping_interval: Duration::from_secs(args.ping_interval),
        metrics: args.metrics,
        redis: args.redis.clone(),
        presence: Presence {
            heartbeat: Duration::from_secs(args.node_ttl).div_f64(5.0).max(Duration::from_millis(200)),
            node_ttl: Duration::from_secs(args.node_ttl),
        },
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub async fn run(args: SignalArgs, opts: &OutputOptions) -> anyhow::Result<Status> {
    let config = config_from(&args)?;
    let rooms_backend = if config.redis.is_some() { "redis" } else { "memory" };
    let server = Server::bind(config).await?;
    let listen = server.local_addr()?;
    let (http, ws) = if server.is_tls() { ("https", "wss") } else { ("http", "ws") };
    let page_url = format!("{http}://{listen}/");
    let ws_url = format!("{ws}://{listen}/ws");
    if !opts.quiet {
        eprintln!("natkit signal: page {page_url}  protocol {ws_url}  socket.io {http}://{listen}/socket.io/");
        if let Some(m) = server.metrics_addr() {
            eprintln!("natkit signal: metrics http://{m}/metrics");
        }
    }
    let summary = server.run(shutdown_signal()).await?;
    let report = SignalReport {
        listen,
        page_url,
        ws_url,
        rooms_backend,
        connections: summary.connections,
        relayed: summary.relayed,
        errors: summary.errors,
    };
    output::emit(&report, opts)?;
    Ok(Status::Ok)
}
