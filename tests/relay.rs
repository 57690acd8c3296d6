//! `natkit relay` against coturn's own clients (`turnutils_uclient`,
//! `turnutils_stunclient`, `turnutils_peer`) and a small hand-rolled TURN
//! client for the error paths, all on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use common::relay::Relay;
use common::{free_port, json_of, natkit, tools};
use natkit::stun::message::{decode, encode, new_transaction_id};
use natkit::turn::credentials::rest_credentials;
use stun_rs::attributes::stun::{MessageIntegrity, Nonce, Realm, UserName};
use stun_rs::attributes::turn::{RequestedTrasport, XorPeerAddress};
use stun_rs::methods::{ALLOCATE, CREATE_PERMMISSION};
use stun_rs::{
    Algorithm, AlgorithmId, HMACKey, MessageClass, MessageMethod, StunAttribute, StunMessage, StunMessageBuilder,
    TransactionId,
};

/// `turnutils_peer`, the UDP echo peer coturn's client talks to; killed on drop.
struct Peer {
    child: Child,
    port: u16,
}

impl Peer {
    fn start() -> Peer {
        let bin = tools::require("turnutils_peer", "coturn");
        let port = free_port();
        let child = Command::new(bin)
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting turnutils_peer");
        std::thread::sleep(Duration::from_millis(200));
        Peer { child, port }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `turnutils_uclient` reported at the end of a run.
#[derive(Debug)]
struct Load {
    sent: u64,
    received: u64,
    lost: u64,
    output: String,
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let i = text.rfind(key)? + key.len();
    let digits: String = text[i..].trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Runs `turnutils_uclient` (3 clients, 40 messages each, 170 bytes, every 5 ms); returns all it printed.
fn uclient_output(relay: &Relay, flags: &[&str]) -> String {
    let bin = tools::require("turnutils_uclient", "coturn");
    let port = relay.port.to_string();
    let out = Command::new("timeout")
        .arg("60")
        .arg(bin)
        .args(flags)
        .args(["-u", "alice", "-w", "wonderland", "-p", &port, "-n", "40", "-m", "3", "-l", "170", "-z", "5"])
        .arg("127.0.0.1")
        .output()
        .expect("running turnutils_uclient");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn uclient(relay: &Relay, flags: &[&str]) -> Load {
    let output = uclient_output(relay, flags);
    let parse = |k| number_after(&output, k).unwrap_or_else(|| panic!("no '{k}' in uclient output:\n{output}"));
    Load { sent: parse("tot_send_msgs="), received: parse("tot_recv_msgs="), lost: parse("Total lost packets"), output }
}

fn assert_all_relayed(load: &Load, what: &str) {
    assert!(load.sent >= 3 * 40, "{what}: only {} messages sent\n{}", load.sent, load.output);
    assert_eq!(load.received, load.sent, "{what}: not every message came back\n{}", load.output);
    assert_eq!(load.lost, 0, "{what}\n{}", load.output);
    assert!(!load.output.contains("error 4"), "{what}: the relay answered an error\n{}", load.output);
}

const USER: &[&str] = &["--user", "alice:wonderland", "--realm", "lab", "--ports", "40000-44999"];

fn relay_with(extra: &[&str]) -> Relay {
    Relay::start(&[USER, extra].concat())
}

#[test]
fn uclient_over_udp_relays_every_message_with_channels_and_with_send_indications() {
    let peer = Peer::start();
    let relay = relay_with(&["--allow-loopback-peers"]);
    let p = peer.port.to_string();
    assert_all_relayed(&uclient(&relay, &["-e", "127.0.0.1", "-r", &p]), "UDP, channels");
    assert_all_relayed(&uclient(&relay, &["-s", "-e", "127.0.0.1", "-r", &p]), "UDP, Send indications");
}

#[test]
fn uclient_over_tcp_relays_every_message_with_channels_and_with_send_indications() {
    let peer = Peer::start();
    let relay = relay_with(&["--allow-loopback-peers"]);
    let p = peer.port.to_string();
    assert_all_relayed(&uclient(&relay, &["-t", "-e", "127.0.0.1", "-r", &p]), "TCP, channels (padded)");
    assert_all_relayed(&uclient(&relay, &["-t", "-s", "-e", "127.0.0.1", "-r", &p]), "TCP, Send indications");
}

#[test]
fn two_clients_of_the_relay_talk_through_it_without_any_peer_flag() {
    // -y: every client is the peer of another one's relayed address, which is
    // loopback here, yet allowed: the relay delivers it internally.
    let mut relay = relay_with(&[]);
    assert_all_relayed(&uclient(&relay, &["-y"]), "client to client, UDP");
    assert_all_relayed(&uclient(&relay, &["-y", "-t"]), "client to client, TCP");
    assert_all_relayed(&uclient(&relay, &["-y", "-s"]), "client to client, Send indications");
    let out = relay.stop();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("peer refusals (403)") && text.contains("none"), "{text}");
}

#[test]
fn ipv6_listener_and_ipv6_relayed_addresses_work() {
    let port = free_port();
    let v6 = format!("[::1]:{port}");
    let v4 = format!("127.0.0.1:{port}");
    let relay = Relay::start_on(port, &[&["--listen", &v4, "--listen", &v6], USER].concat());
    let bin = tools::require("turnutils_uclient", "coturn");
    // -x: REQUESTED-ADDRESS-FAMILY IPv6; -y: the clients relay to each other's IPv6 relayed addresses;
    // -c: no RTCP allocations (they ask for a RESERVATION-TOKEN, which natkit does not implement).
    let out = Command::new("timeout")
        .arg("60")
        .arg(bin)
        .args([
            "-c",
            "-y",
            "-x",
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-p",
            &port.to_string(),
            "-n",
            "20",
            "-m",
            "2",
            "-z",
            "5",
        ])
        .arg("::1")
        .output()
        .expect("running turnutils_uclient");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let sent = number_after(&output, "tot_send_msgs=").unwrap_or(0);
    assert!(sent >= 40, "{output}");
    assert_eq!(number_after(&output, "tot_recv_msgs="), Some(sent), "{output}");
    let out = natkit(&["stun-probe", &v6, "--json"]);
    let v = json_of(&out);
    assert_eq!(v["results"][0]["mapped"], v["results"][0]["local"], "{v}");
    drop(relay);
}

#[test]
fn loopback_peers_are_refused_by_default_so_uclient_gets_403() {
    let peer = Peer::start();
    let mut relay = relay_with(&["--json"]);
    let p = peer.port.to_string();
    let output = uclient_output(&relay, &["-e", "127.0.0.1", "-r", &p]);
    assert!(output.contains("error 403 (peer address is loopback; see --allow-loopback-peers)"), "{output}");
    assert_eq!(number_after(&output, "tot_recv_msgs=").unwrap_or(0), 0, "{output}");
    let out = relay.stop();
    let v = json_of(&out);
    assert!(v["peer_refusals"]["loopback"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn stunclient_gets_its_mapped_address() {
    let bin = tools::require("turnutils_stunclient", "coturn");
    let relay = relay_with(&[]);
    let out = Command::new("timeout")
        .args(["10"])
        .arg(bin)
        .args(["-p", &relay.port.to_string(), "127.0.0.1"])
        .output()
        .expect("running turnutils_stunclient");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("127.0.0.1:"), "no mapped address in:\n{text}");
}

#[test]
fn stun_probe_answers_over_udp_tcp_and_tls() {
    let port = free_port();
    let tls_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::coturn::self_signed_cert(dir.path());
    let (cert, key) = (cert.to_str().unwrap().to_string(), key.to_str().unwrap().to_string());
    let listen = format!("127.0.0.1:{port}");
    let tls = format!("127.0.0.1:{tls_port}");
    let _relay = Relay::start_on(port, &["--listen", &listen, "--tls-listen", &tls, "--cert", &cert, "--key", &key]);
    let stuns = format!("stuns:{tls}");
    for args in [vec![listen.as_str()], vec![listen.as_str(), stuns.as_str(), "--transport", "tcp", "--ca", &cert]] {
        let out = natkit(&[&["stun-probe", "--json"], &args[..]].concat());
        let v = json_of(&out);
        assert!(out.status.success(), "{v}");
        for r in v["results"].as_array().unwrap() {
            assert_eq!(r["mapped"], r["local"], "{r}");
            assert_eq!(r["fingerprint_ok"], true, "{r}");
            assert_eq!(r["response_origin"], r["address"], "{r}");
        }
    }
}

/// A tiny TURN client over UDP for the error paths.
struct Client {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Client {
    fn new(relay: &Relay) -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        Client { sock, server: relay.addr().parse().unwrap() }
    }

    fn transact(&self, req: &[u8]) -> Option<StunMessage> {
        let id = &req[8..20];
        let mut buf = [0u8; 2048];
        for _ in 0..4 {
            self.sock.send_to(req, self.server).unwrap();
            while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                if n >= 20 && &buf[8..20] == id {
                    return Some(decode(&buf[..n]).expect("the relay's answer decodes"));
                }
            }
        }
        None
    }

    fn nonce(&self) -> String {
        let m = self.transact(&request(ALLOCATE, vec![udp()], None)).expect("a 401 challenge");
        assert_eq!(code(&m), Some(401));
        m.attributes().iter().find_map(|a| a.as_nonce().ok()).expect("NONCE").as_str().to_string()
    }
}

fn udp() -> StunAttribute {
    RequestedTrasport::new(stun_rs::protocols::UDP).into()
}

fn code(m: &StunMessage) -> Option<u16> {
    m.attributes().iter().find_map(|a| a.as_error_code().ok()).map(|e| e.error_code().error_code())
}

fn request(method: MessageMethod, attrs: Vec<StunAttribute>, auth: Option<(&str, &str, &str)>) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(method, MessageClass::Request)
        .with_transaction_id(TransactionId::from(new_transaction_id()));
    for a in attrs {
        b = b.with_attribute(a);
    }
    if let Some((user, pass, nonce)) = auth {
        let key = HMACKey::new_long_term(user, "lab", pass, Algorithm::from(AlgorithmId::MD5)).unwrap();
        b = b
            .with_attribute(UserName::new(user).unwrap())
            .with_attribute(Realm::new("lab").unwrap())
            .with_attribute(Nonce::new(nonce).unwrap())
            .with_attribute(MessageIntegrity::new(key));
    }
    encode(&b.build())
}

fn allocate(c: &Client, user: &str, pass: &str) -> StunMessage {
    let nonce = c.nonce();
    c.transact(&request(ALLOCATE, vec![udp()], Some((user, pass, &nonce)))).expect("an answer")
}

#[test]
fn wrong_password_gets_401_and_is_counted() {
    let mut relay = relay_with(&["--json"]);
    let c = Client::new(&relay);
    assert_eq!(code(&allocate(&c, "alice", "not-the-password")), Some(401));
    assert_eq!(allocate(&Client::new(&relay), "alice", "wonderland").class(), MessageClass::SuccessResponse);
    let v = json_of(&relay.stop());
    assert_eq!(v["auth_failures"]["bad_integrity"], 1, "{v}");
    assert_eq!(v["allocations_created"], 1, "{v}");
}

#[test]
fn a_stale_nonce_gets_438_and_the_fresh_one_works() {
    let relay = relay_with(&["--nonce-lifetime", "1"]);
    let c = Client::new(&relay);
    let nonce = c.nonce();
    std::thread::sleep(Duration::from_millis(1100));
    let m = c.transact(&request(ALLOCATE, vec![udp()], Some(("alice", "wonderland", &nonce)))).unwrap();
    assert_eq!(code(&m), Some(438));
    let fresh = m.attributes().iter().find_map(|a| a.as_nonce().ok()).unwrap().as_str().to_string();
    let m = c.transact(&request(ALLOCATE, vec![udp()], Some(("alice", "wonderland", &fresh)))).unwrap();
    assert_eq!(m.class(), MessageClass::SuccessResponse);
}

#[test]
fn rest_credentials_work_and_an_expired_username_gets_401() {
    let relay = Relay::start(&["--secret", "shared-secret", "--realm", "lab"]);
    let now = SystemTime::now();
    let good = rest_credentials("shared-secret", Some("carol"), now, Duration::from_secs(600));
    let m = allocate(&Client::new(&relay), &good.username, &good.password);
    assert_eq!(m.class(), MessageClass::SuccessResponse);
    let old =
        rest_credentials("shared-secret", Some("carol"), now - Duration::from_secs(3600), Duration::from_secs(60));
    assert_eq!(code(&allocate(&Client::new(&relay), &old.username, &old.password)), Some(401));
}

fn permission(relay: &Relay, peer: &str) -> Option<u16> {
    let c = Client::new(relay);
    let nonce = c.nonce();
    let auth = Some(("alice", "wonderland", nonce.as_str()));
    let m = c.transact(&request(ALLOCATE, vec![udp()], auth)).unwrap();
    assert_eq!(m.class(), MessageClass::SuccessResponse);
    let peer: SocketAddr = peer.parse().unwrap();
    let m = c.transact(&request(CREATE_PERMMISSION, vec![XorPeerAddress::from(peer).into()], auth)).unwrap();
    code(&m)
}

#[test]
fn loopback_and_private_peers_get_403_by_default_and_are_allowed_by_their_flags() {
    let strict = relay_with(&[]);
    for peer in ["127.0.0.1:9", "10.0.0.1:9", "169.254.169.254:80", "0.0.0.0:9", &strict.addr()] {
        assert_eq!(permission(&strict, peer), Some(403), "{peer}");
    }
    assert_eq!(permission(&strict, "203.0.113.7:9"), None, "a public peer is fine");
    let open = relay_with(&["--allow-loopback-peers", "--allow-private-peers"]);
    assert_eq!(permission(&open, "127.0.0.1:9"), None);
    assert_eq!(permission(&open, "10.0.0.1:9"), None);
    assert_eq!(permission(&open, &open.addr()), Some(403), "never the relay's own listener");
    let ranged = relay_with(&["--allow-peer", "10.9.0.0/16", "--deny-peer", "203.0.113.0/24"]);
    assert_eq!(permission(&ranged, "10.9.3.4:9"), None);
    assert_eq!(permission(&ranged, "10.8.3.4:9"), Some(403));
    assert_eq!(permission(&ranged, "203.0.113.7:9"), Some(403));
}

#[test]
fn a_coturn_turnserver_conf_works_and_unknown_options_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let peer = Peer::start();
    let conf = dir.path().join("turnserver.conf");
    std::fs::write(
        &conf,
        format!(
            "# from a coturn install\nlistening-ip=127.0.0.1\nlistening-port={port}\nrelay-ip=127.0.0.1\n\
             min-port=45000\nmax-port=45999\nlt-cred-mech\nuser=alice:wonderland\nrealm=lab\nfingerprint\n\
             no-cli\nallowed-peer-ip=127.0.0.1\nmobility\nstale-nonce=600\n"
        ),
    )
    .unwrap();
    let mut relay = Relay::start_on(port, &["--config", conf.to_str().unwrap()]);
    let load = uclient(&relay, &["-e", "127.0.0.1", "-r", &peer.port.to_string()]);
    assert_all_relayed(&load, "configured by turnserver.conf");
    let out = relay.stop();
    let err = String::from_utf8_lossy(&out.stderr);
    let warning = err.lines().find(|l| l.contains("does not implement")).unwrap_or_else(|| panic!("{err}"));
    assert!(warning.contains("mobility (MOBILITY-TICKET (RFC 8016) is not implemented)"), "with its reason:\n{err}");
    assert!(!warning.contains("stale-nonce"), "stale-nonce is --nonce-lifetime now:\n{err}");
    assert_eq!(err.matches("does not implement").count(), 1, "said once:\n{err}");
}

/// A turnserver.conf with `pidfile`, `log-file` and `no-stdout-log` in a tempdir.
fn conf_with_pidfile_and_log(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let conf = dir.join("turnserver.conf");
    std::fs::write(
        &conf,
        format!(
            "listening-ip=127.0.0.1\nlistening-port={port}\nrealm=lab\nuser=alice:wonderland\nsimple-log\n\
             no-stdout-log\npidfile={}\nlog-file={}\n",
            dir.join("turnserver.pid").display(),
            dir.join("turnserver.log").display()
        ),
    )
    .unwrap();
    conf
}

#[test]
fn turnserver_conf_pidfile_is_written_then_removed_and_the_log_file_reopens_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = conf_with_pidfile_and_log(dir.path(), port);
    let mut relay = Relay::start_on(port, &["--config", conf.to_str().unwrap()]);
    let pid_path = dir.path().join("turnserver.pid");
    let log_path = dir.path().join("turnserver.log");
    let pid: i32 = std::fs::read_to_string(&pid_path).expect("pidfile written").trim().parse().expect("a pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the pid is a live process");
    assert!(String::from_utf8_lossy(&cmdline).contains("relay"), "the pidfile names the relay");
    let first = std::fs::read_to_string(&log_path).expect("log-file written");
    assert!(first.contains("natkit relay: listening on"), "the start line is in the log file:\n{first}");

    // logrotate: rename, then SIGHUP; the relay reopens the name and goes on.
    let rotated = dir.path().join("turnserver.log.1");
    std::fs::rename(&log_path, &rotated).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !log_path.exists() {
        assert!(std::time::Instant::now() < deadline, "no new log file after SIGHUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(relay.alive(), "SIGHUP does not end the relay");
    assert_eq!(allocate(&Client::new(&relay), "alice", "wonderland").class(), MessageClass::SuccessResponse);

    let out = relay.stop();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let after = std::fs::read_to_string(&log_path).unwrap();
    assert!(after.contains("natkit relay: stopped"), "the stop line goes to the reopened file:\n{after}");
    assert!(!std::fs::read_to_string(&rotated).unwrap().contains("stopped"), "not to the rotated one");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("listening on"), "no-stdout-log: the start line is only in the file:\n{err}");
    assert!(!pid_path.exists(), "pidfile removed at exit");
}

#[test]
fn daemon_in_turnserver_conf_exits_2_pointing_at_the_unit_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("turnserver.conf");
    std::fs::write(&conf, "listening-ip=127.0.0.1\nrealm=lab\ndaemon\n").unwrap();
    let out = natkit(&["relay", "--listen", "127.0.0.1:0", "--config", conf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("daemon") && err.contains("deploy/natkit-relay.service"), "{err}");
}

#[test]
fn hostile_packets_do_not_stop_the_relay() {
    let mut relay = relay_with(&["--json"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target: SocketAddr = relay.addr().parse().unwrap();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid = request(ALLOCATE, vec![udp()], None);
    for i in 0..3000 {
        let len = (rnd() % 600) as usize;
        let mut p: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        match i % 4 {
            // A STUN header that lies about the length.
            0 if p.len() >= 20 => {
                p[..20].copy_from_slice(&valid[..20]);
                p[2..4].copy_from_slice(&(rnd() as u16 & !3).to_be_bytes());
            }
            // ChannelData with a wrong length.
            1 if p.len() >= 4 => {
                p[0] = 0x40;
                p[2..4].copy_from_slice(&(rnd() as u16).to_be_bytes());
            }
            _ => {}
        }
        let _ = sock.send_to(&p, target);
    }
    // Thousands of attributes in one message.
    let mut huge = valid[..20].to_vec();
    while huge.len() < 60_000 {
        huge.extend_from_slice(&[0x80, 0x22, 0, 4, b'n', b'a', b't', b'k']);
    }
    let body = (huge.len() - 20) as u16;
    huge[2..4].copy_from_slice(&body.to_be_bytes());
    let _ = sock.send_to(&huge, target);
    // Junk over TCP: the connection is closed, the relay lives on.
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0u8, 1, 0xFF, 0xFF, 0x21, 0x12, 0xA4, 0x42][..], &huge[..]] {
        if let Ok(mut s) = TcpStream::connect(target) {
            let _ = s.write_all(junk);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(relay.alive());
    assert_eq!(allocate(&Client::new(&relay), "alice", "wonderland").class(), MessageClass::SuccessResponse);
    let v = json_of(&relay.stop());
    assert!(v["dropped_packets"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn metrics_are_served_as_prometheus_text() {
    let mport = free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let relay = relay_with(&["--metrics", &maddr]);
    let _ = permission(&relay, "127.0.0.1:9");
    let mut s = TcpStream::connect(&maddr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for needle in [
        "natkit_relay_allocations{transport=\"udp\"} 1",
        "natkit_relay_allocations_created_total 1",
        "natkit_relay_peer_refusals_total{reason=\"loopback\"} 1",
        "natkit_relay_auth_failures_total{reason=\"bad_integrity\"} 0",
        "natkit_relay_packets_relayed_total{direction=\"to_peer\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[test]
fn sigint_stops_the_relay_with_a_summary_and_exit_0() {
    let mut relay = relay_with(&["--json"]);
    assert_eq!(allocate(&Client::new(&relay), "alice", "wonderland").class(), MessageClass::SuccessResponse);
    let out = relay.stop();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json_of(&out);
    assert_eq!(v["allocations_created"], 1);
    assert_eq!(v["listening"][0], format!("udp+tcp {}", relay.addr()));
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    for args in [
        vec!["relay", "--listen", "nonsense"],
        vec!["relay", "--listen", "127.0.0.1:0", "--ports", "70-60"],
        vec!["relay", "--listen", "127.0.0.1:0", "--allow-peer", "10.0.0.0/99"],
        vec!["relay", "--listen", "127.0.0.1:0", "--user", "nocolon"],
        vec!["relay", "--listen", "127.0.0.1:0", "--alt-port", "4000"],
        vec!["relay", "--listen", "0.0.0.0:0", "--alt-ip", "127.0.0.2"],
        vec!["relay", "--listen", "127.0.0.1:0", "--config", "/nonexistent/turnserver.conf"],
        vec![
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--cert",
            "/nonexistent",
            "--key",
            "/nonexistent",
        ],
    ] {
        let out = natkit(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.trim().is_empty(), "{args:?}: {err}");
    }
}

/// `natkit relay` as the RFC 5780 server of a NAT lab: two public IPs, two ports.
fn lab_with_relay(kind: common::lab::NatKind) -> (common::lab::Lab, common::lab::LabChild) {
    let lab = common::lab::Lab::builder().nat("c", kind).build();
    let relay = lab.spawn_in(
        &lab.public_ns(),
        env!("CARGO_BIN_EXE_natkit"),
        &["relay", "--listen", "203.0.113.1:3478", "--alt-ip", "203.0.113.2", "--alt-port", "3479"],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !lab.udp_listening(&lab.public_ns(), "203.0.113.2", 3479) {
        assert!(std::time::Instant::now() < deadline, "natkit relay did not listen in the lab within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (lab, relay)
}

fn natdiscovery(lab: &common::lab::Lab) -> String {
    let bin = tools::require("turnutils_natdiscovery", "coturn");
    let out = lab.run_in(&lab.client_ns("c"), "timeout", &["30", bin.to_str().unwrap(), "-m", "-f", "203.0.113.1"]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn natdiscovery_judges_a_port_restricted_nat_right_through_our_rfc5780_responder() {
    let (lab, _relay) = lab_with_relay(common::lab::NatKind::PortRestrictedCone);
    let text = natdiscovery(&lab);
    assert!(text.contains("NAT with Endpoint Independent Mapping"), "{text}");
    assert!(text.contains("NAT with Address and Port Dependent Filtering"), "{text}");
}

#[test]
fn natdiscovery_sees_a_symmetric_nat_and_a_full_cone_nat_for_what_they_are() {
    let (lab, _relay) = lab_with_relay(common::lab::NatKind::Symmetric);
    let text = natdiscovery(&lab);
    assert!(text.contains("NAT with Address and Port Dependent Mapping"), "{text}");
    let (lab, _relay) = lab_with_relay(common::lab::NatKind::FullCone);
    let text = natdiscovery(&lab);
    assert!(text.contains("NAT with Endpoint Independent Mapping"), "{text}");
    assert!(text.contains("NAT with Endpoint Independent Filtering"), "{text}");
}

#[test]
fn natkit_nat_type_classifies_through_natkit_relay() {
    let (lab, _relay) = lab_with_relay(common::lab::NatKind::PortRestrictedCone);
    let out = lab.natkit_in(&lab.client_ns("c"), &["nat-type", "--server", "203.0.113.1:3478", "--json"]);
    let v = json_of(&out);
    assert_eq!(v["server"]["rfc5780"], true, "{v:#}");
    assert_eq!(v["server"]["other_address"], "203.0.113.2:3479", "{v:#}");
    assert_eq!(v["mapping"], "endpoint-independent", "{v:#}");
    assert_eq!(v["filtering"], "address-and-port-dependent", "{v:#}");
}
