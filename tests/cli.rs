//! What every command shares as a command-line tool: exit codes (0, 1, 2,
//! 130), Ctrl-C, and tables that fit the terminal. The table is in README's
//! "Exit codes" section.

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::bounded::BlackholeDnsNs;
use common::signal::SignalServer;

const NATKIT: &str = env!("CARGO_BIN_EXE_natkit");

/// Starts natkit, sends SIGINT once it has run `after`, and returns its output (killed after 10 s more).
fn interrupted(args: &[&str], after: Duration) -> Output {
    let child: Child =
        Command::new(NATKIT).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn natkit");
    std::thread::sleep(after);
    common::bounded::stop_with(child, libc::SIGINT)
}

#[test]
fn ctrl_c_ends_every_client_command_with_130_and_nothing_on_stdout() {
    // A UDP server that never answers: each command would wait its whole timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    for args in [
        vec!["stun-probe", addr.as_str(), "--timeout", "60"],
        vec!["turn-alloc", addr.as_str(), "--timeout", "60"],
        vec!["nat-type", "--server", addr.as_str(), "--timeout", "60"],
    ] {
        let out = interrupted(&args, Duration::from_millis(800));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{args:?}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed a half-filled report: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.contains("interrupted"), "{args:?}: {err}");
    }
}

#[test]
fn ctrl_c_while_call_waits_for_its_peer_is_130_and_says_interrupted() {
    let server = SignalServer::start(&[]);
    let url = server.ws_url();
    let out = interrupted(
        &["call", "--signal", &url, "--room", "lonely", "--bind", "127.0.0.1:0", "--wait", "60", "--json"],
        Duration::from_millis(1500),
    );
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let r = common::json_of(&out);
    assert_eq!(r["outcome"], "interrupted", "{r:#}");
}

#[test]
fn bad_input_is_2_before_any_network_for_every_client() {
    let ns = BlackholeDnsNs::create("cli");
    for args in [
        vec!["stun-probe", "127.0.0.1:3478", "--local", "192.0.2.77"],
        vec!["nat-type", "--server", "127.0.0.1:3478", "--local", "192.0.2.77"],
        vec!["stun-probe", "v6only.test", "-4"],
        vec!["turn-alloc", "v6only.test", "-4"],
        vec!["stun-probe", "127.0.0.1:3478", "--timeout", "0"],
    ] {
        let out = common::bounded::output_within(ns.command(NATKIT, &args), Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{args:?} still running after 20 s"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed a report: {}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(err.lines().count(), 1, "{args:?}: one line says what to try: {err}");
    }
    let out = common::bounded::output_within(
        ns.command(NATKIT, &["stun-probe", "127.0.0.1:3478", "--timeout", "0"]),
        Duration::from_secs(20),
    )
    .expect("bounded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("above 0"), "{err}");
}

#[test]
fn tables_fit_80_columns_without_splitting_an_address() {
    let relay = common::relay::Relay::start(&[]);
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead = silent.local_addr().expect("addr").to_string();
    let out = Command::new(NATKIT)
        .args(["stun-probe", &relay.addr(), &dead, "--timeout", "1", "--transport", "all", "--count", "2"])
        .env("COLUMNS", "80")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.trim().is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "line of {} columns:\n{line}\nin\n{text}", line.chars().count());
    }
    for a in [relay.addr(), dead] {
        assert!(text.lines().any(|l| l.contains(&a)), "{a} split or missing:\n{text}");
    }
}

