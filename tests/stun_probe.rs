//! `natkit stun-probe` against real servers on loopback: coturn over UDP,
//! TCP and TLS, dead and silent ports, and tiny misbehaving servers.

mod common;

use std::net::UdpSocket;
use std::thread;
use std::time::Duration;

use common::coturn::{Coturn, CoturnConfig};
use common::{json_of, natkit};

fn results(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["results"].as_array().expect("results array")
}

#[test]
fn udp_probe_of_coturn_on_loopback_maps_to_the_local_address() {
    let ct = Coturn::start(CoturnConfig::default());
    let out = natkit(&["stun-probe", &ct.addr(), "--json"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v = json_of(&out);
    let r = &results(&v)[0];
    assert_eq!(r["server"], ct.addr());
    assert_eq!(r["address"], ct.addr());
    assert_eq!(r["transport"], "udp");
    assert_eq!(r["mapped"], r["local"], "on loopback there is no NAT");
    assert!(r["rtt_ms"].as_f64().expect("rtt") >= 0.0);
    assert_eq!(r["response_origin"], ct.addr());
    assert_eq!(r["fingerprint_ok"], true);
    assert!(r["error"].is_null());
    assert_eq!(v["summary"]["behind_nat"], false);
    assert_eq!(v["summary"]["failed"], 0);
}

#[test]
fn tcp_and_tls_probes_work_and_tls_reports_the_self_signed_certificate() {
    let ct = Coturn::start(CoturnConfig::default());
    let tls = format!("stuns:127.0.0.1:{}", ct.tls_port);
    let out = natkit(&["stun-probe", &ct.addr(), &tls, "--transport", "tcp", "--insecure", "--json"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v = json_of(&out);
    let rs = results(&v);
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[0]["transport"], "tcp");
    assert_eq!(rs[1]["transport"], "tls");
    for r in rs {
        assert_eq!(r["mapped"], r["local"]);
        assert!(r["connect_ms"].as_f64().is_some());
    }
    assert_eq!(rs[1]["certificate"]["valid"], false);
    let problem = rs[1]["certificate"]["problem"].as_str().expect("problem");
    assert!(problem.contains("--insecure"), "{problem}");
}

#[test]
fn tls_refuses_an_unknown_certificate_and_trusts_it_with_ca() {
    let ct = Coturn::start(CoturnConfig::default());
    let tls = format!("stuns:127.0.0.1:{}", ct.tls_port);
    let out = natkit(&["stun-probe", &tls, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    let err = results(&v)[0]["error"].as_str().expect("error").to_string();
    assert!(err.contains("TLS handshake") && err.contains("--insecure"), "{err}");

    let ca = ct.cert.to_str().expect("utf-8 path");
    let out = natkit(&["stun-probe", &tls, "--ca", ca, "--json"]);
    assert!(out.status.success(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(results(&json_of(&out))[0]["certificate"]["valid"], true);
}

#[test]
fn all_transports_to_several_servers_at_once() {
    let a = Coturn::start(CoturnConfig::default());
    let b = Coturn::start(CoturnConfig::default());
    let out = natkit(&["stun-probe", &a.addr(), &b.addr(), "--transport", "all", "--insecure", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let v = json_of(&out);
    let rs = results(&v);
    assert_eq!(rs.len(), 6, "two servers x three transports");
    // UDP probes share one local socket, so the mapping comparison is meaningful.
    let udp: Vec<_> = rs.iter().filter(|r| r["transport"] == "udp").collect();
    assert_eq!(udp[0]["local"], udp[1]["local"]);
    assert_eq!(v["summary"]["answered"], 6);
    assert_eq!(v["summary"]["udp_blocked"], false);
}

#[test]
fn count_reports_min_avg_max_and_no_loss() {
    let ct = Coturn::start(CoturnConfig::default());
    let out = natkit(&["stun-probe", &ct.addr(), "--count", "5", "--interval", "20", "--json"]);
    assert!(out.status.success());
    let v = json_of(&out);
    let r = &results(&v)[0];
    assert_eq!(r["requests"], 5);
    assert_eq!(r["responses"], 5);
    assert_eq!(r["loss_pct"], 0.0);
    let (min, avg, max) =
        (r["rtt_min_ms"].as_f64().unwrap(), r["rtt_ms"].as_f64().unwrap(), r["rtt_max_ms"].as_f64().unwrap());
    assert!(min <= avg && avg <= max, "{min} {avg} {max}");
}

#[test]
fn dead_port_fails_at_once_with_icmp_and_does_not_hold_the_others() {
    let ct = Coturn::start(CoturnConfig::default());
    // A port nobody listens on: privileged ports are never handed out as ephemeral ones,
    // so no parallel test can be there.
    let dead = "127.0.0.1:9".to_string();
    let started = std::time::Instant::now();
    let out = natkit(&["stun-probe", &ct.addr(), &dead, "--timeout", "20", "--json"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "a failed probe exits 1");
    let v = json_of(&out);
    let rs = results(&v);
    assert!(rs[0]["error"].is_null());
    let err = rs[1]["error"].as_str().expect("error");
    assert!(err.contains("port unreachable") && err.contains(&dead), "{err}");
    // ICMP ends the probe instead of the 20 s timeout (a bound far above any real run, not a speed assertion).
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// A UDP server that answers every datagram with what `reply` makes of it.
fn fake_server(reply: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap().to_string();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if let Some(r) = reply(&buf[..n]) {
                let _ = s.send_to(&r, from);
            }
        }
    });
    addr
}

#[test]
fn silent_server_ends_at_the_timeout_with_a_clear_error() {
    let addr = fake_server(|_| None);
    let out = natkit(&["stun-probe", &addr, "--timeout", "1", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = results(&json_of(&out))[0]["error"].as_str().expect("error").to_string();
    assert!(err.starts_with(&format!("no response from {addr} over UDP after")), "{err}");
    assert!(err.contains("try --transport tcp"), "{err}");
}

#[test]
fn garbage_replies_are_reported_not_fatal() {
    let addr = fake_server(|_| Some(b"this is not stun at all!".to_vec()));
    let out = natkit(&["stun-probe", &addr, "--timeout", "1", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = results(&json_of(&out))[0]["error"].as_str().expect("error").to_string();
    assert!(err.contains("not STUN"), "{err}");
}

#[test]
fn wrong_transaction_id_is_reported() {
    let addr = fake_server(|req| {
        let mut r = req.to_vec();
        if r.len() >= 20 {
            r[0] = 0x01; // success response
            r[1] = 0x01;
            r[19] ^= 0xFF; // another transaction id
        }
        Some(r)
    });
    let out = natkit(&["stun-probe", &addr, "--timeout", "1", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = results(&json_of(&out))[0]["error"].as_str().expect("error").to_string();
    assert!(err.contains("transaction id"), "{err}");
}

#[test]
fn error_response_is_reported_with_its_code() {
    let addr = fake_server(|req| {
        if req.len() < 20 {
            return None;
        }
        // Binding error response, same transaction id, ERROR-CODE 400 "Bad Request".
        let reason = b"Bad Request";
        let mut attr = vec![0x00, 0x09, 0x00, (4 + reason.len()) as u8, 0, 0, 4, 0];
        attr.extend_from_slice(reason);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut r = vec![0x01, 0x11, 0, attr.len() as u8];
        r.extend_from_slice(&req[4..20]);
        r.extend_from_slice(&attr);
        Some(r)
    });
    let out = natkit(&["stun-probe", &addr, "--timeout", "2", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = results(&json_of(&out))[0]["error"].as_str().expect("error").to_string();
    assert!(err.contains("400") && err.contains("Bad Request"), "{err}");
}

#[test]
fn bad_input_exits_2_with_a_message() {
    for args in [
        vec!["stun-probe", "127.0.0.1:0"],
        vec!["stun-probe", "bad host!"],
        vec!["stun-probe", "127.0.0.1:99999"],
        vec!["stun-probe", "http://example.org"],
        vec!["stun-probe", "[::1"],
        vec!["stun-probe", "127.0.0.1", "--timeout", "-1"],
        vec!["stun-probe", "127.0.0.1", "--local", "not-an-ip"],
        vec!["stun-probe", "127.0.0.1", "--count", "0"],
        vec!["stun-probe", "127.0.0.1", "--transport", "sctp"],
        vec!["stun-probe", "127.0.0.1", "--ca", "/nonexistent/ca.pem", "--transport", "tls"],
    ] {
        let out = natkit(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?} should exit 2");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "{args:?} printed no message");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout on error");
    }
}

#[test]
fn table_output_has_the_result_and_the_meaning() {
    let ct = Coturn::start(CoturnConfig::default());
    let out = natkit(&["stun-probe", &ct.addr()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&ct.addr()), "{text}");
    assert!(text.contains("Not behind a NAT"), "{text}");
}

#[test]
fn ipv6_probe_over_udp_and_tcp() {
    let ct = Coturn::start(CoturnConfig { listen_ip: Some("::1".into()), ..Default::default() });
    let server = format!("[::1]:{}", ct.port);
    let out = natkit(&["stun-probe", &server, "-6", "--transport", "all", "--insecure", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let v = json_of(&out);
    assert_eq!(results(&v).len(), 3);
    for r in results(&v) {
        assert_eq!(r["address"], server);
        assert!(r["mapped"].as_str().expect("mapped").starts_with("[::1]:"), "{r}");
        assert_eq!(r["mapped"], r["local"]);
    }
    // -4 with an IPv6 literal is bad input.
    assert_eq!(natkit(&["stun-probe", &server, "-4"]).status.code(), Some(2));
}

#[test]
fn a_dns_server_that_never_answers_costs_the_timeout_once_not_per_name() {
    let ns = common::bounded::BlackholeDnsNs::create("probe");
    let natkit = env!("CARGO_BIN_EXE_natkit");
    // The built-in list: several names, each of which glibc would retry for 10 s.
    let cmd = ns.command(natkit, &["stun-probe", "--timeout", "2", "--json"]);
    let out = common::bounded::output_within(cmd, std::time::Duration::from_secs(25))
        .expect("stun-probe --timeout 2 was still running after 25 s with a silent DNS server");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v = common::json_of(&out);
    let rs = results(&v);
    assert!(rs.len() >= 2, "every built-in server is reported: {v:#}");
    for r in rs {
        let e = r["error"].as_str().unwrap_or_default();
        assert!(e.contains("no DNS answer") || e.contains("resolve"), "{r:#}");
    }
    // A name the user typed is not bad input when DNS is down: exit 1, not 2.
    let cmd = ns.command(natkit, &["stun-probe", "stun.example.org", "--timeout", "2", "--json"]);
    let out = common::bounded::output_within(cmd, std::time::Duration::from_secs(25))
        .expect("stun-probe with a typed name was still running after 25 s with a silent DNS server");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A UDP server that counts the datagrams it gets and never answers.
fn counting_silent_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = seen.clone();
    let addr = fake_server(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        None
    });
    (addr, seen)
}

#[test]
fn transmissions_count_the_retries_the_error_speaks_of_and_requests_stay_transactions() {
    let (addr, seen) = counting_silent_server();
    let out = natkit(&["stun-probe", &addr, "--timeout", "2", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    let r = &results(&v)[0];
    let err = r["error"].as_str().expect("error");
    let tries: u64 = err
        .split(" tries")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'after N tries' in {err}"));
    assert!(tries > 1, "a silent server gets retransmissions: {err}");
    assert_eq!(r["requests"], 1, "{r:#}");
    assert_eq!(r["transmissions"], tries, "the JSON and the text agree: {r:#}");
    assert_eq!(u64::from(seen.load(std::sync::atomic::Ordering::SeqCst)), tries, "datagrams the server saw");
    assert_eq!(r["loss_pct"], 100.0);
}
