//! Command-line definitions (clap derive) and nothing else.
//!
//! One file per subcommand holds its arguments; man pages and shell
//! completions are generated from these same definitions (`cargo run --example gen-docs`).

use clap::{Parser, Subcommand};

mod call;
pub mod docs;
mod ice_servers;
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
pub use turn_alloc::{TurnAllocArgs, TurnTransportChoice};

/// Shown at the end of `--help`; the same text is in README.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success: every check passed
  1  a check ran and failed (no answer, error response, broken step)
  2  bad usage or bad input (unparsable address, unknown host, bad URI)
  130  interrupted by Ctrl-C before the result (a connected `call` hangs up and exits 0;
       `relay` and `signal` print their summary and exit 0 on SIGINT or SIGTERM)";

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
    #[command(after_help = EXIT_CODES)]
    StunProbe(StunProbeArgs),

    /// NAT behaviour discovery (RFC 5780): mapping, filtering, hairpinning, and what it means for P2P
    #[command(after_help = EXIT_CODES)]
    NatType(NatTypeArgs),

    /// STUN/TURN relay with an RFC 5780 responder, safe by default
    #[command(after_help = EXIT_CODES)]
    Relay(Box<RelayArgs>),

    /// Prove a TURN server relays, step by step, and audit its safety
    #[command(after_help = EXIT_CODES)]
    TurnAlloc(TurnAllocArgs),

    /// Rendezvous and signaling server with the browser video-chat page
    #[command(after_help = EXIT_CODES)]
    Signal(SignalArgs),

    /// UDP hole punching to a peer through `natkit signal`, then an encrypted QUIC stream
    #[command(after_help = EXIT_CODES)]
    Punch(PunchArgs),

    /// A WebRTC media session from the terminal that a browser can talk to
    #[command(after_help = EXIT_CODES)]
    Call(CallArgs),
}
