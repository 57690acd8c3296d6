//! Rendering of command reports: a table for people, JSON for scripts.
//!
//! Every command builds one typed report and hands it here; nothing else
//! prints to stdout. JSON field names are a public contract (see README).
//! Progress bars live here too, and only ever draw on a terminal's stderr.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// A command report that can be shown to a person as well as serialised.
pub trait Render: Serialize {
    /// The human view: tables and sentences, written to `out`.
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()>;
}

/// How the user asked to see results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Global output options shared by every command.
#[derive(Debug, Clone, Copy)]
pub struct OutputOptions {
    pub format: Format,
    pub quiet: bool,
}

/// Writes the report to stdout in the requested format.
pub fn emit<R: Render>(report: &R, opts: &OutputOptions) -> anyhow::Result<()> {
    // One write for the whole report: stdout is line-buffered, and pretty JSON is many lines.
    emit_to(report, opts, &mut std::io::BufWriter::new(std::io::stdout().lock()))
}

/// [`emit`] to another stream: commands whose stdout carries data (`punch --stdio`) put
/// the report on stderr.
pub fn emit_to<R: Render>(report: &R, opts: &OutputOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    match opts.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, report)?;
            writeln!(out)?;
        }
        Format::Table => report.render(out)?,
    }
    out.flush()?;
    Ok(())
}

/// A table with natkit's house style.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_header(header.to_vec());
    t
}

/// Renders an optional value for a table cell: `-` when absent.
pub fn cell<T: std::fmt::Display>(v: &Option<T>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "-".to_string(),
    }
}

/// Milliseconds with a sensible precision for a table.
pub fn ms(v: f64) -> String {
    if v < 10.0 { format!("{v:.2} ms") } else { format!("{v:.1} ms") }
}

/// A progress indicator on stderr, drawn only when stderr is a terminal and
/// the user did not ask for quiet or JSON output.
pub fn progress(opts: &OutputOptions, len: u64, msg: &str) -> ProgressBar {
    if opts.quiet || opts.format == Format::Json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}
