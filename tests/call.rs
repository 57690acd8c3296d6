//! `natkit call` end to end with real components: two `natkit call` peers through a real
//! `natkit signal` on loopback, and headless Chromium on the page `natkit signal` serves, in a
//! network namespace with only loopback, with natkit as offerer and as answerer.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::browser::{Browser, LoopbackNs};
use common::coturn::{Coturn, CoturnConfig};
use common::lab::{Lab, NatKind};
use common::signal::SignalServer;
use serde_json::Value;

const NATKIT: &str = env!("CARGO_BIN_EXE_natkit");

fn call_args<'a>(server: &'a str, room: &'a str, duration: &'a str) -> Vec<&'a str> {
    vec![
        "call",
        "--signal",
        server,
        "--room",
        room,
        "--bind",
        "127.0.0.1:0",
        "--duration",
        duration,
        "--wait",
        "20",
        "--json",
    ]
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting natkit call")
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "natkit call printed no JSON report ({e}); exit {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or_else(|| panic!("{path} missing in {v:#}"))
}

/// The report of a call that connected and received decodable video and audio (any path).
fn assert_media_flowed_on_any_path(r: &Value, out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}; report {r:#}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in ["video", "audio"] {
        assert!(u(r, &format!("/received/{kind}/frames")) > 0, "no {kind} frames received: {r:#}");
        assert_eq!(u(r, &format!("/received/{kind}/decode_errors")), 0, "{r:#}");
    }
}

/// The report of a call that connected over host candidates and received decodable video and audio.
fn assert_media_flowed(r: &Value, out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}; report {r:#}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(r["outcome"], "failed", "{r:#}");
    assert!(r["connect_ms"].as_f64().is_some(), "{r:#}");
    assert_eq!(r["path"]["local"]["type"], "host", "{r:#}");
    for kind in ["video", "audio"] {
        assert!(u(r, &format!("/received/{kind}/frames")) > 0, "no {kind} frames received: {r:#}");
        assert!(u(r, &format!("/received/{kind}/packets")) > 0, "no {kind} packets received: {r:#}");
        assert_eq!(u(r, &format!("/received/{kind}/decode_errors")), 0, "{r:#}");
        assert!(u(r, &format!("/sent/{kind}/frames")) > 0, "no {kind} frames sent: {r:#}");
    }
    assert_eq!(r["received"]["video"]["codec"], "VP8");
    assert_eq!(r["received"]["audio"]["codec"], "OPUS");
}

#[test]
fn two_natkit_calls_exchange_video_and_audio_both_ways_through_natkit_signal() {
    let server = SignalServer::start(&[]);
    let url = server.ws_url();
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    let mut a = Command::new(NATKIT);
    a.args(call_args(&url, "pair", "3"));
    let a = spawn(a);
    let mut b = Command::new(NATKIT);
    b.args(call_args(&url, "pair", "3")).arg("--record").arg(&rec);
    let b = spawn(b);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (ra, rb) = (report(&a), report(&b));
    assert_media_flowed(&ra, &a);
    assert_media_flowed(&rb, &b);
    let mut roles = [ra["role"].as_str().unwrap_or("-"), rb["role"].as_str().unwrap_or("-")];
    roles.sort();
    assert_eq!(roles, ["answerer", "offerer"]);
    assert_eq!(ra["id"], rb["peer"]);
    // The recording plays: an IVF with VP8 frames and an Ogg/Opus file.
    let ivf = std::fs::read(rec.join("video.ivf")).unwrap();
    assert_eq!(&ivf[..4], b"DKIF");
    assert_eq!(&ivf[8..12], b"VP80");
    assert!(u32::from_le_bytes([ivf[24], ivf[25], ivf[26], ivf[27]]) > 0, "no frames in video.ivf");
    let ogg = std::fs::read(rec.join("audio.ogg")).unwrap();
    assert_eq!(&ogg[..4], b"OggS");
    assert!(ogg.windows(8).any(|w| w == b"OpusHead"));
}

