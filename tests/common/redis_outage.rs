//! A `redis-server` a test can stop and start again on the same port (a Redis
//! outage, the way an operator's restart or a crash looks to the nodes).
//! Bound to 127.0.0.1 only (LAB-NOTES), no persistence: a restart comes back
//! empty, which is the harder case for the nodes (they must re-assert
//! everything). Killed on drop.
//!
//! The port is taken below the kernel's ephemeral range, so that nothing the
//! OS hands out (another test's `free_port`, a node's outgoing connection)
//! can take it while the server is down.
//!
//! Each start runs in a fresh temporary directory: coturn's `turnadmin` sends
//! SAVE after every change, which would otherwise leave a dump.rdb in the
//! test's directory for the next server started there to load.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::tools;

pub struct OutageRedis {
    child: Option<Child>,
    pub port: u16,
    dir: Option<tempfile::TempDir>,
}

/// A free port in 20000..32000 (below Linux's default ephemeral range 32768..60999).
fn port_outside_ephemeral_range() -> u16 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed = u64::from(std::process::id()) ^ now.as_nanos() as u64;
    let mut x = seed;
    for _ in 0..1000 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let port = 20000 + (x >> 33) as u16 % 12000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in 20000..32000 on 127.0.0.1");
}

impl OutageRedis {
    pub fn start() -> OutageRedis {
        let mut r = OutageRedis { child: None, port: port_outside_ephemeral_range(), dir: None };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to the clients) and waits until the port refuses connections.
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

    /// Starts a fresh (empty) server, in a new directory, on the same port and waits until it listens.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop() before restart()");
        let bin = tools::require("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(bin)
            .current_dir(dir.path())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
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

impl Drop for OutageRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
