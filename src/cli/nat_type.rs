//! Arguments of `natkit nat-type`.

use clap::Args;

#[derive(Debug, Args)]
#[command(
    about = "What your NAT does (RFC 5780 mapping, filtering, hairpinning, port allocation) and what it means for peer-to-peer"
)]
pub struct NatTypeArgs {
    /// STUN server: HOST, HOST:PORT or a stun: URI; repeat for more. The first is the primary and
    /// should support RFC 5780 (OTHER-ADDRESS, CHANGE-REQUEST); with servers that do not, give two or
    /// more and the mapping is found by comparing them. Without any, a built-in list (see README).
    #[arg(long = "server", value_name = "HOST[:PORT]")]
    pub servers: Vec<String>,

    /// Also measure how long an idle mapping lives (RFC 5780 §4.5, needs RESPONSE-PORT support);
    /// bounded by --timeout, which then defaults to 180 s
    #[arg(long)]
    pub lifetime: bool,

    /// Open N fresh sockets and report the pattern of their mapped ports (preserving, sequential, random)
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub ports: u16,

    /// Local address for the primary socket: IP or IP:PORT
    #[arg(long, value_name = "ADDR")]
    pub local: Option<String>,

    /// Give up on a server that never answers after this many seconds (the udp-blocked verdict)
    /// [default: 1]. With --lifetime: the bound on the whole run [default: 180], and the wait for a
    /// silent server is at most 1 s
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,

    /// Skip the port-mapping probe (UPnP-IGD, NAT-PMP, PCP on the default gateway). Without this
    /// flag each protocol maps a fresh UDP port for a moment and deletes it
    #[arg(long)]
    pub no_port_mapping: bool,

    /// Run again every SECS seconds until Ctrl-C, printing one line per run with what changed
    /// (public address, verdicts, port mapping); JSON Lines with --json
    #[arg(long, value_name = "SECS", conflicts_with = "lifetime")]
    pub every: Option<f64>,
}
