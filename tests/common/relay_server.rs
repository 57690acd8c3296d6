//! `natkit relay` on loopback with its `--metrics` endpoint, for tests that
//! assert on what the relay counted: free ports for both, optionally under
//! `prlimit --nofile=N:N` (so it cannot raise its descriptor limit), ready
//! once TCP accepts, a metric scraped by name and labels, signals, and a
//! bounded stop. SIGKILL on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, tools};

pub struct RelayServer {
    pub child: Option<Child>,
    pub port: u16,
    pub pid: u32,
    /// The `--metrics` endpoint, `127.0.0.1:PORT`.
    pub metrics_addr: String,
}

impl RelayServer {
    /// `natkit relay --listen 127.0.0.1:PORT --metrics 127.0.0.1:MPORT ARGS`.
    pub fn start(args: &[&str]) -> RelayServer {
        RelayServer::start_limited(None, args)
    }

    /// The same under `prlimit --nofile=N:N` when `nofile` is given.
    pub fn start_limited(nofile: Option<u64>, args: &[&str]) -> RelayServer {
        let port = free_port();
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new(tools::require("prlimit", "util-linux"));
                c.arg(format!("--nofile={n}:{n}")).arg(env!("CARGO_BIN_EXE_natkit"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_natkit")),
        };
        let child = cmd
            .args(["relay", "--listen", &format!("127.0.0.1:{port}"), "--metrics", &metrics_addr])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting natkit relay");
        // prlimit execs the command: the pid is natkit's.
        let pid = child.id();
        let mut r = RelayServer { child: Some(child), port, pid, metrics_addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return r;
            }
            if !r.alive() {
                let out = r.stop_with(libc::SIGKILL);
                panic!("natkit relay exited at start: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        let out = r.stop_with(libc::SIGKILL);
        panic!("natkit relay did not listen within 10 s: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe {
            libc::kill(self.pid as libc::pid_t, sig);
        }
    }

    /// User + system CPU time of the relay so far, in clock ticks (/proc/PID/stat fields 14 and 15).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).expect("reading /proc/PID/stat");
        // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
        let rest = &stat[stat.rfind(')').expect("stat has (comm)") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
    }

    /// Sends `sig`, waits (bounded) for the exit, returns all it printed.
    pub fn stop_with(&mut self, sig: libc::c_int) -> Output {
        let mut child = self.child.take().expect("relay already stopped");
        self.signal(sig);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        child.wait_with_output().expect("collecting relay output")
    }

    /// SIGINT: stop at once, summary printed.
    pub fn stop(&mut self) -> Output {
        self.stop_with(libc::SIGINT)
    }

    /// Waits (bounded) for the relay to exit by itself; its output, or None if it is still running.
    pub fn exits_by_itself(&mut self, within: Duration) -> Option<Output> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.alive() {
                return Some(self.child.take().expect("child").wait_with_output().expect("relay output"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// One scrape of the metrics page.
    pub fn metrics(&self) -> Metrics {
        scrape(&self.metrics_addr)
    }

    /// Polls (bounded by `limit`) until `series` reaches `at_least`; returns its last value.
    pub fn wait_metric(&self, series: &str, at_least: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.metrics().value(series);
            if v >= at_least || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls (bounded, 10 s) until `series` reads exactly `value`; false if it never does.
    pub fn metric_becomes(&self, series: &str, value: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.metrics().value(series) == value {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A scraped metrics page (the whole HTTP answer, head included, so a
/// failing assertion that prints it shows the status line too).
pub struct Metrics(pub String);

impl Metrics {
    /// One sample, `name{labels}` exactly as printed (e.g.
    /// `natkit_relay_connections_refused_total{reason="per_ip"}`); None when absent.
    pub fn get(&self, series: &str) -> Option<u64> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The same, 0 when absent (a counter not yet moved may not be printed).
    pub fn value(&self, series: &str) -> u64 {
        self.get(series).unwrap_or(0)
    }

    /// The same, panicking with the page when absent.
    pub fn expect(&self, series: &str) -> u64 {
        self.get(series).unwrap_or_else(|| panic!("no {series} in:\n{self}"))
    }

    /// The Prometheus text without the HTTP head (for promtool).
    pub fn body(&self) -> &str {
        self.0.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default()
    }
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `GET /metrics` from `addr` (bounded: 5 s read timeout), the whole answer; it must be a 200.
pub fn scrape(addr: &str) -> Metrics {
    let mut s = TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 200"), "GET /metrics from {addr}: {text}");
    Metrics(text)
}
