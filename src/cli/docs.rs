//! Man pages (clap_mangen) and shell completions (clap_complete) written from
//! the clap definitions, so they never drift from the code:
//! `cargo run --example gen-docs` (not a subcommand: users never see it).
//! `tests/docs_fresh.rs` regenerates them into a temporary directory and compares.

use std::fs;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// The command line as documented: clap's implicit `help` subcommand left out
/// (`--help` is the documented way; a `natkit-help(1)` page would not exist).
fn documented() -> clap::Command {
    Cli::command().disable_help_subcommand(true)
}

/// Writes `man/*.1` and `completions/natkit.{bash,zsh,fish}` under `root`.
pub fn write_all(root: &Path) -> anyhow::Result<()> {
    let man_dir = root.join("man");
    let comp_dir = root.join("completions");
    fs::create_dir_all(&man_dir).with_context(|| format!("creating {}", man_dir.display()))?;
    fs::create_dir_all(&comp_dir).with_context(|| format!("creating {}", comp_dir.display()))?;

    let cmd = documented();
    write_man(&man_dir, "natkit", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name: &'static str = Box::leak(format!("natkit-{}", sub.get_name()).into_boxed_str());
        write_man(&man_dir, name, sub.clone().name(name))?;
    }

    for (shell, file) in [(Shell::Bash, "natkit.bash"), (Shell::Zsh, "_natkit"), (Shell::Fish, "natkit.fish")] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut documented(), "natkit", &mut buf);
        let path = comp_dir.join(file);
        fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn write_man(dir: &Path, name: &str, cmd: clap::Command) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let usage = cmd.clone().render_usage().to_string();
    clap_mangen::Man::new(cmd).render(&mut buf)?;
    let page = with_synopsis(&String::from_utf8(buf)?, &usage);
    let path = dir.join(format!("{name}.1"));
    fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// clap_mangen's synopsis lists every flag without its value
/// (`<--signal> <--room>`); clap's own usage line names the values
/// (`--signal <URL> --room <ROOM>`), so the page uses that instead.
fn with_synopsis(page: &str, usage: &str) -> String {
    let usage = usage.trim().strip_prefix("Usage:").unwrap_or(usage).trim();
    let (program, rest) = usage.split_once(' ').unwrap_or((usage, ""));
    let roff = |s: &str| s.replace('\\', "\\\\").replace('-', "\\-");
    let synopsis = format!("\\fB{}\\fR {}", roff(program), roff(rest));
    let mut out = String::with_capacity(page.len());
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        out.push_str(line);
        out.push('\n');
        if line == ".SH SYNOPSIS" {
            lines.next();
            out.push_str(&synopsis);
            out.push('\n');
        }
    }
    out
}
