//! `natkit signal`: parse flags into a server config, serve until Ctrl-C or
//! SIGTERM, then report what was served.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::cli::SignalArgs;
use crate::error::{Status, UsageError};
use crate::net::conn_limit::raise_nofile_limit;
use crate::output::{self, OutputOptions, Render};
use crate::signal::ice::IceConfig;
use crate::signal::limits::Limits;
use crate::signal::origin::OriginPolicy;
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
    /// The file-descriptor limit (RLIMIT_NOFILE) in force, after raising it to the hard limit.
    pub fd_limit: u64,
    /// The cap on open TCP connections (`--max-conns`, or derived from `fd_limit`).
    pub max_conns: u64,
}

impl Render for SignalReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut t = output::Grid::new(&["page", "ws", "rooms", "connections", "relayed", "errors"]);
        t.row(vec![
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

/// File descriptors kept for listeners, Redis, the metrics endpoint and logs.
const FD_RESERVE: u64 = 64;
/// The most connections `--max-conns` defaults to, whatever the descriptor limit.
const DEFAULT_MAX_CONNS: u64 = 10_000;

/// `--max-conns`, or what the file-descriptor limit allows.
fn max_conns(args: &SignalArgs, fd_limit: u64) -> u64 {
    let fits = fd_limit.saturating_sub(FD_RESERVE).max(1);
    match args.max_conns {
        Some(n) => {
            if n > fits {
                tracing::warn!(
                    "--max-conns {n} is more than the file-descriptor limit {fd_limit} allows ({fits}); \
                     beyond that accepting pauses (raise it with `ulimit -n` or LimitNOFILE=)"
                );
            }
            n
        }
        None => fits.min(DEFAULT_MAX_CONNS),
    }
}

/// The shared secret in `path`, trimmed; an unreadable or empty file is bad input.
fn read_secret_file(path: &std::path::Path) -> Result<String, UsageError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError::new(format!("--turn-secret-file {}: {e}; give a readable file holding the secret", path.display()))
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(UsageError::new(format!(
            "--turn-secret-file {} is empty; put the relay's secret in it",
            path.display()
        )));
    }
    Ok(secret.to_string())
}

/// Flags → server config; `fd_limit` is the descriptor limit in force.
pub fn config_from(args: &SignalArgs, fd_limit: u64) -> anyhow::Result<ServerConfig> {
    if args.idle_timeout <= args.ping_interval {
        return Err(UsageError::new(format!(
            "--idle-timeout {} must be longer than --ping-interval {} (live clients answer pings; idle ones do not)",
            args.idle_timeout, args.ping_interval
        ))
        .into());
    }
    let tls = match (&args.cert, &args.key, args.tls_self_signed) {
        (Some(cert), Some(key), _) => Some(TlsSource::Files { cert: cert.clone(), key: key.clone() }),
        (_, _, true) => Some(TlsSource::SelfSigned { names: vec![] }),
        _ => None,
    };
    let turn_secret = match &args.turn_secret_file {
        Some(path) => Some(read_secret_file(path)?),
        None => args.turn_secret.clone(),
    };
    let ice = IceConfig::new(&args.stun, &args.turn, turn_secret, Duration::from_secs(args.turn_ttl))?;
    let rate = args.max_rate as f64;
    let limits = Limits {
        max_room: args.max_room as usize,
        max_frame: args.max_frame as usize,
        rate,
        burst: rate * 4.0,
        conns_per_ip: args.max_conns_per_ip as usize,
        max_conns: max_conns(args, fd_limit) as usize,
        header_timeout: Duration::from_secs(args.header_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        ..Limits::default()
    };
    Ok(ServerConfig {
        origins: OriginPolicy::new(&args.allow_origin)?,
        listen: args.listen,
        tls,
        limits,
        ice,
        ping_interval: Duration::from_secs(args.ping_interval),
        metrics: args.metrics,
        redis: args.redis.clone(),
        stun: !args.no_stun,
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
    // Each connection is a descriptor: the usual soft limit of 1,024 would cap the server far too low.
    let fd_limit = raise_nofile_limit();
    let config = config_from(&args, fd_limit)?;
    let limits = config.limits;
    let rooms_backend = if config.redis.is_some() { "redis" } else { "memory" };
    let server = Server::bind(config).await?;
    let listen = server.local_addr()?;
    let (http, ws) = if server.is_tls() { ("https", "wss") } else { ("http", "ws") };
    let page_url = format!("{http}://{listen}/");
    let ws_url = format!("{ws}://{listen}/ws");
    output::notice(
        opts,
        &format!("natkit signal: page {page_url}  protocol {ws_url}  socket.io {http}://{listen}/socket.io/"),
    );
    output::notice(
        opts,
        &format!(
            "natkit signal: file-descriptor limit {fd_limit}; up to {} connections, {} per address; \
             header timeout {} s, idle timeout {} s",
            limits.max_conns,
            limits.conns_per_ip,
            limits.header_timeout.as_secs(),
            limits.idle_timeout.as_secs()
        ),
    );
    if let Some(m) = server.metrics_addr() {
        output::notice(opts, &format!("natkit signal: metrics http://{m}/metrics"));
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
        fd_limit,
        max_conns: limits.max_conns as u64,
    };
    output::emit(&report, opts)?;
    Ok(Status::Ok)
}
