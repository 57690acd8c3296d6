//! Command-line definitions (clap derive), and the parsers of the values they share
//! (`listen`: a server's listen addresses; `local`: the `--local` of the probes).
//!
//! One file per subcommand holds its arguments; man pages and shell
//! completions are generated from these same definitions (`cargo run --example gen-docs`).

use clap::{Parser, Subcommand};

mod call;
pub mod docs;
mod ice_servers;
pub mod listen;
pub mod local;
mod nat_type;
mod punch;
mod relay;
mod signal;
mod stun_probe;
mod turn_alloc;

pub use call::CallArgs;
pub use ice_servers::IceServerArgs;
pub use nat_type::NatTypeArgs;
pub use punch::PunchArgs;
pub use relay::RelayArgs;
pub use signal::SignalArgs;
pub use stun_probe::{StunProbeArgs, TransportChoice};
pub use turn_alloc::{PeerTransportChoice, TurnAllocArgs, TurnTransportChoice};

/// The exit-code table, shown at the end of every `--help`; the same table is in README.
macro_rules! exit_codes {
    () => {
        "\
Exit codes:
  0    success: every check passed
  1    a check ran and failed (no answer, error response, broken step)
  2    bad usage or bad input (unparsable address, unknown host, bad URI)
  130  interrupted by Ctrl-C before the result (a connected `call` hangs up and exits 0;
       `relay` and `signal` print their summary and exit 0 on SIGINT or SIGTERM)"
    };
}

/// Shown at the end of `natkit --help`.
pub const EXIT_CODES: &str = exit_codes!();

#[derive(Debug, Parser)]
#[command(
    name = "natkit",
    version,
    about = "See, layer by layer, how two hosts behind NATs reach each other",
    long_about = "natkit shows, layer by layer, how two hosts behind NATs reach each other, \
and makes each layer work for real: STUN, NAT behaviour, TURN, signaling, hole punching, WebRTC.\n\n\
Results go to stdout (a table, or JSON with --json); progress and logs go to stderr.",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    /// Print the report as JSON on stdout (field names are a stable contract)
    #[arg(long, global = true)]
    pub json: bool,

    /// More logging on stderr (-v info, -vv debug, -vvv trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// No progress and no warnings on stderr; only the result on stdout
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Tables with every column (default: the columns that fit a terminal; --json has all)
    #[arg(long, global = true)]
    pub wide: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// STUN Binding to many servers at once (UDP, TCP, TLS; IPv4/IPv6)
    #[command(after_help = concat!("Examples:
  natkit stun-probe                                   the built-in public servers, over UDP
  natkit stun-probe stun.l.google.com:19302 stuns:stun.example.org --transport all
  natkit stun-probe 203.0.113.7 --count 10 --json     RTT and loss to one server, for a script\n\n", exit_codes!()))]
    StunProbe(StunProbeArgs),

    /// NAT behaviour discovery (RFC 5780): mapping, filtering, hairpinning, and what it means for P2P
    #[command(after_help = concat!("Examples:
  natkit nat-type                                     mapping, filtering and what it means
  natkit nat-type --server 203.0.113.7:3478           your own RFC 5780 server (natkit relay --alt-ip ...)
  natkit nat-type --lifetime                          also how long an idle mapping lives\n\n", exit_codes!()))]
    NatType(NatTypeArgs),

    /// STUN/TURN relay with an RFC 5780 responder, safe by default
    #[command(after_help = concat!("Examples:
  natkit relay --user alice:s3cret --external-ip 203.0.113.7
  natkit relay --secret REST-SECRET --metrics 127.0.0.1:9641
  natkit relay --config /etc/turnserver.conf          migrate from coturn\n\n", exit_codes!()))]
    Relay(Box<RelayArgs>),

    /// Prove a TURN server relays, step by step, and audit its safety
    #[command(after_help = concat!("Examples:
  natkit turn-alloc 203.0.113.7 --user alice --password s3cret
  natkit turn-alloc turns:turn.example.org --secret REST-SECRET
  natkit turn-alloc 203.0.113.7 -u alice -p s3cret --transport tcp --json\n\n", exit_codes!()))]
    TurnAlloc(TurnAllocArgs),

    /// Rendezvous and signaling server with the browser video-chat page
    #[command(after_help = concat!("Examples:
  natkit signal --listen 0.0.0.0:8080                 page and /ws on port 8080
  natkit signal --listen 0.0.0.0:8443 --tls-self-signed --turn turn:203.0.113.7 --turn-secret REST-SECRET
  natkit signal --redis redis://127.0.0.1:6379        one node of many\n\n", exit_codes!()))]
    Signal(SignalArgs),

    /// UDP hole punching to a peer through `natkit signal`, then an encrypted QUIC stream
    #[command(after_help = concat!("Examples:
  natkit punch --signal ws://203.0.113.7:8080 --room r1 --recv photo.jpg
  natkit punch --signal ws://203.0.113.7:8080 --room r1 --send photo.jpg
  natkit punch --signal ws://203.0.113.7:8080 --room r1 --stdio        like netcat\n\n", exit_codes!()))]
    Punch(PunchArgs),

    /// A WebRTC media session from the terminal that a browser can talk to
    #[command(after_help = concat!("Examples:
  natkit call --signal wss://203.0.113.7:8443 --room room1 --insecure
  natkit call --signal ws://127.0.0.1:8080 --room r1 --send clip.ivf --record out
  natkit call --signal ws://127.0.0.1:8080 --room r1 --relay-only --turn 203.0.113.7 --turn-secret S\n\n", exit_codes!()))]
    Call(CallArgs),
}