#[test]
fn relay_only_calls_flow_through_coturn_with_rest_credentials_from_flags_or_from_signal() {
    let turn = Coturn::start(CoturnConfig {
        args: ["--use-auth-secret", "--static-auth-secret=s3cret", "--realm=natkit", "--allow-loopback-peers"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let turn_addr = turn.addr();
    // The signaling server hands out TURN REST credentials, as it does to the page.
    let turn_uri = format!("turn:{turn_addr}");
    let server = SignalServer::start(&["--turn", &turn_uri, "--turn-secret", "s3cret"]);
    let url = server.ws_url();
    // One peer is told the TURN server and secret; the other takes the server's ice_servers.
    let mut a = Command::new(NATKIT);
    a.args(call_args(&url, "relayed", "3")).args(["--turn", &turn_addr, "--turn-secret", "s3cret", "--relay-only"]);
    let a = spawn(a);
    let mut b = Command::new(NATKIT);
    b.args(call_args(&url, "relayed", "3")).arg("--relay-only");
    let b = spawn(b);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for (out, r) in [(&a, report(&a)), (&b, report(&b))] {
        assert!(out.status.success(), "{r:#}");
        assert_eq!(r["path"]["local"]["type"], "relay", "{r:#}");
        assert_eq!(r["path"]["local"]["address"].as_str().unwrap().split(':').next(), Some("127.0.0.1"));
        assert_ne!(
            r["path"]["local"]["address"].as_str().unwrap(),
            turn_addr,
            "the relayed address is not the server's"
        );
        for kind in ["video", "audio"] {
            assert!(u(&r, &format!("/received/{kind}/frames")) > 0, "no {kind} over the relay: {r:#}");
        }
    }
}

#[test]
fn relay_only_with_a_wrong_secret_fails_with_the_turn_error() {
    let turn = Coturn::start(CoturnConfig {
        args: ["--use-auth-secret", "--static-auth-secret=s3cret", "--realm=natkit"].map(String::from).to_vec(),
        ..Default::default()
    });
    let server = SignalServer::start(&[]);
    let url = server.ws_url();
    let mut args = call_args(&url, "wrong", "2");
    let turn_addr = turn.addr();
    args.extend(["--turn", turn_addr.as_str(), "--turn-secret", "not-it", "--relay-only"]);
    let out = Command::new(NATKIT).args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r = report(&out);
    let err = r["error"].as_str().unwrap();
    assert!(err.contains("Allocate failed") && err.contains("401"), "{r:#}");
}

#[test]
fn two_calls_behind_port_restricted_and_full_cone_nats_connect_over_stun_candidates() {
    let lab = Lab::builder().nat("pr", NatKind::PortRestrictedCone).nat("fc", NatKind::FullCone).build();
    let public = lab.public_ns();
    let _stun = Coturn::start(CoturnConfig {
        listen_ip: Some("203.0.113.1".into()),
        netns: Some(public.clone()),
        ..Default::default()
    });
    let server = SignalServer::start_in(&["ip", "netns", "exec", &public], "203.0.113.1", &[]);
    let url = server.ws_url();
    let args = [
        "call",
        "--signal",
        &url,
        "--room",
        "lab",
        "--stun",
        "203.0.113.1:3478",
        "--duration",
        "3",
        "--wait",
        "20",
        "--json",
    ];
    let a = spawn(lab.command_in(&lab.client_ns("pr"), NATKIT, &args));
    let b = spawn(lab.command_in(&lab.client_ns("fc"), NATKIT, &args));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for (out, r) in [(&a, report(&a)), (&b, report(&b))] {
        assert_media_flowed_on_any_path(&r, out);
        // Behind NATs the host addresses (10.x) cannot reach each other: the pair is
        // server- or peer-reflexive on the far side.
        let remote = r["path"]["remote"]["type"].as_str().unwrap_or("-");
        assert!(remote == "srflx" || remote == "prflx", "remote candidate type {remote}: {r:#}");
        assert!(r["path"]["remote"]["address"].as_str().unwrap().starts_with("203.0.113."), "{r:#}");
    }
}

/// A 2-second VP8 IVF made with natkit's own encoder (keyframe first, 25 fps).
fn write_test_ivf(path: &std::path::Path) {
    use natkit::media::ivf::{IvfHeader, IvfWriter};
    use natkit::media::pattern::TestPattern;
    use natkit::media::vp8::{EncoderConfig, Vp8Encoder};
    let cfg = EncoderConfig { width: 320, height: 240, fps: 25, bitrate_kbps: 300, keyframe_interval: 25 };
    let mut enc = Vp8Encoder::new(cfg).unwrap();
    let pattern = TestPattern::new(320, 240);
    let header = IvfHeader { fourcc: *b"VP80", width: 320, height: 240, rate: 25, scale: 1, frames: 0 };
    let mut w = IvfWriter::new(std::fs::File::create(path).unwrap(), header).unwrap();
    for i in 0..50 {
        for f in enc.encode(i, &pattern.draw(i as u64, "00:00:00.000"), false).unwrap() {
            w.write_frame(f.pts as u64, &f.data).unwrap();
        }
    }
    w.finish().unwrap();
}

#[test]
fn an_ivf_file_is_sent_looped_to_a_receive_only_peer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clip.ivf");
    write_test_ivf(&file);
    let server = SignalServer::start(&[]);
    let url = server.ws_url();
    let mut a = Command::new(NATKIT);
    a.args(call_args(&url, "file", "3")).arg("--send").arg(&file);
    let a = spawn(a);
    let mut b = Command::new(NATKIT);
    b.args(call_args(&url, "file", "3")).args(["--send", "none"]);
    let b = spawn(b);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (ra, rb) = (report(&a), report(&b));
    assert!(a.status.success() && b.status.success(), "{ra:#}\n{rb:#}");
    // 3 s at 25 fps loops the 2 s file: more than its 50 frames go out, and they decode.
    assert!(u(&ra, "/sent/video/frames") > 50, "{ra:#}");
    assert!(u(&rb, "/received/video/frames") > 50, "{rb:#}");
    assert_eq!(u(&rb, "/received/video/decode_errors"), 0, "{rb:#}");
    // The receive-only side sends nothing.
    assert_eq!(u(&rb, "/sent/video/frames"), 0, "{rb:#}");
    assert_eq!(u(&ra, "/received/video/frames"), 0, "{ra:#}");
}

#[test]
fn sigint_hangs_up_cleanly_and_the_peer_sees_it_leave() {
    let server = SignalServer::start(&[]);
    let url = server.ws_url();
    let args = ["call", "--signal", &url, "--room", "hangup", "--bind", "127.0.0.1:0", "--wait", "20", "--json"];
    let a = spawn({
        let mut c = Command::new(NATKIT);
        c.args(args);
        c
    });
    let b = spawn({
        let mut c = Command::new(NATKIT);
        c.args(args);
        c
    });
    // No --duration: both would run forever. Let media flow, then Ctrl-C one of them.
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: signalling a child we started, by its pid.
    assert_eq!(unsafe { libc::kill(a.id() as i32, libc::SIGINT) }, 0);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (ra, rb) = (report(&a), report(&b));
    assert!(a.status.success(), "{ra:#}");
    assert_eq!(ra["outcome"], "hung_up", "{ra:#}");
    assert!(u(&ra, "/received/video/frames") > 0, "{ra:#}");
    // The other side learns it from `exit` (leave) or the DTLS close, and ends normally.
    assert!(b.status.success(), "{rb:#}");
    assert_eq!(rb["outcome"], "peer_left", "{rb:#}");
}

#[test]
fn alone_in_the_room_fails_with_no_peer_and_exit_1_with_the_report() {
    let server = SignalServer::start(&[]);
    let out = Command::new(NATKIT)
        .args([
            "call",
            "--signal",
            &server.ws_url(),
            "--room",
            "empty",
            "--bind",
            "127.0.0.1:0",
            "--wait",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = report(&out);
    assert_eq!(r["outcome"], "failed");
    assert!(r["error"].as_str().unwrap().contains("no peer in room empty"), "{r:#}");
    assert!(r["id"].is_string(), "the report so far has our id: {r:#}");
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        vec!["call", "--signal", "ftp://x", "--room", "r"],
        vec!["call", "--signal", "ws://127.0.0.1:9", "--room", ""],
        vec!["call", "--signal", "ws://127.0.0.1:9", "--room", "r", "--send", "/nonexistent/x.ivf"],
        vec!["call", "--signal", "ws://127.0.0.1:9", "--room", "r", "--size", "641x360"],
        vec!["call", "--signal", "ws://127.0.0.1:9", "--room", "r", "--send", "movie.mp4"],
    ] {
        let out = Command::new(NATKIT).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Which side joins the room first; the second one offers (like the page).
#[derive(Clone, Copy, PartialEq)]
enum First {
    Natkit,
    Browser,
}

const VIDEO_PLAYING: &str = "const v = document.querySelector('#remoteDiv video'); \
    return !!v && v.videoWidth > 0 && v.getVideoPlaybackQuality().totalVideoFrames > 10;";
const FRAMES: &str = "const v = document.querySelector('#remoteDiv video'); \
    return v ? v.getVideoPlaybackQuality().totalVideoFrames : -1;";

/// The page's RTCPeerConnection restricted to relay candidates (`iceTransportPolicy: "relay"`).
const PAGE_RELAY_ONLY: &str = "const P = window.RTCPeerConnection; \
    window.RTCPeerConnection = function (cfg) { return new P(Object.assign({}, cfg, { iceTransportPolicy: 'relay' })); }; \
    window.RTCPeerConnection.prototype = P.prototype; return true;";

/// Candidate types of the page's selected pair, e.g. `["relay", "relay"]`.
const PAGE_PAIR_TYPES: &str = "return (async () => { \
    const p = [...state.peers.values()][0]; if (!p) return null; \
    const stats = await p.pc.getStats(); let pair = null; \
    stats.forEach(r => { if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId); }); \
    if (!pair) return null; \
    return [stats.get(pair.localCandidateId).candidateType, stats.get(pair.remoteCandidateId).candidateType]; })();";

/// With `relay`, both sides use only TURN relayed candidates: coturn in the namespace, its
/// address and per-client REST credentials handed out by `natkit signal --turn --turn-secret`,
/// natkit with `--relay-only`, the page with `iceTransportPolicy: "relay"`.
fn browser_and_natkit_call(first: First, relay: bool) {
    let ns = LoopbackNs::new("cl");
    let turn = relay.then(|| {
        Coturn::start(CoturnConfig {
            args: ["--use-auth-secret", "--static-auth-secret=s3cret", "--realm=natkit", "--allow-loopback-peers"]
                .map(String::from)
                .to_vec(),
            netns: Some(ns.name.clone()),
            ..Default::default()
        })
    });
    let turn_uri = turn.as_ref().map(|t| format!("turn:{}", t.addr())).unwrap_or_default();
    let signal_args: Vec<&str> = if relay { vec!["--turn", &turn_uri, "--turn-secret", "s3cret"] } else { Vec::new() };
    let server = SignalServer::start_in(&ns.prefix(), "127.0.0.1", &signal_args);
    let room = "browser";
    let url = server.ws_url();
    let start_call = || {
        let mut c = ns.command(NATKIT);
        c.args(call_args(&url, room, "6"));
        if relay {
            c.arg("--relay-only");
        }
        spawn(c)
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_current_thread();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let browser = Browser::Chromium.start(&ns).await;
                browser.client.goto(&server.http_url()).await.expect("opening the page");
                if relay {
                    browser.eval(PAGE_RELAY_ONLY).await;
                }
                let mut call = None;
                if first == First::Natkit {
                    call = Some(start_call());
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !server.log_text().lines().any(|l| l.contains("joined") && l.contains(room)) {
                        assert!(Instant::now() < deadline, "natkit call never joined:\n{}", server.log_text());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                browser
                    .eval(&format!("document.getElementById('room').value = '{room}'; document.getElementById('connect').click(); return true;"))
                    .await;
                if first == First::Browser {
                    let waiting = "return document.getElementById('status').textContent.includes('waiting for others');";
                    assert!(browser.wait_for(waiting, Duration::from_secs(10)).await, "the page never joined");
                    call = Some(start_call());
                }
                let call = call.unwrap();
                let playing = browser.wait_for(VIDEO_PLAYING, Duration::from_secs(15)).await;
                let frames_a = browser.eval(FRAMES).await.as_i64().unwrap_or(-1);
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let frames_b = browser.eval(FRAMES).await.as_i64().unwrap_or(-1);
                let size = browser.eval("const v = document.querySelector('#remoteDiv video'); return v ? [v.videoWidth, v.videoHeight] : null;").await;
                let page_pair = browser.eval(PAGE_PAIR_TYPES).await;
                let out = tokio::task::spawn_blocking(move || call.wait_with_output().unwrap()).await.unwrap();
                let r = report(&out);
                assert!(playing, "the page never played natkit's video; natkit report: {r:#}");
                assert_eq!(size, serde_json::json!([640, 360]));
                assert!(frames_b > frames_a, "frames decoded did not increase: {frames_a} then {frames_b}");
                if relay {
                    assert_media_flowed_on_any_path(&r, &out);
                    assert_eq!(r["path"]["local"]["type"], "relay", "{r:#}");
                    assert_eq!(r["path"]["remote"]["type"], "relay", "{r:#}");
                    assert_eq!(page_pair, serde_json::json!(["relay", "relay"]), "the page's selected pair");
                } else {
                    assert_media_flowed(&r, &out);
                }
                let role = if first == First::Natkit { "answerer" } else { "offerer" };
                assert_eq!(r["role"], role, "{r:#}");
                assert_eq!(r["outcome"], "completed", "{r:#}");
                // natkit hung up with `leave`: the page removed our video.
                let removed = "return document.querySelectorAll('#remoteDiv video').length === 0;";
                assert!(browser.wait_for(removed, Duration::from_secs(5)).await, "the page kept natkit's video after hang-up");
                browser.close().await;
            });
        });
    });
}

#[test]
fn browser_plays_natkit_video_and_natkit_receives_the_browsers_with_natkit_offering() {
    browser_and_natkit_call(First::Browser, false);
}

#[test]
fn browser_plays_natkit_video_and_natkit_receives_the_browsers_with_natkit_answering() {
    browser_and_natkit_call(First::Natkit, false);
}

#[test]
fn browser_and_natkit_both_relay_only_exchange_media_over_turn() {
    browser_and_natkit_call(First::Browser, true);
}

#[test]
fn a_signal_url_that_never_answers_the_websocket_handshake_ends_within_the_connect_timeout() {
    let silent = common::bounded::SilentListener::start();
    let url = format!("ws://{}", silent.addr);
    let mut cmd = Command::new(NATKIT);
    cmd.args(["call", "--signal", &url, "--room", "b1", "--bind", "127.0.0.1:0"]);
    cmd.args(["--wait", "3", "--connect-timeout", "3", "--json"]);
    let out = common::bounded::output_within(cmd, Duration::from_secs(30))
        .expect("call --connect-timeout 3 was still running after 30 s against a silent WebSocket listener");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r = report(&out);
    assert!(r["error"].as_str().unwrap_or_default().contains("opening the WebSocket"), "{r:#}");
}

#[test]
fn no_working_pair_on_loopback_says_what_is_missing_and_does_not_blame_a_nat() {
    // Only loopback, and every UDP datagram dropped on input: ICE checks never arrive, the
    // signaling (TCP) works. No STUN or TURN server anywhere.
    let ns = LoopbackNs::new("cd");
    let nft = "add table inet t; add chain inet t input { type filter hook input priority 0; }; \
               add rule inet t input meta l4proto udp drop";
    common::tools::require("nft", "nftables");
    let st = Command::new("ip").args(["netns", "exec", &ns.name, "nft", nft]).status().expect("nft");
    assert!(st.success(), "nft in {}", ns.name);
    let server = SignalServer::start_in(&ns.prefix(), "127.0.0.1", &[]);
    let url = server.ws_url();
    // `a` gives up first (the other then sees it leave) and says why.
    let mut a = ns.command(NATKIT);
    a.args(call_args(&url, "nopair", "3")).args(["--connect-timeout", "3"]);
    let a = spawn(a);
    let mut b = ns.command(NATKIT);
    b.args(call_args(&url, "nopair", "3")).args(["--connect-timeout", "15"]);
    let b = spawn(b);
    let (a, b) = (a.wait_with_output().expect("a"), b.wait_with_output().expect("b"));
    assert_eq!(b.status.code(), Some(1), "{}", String::from_utf8_lossy(&b.stderr));
    {
        let out = a;
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        let r = report(&out);
        let e = r["error"].as_str().unwrap_or_default();
        assert!(e.contains("no candidate pair worked"), "{r:#}");
        assert!(e.contains("our candidates: host 1; the peer's: host 1"), "{r:#}");
        assert!(e.contains("no STUN or TURN server was given"), "{r:#}");
        assert!(!e.contains("symmetric"), "nothing here says a NAT is symmetric: {e}");
    }
}
