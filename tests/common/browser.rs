//! Headless Chromium and Firefox for browser interop tests, inside a network namespace that
//! has nothing but loopback (LAB-NOTES: WebRTC in a browser on the host would gather the real
//! interface).
//!
//! [`LoopbackNs`] creates the namespace and, on drop, kills every process left in it and
//! deletes it. [`Browser::start`] starts the browser's WebDriver server (chromedriver or
//! geckodriver) in the namespace and drives it with fantoccini from a thread that has itself
//! entered the namespace (setns), so the WebDriver connection goes to the namespace's loopback
//! without any veth or route to the host.

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::tools;

/// A network namespace with only `lo` up.
pub struct LoopbackNs {
    pub name: String,
}

impl LoopbackNs {
    /// `tag` keeps names readable and unique per test (≤ 15 characters in total).
    pub fn new(tag: &str) -> LoopbackNs {
        tools::require("ip", "iproute2");
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("nk{}{}{}", tag, std::process::id() % 100_000, N.fetch_add(1, Ordering::Relaxed));
        let ok = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("running ip");
            assert!(st.success(), "ip {} failed (tests need root for network namespaces)", args.join(" "));
        };
        ok(&["netns", "add", &name]);
        let ns = LoopbackNs { name };
        ok(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NAME`, to put in front of a command.
    pub fn prefix(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.name]
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread into the namespace (setns(2) affects only this thread).
    pub fn enter_current_thread(&self) {
        enter_netns(&self.name);
    }
}

/// Moves the calling thread into the named namespace (`ip netns add` made it: a lab's, or a
/// [`LoopbackNs`]); processes the thread starts afterwards are born in it.
pub fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{name}")).expect("opening the namespace handle");
    // SAFETY: a plain syscall on a valid fd; it changes only this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns into {name}: {}", std::io::Error::last_os_error());
}

/// `program` run inside namespace `ns` by `ip netns exec`.
fn command_in(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

impl Drop for LoopbackNs {
    fn drop(&mut self) {
        // Chromium forks helpers that outlive chromedriver: kill what is left, by pid.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A child process killed on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Which browser a [`Session`] drives: the same page test runs against each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Browser {
    /// Debian `chromium` driven by `chromedriver` (`chromium-driver`).
    Chromium,
    /// Debian `firefox-esr` driven by `geckodriver` (crates.io, installed by scripts/setup.sh).
    Firefox,
}

impl Browser {
    /// Starts the browser's WebDriver server in `ns` and opens a session on a fresh headless
    /// browser with fake camera and microphone. Call from a thread that has entered `ns`
    /// ([`LoopbackNs::enter_current_thread`]): the WebDriver port is on the namespace's loopback.
    pub async fn start(self, ns: &LoopbackNs) -> Session {
        self.start_in(&ns.name).await
    }

    /// [`Browser::start`] in any namespace made by `ip netns add` (a lab's client namespace, say),
    /// from a thread that has entered it ([`enter_netns`]). Whoever made the namespace ends the
    /// browser's processes with it (the lab's Drop does).
    pub async fn start_in(self, ns: &str) -> Session {
        let port = super::free_port(); // probed from inside the namespace: this thread is in it
        // Both drivers put the browser's fresh profile under TMPDIR; a directory of our own means
        // nothing is left behind even when a test fails before closing its session.
        let scratch = tempfile::tempdir().expect("tempdir for the browser profile");
        let (mut driver, caps) = match self {
            Browser::Chromium => {
                let driver = tools::require("chromedriver", "chromium-driver");
                let chromium = tools::require("chromium", "chromium");
                let mut cmd = command_in(ns, driver.to_str().expect("path"));
                cmd.arg(format!("--port={port}"));
                let caps = serde_json::json!({
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless", "--no-sandbox", "--disable-gpu",
                            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                            "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            "--no-first-run",
                        ]
                    }
                });
                (cmd, caps)
            }
            Browser::Firefox => {
                let driver = tools::require_crate("geckodriver", "geckodriver");
                let firefox = tools::require("firefox-esr", "firefox-esr");
                let mut cmd = command_in(ns, driver.to_str().expect("path"));
                cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
                let caps = serde_json::json!({
                    "browserName": "firefox",
                    "moz:firefoxOptions": {
                        "binary": firefox,
                        "args": ["-headless"],
                        "prefs": {
                            // A fake camera and microphone.
                            "media.navigator.streams.fake": true,
                            // Camera and microphone allowed as if the user had said yes: no prompt.
                            // (Not `media.navigator.permission.disabled`: without a recorded
                            // permission Firefox offers only the default route's address to ICE,
                            // and a loopback-only namespace has no default route: no candidates.)
                            "permissions.default.camera": 1,
                            "permissions.default.microphone": 1,
                            // The namespace has only loopback, which Firefox leaves out of ICE
                            // unless told. (Host addresses are not hidden behind mDNS names
                            // once the page has camera permission, so no pref for that.)
                            "media.peerconnection.ice.loopback": true,
                        }
                    }
                });
                (cmd, caps)
            }
        };
        driver.env("TMPDIR", scratch.path()).stdout(Stdio::null()).stderr(Stdio::null());
        let driver = Killed(driver.spawn().unwrap_or_else(|e| panic!("starting the {self:?} WebDriver server: {e}")));
        let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(caps).expect("capabilities");
        let url = format!("http://127.0.0.1:{port}");
        // Generous: a browser starting on a busy 2-core machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            let mut b = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            b.capabilities(caps.clone());
            match b.connect(&url).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("the {self:?} WebDriver server in {ns} did not start a session: {e}"),
            }
        };
        Session { client, _driver: driver, _scratch: scratch }
    }
}

/// A WebDriver session on a headless browser in a [`LoopbackNs`], with its driver process.
pub struct Session {
    pub client: fantoccini::Client,
    _driver: Killed,
    _scratch: tempfile::TempDir,
}

impl Session {
    /// Runs `script` (a function body) and returns its JSON value.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns `true` or `timeout` passes; returns whether it did.
    pub async fn wait_for(&self, script: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.eval(script).await == serde_json::Value::Bool(true) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

impl Session {
    /// A PNG of the page as the user sees it, via WebDriver's Take Screenshot (chromedriver makes
    /// it with CDP `Page.captureScreenshot`, geckodriver with Firefox's own capture), checked to be
    /// a PNG with a real size and content (not a blank few bytes). With `save_as` and
    /// `NATKIT_UPDATE_SCREENSHOTS=1` it is also written to `docs/img/NAME` for the README; never
    /// otherwise, so that a test run leaves the tree clean.
    pub async fn screenshot_png(&self, name: &str, save_as: Option<&str>) -> Vec<u8> {
        let png = self.client.screenshot().await.unwrap_or_else(|e| panic!("taking a screenshot for {name}: {e}"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "the screenshot for {name} is not a PNG ({} bytes)", png.len());
        // IHDR is the first chunk: width and height, big-endian, at bytes 16..24.
        let dim = |at: usize| png.get(at..at + 4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let (w, h) = (dim(16), dim(20));
        assert!(w >= 320 && h >= 240, "the screenshot for {name} is {w}×{h}");
        // A blank page of this size compresses to a few hundred bytes; text, tables and video do not.
        assert!(png.len() > 10_000, "the screenshot for {name} looks empty: {} bytes for {w}×{h}", png.len());
        if let Some(file) = save_as
            && std::env::var("NATKIT_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1")
        {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
            std::fs::create_dir_all(&dir).expect("creating docs/img");
            std::fs::write(dir.join(file), &png).unwrap_or_else(|e| panic!("writing docs/img/{file}: {e}"));
        }
        png
    }
}