/// Starts `natkit signal` with `listen` and reports whether 127.0.0.1:`port` accepted within 10 s.
fn signal_listens(listen: &str, port: u16) -> bool {
    let mut child = Command::new(NATKIT)
        .args(["signal", "--listen", listen, "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn natkit signal");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut up = false;
    while Instant::now() < deadline && !up {
        up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    up
}

#[test]
fn signal_listen_takes_a_bare_port_and_a_host_name() {
    let port = common::free_port();
    assert!(signal_listens(&port.to_string(), port), "--listen {port}");
    let port = common::free_port();
    assert!(signal_listens(&format!("localhost:{port}"), port), "--listen localhost:{port}");
    let out = Command::new(NATKIT).args(["signal", "--listen", "8080:x"]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("localhost:8080"), "the error shows the forms with examples: {err}");
}

/// Two peers behind two NATs of the lab, with `natkit relay` (STUN on both public IPs) and
/// `natkit signal` on the public segment, as in tests/punch.rs.
struct PunchLab {
    lab: common::lab::Lab,
    _relay: common::lab::LabChild,
    signal: SignalServer,
}

impl PunchLab {
    fn start(a: common::lab::NatKind, b: common::lab::NatKind) -> PunchLab {
        let lab = common::lab::Lab::builder().nat("a", a).nat("b", b).build();
        let public = lab.public_ns();
        let relay =
            lab.spawn_in(&public, NATKIT, &["relay", "--listen", "203.0.113.1:3478", "--listen", "203.0.113.2:3478"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !["203.0.113.1", "203.0.113.2"].iter().all(|ip| lab.udp_listening(&public, ip, 3478)) {
            assert!(Instant::now() < deadline, "natkit relay did not listen in the lab within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let signal = SignalServer::start_in(&["ip", "netns", "exec", &public], "203.0.113.1", &[]);
        PunchLab { lab, _relay: relay, signal }
    }

    /// `natkit punch` (connect only) in peer `name`'s namespace with `extra` flags and `COLUMNS=80`.
    fn punch(&self, name: &str, room: &str, extra: &[&str]) -> Child {
        let url = self.signal.ws_url();
        let args = [
            &["punch", "--signal", url.as_str(), "--room", room, "--timeout", "30"][..],
            &["--stun", "203.0.113.1:3478", "--stun", "203.0.113.2:3478"],
            extra,
        ]
        .concat();
        let mut c = self.lab.command_in(&self.lab.client_ns(name), NATKIT, &args);
        c.env("COLUMNS", "80").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().expect("spawn natkit punch")
    }
}

/// Lines longer than 80 columns in `text` (none allowed).
fn too_wide(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.chars().count() > 80).collect()
}

#[test]
fn punch_table_lists_the_pair_in_use_first_with_types_and_method_in_80_columns() {
    use common::lab::NatKind;
    let w = PunchLab::start(NatKind::FullCone, NatKind::PortRestrictedCone);
    let json_peer = w.punch("a", "table", &["--json"]);
    let table_peer = w.punch("b", "table", &[]);
    let (j, t) = (json_peer.wait_with_output().expect("a"), table_peer.wait_with_output().expect("b"));
    assert_eq!(j.status.code(), Some(0), "{}", String::from_utf8_lossy(&j.stderr));
    assert_eq!(t.status.code(), Some(0), "{}", String::from_utf8_lossy(&t.stderr));
    let r = common::json_of(&j);
    let text = String::from_utf8_lossy(&t.stdout);
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with('│')).collect();
    assert!(rows.len() >= 2, "a header and the pair in use: {text}");
    // The first row is a pair of candidates with their types: the table peer's own (the JSON
    // peer's remote candidates) and one of the JSON peer's, as "address type".
    let typed = |list: &str| -> Vec<String> {
        r[list]
            .as_array()
            .expect("candidate list")
            .iter()
            .filter_map(|c| c.as_str())
            .filter_map(|c| {
                let f: Vec<&str> = c.split_whitespace().collect();
                Some(format!("{}:{} {}", f.get(4)?, f.get(5)?, f.get(7)?))
            })
            .collect()
    };
    let (ours, theirs) = (typed("remote_candidates"), typed("candidates"));
    assert!(ours.iter().any(|c| rows[1].contains(c.as_str())), "no local candidate of {ours:?} first:\n{text}");
    // The peer's end may have been learnt from its checks first (prflx): its address, then a type.
    let typed_after = |a: &str| ["host", "srflx", "prflx"].iter().any(|k| rows[1].contains(&format!("{a} {k}")));
    let addr = |c: &String| c.split(' ').next().unwrap_or_default().to_string();
    assert!(theirs.iter().map(addr).any(|a| typed_after(&a)), "no remote candidate of {theirs:?} first:\n{text}");
    assert!(rows[1].contains("in use (ICE)"), "{text}");
    assert!(!text.contains("noresponse"), "{text}");
    assert!(text.contains("found by ICE checks"), "{text}");
    assert!(too_wide(&text).is_empty(), "lines over 80 columns: {:?}\n{text}", too_wide(&text));
}

/// Runs natkit with `COLUMNS=80` (killed after 60 s) and returns its stdout.
fn at_80_columns(args: &[&str]) -> String {
    let mut cmd = Command::new(NATKIT);
    cmd.args(args).env("COLUMNS", "80");
    let out = common::bounded::output_within(cmd, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{args:?} still running after 60 s"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.trim().is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    text
}

fn assert_fits_80(what: &str, text: &str, addresses: &[String]) {
    assert!(too_wide(text).is_empty(), "{what}: lines over 80 columns: {:?}\n{text}", too_wide(text));
    for a in addresses {
        assert!(text.lines().any(|l| l.contains(a.as_str())), "{what}: {a} split or missing:\n{text}");
    }
}

#[test]
fn nat_type_turn_alloc_and_call_tables_fit_80_columns_and_wide_shows_more() {
    let relay = common::relay::Relay::start(&[
        "--alt-ip",
        "127.0.0.2",
        "--realm",
        "r",
        "--user",
        "a:b",
        "--allow-loopback-peers",
    ]);
    let addr = relay.addr();
    let text = at_80_columns(&["nat-type", "--server", &addr, "--timeout", "2"]);
    assert_fits_80("nat-type", &text, std::slice::from_ref(&addr));
    assert!(!text.contains("change-request"), "the compact test table leaves the flags to --wide:\n{text}");
    let wide = at_80_columns(&["--wide", "nat-type", "--server", &addr, "--timeout", "2"]);
    assert!(wide.contains("change-request"), "{wide}");

    let text = at_80_columns(&["turn-alloc", &addr, "-u", "a", "-p", "b", "--realm", "r", "--packets", "10"]);
    assert_fits_80("turn-alloc", &text, std::slice::from_ref(&addr));

    let server = SignalServer::start(&[]);
    let url = server.ws_url();
    let call = ["call", "--signal", url.as_str(), "--room", "fit", "--bind", "127.0.0.1:0", "--duration", "2"];
    let other = Command::new(NATKIT)
        .args(call)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn natkit call");
    let text = at_80_columns(&call);
    let other = other.wait_with_output().expect("other call");
    let theirs = common::json_of(&other);
    let their_addr = theirs["path"]["local"]["address"].as_str().unwrap_or("-").to_string();
    assert_fits_80("call", &text, &[their_addr]);
    assert!(text.contains("frames") && !text.contains("jitter"), "compact call table:\n{text}");
}
