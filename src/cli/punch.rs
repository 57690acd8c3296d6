//! Arguments of `natkit punch`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
#[command(about = "Punch a direct UDP path to a peer through `natkit signal`, then an encrypted QUIC stream")]
pub struct PunchArgs {
    /// The signal server: ws://HOST:PORT, wss://HOST:PORT (or http(s)://)
    #[arg(long, value_name = "URL")]
    pub signal: String,

    /// Room to meet the peer in
    #[arg(long, value_name = "ROOM")]
    pub room: String,

    #[command(flatten)]
    pub servers: super::IceServerArgs,

    /// Never use a TURN relay, even one the signal server hands out: direct paths only
    #[arg(long, conflicts_with = "relay_only")]
    pub no_relay: bool,

    /// Never try the birthday method (many mappings and random-port probes) when one NAT is
    /// symmetric and the other is not
    #[arg(long)]
    pub no_birthday: bool,

    /// Do not ask the router on the way to the servers (PCP, NAT-PMP, UPnP-IGD) to map the
    /// punch socket's port; by default a mapping is offered as a candidate and deleted at the end
    #[arg(long)]
    pub no_port_mapping: bool,

    /// Send this file to the peer (its size and SHA-256 are checked at the end)
    #[arg(long, value_name = "FILE", group = "mode")]
    pub send: Option<PathBuf>,

    /// Receive the peer's file into this path
    #[arg(long, value_name = "FILE", group = "mode")]
    pub recv: Option<PathBuf>,

    /// With --recv: overwrite the file if it exists
    #[arg(long, requires = "recv")]
    pub force: bool,

    /// Pipe stdin to the peer and the peer to stdout (like netcat)
    #[arg(long, group = "mode")]
    pub stdio: bool,

    /// Offer only these local IPs as host candidates (default: every interface but loopback)
    #[arg(long = "host-ip", value_name = "IP")]
    pub host_ips: Vec<IpAddr>,

    /// Give up when the peer has not joined, or no path works, after this many seconds
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub timeout: f64,

    /// Report the selected path lost when its consent checks (RFC 7675) go unanswered this
    /// many seconds; consent itself expires after 30 s, and then the session ends
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=30))]
    pub path_lost_after: u64,

    /// Accept a self-signed certificate from a wss:// signal server
    #[arg(long)]
    pub insecure: bool,
}
