//! Error kinds that decide natkit's exit code.
//!
//! Exit codes are a documented contract (README, `--help`):
//! 0 the command ran and every check passed, 1 a check ran and failed,
//! 2 bad usage or bad input, 130 interrupted (Ctrl-C) before a client
//! command had its result. Servers end on SIGINT/SIGTERM with their summary
//! and 0: stopping is how a server is meant to end.

use std::process::ExitCode;

/// How a command ended, mapped onto the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Everything the command checked passed.
    Ok,
    /// The check ran and something failed (no answer, error response, ...).
    CheckFailed,
    /// Ctrl-C (SIGINT) ended the command before it had its result.
    Interrupted,
}

impl Status {
    pub fn from_ok(ok: bool) -> Self {
        if ok { Status::Ok } else { Status::CheckFailed }
    }
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> Self {
        match s {
            Status::Ok => ExitCode::from(0),
            Status::CheckFailed => ExitCode::from(1),
            Status::Interrupted => ExitCode::from(INTERRUPTED),
        }
    }
}

/// Bad input from the user: an unparsable address, an unknown host, a bad URI,
/// a file that cannot be read. Exits with code 2; the message says what to try.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(msg: impl Into<String>) -> Self {
        UsageError(msg.into())
    }
}

/// Shorthand for returning a usage error from anywhere in a command.
pub fn usage<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError::new(msg).into())
}

/// The shell's code for a process ended by SIGINT (128 + 2).
const INTERRUPTED: u8 = 130;

/// Ctrl-C before the command had its result (exit 130).
#[derive(Debug, thiserror::Error)]
#[error("interrupted (Ctrl-C)")]
pub struct Interrupted;

/// The exit code for an error that escaped a command.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    if err.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else if err.downcast_ref::<Interrupted>().is_some() {
        ExitCode::from(INTERRUPTED)
    } else {
        ExitCode::from(1)
    }
}
