//! The start-up sequence of `natkit relay`, after its options are validated:
//! raise the descriptor limit and fit the caps to it, install the signal
//! handlers (SIGTERM drains, SIGINT stops, SIGHUP reopens the log file), bind
//! every socket, write the pidfile, say where it listens, run the driver until
//! it stops, and return the summary. The data path is the driver's
//! ([`crate::net::relay_driver`]); this module only calls it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::error::UsageError;
use crate::net::conn_limit::raise_nofile_limit;
use crate::net::relay_driver::{self, Stop};
use crate::output::{self, OutputOptions};
use crate::relay::descriptors::fit_descriptors;
use crate::relay::log_file;
use crate::relay::options::RelayOptions;
use crate::relay::report::RelayReport;

/// Runs the relay with these options until a signal stops it (or it fails to
/// start: a busy port, a bad pidfile path), and returns what it did.
pub async fn serve(
    mut plan: RelayOptions,
    pidfile: Option<&Path>,
    opts: &OutputOptions,
) -> anyhow::Result<RelayReport> {
    let nofile = raise_nofile_limit();
    let fds = fit_descriptors(&mut plan, nofile);
    if let Some(w) = &fds.warning
        && !opts.quiet
    {
        tracing::warn!("{w}");
    }
    if plan.has_no_users() && !opts.quiet {
        tracing::warn!("no --user and no --secret: STUN is answered, every TURN allocation is refused (401)");
    }
    // Handlers before the first socket: a signal that comes as soon as the port answers is not lost.
    let stop = stop_requests()?;
    reopen_log_on_hangup()?;
    // Every bind first: a busy port is an error, and "listening on" is only said when true.
    let bound = relay_driver::bind(&plan.driver).await.map_err(|e| UsageError::new(e.to_string()))?;
    // After the bind: a pidfile names a process that serves (or none, when the bind failed).
    let _pidfile = pidfile.map(PidFile::write).transpose()?;
    let userdb = match (&plan.driver.userdb, &plan.core.userdb) {
        (Some(d), Some(c)) => format!(
            "; users also from {} (cached {} s)",
            crate::relay::userdb_redis::redacted(&d.url),
            c.cache_ttl.as_secs()
        ),
        _ => String::new(),
    };
    let start_line = format!(
        "natkit relay: listening on {}; relaying from {} ports {}-{}; file descriptors {}{userdb}",
        plan.listening.join(", "),
        plan.driver.relay_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" and "),
        plan.driver.ports.0,
        plan.driver.ports.1,
        fds.limit
    );
    log_file::line(&start_line);
    if log_file::stderr_wanted() {
        output::notice(opts, &start_line);
    }
    let started = Instant::now();
    let (stats, tcp_connections) = relay_driver::run(plan.core, plan.driver.clone(), bound, stop)
        .await
        .map_err(|e| UsageError::new(e.to_string()))?;
    let report = RelayReport::new(&plan.listening, &plan.driver.relay_ips, &stats, tcp_connections, started.elapsed());
    tracing::info!(
        allocations = report.allocations_created,
        packets = report.packets_to_peers + report.packets_from_peers + report.packets_internal,
        "natkit relay stopped"
    );
    log_file::line(&format!(
        "natkit relay: stopped after {} s; {} allocations created",
        started.elapsed().as_secs(),
        report.allocations_created
    ));
    Ok(report)
}

/// Signals as stop requests: SIGTERM (what systemd, Kubernetes and most
/// orchestrators send when scaling in) drains; SIGINT (Ctrl-C at a terminal)
/// stops now; a second signal during a drain stops now (the driver's rule).
fn stop_requests() -> anyhow::Result<mpsc::Receiver<Stop>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let stop = tokio::select! {
                _ = term.recv() => Stop::Drain,
                _ = int.recv() => Stop::Now,
            };
            if tx.send(stop).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// SIGHUP reopens the log file by name (logrotate renamed it), as coturn
/// does; without a log file it is ignored rather than ending the relay.
fn reopen_log_on_hangup() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match log_file::reopen() {
                Ok(Some(path)) => tracing::info!("SIGHUP: log file {} reopened", path.display()),
                Ok(None) => tracing::info!("SIGHUP: no log-file to reopen"),
                // Lines keep going to the old file descriptor; say so where it can be seen.
                Err(e) => tracing::error!("SIGHUP: cannot reopen the log file: {e}; still writing to the old one"),
            }
        }
    });
    Ok(())
}

/// coturn's `pidfile`: this process's id, written at start, removed when the
/// relay ends (Drop, on every way out of `run`).
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: &Path) -> Result<PidFile, UsageError> {
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|e| {
            UsageError::new(format!(
                "cannot write pidfile {}: {e}; fix the path or its permissions, or remove pidfile",
                path.display()
            ))
        })?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
