//! `natkit turn-alloc` against coturn started on loopback: every step over
//! UDP, TCP and TLS, REST credentials, wrong password, the loopback policy,
//! an open server, nonce expiry, an echo peer and bad input.

mod common;

use std::net::UdpSocket;
use std::thread;
use std::time::Duration;

use common::coturn::{Coturn, CoturnConfig};
use common::{json_of, natkit};
use serde_json::Value;

const REALM: &str = "natkit.test";

fn coturn(extra: &[&str]) -> Coturn {
    let mut args: Vec<String> = vec!["--realm".into(), REALM.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Coturn::start(CoturnConfig { args, ..Default::default() })
}

fn lt_cred(extra: &[&str]) -> Coturn {
    let mut a = vec!["--lt-cred-mech", "--user", "alice:secret"];
    a.extend_from_slice(extra);
    coturn(&a)
}

fn step<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["steps"].as_array().expect("steps").iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no step {name}"))
}

fn warnings(v: &Value) -> Vec<String> {
    v["warnings"].as_array().expect("warnings").iter().map(|w| w.as_str().expect("str").to_string()).collect()
}

fn run(args: &[&str]) -> (Option<i32>, Value) {
    let mut full = vec!["turn-alloc"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--json", "--packets", "20", "--rate", "200"]);
    let out = natkit(&full);
    (out.status.code(), json_of(&out))
}

fn assert_all_steps_pass(v: &Value) {
    for s in v["steps"].as_array().expect("steps") {
        assert_eq!(s["ok"], true, "step failed: {s}\nreport: {v:#}");
    }
    assert_eq!(v["ok"], true);
}

#[test]
fn every_step_passes_over_udp_with_long_term_credentials() {
    let ct = lt_cred(&["--allow-loopback-peers"]);
    let (code, v) = run(&[&ct.addr(), "-u", "alice", "-p", "secret", "--realm", REALM]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_all_steps_pass(&v);
    let names: Vec<&str> = v["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "resolve",
            "connect",
            "binding",
            "allocate-unauthenticated",
            "allocate",
            "allocate-peer",
            "create-permission",
            "data-indication",
            "channel-bind",
            "channel-data",
            "quality",
            "audit",
            "refresh",
            "deallocate"
        ]
    );
    assert_eq!(v["transport"], "udp");
    assert!(v["relayed"].as_str().expect("relayed").starts_with("127.0.0.1:"));
    assert_eq!(v["lifetime_s"], 600);
    assert!(step(&v, "allocate-unauthenticated")["detail"].as_str().unwrap().contains("401"));
    let stats = &v["stats"];
    assert_eq!(stats["sent"], 20);
    assert_eq!(stats["received"], 20);
    assert_eq!(stats["loss_pct"], 0.0);
    assert!(stats["rtt_ms"]["p99"].as_f64().unwrap() >= stats["rtt_ms"]["min"].as_f64().unwrap());
    assert!(stats["jitter_ms"].as_f64().is_some());
    // coturn with --allow-loopback-peers: the audit must say so.
    let w = warnings(&v);
    assert!(w.iter().any(|w| w.contains("permission to 127.0.0.1")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("relays to its own loopback")), "{w:?}");
}

#[test]
fn every_step_passes_over_tcp_and_tls() {
    let ct = lt_cred(&["--allow-loopback-peers"]);
    let (code, v) = run(&[&ct.addr(), "--transport", "tcp", "-u", "alice", "-p", "secret"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_all_steps_pass(&v);
    assert_eq!(v["transport"], "tcp");

    let turns = format!("turns:127.0.0.1:{}", ct.tls_port);
    let (code, v) = run(&[&turns, "-u", "alice", "-p", "secret", "--insecure"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_all_steps_pass(&v);
    assert_eq!(v["transport"], "tls");
    assert!(warnings(&v).iter().any(|w| w.contains("TLS certificate") && w.contains("self-signed")), "{v:#}");

    // Without --insecure the connect step fails on the certificate and says what to do.
    let (code, v) = run(&[&turns, "-u", "alice", "-p", "secret"]);
    assert_eq!(code, Some(1));
    let d = step(&v, "connect")["detail"].as_str().unwrap().to_string();
    assert!(d.contains("certificate") && d.contains("--insecure"), "{d}");
}

#[test]
fn rest_shared_secret_credentials_work() {
    let ct = coturn(&["--use-auth-secret", "--static-auth-secret", "s3cret", "--allow-loopback-peers"]);
    let (code, v) = run(&[&ct.addr(), "--secret", "s3cret", "--user", "natkit"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_all_steps_pass(&v);

    let (code, v) = run(&[&ct.addr(), "--secret", "wrong"]);
    assert_eq!(code, Some(1));
    let d = step(&v, "allocate")["detail"].as_str().unwrap().to_string();
    assert!(d.contains("401") && d.contains("shared secret"), "{d}");
}

#[test]
fn wrong_password_fails_the_allocate_step_with_401() {
    let ct = lt_cred(&[]);
    let (code, v) = run(&[&ct.addr(), "-u", "alice", "-p", "wrong", "--realm", REALM]);
    assert_eq!(code, Some(1));
    assert_eq!(v["ok"], false);
    let a = step(&v, "allocate");
    assert_eq!(a["ok"], false);
    let d = a["detail"].as_str().unwrap();
    assert!(d.starts_with("401") && d.contains("wrong password") && d.contains(REALM), "{d}");
    assert_eq!(step(&v, "create-permission")["skipped"], true);
}

#[test]
fn loopback_peers_refused_by_default_are_reported_as_policy() {
    let ct = lt_cred(&[]);
    let (code, v) = run(&[&ct.addr(), "-u", "alice", "-p", "secret"]);
    assert_eq!(code, Some(1), "{v:#}");
    let p = step(&v, "create-permission");
    assert_eq!(p["ok"], false);
    let d = p["detail"].as_str().unwrap();
    assert!(d.contains("403") && d.contains("policy") && d.contains("loopback"), "{d}");
}

#[test]
fn a_server_without_credentials_is_flagged() {
    let ct = coturn(&["--no-auth", "--allow-loopback-peers"]);
    let (code, v) = run(&[&ct.addr()]);
    assert_eq!(code, Some(0), "{v:#}");
    assert!(warnings(&v).iter().any(|w| w.contains("does not require credentials")), "{v:#}");
}

#[test]
fn wrong_realm_expectation_fails() {
    let ct = lt_cred(&[]);
    let (code, v) = run(&[&ct.addr(), "-u", "alice", "-p", "secret", "--realm", "other.realm"]);
    assert_eq!(code, Some(1));
    let d = step(&v, "allocate-unauthenticated")["detail"].as_str().unwrap().to_string();
    assert!(d.contains("natkit.test") && d.contains("other.realm"), "{d}");
}

#[test]
fn nonce_expiry_is_checked_with_nonce_wait() {
    // A nonce that lives 1 s: the old one is refused (438) and a fresh one accepted.
    let ct = lt_cred(&["--allow-loopback-peers", "--stale-nonce=1"]);
    let (code, v) = run(&[&ct.addr(), "-u", "alice", "-p", "secret", "--nonce-wait", "2"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert!(step(&v, "refresh")["detail"].as_str().unwrap().contains("went stale"), "{v:#}");
    assert!(!warnings(&v).iter().any(|w| w.contains("nonce")));

    // Without --stale-nonce coturn's nonces never expire: flagged.
    let ct = lt_cred(&["--allow-loopback-peers"]);
    let (code, v) = run(&[&ct.addr(), "-u", "alice", "-p", "secret", "--nonce-wait", "2"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert!(warnings(&v).iter().any(|w| w.contains("nonce was still accepted")), "{v:#}");
}

#[test]
fn data_to_an_external_echo_peer() {
    let ct = lt_cred(&["--allow-loopback-peers"]);
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = echo.local_addr().unwrap().to_string();
    echo.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let (code, v) = run(&[&ct.addr(), "-u", "alice", "-p", "secret", "--peer", &peer]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_all_steps_pass(&v);
    assert!(v["steps"].as_array().unwrap().iter().all(|s| s["name"] != "allocate-peer"));
    assert_eq!(v["stats"]["received"], 20);
}

#[test]
fn nothing_listening_fails_fast_with_a_sentence() {
    // A privileged port is never handed out as an ephemeral one, so no parallel test can be there.
    let dead = "127.0.0.1:9".to_string();
    let (code, v) = run(&[&dead, "-u", "a", "-p", "b", "--timeout", "20"]);
    assert_eq!(code, Some(1));
    let d = step(&v, "binding")["detail"].as_str().unwrap().to_string();
    assert!(d.contains("port unreachable") && d.contains(&dead), "{d}");
}

#[test]
fn bad_input_exits_2() {
    for args in [
        vec!["turn-alloc", "127.0.0.1:0"],
        vec!["turn-alloc", "turn:host?transport=sctp"],
        vec!["turn-alloc", "127.0.0.1", "--user", "alice"],
        vec!["turn-alloc", "127.0.0.1", "--peer", "nonsense"],
        vec!["turn-alloc", "127.0.0.1", "--timeout", "0"],
        vec!["turn-alloc", "turns:127.0.0.1", "--transport", "udp"],
        vec!["turn-alloc", "127.0.0.1", "--rate", "0"],
    ] {
        let out = natkit(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}

/// natkit's own relay: every step passes with its safe defaults, and the audit
/// finds nothing (allocation-to-allocation traffic is delivered internally).
#[test]
fn every_step_passes_against_natkit_relay_and_the_audit_is_clean() {
    let relay = common::relay::Relay::start(&["--realm", REALM, "--user", "alice:secret", "--nonce-lifetime", "1"]);
    let (code, v) = run(&[&relay.addr(), "-u", "alice", "-p", "secret", "--realm", REALM, "--nonce-wait", "2"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_all_steps_pass(&v);
    assert_eq!(v["stats"]["received"], 20);
    assert!(warnings(&v).is_empty(), "natkit relay is safe by default: {v:#}");
    let audit = step(&v, "audit")["detail"].as_str().unwrap().to_string();
    assert!(audit.contains("127.0.0.1") && audit.contains("169.254.169.254") && !audit.contains("ACCEPTED"), "{audit}");
    assert!(step(&v, "refresh")["detail"].as_str().unwrap().contains("went stale"), "{v:#}");

    let (code, v) = run(&[&relay.addr(), "--transport", "tcp", "-u", "alice", "-p", "secret"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_all_steps_pass(&v);

    let (code, v) = run(&[&relay.addr(), "-u", "alice", "-p", "nope"]);
    assert_eq!(code, Some(1));
    assert!(step(&v, "allocate")["detail"].as_str().unwrap().starts_with("401"), "{v:#}");
}

#[test]
fn rest_secret_against_natkit_relay() {
    let relay = common::relay::Relay::start(&["--realm", REALM, "--secret", "shared"]);
    let (code, v) = run(&[&relay.addr(), "--secret", "shared", "--user", "bob"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_all_steps_pass(&v);
}

/// `natkit relay` on 127.0.0.1:3478 in a namespace of its own whose input hook drops one of
/// the two TURN data paths on their way to the server (a middlebox that filters by message
/// type): `rule` is an nft rule body.
fn relay_behind_filter(tag: &str, rule: &str) -> (common::browser::LoopbackNs, common::lab::LabChild) {
    common::tools::require("nft", "nftables");
    let ns = common::browser::LoopbackNs::new(tag);
    let nft = format!(
        "add table inet t; add chain inet t input {{ type filter hook input priority 0; }}; \
         add rule inet t input udp dport 3478 {rule} drop"
    );
    let st = std::process::Command::new("ip").args(["netns", "exec", &ns.name, "nft", &nft]).status().expect("nft");
    assert!(st.success(), "nft {nft}");
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_natkit"));
    cmd.args(["relay", "--listen", "127.0.0.1:3478", "--realm", REALM, "--user", "alice:secret"]);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let relay = common::lab::LabChild { child: cmd.spawn().expect("spawn natkit relay") };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listening = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "ss", "-Hlun", "sport", "= :3478"])
            .output()
            .expect("ss");
        !out.stdout.is_empty()
    };
    while !listening() {
        assert!(std::time::Instant::now() < deadline, "natkit relay did not listen in {} within 10 s", ns.name);
        thread::sleep(Duration::from_millis(50));
    }
    (ns, relay)
}

fn run_in(ns: &common::browser::LoopbackNs) -> (Option<i32>, Value) {
    let out = ns
        .command(env!("CARGO_BIN_EXE_natkit"))
        .args(["turn-alloc", "127.0.0.1:3478", "-u", "alice", "-p", "secret", "--realm", REALM])
        .args(["--json", "--packets", "20", "--rate", "200", "--timeout", "2"])
        .output()
        .expect("run turn-alloc");
    (out.status.code(), json_of(&out))
}

#[test]
fn a_server_path_that_relays_indications_but_not_channel_data_is_named() {
    // ChannelData: the first two bits of the UDP payload are 01 (RFC 8656 §12.4).
    let (ns, _relay) = relay_behind_filter("ta", "@th,64,8 & 0xc0 == 0x40");
    let (code, v) = run_in(&ns);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(step(&v, "data-indication")["ok"], true, "{v:#}");
    let d = step(&v, "channel-data")["detail"].as_str().expect("detail");
    assert!(d.contains("ChannelData on channel 0x4000 from us did not reach the peer allocation"), "{d}");
    assert!(d.contains("relays indications but not ChannelData"), "{d}");
}

#[test]
fn a_server_path_that_relays_channel_data_but_not_indications_is_named() {
    // A Send indication: STUN message type 0x0016 (RFC 8656 §11.2).
    let (ns, _relay) = relay_behind_filter("tb", "@th,64,16 == 0x0016");
    let (code, v) = run_in(&ns);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(step(&v, "channel-data")["ok"], true, "{v:#}");
    let d = step(&v, "data-indication")["detail"].as_str().expect("detail");
    assert!(d.contains("a Send indication from us did not reach the peer allocation"), "{d}");
    assert!(d.contains("relays ChannelData but not Send/Data indications"), "{d}");
    assert_eq!(v["ok"], false);
}
