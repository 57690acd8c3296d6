//! Arguments of `natkit signal`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
#[command(
    about = "Rendezvous and signaling server: rooms, offer/answer/ICE relay, the browser video-chat page",
    long_about = "Rendezvous and signaling server: rooms, and relay of offer, answer and ICE candidates between \
their members. Serves the video-chat page at / (open it in two browsers, same room, Connect), the JSON \
protocol at /ws (used by `natkit punch` and `natkit call`), and socket.io 2.x at /socket.io/ for the \
classic WebRTC tutorials' client. With --redis, any number of nodes share rooms.\n\n\
Runs until interrupted (Ctrl-C or SIGTERM), then prints a summary."
)]
pub struct SignalArgs {
    /// Where to serve HTTP(S) and WebSocket: PORT, IP, IP:PORT, [IPv6]:PORT or HOST:PORT
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR",
          value_parser = |s: &str| super::listen::parse_listen(s, SocketAddr::from(([127, 0, 0, 1], 8080))))]
    pub listen: SocketAddr,

    /// Serve HTTPS with a certificate made at start (browsers give the camera only to secure origins)
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    pub tls_self_signed: bool,

    /// Serve HTTPS with this certificate chain (PEM); needs --key
    #[arg(long, requires = "key", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) for --cert
    #[arg(long, requires = "cert", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Share rooms with other nodes through Redis, e.g. redis://127.0.0.1:6379/
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// Do not answer STUN Binding on the UDP port of --listen (by default it does: `natkit punch`
    /// asks there to learn whether its NAT's mapping varies with the destination port)
    #[arg(long)]
    pub no_stun: bool,

    /// STUN URI handed to clients in ice_servers (repeatable), e.g. stun:stun.example.org:3478
    #[arg(long = "stun", value_name = "URL")]
    pub stun: Vec<String>,

    /// TURN URI handed to clients in ice_servers (repeatable), e.g. turn:turn.example.org:3478?transport=udp
    #[arg(long = "turn", value_name = "URL")]
    pub turn: Vec<String>,

    /// Give each client its own time-limited TURN REST credentials made with this shared secret
    /// (coturn use-auth-secret, `natkit relay --secret`)
    #[arg(long, value_name = "S")]
    pub turn_secret: Option<String>,

    /// Read the TURN REST shared secret from this file (surrounding whitespace ignored), so it
    /// stays out of the process list; a systemd credential (deploy/natkit-signal.service)
    #[arg(long, value_name = "PATH", conflicts_with = "turn_secret")]
    pub turn_secret_file: Option<PathBuf>,

    /// Lifetime of the per-client TURN credentials, in seconds
    #[arg(long, default_value_t = 86400, value_name = "SECS", value_parser = clap::value_parser!(u64).range(60..=31_536_000))]
    pub turn_ttl: u64,

    /// Most members in one room
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub max_room: u64,

    /// Largest message in bytes; bigger ones get an error
    #[arg(long, default_value_t = 65536, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(64..=16777216))]
    pub max_frame: u64,

    /// Messages per second one connection may send (bursts of four times this are allowed)
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_rate: u64,

    /// Open connections per client IP address (an IPv6 /64 counts as one address); socket.io sessions
    /// are counted apart against the same cap
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_conns_per_ip: u64,

    /// A web page origin allowed to use the server besides its own page (repeatable), e.g.
    /// https://app.example.org; * allows every site. Clients that send no Origin are always allowed
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,

    /// Open TCP connections in total, counted at accept; socket.io sessions are counted apart against the same
    /// cap [default: the file-descriptor limit minus 64, at most 10000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_conns: Option<u64>,

    /// Seconds a connection has to send its HTTP request head (TLS handshake included), after accept
    /// and after each response on a kept-alive connection
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub header_timeout: u64,

    /// Seconds without receiving anything after which a connection is closed (longer than --ping-interval)
    #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = clap::value_parser!(u64).range(2..=86400))]
    pub idle_timeout: u64,

    /// Seconds between keepalive pings; a client silent for two intervals is dropped and its room told
    #[arg(long, default_value_t = 15, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ping_interval: u64,

    /// With --redis: seconds after which a node that stopped heartbeating counts as dead
    /// and its members leave their rooms
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub node_ttl: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}
