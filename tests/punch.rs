//! `natkit punch` between two peers behind two real Linux NATs (the lab), with
//! `natkit signal` and `natkit relay` (STUN on two public IPs, so each peer learns whether its
//! mapping varies, and TURN) on the public segment:
//! for every pair of NAT kinds the expected path is found and a file moves
//! intact, SHA-256 checked by both; two peers behind one NAT meet over their
//! host candidates.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::lab::{Lab, LabChild, NatKind};
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

/// The test file: a few MiB, enough for QUIC to reach speed, small enough for a lean CI.
const FILE_LEN: usize = 3 * 1024 * 1024;

/// STUN on both public IPs (`natkit relay`): what every peer in the lab is given.
const STUN_ARGS: &[&str] = &["--stun", "203.0.113.1:3478", "--stun", "203.0.113.2:3478"];

/// TURN on the first public IP, same relay: every pair has a relay to fall back on (and must
/// still go direct when it can).
const TURN_ARGS: &[&str] = &["--turn", "203.0.113.1:3478", "--turn-user", "punch", "--turn-password", "lab-secret"];

struct World {
    lab: Lab,
    _relay: LabChild,
    signal: SignalServer,
}

/// Peers "a" and "b" behind NATs of kinds `a` and `b`.
fn world(a: NatKind, b: NatKind) -> World {
    world_in(Lab::builder().nat("a", a).nat("b", b).build())
}

/// TURN user, realm and relaying IP of the lab's `natkit relay`.
const RELAY_TURN: [&str; 6] = ["--relay-ip", "203.0.113.1", "--realm", "lab", "--user", "punch:lab-secret"];

/// The lab with the servers on its public segment (the default 203.0.113.1 and .2): `natkit relay`
/// (STUN on both, TURN user punch:lab-secret relaying from .1), `natkit signal` on .1:8080.
fn world_in(lab: Lab) -> World {
    let listen = ["--listen", "203.0.113.1:3478", "--listen", "203.0.113.2:3478"];
    with_servers(lab, &listen, &[("203.0.113.1", 3478), ("203.0.113.2", 3478)])
}

/// Like [`world`], but the relay is one RFC 5780 server (.1:3478, alternate .2:3479): peers
/// given only it learn whether their mapping varies from its OTHER-ADDRESS.
fn world_rfc5780(a: NatKind, b: NatKind) -> World {
    let lab = Lab::builder().nat("a", a).nat("b", b).build();
    let listen = ["--listen", "203.0.113.1:3478", "--alt-ip", "203.0.113.2", "--alt-port", "3479"];
    with_servers(lab, &listen, &[("203.0.113.1", 3478), ("203.0.113.2", 3479)])
}

