//! What an operator deploys and scrapes (issue 20): the systemd units in
//! `deploy/` pass `systemd-analyze verify` and keep a low exposure score, and
//! every `/metrics` page natkit serves is valid Prometheus text (`promtool
//! check metrics`) with no label whose values grow with users or peers.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use common::relay::Relay;
use common::signal::{SignalServer, rt};

const UNITS: [&str; 2] = ["natkit-relay.service", "natkit-signal.service"];

/// A copy of `unit` whose ExecStart names the binary under test (verify checks it exists).
fn unit_for_test(unit: &str, dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(unit))
        .unwrap_or_else(|e| panic!("deploy/{unit}: {e}"));
    assert!(text.contains("/usr/local/bin/natkit "), "deploy/{unit} runs /usr/local/bin/natkit");
    let path = dir.join(unit);
    std::fs::write(&path, text.replace("/usr/local/bin/natkit ", &format!("{} ", env!("CARGO_BIN_EXE_natkit"))))
        .expect("writing the unit copy");
    path
}

/// A MANPATH holding the generated pages, so `Documentation=man:…` resolves.
fn man_path(dir: &Path) -> std::path::PathBuf {
    let man1 = dir.join("man").join("man1");
    std::fs::create_dir_all(&man1).expect("man1");
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("man")).expect("man/") {
        let entry = entry.expect("man entry");
        std::fs::copy(entry.path(), man1.join(entry.file_name())).expect("copying a man page");
    }
    dir.join("man")
}

#[test]
fn the_service_units_verify_and_are_hardened() {
    let analyze = common::tools::require("systemd-analyze", "systemd");
    common::tools::require("man", "man-db");
    let dir = tempfile::tempdir().expect("tempdir");
    let manpath = man_path(dir.path());
    for unit in UNITS {
        let path = unit_for_test(unit, dir.path());
        let out = Command::new(&analyze).arg("verify").arg(&path).env("MANPATH", &manpath).output().expect("verify");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify {unit}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&path).expect("unit");
        for needed in [
            "DynamicUser=yes",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
            "LimitNOFILE=",
            "/etc/natkit/",
            "NoNewPrivileges=yes",
        ] {
            assert!(text.contains(needed), "{unit} lacks {needed:?}");
        }
        // systemd's own score: 0 (locked down) .. 10 (exposed); "OK" is below 4.
        let out = Command::new(&analyze)
            .args(["security", "--offline=yes"])
            .arg(&path)
            .output()
            .expect("systemd-analyze security");
        let report = String::from_utf8_lossy(&out.stdout);
        let score: f64 = report
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{report}{}", String::from_utf8_lossy(&out.stderr)));
        assert!(score <= 2.5, "{unit}: exposure {score} (want <= 2.5)\n{report}");
    }
}

fn get_metrics(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    // One write: the relay's metrics listener answers after its first read.
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).expect("GET");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("reading /metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "GET /metrics: {text}");
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).expect("a body")
}

/// Every label value on every sample line of `text`.
fn label_values(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map(|(labels, _)| labels))
        .flat_map(|labels| {
            labels.split(',').filter_map(|kv| kv.split_once('=')).map(|(_, v)| v.trim_matches('"').to_string())
        })
        .collect()
}

#[test]
fn relay_metrics_pass_promtool_and_name_no_user_or_peer() {
    let maddr = format!("127.0.0.1:{}", common::free_port());
    let relay = Relay::start(&["--realm", "lab", "--user", "alice:secret", "--metrics", &maddr]);
    // A whole audit: allocations over UDP and TCP, permissions, channels, relayed data, refusals.
    for transport in ["udp", "tcp"] {
        let out = common::natkit(&[
            "turn-alloc",
            &relay.addr(),
            "--transport",
            transport,
            "-u",
            "alice",
            "-p",
            "secret",
            "--realm",
            "lab",
            "--packets",
            "10",
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(0), "turn-alloc over {transport}: {}", String::from_utf8_lossy(&out.stdout));
    }
    let text = get_metrics(&maddr);
    common::promtool::accepts("natkit relay", &text);
    for value in label_values(&text) {
        assert!(
            !value.contains("alice") && !value.contains("127.0.0.1") && !value.chars().any(|c| c == ':'),
            "a label names a user or an address ({value}): labels must be a fixed set\n{text}"
        );
    }
    assert!(text.contains("natkit_relay_allocations{transport=\"udp\"}"), "allocation gauge by transport:\n{text}");
}

#[test]
fn signal_metrics_pass_promtool_and_name_no_room_or_peer() {
    let maddr = format!("127.0.0.1:{}", common::free_port());
    let server = SignalServer::start(&["--metrics", &maddr]);
    rt().block_on(async {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut a, _) = tokio_tungstenite::connect_async(server.ws_url()).await.expect("a");
        let (mut b, _) = tokio_tungstenite::connect_async(server.ws_url()).await.expect("b");
        // Joined one after the other (a's `created` first), so b's `created` names a's id.
        let mut ids = Vec::new();
        for ws in [&mut a, &mut b] {
            ws.send(Message::Text(r#"{"type":"join","room":"room-alice"}"#.into())).await.expect("join");
            let id = loop {
                let frame = ws.next().await.expect("frame").expect("frame");
                let v: serde_json::Value = serde_json::from_str(frame.to_text().expect("text")).expect("json");
                if v["type"] == "created" {
                    break v["id"].as_str().expect("own id").to_string();
                }
            };
            ids.push(id);
        }
        let id_a = ids[0].clone();
        // An offer from b to a, and something refused.
        b.send(Message::Text(format!(r#"{{"type":"offer","to":"{id_a}","sdp":"v=0"}}"#).into())).await.expect("offer");
        b.send(Message::Text("not json".into())).await.expect("garbage");
        loop {
            let frame = a.next().await.expect("frame").expect("frame");
            if frame.to_text().is_ok_and(|t| t.contains("\"offer\"")) {
                break;
            }
        }
    });
    let text = get_metrics(&maddr);
    common::promtool::accepts("natkit signal", &text);
    for value in label_values(&text) {
        assert!(
            !value.contains("room-alice") && !value.contains("127.0.0.1"),
            "a label names a room or an address ({value})\n{text}"
        );
    }
}
