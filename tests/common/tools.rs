//! Finding the external tools tests run. A missing tool fails the test with
//! the command that installs it; tests never skip silently.

use std::path::PathBuf;

/// The absolute path of `tool`, or a panic that says how to install it (a Debian package).
pub fn require(tool: &str, package: &str) -> PathBuf {
    find(tool).unwrap_or_else(|| missing(tool, &format!("apt-get install {package}")))
}

/// Like [`require`], for a tool Debian does not package that scripts/setup.sh installs
/// from crates.io (`cargo install KRATE --locked`, into `$CARGO_HOME/bin`).
pub fn require_crate(tool: &str, krate: &str) -> PathBuf {
    find(tool).unwrap_or_else(|| missing(tool, &format!("cargo install {krate} --locked")))
}

fn find(tool: &str) -> Option<PathBuf> {
    // `cargo install` puts binaries in $CARGO_HOME/bin, which a root shell's PATH may lack.
    let cargo_bin = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin"))
        .ok();
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .chain(cargo_bin)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn missing(tool: &str, install: &str) -> ! {
    panic!("`{tool}` is not installed: this test needs it. Run `scripts/setup.sh` (or `{install}`) and try again.");
}
