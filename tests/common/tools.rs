//! Finding the external tools tests run. A missing tool fails the test with
//! the command that installs it; tests never skip silently.

use std::path::PathBuf;

/// The absolute path of `tool`, or a panic that says how to install it.
pub fn require(tool: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin", "/usr/bin"]) {
        let p = PathBuf::from(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{tool}` is not installed: this test needs it. Run `scripts/setup.sh` \
         (or `apt-get install {package}`) and try again."
    );
}
