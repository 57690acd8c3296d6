//! Arguments of `natkit stun-probe`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportChoice {
    Udp,
    Tcp,
    Tls,
    /// UDP, TCP and TLS to every server
    All,
}

#[derive(Debug, Args)]
#[command(about = "STUN Binding to many servers at once: mapped address, RTT, server attributes")]
pub struct StunProbeArgs {
    /// Servers: HOST, HOST:PORT, [V6]:PORT, or stun:/stuns: URIs (RFC 7064).
    /// Without any, a built-in list of public STUN servers is used (see README).
    #[arg(value_name = "SERVER")]
    pub servers: Vec<String>,

    /// Transport to probe over
    #[arg(long, value_enum, default_value_t = TransportChoice::Udp)]
    pub transport: TransportChoice,

    /// Use IPv4 addresses only
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Use IPv6 addresses only
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Binding requests per server (RTT min/avg/max and loss)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub count: u32,

    /// Milliseconds between repeated requests with --count
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub interval: u64,

    /// Local address to bind: IP or IP:PORT
    #[arg(long, value_name = "ADDR")]
    pub local: Option<String>,

    /// Give up on a server after this many seconds without an answer
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub timeout: f64,

    /// Accept any TLS certificate (self-signed, expired, wrong name); the report says so
    #[arg(long)]
    pub insecure: bool,

    /// Trust this PEM CA certificate for TLS (a private CA)
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}
