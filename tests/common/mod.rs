//! Shared helpers for integration tests: finding tools, free ports, running
//! the natkit binary, and starting real peers (coturn) on loopback.
#![allow(dead_code)]

pub mod bounded;
pub mod browser;
pub mod coturn;
pub mod lab;
pub mod miniupnpd;
pub mod promtool;
pub mod redis;
pub mod relay;
pub mod relay_server;
pub mod signal;
pub mod tools;

use std::process::{Command, Output};

/// Runs the natkit binary built for this test run.
pub fn natkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natkit")).args(args).output().expect("running the natkit binary")
}

/// stdout parsed as JSON, with stderr in the panic message when it is not.
pub fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A free UDP+TCP port on loopback (the OS picks; both protocols checked).
pub fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = u.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
