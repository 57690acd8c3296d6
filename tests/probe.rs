//! `natkit turn-alloc --every` as a blackbox probe of a real `natkit relay`: JSON Lines
//! per run, the last run as Prometheus text on `--metrics` (valid for `promtool`), a
//! relay that dies shows as a failed run and `natkit_probe_success 0`, Ctrl-C exits
//! 130, and flag combinations that make no sense exit 2.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::relay::Relay;
use serde_json::Value;

const REALM: &str = "natkit.test";

/// `natkit turn-alloc` with the probe flags, stdout read line by line on a thread.
fn start_probe(extra: &[&str]) -> (Child, Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_natkit"))
        .arg("turn-alloc")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting natkit turn-alloc --every");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The next stdout line, within a bound (a run takes well under a second on loopback;
/// a relay that stopped answering costs at most --timeout per step).
fn next_line(rx: &Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(30)).expect("a probe line on stdout within 30 s")
}

fn next_json(rx: &Receiver<String>) -> Value {
    let line = next_line(rx);
    assert!(!line.trim().is_empty(), "JSON Lines have no blank lines");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"))
}

/// GET /metrics over plain TCP, bounded by socket timeouts; the body.
fn scrape(addr: &str) -> String {
    let mut s =
        TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to the probe's /metrics on {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("reading the metrics response");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{resp}");
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).expect("a body")
}

/// The value of the unlabelled sample `name`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .expect("a number")
}

fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() >= 20
        && s.ends_with('Z')
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s[..4].chars().all(|c| c.is_ascii_digit())
}

#[test]
fn probe_reports_every_run_serves_metrics_and_sees_the_relay_die() {
    let mut relay = Relay::start(&["--realm", REALM, "--user", "alice:secret"]);
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let (child, rx) = start_probe(&[
        &relay.addr(),
        "-u",
        "alice",
        "-p",
        "secret",
        "--realm",
        REALM,
        "--every",
        "1",
        "--json",
        "--metrics",
        &metrics,
        "--packets",
        "20",
        "--rate",
        "200",
        "--timeout",
        "1",
    ]);

    for run in 1..=2 {
        let v = next_json(&rx);
        assert_eq!(v["run"], run, "{v:#}");
        assert_eq!(v["ok"], true, "run {run} against a live relay passes: {v:#}");
        assert!(v["started"].as_str().is_some_and(is_rfc3339_utc), "started is RFC 3339 UTC: {v:#}");
        // The single-run report is all there: the same fields as `turn-alloc --json`.
        for field in ["server", "transport", "relayed", "steps", "stats", "warnings"] {
            assert!(v.get(field).is_some(), "no {field} in {v:#}");
        }
        assert_eq!(v["stats"]["received"], 20, "{v:#}");
    }
    let text = scrape(&metrics);
    assert_eq!(sample(&text, "natkit_probe_success"), 1.0, "{text}");
    assert!(sample(&text, "natkit_probe_runs_total") >= 2.0, "{text}");
    assert_eq!(sample(&text, "natkit_probe_failures_total"), 0.0, "{text}");
    assert!(text.contains("natkit_probe_step_success{step=\"allocate\"} 1"), "{text}");
    assert!(text.contains("natkit_probe_step_success{step=\"channel-data\"} 1"), "{text}");
    for name in ["natkit_probe_allocate_seconds", "natkit_probe_rtt_seconds", "natkit_probe_last_run_timestamp_seconds"]
    {
        assert!(sample(&text, name) > 0.0, "{name} in:\n{text}");
    }
    assert_eq!(sample(&text, "natkit_probe_loss_ratio"), 0.0, "{text}");
    assert_eq!(sample(&text, "natkit_probe_warnings"), 0.0, "{text}");
    assert!(!text.contains("alice") && !text.contains(&relay.addr()), "no user or server in labels: {text}");
    common::promtool::accepts("the probe's /metrics", &text);

    relay.stop();
    // The run in flight when the relay stopped may still pass; a later one fails. Bounded:
    // each run fails within a few --timeout 1 s waits.
    let mut failed = None;
    for _ in 0..5 {
        let v = next_json(&rx);
        if v["ok"] == false {
            failed = Some(v);
            break;
        }
    }
    let failed = failed.expect("a failed run within 5 runs of the relay stopping");
    let steps = failed["steps"].as_array().expect("steps");
    assert!(steps.iter().any(|s| s["ok"] == false && s["skipped"] == false), "a step failed: {failed:#}");
    let text = scrape(&metrics);
    assert_eq!(sample(&text, "natkit_probe_success"), 0.0, "{text}");
    assert!(sample(&text, "natkit_probe_failures_total") >= 1.0, "{text}");
    assert!(!text.contains("natkit_probe_rtt_seconds"), "no RTT kept from a passing run: {text}");
    common::promtool::accepts("the probe's /metrics after a failed run", &text);

    let out = common::bounded::stop_with(child, libc::SIGINT);
    assert_eq!(
        out.status.code(),
        Some(130),
        "Ctrl-C ends the probe with 130: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted"), "one line says so: {stderr}");
}

