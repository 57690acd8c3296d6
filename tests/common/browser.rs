//! Headless Chromium for browser interop tests, inside a network namespace that has nothing
//! but loopback (LAB-NOTES: WebRTC in a browser on the host would gather the real interface).
//!
//! [`LoopbackNs`] creates the namespace and, on drop, kills every process left in it and
//! deletes it. [`Browser`] starts chromedriver in the namespace and drives it with fantoccini
//! from a thread that has itself entered the namespace (setns), so the WebDriver connection
//! goes to the namespace's loopback without any veth or route to the host.

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
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.name)).expect("opening the namespace handle");
        // SAFETY: a plain syscall on a valid fd; it changes only this thread's network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {}: {}", self.name, std::io::Error::last_os_error());
    }
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

/// chromedriver running in a [`LoopbackNs`], and a WebDriver session on headless Chromium.
pub struct Browser {
    _driver: Killed,
    pub client: fantoccini::Client,
}

impl Browser {
    /// Call from a thread that has entered `ns` ([`LoopbackNs::enter_current_thread`]).
    pub async fn start(ns: &LoopbackNs) -> Browser {
        let driver_bin = tools::require("chromedriver", "chromium-driver");
        let chromium = tools::require("chromium", "chromium");
        let port = super::free_port(); // probed from inside the namespace: this thread is in it
        let driver = ns
            .command(driver_bin.to_str().expect("path"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let driver = Killed(driver);
        let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
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
        }))
        .expect("capabilities");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let mut b = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            b.capabilities(caps.clone());
            match b.connect(&url).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromedriver in {} did not start a session: {e}", ns.name),
            }
        };
        Browser { _driver: driver, client }
    }

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