fn with_servers(lab: Lab, listen: &[&str], ready: &[(&str, u16)]) -> World {
    let public = lab.public_ns();
    let relay = lab.spawn_in(&public, NATKIT, &[&["relay"], listen, &RELAY_TURN].concat());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.iter().all(|(ip, port)| lab.udp_listening(&public, ip, *port)) {
        assert!(Instant::now() < deadline, "natkit relay did not listen in the lab within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let signal = SignalServer::start_in(&["ip", "netns", "exec", &public], "203.0.113.1", &[]);
    World { lab, _relay: relay, signal }
}

/// Peer `from` sends a file of `len` bytes to peer `to`; returns both reports.
fn transfer(w: &World, from: &str, to: &str, room: &str, len: usize) -> (Value, Value) {
    transfer_with(w, from, to, room, len, &[])
}

/// [`transfer`] with `extra` flags for both peers.
fn transfer_with(w: &World, from: &str, to: &str, room: &str, len: usize, extra: &[&str]) -> (Value, Value) {
    transfer_servers(w, from, to, room, len, &[STUN_ARGS, TURN_ARGS, extra].concat())
}

/// [`transfer`] with exactly these server (and other) flags for both peers.
fn transfer_servers(w: &World, from: &str, to: &str, room: &str, len: usize, flags: &[&str]) -> (Value, Value) {
    transfer_via(w, &w.signal.ws_url(), from, to, room, len, flags)
}

/// [`transfer_servers`] through the signal server at `url`.
fn transfer_via(w: &World, url: &str, from: &str, to: &str, room: &str, len: usize, flags: &[&str]) -> (Value, Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src.bin");
    let dst = dir.path().join("dst.bin");
    random_file(&src, len);
    let common = [&["punch", "--signal", url, "--room", room, "--timeout", "30", "--json"], flags].concat();
    let mut recv_args: Vec<&str> = common.clone();
    let dst_s = dst.to_str().expect("utf-8");
    recv_args.extend(["--recv", dst_s]);
    let receiver = spawn(w.lab.command_in(&w.lab.client_ns(to), NATKIT, &recv_args));
    let mut send_args: Vec<&str> = common;
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
    if r["birthday"]["outcome"] == "found" {
        return; // the path came from the birthday method, not from an ICE pair
    }
    let checks = r["checks"].as_array().expect("checks");
    // The controlling side nominates a pair its own check proved; the controlled side may see the
    // nomination (USE-CANDIDATE) before its own check of that pair is answered.
    let proved = |c: &&Value| c["nominated"] == true && (r["role"] == "answerer" || c["outcome"] == "succeeded");
    assert!(checks.iter().any(|c| proved(&c)), "{r:#}");
}

fn assert_relayed(r: &Value) {
    assert_eq!(r["path"], "relay", "{r:#}");
    let relayed = |e: &Value| e["type"] == "relay";
    assert!(relayed(&r["local"]) || relayed(&r["remote"]), "a relayed path has a relay candidate: {r:#}");
    assert!(r["connect_ms"].as_f64().is_some());
}

/// The path a pair of NATs must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Direct,
    Relay,
}

/// One matrix entry: peers behind NATs `a` and `b` get the `expect`ed path on both sides, and the
/// file arrives intact a → b, then b → a in a fresh session (the receiver starts first, so the one
/// joining second, which offers and controls ICE, is usually the sender: each side gets both roles).
fn punch_pair(a: NatKind, b: NatKind, expect: Expect) {
    let w = world(a, b);
    let check = |r: &Value| match expect {
        Expect::Direct => assert_direct_between_public_addresses(r),
        Expect::Relay => assert_relayed(r),
    };
    for (from, to) in [("a", "b"), ("b", "a")] {
        let (sr, rr) = transfer(&w, from, to, &format!("{from}-to-{to}"), FILE_LEN);
        check(&sr);
        check(&rr);
        assert!(sr["throughput_mbps"].as_f64().expect("throughput") > 0.0, "{sr:#}");
    }
}

/// One `#[test]` per NAT pair (they run in parallel, each in its own lab, and fail by name):
/// `name: KindA <-> KindB => Path;`
macro_rules! punch_matrix {
    ($($name:ident: $a:ident <-> $b:ident => $expect:ident;)*) => {
        mod matrix {
            use super::*;
            $(
                #[test]
                fn $name() {
                    punch_pair(NatKind::$a, NatKind::$b, Expect::$expect);
                }
            )*
        }
    };
}

// Every unordered pair of full cone, restricted cone, port-restricted cone and symmetric (RFC 4787
// mapping/filtering): direct unless both map per destination.
punch_matrix! {
    full_cone_and_full_cone: FullCone <-> FullCone => Direct;
    full_cone_and_restricted_cone: FullCone <-> RestrictedCone => Direct;
    full_cone_and_port_restricted: FullCone <-> PortRestrictedCone => Direct;
    full_cone_and_symmetric: FullCone <-> Symmetric => Direct;
    restricted_cone_and_restricted_cone: RestrictedCone <-> RestrictedCone => Direct;
    restricted_cone_and_port_restricted: RestrictedCone <-> PortRestrictedCone => Direct;
    restricted_cone_and_symmetric: RestrictedCone <-> Symmetric => Direct;
    port_restricted_and_port_restricted: PortRestrictedCone <-> PortRestrictedCone => Direct;
    // By the birthday method: the symmetric side opens many mappings, the other probes.
    port_restricted_and_symmetric: PortRestrictedCone <-> Symmetric => Direct;
    symmetric_and_symmetric: Symmetric <-> Symmetric => Relay;
}

#[test]
fn the_birthday_method_says_who_probed_and_no_birthday_leaves_the_relay() {
    let w = world(NatKind::PortRestrictedCone, NatKind::Symmetric);
    let (sr, rr) = transfer(&w, "a", "b", "pr-sym", 256 * 1024);
    for (r, side) in [(&sr, "prober"), (&rr, "opener")] {
        assert_eq!(r["path"], "direct", "{r:#}");
        assert_eq!(r["birthday"]["side"], side, "{r:#}");
        assert_eq!(r["birthday"]["outcome"], "found", "{r:#}");
    }
    assert_eq!(rr["birthday"]["sockets"], 256);
    let probes = sr["birthday"]["probes"].as_u64().expect("probes");
    assert!((1..=2048).contains(&probes), "bounded probing: {probes}");
    let (sr, rr) = transfer_with(&w, "b", "a", "pr-sym-nb", 256 * 1024, &["--no-birthday"]);
    assert_relayed(&sr);
    assert_relayed(&rr);
    assert_eq!(sr["birthday"], Value::Null);
}

#[test]
fn one_rfc5780_stun_server_is_enough_to_tell_the_hard_side() {
    let w = world_rfc5780(NatKind::PortRestrictedCone, NatKind::Symmetric);
    let (sr, rr) = transfer_servers(&w, "a", "b", "one-server", 256 * 1024, &["--stun", "203.0.113.1:3478"]);
    assert_eq!(sr["mapping_varies"], false, "{sr:#}");
    assert_eq!(rr["mapping_varies"], true, "{rr:#}");
    for r in [&sr, &rr] {
        assert_eq!(r["path"], "direct", "{r:#}");
        assert_eq!(r["birthday"]["outcome"], "found", "{r:#}");
    }
}

#[test]
fn relay_only_goes_through_the_relay_on_an_easy_pair() {
    let w = world(NatKind::FullCone, NatKind::PortRestrictedCone);
    let (sr, rr) = transfer_with(&w, "a", "b", "relay-only", 1024 * 1024, &["--relay-only"]);
    assert_relayed(&sr);
    assert_relayed(&rr);
    assert_eq!(sr["local"]["type"], "relay", "{sr:#}");
    assert_eq!(rr["local"]["type"], "relay", "{rr:#}");
    // The relayed candidate is not in the offer/answer (the allocation finishes later): it was
    // trickled, and each side got the other's.
    for (r, other) in [(&sr, &rr), (&rr, &sr)] {
        let ours: Vec<&str> =
            r["candidates"].as_array().expect("candidates").iter().filter_map(|c| c.as_str()).collect();
        assert_eq!(ours.len(), 1, "--relay-only offers only the relayed candidate: {r:#}");
        assert!(ours[0].contains("typ relay"), "{r:#}");
        let theirs = other["remote_candidates"].as_array().expect("remote_candidates");
        assert!(theirs.iter().any(|c| c.as_str() == Some(ours[0])), "trickled to the peer: {other:#}");
    }
}

#[test]
fn peers_behind_one_nat_meet_over_host_candidates() {
    let w = world_in(Lab::builder().nat("a", NatKind::PortRestrictedCone).client_behind("b", "a").build());
    let (sr, rr) = transfer(&w, "a", "b", "same-lan", FILE_LEN);
    for (r, own, theirs) in [(&sr, "a", "b"), (&rr, "b", "a")] {
        assert_eq!(r["path"], "direct", "{r:#}");
        assert_eq!(r["local"]["type"], "host", "{r:#}");
        assert_eq!(r["remote"]["type"], "host", "{r:#}");
        let ip = |e: &Value| e["address"].as_str().and_then(|a| a.parse::<std::net::SocketAddr>().ok()).map(|a| a.ip());
        assert_eq!(ip(&r["local"]), Some(w.lab.nat(own).client_ip.into()), "{r:#}");
        assert_eq!(ip(&r["remote"]), Some(w.lab.nat(theirs).client_ip.into()), "{r:#}");
        // Both also had a server-reflexive candidate on the one NAT's public address: host won over it.
        let public = format!(" {} ", w.lab.nat(own).public_ip);
        let srflx = |c: &Value| c.as_str().is_some_and(|c| c.contains(&public) && c.contains("typ srflx"));
        assert!(r["candidates"].as_array().expect("candidates").iter().any(srflx), "{r:#}");
    }
}

#[test]
fn stdio_pipes_both_ways_like_netcat_and_the_report_goes_to_stderr() {
    use std::io::Write;
    let w = world(NatKind::PortRestrictedCone, NatKind::FullCone);
    let url = w.signal.ws_url();
    let args =
        [&["punch", "--signal", url.as_str(), "--room", "nc", "--timeout", "30", "--json", "-q", "--stdio"], STUN_ARGS]
            .concat();
    let start = |name: &str, text: &str| {
        let mut c = w.lab.command_in(&w.lab.client_ns(name), NATKIT, &args);
        let mut child =
            c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn natkit punch");
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write stdin");
        child // stdin dropped: end of input, as `echo … | natkit punch --stdio`
    };
    let a = start("a", "hello from a\n");
    let b = start("b", "hello from b\n");
    let (a, b) = (a.wait_with_output().expect("a"), b.wait_with_output().expect("b"));
    for (out, theirs) in [(&a, "hello from b\n"), (&b, "hello from a\n")] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), theirs, "stdout carries the peer's bytes only");
        let r: Value =
            serde_json::from_str(&err).unwrap_or_else(|e| panic!("the report on stderr is not JSON ({e}): {err}"));
        assert_eq!(r["path"], "direct", "{r:#}");
        assert_eq!(r["bytes"], 26, "13 bytes each way: {r:#}");
    }
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

