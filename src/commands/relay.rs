//! `natkit relay`: a STUN/TURN server with an RFC 5780 responder.
//!
//! Reads the optional coturn turnserver.conf, opens its log file, validates
//! flags and file into [`RelayOptions`], runs the relay ([`serve`]) until
//! SIGINT (stop now) or SIGTERM (drain first), and prints what it did.

use crate::cli::RelayArgs;
use crate::error::{Status, UsageError};
use crate::output::{self, OutputOptions};
use crate::relay::coturn_conf::CoturnConf;
use crate::relay::log_file;
use crate::relay::options::{RelayOptions, config_warnings, read_conf};
use crate::relay::serve::serve;

pub async fn run(args: RelayArgs, opts: &OutputOptions) -> anyhow::Result<Status> {
    let conf = match &args.config {
        Some(path) => read_conf(path)?,
        None => CoturnConf::default(),
    };
    // The log file first, so every warning below lands in it too.
    if let Some(path) = &conf.log_file {
        log_file::open(path, !conf.no_stdout_log).map_err(|e| {
            UsageError::new(format!(
                "cannot open log-file {} for appending: {e}; fix the path or its permissions, or remove log-file",
                path.display()
            ))
        })?;
    }
    if !opts.quiet {
        for w in config_warnings(&args, &conf) {
            tracing::warn!("{w}");
        }
    }
    let options = RelayOptions::from_args(&args, &conf)?;
    let report = serve(options, conf.pidfile.as_deref(), opts).await?;
    output::emit(&report, opts)?;
    Ok(Status::Ok)
}
