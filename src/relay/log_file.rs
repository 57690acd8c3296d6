//! coturn's `log-file`, `simple-log` and `no-stdout-log` for `natkit relay`:
//! the log goes to a file that is reopened on SIGHUP, so logrotate's usual
//! `postrotate kill -HUP` (or `copytruncate`-free rotation) works as it does
//! with coturn.
//!
//! The tracing subscriber is global and set once before any command runs
//! (`commands::init_logging`), so it writes through [`LogSink`], which sends
//! to stderr until [`open`] points it at a file. Reopening swaps the file
//! under a lock: a line is written whole to the old file or to the new one.
//! Colour codes never reach the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

struct Target {
    path: PathBuf,
    file: File,
    /// Also to stderr (coturn's default; `no-stdout-log` turns it off).
    stderr_too: bool,
}

static TARGET: Mutex<Option<Target>> = Mutex::new(None);

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// From now on logs go to `path` (appended), and to stderr too unless `stderr_too` is false.
pub fn open(path: &Path, stderr_too: bool) -> io::Result<()> {
    let file = open_append(path)?;
    let mut t = TARGET.lock().unwrap_or_else(|p| p.into_inner());
    *t = Some(Target { path: path.to_path_buf(), file, stderr_too });
    Ok(())
}

/// Opens the file again by its name (after logrotate renamed it). Returns
/// the path reopened, or None when no log file is in use.
pub fn reopen() -> io::Result<Option<PathBuf>> {
    let mut t = TARGET.lock().unwrap_or_else(|p| p.into_inner());
    match t.as_mut() {
        Some(target) => {
            target.file = open_append(&target.path)?;
            Ok(Some(target.path.clone()))
        }
        None => Ok(None),
    }
}

/// Writes one line straight to the log file, whatever the log level (the
/// start and stop lines coturn also always writes). No-op without a file.
pub fn line(text: &str) {
    let mut t = TARGET.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(target) = t.as_mut() {
        let _ = writeln!(target.file, "{text}");
    }
}

/// Whether stderr still gets the log (false after `no-stdout-log`).
pub fn stderr_wanted() -> bool {
    TARGET.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_none_or(|t| t.stderr_too)
}

/// The writer the global subscriber uses: stderr, or the file (and stderr).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSink;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogSink;
    fn make_writer(&'a self) -> LogSink {
        LogSink
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut t = TARGET.lock().unwrap_or_else(|p| p.into_inner());
        match t.as_mut() {
            Some(target) => {
                // A full disk must not stop the relay: the line is lost, the relay goes on.
                // Colour codes (a relay started at a terminal) belong on the terminal only.
                let _ = target.file.write_all(&without_ansi(buf));
                if target.stderr_too {
                    let _ = io::stderr().write_all(buf);
                }
            }
            None => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `buf` without ANSI escape sequences (`ESC [ ... letter`), which the
/// subscriber adds when stderr is a terminal.
fn without_ansi(buf: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !buf.contains(&0x1b) {
        return std::borrow::Cow::Borrowed(buf);
    }
    let mut out = Vec::with_capacity(buf.len());
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == 0x1b && buf.get(i + 1) == Some(&b'[') {
            i += 2;
            while i < buf.len() && !buf[i].is_ascii_alphabetic() {
                i += 1;
            }
            i += 1;
        } else {
            out.push(buf[i]);
            i += 1;
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_stay_out_of_the_file() {
        assert_eq!(&*super::without_ansi(b"\x1b[33m WARN\x1b[0m relay: x\n"), b" WARN relay: x\n");
        assert_eq!(&*super::without_ansi(b"plain\n"), b"plain\n");
        assert_eq!(&*super::without_ansi(b"cut \x1b[3"), b"cut ");
    }

    #[test]
    fn lines_go_to_the_file_and_to_the_new_one_after_a_rename_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.log");
        open(&path, false).unwrap();
        LogSink.write_all(b"first\n").unwrap();
        std::fs::rename(&path, dir.path().join("relay.log.1")).unwrap();
        LogSink.write_all(b"second\n").unwrap();
        assert_eq!(reopen().unwrap(), Some(path.clone()));
        line("third");
        let old = std::fs::read_to_string(dir.path().join("relay.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!((old.as_str(), new.as_str()), ("first\nsecond\n", "third\n"));
        assert!(!stderr_wanted());
        *TARGET.lock().unwrap() = None;
    }
}
