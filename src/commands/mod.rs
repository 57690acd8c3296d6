//! One module per subcommand: each wires a protocol core to a driver and
//! builds a typed report for the output layer.

use crate::cli::{Cli, Command};
use crate::error::Status;
use crate::output::{Format, OutputOptions};

pub mod call;
pub mod nat_type;
pub mod punch;
pub mod relay;
pub mod signal;
pub mod stun_probe;
pub mod turn_alloc;

/// Logs go to stderr; `-v` raises the level, `RUST_LOG` overrides it.
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("natkit={level},{}", if verbose >= 3 { "trace" } else { "warn" }))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // stderr, until `natkit relay` points it at a turnserver.conf `log-file`.
        .with_writer(crate::relay::log_file::LogSink)
        // Colour codes only for a person's terminal, never into a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(verbose >= 2)
        .try_init();
}

/// A client command, ended by Ctrl-C with [`crate::error::Interrupted`] (exit 130): one line
/// on stderr instead of a half-filled report.
async fn until_interrupted(command: impl Future<Output = anyhow::Result<Status>>) -> anyhow::Result<Status> {
    tokio::select! {
        r = command => r,
        _ = tokio::signal::ctrl_c() => Err(crate::error::Interrupted.into()),
    }
}

/// Runs the parsed command line to completion.
pub fn run(cli: Cli) -> anyhow::Result<Status> {
    let opts = OutputOptions { format: if cli.json { Format::Json } else { Format::Table }, quiet: cli.quiet };
    crate::output::set_layout(if cli.wide { crate::output::Layout::Wide } else { crate::output::Layout::Compact });
    // nat-type drives a few sockets from one task: a single-threaded runtime starts sooner (no
    // worker threads, no CPU-quota lookup in /proc) and its latency is what the command is about.
    let mut builder = match cli.command {
        Command::NatType(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = builder.enable_all().build()?;
    let status = rt.block_on(async move {
        match cli.command {
            Command::StunProbe(args) => until_interrupted(stun_probe::run(args, &opts)).await,
            Command::TurnAlloc(args) => until_interrupted(turn_alloc::run(args, &opts)).await,
            // nat-type handles Ctrl-C itself: it deletes its router port mappings first (exit 130).
            Command::NatType(args) => nat_type::run(args, &opts).await,
            // punch too: it deletes its router port mapping first (exit 130).
            Command::Punch(args) => punch::run(args, &opts).await,
            // call hangs up a connected call on Ctrl-C itself (report, exit 0) and maps an
            // interrupted wait to 130; the servers end on SIGINT/SIGTERM with their summary.
            Command::Call(args) => call::run(args, &opts).await,
            Command::Relay(args) => relay::run(*args, &opts).await,
            Command::Signal(args) => signal::run(args, &opts).await,
        }
    });
    // The result is printed: do not wait for blocking work still running, such as a name
    // lookup that outlived the command's deadline (glibc may retry a silent DNS server for
    // tens of seconds), which dropping the runtime would otherwise wait for.
    rt.shutdown_background();
    status
}
