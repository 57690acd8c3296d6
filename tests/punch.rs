//! `natkit punch` between two peers behind two real Linux NATs (the lab), with
//! `natkit signal` and coturn (as the STUN server) on the public segment:
//! a direct path is punched and a file moves intact, SHA-256 checked by both.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::coturn::{Coturn, CoturnConfig};
use common::lab::{Lab, NatKind};
use common::signal::SignalServer;
use serde_json::Value;

const NATKIT: &str = env!("CARGO_BIN_EXE_natkit");

fn spawn(mut c: Command) -> Child {
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn natkit punch")
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn random_file(path: &Path, len: usize) {
    let data: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    std::fs::write(path, data).expect("write test file");
}

struct World {
    lab: Lab,
    _stun: Coturn,
    signal: SignalServer,
}

fn world(a: NatKind, b: NatKind) -> World {
    let lab = Lab::builder().nat("a", a).nat("b", b).build();
    let public = lab.public_ns();
    let stun = Coturn::start(CoturnConfig {
        listen_ip: Some("203.0.113.1".into()),
        netns: Some(public.clone()),
        ..Default::default()
    });
    let signal = SignalServer::start_in(&["ip", "netns", "exec", &public], "203.0.113.1", &[]);
    World { lab, _stun: stun, signal }
}

/// Peer `from` sends a file of `len` bytes to peer `to`; returns both reports.
fn transfer(w: &World, from: &str, to: &str, room: &str, len: usize) -> (Value, Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src.bin");
    let dst = dir.path().join("dst.bin");
    random_file(&src, len);
    let url = w.signal.ws_url();
    let common =
        ["punch", "--signal", url.as_str(), "--room", room, "--stun", "203.0.113.1:3478", "--timeout", "20", "--json"];
    let mut recv_args: Vec<&str> = common.to_vec();
    let dst_s = dst.to_str().expect("utf-8");
    recv_args.extend(["--recv", dst_s]);
    let receiver = spawn(w.lab.command_in(&w.lab.client_ns(to), NATKIT, &recv_args));
    let mut send_args: Vec<&str> = common.to_vec();
    let src_s = src.to_str().expect("utf-8");
    send_args.extend(["--send", src_s]);
    let sender = spawn(w.lab.command_in(&w.lab.client_ns(from), NATKIT, &send_args));
    let (s, r) = (sender.wait_with_output().expect("sender"), receiver.wait_with_output().expect("receiver"));
    let (sr, rr) = (report(&s), report(&r));
    assert_eq!(s.status.code(), Some(0), "sender failed: {sr:#}\n{}", String::from_utf8_lossy(&s.stderr));
    assert_eq!(r.status.code(), Some(0), "receiver failed: {rr:#}\n{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&src).expect("src"), std::fs::read(&dst).expect("dst"), "the file arrived changed");
    assert_eq!(sr["sha256"], rr["sha256"]);
    assert_eq!(sr["bytes"], len as u64);
    (sr, rr)
}

fn assert_direct_between_public_addresses(r: &Value) {
    assert_eq!(r["path"], "direct", "{r:#}");
    let remote = &r["remote"];
    let kind = remote["type"].as_str().unwrap_or("-");
    assert!(kind == "srflx" || kind == "prflx", "behind NATs the far end is reflexive, got {kind}: {r:#}");
    assert!(remote["address"].as_str().unwrap_or("").starts_with("203.0.113."), "{r:#}");
    assert!(r["connect_ms"].as_f64().is_some());
    let checks = r["checks"].as_array().expect("checks");
    // The controlling side nominates a pair its own check proved; the controlled side may see the
    // nomination (USE-CANDIDATE) before its own check of that pair is answered.
    let proved = |c: &&Value| c["nominated"] == true && (r["role"] == "answerer" || c["outcome"] == "succeeded");
    assert!(checks.iter().any(|c| proved(&c)), "{r:#}");
}

#[test]
fn port_restricted_and_full_cone_punch_and_move_a_file_both_ways() {
    let w = world(NatKind::PortRestrictedCone, NatKind::FullCone);
    let (sr, rr) = transfer(&w, "a", "b", "pr-fc-1", 3 * 1024 * 1024);
    assert_direct_between_public_addresses(&sr);
    assert_direct_between_public_addresses(&rr);
    assert!(sr["throughput_mbps"].as_f64().expect("throughput") > 0.0);
    let (sr, _) = transfer(&w, "b", "a", "pr-fc-2", 3 * 1024 * 1024);
    assert_direct_between_public_addresses(&sr);
}

#[test]
fn port_restricted_pair_punches() {
    let w = world(NatKind::PortRestrictedCone, NatKind::PortRestrictedCone);
    let (sr, rr) = transfer(&w, "a", "b", "pr-pr", 1024 * 1024);
    assert_direct_between_public_addresses(&sr);
    assert_direct_between_public_addresses(&rr);
}

#[test]
fn restricted_cone_reaches_symmetric_directly() {
    let w = world(NatKind::RestrictedCone, NatKind::Symmetric);
    let (sr, _) = transfer(&w, "b", "a", "rc-sym", 1024 * 1024);
    assert_direct_between_public_addresses(&sr);
}

#[test]
fn a_peer_that_never_shows_up_is_a_clear_error() {
    let w = world(NatKind::FullCone, NatKind::FullCone);
    let url = w.signal.ws_url();
    let out = w
        .lab
        .command_in(
            &w.lab.client_ns("a"),
            NATKIT,
            &["punch", "--signal", &url, "--room", "alone", "--timeout", "2", "--json"],
        )
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let r = report(&out);
    let e = r["error"].as_str().expect("error");
    assert!(e.contains("peer never joined room alone within 2 s"), "{e}");
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        vec!["punch", "--room", "r"],
        vec!["punch", "--signal", "ftp://x", "--room", "r"],
        vec!["punch", "--signal", "ws://127.0.0.1:1", "--room", "r", "--timeout", "-3"],
        vec!["punch", "--signal", "ws://127.0.0.1:1", "--room", "r", "--send", "/nonexistent/file"],
        vec!["punch", "--signal", "ws://127.0.0.1:1", "--room", "r", "--send", "a", "--recv", "b"],
        vec!["punch", "--signal", "ws://127.0.0.1:1", "--room", "r", "--stun", "bad host!"],
    ] {
        let out = Command::new(NATKIT).args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty());
    }
}
