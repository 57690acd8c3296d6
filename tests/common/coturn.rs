//! coturn (`turnserver`) as an independent STUN/TURN peer on loopback.
//! Each instance gets its own ports, pid file, and directory; it is killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, tools};

pub struct Coturn {
    child: Child,
    pub port: u16,
    pub tls_port: u16,
    pub dir: tempfile::TempDir,
    /// PEM certificate (self-signed, CN=localhost, SAN 127.0.0.1) that the TLS listener uses.
    pub cert: PathBuf,
    pub log: PathBuf,
}

#[derive(Default, Clone)]
pub struct CoturnConfig {
    /// Extra turnserver arguments (auth, realm, peers policy, ...).
    pub args: Vec<String>,
    /// Listen on this IP instead of 127.0.0.1.
    pub listen_ip: Option<String>,
}

/// Writes a throwaway self-signed certificate and key made with rcgen.
pub fn self_signed_cert(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("generating a test certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}

impl Coturn {
    pub fn start(cfg: CoturnConfig) -> Coturn {
        let bin = tools::require("turnserver", "coturn");
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed_cert(dir.path());
        let port = free_port();
        let tls_port = free_port();
        let log = dir.path().join("turnserver.log");
        let ip = cfg.listen_ip.clone().unwrap_or_else(|| "127.0.0.1".into());
        let mut cmd = Command::new(bin);
        cmd.args(["-n", "--no-cli", "--no-dtls", "--simple-log", "--listening-ip", &ip, "--relay-ip", &ip])
            .args(["--listening-port", &port.to_string(), "--tls-listening-port", &tls_port.to_string()])
            .arg("--cert")
            .arg(&cert)
            .arg("--pkey")
            .arg(&key)
            .arg("--pidfile")
            .arg(dir.path().join("turnserver.pid"))
            .arg("--log-file")
            .arg(&log)
            .arg("--userdb")
            .arg(dir.path().join("turndb"))
            .args(&cfg.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("starting turnserver");
        let c = Coturn { child, port, tls_port, dir, cert, log };
        c.wait_ready(&ip);
        c
    }

    fn wait_ready(&self, ip: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect((ip, self.tls_port)).is_ok()
                && std::net::TcpStream::connect((ip, self.port)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "turnserver did not start listening within 10 s; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
