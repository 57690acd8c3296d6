//! A throwaway `redis-server` on 127.0.0.1 whose working directory is a
//! temporary one: coturn's `turnadmin` sends SAVE after every change, which
//! would otherwise leave a dump.rdb in the test's directory for the next
//! server to load. It can be stopped (SIGKILL, an outage) and started again,
//! empty, on the same port. Killed on drop.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::tools;

pub struct DirRedis {
    child: Option<Child>,
    pub port: u16,
    dir: Option<tempfile::TempDir>,
}

/// A free port in 20000..32000, below Linux's ephemeral range, so nothing the
/// OS hands out takes it while the server is stopped.
fn port_outside_ephemeral_range() -> u16 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut x = u64::from(std::process::id()) ^ now.as_nanos() as u64;
    for _ in 0..1000 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let port = 20000 + (x >> 33) as u16 % 12000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in 20000..32000 on 127.0.0.1");
}

impl DirRedis {
    pub fn start() -> DirRedis {
        let mut r = DirRedis { child: None, port: port_outside_ephemeral_range(), dir: None };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server and waits until the port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "redis-server on 127.0.0.1:{} did not go away", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a fresh, empty server (in a new directory) on the same port and waits until it listens.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop() before restart()");
        let bin = tools::require("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        self.dir = Some(dir);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on 127.0.0.1:{}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DirRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
