//! Rendering of command reports: a table for people, JSON for scripts.
//!
//! Every command builds one typed report and hands it here; nothing else
//! prints to stdout. JSON field names are a public contract (see README).
//! Progress bars live here too, and only ever draw on a terminal's stderr.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use comfy_table::{ColumnConstraint, ContentArrangement, Table, Width, presets::UTF8_FULL_CONDENSED};
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
            let mut value = serde_json::to_value(report)?;
            round_floats(&mut value);
            serde_json::to_writer_pretty(&mut *out, &value)?;
            writeln!(out)?;
        }
        Format::Table => report.render(out)?,
    }
    out.flush()?;
    Ok(())
}

/// One JSON Lines record (compact, rounded like [`emit`], then a newline), flushed at once
/// so a reader of a long-running command (`turn-alloc --every`) sees each record as it comes.
pub fn json_line<T: Serialize>(record: &T, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(record)?;
    round_floats(&mut value);
    serde_json::to_writer(&mut *out, &value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Decimal places kept in JSON numbers: times are in milliseconds, so three
/// places are microseconds, finer than any clock behind them; `0.353766` and
/// not `0.35376599999999997`. Integers are untouched.
const JSON_DECIMALS: i32 = 3;

fn round_floats(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(x) = n.as_f64() {
                let scale = 10f64.powi(JSON_DECIMALS);
                if let Some(r) = serde_json::Number::from_f64((x * scale).round() / scale) {
                    *n = r;
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(round_floats),
        Value::Object(fields) => fields.values_mut().for_each(round_floats),
        _ => {}
    }
}

/// How much a table shows: the columns that fit a terminal, or all of them
/// (`--wide`). Set once at start; renderers read it with [`layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Compact,
    Wide,
}

static WIDE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_layout(layout: Layout) {
    WIDE.store(layout == Layout::Wide, std::sync::atomic::Ordering::Relaxed);
}

pub fn layout() -> Layout {
    if WIDE.load(std::sync::atomic::Ordering::Relaxed) { Layout::Wide } else { Layout::Compact }
}

/// `COLUMNS` when the user (or a script) set it: the width to fit, also when
/// stdout is not a terminal. On a terminal without it, comfy-table asks the
/// terminal itself.
fn columns_from_env() -> Option<u16> {
    std::env::var("COLUMNS").ok()?.trim().parse::<u16>().ok().filter(|w| *w >= 20)
}

/// The widest a single unbreakable token (an address, a number with its
/// unit) may make a column before it is allowed to wrap inside it.
const LONGEST_UNSPLIT_TOKEN: usize = 48;

/// Rows first, table second: a [`Grid`] knows every cell before it lays the
/// table out, so it can drop columns nobody filled and keep each column at
/// least as wide as its longest token, so that the terminal's width wraps
/// sentences at spaces and never splits an address such as
/// `203.0.113.12:35124` in two.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
}

impl Grid {
    /// A table with a header row.
    pub fn new(header: &[&str]) -> Grid {
        Grid { header: Some(header.iter().map(|h| h.to_string()).collect()), rows: Vec::new() }
    }

    /// A two-column "name: value" table without a header row.
    pub fn key_value() -> Grid {
        Grid { header: None, rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) -> &mut Grid {
        self.rows.push(cells);
        self
    }

    /// Columns to show: the first always, the others when a row has
    /// something in them (`-` and empty cells are nothing).
    fn kept_columns(&self) -> Vec<usize> {
        let n = self.header.as_ref().map(Vec::len).unwrap_or(0).max(self.rows.iter().map(Vec::len).max().unwrap_or(0));
        (0..n)
            .filter(|&i| {
                i == 0 || self.rows.iter().any(|r| r.get(i).is_some_and(|c| !c.trim().is_empty() && c.trim() != "-"))
            })
            .collect()
    }

    /// The table at the width of `COLUMNS` or of the terminal (none for a pipe: no wrapping).
    pub fn to_table(&self) -> Table {
        self.table_for(columns_from_env())
    }

    /// The table fitted to `width` columns (`None`: the terminal's, when stdout is one).
    pub fn table_for(&self, width: Option<u16>) -> Table {
        let keep = self.kept_columns();
        let pick = |cells: &[String]| -> Vec<String> {
            keep.iter().map(|&i| cells.get(i).cloned().unwrap_or_default()).collect()
        };
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
        if let Some(h) = &self.header {
            t.set_header(pick(h));
        }
        for r in &self.rows {
            t.add_row(pick(r));
        }
        if let Some(w) = width {
            t.set_width(w);
        }
        // Widths are ours to choose: comfy-table's dynamic arrangement fixes a column at its
        // lower boundary as soon as that is above the average, and then wraps cells that would
        // have fit. Each column gets at least its longest token (an address stays whole), then
        // the spare width goes to the columns that need least to show in full.
        let Some(total) = t.width() else { return t };
        let cells = |i: usize| {
            self.rows.iter().filter_map(move |r| r.get(i)).chain(self.header.iter().filter_map(move |h| h.get(i)))
        };
        // comfy-table's widths include the cell's padding (one space each side).
        let natural: Vec<usize> =
            keep.iter().map(|&i| cells(i).map(|c| c.chars().count()).max().unwrap_or(0) + 2).collect();
        let least: Vec<usize> = keep
            .iter()
            .map(|&i| {
                let token = cells(i).flat_map(|c| c.split_whitespace()).map(|w| w.chars().count()).max().unwrap_or(0);
                token.min(LONGEST_UNSPLIT_TOKEN) + 2
            })
            .collect();
        let widths = fit_columns(&natural, &least, usize::from(total).saturating_sub(keep.len() + 1));
        for (col, w) in t.column_iter_mut().zip(widths) {
            col.set_constraint(ColumnConstraint::Absolute(Width::Fixed(w.min(usize::from(u16::MAX)) as u16)));
        }
        t
    }
}

/// Column widths that fit `room` (the table's width less its borders): each its `natural`
/// width when all fit; else each at least its `least`, and the rest of the room given to the
/// columns that need least more to be shown whole, so that as few as possible wrap.
fn fit_columns(natural: &[usize], least: &[usize], room: usize) -> Vec<usize> {
    if natural.iter().sum::<usize>() <= room {
        return natural.to_vec();
    }
    let mut widths: Vec<usize> = least.iter().zip(natural).map(|(l, n)| (*l).min(*n)).collect();
    let mut spare = room.saturating_sub(widths.iter().sum());
    let mut by_need: Vec<usize> = (0..widths.len()).collect();
    by_need.sort_by_key(|&i| natural[i] - widths[i]);
    let mut open: Vec<usize> = Vec::new();
    for i in by_need {
        let need = natural[i] - widths[i];
        if need <= spare {
            widths[i] += need;
            spare -= need;
        } else {
            open.push(i);
        }
    }
    // What is left is shared by the columns that still wrap.
    for (k, &i) in open.iter().enumerate() {
        let share = spare / (open.len() - k);
        widths[i] += share;
        spare -= share;
    }
    widths
}

impl std::fmt::Display for Grid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_table())
    }
}

