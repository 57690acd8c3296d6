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
    /// The (first) listening IP.
    pub ip: String,
}

#[derive(Default, Clone)]
pub struct CoturnConfig {
    /// Extra turnserver arguments (auth, realm, peers policy, ...).
    pub args: Vec<String>,
    /// Listen on this IP instead of 127.0.0.1.
    pub listen_ip: Option<String>,
    /// More listening IPs. With one or more, coturn is an RFC 5780 server: it answers
    /// CHANGE-REQUEST from the other IP and from `--alt-listening-port` (port + 1).
    pub extra_listen_ips: Vec<String>,
    /// Run inside this network namespace (a lab's public namespace); ports are then fixed
    /// (3478, alternate 3479, TLS 5349) since the namespace is ours alone.
    pub netns: Option<String>,
}

impl CoturnConfig {
    /// An RFC 5780 STUN server on two IPs inside a namespace (e.g. a lab's public one).
    pub fn rfc5780_in(netns: &str, ip1: &str, ip2: &str) -> Self {
        CoturnConfig {
            listen_ip: Some(ip1.to_string()),
            extra_listen_ips: vec![ip2.to_string()],
            netns: Some(netns.to_string()),
            ..Default::default()
        }
    }
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
        let (port, tls_port) = if cfg.netns.is_some() { (3478, 5349) } else { (free_port(), free_port()) };
        let log = dir.path().join("turnserver.log");
        let ip = cfg.listen_ip.clone().unwrap_or_else(|| "127.0.0.1".into());
        let mut cmd = match &cfg.netns {
            Some(ns) => {
                let mut c = Command::new(tools::require("ip", "iproute2"));
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["-n", "--no-cli", "--no-dtls", "--simple-log", "--listening-ip", &ip, "--relay-ip", &ip]);
        for extra in &cfg.extra_listen_ips {
            cmd.args(["--listening-ip", extra]);
        }
        if !cfg.extra_listen_ips.is_empty() {
            cmd.args(["--alt-listening-port", &(port + 1).to_string()]);
        }
        cmd.args(["--listening-port", &port.to_string(), "--tls-listening-port", &tls_port.to_string()])
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
        let c = Coturn { child, port, tls_port, dir, cert, log, ip: ip.clone() };
        let mut udp = vec![format!("{ip}:{port}")];
        let rfc5780 = !cfg.args.iter().any(|a| a == "--no-rfc5780");
        for extra in &cfg.extra_listen_ips {
            udp.push(format!("{extra}:{port}"));
            if rfc5780 {
                // An RFC 5780 server answers CHANGE-REQUEST from every IP × port pair: wait for all four.
                udp.extend([format!("{ip}:{}", port + 1), format!("{extra}:{}", port + 1)]);
            }
        }
        c.wait_ready(&ip, cfg.netns.as_deref(), &udp);
        c
    }

    fn wait_ready(&self, ip: &str, netns: Option<&str>, udp: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ready = match netns {
                // The test process is not in that namespace: ask `ss` inside it.
                Some(ns) => {
                    let out = Command::new(tools::require("ip", "iproute2"))
                        .args(["netns", "exec", ns, "ss", "-Hlntu"])
                        .output()
                        .expect("running ss in the lab namespace");
                    let text = String::from_utf8_lossy(&out.stdout);
                    let words: Vec<&str> = text.split_whitespace().collect();
                    let tls = format!("{ip}:{}", self.tls_port);
                    words.contains(&tls.as_str()) && udp.iter().all(|u| words.contains(&u.as_str()))
                }
                None => {
                    std::net::TcpStream::connect((ip, self.tls_port)).is_ok()
                        && std::net::TcpStream::connect((ip, self.port)).is_ok()
                }
            };
            if ready {
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
        format!("{}:{}", self.ip, self.port)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
