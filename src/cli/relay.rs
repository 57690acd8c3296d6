//! Arguments of `natkit relay`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
#[command(
    about = "Run a STUN/TURN relay (RFC 8656) with an RFC 5780 responder, safe by default",
    long_about = "Run a STUN server, a TURN relay (RFC 8656 on RFC 8489) and, with --alt-ip/--alt-port, \
an RFC 5780 NAT behaviour discovery responder, in one process.\n\n\
Safe by default: peers on loopback, private, link-local, multicast, broadcast, reserved and unspecified \
addresses, the relay's own listening ports and every other port of the relay host's own addresses, are refused \
with 403 (IPv6 forms of IPv4 addresses are unwrapped first). Two live allocations on the same relay always reach \
each other, inside the process. Password guessing is throttled per address and per username, unauthenticated \
answers over UDP are budgeted per address (amplification), allocations are capped per username and per address.\n\n\
SIGTERM drains: new allocations are refused (508, or 300 with --alternate-server) while the existing ones \
relay and refresh until they end or --drain-timeout passes. SIGINT, or a second signal during a drain, stops at \
once. Either way the relay then prints a summary (a table, or JSON with --json) and exits 0."
)]
pub struct RelayArgs {
    /// UDP and TCP listen address (repeatable) [default: 0.0.0.0:3478 and [::]:3478]
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,

    /// TLS listen address (repeatable); needs --cert and --key
    #[arg(long, value_name = "ADDR", requires_all = ["cert", "key"])]
    pub tls_listen: Vec<String>,

    /// PEM certificate chain for TLS
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// PEM private key for TLS
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Second IP for the RFC 5780 responder (CHANGE-REQUEST change-IP, OTHER-ADDRESS)
    #[arg(long, value_name = "IP")]
    pub alt_ip: Option<IpAddr>,

    /// Second port for the RFC 5780 responder [default with --alt-ip: listen port + 1]
    #[arg(long, value_name = "PORT")]
    pub alt_port: Option<u16>,

    /// Realm of the long-term credentials
    #[arg(long, value_name = "R")]
    pub realm: Option<String>,

    /// A long-term credential user (repeatable)
    #[arg(long = "user", value_name = "NAME:PASS")]
    pub users: Vec<String>,

    /// TURN REST shared secret: usernames are `expiry[:name]`, passwords base64(HMAC-SHA1(secret, username))
    #[arg(long, value_name = "S", env = "NATKIT_RELAY_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// IP to open relayed sockets on (one per address family) [default: the listen IP, or the first interface address]
    #[arg(long, value_name = "IP")]
    pub relay_ip: Vec<IpAddr>,

    /// Public IP to advertise in XOR-RELAYED-ADDRESS (the relay sits behind a 1:1 NAT)
    #[arg(long, value_name = "IP")]
    pub external_ip: Option<IpAddr>,

    /// Port range for relayed sockets [default: 49152-65535]
    #[arg(long, value_name = "MIN-MAX")]
    pub ports: Option<String>,

    /// Let clients relay to loopback addresses (127.0.0.0/8, ::1)
    #[arg(long)]
    pub allow_loopback_peers: bool,

    /// Let clients relay to private and link-local addresses (RFC 1918, 100.64/10, fc00::/7, 169.254/16, fe80::/10)
    #[arg(long)]
    pub allow_private_peers: bool,

    /// Let clients relay to other ports of the relay host's own non-loopback addresses (interfaces, --relay-ip,
    /// --external-ip); its listening ports stay refused
    #[arg(long)]
    pub allow_relay_host_peers: bool,

    /// Allow peers in this range whatever else applies, except --deny-peer and the relay host's own addresses (repeatable)
    #[arg(long, value_name = "CIDR")]
    pub allow_peer: Vec<String>,

    /// Refuse peers in this range (repeatable); wins over everything
    #[arg(long, value_name = "CIDR")]
    pub deny_peer: Vec<String>,

    /// Allocations in total, 0 for unlimited (lowered at start when the file-descriptor limit cannot hold them)
    /// [default: 10000, or the config file's total-quota]
    #[arg(long, value_name = "N")]
    pub max_allocations: Option<usize>,

    /// Concurrent TCP and TLS connections in total (refused at accept beyond; lowered at start when the
    /// file-descriptor limit cannot hold them)
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_connections: u32,

    /// Concurrent TCP and TLS connections per source IP (refused at accept beyond)
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_connections_per_ip: u32,