/// The width to fill with prose: `COLUMNS`, else the terminal's, else none
/// (a pipe or a file gets each sentence on one line).
fn text_width() -> Option<usize> {
    // comfy-table measures the terminal (stdout a tty) the same way for its tables.
    columns_from_env().or_else(|| Table::new().width()).map(usize::from)
}

/// Wraps `text` at spaces to `width` columns; a word longer than the width
/// (an address, a hash) stays whole on its own line.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0usize;
    for word in text.split_whitespace() {
        let n = word.chars().count();
        if line > 0 && line + 1 + n > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += n;
    }
    out
}

/// Writes a sentence of a report, wrapped to the terminal (or `COLUMNS`) at spaces.
pub fn say(out: &mut dyn Write, text: &str) -> std::io::Result<()> {
    match text_width() {
        Some(w) => writeln!(out, "{}", wrap(text, w)),
        None => writeln!(out, "{text}"),
    }
}

/// A line for the person at the terminal (start-up lines of the servers,
/// where they listen): stderr, so stdout keeps only the result; nothing with
/// `--quiet`.
pub fn notice(opts: &OutputOptions, line: &str) {
    if !opts.quiet {
        eprintln!("{line}");
    }
}

/// The last word of a failed run, on stderr: what failed and why, with the
/// whole chain of causes on one line.
pub fn failure(err: &anyhow::Error) {
    eprintln!("natkit: {err:#}");
}

/// A byte count for people: `812 B`, `4.0 KiB`, `12.3 MiB`, `1.20 GiB`.
pub fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let v = n as f64;
    if v < KIB {
        format!("{n} B")
    } else if v < KIB * KIB {
        format!("{:.1} KiB", v / KIB)
    } else if v < KIB * KIB * KIB {
        format!("{:.1} MiB", v / (KIB * KIB))
    } else {
        format!("{:.2} GiB", v / (KIB * KIB * KIB))
    }
}

/// A duration for people: `350 ms`, `4.2 s`, `1 min 33 s`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        let s = d.as_secs();
        format!("{} min {} s", s / 60, s % 60)
    }
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

