//! Prometheus text checked by the real `promtool` (Debian `prometheus`).

use std::io::Write;
use std::process::{Command, Stdio};

/// `promtool check metrics` on `text`: lint problems are a failure naming `what`.
pub fn accepts(what: &str, text: &str) {
    let promtool = super::tools::require("promtool", "prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feeding promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics on {what}:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
