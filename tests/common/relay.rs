//! `natkit relay` started by a test on loopback: its own ports, killed on drop
//! or stopped by `stop` (SIGINT: stop now and print the summary; SIGTERM would
//! drain first).

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Relay {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Relay {
    /// Starts `natkit relay --listen 127.0.0.1:PORT` with `args` added and waits until TCP accepts.
    pub fn start(args: &[&str]) -> Relay {
        let port = free_port();
        Relay::start_on(port, &[&["--listen", &format!("127.0.0.1:{port}")], args].concat())
    }

    /// Starts `natkit relay` with exactly `args` (the caller names the listeners); waits on `port`.
    pub fn start_on(port: u16, args: &[&str]) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(env!("CARGO_BIN_EXE_natkit"))
            .arg("relay")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting natkit relay");
        let mut r = Relay { child: Some(child), port, dir };
        r.wait_ready();
        r
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                let out = self.stop();
                panic!("natkit relay exited at start: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        let out = self.stop();
        panic!("natkit relay did not listen within 10 s: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGINT (stop now, summary printed), then everything it printed and its exit status.
    pub fn stop(&mut self) -> Output {
        let child = self.child.take().expect("relay already stopped");
        super::bounded::stop_with(child, libc::SIGINT)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