/// A one-line status on stderr for a wait (spinner, message, time so far), for a
/// person at a terminal: hidden when `visible` is false (not a terminal, `-q`), so
/// scripts and log files get no progress noise. Update it with `set_message`.
pub fn status_line(visible: bool, msg: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// A [`status_line`] that clears itself when dropped, so an early error return leaves no
/// spinner behind on the terminal.
pub struct ClearingStatus(pub ProgressBar);

impl ClearingStatus {
    pub fn new(visible: bool, msg: &str) -> Self {
        ClearingStatus(status_line(visible, msg))
    }

    pub fn set_message(&self, msg: impl Into<String>) {
        self.0.set_message(msg.into());
    }
}

impl Drop for ClearingStatus {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Whether waits are shown on stderr: a terminal, and the user did not ask for quiet.
pub fn shows_status(opts: &OutputOptions) -> bool {
    !opts.quiet && std::io::stderr().is_terminal()
}

/// A progress indicator on stderr, drawn only when stderr is a terminal and
/// the user did not ask for quiet or JSON output.
pub fn progress(opts: &OutputOptions, len: u64, msg: &str) -> ProgressBar {
    if opts.format == Format::Json || !shows_status(opts) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_columns_are_dropped_but_the_first_stays() {
        let mut g = Grid::new(&["server", "mapped", "software", "status"]);
        g.row(vec!["a".into(), "-".into(), "".into(), "ok".into()]);
        g.row(vec!["b".into(), "203.0.113.1:5".into(), "-".into(), "ok".into()]);
        let text = g.to_string();
        assert!(text.contains("mapped") && text.contains("status"));
        assert!(!text.contains("software"), "{text}");
    }

    #[test]
    fn a_narrow_table_wraps_at_spaces_and_never_splits_an_address() {
        let mut g = Grid::new(&["server", "status"]);
        let long = "no answer after 3 tries over 2.5 s; the server may be down or UDP blocked on this network";
        g.row(vec!["203.0.113.12:35124".into(), long.into()]);
        let text = g.table_for(Some(40)).to_string();
        assert!(text.lines().any(|l| l.contains("203.0.113.12:35124")), "{text}");
        assert!(text.lines().count() > 4, "the sentence wrapped: {text}");
    }

    #[test]
    fn a_table_that_fits_is_not_wrapped() {
        let mut g = Grid::new(&["local", "remote", "pair", "rtt"]);
        g.row(vec![
            "10.2.0.2:34312 host".into(),
            "203.0.113.11:53376 srflx".into(),
            "in use (ICE)".into(),
            "0.19 ms".into(),
        ]);
        let text = g.table_for(Some(80)).to_string();
        assert_eq!(text.lines().count(), 5, "{text}");
    }

    #[test]
    fn spare_width_goes_to_the_columns_that_then_fit() {
        assert_eq!(fit_columns(&[10, 20], &[5, 5], 40), vec![10, 20]);
        // 26 of room: the first fits whole (10), the second wraps in the 16 left.
        assert_eq!(fit_columns(&[10, 30], &[5, 8], 26), vec![10, 16]);
        // Not even the least fits: the least, never less.
        assert_eq!(fit_columns(&[30, 30], &[20, 20], 30), vec![20, 20]);
    }

    #[test]
    fn json_floats_are_rounded_to_microseconds_and_integers_kept() {
        let mut v =
            serde_json::json!({"rtt_ms": 0.35376599999999997, "n": 7, "xs": [1.23456789], "big": 123456789012u64});
        round_floats(&mut v);
        assert_eq!(v.to_string(), r#"{"rtt_ms":0.354,"n":7,"xs":[1.235],"big":123456789012}"#);
    }

    #[test]
    fn prose_wraps_at_spaces_and_keeps_long_words_whole() {
        let text = "Path changed at 812 ms (our NAT mapping changed): 203.0.113.12:35124 -> 203.0.113.12:40001.";
        let w = wrap(text, 30);
        assert!(w.lines().all(|l| l.chars().count() <= 30 || !l.contains(' ')), "{w}");
        assert!(w.lines().any(|l| l.contains("203.0.113.12:35124")), "{w}");
        assert_eq!(w.split_whitespace().collect::<Vec<_>>(), text.split_whitespace().collect::<Vec<_>>());
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 + 300 * 1024), "3.3 MiB");
        assert_eq!(duration(Duration::from_millis(92_674)), "1 min 32 s");
        assert_eq!(duration(Duration::from_millis(350)), "350 ms");
        assert_eq!(duration(Duration::from_millis(4_240)), "4.2 s");
    }
}
