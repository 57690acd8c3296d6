//! One network namespace with a few lab addresses on its loopback, for tests
//! that need a relay with public-looking addresses (198.51.100.0/24,
//! 203.0.113.0/24, 2001:db8::/32) and clients on the same host. A guard: its
//! Drop kills what it started and deletes the namespace, also on panic. Test
//! code reaches inside with [`Netns::run`], which runs a closure on a thread
//! that entered the namespace (setns), so plain std sockets work there.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip (apt-get install iproute2)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Netns {
    /// A namespace with loopback up and `addrs` (CIDR, v4 or v6) on it.
    pub fn new(addrs: &[&str]) -> Netns {
        let name = format!("nkra{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        for a in addrs {
            if a.contains(':') {
                ip(&["-n", &ns.name, "addr", "add", a, "dev", "lo", "nodad"]);
            } else {
                ip(&["-n", &ns.name, "addr", "add", a, "dev", "lo"]);
            }
        }
        ns
    }

    /// Runs `f` on a thread inside the namespace and returns what it returns (a panic inside
    /// is a panic here).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns(2) on a namespace fd we hold open; it changes only this thread.
            let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Starts `natkit relay ARGS` inside the namespace.
    pub fn spawn_relay(&self, args: &[&str]) -> NsRelay {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_natkit"), "relay"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting natkit relay in the namespace");
        NsRelay { child: Some(child) }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "pids", &self.name]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) of a process inside the namespace this test made.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// `natkit relay` running in a namespace; stopped with SIGINT (at once, summary printed; SIGTERM would drain) by [`NsRelay::stop`], killed on drop.
pub struct NsRelay {
    child: Option<Child>,
}

impl NsRelay {
    pub fn stop(&mut self) -> Output {
        let child = self.child.take().expect("relay already stopped");
        crate::common::bounded::stop_with(child, libc::SIGINT)
    }
}

impl Drop for NsRelay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
