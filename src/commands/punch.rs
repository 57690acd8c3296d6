//! `natkit punch`: validates the command line, runs a session (`crate::punch::session`) and
//! renders its report (`crate::punch::report`).

use crate::cli::PunchArgs;
use crate::commands::ice_servers;
use crate::error::{Status, UsageError, usage};
use crate::net::server::Family;
use crate::output::{self, OutputOptions};
use crate::punch::report::PunchReport;
use crate::punch::session::{self, Mode};
use crate::signal::protocol::RoomId;

pub async fn run(args: PunchArgs, opts: &OutputOptions) -> anyhow::Result<Status> {
    let report = punch(&args, opts).await?;
    if args.stdio {
        // stdout is the peer's stream.
        output::emit_to(&report, opts, &mut std::io::stderr().lock())?;
    } else {
        output::emit(&report, opts)?;
    }
    Ok(Status::from_ok(report.error.is_none()))
}

/// Validates input (errors exit 2), then runs; a failure after that is in `report.error`.
pub async fn punch(args: &PunchArgs, opts: &OutputOptions) -> anyhow::Result<PunchReport> {
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 3600.0) {
        return usage(format!("--timeout {} is out of range: give seconds above 0, at most 3600", args.timeout));
    }
    let room = RoomId(args.room.clone());
    if let Some(p) = room.problem() {
        return usage(format!("bad --room '{}': {p}", args.room));
    }
    crate::signal::client::normalize_url(&args.signal).map_err(|e| UsageError::new(e.to_string()))?;
    let servers = ice_servers::resolve(&args.servers, Family::V4, "punch").await?;
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

    let mut report = PunchReport {
        room: args.room.clone(),
        role: None,
        path: None,
        local: None,
        remote: None,
        connect_ms: None,
        candidates: Vec::new(),
        remote_candidates: Vec::new(),
        mapping_varies: None,
        checks: Vec::new(),
        birthday: None,
        bytes: 0,
        throughput_mbps: None,
        sha256: None,
        error: None,
        path_changes: Vec::new(),
    };
    if let Err(e) = session::run(args, opts, &room, servers, mode, &mut report).await {
        report.error = Some(format!("{e:#}"));
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