#[test]
fn a_signal_url_that_never_answers_the_websocket_handshake_ends_within_the_timeout() {
    let silent = common::bounded::SilentListener::start();
    let url = format!("ws://{}", silent.addr);
    let mut cmd = Command::new(NATKIT);
    cmd.args(["punch", "--signal", &url, "--room", "b1", "--timeout", "3", "--json"]);
    let out = common::bounded::output_within(cmd, Duration::from_secs(30))
        .expect("punch --timeout 3 was still running after 30 s against a silent WebSocket listener");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r = report(&out);
    let e = r["error"].as_str().expect("error");
    assert!(e.contains("opening the WebSocket"), "{e}");
}

#[test]
fn recv_targets_are_checked_before_joining() {
    let dir = tempfile::tempdir().expect("tempdir");
    let existing = dir.path().join("exists.bin");
    std::fs::write(&existing, b"keep me").expect("write");
    let missing_dir = dir.path().join("no-such-dir").join("x");
    // The signal URL points nowhere: each of these must be refused before any connection is tried.
    for (target, says) in [
        (missing_dir.to_str().expect("utf-8"), "does not exist"),
        (dir.path().to_str().expect("utf-8"), "is a directory"),
        (existing.to_str().expect("utf-8"), "--force"),
    ] {
        let out = Command::new(NATKIT)
            .args(["punch", "--signal", "ws://127.0.0.1:1", "--room", "r", "--recv", target])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--recv {target}: {err}");
        assert!(err.contains(says), "--recv {target}: {err}");
        assert!(!err.contains("cannot connect"), "checked only after trying the network: {err}");
    }
    assert_eq!(std::fs::read(&existing).expect("read"), b"keep me");
    // With --force an existing file is acceptable: the run gets as far as the network.
    let out = Command::new(NATKIT)
        .args(["punch", "--signal", "ws://127.0.0.1:1", "--room", "r", "--timeout", "2"])
        .args(["--recv", existing.to_str().expect("utf-8"), "--force", "--json"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Waits for `child` at most `bound`, killing it past that (a test must fail, not hang).
fn wait_bounded(mut child: Child, bound: std::time::Duration, what: &str) -> Output {
    let until = std::time::Instant::now() + bound;
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("{what} still ran after {bound:?}:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

/// A router that stops forwarding mid-transfer leaves the selected pair silent both ways and no
/// new path to find. Consent freshness (RFC 7675) reports the path lost, then expires, and both
/// ends stop with an error naming the peer's address, exit 1: consent, not QUIC's idle timer,
/// decides.
#[test]
fn a_path_that_dies_mid_transfer_is_reported_lost_then_consent_expires() {
    let w = world(NatKind::PortRestrictedCone, NatKind::PortRestrictedCone);
    // 8 MiB at 8 Mbit/s out of a's router: about 8 s, time to forget in the middle.
    w.lab.shape_uplink("a", "8mbit");
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src.bin"), dir.path().join("dst.bin"));
    random_file(&src, 8 * 1024 * 1024);
    let url = w.signal.ws_url();
    let common =
        [&["punch", "--signal", url.as_str(), "--room", "dies", "--timeout", "30", "--json"], STUN_ARGS].concat();
    let (src_s, dst_s) = (src.to_str().expect("utf-8"), dst.to_str().expect("utf-8"));
    let recv_args = [common.as_slice(), &["--no-relay", "--recv", dst_s]].concat();
    let send_args = [common.as_slice(), &["--no-relay", "--send", src_s]].concat();
    let receiver = spawn(w.lab.command_in(&w.lab.client_ns("b"), NATKIT, &recv_args));
    let sender = spawn(w.lab.command_in(&w.lab.client_ns("a"), NATKIT, &send_args));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0) < 1024 * 1024 {
        assert!(std::time::Instant::now() < until, "the transfer never got 1 MiB through");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    w.lab.router_cuts("a");
    let bound = std::time::Duration::from_secs(90);
    let (s, r) = (wait_bounded(sender, bound, "the sender"), wait_bounded(receiver, bound, "the receiver"));
    let got = std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
    assert!(got < 8 * 1024 * 1024, "the file got through before the router forgot ({got} bytes): slow it more");
    for (who, out) in [("sender", &s), ("receiver", &r)] {
        let err = String::from_utf8_lossy(&out.stderr);
        let rep = report(out);
        assert_eq!(out.status.code(), Some(1), "{who}: {rep:#}\n{err}");
        assert!(err.contains("has not answered consent checks"), "{who} never reported the path lost: {err}");
        let why = rep["error"].as_str().unwrap_or_default();
        assert!(why.contains("consent to send to") && why.contains("expired"), "{who}: {rep:#}\n{err}");
    }
}

/// Issue #16's "NATs that forget": a's router reboots 9 MiB into a 64 MiB transfer (conntrack
/// flushed, masquerade moved to ports 20000-20999). Consent checks go unanswered, a asks the
/// STUN servers again, learns its new address and trickles it through the room (still joined);
/// b checks toward it, which opens b's NAT; a's checks get through again, QUIC migrates to a's
/// new address on b's side, and the stream goes on: same SHA-256, exit 0, and both reports say
/// how the path moved.
#[test]
fn a_transfer_survives_a_router_that_forgets_its_mappings() {
    const LEN: usize = 64 * 1024 * 1024;
    let w = world(NatKind::PortRestrictedCone, NatKind::PortRestrictedCone);
    // 64 MiB at 100 Mbit/s out of a's router: about 5 s, time to forget in the middle.
    w.lab.shape_uplink("a", "100mbit");
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src.bin"), dir.path().join("dst.bin"));
    random_file(&src, LEN);
    let url = w.signal.ws_url();
    let common =
        [&["punch", "--signal", url.as_str(), "--room", "forget", "--timeout", "30", "--json"], STUN_ARGS, TURN_ARGS]
            .concat();
    let (src_s, dst_s) = (src.to_str().expect("utf-8"), dst.to_str().expect("utf-8"));
    let recv_args = [common.as_slice(), &["--recv", dst_s]].concat();
    let send_args = [common.as_slice(), &["--send", src_s]].concat();
    let receiver = spawn(w.lab.command_in(&w.lab.client_ns("b"), NATKIT, &recv_args));
    // b joins first, so a offers and is the QUIC client: the side whose NAT forgets is the one
    // QUIC lets move (a QUIC server that moves is not followed yet).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !w.signal.log_text().lines().any(|l| l.contains("joined") && l.contains("forget")) {
        assert!(std::time::Instant::now() < until, "b never joined: {}", w.signal.log_text());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sender = spawn(w.lab.command_in(&w.lab.client_ns("a"), NATKIT, &send_args));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0) < 9 * 1024 * 1024 {
        assert!(std::time::Instant::now() < until, "the transfer never got 9 MiB through");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Below Linux's ephemeral ports (32768-60999), so no mapping can keep its old port.
    w.lab.router_forgets("a", (20000, 20999));
    let bound = std::time::Duration::from_secs(120);
    let (s, r) = (wait_bounded(sender, bound, "the sender"), wait_bounded(receiver, bound, "the receiver"));
    let (sr, rr) = (report(&s), report(&r));
    assert_eq!(s.status.code(), Some(0), "sender: {sr:#}\n{}", String::from_utf8_lossy(&s.stderr));
    assert_eq!(r.status.code(), Some(0), "receiver: {rr:#}\n{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(&src).expect("src") == std::fs::read(&dst).expect("dst"), "the file arrived changed");
    assert_eq!(sr["sha256"], rr["sha256"]);
    assert_eq!(sr["bytes"], LEN as u64);
    assert_eq!(sr["path"], "direct", "{sr:#}");
    assert_eq!(sr["role"], "offerer", "{sr:#}");
    // a: its own mapping moved into the new range; b: QUIC followed a there.
    let moved_into_range = |c: &Value| {
        let to: std::net::SocketAddr = c["to"].as_str().unwrap_or("").parse().unwrap_or_else(|_| panic!("to: {c}"));
        to.ip().to_string() == "203.0.113.11" && (20000..=20999).contains(&to.port())
    };
    let changes = |r: &Value, why: &str| -> Vec<Value> {
        r["path_changes"].as_array().expect("path_changes").iter().filter(|c| c["why"] == why).cloned().collect()
    };
    let a = changes(&sr, "mapping-changed");
    let err = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(a.iter().any(moved_into_range), "a never re-punched from its new address: {sr:#}\n{}", err(&s));
    let b = changes(&rr, "peer-moved");
    assert!(b.iter().any(moved_into_range), "b's QUIC never followed a: {rr:#}\n{}", err(&r));
    assert!(a.iter().chain(&b).all(|c| c["at_ms"].as_f64().is_some_and(|t| t > 0.0)));
}

// ---- Port-mapped candidates (issue #16): a miniupnpd router maps the punch socket's port ----

use common::miniupnpd::MiniUpnpd;

/// The peers' servers in the port-mapping lab: the RFC 5780 relay (its one address tells each
/// side whether its mapping varies) and TURN.
const MAPPING_SERVERS: &[&str] = &[
    "--stun",
    "203.0.113.1:3478",
    "--turn",
    "203.0.113.1:3478",
    "--turn-user",
    "punch",
    "--turn-password",
    "lab-secret",
];

/// Issue #16's "routers that map ports": two symmetric NATs, a's router runs miniupnpd. a maps its
/// punch socket's port (PCP, miniupnpd's first answer), offers the mapping as a candidate, b's
/// checks reach a through it, and the pair that is relay-only without a mapping goes direct, both
/// ways round. The mapping is deleted on every way out: after a transfer, after an error (nobody
/// came) and on Ctrl-C; miniupnpd holds nothing afterwards. `--no-port-mapping` leaves the relay.
#[test]
fn symmetric_pair_goes_direct_through_a_port_mapping_router_and_leaves_nothing_on_it() {
    let w = world_rfc5780(NatKind::Symmetric, NatKind::Symmetric);
    let upnp = MiniUpnpd::start(&w.lab, "a", "203.0.113.1", 3478);
    assert_eq!(upnp.rules(), "", "a fresh miniupnpd holds no mapping");
    let url = w.signal.ws_url();
    let alone = |room: &str, timeout: &str| {
        let args =
            [&["punch", "--signal", url.as_str(), "--room", room, "--timeout", timeout, "--json"], MAPPING_SERVERS]
                .concat();
        spawn(w.lab.command_in(&w.lab.client_ns("a"), NATKIT, &args))
    };

    // An error (the peer never comes): the mapping was made, offered, and deleted before exit 1.
    let out = wait_bounded(alone("nobody", "3"), Duration::from_secs(30), "punch alone");
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "{r:#}");
    let pm = &r["port_mapping"];
    assert_eq!(pm["protocol"], "pcp", "{r:#}\n{}", upnp.log());
    assert_eq!(pm["gateway"], "10.1.0.1", "{r:#}");
    let external = pm["external"].as_str().expect("external").to_string();
    assert!(external.starts_with("203.0.113.11:"), "{r:#}");
    let offered = |r: &Value, addr: &str| {
        let (ip, port) = addr.rsplit_once(':').expect("ip:port");
        r["candidates"]
            .as_array()
            .expect("candidates")
            .iter()
            .any(|c| c.as_str().is_some_and(|c| c.contains(&format!(" {ip} {port} typ srflx"))))
    };
    assert!(offered(&r, &external), "the mapping is offered as a srflx candidate: {r:#}");
    assert_eq!(pm["deleted"], true, "{r:#}");
    assert_eq!(upnp.rules(), "", "the mapping outlived an error:\n{}", upnp.log());

    // Ctrl-C while waiting for the peer: deleted before exit 130.
    let child = alone("interrupted", "30");
    let until = Instant::now() + Duration::from_secs(10);
    while upnp.rules().is_empty() {
        assert!(Instant::now() < until, "punch never mapped its port:\n{}", upnp.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = common::bounded::stop_with(child, libc::SIGINT);
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(upnp.rules(), "", "the mapping outlived Ctrl-C:\n{}", upnp.log());

    // The transfer, each way: direct through a's mapping.
    for (from, to) in [("a", "b"), ("b", "a")] {
        let room = format!("mapped-{from}-{to}");
        let (sr, rr) = transfer_servers(&w, from, to, &room, 1024 * 1024, MAPPING_SERVERS);
        let (ra, rb) = if from == "a" { (&sr, &rr) } else { (&rr, &sr) };
        for r in [ra, rb] {
            assert_eq!(r["path"], "direct", "{r:#}");
            assert_eq!(r["mapping_varies"], true, "both NATs are symmetric: {r:#}");
            assert_eq!(r["birthday"], Value::Null, "a mapping needs no birthday method: {r:#}");
        }
        let pm = &ra["port_mapping"];
        assert_eq!(pm["protocol"], "pcp", "{ra:#}");
        assert_eq!(pm["deleted"], true, "{ra:#}");
        assert_eq!(ra["local"]["port_mapped"], true, "b saw a at its mapped address: {ra:#}");
        assert_eq!(rb["remote"]["address"], pm["external"], "{rb:#}");
        assert_eq!(rb["remote"]["type"], "srflx", "{rb:#}");
        assert_eq!(rb["remote"]["port_mapped"], true, "{rb:#}");
        // b's router maps nothing: b tried, and offered no mapping.
        assert_eq!(rb["port_mapping"]["protocol"], Value::Null, "{rb:#}");
        assert_eq!(upnp.rules(), "", "the mapping outlived the session:\n{}", upnp.log());
    }

    // Without the mapping the pair is what it was: relayed.
    let (sr, rr) =
        transfer_servers(&w, "a", "b", "unmapped", 256 * 1024, &[MAPPING_SERVERS, &["--no-port-mapping"]].concat());
    assert_relayed(&sr);
    assert_relayed(&rr);
    assert_eq!(sr["port_mapping"], Value::Null, "{sr:#}");
    assert_eq!(upnp.rules(), "");
}

// ---- One server, one IP (issue #16): the signal server is the second observation point ----

/// Issue #16's seed deployment: one VPS, one IP, default flags: `natkit relay --listen IP:3478`
/// (STUN and TURN), `natkit signal` on the same IP, peers given `--stun IP:3478 --turn IP:3478`.
/// The STUN answers come from one IP only, so punch also asks the signal server's own address,
/// where `natkit signal` answers STUN on the UDP port of its listener: the symmetric side sees its
/// mapping change with the destination port, the port-restricted side sees it kept, and the
/// birthday method makes the pair direct. With `natkit signal --no-stun` the same pair cannot tell
/// (mapping_varies null) and goes through the relay, as before this observation point existed.
#[test]
fn one_server_on_one_ip_with_default_flags_tells_the_symmetric_side_by_the_signal_port() {
    let lab = Lab::builder()
        .public_ips(&["203.0.113.1"])
        .nat("a", NatKind::PortRestrictedCone)
        .nat("b", NatKind::Symmetric)
        .build();
    let public = lab.public_ns();
    let relay = lab.spawn_in(&public, NATKIT, &["relay", "--listen", "203.0.113.1:3478", "--user", "punch:lab-secret"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.udp_listening(&public, "203.0.113.1", 3478) {
        assert!(Instant::now() < deadline, "natkit relay did not listen in the lab within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let signal = SignalServer::start_in(&["ip", "netns", "exec", &public], "203.0.113.1", &[]);
    let w = World { lab, _relay: relay, signal };
    let flags = [
        "--stun",
        "203.0.113.1:3478",
        "--turn",
        "203.0.113.1:3478",
        "--turn-user",
        "punch",
        "--turn-password",
        "lab-secret",
    ];
    let (sr, rr) = transfer_servers(&w, "a", "b", "one-ip", 1024 * 1024, &flags);
    for (r, varies, side) in [(&sr, false, "prober"), (&rr, true, "opener")] {
        assert_eq!(r["mapping_varies"], varies, "{r:#}");
        assert_eq!(r["mapping_evidence"], "one-ip-two-ports", "{r:#}");
        assert_eq!(r["path"], "direct", "{r:#}");
        assert_eq!(r["birthday"]["side"], side, "the birthday method started: {r:#}");
        // The offerer may nominate the pair the opener's probes made before its own prober reports
        // "found" (the session then stops waiting): "running" is a direct path all the same.
        assert_ne!(r["birthday"]["outcome"], "gave-up", "{r:#}");
    }

    let no_stun = SignalServer::start_in(&["ip", "netns", "exec", &w.lab.public_ns()], "203.0.113.1", &["--no-stun"]);
    let (sr, rr) = transfer_via(&w, &no_stun.ws_url(), "a", "b", "one-ip-no-stun", 256 * 1024, &flags);
    for r in [&sr, &rr] {
        assert_eq!(r["mapping_varies"], Value::Null, "{r:#}");
        assert_relayed(r);
    }
}

/// Issue #16's "NATs that forget", on the other side: the QUIC server's router (b, the answerer,
/// who joined first) reboots 9 MiB into a 64 MiB transfer from a. b's consent checks go
/// unanswered, b learns its new address and trickles it; a checks toward it and ICE nominates the
/// new pair while a's path is lost. quinn's client never follows a server to a new address, so a's
/// mux redirects QUIC there; the stream goes on: same SHA-256, exit 0, b reports its mapping
/// changed and a that the peer moved, both into the new port range.
#[test]
fn a_transfer_survives_the_quic_servers_router_forgetting_its_mappings() {
    const LEN: usize = 64 * 1024 * 1024;
    let w = world(NatKind::PortRestrictedCone, NatKind::PortRestrictedCone);
    // 64 MiB at 100 Mbit/s out of a's router: about 5 s, time to forget b's in the middle.
    w.lab.shape_uplink("a", "100mbit");
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src.bin"), dir.path().join("dst.bin"));
    random_file(&src, LEN);
    let url = w.signal.ws_url();
    let common = [
        &["punch", "--signal", url.as_str(), "--room", "server-forgets", "--timeout", "30", "--json"],
        STUN_ARGS,
        TURN_ARGS,
    ]
    .concat();
    let (src_s, dst_s) = (src.to_str().expect("utf-8"), dst.to_str().expect("utf-8"));
    let recv_args = [common.as_slice(), &["--recv", dst_s]].concat();
    let send_args = [common.as_slice(), &["--send", src_s]].concat();
    // b joins first: b answers and is the QUIC server, the side whose NAT forgets.
    let receiver = spawn(w.lab.command_in(&w.lab.client_ns("b"), NATKIT, &recv_args));
    let until = Instant::now() + Duration::from_secs(15);
    while !w.signal.log_text().lines().any(|l| l.contains("joined") && l.contains("server-forgets")) {
        assert!(Instant::now() < until, "b never joined: {}", w.signal.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let sender = spawn(w.lab.command_in(&w.lab.client_ns("a"), NATKIT, &send_args));
    let until = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0) < 9 * 1024 * 1024 {
        assert!(Instant::now() < until, "the transfer never got 9 MiB through");
        std::thread::sleep(Duration::from_millis(20));
    }
    w.lab.router_forgets("b", (20000, 20999));
    let bound = Duration::from_secs(120);
    let (s, r) = (wait_bounded(sender, bound, "the sender"), wait_bounded(receiver, bound, "the receiver"));
    let (sr, rr) = (report(&s), report(&r));
    let err = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(s.status.code(), Some(0), "sender: {sr:#}\n{}", err(&s));
    assert_eq!(r.status.code(), Some(0), "receiver: {rr:#}\n{}", err(&r));
    assert!(std::fs::read(&src).expect("src") == std::fs::read(&dst).expect("dst"), "the file arrived changed");
    assert_eq!(sr["sha256"], rr["sha256"]);
    assert_eq!(sr["bytes"], LEN as u64);
    assert_eq!(rr["role"], "answerer", "{rr:#}");
    assert_eq!(sr["path"], "direct", "{sr:#}");
    let moved_into_range = |c: &Value| {
        let to: std::net::SocketAddr = c["to"].as_str().unwrap_or("").parse().unwrap_or_else(|_| panic!("to: {c}"));
        to.ip().to_string() == "203.0.113.12" && (20000..=20999).contains(&to.port())
    };
    let changes = |r: &Value, why: &str| -> Vec<Value> {
        r["path_changes"].as_array().expect("path_changes").iter().filter(|c| c["why"] == why).cloned().collect()
    };
    let b = changes(&rr, "mapping-changed");
    assert!(b.iter().any(moved_into_range), "b never re-punched from its new address: {rr:#}\n{}", err(&r));
    let a = changes(&sr, "peer-moved");
    assert!(a.iter().any(moved_into_range), "a's QUIC never followed b: {sr:#}\n{}", err(&s));
}

/// Issue #16: when re-punching cannot work, the relay. a's router reboots 9 MiB into a 64 MiB
/// transfer and comes back symmetric: a's new mappings are per destination, and b's
/// port-restricted NAT keeps them out, so the re-punch fails (and a's TURN allocation went with
/// its old mapping). After the fallback time a sends QUIC to b's relayed address; b permits a's IP
/// on its allocation and follows a's QUIC arriving through it. quinn sees none of it (the muxes
/// redirect): same SHA-256, exit 0, both report `relay-fallback`.
#[test]
fn a_transfer_falls_back_to_the_relay_when_re_punching_cannot_work() {
    let w = world(NatKind::PortRestrictedCone, NatKind::PortRestrictedCone);
    let (sr, _) = transfer_through_a_router_that_forgets_and_turns_symmetric(&w, "fallback");
    assert_eq!(sr["birthday"]["outcome"], Value::Null, "an ICE path: {sr:#}");
}

/// The same on a path the birthday method found (a symmetric, so a's winning socket out of 256
/// carries QUIC): no ICE pair was nominated there, so no consent checks watch it; QUIC's own
/// datagrams (keep-alives at least every 2 s) do. Before they did, the path died with the router
/// and the transfer ended at QUIC's idle timeout (`connection lost: timed out`, found by
/// bench-punch repeating the "turns symmetric" row on a router already symmetric).
#[test]
fn a_birthday_path_falls_back_to_the_relay_when_the_router_forgets() {
    let w = world(NatKind::Symmetric, NatKind::PortRestrictedCone);
    let (sr, _) = transfer_through_a_router_that_forgets_and_turns_symmetric(&w, "bdayfallback");
    assert_eq!(sr["birthday"]["outcome"], "found", "the path was not the birthday method's: {sr:#}");
}

/// b receives, a sends 64 MiB; a's router reboots 9 MiB in and comes back symmetric. Asserts the
/// transfer completes through the relay fallback (both sides report it, a sends to b's relayed
/// candidate) and returns both reports (sender, receiver).
fn transfer_through_a_router_that_forgets_and_turns_symmetric(w: &World, room: &str) -> (Value, Value) {
    const LEN: usize = 64 * 1024 * 1024;
    w.lab.shape_uplink("a", "100mbit");
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src.bin"), dir.path().join("dst.bin"));
    random_file(&src, LEN);
    let url = w.signal.ws_url();
    let common =
        [&["punch", "--signal", url.as_str(), "--room", room, "--timeout", "30", "--json"], STUN_ARGS, TURN_ARGS]
            .concat();
    let (src_s, dst_s) = (src.to_str().expect("utf-8"), dst.to_str().expect("utf-8"));
    let recv_args = [common.as_slice(), &["--recv", dst_s]].concat();
    let send_args = [common.as_slice(), &["--send", src_s]].concat();
    let receiver = spawn(w.lab.command_in(&w.lab.client_ns("b"), NATKIT, &recv_args));
    let until = Instant::now() + Duration::from_secs(15);
    while !w.signal.log_text().lines().any(|l| l.contains("joined") && l.contains(room)) {
        assert!(Instant::now() < until, "b never joined: {}", w.signal.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let sender = spawn(w.lab.command_in(&w.lab.client_ns("a"), NATKIT, &send_args));
    let until = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0) < 9 * 1024 * 1024 {
        assert!(Instant::now() < until, "the transfer never got 9 MiB through");
        std::thread::sleep(Duration::from_millis(20));
    }
    w.lab.router_forgets_and_turns_symmetric("a", (20000, 20999));
    let bound = Duration::from_secs(120);
    let (s, r) = (wait_bounded(sender, bound, "the sender"), wait_bounded(receiver, bound, "the receiver"));
    let (sr, rr) = (report(&s), report(&r));
    let err = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(s.status.code(), Some(0), "sender: {sr:#}\n{}", err(&s));
    assert_eq!(r.status.code(), Some(0), "receiver: {rr:#}\n{}", err(&r));
    assert!(std::fs::read(&src).expect("src") == std::fs::read(&dst).expect("dst"), "the file arrived changed");
    assert_eq!(sr["sha256"], rr["sha256"]);
    let fell_back =
        |r: &Value| r["path_changes"].as_array().expect("path_changes").iter().any(|c| c["why"] == "relay-fallback");
    assert!(fell_back(&sr), "a never fell back to the relay: {sr:#}\n{}", err(&s));
    assert!(fell_back(&rr), "b never saw a through its relay: {rr:#}\n{}", err(&r));
    assert_eq!(sr["path"], "relay", "{sr:#}");
    // a sends to b's relayed address, the one b offered.
    let to = sr["path_changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["why"] == "relay-fallback")
        .expect("fallback")["to"]
        .as_str()
        .expect("to")
        .to_string();
    let (ip, port) = to.rsplit_once(':').expect("ip:port");
    assert!(
        rr["candidates"]
            .as_array()
            .expect("candidates")
            .iter()
            .any(|c| c.as_str().is_some_and(|c| c.contains(&format!(" {ip} {port} typ relay")))),
        "a's fallback target {to} is not b's relayed candidate: {rr:#}"
    );
    (sr, rr)
}

// ---- IPv6 beside IPv4 (issue #16): a dual-stack pair whose v4 NATs are both symmetric ----

/// Issue #16's IPv6 case: both v4 NATs symmetric (relay-only over v4), v6 behind stateful
/// firewalls only. Each peer gathers v4 and v6 candidates on its one dual-stack socket (STUN over
/// both families from the same `natkit relay`, TURN offered too); ICE checks both, the v6 host pair
/// opens both firewalls by simultaneous open and wins on priority (RFC 8421), and the file moves
/// direct over IPv6, SHA-256 intact, in both directions (each side gets both ICE roles). The v4
/// observation is not spoiled by the v6 answers: both still report their v4 mapping varies.
#[test]
fn a_dual_stack_pair_with_symmetric_v4_nats_goes_direct_over_firewalled_ipv6() {
    use common::lab::V6Kind;
    let lab = Lab::builder()
        .nat("a", NatKind::Symmetric)
        .v6("a", V6Kind::Firewall)
        .nat("b", NatKind::Symmetric)
        .v6("b", V6Kind::Firewall)
        .build();
    let listen = ["--listen", "203.0.113.1:3478", "--listen", "203.0.113.2:3478", "--listen", "[2001:db8::10]:3478"];
    let ready = [("203.0.113.1", 3478), ("203.0.113.2", 3478), ("[2001:db8::10]", 3478)];
    let w = with_servers(lab, &listen, &ready);
    let v6_stun = ["--stun", "[2001:db8::10]:3478"];
    for (from, to) in [("a", "b"), ("b", "a")] {
        let flags = [STUN_ARGS, &v6_stun, TURN_ARGS].concat();
        let (sr, rr) = transfer_servers(&w, from, to, &format!("v6-{from}-to-{to}"), 1024 * 1024, &flags);
        for (r, me, peer) in [(&sr, from, to), (&rr, to, from)] {
            assert_eq!(r["path"], "direct", "{r:#}");
            assert_eq!(r["mapping_varies"], true, "the v4 NAT is still seen as symmetric: {r:#}");
            for (end, who) in [(&r["local"], me), (&r["remote"], peer)] {
                assert_eq!(end["family"], "ipv6", "{r:#}");
                assert_eq!(end["type"], "host", "a firewalled v6 address is a host candidate: {r:#}");
                let addr: std::net::SocketAddr = end["address"].as_str().expect("address").parse().expect("addr");
                assert_eq!(Some(addr.ip()), w.lab.client_ip6(who).map(std::net::IpAddr::V6), "{r:#}");
            }
            let ours = r["candidates"].as_array().expect("candidates");
            assert!(ours.iter().any(|c| c.as_str().is_some_and(|c| c.contains(" 2001:db8:"))), "{r:#}");
            assert!(ours.iter().any(|c| c.as_str().is_some_and(|c| c.contains(" 203.0.113."))), "v4 too: {r:#}");
        }
    }
}

/// IPv6 on one side only: a offers v6 candidates (and asks the v6 STUN server), b has none. The v6
/// pairs cannot form, the v4 ones work as before: direct over IPv4, `family` says so.
#[test]
fn ipv6_on_one_side_only_leaves_the_ipv4_path() {
    use common::lab::V6Kind;
    let lab = Lab::builder().nat("a", NatKind::FullCone).v6("a", V6Kind::Firewall).nat("b", NatKind::FullCone).build();
    let listen = ["--listen", "203.0.113.1:3478", "--listen", "203.0.113.2:3478", "--listen", "[2001:db8::10]:3478"];
    let ready = [("203.0.113.1", 3478), ("203.0.113.2", 3478), ("[2001:db8::10]", 3478)];
    let w = with_servers(lab, &listen, &ready);
    let flags = [STUN_ARGS, &["--stun", "[2001:db8::10]:3478"], TURN_ARGS].concat();
    let (sr, rr) = transfer_servers(&w, "a", "b", "v6-one-side", 256 * 1024, &flags);
    for r in [&sr, &rr] {
        assert_direct_between_public_addresses(r);
        assert_eq!(r["local"]["family"], "ipv4", "{r:#}");
        assert_eq!(r["remote"]["family"], "ipv4", "{r:#}");
    }
    let a_offers_v6 = sr["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .any(|c| c.as_str().is_some_and(|c| c.contains(" 2001:db8:")));
    assert!(a_offers_v6, "{sr:#}");
}