    /// Seconds a TCP or TLS connection has to deliver its first complete STUN message (after the TLS handshake)
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub first_message_timeout: u64,

    /// Seconds a TLS client has to finish its handshake
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tls_handshake_timeout: u64,

    /// Seconds a TCP or TLS connection that holds no allocation may stay silent before it is closed
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout: u64,

    /// Bytes queued toward one TCP or TLS client before relayed data to it is dropped (and counted): a
    /// client that does not read cannot make the relay hold more
    #[arg(long, value_name = "BYTES", default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(65_536..=1_073_741_824))]
    pub stream_queue_bytes: u32,

    /// Allocations per username (486 beyond), 0 for unlimited [default: 100, or the config file's user-quota]
    #[arg(long, value_name = "N")]
    pub user_quota: Option<u32>,

    /// Allocations per client IP address, whatever the username (486 beyond; 0: no limit)
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub source_quota: u32,

    /// Permissions per allocation (508 beyond)
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_permissions: usize,

    /// TCP peer connections per TCP allocation (RFC 6062 Connect and inbound peers; 508 beyond)
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_tcp_connections: u64,

    /// Seconds a TCP peer connection waits for the client's ConnectionBind before it is closed (RFC 6062: 30)
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tcp_bind_timeout: u64,

    /// Longest allocation lifetime granted, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(600..=86400))]
    pub max_lifetime: u64,

    /// Seconds a nonce stays valid before 438 Stale Nonce [default: 600, or the config file's stale-nonce]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub nonce_lifetime: Option<u64>,

    /// On SIGTERM, the longest drain (no new allocations, existing ones go on) before the rest are ended
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub drain_timeout: u64,

    /// While draining, answer new Allocates with 300 Try Alternate naming this server instead of 508
    /// [default: the config file's first alternate-server]
    #[arg(long, value_name = "ADDR")]
    pub alternate_server: Option<String>,

    /// Failed logins (wrong MESSAGE-INTEGRITY) from one address, or for one username, before it is locked
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub auth_burst: u32,

    /// Checked logins per second per source address once locked (the first lock lasts 1/RATE s, then doubles)
    #[arg(long, value_name = "RATE", default_value_t = 2.0)]
    pub auth_source_rate: f64,

    /// Checked logins per second per username once locked (the first lock lasts 1/RATE s, then doubles)
    #[arg(long, value_name = "RATE", default_value_t = 10.0)]
    pub auth_user_rate: f64,

    /// Longest lock of an address or username after failed logins, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub auth_max_backoff: u64,

    /// Bytes of unauthenticated answers (Binding, 401 challenges, unsigned errors) one source address may get at once over UDP
    #[arg(long, value_name = "BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(512..=1_073_741_824))]
    pub unauth_burst: u32,

    /// Bytes per second of unauthenticated answers one source address gets over UDP after the burst
    #[arg(long, value_name = "BYTES", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..=1_073_741_824))]
    pub unauth_rate: u32,

    /// Users and REST secrets from coturn's Redis user database (as `turnadmin -a`/`-s` write them), next to
    /// --user/--secret: redis://[:PASS@]HOST:PORT[/DB], or coturn's "ip=H port=N dbname=N password=P"
    /// [default: the config file's redis-userdb]
    #[arg(long, value_name = "URL", env = "NATKIT_RELAY_USERDB", hide_env_values = true)]
    pub userdb: Option<String>,

    /// Seconds an answer of the user database (user found or not) is cached; a user added or deleted with
    /// turnadmin is seen after at most this long
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub userdb_cache: u64,

    /// Usernames the user database cache holds at most
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub userdb_cache_size: u32,

    /// Milliseconds to wait for the user database (connection or lookup) before answering 500
    /// [default: 1000, or the config file's connect_timeout]
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub userdb_timeout: Option<u64>,

    /// Requests waiting for a user database lookup, in total (dropped beyond)
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub userdb_max_pending: u32,

    /// Requests waiting for a user database lookup per source IP (dropped beyond)
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub userdb_max_pending_per_ip: u32,

    /// Serve Prometheus metrics over HTTP on this address
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    /// Connections the --metrics endpoint holds at once (an eighth of them per source address; refused beyond)
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub metrics_max_connections: u32,

    /// Seconds a --metrics client has to send its whole request head before it is closed
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub metrics_header_timeout: u64,

    /// Read options from a coturn turnserver.conf (flags given here win)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Worker threads, each with its own SO_REUSEPORT socket per UDP listen address [default: half the CPU count, 1 to 8]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: Option<u16>,
}