#[test]
fn without_json_each_run_is_one_compact_line() {
    let relay = Relay::start(&["--realm", REALM, "--user", "alice:secret"]);
    let (child, rx) = start_probe(&[
        &relay.addr(),
        "-u",
        "alice",
        "-p",
        "secret",
        "--every",
        "1",
        "--packets",
        "20",
        "--rate",
        "200",
    ]);
    for run in 1..=2 {
        let line = next_line(&rx);
        let (time, rest) = line.split_once("  ").unwrap_or_else(|| panic!("time first: {line}"));
        assert!(is_rfc3339_utc(time), "{line}");
        assert!(rest.starts_with(&format!("run {run}  ok  allocate ")), "{line}");
        assert!(rest.contains("  rtt ") && rest.contains("  loss 0.0%"), "{line}");
        assert!(!line.contains('│') && !line.contains("step"), "no table per run: {line}");
    }
    let out = common::bounded::stop_with(child, libc::SIGINT);
    assert_eq!(out.status.code(), Some(130));
}

#[test]
fn a_run_slower_than_every_is_followed_at_once_and_said_once() {
    let relay = Relay::start(&["--realm", REALM, "--user", "alice:secret"]);
    // --nonce-wait makes every run wait idle longer than --every.
    let (child, rx) = start_probe(&[
        &relay.addr(),
        "-u",
        "alice",
        "-p",
        "secret",
        "--every",
        "1",
        "--nonce-wait",
        "1.2",
        "--packets",
        "10",
        "--rate",
        "200",
        "--json",
    ]);
    let runs: Vec<Value> = (0..3).map(|_| next_json(&rx)).collect();
    assert_eq!(runs.iter().map(|v| v["run"].as_u64()).collect::<Vec<_>>(), [Some(1), Some(2), Some(3)]);
    assert!(runs.iter().all(|v| v["ok"] == true), "{runs:#?}");
    let out = common::bounded::stop_with(child, libc::SIGINT);
    assert_eq!(out.status.code(), Some(130));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("longer than --every").count(), 1, "three slow runs, said once: {stderr}");
}

#[test]
fn metrics_without_every_and_every_zero_are_bad_usage() {
    let cases: [&[&str]; 3] = [
        &["turn-alloc", "127.0.0.1:3478", "--metrics", "127.0.0.1:0"],
        &["turn-alloc", "127.0.0.1:3478", "--every", "0"],
        &["turn-alloc", "127.0.0.1:3478", "--every", "soon"],
    ];
    for args in cases {
        let out = common::natkit(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--every"), "{args:?} names the flag: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }

    // A --metrics address already taken is bad input too, before any run.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = common::natkit(&["turn-alloc", "127.0.0.1:3478", "--every", "1", "--metrics", &addr]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--metrics") && stderr.contains(&addr), "{stderr}");
}
