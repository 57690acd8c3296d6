//! Arguments of `natkit turn-alloc`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TurnTransportChoice {
    Udp,
    Tcp,
    Tls,
}

/// What the data test's peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerTransportChoice {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Args)]
#[command(about = "Prove a TURN server relays, step by step, and audit its safety")]
pub struct TurnAllocArgs {
    /// TURN server: HOST[:PORT], or a turn:/turns: URI (RFC 7065, `?transport=tcp`)
    #[arg(value_name = "SERVER")]
    pub server: String,

    /// Transport to the server (a turns: URI means tls); default udp
    #[arg(long, value_enum)]
    pub transport: Option<TurnTransportChoice>,

    /// Long-term credential username (with --password), or the name part of a REST username (with --secret)
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Option<String>,

    /// Long-term credential password
    #[arg(long, short = 'p', value_name = "PASS", requires = "user", conflicts_with = "secret")]
    pub password: Option<String>,

    /// TURN REST API shared secret (coturn use-auth-secret / static-auth-secret): natkit makes the credentials
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,

    /// The realm you expect; a server announcing another one fails the check
    #[arg(long, value_name = "REALM")]
    pub realm: Option<String>,

    /// Test data through the relay to this UDP echo peer instead of to a second allocation
    #[arg(long, value_name = "ADDR")]
    pub peer: Option<String>,

    /// tcp: add a TCP relaying step (RFC 6062): a TCP allocation, Connect to --peer (a TCP echo
    /// peer), bytes through the relay and back; needs --transport tcp or tls. The UDP steps then
    /// use a second allocation as their peer
    #[arg(long, value_enum, default_value = "udp", value_name = "PROTO")]
    pub peer_transport: PeerTransportChoice,

    /// Packets sent through the relay for the quality test
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub packets: u32,

    /// Packets per second for the quality test (50 is like an audio stream)
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,

    /// Payload bytes per test packet
    #[arg(long, default_value_t = 172, value_parser = clap::value_parser!(u16).range(16..=1200))]
    pub size: u16,

    /// Requested allocation lifetime in seconds
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub lifetime: u32,

    /// Wait this long idle, then check whether the first nonce is still accepted (coturn's default expiry is 600 s)
    #[arg(long, value_name = "SECS")]
    pub nonce_wait: Option<f64>,

    /// Accept any TLS certificate (the audit still reports a bad one)
    #[arg(long)]
    pub insecure: bool,

    /// Trust this PEM CA certificate for TLS
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Seconds to wait for each answer
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub timeout: f64,

    /// Use only IPv4 addresses of the server
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Use only IPv6 addresses of the server
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Run the audit again and again, a run every SECS (counted from the previous start;
    /// never overlapping), until Ctrl-C: one line per run, or JSON Lines with --json
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub every: Option<u64>,

    /// With --every: serve the last run's results as Prometheus metrics at http://ADDR/metrics
    #[arg(long, value_name = "ADDR", requires = "every")]
    pub metrics: Option<SocketAddr>,

    /// Connections the --metrics endpoint holds at once (an eighth of them per source address; refused beyond)
    #[arg(long, value_name = "N", default_value_t = 64, requires = "metrics",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub metrics_max_connections: u32,

    /// Seconds a --metrics client has to send its whole request head before it is closed
    #[arg(long, value_name = "SECS", default_value_t = 5, requires = "metrics",
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub metrics_header_timeout: u64,
}
