//! `natkit punch`: validates the command line, runs a session (`crate::punch::session`) and
//! renders its report (`crate::punch::report`).

use crate::cli::PunchArgs;
use crate::error::{Status, UsageError, usage};
use crate::ice::server_list;
use crate::net::server_spec::Family;
use crate::output::{self, OutputOptions};
use crate::punch::port_mapping::Mappings;
use crate::punch::report::PunchReport;
use crate::punch::session::{self, Mode};
use crate::signal::protocol::RoomId;

/// Runs the command; Ctrl-C is handled here rather than by the caller, so a port mapping made on
/// the router is deleted before the command ends with exit 130.
pub async fn run(args: PunchArgs, opts: &OutputOptions) -> anyhow::Result<Status> {
    let mappings = Mappings::default();
    let outcome = tokio::select! {
        r = punch(&args, opts, &mappings) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    let Some(report) = outcome else {
        mappings.release().await;
        return Err(crate::error::Interrupted.into());
    };
    let report = report?;
    if args.stdio {
        // stdout is the peer's stream.
        output::emit_to(&report, opts, &mut std::io::stderr().lock())?;
    } else {
        output::emit(&report, opts)?;
    }
    Ok(Status::from_ok(report.error.is_none()))
}

/// Validates input (errors exit 2), then runs; a failure after that is in `report.error`.
/// Whatever `mappings` made on the router is deleted before this returns.
pub async fn punch(args: &PunchArgs, opts: &OutputOptions, mappings: &Mappings) -> anyhow::Result<PunchReport> {
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 3600.0) {
        return usage(format!("--timeout {} is out of range: give seconds above 0, at most 3600", args.timeout));
    }
    let room = RoomId(args.room.clone());
    if let Some(p) = room.problem() {
        return usage(format!("bad --room '{}': {p}", args.room));
    }
    crate::signal::client::normalize_url(&args.signal).map_err(|e| UsageError::new(e.to_string()))?;
    // Names resolve to IPv4 (the family the NAT observations are about); an IPv6 server given as
    // an IPv6 literal (`--stun [2001:db8::10]:3478`) is taken as it is, for IPv6 candidates. With
    // such a literal among the servers, names resolve to either family.
    let servers = match server_list::resolve(&args.servers, Family::V4, "punch").await {
        Ok(s) => s,
        Err(_) => server_list::resolve(&args.servers, Family::Any, "punch").await?,
    };
    let mode = match (&args.send, &args.recv, args.stdio) {
        (Some(p), _, _) => {
            if !p.is_file() {
                return usage(format!("--send {}: no such file", p.display()));
            }
            Mode::Send(p.clone())
        }
        (_, Some(p), _) => {
            check_recv_target(p, args.force)?;
            Mode::Recv(p.clone())
        }
        (_, _, true) => Mode::Stdio,
        _ => Mode::Connect,
    };

    let mut report = PunchReport { room: args.room.clone(), ..PunchReport::default() };
    if let Err(e) = session::run(args, opts, &room, servers, mode, &mut report, mappings).await {
        report.error = Some(format!("{e:#}"));
    }
    // Every way out of the session (done, failed) leaves nothing on the router.
    let deleted = mappings.release().await;
    if let Some(pm) = report.port_mapping.as_mut() {
        pm.renewals = mappings.renewals();
        pm.deleted = deleted.filter(|_| pm.protocol.is_some());
    }
    Ok(report)
}

/// `--recv` is checked before the room is joined: a path that cannot be
/// written would otherwise cost the peer a whole punch and transfer.
fn check_recv_target(path: &std::path::Path, force: bool) -> Result<(), UsageError> {
    let shown = path.display();
    if path.is_dir() {
        return Err(UsageError::new(format!(
            "--recv {shown} is a directory: give a file path, e.g. {shown}/received.bin"
        )));
    }
    if path.exists() && !force {
        return Err(UsageError::new(format!(
            "--recv {shown} exists: pass --force to overwrite it, or give another path"
        )));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        return Err(UsageError::new(format!(
            "--recv {shown}: the directory {} does not exist; create it first",
            parent.display()
        )));
    }
    Ok(())
}
