//! `natkit gen-docs`: writes man pages (clap_mangen) and shell completions
//! (clap_complete) from the clap definitions, so they never drift from the code.
//! A test regenerates them into a temporary directory and compares.

use std::fs;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, GenDocsArgs};
use crate::error::Status;

pub fn run(args: &GenDocsArgs) -> anyhow::Result<Status> {
    write_all(&args.out)?;
    Ok(Status::Ok)
}

/// Writes `man/*.1` and `completions/natkit.{bash,zsh,fish}` under `root`.
pub fn write_all(root: &Path) -> anyhow::Result<()> {
    let man_dir = root.join("man");
    let comp_dir = root.join("completions");
    fs::create_dir_all(&man_dir).with_context(|| format!("creating {}", man_dir.display()))?;
    fs::create_dir_all(&comp_dir).with_context(|| format!("creating {}", comp_dir.display()))?;

    let cmd = Cli::command();
    write_man(&man_dir, "natkit", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name: &'static str = Box::leak(format!("natkit-{}", sub.get_name()).into_boxed_str());
        write_man(&man_dir, name, sub.clone().name(name))?;
    }

    for (shell, file) in [(Shell::Bash, "natkit.bash"), (Shell::Zsh, "_natkit"), (Shell::Fish, "natkit.fish")] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "natkit", &mut buf);
        let path = comp_dir.join(file);
        fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn write_man(dir: &Path, name: &str, cmd: clap::Command) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut buf)?;
    let path = dir.join(format!("{name}.1"));
    fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
